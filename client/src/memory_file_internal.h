// The push side of CreateMemoryFile (h5depot/memory_file.h): sealing the
// memfd under a file so that its image can be handed to the server as a
// file descriptor.
//
// How a memory file's buffer is held (docs/FILE_IMAGES.md, "Files in a
// memfd"): until the first seal, the core driver's buffer is a MAP_SHARED
// read/write mapping of the file's memfd. Sealing replaces that mapping,
// at the same address, with a MAP_PRIVATE mapping of the same memfd (the
// kernel refuses F_SEAL_WRITE while a writable shared mapping exists), and
// seals the memfd: the application's later writes go to private pages of
// its own and never reach the sealed memfd. Growing past the mapping after
// that moves the file into a fresh memfd (one copy). A later seal copies
// the image once into a fresh memfd, seals that one and maps it privately
// in turn, so an image once sealed never changes.
#ifndef H5DEPOT_CLIENT_MEMORY_FILE_INTERNAL_H_
#define H5DEPOT_CLIENT_MEMORY_FILE_INTERNAL_H_

#include <cstddef>
#include <cstdint>
#include <optional>

#include "absl/status/statusor.h"
#include "h5depot/internal/memfd.h"
#include "hdf5.h"

namespace h5depot::internal {

// A sealed image: a memfd carrying kSealsFromClient whose first `size`
// bytes are the image of an HDF5 file (the memfd may be longer).
struct SealedFileImage {
  UniqueFd fd;
  uint64_t size = 0;
};

// If `file_id` is a file that CreateMemoryFile made: flushes it, seals the
// image it has now and returns a descriptor of its own (a dup, close-on-
// exec) of the sealed memfd, with the image's size. The file stays open
// and writable; nothing written to it later reaches this memfd. nullopt if
// `file_id` is any other file (the caller then copies the image, e.g. with
// TakeFileImage).
//
// The first seal of a file copies nothing; every seal after it copies the
// image once into a fresh memfd. The whole operation runs under HDF5's
// global lock, so other threads' HDF5 calls, on this file too, see the
// file either before or after it. Thread-safe.
//
// Errors: INVALID_ARGUMENT if `file_id` is not an open file;
// RESOURCE_EXHAUSTED if no memfd or mapping can be had (the file is then
// as before); the flush's failure with HDF5's reason.
absl::StatusOr<std::optional<SealedFileImage>> SealMemoryFile(hid_t file_id);

// How many memory files' buffers are alive in this process (created and
// not yet released by HDF5); for tests that check nothing leaks.
size_t LiveMemoryFiles();

}  // namespace h5depot::internal

#endif  // H5DEPOT_CLIENT_MEMORY_FILE_INTERNAL_H_
