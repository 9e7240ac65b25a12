#include "h5depot/internal/hdf5_signature.h"

#include <cstring>

namespace h5depot::internal {

std::optional<uint64_t> FindSuperblock(const void* image, size_t size) {
  const auto* bytes = static_cast<const unsigned char*>(image);
  for (uint64_t offset = 0; offset + sizeof(kHdf5Signature) <= size;
       offset = (offset == 0) ? 512 : offset * 2) {
    if (std::memcmp(bytes + offset, kHdf5Signature, sizeof(kHdf5Signature)) ==
        0) {
      return offset;
    }
  }
  return std::nullopt;
}

}  // namespace h5depot::internal
