#include "h5depot/rpc/grpc_runtime.h"

#include <dirent.h>
#include <dlfcn.h>
#include <fcntl.h>
#include <grpc/fork.h>
#include <grpc/grpc.h>
#include <grpc/support/log.h>
#include <pthread.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstdint>
#include <cstdlib>
#include <new>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/strings/str_cat.h"
#include "h5depot/internal/mutex.h"

namespace h5depot::internal {
namespace {

// Why a child of fork() cannot use gRPC; each completes the sentence
// "gRPC cannot be used in this child of fork(): ".
constexpr char kBusyAtFork[] =
    "another thread of the parent was in a call to h5depotd over gRPC at the "
    "fork (fork while no call is under way, or start the process afresh)";
constexpr char kSkippedByGrpc[] =
    "gRPC found another thread of the parent inside it at the fork (does the "
    "application use gRPC itself?)";
constexpr char kForkWhileStarting[] =
    "another thread of the parent was starting gRPC at the fork";
constexpr char kStartedElsewhere[] =
    "the parent had started gRPC before h5depot did, without the fork "
    "handling h5depot needs";
constexpr char kNoForkSupport[] =
    "the parent started gRPC with its fork support off "
    "(GRPC_ENABLE_FORK_SUPPORT, or gRPC was called before h5depot's client)";
constexpr char kNoForkHooks[] =
    "this build of gRPC lacks the fork hooks h5depot needs";

// gRPC 1.51's poller reset, the step of grpc_postfork_child() that gives
// the child a polling engine of its own and closes the parent's sockets
// there. gRPC keeps one such function, and its second engine (the
// EventEngine's) replaces the first one's (the epoll set that every
// channel polls) when it starts: the child would then share that epoll set
// with its parent, each process taking the other's events, and its
// channels would keep writing on the parent's connections. So the first
// one is kept when gRPC starts, and the child is handed a function that
// resets both. These two functions are exported by libgpr but have no
// header; if they are missing, children do not use gRPC.
using ResetFunction = void (*)();
using GetResetFunction = ResetFunction (*)();
using SetResetFunction = void (*)(ResetFunction);

struct ForkHooks {
  GetResetFunction get = nullptr;
  SetResetFunction set = nullptr;
  ResetFunction first = nullptr;  // the iomgr engine's, kept at start
  ResetFunction other = nullptr;  // whatever replaced it since
  bool reset_ran = false;         // set by ResetPollers
  // For ResetPollers in a child (KeepSocketNumbersDead): the sockets open
  // before the reset, and a socket whose peer is gone, made before it.
  const std::vector<int>* sockets_before = nullptr;
  int dead_socket = -1;
};

ForkHooks hooks;

// The sockets open in this process, by number.
std::vector<int> OpenSockets() {
  std::vector<int> sockets;
  DIR* dir = opendir("/proc/self/fd");
  if (dir == nullptr) return sockets;
  while (const dirent* entry = readdir(dir)) {
    const int fd = std::atoi(entry->d_name);
    struct stat status;
    if (entry->d_name[0] != '.' && fd != dirfd(dir) &&
        fstat(fd, &status) == 0 && S_ISSOCK(status.st_mode)) {
      sockets.push_back(fd);
    }
  }
  closedir(dir);
  return sockets;
}

// A socket whose peer is gone: writes fail, reads see the end.
int DeadSocket() {
  int pair[2];
  if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, pair) != 0) return -1;
  close(pair[1]);
  return pair[0];
}

// The reset closes the parent's sockets in the child, yet the parent's
// objects there still hold their numbers, and gRPC's threads, once
// restarted, still run their timers: a keepalive ping, or the shutdown of
// a connection that failed, would reach whatever socket took the number
// next, such as the child's own new connection. So each number the reset
// freed is taken at once by `dead` (made before the reset, so that it holds
// none of those numbers itself), and nothing of the child's ever gets it.
// gRPC's threads are not running yet, and F_DUPFD never takes over a
// number that another thread of the application just reused.
void KeepSocketNumbersDead(const std::vector<int>& sockets_before, int dead) {
  for (int fd : sockets_before) {
    if (fd == dead || fcntl(fd, F_GETFD) != -1 || errno != EBADF) continue;
    const int taken = fcntl(dead, F_DUPFD_CLOEXEC, fd);
    if (taken >= 0 && taken != fd) close(taken);
  }
}

void ResetPollers() {
  hooks.reset_ran = true;
  if (hooks.first != nullptr) hooks.first();
  if (hooks.other != nullptr && hooks.other != hooks.first) hooks.other();
  if (hooks.sockets_before != nullptr && hooks.dead_socket >= 0) {
    KeepSocketNumbersDead(*hooks.sockets_before, hooks.dead_socket);
  }
}

// A symbol of libgpr, which gRPC's libraries load: looked up in that
// library itself, so that it is found whether this code was linked into
// the program or loaded privately (dlopen with RTLD_LOCAL, as Python's
// ctypes does).
void* GprSymbol(const char* name) {
  Dl_info info;
  if (dladdr(reinterpret_cast<void*>(&gpr_log), &info) == 0 ||
      info.dli_fname == nullptr) {
    return nullptr;
  }
  // Already loaded; the handle is never closed, as the library stays.
  void* gpr = dlopen(info.dli_fname, RTLD_LAZY | RTLD_NOLOAD);
  return gpr == nullptr ? nullptr : dlsym(gpr, name);
}

int64_t MonotonicNanos() {
  timespec now;
  clock_gettime(CLOCK_MONOTONIC, &now);
  return int64_t{now.tv_sec} * 1000000000 + now.tv_nsec;
}

enum class Start { kNotStarted, kStarting, kStarted };

// Everything the fork handlers share with the rest of the process. Never
// destroyed: a fork may come during static destruction.
//
// The handlers run in the forking thread, one fork at a time: mutex is
// taken before the fork and released after it on both sides (so no child
// inherits it held), which the lock analysis cannot follow.
struct ForkState {
  std::atomic<Start> start{Start::kNotStarted};
  // Set once gRPC started, before `start` says so: null if children may
  // use gRPC, else why not.
  const char* unsupported = nullptr;
  std::atomic<const char*> disabled{nullptr};  // DisableGrpcInForkedChildren

  // This process: null if gRPC is usable here, else why not.
  std::atomic<const char*> unusable{nullptr};
  // This process is a child whose gRPC is stopped as grpc_prefork() left
  // it; its first use restarts it (CheckGrpcUsable).
  std::atomic<bool> restart_pending{false};

  // The gate GrpcUse passes.
  std::atomic<int> users{0};
  std::atomic<bool> closed{false};
  std::atomic<int64_t> last_use_ended{0};  // monotonic nanoseconds
  Mutex mutex;
  CondVar opened;  // `closed` became false

  // Decided before a fork, for the child.
  bool handed_on = false;              // gRPC was stopped for the fork
  const char* child_reason = nullptr;  // else why the child cannot use it
};

ForkState& State() {
  static ForkState* state = new ForkState();
  return *state;
}

// Why a child forked now could not use gRPC; null if it can.
const char* WhyChildCannotUseGrpc(ForkState& state) {
  if (const char* why = state.unusable.load()) return why;
  if (const Start start = state.start.load(); start != Start::kStarted) {
    // A thread in a call may be starting gRPC, or about to (a client starts
    // it with its first call: WatchForksForGrpc). Otherwise the child
    // starts gRPC afresh if it wants it.
    if (state.users.load() != 0) return kBusyAtFork;
    return start == Start::kStarting ? kForkWhileStarting : nullptr;
  }
  if (state.unsupported != nullptr) return state.unsupported;
  if (const char* why = state.disabled.load()) return why;
  if (state.users.load() != 0) return kBusyAtFork;
  return nullptr;
}

// pthread_atfork's handlers.
void BeforeFork() ABSL_NO_THREAD_SAFETY_ANALYSIS {
  ForkState& state = State();
  state.mutex.Lock();
  // From here on a GrpcUse waits (the mutex, then `opened`), and one that
  // got past the gate before is counted in `users`.
  state.closed.store(true);
  state.handed_on = false;
  state.child_reason = WhyChildCannotUseGrpc(state);
  // A child that has not restarted gRPC yet hands on the same stopped
  // state: its child restarts it just as it would have.
  if (state.child_reason != nullptr || state.restart_pending.load() ||
      state.start.load() != Start::kStarted) {
    return;
  }
  for (;;) {
    const int64_t wait =
        state.last_use_ended.load() +
        std::chrono::nanoseconds(kGrpcQuietBeforeFork).count() -
        MonotonicNanos();
    if (wait <= 0) break;
    timespec pause{wait / 1000000000, static_cast<long>(wait % 1000000000)};
    while (nanosleep(&pause, &pause) != 0 && errno == EINTR) {
    }
  }
  grpc_prefork();
  state.handed_on = true;
}

void AfterForkInParent() ABSL_NO_THREAD_SAFETY_ANALYSIS {
  ForkState& state = State();
  if (state.handed_on) grpc_postfork_parent();
  state.closed.store(false);
  state.opened.SignalAll();
  state.mutex.Unlock();
}

void AfterForkInChild() ABSL_NO_THREAD_SAFETY_ANALYSIS {
  ForkState& state = State();
  // The parent's other threads, counted or waiting, are not here.
  state.users.store(0);
  state.closed.store(false);
  new (&state.opened) CondVar();  // as buffer_recycler.cc says why
  if (state.handed_on) {
    state.restart_pending.store(true);
  } else if (state.child_reason != nullptr) {
    state.unusable.store(state.child_reason);
  }
  state.mutex.Unlock();
}

// The child's half of the fork, on first use.
void RestartInChild(ForkState& state)
    ABSL_EXCLUSIVE_LOCKS_REQUIRED(state.mutex) {
  hooks.reset_ran = false;
  if (ResetFunction current = hooks.get(); current != &ResetPollers) {
    hooks.other = current;
  }
  hooks.set(&ResetPollers);
  const std::vector<int> sockets_before = OpenSockets();
  hooks.sockets_before = &sockets_before;
  hooks.dead_socket = DeadSocket();
  grpc_postfork_child();
  if (hooks.dead_socket >= 0) close(hooks.dead_socket);
  hooks.dead_socket = -1;
  hooks.sockets_before = nullptr;
  // grpc_prefork() leaves gRPC alone when it finds another thread inside
  // it; grpc_postfork_child() then does nothing, the poller reset included.
  if (!hooks.reset_ran) state.unusable.store(kSkippedByGrpc);
  state.restart_pending.store(false);
}

// Registered with atexit once gRPC started, so it runs before libgrpc's own
// static objects are destroyed. gRPC finishes tearing down a channel on
// threads of its own after the channel is gone, and those threads are
// still running while the process exits: gRPC 1.51 with fork support
// crashes now and then when such a teardown meets its destroyed statics (a
// program that disconnects and returns from main at once). So exit first
// lets gRPC go quiet, as a fork does, for at most kLongestExitWait: a call
// still under way on another thread does not hold the exit up for long.
// Quiet here is longer than a fork's (kQuietBeforeExit): on a machine with
// every CPU busy, a test process that had just lost a server crashed at
// exit after the fork's 50 ms, most likely with its channels' teardown
// not yet run (it did not crash again in 110 runs here, so the cause is
// inferred, not seen).
void AwaitQuietAtExit() {
  constexpr std::chrono::milliseconds kLongestExitWait{1000};
  constexpr std::chrono::milliseconds kQuietBeforeExit{200};
  ForkState& state = State();
  // A child that never restarted gRPC has none of its threads.
  if (state.restart_pending.load() || state.unusable.load() != nullptr ||
      state.last_use_ended.load() == 0) {
    return;
  }
  const int64_t give_up =
      MonotonicNanos() + std::chrono::nanoseconds(kLongestExitWait).count();
  for (;;) {
    const int64_t now = MonotonicNanos();
    int64_t wait = state.last_use_ended.load() +
                   std::chrono::nanoseconds(kQuietBeforeExit).count() - now;
    if (state.users.load() != 0) wait = 1000000;  // poll again in 1 ms
    wait = std::min(wait, give_up - now);
    if (wait <= 0) return;
    timespec pause{wait / 1000000000, static_cast<long>(wait % 1000000000)};
    while (nanosleep(&pause, &pause) != 0 && errno == EINTR) {
    }
  }
}

void RegisterForkHandlers() {
  static const bool registered =
      (pthread_atfork(&BeforeFork, &AfterForkInParent, &AfterForkInChild),
       true);
  (void)registered;
}

void StartGrpc() {
  ForkState& state = State();
  RegisterForkHandlers();
  state.start.store(Start::kStarting);
  // gRPC reads the variable once, on its first call of any kind (this
  // grpc_is_initialized() included); it is not left behind for programs
  // this process runs. A server, which never hands gRPC on, does without
  // fork support and its bookkeeping.
  const bool set_here = state.disabled.load() == nullptr &&
                        std::getenv("GRPC_ENABLE_FORK_SUPPORT") == nullptr &&
                        setenv("GRPC_ENABLE_FORK_SUPPORT", "1", 0) == 0;
  const bool started_elsewhere = grpc_is_initialized() != 0;
  grpc_init();  // the matching grpc_shutdown() is deliberately never called
  if (set_here) unsetenv("GRPC_ENABLE_FORK_SUPPORT");
  std::atexit(&AwaitQuietAtExit);
  hooks.get = reinterpret_cast<GetResetFunction>(
      GprSymbol("_ZN9grpc_core4Fork30GetResetChildPollingEngineFuncEv"));
  hooks.set = reinterpret_cast<SetResetFunction>(
      GprSymbol("_ZN9grpc_core4Fork30SetResetChildPollingEngineFuncEPFvvE"));
  if (started_elsewhere) {
    state.unsupported = kStartedElsewhere;
  } else if (hooks.get == nullptr || hooks.set == nullptr) {
    state.unsupported = kNoForkHooks;
  } else if ((hooks.first = hooks.get()) == nullptr) {
    // gRPC registers its poller's reset only with fork support on.
    state.unsupported = kNoForkSupport;
  }
  state.start.store(Start::kStarted);
}

}  // namespace

void WatchForksForGrpc() { RegisterForkHandlers(); }

void KeepGrpcRuntimeAlive() {
  static const bool started = (StartGrpc(), true);
  (void)started;
}

GrpcUse::GrpcUse() {
  ForkState& state = State();
  for (;;) {
    state.users.fetch_add(1);
    if (!state.closed.load()) return;
    // A fork is being prepared: step back out of its way until it is done.
    state.users.fetch_sub(1);
    MutexLock lock(&state.mutex);
    while (state.closed.load()) state.opened.Wait(&state.mutex);
  }
}

GrpcUse::~GrpcUse() {
  ForkState& state = State();
  state.last_use_ended.store(MonotonicNanos());
  state.users.fetch_sub(1);
}

int GrpcUsesUnderWay() { return State().users.load(); }

absl::Status CheckGrpcUsable() {
  ForkState& state = State();
  if (state.restart_pending.load()) {
    MutexLock lock(&state.mutex);
    if (state.restart_pending.load()) RestartInChild(state);
  }
  if (const char* why = state.unusable.load()) {
    return absl::FailedPreconditionError(
        absl::StrCat("gRPC cannot be used in this child of fork(): ", why));
  }
  return absl::OkStatus();
}

void DisableGrpcInForkedChildren(const char* reason) {
  State().disabled.store(reason);
}

void SilenceGrpcLogUnlessAsked() {
  if (std::getenv("GRPC_VERBOSITY") == nullptr) {
    gpr_set_log_function([](gpr_log_func_args*) {});
  }
}

}  // namespace h5depot::internal
