// What h5depot needs of HDF5's core driver beyond its public API: bounding
// the address space of one open file.
//
// Why: a file image opened with DONT_COPY | DONT_RELEASE must not grow past
// the application's buffer. Refusing the core driver's realloc is not
// enough: HDF5 allocates file space long before it writes there, often
// first during H5Fclose, and in HDF5 1.10.8 a close that fails in the
// driver leaves a file id pointing at freed memory, which crashes at exit.
// With the file's maximum address set to the buffer's size, HDF5 refuses
// the allocation itself ("file allocation request failed") in the call
// that needs it, and nothing beyond the buffer is ever dirtied.
#ifndef H5DEPOT_CLIENT_CORE_DRIVER_INTERNAL_H_
#define H5DEPOT_CLIENT_CORE_DRIVER_INTERNAL_H_

#include "absl/status/status.h"
#include "hdf5.h"

namespace h5depot::internal {

// Sets the largest address HDF5 may allocate in `file_id`, an open file of
// the core driver whose buffer is `buffer`, to `max_address`.
//
// H5FD_t (the driver's view of a file, with its `maxaddr`) is public in
// H5FDpublic.h but HDF5 offers no call to change it; the core driver's own
// struct starts with that H5FD_t, its name and then its buffer pointer,
// whose address H5Fget_vfd_handle returns. The layout is checked (driver,
// class name, buffer, untouched maximum) before anything is written;
// UNIMPLEMENTED if this HDF5 does not match.
absl::Status LimitCoreAddressSpace(hid_t file_id, const void* buffer,
                                   haddr_t max_address);

}  // namespace h5depot::internal

#endif  // H5DEPOT_CLIENT_CORE_DRIVER_INTERNAL_H_
