// A stream writer's step buffers (docs/STREAMS.md, "Step buffers"): memfds
// a Client keeps mapped writable and fills step after step, so that a
// writer on the server's host hands each step over without a copy and
// without meeting fresh memory.
//
// A buffer is handed to the server with the write end of a pipe whose read
// end the pool keeps (lane_protocol.h, PUT_SEALED). The server closes its
// end once neither it nor any reader it handed the step to holds the
// buffer any longer; the read end then reads end-of-file, and only then is
// the buffer lent again. So a reader's step never changes while it holds
// it, whatever the writer does next through this pool.
//
// Each buffer is sealed against resizing (kSealsOfStepBuffer): a mapping of
// it can never fault past its end, in the server or in a reader. A child of
// fork() lends none of its parent's buffers (both would fill them): its
// pool starts empty. Thread-safe. Internal to the client.
#ifndef H5DEPOT_CLIENT_STEP_BUFFERS_INTERNAL_H_
#define H5DEPOT_CLIENT_STEP_BUFFERS_INTERNAL_H_

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "h5depot/internal/memfd.h"
#include "h5depot/internal/mutex.h"

namespace h5depot::internal {

// Buffers one pool keeps at most, lent or waiting for their release. A
// writer that needs one more waits for a release.
inline constexpr size_t kMaxStepBuffers = 16;

// One buffer: a memfd of `capacity` bytes and this process's writable
// mapping of it.
struct StepBufferSlot {
  UniqueFd memfd;
  Mapping mapping;
  uint64_t capacity = 0;
  // The read ends of the pipes handed over with it; the buffer is free
  // once all of them read end-of-file. Guarded by the pool's mutex.
  std::vector<UniqueFd> holders;
  // Lent to a StepBuffer not yet committed or dropped.
  std::atomic<bool> lent{false};
};

class StepBufferPool {
 public:
  // A buffer of at least `size` (> 0) bytes, lent until the caller clears
  // its `lent`: a free one if one is large enough, else a new one while the
  // pool has room (freeing free ones too small for it), else the first one
  // released before `deadline` (DEADLINE_EXCEEDED after it).
  // RESOURCE_EXHAUSTED if no memfd can be made.
  absl::StatusOr<std::shared_ptr<StepBufferSlot>> Lend(uint64_t size,
                                                       absl::Time deadline);

  // The write end of a new pipe whose read end `slot` (lent) keeps: the
  // slot is not lent again before every holder of that write end closed it.
  absl::StatusOr<UniqueFd> NewHolder(StepBufferSlot& slot);

  // Frees the buffers no one holds or borrows (the memory goes back).
  void Trim();

  // Buffers kept, for tests.
  size_t size() const;

 private:
  // Whether `slot`'s holders all let go (those that did are dropped).
  bool Released(StepBufferSlot& slot) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mutex_);
  // In a child of fork(), forgets the parent's buffers (this process's
  // copies of their descriptors and mappings go; the parent's stay).
  void ForgetAfterFork() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mutex_);

  mutable Mutex mutex_;
  std::vector<std::shared_ptr<StepBufferSlot>> slots_ ABSL_GUARDED_BY(mutex_);
  // The process the buffers were made in (ForkGeneration()).
  uint64_t fork_generation_ ABSL_GUARDED_BY(mutex_) = 0;
};

// A reader's mappings of the step buffers it was handed, kept for the next
// step in the same buffer: a page mapped once is not faulted in again, which
// on a step of many MiB costs more than a copy of it. Read-only and shared,
// so that each step reads what the writer put there. A mapping keeps its
// buffer's memory alive after the writer freed it: at most
// kMaxCachedStepBuffers are kept, the least recently used dropped first.
// Thread-safe. Internal to the client.
inline constexpr size_t kMaxCachedStepBuffers = 16;

class StepBufferMappings {
 public:
  // A read-only mapping of the whole of `memfd`, a step buffer of
  // `length` bytes: the kept one if this buffer was mapped before.
  absl::StatusOr<std::shared_ptr<const Mapping>> Map(int memfd,
                                                     uint64_t length);

 private:
  struct Kept {
    uint64_t device = 0;
    uint64_t inode = 0;
    std::shared_ptr<const Mapping> mapping;
  };
  Mutex mutex_;
  std::vector<Kept> kept_ ABSL_GUARDED_BY(mutex_);  // most recent last
};

}  // namespace h5depot::internal

#endif  // H5DEPOT_CLIENT_STEP_BUFFERS_INTERNAL_H_
