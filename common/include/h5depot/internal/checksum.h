// Image checksums: XXH3-64 with seed 0 over the whole image, the value the
// wire protocol carries in PushHeader.checksum and ImageInfo.checksum.
#ifndef H5DEPOT_COMMON_CHECKSUM_H_
#define H5DEPOT_COMMON_CHECKSUM_H_

#include <cstddef>
#include <cstdint>
#include <memory>

namespace h5depot::internal {

// XXH3-64 of `size` bytes at `data` in one call.
uint64_t Checksum(const void* data, size_t size);

// Incremental XXH3-64 for data that arrives in pieces; Update() in order,
// then Digest() equals Checksum() of the concatenation. Not thread-safe.
class StreamingChecksum {
 public:
  StreamingChecksum();
  ~StreamingChecksum();
  StreamingChecksum(const StreamingChecksum&) = delete;
  StreamingChecksum& operator=(const StreamingChecksum&) = delete;

  void Update(const void* data, size_t size);
  uint64_t Digest() const;

 private:
  struct State;
  std::unique_ptr<State> state_;
};

}  // namespace h5depot::internal

#endif  // H5DEPOT_COMMON_CHECKSUM_H_
