// Pieces of file_image.cc that tests reach directly.
#ifndef H5DEPOT_CLIENT_FILE_IMAGE_INTERNAL_H_
#define H5DEPOT_CLIENT_FILE_IMAGE_INTERNAL_H_

#include <cstddef>

#include "absl/functional/function_ref.h"
#include "absl/status/statusor.h"
#include "hdf5.h"

namespace h5depot::internal {

// Copies the image of the open file `file_id` into `buffer` (`capacity`
// bytes) with H5Fget_file_image and repairs its superblock checksum;
// returns the image's size. The file should have been flushed.
// FAILED_PRECONDITION, with `buffer` untouched, if the image is larger
// than `capacity`; INVALID_ARGUMENT if the file has no image.
absl::StatusOr<size_t> CopyFileImage(hid_t file_id, void* buffer,
                                     size_t capacity);

// The whole image of the open file `file_id`, flushed first, copied once
// into the memory `place(size)` gives for an image of `size` bytes
// (non-null, at least `size` bytes, the caller's to keep). `place` is asked
// again if another thread changed the file's size meanwhile, and the
// memory it gave before is the caller's to drop. The one way TakeFileImage
// and the appends into step buffers take an image; returns its size.
absl::StatusOr<size_t> CopyFlushedFileImage(
    hid_t file_id, absl::FunctionRef<absl::StatusOr<void*>(size_t)> place);

}  // namespace h5depot::internal

#endif  // H5DEPOT_CLIENT_FILE_IMAGE_INTERNAL_H_
