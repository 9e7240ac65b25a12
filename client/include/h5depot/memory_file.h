// HDF5 files built directly in shared memory: a new HDF5 file whose image
// lives in a memfd (memfd_create(2)) from the start, so that a push to a
// server on the same host can hand over a sealed file descriptor instead
// of copying the bytes (docs/FILE_IMAGES.md, "Files in a memfd").
//
// Example:
//   absl::StatusOr<hid_t> file = h5depot::CreateMemoryFile();
//   if (!file.ok()) return file.status();
//   ... create datasets, groups, attributes with the HDF5 API ...
//   ... push it (hdf5_transfer.h): on the same host, without a copy ...
//   H5Fclose(*file);  // frees the memfd and its mapping
#ifndef H5DEPOT_CLIENT_MEMORY_FILE_H_
#define H5DEPOT_CLIENT_MEMORY_FILE_H_

#include "absl/status/statusor.h"
#include "hdf5.h"

namespace h5depot {

// Creates a new, empty HDF5 file, open read/write, that lives in memory
// only: HDF5's core driver without a backing store, whose buffer is a
// shared mapping of a memfd that grows as the file does. Returns the file
// id; use it like any HDF5 file and close it with H5Fclose, which frees
// the memfd and the mapping once HDF5 has closed the file (the file id and
// every object opened in it). Nothing is written to any file system.
//
// `fcpl` is the file creation property list (H5P_DEFAULT or the caller's;
// it is not modified). `fapl` may carry the caller's file access settings
// (library version bounds, caches, ...); it is copied and not modified,
// and the copy's driver is replaced by the core driver. A `fapl` that
// already holds a file image is INVALID_ARGUMENT.
//
// The memfd's pages are charged to the calling process's memory cgroup,
// like any memory it allocates. Thread-safe: files may be created, written
// and closed from any number of threads, as HDF5 allows. A child of
// fork() gets the file as a malloc'ed one would be: what it writes (HDF5
// flushes open files when a process exits) stays its own.
//
// Errors: INVALID_ARGUMENT if HDF5 refuses the property lists (with
// HDF5's reason); RESOURCE_EXHAUSTED if no memfd can be made.
absl::StatusOr<hid_t> CreateMemoryFile(hid_t fcpl = H5P_DEFAULT,
                                       hid_t fapl = H5P_DEFAULT);

}  // namespace h5depot

#endif  // H5DEPOT_CLIENT_MEMORY_FILE_H_
