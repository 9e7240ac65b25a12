#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <climits>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "tests/support/src/spawn_internal.h"

extern char** environ;

namespace h5depot::testing::internal {
namespace {

// argv[0] as execve needs it: a name without '/' is looked up in $PATH here,
// in the parent, because the child may only make async-signal-safe calls.
std::string ResolveExecutable(const std::string& name) {
  if (name.find('/') != std::string::npos) return name;
  const char* path = std::getenv("PATH");
  for (absl::string_view dir :
       absl::StrSplit(path != nullptr ? path : "/usr/bin:/bin", ':')) {
    std::string candidate = absl::StrCat(dir.empty() ? "." : dir, "/", name);
    if (access(candidate.c_str(), X_OK) == 0) return candidate;
  }
  return name;  // execve fails with ENOENT, which is reported
}

std::vector<std::string> ChildEnvironment(
    const std::map<std::string, std::optional<std::string>>& changes) {
  std::vector<std::string> env;
  for (char** entry = environ; *entry != nullptr; ++entry) {
    std::string variable(*entry);
    std::string name = variable.substr(0, variable.find('='));
    if (changes.count(name) == 0) env.push_back(std::move(variable));
  }
  for (const auto& [name, value] : changes) {
    if (value.has_value()) env.push_back(absl::StrCat(name, "=", *value));
  }
  return env;
}

std::vector<char*> PointersTo(std::vector<std::string>& strings) {
  std::vector<char*> pointers;
  pointers.reserve(strings.size() + 1);
  for (std::string& s : strings) pointers.push_back(s.data());
  pointers.push_back(nullptr);
  return pointers;
}

// Runs in the forked child: only async-signal-safe calls from here on.
[[noreturn]] void ExecChild(const SpawnRequest& request, pid_t parent,
                            const char* path, char* const* argv,
                            char* const* envp, const rlimit* open_files,
                            int error_fd) {
  // Die with the parent rather than outlive a crashed test as an orphan.
  if (prctl(PR_SET_PDEATHSIG, SIGKILL) != 0 || getppid() != parent) {
    _exit(127);
  }
  sigset_t none;
  sigemptyset(&none);
  sigprocmask(SIG_SETMASK, &none, nullptr);
  struct sigaction default_action;
  std::memset(&default_action, 0, sizeof(default_action));
  default_action.sa_handler = SIG_DFL;
  for (int sig = 1; sig < NSIG; ++sig) {
    sigaction(sig, &default_action, nullptr);  // fails harmlessly for some
  }
  const int targets[3] = {STDIN_FILENO, STDOUT_FILENO, STDERR_FILENO};
  const int sources[3] = {request.stdin_fd, request.stdout_fd,
                          request.stderr_fd};
  bool ready = true;
  for (int i = 0; i < 3 && ready; ++i) {
    if (sources[i] < 0) continue;
    // dup2 onto 0..2 clears close-on-exec; a source that already is its
    // target keeps the flag, so clear it explicitly.
    ready = sources[i] == targets[i] ? fcntl(targets[i], F_SETFD, 0) == 0
                                     : dup2(sources[i], targets[i]) >= 0;
  }
  if (ready && open_files != nullptr) {
    ready = setrlimit(RLIMIT_NOFILE, open_files) == 0;
  }
  if (ready && !request.working_dir.empty()) {
    ready = chdir(request.working_dir.c_str()) == 0;
  }
  if (ready) execve(path, argv, envp);
  const int error = errno;
  ssize_t ignored = write(error_fd, &error, sizeof(error));
  (void)ignored;
  _exit(127);
}

}  // namespace

void CloseFd(int& fd) {
  if (fd >= 0) close(fd);
  fd = -1;
}

absl::StatusOr<std::pair<int, int>> MakePipe() {
  int fds[2];
  if (pipe2(fds, O_CLOEXEC) != 0) {
    return absl::InternalError(
        absl::StrCat("pipe2 failed: ", std::strerror(errno)));
  }
  return std::make_pair(fds[0], fds[1]);
}

absl::StatusOr<Child> Spawn(const SpawnRequest& request) {
  if (request.argv.empty()) {
    return absl::InvalidArgumentError("no program to run (empty argv)");
  }
  // Everything the child needs is built before fork: it must not allocate.
  const std::string path = ResolveExecutable(request.argv[0]);
  std::vector<std::string> args = request.argv;
  std::vector<std::string> env = ChildEnvironment(request.env_changes);
  std::vector<char*> argv = PointersTo(args);
  std::vector<char*> envp = PointersTo(env);

  rlimit open_files{};
  if (request.max_open_files != 0) {
    if (getrlimit(RLIMIT_NOFILE, &open_files) != 0) {
      return absl::InternalError(
          absl::StrCat("getrlimit failed: ", std::strerror(errno)));
    }
    open_files.rlim_cur = std::min<rlim_t>(
        static_cast<rlim_t>(request.max_open_files), open_files.rlim_max);
  }

  auto error_pipe = MakePipe();
  if (!error_pipe.ok()) return error_pipe.status();
  auto [error_read, error_write] = *error_pipe;

  const pid_t parent = getpid();
  const pid_t pid = fork();
  if (pid < 0) {
    const int error = errno;
    close(error_read);
    close(error_write);
    return absl::InternalError(
        absl::StrCat("fork failed: ", std::strerror(error)));
  }
  if (pid == 0) {
    ExecChild(request, parent, path.c_str(), argv.data(), envp.data(),
              request.max_open_files != 0 ? &open_files : nullptr, error_write);
  }
  close(error_write);

  // The error pipe closes on a successful execve; otherwise it carries errno.
  int exec_errno = 0;
  ssize_t got;
  do {
    got = read(error_read, &exec_errno, sizeof(exec_errno));
  } while (got < 0 && errno == EINTR);
  close(error_read);
  if (got > 0) {
    int ignored;
    waitpid(pid, &ignored, 0);
    return absl::InternalError(
        absl::StrCat("cannot run ", path, ": ", std::strerror(exec_errno)));
  }

  Child child;
  child.pid = pid;
  // Through syscall(): Debian 12's <sys/pidfd.h> cannot be used from C++.
  child.pid_fd = static_cast<int>(syscall(SYS_pidfd_open, pid, 0));
  if (child.pid_fd < 0) {
    const int error = errno;
    kill(pid, SIGKILL);
    int ignored;
    waitpid(pid, &ignored, 0);
    return absl::InternalError(
        absl::StrCat("pidfd_open failed (Linux 5.3 or later is needed): ",
                     std::strerror(error)));
  }
  return child;
}

int PollTimeoutMs(absl::Time deadline) {
  if (deadline == absl::InfiniteFuture()) return -1;
  const absl::Duration left =
      std::max(deadline - absl::Now(), absl::ZeroDuration());
  const int64_t ms =
      absl::ToInt64Milliseconds(absl::Ceil(left, absl::Milliseconds(1)));
  return static_cast<int>(std::min<int64_t>(ms, INT_MAX));
}

std::optional<int> WaitForExit(const Child& child, absl::Duration timeout) {
  const absl::Time deadline = absl::Now() + timeout;
  while (true) {
    pollfd pfd{child.pid_fd, POLLIN, 0};
    const int ready = poll(&pfd, 1, PollTimeoutMs(deadline));
    if (ready < 0 && errno == EINTR) continue;
    if (ready == 0) return std::nullopt;
    break;
  }
  int status = 0;
  while (waitpid(child.pid, &status, 0) < 0 && errno == EINTR) {
  }
  return status;
}

std::string DescribeWaitStatus(int wait_status) {
  if (WIFEXITED(wait_status)) {
    return absl::StrCat("exited with status ", WEXITSTATUS(wait_status));
  }
  if (WIFSIGNALED(wait_status)) {
    const int sig = WTERMSIG(wait_status);
    return absl::StrCat("was killed by signal ", sig, " (", strsignal(sig),
                        ")");
  }
  return absl::StrCat("ended with wait status ", wait_status);
}

}  // namespace h5depot::testing::internal
