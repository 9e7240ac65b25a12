// The rule by which a freed image buffer is reused for the next image, on
// both ends: the server's store with replaced images' buffers, the client
// with dropped fetch buffers (docs/ARCHITECTURE.md).
#ifndef H5DEPOT_COMMON_BUFFER_REUSE_H_
#define H5DEPOT_COMMON_BUFFER_REUSE_H_

#include <cstdint>

namespace h5depot::internal {

// The smallest of `buffers` (elements with a `capacity` in bytes) that
// holds `size` bytes without wasting over a quarter of them; end() if none.
template <typename Buffers>
typename Buffers::iterator BestReusable(Buffers& buffers, uint64_t size) {
  auto best = buffers.end();
  for (auto it = buffers.begin(); it != buffers.end(); ++it) {
    if (it->capacity >= size && it->capacity - size <= size / 4 &&
        (best == buffers.end() || it->capacity < best->capacity)) {
      best = it;
    }
  }
  return best;
}

}  // namespace h5depot::internal

#endif  // H5DEPOT_COMMON_BUFFER_REUSE_H_
