#include <malloc.h>
#include <pthread.h>

#include <cstdlib>
#include <future>
#include <new>
#include <system_error>
#include <thread>

#include "absl/base/thread_annotations.h"
#include "absl/time/clock.h"
#include "client/src/buffer_recycler_internal.h"
#include "h5depot/internal/mutex.h"
#include "h5depot/internal/retained_buffers.h"

namespace h5depot::internal {
namespace {

class Recycler;
Recycler& TheRecycler();

void FreeMallocBlock(const RetainedBuffers::Buffer& buffer) {
  std::free(buffer.data);
}

RetainedBuffers::Options RecycleOptions() {
  RetainedBuffers::Options options;
  options.retain_for = kRecycleRetainFor;
  options.max_buffers = kRecycleMaxRetained;
  options.release = FreeMallocBlock;
  return options;
}

// Fork safety. A child of fork() is a copy of one thread of the parent,
// taken at any instant: if another thread was inside the allocator then, the
// child inherits the allocator's lock held and its first call that needs it
// hangs. glibc's malloc takes its own locks around fork(); not every
// allocator does (the sanitizers' do not), so the reaper, a thread of ours,
// never touches the allocator unless it holds mutex_, which fork() takes
// first (the atfork handlers): it frees under the lock, it is started (and
// its start-up allocations are done) before Give returns, and it never
// exits, so no thread teardown runs behind the lock's back either.
//
// Why an internal::Mutex (a std::mutex) and not an absl::Mutex: a child of
// fork() must be able to take and release this lock whatever the parent's
// other threads were doing at the fork, and absl::Mutex cannot promise
// that. Its holder keeps a queue of
// waiters (threads the child does not have) behind a spin bit another
// thread may have held at that instant, and with Abseil's deadlock
// detection on (Debian builds it so) every lock of any absl::Mutex takes a
// process-wide spin lock that a gRPC thread of the parent may have held:
// the child's first lock then hangs. A pthread mutex is a futex word its
// holder can always release, and the child gets a fresh condition variable
// (StartAfreshInChild). RetainedBuffers has no lock of its own: mutex_
// guards it. The fork handlers take the lock in one function and release
// it in another, which the lock analysis cannot follow: they are exempt.
class Recycler {
 public:
  Recycler() : kept_(RecycleOptions()) {
    pthread_atfork(&Recycler::HoldAcrossFork, &Recycler::ReleaseInParent,
                   &Recycler::StartAfreshInChild);
  }

  void* Take(size_t size) {
    MutexLock lock(&mutex_);
    return kept_.Take(size).buffer.data;
  }

  void Give(void* data, size_t capacity) {
    MutexLock lock(&mutex_);
    const absl::Time was_due = kept_.next_due();
    RetainedBuffers::Released evicted =
        kept_.Keep({data, capacity}, absl::Now());
    if (!reaper_running_) StartReaper();
    // A reaper waiting for a later one, or for none, waits for this.
    if (kept_.next_due() < was_due) wakeup_.Signal();
  }

  uint64_t bytes() {
    MutexLock lock(&mutex_);
    return kept_.bytes();
  }

  void FreeDueBy(absl::Time now) {
    MutexLock lock(&mutex_);
    RetainedBuffers::Released due = kept_.TakeDue(now);
  }

 private:
  // Called with mutex_ held; returns once the new thread runs our code, so
  // that its start-up is over before a fork() can be let in.
  void StartReaper() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mutex_) {
    std::promise<void> started;
    std::future<void> running = started.get_future();
    try {
      std::thread([this, &started] {
        started.set_value();
        ReaperLoop();
      }).detach();
    } catch (const std::system_error&) {
      // No thread to spare: nothing is kept, so nothing waits to be freed.
      RetainedBuffers::Released all = kept_.TakeAll();
      return;
    }
    running.wait();
    reaper_running_ = true;
  }

  void ReaperLoop() {
    MutexLock lock(&mutex_);
    for (;;) {
      { RetainedBuffers::Released due = kept_.TakeDue(absl::Now()); }
      const absl::Time next_due = kept_.next_due();
      if (next_due == absl::InfiniteFuture()) {
        wakeup_.Wait(&mutex_);
      } else {
        wakeup_.WaitUntil(&mutex_, absl::ToChronoTime(next_due));
      }
    }
  }

  // pthread_atfork's prepare and parent handlers.
  static void HoldAcrossFork() ABSL_NO_THREAD_SAFETY_ANALYSIS {
    TheRecycler().mutex_.Lock();
  }
  static void ReleaseInParent() ABSL_NO_THREAD_SAFETY_ANALYSIS {
    TheRecycler().mutex_.Unlock();
  }

  // The child of a fork(): one thread, no reaper, mutex_ held (taken
  // before the fork). Frees what the parent kept, which the child cannot
  // reuse for long anyway, and gives the child a fresh condition variable:
  // the inherited one counts the parent's reaper among its waiters, a
  // thread the child does not have. (Not destroyed first: destroying a
  // condition variable waits for its waiters, and this one never goes.)
  static void StartAfreshInChild() ABSL_NO_THREAD_SAFETY_ANALYSIS {
    Recycler& self = TheRecycler();
    self.reaper_running_ = false;
    { RetainedBuffers::Released inherited = self.kept_.TakeAll(); }
    new (&self.wakeup_) CondVar();
    self.mutex_.Unlock();
  }

  Mutex mutex_;
  CondVar wakeup_;  // a block kept due before the others
  RetainedBuffers kept_ ABSL_GUARDED_BY(mutex_);
  bool reaper_running_ ABSL_GUARDED_BY(mutex_) = false;
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

void FreeRecycledBuffersDueBy(absl::Time now) { TheRecycler().FreeDueBy(now); }

}  // namespace h5depot::internal
