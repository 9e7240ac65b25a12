// h5depot::ImageBuffer: one image's bytes in a single malloc'ed block, or
// a mapping of an image that h5depotd shares with processes on its host.
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
//
// A fetch over the server's Unix socket gets a *mapped* buffer
// (is_mapped()): a copy-on-write mapping of the server's own memory for
// that generation, shared by every process that fetched it, in which only
// the pages a process writes become its own. Nothing is copied to fetch
// it, and the generation stays readable however the image changes on the
// server until the buffer is destroyed (the server then learns it may
// free it). Such a buffer cannot be handed to free(): Release() copies it.
#ifndef H5DEPOT_CLIENT_IMAGE_BUFFER_H_
#define H5DEPOT_CLIENT_IMAGE_BUFFER_H_

#include <cstddef>

#include "absl/status/statusor.h"

namespace h5depot {

namespace internal {
class MappedImage;
}  // namespace internal

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

  // Whether the buffer maps an image shared by the server (above) rather
  // than holding a malloc'ed block.
  bool is_mapped() const { return mapping_ != nullptr; }
  // Whether the buffer maps memory this process may only read: a stream
  // step its writer built in a step buffer (docs/STREAMS.md, "Step
  // buffers"), taken on the writer's host. Writing to data() then faults;
  // Release() copies, and opening it read-write opens a copy.
  bool is_read_only() const;

  // Gives up ownership: the caller must free() the returned pointer (or
  // hand it to something that will). The buffer is empty afterwards. A
  // mapped buffer is first copied into a malloc'ed block (null if that
  // cannot be allocated; the buffer is then unchanged).
  void* Release();

 private:
  friend class internal::MappedImage;
  ImageBuffer(void* data, size_t size) : data_(data), size_(size) {}
  void Reset();

  void* data_ = nullptr;
  size_t size_ = 0;
  internal::MappedImage* mapping_ = nullptr;  // owned; null: a malloc block
};

}  // namespace h5depot

#endif  // H5DEPOT_CLIENT_IMAGE_BUFFER_H_
