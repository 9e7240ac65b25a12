// Real HDF5 file images for tests, made in memory (no file on disk).
#ifndef H5DEPOT_TESTING_HDF5_IMAGES_H_
#define H5DEPOT_TESTING_HDF5_IMAGES_H_

#include <cstddef>
#include <cstdint>
#include <string>

namespace h5depot::testing {

// The bytes of a valid HDF5 file holding one 1-D uint8 dataset "/data" of
// `data_bytes` pseudo-random bytes derived from `seed`: the image is a
// little larger than `data_bytes`; the same size and seed always give the
// same bytes, different seeds different ones. Returns an empty string only if
// HDF5 itself fails. Thread-safe.
std::string MakeHdf5Image(size_t data_bytes, uint32_t seed = 0);

// Step `step` of the step buffer tests: one of five HDF5 images of 300 KiB
// to 2 MiB of data (MakeHdf5Image), then the step's number in 8 bytes (an
// HDF5 file may be followed by anything), so that no two steps' bytes are
// alike. Thread-safe.
std::string StepBufferImage(uint64_t step);

}  // namespace h5depot::testing

#endif  // H5DEPOT_TESTING_HDF5_IMAGES_H_
