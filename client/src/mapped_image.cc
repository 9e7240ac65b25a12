#include <algorithm>
#include <utility>

#include "client/src/mapped_image_internal.h"

namespace h5depot::internal {

ImageBuffer MappedImage::Wrap(Mapping mapping, size_t size,
                              OnUnmapped on_unmapped) {
  void* data = mapping.data();
  size = std::min(size, mapping.length());
  ImageBuffer buffer(data, size);
  buffer.mapping_ = new MappedImage(std::move(mapping), std::move(on_unmapped));
  return buffer;
}

ImageBuffer MappedImage::WrapReadOnly(std::shared_ptr<const Mapping> mapping,
                                      size_t size, OnUnmapped on_unmapped) {
  void* data = mapping->data();
  size = std::min(size, mapping->length());
  ImageBuffer buffer(data, size);
  buffer.mapping_ = new MappedImage(std::move(mapping), std::move(on_unmapped));
  return buffer;
}

bool MappedImage::IsReadOnly(const ImageBuffer& buffer) {
  return buffer.mapping_ != nullptr && buffer.mapping_->shared_ != nullptr;
}

void MappedImage::Shrink(ImageBuffer& buffer, size_t size) {
  if (buffer.mapping_ != nullptr) buffer.size_ = std::min(buffer.size_, size);
}

MappedImage::~MappedImage() {
  mapping_.Reset();
  shared_.reset();
  if (on_unmapped_) std::move(on_unmapped_)();
}

}  // namespace h5depot::internal
