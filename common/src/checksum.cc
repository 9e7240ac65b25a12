#include "h5depot/internal/checksum.h"

#define XXH_STATIC_LINKING_ONLY  // for the size of XXH3_state_t
#include <xxhash.h>
#if defined(__x86_64__)
// The same hash, computed with the widest vector unit the CPU has (AVX2,
// AVX-512) rather than the SSE2 the library is built for: about twice the
// bytes per second, and every pushed and fetched byte goes through it.
#include <xxh_x86dispatch.h>
#endif

namespace h5depot::internal {

uint64_t Checksum(const void* data, size_t size) {
  return XXH3_64bits(data, size);
}

struct StreamingChecksum::State {
  XXH3_state_t xxh;
};

StreamingChecksum::StreamingChecksum(uint64_t total_size)
    : total_size_(total_size) {}

StreamingChecksum::~StreamingChecksum() = default;

void StreamingChecksum::Update(const void* data, size_t size) {
  if (size == 0) return;
  if (hashed_ == 0 && size == total_size_) {
    whole_digest_ = XXH3_64bits(data, size);
  } else {
    if (state_ == nullptr) {
      state_ = std::make_unique<State>();
      XXH3_64bits_reset(&state_->xxh);
    }
    XXH3_64bits_update(&state_->xxh, data, size);
  }
  hashed_ += size;
}

uint64_t StreamingChecksum::Digest() const {
  if (state_ != nullptr) return XXH3_64bits_digest(&state_->xxh);
  return hashed_ > 0 ? whole_digest_ : XXH3_64bits(nullptr, 0);
}

}  // namespace h5depot::internal
