#include "h5depot/testing/subprocess.h"

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "tests/support/src/spawn_internal.h"

// Set by CMake to $<TARGET_FILE:...> of the binaries under test.
#ifndef H5DEPOT_TESTING_H5DEPOTD_PATH
#error "H5DEPOT_TESTING_H5DEPOTD_PATH must be defined by the build"
#endif
#ifndef H5DEPOT_TESTING_CLI_PATH
#error "H5DEPOT_TESTING_CLI_PATH must be defined by the build"
#endif

namespace h5depot::testing {
namespace {

using internal::CloseFd;

// Appends what is readable on `fd` to `out`; closes `fd` at end of file.
void Drain(int& fd, std::string& out) {
  char buffer[65536];
  while (fd >= 0) {
    const ssize_t got = read(fd, buffer, sizeof(buffer));
    if (got > 0) {
      out.append(buffer, static_cast<size_t>(got));
    } else if (got == 0 || (errno != EINTR && errno != EAGAIN)) {
      CloseFd(fd);
    } else if (errno == EAGAIN) {
      return;
    }
  }
}

// Writes as much of `data` from `offset` as the pipe takes now. A child that
// closed its stdin early is not an error: the rest is dropped. SIGPIPE is
// held blocked on this thread only and any pending one is discarded, so the
// test process is never killed by it.
void Feed(int& fd, const std::string& data, size_t& offset) {
  sigset_t pipe_only, old_mask;
  sigemptyset(&pipe_only);
  sigaddset(&pipe_only, SIGPIPE);
  pthread_sigmask(SIG_BLOCK, &pipe_only, &old_mask);
  while (fd >= 0 && offset < data.size()) {
    const ssize_t put = write(fd, data.data() + offset, data.size() - offset);
    if (put > 0) {
      offset += static_cast<size_t>(put);
    } else if (errno == EAGAIN) {
      break;
    } else if (errno != EINTR) {
      CloseFd(fd);  // EPIPE: the child does not want the rest
    }
  }
  if (fd >= 0 && offset == data.size()) CloseFd(fd);
  const timespec no_wait{0, 0};
  while (sigtimedwait(&pipe_only, nullptr, &no_wait) > 0) {
  }
  pthread_sigmask(SIG_SETMASK, &old_mask, nullptr);
}

CommandResult CannotRun(const absl::Status& status) {
  CommandResult result;
  result.exit_code = 127;
  result.stderr_text = std::string(status.message());
  return result;
}

}  // namespace

int MemfdsOf(pid_t pid, const std::string& name) {
  const std::string directory = absl::StrCat("/proc/", pid, "/fd");
  const std::string wanted = absl::StrCat("/memfd:", name);
  int count = 0;
  for (int fd = 0; fd < 4096; ++fd) {
    char target[256];
    const std::string link = absl::StrCat(directory, "/", fd);
    const ssize_t length = readlink(link.c_str(), target, sizeof(target) - 1);
    if (length <= 0) continue;
    target[length] = '\0';
    if (std::string(target).find(wanted) == 0) ++count;
  }
  return count;
}

const std::string& H5depotdPath() {
  static const std::string* const path =
      new std::string(H5DEPOT_TESTING_H5DEPOTD_PATH);
  return *path;
}

const std::string& H5depotCliPath() {
  static const std::string* const path =
      new std::string(H5DEPOT_TESTING_CLI_PATH);
  return *path;
}

CommandResult RunCommand(const std::vector<std::string>& argv,
                         const CommandOptions& options) {
  auto in = internal::MakePipe();
  if (!in.ok()) return CannotRun(in.status());
  auto out = internal::MakePipe();
  if (!out.ok()) {
    close(in->first);
    close(in->second);
    return CannotRun(out.status());
  }
  auto err = internal::MakePipe();
  if (!err.ok()) {
    close(in->first);
    close(in->second);
    close(out->first);
    close(out->second);
    return CannotRun(err.status());
  }
  int stdin_fd = in->second, stdout_fd = out->first, stderr_fd = err->first;

  internal::SpawnRequest request;
  request.argv = argv;
  request.env_changes = options.env;
  request.working_dir = options.working_dir;
  request.stdin_fd = in->first;
  request.stdout_fd = out->second;
  request.stderr_fd = err->second;
  auto child = internal::Spawn(request);
  close(in->first);
  close(out->second);
  close(err->second);
  if (!child.ok()) {
    CloseFd(stdin_fd);
    CloseFd(stdout_fd);
    CloseFd(stderr_fd);
    return CannotRun(child.status());
  }
  for (int fd : {stdin_fd, stdout_fd, stderr_fd}) {
    fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
  }

  CommandResult result;
  size_t fed = 0;
  if (options.stdin_data.empty()) CloseFd(stdin_fd);
  const absl::Time deadline = absl::Now() + options.timeout;
  bool killed = false;
  std::optional<int> wait_status;
  while (!wait_status.has_value()) {
    pollfd fds[4];
    nfds_t count = 0;
    fds[count++] = {child->pid_fd, POLLIN, 0};
    if (stdout_fd >= 0) fds[count++] = {stdout_fd, POLLIN, 0};
    if (stderr_fd >= 0) fds[count++] = {stderr_fd, POLLIN, 0};
    if (stdin_fd >= 0) fds[count++] = {stdin_fd, POLLOUT, 0};
    const int ready =
        poll(fds, count, killed ? -1 : internal::PollTimeoutMs(deadline));
    if (ready < 0 && errno != EINTR) break;
    if (ready == 0 && !killed) {
      kill(child->pid, SIGKILL);
      killed = true;
      result.timed_out = true;
    }
    Drain(stdout_fd, result.stdout_text);
    Drain(stderr_fd, result.stderr_text);
    Feed(stdin_fd, options.stdin_data, fed);
    if ((fds[0].revents & POLLIN) != 0) {
      wait_status = internal::WaitForExit(*child, absl::ZeroDuration());
    }
  }
  // Whatever the child wrote before it exited is in the pipes now; a
  // grandchild that kept them open does not hold us up.
  Drain(stdout_fd, result.stdout_text);
  Drain(stderr_fd, result.stderr_text);
  CloseFd(stdin_fd);
  CloseFd(stdout_fd);
  CloseFd(stderr_fd);
  if (!wait_status.has_value()) {
    kill(child->pid, SIGKILL);
    wait_status = internal::WaitForExit(*child, absl::InfiniteDuration());
  }
  close(child->pid_fd);

  if (WIFEXITED(*wait_status)) {
    result.exit_code = WEXITSTATUS(*wait_status);
  } else if (WIFSIGNALED(*wait_status)) {
    result.term_signal = WTERMSIG(*wait_status);
  }
  return result;
}

}  // namespace h5depot::testing
