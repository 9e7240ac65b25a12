#include <malloc.h>
#include <pthread.h>

#include <algorithm>
#include <condition_variable>
#include <cstdlib>
#include <mutex>
#include <system_error>
#include <thread>
#include <utility>
#include <vector>

#include "buffer_recycler_internal.h"
#include "h5depot/internal/buffer_reuse.h"

namespace h5depot::internal {
namespace {

using Clock = std::chrono::steady_clock;

class Recycler;
Recycler& TheRecycler();

struct Kept {
  void* data;
  size_t capacity;
  Clock::time_point due;
};

class Recycler {
 public:
  Recycler() {
    // A fork() must not catch the lock held (the child would wait on it
    // forever). The child has no reaper thread: it frees what it inherited
    // and starts a reaper of its own when it next keeps a buffer.
    pthread_atfork([] { TheRecycler().mutex_.lock(); },
                   [] { TheRecycler().mutex_.unlock(); },
                   [] {
                     Recycler& recycler = TheRecycler();
                     recycler.reaper_running_ = false;
                     for (const Kept& block : recycler.kept_) {
                       std::free(block.data);
                     }
                     recycler.kept_.clear();
                     recycler.mutex_.unlock();
                   });
  }

  void* Take(size_t size) {
    std::vector<Kept> unfit;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      auto best = BestReusable(kept_, size);
      if (best != kept_.end()) {
        void* data = best->data;
        kept_.erase(best);
        return data;
      }
      unfit.swap(kept_);
    }
    for (const Kept& block : unfit) std::free(block.data);
    return nullptr;
  }

  void Give(void* data, size_t capacity) {
    Kept oldest{nullptr, 0, Clock::time_point()};
    {
      std::lock_guard<std::mutex> lock(mutex_);
      if (kept_.size() == kRecycleMaxRetained) {
        oldest = kept_.front();
        kept_.erase(kept_.begin());
      }
      kept_.push_back({data, capacity, Clock::now() + kRecycleRetainFor});
      if (!reaper_running_) StartReaper();
    }
    std::free(oldest.data);
  }

  uint64_t bytes() {
    std::lock_guard<std::mutex> lock(mutex_);
    uint64_t total = 0;
    for (const Kept& block : kept_) total += block.capacity;
    return total;
  }

  void FreeDueBy(Clock::time_point now) {
    std::vector<Kept> due;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      TakeDue(now, &due);
    }
    for (const Kept& block : due) std::free(block.data);
  }

 private:
  // Moves the blocks due by `now` to `*due`. They come first: a block kept
  // later is due later than every one kept before it.
  void TakeDue(Clock::time_point now, std::vector<Kept>* due) {
    auto keep = std::find_if(kept_.begin(), kept_.end(),
                             [now](const Kept& b) { return b.due > now; });
    due->assign(kept_.begin(), keep);
    kept_.erase(kept_.begin(), keep);
  }

  void StartReaper() {
    try {
      std::thread([this] { ReaperLoop(); }).detach();
      reaper_running_ = true;
    } catch (const std::system_error&) {
      // No thread to spare: nothing is kept, so nothing waits to be freed.
      for (const Kept& block : kept_) std::free(block.data);
      kept_.clear();
    }
  }

  void ReaperLoop() {
    std::unique_lock<std::mutex> lock(mutex_);
    while (!kept_.empty()) {
      // The oldest is due first (TakeDue).
      wakeup_.wait_until(lock, kept_.front().due);
      std::vector<Kept> due;
      TakeDue(Clock::now(), &due);
      lock.unlock();
      for (const Kept& block : due) std::free(block.data);
      lock.lock();
    }
    reaper_running_ = false;
  }

  std::mutex mutex_;
  std::condition_variable wakeup_;  // never signalled; a timed sleep
  std::vector<Kept> kept_;          // guarded by mutex_, oldest first
  bool reaper_running_ = false;     // guarded by mutex_
};

// Never destroyed: the reaper thread is detached and may outlive static
// destruction at exit.
Recycler& TheRecycler() {
  static Recycler* recycler = new Recycler();
  return *recycler;
}

}  // namespace

void* TakeRecycledBuffer(size_t size) {
  if (size < kRecycleMinBytes) return nullptr;
  return TheRecycler().Take(size);
}

void RecycleBuffer(void* data, size_t size) {
  if (data == nullptr) return;
  if (size < kRecycleMinBytes) {
    std::free(data);
    return;
  }
  TheRecycler().Give(data, malloc_usable_size(data));
}

uint64_t RecycledBytes() { return TheRecycler().bytes(); }

void FreeRecycledBuffersDueBy(Clock::time_point now) {
  TheRecycler().FreeDueBy(now);
}

}  // namespace h5depot::internal
