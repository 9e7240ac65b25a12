#include <malloc.h>
#include <pthread.h>

#include <algorithm>
#include <condition_variable>
#include <cstdlib>
#include <future>
#include <mutex>
#include <new>
#include <system_error>
#include <thread>
#include <utility>
#include <vector>

#include "client/src/buffer_recycler_internal.h"
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

// Fork safety. A child of fork() is a copy of one thread of the parent,
// taken at any instant: if another thread was inside the allocator then, the
// child inherits the allocator's lock held and its first call that needs it
// hangs. glibc's malloc takes its own locks around fork(); not every
// allocator does (the sanitizers' do not), so the reaper, a thread of ours,
// never touches the allocator unless it holds mutex_, which fork() takes
// first (the atfork handlers): it frees under the lock, it is started (and
// its start-up allocations are done) before Give returns, and it never
// exits, so no thread teardown runs behind the lock's back either.
class Recycler {
 public:
  Recycler() {
    pthread_atfork([] { TheRecycler().mutex_.lock(); },
                   [] { TheRecycler().mutex_.unlock(); },
                   [] { TheRecycler().StartAfreshInChild(); });
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
      // A reaper with nothing to wait for waits for this.
      if (kept_.size() == 1) wakeup_.notify_one();
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
    std::lock_guard<std::mutex> lock(mutex_);
    FreeDue(now);
  }

 private:
  // Frees the blocks due by `now`. They come first: a block kept later is
  // due later than every one kept before it. Called with mutex_ held.
  void FreeDue(Clock::time_point now) {
    auto keep = std::find_if(kept_.begin(), kept_.end(),
                             [now](const Kept& b) { return b.due > now; });
    for (auto it = kept_.begin(); it != keep; ++it) std::free(it->data);
    kept_.erase(kept_.begin(), keep);
  }

  // Called with mutex_ held; returns once the new thread runs our code, so
  // that its start-up is over before a fork() can be let in.
  void StartReaper() {
    std::promise<void> started;
    std::future<void> running = started.get_future();
    try {
      std::thread([this, &started] {
        started.set_value();
        ReaperLoop();
      }).detach();
    } catch (const std::system_error&) {
      // No thread to spare: nothing is kept, so nothing waits to be freed.
      for (const Kept& block : kept_) std::free(block.data);
      kept_.clear();
      return;
    }
    running.wait();
    reaper_running_ = true;
  }

  void ReaperLoop() {
    std::unique_lock<std::mutex> lock(mutex_);
    for (;;) {
      if (kept_.empty()) {
        wakeup_.wait(lock);
        continue;
      }
      // A copy: kept_ changes while the lock is released in the wait.
      const Clock::time_point due = kept_.front().due;  // the oldest's
      if (Clock::now() < due) {
        wakeup_.wait_until(lock, due);
        continue;
      }
      FreeDue(Clock::now());
    }
  }

  // The child of a fork(): one thread, no reaper, mutex_ held (taken
  // before the fork). Frees what the parent kept, which the child cannot
  // reuse for long anyway, and gives the child a fresh condition variable:
  // the inherited one counts the parent's reaper among its waiters, a
  // thread the child does not have. (Not destroyed first: destroying a
  // condition variable waits for its waiters, and this one never goes.)
  void StartAfreshInChild() {
    reaper_running_ = false;
    for (const Kept& block : kept_) std::free(block.data);
    kept_.clear();
    new (&wakeup_) std::condition_variable();
    mutex_.unlock();
  }

  std::mutex mutex_;
  std::condition_variable wakeup_;  // a block kept while none was
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
