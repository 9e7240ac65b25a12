#include "h5depot/testing/server_process.h"

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "h5depot/testing/subprocess.h"
#include "tests/support/src/spawn_internal.h"

namespace h5depot::testing {
namespace {

// What h5depotd prints on stdout, once per address, when it is ready.
constexpr absl::string_view kListeningOn = "h5depotd listening on ";
// Where it serves the data lane, after the addresses.
constexpr absl::string_view kDataLaneOnPort = "h5depotd data lane on port ";
constexpr absl::string_view kDataLaneOnUnix = "h5depotd data lane on unix:";
// The last line of its start-up report.
constexpr absl::string_view kHoldsUpTo = "h5depotd holds up to ";

}  // namespace

absl::StatusOr<std::unique_ptr<ServerProcess>> ServerProcess::Start(
    const ServerProcessOptions& options) {
  if (!options.tcp && !options.unix_socket) {
    return absl::InvalidArgumentError(
        "ServerProcess needs tcp, unix_socket or both");
  }
  std::unique_ptr<ServerProcess> server(new ServerProcess());
  std::vector<std::string> argv = {
      options.binary.empty() ? H5depotdPath() : options.binary,
      options.tcp ? "--listen=127.0.0.1:0" : "--listen="};
  if (options.unix_socket) {
    // Under /tmp rather than $TMPDIR: a socket path must fit in 108 bytes.
    auto dir = TempDir::Create("/tmp");
    if (!dir.ok()) return dir.status();
    server->socket_dir_.emplace(*std::move(dir));
    argv.push_back(
        absl::StrCat("--unix=", server->socket_dir_->path(), "/h5depotd.sock"));
  }
  argv.insert(argv.end(), options.extra_flags.begin(),
              options.extra_flags.end());

  auto out = internal::MakePipe();
  if (!out.ok()) return out.status();
  const int dev_null = open("/dev/null", O_RDONLY | O_CLOEXEC);
  internal::SpawnRequest request;
  request.argv = argv;
  request.stdin_fd = dev_null;
  request.stdout_fd = out->second;
  auto child = internal::Spawn(request);
  close(out->second);
  if (dev_null >= 0) close(dev_null);
  if (!child.ok()) {
    close(out->first);
    return child.status();
  }
  server->pid_ = child->pid;
  server->pid_fd_ = child->pid_fd;
  server->stdout_fd_ = out->first;
  const std::string command = absl::StrJoin(argv, " ");

  // From here on, an early return destroys `server`, which stops the child.
  const int wanted = (options.tcp ? 1 : 0) + (options.unix_socket ? 1 : 0);
  int found = 0;
  std::string pending;
  const absl::Time deadline = absl::Now() + options.start_timeout;
  bool reported = false;
  while (found < wanted || !reported) {
    pollfd pfd{server->stdout_fd_, POLLIN, 0};
    const int ready = poll(&pfd, 1, internal::PollTimeoutMs(deadline));
    if (ready < 0 && errno == EINTR) continue;
    if (ready <= 0) {
      return absl::InternalError(
          absl::StrCat("`", command, "` did not report listening within ",
                       absl::FormatDuration(options.start_timeout)));
    }
    char buffer[4096];
    const ssize_t got = read(server->stdout_fd_, buffer, sizeof(buffer));
    if (got < 0 && errno == EINTR) continue;
    if (got <= 0) {
      const std::optional<int> status = server->WaitForExit(absl::Seconds(10));
      return absl::InternalError(absl::StrCat(
          "`", command, "` ",
          status.has_value() ? internal::DescribeWaitStatus(*status)
                             : "closed its stdout",
          " before it was listening (its stderr is above)"));
    }
    pending.append(buffer, static_cast<size_t>(got));
    for (size_t end; (end = pending.find('\n')) != std::string::npos;) {
      const std::string line = pending.substr(0, end);
      pending.erase(0, end + 1);
      server->startup_output_ += line + "\n";
      if (absl::StartsWith(line, kDataLaneOnPort)) {
        if (!absl::SimpleAtoi(line.substr(kDataLaneOnPort.size()),
                              &server->data_lane_port_)) {
          return absl::InternalError(
              absl::StrCat("`", command, "` printed '", line, "'"));
        }
        continue;
      }
      if (absl::StartsWith(line, kDataLaneOnUnix)) {
        server->data_lane_unix_path_ = line.substr(kDataLaneOnUnix.size());
        continue;
      }
      if (absl::StartsWith(line, kHoldsUpTo)) {
        reported = true;
        continue;
      }
      if (!absl::StartsWith(line, kListeningOn)) continue;
      const std::string target = line.substr(kListeningOn.size());
      if (absl::StartsWith(target, "unix:")) {
        server->unix_target_ = target;
        server->unix_socket_path_ = target.substr(5);
      } else {
        server->tcp_target_ = target;
      }
      ++found;
    }
  }
  return server;
}

ServerProcess::~ServerProcess() {
  (void)Terminate();
  internal::CloseFd(pid_fd_);
  internal::CloseFd(stdout_fd_);
}

const std::string& ServerProcess::target() const {
  return tcp_target_.empty() ? unix_target_ : tcp_target_;
}

std::optional<int> ServerProcess::WaitForExit(absl::Duration timeout) {
  std::optional<int> status =
      internal::WaitForExit(internal::Child{pid_, pid_fd_}, timeout);
  if (status.has_value()) pid_ = -1;
  return status;
}

void ServerProcess::Kill() {
  if (!running()) return;
  kill(pid_, SIGKILL);
  WaitForExit(absl::InfiniteDuration());
}

absl::Status ServerProcess::Terminate(absl::Duration timeout) {
  if (!running()) return absl::OkStatus();
  kill(pid_, SIGTERM);
  const std::optional<int> status = WaitForExit(timeout);
  if (!status.has_value()) {
    Kill();
    return absl::InternalError(absl::StrCat("h5depotd did not exit within ",
                                            absl::FormatDuration(timeout),
                                            " of SIGTERM; killed it"));
  }
  if (!WIFEXITED(*status) || WEXITSTATUS(*status) != 0) {
    return absl::InternalError(
        absl::StrCat("h5depotd ", internal::DescribeWaitStatus(*status),
                     " after SIGTERM (its stderr is above)"));
  }
  return absl::OkStatus();
}

}  // namespace h5depot::testing
