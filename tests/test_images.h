// Byte images for tests that exercise transport and storage rather than
// HDF5 itself: an HDF5 signature (so the server's format check accepts
// them) followed by a pattern that differs per seed.
#ifndef H5DEPOT_TESTS_TEST_IMAGES_H_
#define H5DEPOT_TESTS_TEST_IMAGES_H_

#include <cstdint>
#include <cstring>
#include <vector>

#include "h5depot/internal/hdf5_signature.h"

namespace h5depot::testing {

inline std::vector<uint8_t> MakeTestImage(size_t size, uint32_t seed = 1) {
  std::vector<uint8_t> image(size);
  uint32_t state = seed * 2654435761u + 1;
  for (size_t i = 0; i < size; ++i) {
    state = state * 1664525u + 1013904223u;
    image[i] = static_cast<uint8_t>(state >> 24);
  }
  if (size > 0) {  // an empty vector's data() may be null
    std::memcpy(image.data(), internal::kHdf5Signature,
                std::min(size, sizeof(internal::kHdf5Signature)));
  }
  return image;
}

}  // namespace h5depot::testing

#endif  // H5DEPOT_TESTS_TEST_IMAGES_H_
