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

// Incremental XXH3-64 of `total_size` bytes that arrive in pieces: Update()
// with each piece in order, then Digest() equals Checksum() of all of them.
// Bytes that arrive in one piece, as a small image's do, are hashed in one
// call with no state to set up (a heap object). Pieces must not add up to
// more than `total_size`. Not thread-safe.
class StreamingChecksum {
 public:
  explicit StreamingChecksum(uint64_t total_size);
  ~StreamingChecksum();
  StreamingChecksum(const StreamingChecksum&) = delete;
  StreamingChecksum& operator=(const StreamingChecksum&) = delete;

  void Update(const void* data, size_t size);
  uint64_t Digest() const;

 private:
  struct State;
  uint64_t total_size_;
  uint64_t hashed_ = 0;
  uint64_t whole_digest_ = 0;     // when the bytes came in one piece
  std::unique_ptr<State> state_;  // made by the first smaller piece
};

}  // namespace h5depot::internal

#endif  // H5DEPOT_COMMON_CHECKSUM_H_
