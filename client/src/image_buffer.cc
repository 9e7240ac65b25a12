#include "h5depot/image_buffer.h"

#include <cstdlib>
#include <cstring>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "client/src/buffer_recycler_internal.h"
#include "client/src/mapped_image_internal.h"

namespace h5depot {

absl::StatusOr<ImageBuffer> ImageBuffer::Allocate(size_t size) {
  if (size == 0) return ImageBuffer();
  void* data = internal::TakeRecycledBuffer(size);
  if (data == nullptr) data = std::malloc(size);
  if (data == nullptr) {
    return absl::ResourceExhaustedError(
        absl::StrCat("cannot allocate ", size, " bytes for an image"));
  }
  return ImageBuffer(data, size);
}

ImageBuffer ImageBuffer::Adopt(void* data, size_t size) {
  return ImageBuffer(data, size);
}

ImageBuffer::~ImageBuffer() { Reset(); }

void ImageBuffer::Reset() {
  if (mapping_ != nullptr) {
    delete std::exchange(mapping_, nullptr);  // unmaps
  } else {
    internal::RecycleBuffer(data_, size_);
  }
  data_ = nullptr;
  size_ = 0;
}

ImageBuffer::ImageBuffer(ImageBuffer&& other) noexcept
    : data_(std::exchange(other.data_, nullptr)),
      size_(std::exchange(other.size_, 0)),
      mapping_(std::exchange(other.mapping_, nullptr)) {}

ImageBuffer& ImageBuffer::operator=(ImageBuffer&& other) noexcept {
  if (this != &other) {
    Reset();
    data_ = std::exchange(other.data_, nullptr);
    size_ = std::exchange(other.size_, 0);
    mapping_ = std::exchange(other.mapping_, nullptr);
  }
  return *this;
}

bool ImageBuffer::is_read_only() const {
  return internal::MappedImage::IsReadOnly(*this);
}

void* ImageBuffer::Release() {
  if (mapping_ != nullptr) {
    void* copy = std::malloc(size_ == 0 ? 1 : size_);
    if (copy == nullptr) return nullptr;
    std::memcpy(copy, data_, size_);
    Reset();
    return copy;
  }
  size_ = 0;
  return std::exchange(data_, nullptr);
}

}  // namespace h5depot
