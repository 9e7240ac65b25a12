// Large image buffers just freed, retained for a moment for the next image
// of about their size, on both ends: the server's store with replaced and
// deleted images' buffers, the client with dropped fetch buffers
// (docs/ARCHITECTURE.md). A fresh buffer's pages are zeroed by the kernel
// before the first byte can be copied into them, most of what receiving a
// large image costs; a retained one's pages are already there.
//
// The rules, the same on both ends:
// * a buffer taken fits the request without wasting over a quarter of it
//   (the smallest that does);
// * a request that finds none to take gives up every retained buffer
//   before the caller allocates, so retention never raises the process's
//   peak memory;
// * each buffer is due `retain_for` after it was kept, and given up then
//   by whoever calls FreeDue (each end has its own reaper thread);
// * at most `max_buffers` and `max_bytes` are retained: keeping one more
//   gives up the oldest first.
//
// What is each end's own: what a buffer is and how it is freed (`release`:
// munmap, free), who wakes for the due ones, and the lock. RetainedBuffers
// is not thread-safe: its owner guards it with a lock of its own (the
// server's an annotated absl::Mutex; the client's recycler the lock its
// fork handling needs) and lets the buffers a call gives up (Released) be
// freed after it lets go of that lock, if it wants no lock held while
// memory goes back to the system.
#ifndef H5DEPOT_COMMON_RETAINED_BUFFERS_H_
#define H5DEPOT_COMMON_RETAINED_BUFFERS_H_

#include <cstddef>
#include <cstdint>
#include <limits>
#include <vector>

#include "absl/time/time.h"

namespace h5depot::internal {

class RetainedBuffers {
 public:
  struct Buffer {
    void* data = nullptr;
    uint64_t capacity = 0;
    // The memfd holding it, if its owner keeps images in memfds; -1: none.
    int memfd = -1;
  };

  // Frees a buffer the pool gives up, as it was kept.
  using ReleaseFunction = void (*)(const Buffer& buffer);

  struct Options {
    absl::Duration retain_for = absl::Seconds(1);
    size_t max_buffers = 2;
    uint64_t max_bytes = std::numeric_limits<uint64_t>::max();
    ReleaseFunction release = nullptr;  // required
  };

  // Buffers a call gave up, freed with `release` when this is destroyed
  // (keep it in a scope that ends after the owner's lock is let go).
  class Released {
   public:
    Released() = default;
    Released(Released&& other) noexcept;
    Released& operator=(Released&& other) noexcept;
    ~Released();

   private:
    friend class RetainedBuffers;
    void FreeAll();

    ReleaseFunction release_ = nullptr;
    std::vector<Buffer> buffers_;
  };

  // What Take() found: `buffer` (null `data` if none fitted), now the
  // caller's, and the ones given up because none did.
  struct Taken {
    Buffer buffer;
    Released unfit;
  };

  explicit RetainedBuffers(Options options);
  // Frees every buffer still retained.
  ~RetainedBuffers();

  RetainedBuffers(const RetainedBuffers&) = delete;
  RetainedBuffers& operator=(const RetainedBuffers&) = delete;

  // Takes ownership of `buffer` and retains it until `now + retain_for`;
  // gives up the oldest retained buffers if keeping it would go over a
  // limit, and `buffer` itself if it alone is over `max_bytes`.
  [[nodiscard]] Released Keep(Buffer buffer, absl::Time now);

  // The best retained buffer for `size` bytes; if none fits, gives up all of
  // them, so that the caller allocates fresh memory with nothing retained
  // beside it.
  [[nodiscard]] Taken Take(uint64_t size);

  // Gives up the buffers due by `now`.
  [[nodiscard]] Released TakeDue(absl::Time now);

  // Gives up every retained buffer.
  [[nodiscard]] Released TakeAll();

  // When the next buffer is due (absl::InfiniteFuture() if none).
  absl::Time next_due() const;

  // Bytes retained now (the sum of the kept capacities).
  uint64_t bytes() const { return bytes_; }

 private:
  struct Retained {
    Buffer buffer;
    absl::Time due;  // given up from then on
  };

  Released NewReleased() const;

  const Options options_;
  std::vector<Retained> retained_;  // in the order kept, oldest first
  uint64_t bytes_ = 0;
};

}  // namespace h5depot::internal

#endif  // H5DEPOT_COMMON_RETAINED_BUFFERS_H_
