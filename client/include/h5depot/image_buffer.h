// h5depot::ImageBuffer: one image's bytes in a single malloc'ed block.
//
// Image buffers are allocated with malloc() precisely so that they can be
// handed to HDF5 with H5LT_FILE_IMAGE_DONT_COPY, which releases them with
// free(). Release() transfers that ownership.
//
// Destroying a buffer of 1 MiB or more does not always return its memory
// at once: it is kept for up to a second for the next buffer of about its
// size (a fetch, typically), which then skips the kernel's zeroing of fresh
// pages. At most two are kept, and an allocation that cannot use them frees
// them first, so the process's peak memory does not grow
// (docs/ARCHITECTURE.md, "Recycled buffers").
#ifndef H5DEPOT_CLIENT_IMAGE_BUFFER_H_
#define H5DEPOT_CLIENT_IMAGE_BUFFER_H_

#include <cstddef>

#include "absl/status/statusor.h"

namespace h5depot {

class ImageBuffer {
 public:
  ImageBuffer() = default;

  // A new uninitialised buffer of `size` bytes (its contents are whatever
  // they were, possibly a dropped image's); RESOURCE_EXHAUSTED if malloc
  // fails. Size 0 gives an empty buffer with a null data().
  static absl::StatusOr<ImageBuffer> Allocate(size_t size);

  // Takes ownership of `data`, which must come from malloc/calloc/realloc.
  static ImageBuffer Adopt(void* data, size_t size);

  ~ImageBuffer();
  ImageBuffer(ImageBuffer&& other) noexcept;
  ImageBuffer& operator=(ImageBuffer&& other) noexcept;
  ImageBuffer(const ImageBuffer&) = delete;
  ImageBuffer& operator=(const ImageBuffer&) = delete;

  void* data() { return data_; }
  const void* data() const { return data_; }
  size_t size() const { return size_; }

  // Gives up ownership: the caller must free() the returned pointer (or
  // hand it to something that will). The buffer is empty afterwards.
  void* Release();

 private:
  ImageBuffer(void* data, size_t size) : data_(data), size_(size) {}

  void* data_ = nullptr;
  size_t size_ = 0;
};

}  // namespace h5depot

#endif  // H5DEPOT_CLIENT_IMAGE_BUFFER_H_
