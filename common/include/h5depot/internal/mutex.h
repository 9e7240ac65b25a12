// h5depot::internal::Mutex: a std::mutex that clang's lock analysis can
// check, for code that runs inside an application's process (the client
// library and the remote driver); docs/ARCHITECTURE.md, "Locks".
//
// Why not absl::Mutex there, as in the server: Debian builds Abseil with
// deadlock detection on, so every absl::Mutex acquisition records lock
// order under one process-wide spin lock (about 7 times the cost of a
// futex lock), and a library cannot switch that off in someone else's
// process. That spin lock also breaks fork(): a child forked while another
// thread held it hangs on its first lock of any absl::Mutex. A pthread
// mutex is a word of its own that only its holder can leave locked.
//
// libstdc++'s std::mutex carries no capability annotations, so
// ABSL_GUARDED_BY on one checks nothing; these wrappers carry them. Use
// them exactly like absl::Mutex, absl::MutexLock and absl::CondVar.
#ifndef H5DEPOT_COMMON_MUTEX_H_
#define H5DEPOT_COMMON_MUTEX_H_

#include <chrono>
#include <condition_variable>
#include <mutex>

#include "absl/base/thread_annotations.h"

namespace h5depot::internal {

class ABSL_LOCKABLE Mutex {
 public:
  constexpr Mutex() noexcept = default;
  Mutex(const Mutex&) = delete;
  Mutex& operator=(const Mutex&) = delete;

  void Lock() ABSL_EXCLUSIVE_LOCK_FUNCTION() { mutex_.lock(); }
  void Unlock() ABSL_UNLOCK_FUNCTION() { mutex_.unlock(); }

 private:
  friend class CondVar;
  std::mutex mutex_;
};

// Holds `mutex` for its own lifetime.
class ABSL_SCOPED_LOCKABLE MutexLock {
 public:
  explicit MutexLock(Mutex* mutex) ABSL_EXCLUSIVE_LOCK_FUNCTION(mutex)
      : mutex_(mutex) {
    mutex_->Lock();
  }
  ~MutexLock() ABSL_UNLOCK_FUNCTION() { mutex_->Unlock(); }
  MutexLock(const MutexLock&) = delete;
  MutexLock& operator=(const MutexLock&) = delete;

 private:
  Mutex* const mutex_;
};

// A condition variable for Mutex. Waits release `mutex` while they wait
// and hold it again when they return; they may return spuriously, so
// callers wait in a loop on their condition.
class CondVar {
 public:
  void Wait(Mutex* mutex) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mutex) {
    std::unique_lock<std::mutex> lock(mutex->mutex_, std::adopt_lock);
    condition_.wait(lock);
    lock.release();
  }
  // Returns false if `deadline` passed.
  template <typename Clock, typename Duration>
  bool WaitUntil(Mutex* mutex,
                 std::chrono::time_point<Clock, Duration> deadline)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mutex) {
    std::unique_lock<std::mutex> lock(mutex->mutex_, std::adopt_lock);
    const bool woken =
        condition_.wait_until(lock, deadline) == std::cv_status::no_timeout;
    lock.release();
    return woken;
  }
  void Signal() { condition_.notify_one(); }
  void SignalAll() { condition_.notify_all(); }

 private:
  std::condition_variable condition_;
};

}  // namespace h5depot::internal

#endif  // H5DEPOT_COMMON_MUTEX_H_
