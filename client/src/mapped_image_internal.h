// The backing of a mapped ImageBuffer (image_buffer.h): a mapping of an
// image's memfd that h5depotd handed over, unmapped when the buffer goes,
// after which whoever made it is told (so that the server learns it may
// free the generation). Internal to the client.
#ifndef H5DEPOT_CLIENT_MAPPED_IMAGE_INTERNAL_H_
#define H5DEPOT_CLIENT_MAPPED_IMAGE_INTERNAL_H_

#include <cstddef>
#include <memory>

#include "absl/functional/any_invocable.h"
#include "h5depot/image_buffer.h"
#include "h5depot/internal/memfd.h"

namespace h5depot::internal {

class MappedImage {
 public:
  // Called once, on the thread that drops the buffer, after the mapping
  // is gone.
  using OnUnmapped = absl::AnyInvocable<void() &&>;

  // A buffer of the first `size` bytes of `mapping` (at most its length),
  // which it owns from now on.
  static ImageBuffer Wrap(Mapping mapping, size_t size, OnUnmapped on_unmapped);
  // A read-only buffer of the first `size` bytes of `mapping`, a mapping
  // kept elsewhere too (a step buffer's, StepBufferMappings), which the
  // buffer holds until it goes.
  static ImageBuffer WrapReadOnly(std::shared_ptr<const Mapping> mapping,
                                  size_t size, OnUnmapped on_unmapped);

  // Whether `buffer` (mapped) may not be written to.
  static bool IsReadOnly(const ImageBuffer& buffer);

  // Makes `buffer`, a mapped one, `size` bytes long (never longer than its
  // mapping); the mapping stays whole.
  static void Shrink(ImageBuffer& buffer, size_t size);

  ~MappedImage();
  MappedImage(const MappedImage&) = delete;
  MappedImage& operator=(const MappedImage&) = delete;

 private:
  MappedImage(Mapping mapping, OnUnmapped on_unmapped)
      : mapping_(std::move(mapping)), on_unmapped_(std::move(on_unmapped)) {}
  MappedImage(std::shared_ptr<const Mapping> shared, OnUnmapped on_unmapped)
      : shared_(std::move(shared)), on_unmapped_(std::move(on_unmapped)) {}

  Mapping mapping_;                        // owned, or
  std::shared_ptr<const Mapping> shared_;  // held, read-only
  OnUnmapped on_unmapped_;
};

}  // namespace h5depot::internal

#endif  // H5DEPOT_CLIENT_MAPPED_IMAGE_INTERNAL_H_
