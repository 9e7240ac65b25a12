// Fuzzes the HDF5 signature scan (h5depot/internal/hdf5_signature.h), which
// decides whether pushed bytes are an HDF5 file image. An input is the
// image. Besides not reading past it, FindSuperblock must return the first
// of the offsets 0, 512, 1024, 2048, ... at which the whole signature
// lies inside the image, and nullopt only when there is none.
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <optional>

#include "fuzz/fuzz_check.h"
#include "h5depot/internal/hdf5_signature.h"

namespace h5depot::internal {
namespace {

bool SignatureAt(const uint8_t* image, size_t size, uint64_t offset) {
  return offset <= size && size - offset >= sizeof(kHdf5Signature) &&
         std::memcmp(image + offset, kHdf5Signature, sizeof(kHdf5Signature)) ==
             0;
}

// The offsets a user block may end at, below `limit`, in order.
template <typename Fn>
void ForEachCandidate(uint64_t limit, Fn&& candidate) {
  for (uint64_t offset = 0; offset < limit;
       offset = offset == 0 ? 512 : offset * 2) {
    candidate(offset);
  }
}

}  // namespace
}  // namespace h5depot::internal

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  namespace internal = ::h5depot::internal;
  const std::optional<uint64_t> found = internal::FindSuperblock(data, size);
  if (found.has_value()) {
    FUZZ_CHECK(*found == 0 || (*found >= 512 && (*found & (*found - 1)) == 0));
    FUZZ_CHECK(internal::SignatureAt(data, size, *found));
  }
  // No candidate before the one found (or at all) holds the signature.
  internal::ForEachCandidate(found.value_or(size), [&](uint64_t offset) {
    FUZZ_CHECK(!internal::SignatureAt(data, size, offset));
  });
  return 0;
}
