// Recognising an HDF5 file image by its format signature, without HDF5.
#ifndef H5DEPOT_COMMON_HDF5_SIGNATURE_H_
#define H5DEPOT_COMMON_HDF5_SIGNATURE_H_

#include <cstddef>
#include <cstdint>
#include <optional>

namespace h5depot::internal {

// The 8-byte signature that starts every HDF5 superblock.
inline constexpr unsigned char kHdf5Signature[8] = {0x89, 'H',  'D',  'F',
                                                    '\r', '\n', 0x1a, '\n'};

// Offset of the superblock in `image`: the first of 0, 512, 1024, 2048, ...
// (the places a user block may end) that holds the signature, or nullopt if
// the bytes are not an HDF5 file image.
std::optional<uint64_t> FindSuperblock(const void* image, size_t size);

}  // namespace h5depot::internal

#endif  // H5DEPOT_COMMON_HDF5_SIGNATURE_H_
