#include "h5depot/testing/server_process.h"

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <fstream>
#include <sstream>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
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
  server->options_ = options;
  if (options.unix_socket && options.unix_socket_path.empty()) {
    // Under /tmp rather than $TMPDIR: a socket path must fit in 108 bytes.
    auto dir = TempDir::Create("/tmp");
    if (!dir.ok()) return dir.status();
    server->socket_dir_.emplace(*std::move(dir));
    server->options_.unix_socket_path =
        absl::StrCat(server->socket_dir_->path(), "/h5depotd.sock");
  }
  std::vector<std::string> argv = {
      options.binary.empty() ? H5depotdPath() : options.binary,
      options.tcp ? absl::StrCat("--listen=127.0.0.1:", options.tcp_port)
                  : "--listen="};
  if (options.unix_socket) {
    argv.push_back(absl::StrCat("--unix=", server->options_.unix_socket_path));
  }
  argv.insert(argv.end(), options.extra_flags.begin(),
              options.extra_flags.end());
  server->argv_ = argv;
  const int wanted = (options.tcp ? 1 : 0) + (options.unix_socket ? 1 : 0);
  if (absl::Status status = server->Launch(argv, wanted, options.start_timeout);
      !status.ok()) {
    return status;
  }
  return server;
}

absl::StatusOr<absl::Duration> ServerProcess::CpuTime() const {
  const std::string path = absl::StrCat("/proc/", pid_, "/stat");
  std::ifstream file(path);
  std::stringstream text;
  text << file.rdbuf();
  // "PID (COMM) STATE ...": the command may hold spaces and parentheses,
  // so the fields are counted from the last ')'. utime and stime are the
  // 14th and 15th fields, the 12th and 13th after it.
  const std::string stat = text.str();
  const size_t comm_end = stat.rfind(')');
  if (pid_ <= 0 || !file || comm_end == std::string::npos) {
    return absl::InternalError(absl::StrCat("cannot read ", path));
  }
  const std::vector<std::string> fields =
      absl::StrSplit(stat.substr(comm_end + 2), ' ');
  int64_t user_ticks = 0;
  int64_t system_ticks = 0;
  if (fields.size() < 13 || !absl::SimpleAtoi(fields[11], &user_ticks) ||
      !absl::SimpleAtoi(fields[12], &system_ticks)) {
    return absl::InternalError(absl::StrCat("cannot parse ", path));
  }
  const long ticks_per_second = sysconf(_SC_CLK_TCK);
  return absl::Seconds(static_cast<double>(user_ticks + system_ticks) /
                       static_cast<double>(ticks_per_second));
}

absl::Status ServerProcess::Restart() {
  Kill();
  internal::CloseFd(pid_fd_);
  internal::CloseFd(stdout_fd_);
  // Flags given later override earlier ones: the addresses the first
  // server reported, whatever asked for them (port 0, extra_flags).
  std::vector<std::string> argv = argv_;
  if (!tcp_target_.empty()) argv.push_back("--listen=" + tcp_target_);
  if (data_lane_port_ != 0) {
    argv.push_back(absl::StrCat("--data-port=", data_lane_port_));
  }
  const int wanted =
      (tcp_target_.empty() ? 0 : 1) + (unix_target_.empty() ? 0 : 1);
  const std::string tcp_target = tcp_target_;
  const std::string unix_target = unix_target_;
  const int data_lane_port = data_lane_port_;
  const std::string data_lane_unix_path = data_lane_unix_path_;
  if (absl::Status status = Launch(argv, wanted, options_.start_timeout);
      !status.ok()) {
    // The targets stay what they were, for another Restart() to use.
    tcp_target_ = tcp_target;
    unix_target_ = unix_target;
    unix_socket_path_ = unix_target.empty() ? "" : unix_target.substr(5);
    data_lane_port_ = data_lane_port;
    data_lane_unix_path_ = data_lane_unix_path;
    return status;
  }
  if (tcp_target_ != tcp_target || unix_target_ != unix_target ||
      data_lane_port_ != data_lane_port ||
      data_lane_unix_path_ != data_lane_unix_path) {
    Kill();
    return absl::InternalError(absl::StrCat(
        "the restarted h5depotd listens elsewhere: ", startup_output_));
  }
  return absl::OkStatus();
}

absl::Status ServerProcess::Launch(const std::vector<std::string>& argv,
                                   int wanted, absl::Duration start_timeout) {
  tcp_target_.clear();
  unix_target_.clear();
  unix_socket_path_.clear();
  data_lane_port_ = 0;
  data_lane_unix_path_.clear();
  startup_output_.clear();
  suspended_ = false;

  auto out = internal::MakePipe();
  if (!out.ok()) return out.status();
  const int dev_null = open("/dev/null", O_RDONLY | O_CLOEXEC);
  internal::SpawnRequest request;
  request.argv = argv;
  request.stdin_fd = dev_null;
  request.stdout_fd = out->second;
  request.max_open_files = options_.max_open_files;
  request.env_changes = options_.env;
  auto child = internal::Spawn(request);
  close(out->second);
  if (dev_null >= 0) close(dev_null);
  if (!child.ok()) {
    close(out->first);
    return child.status();
  }
  pid_ = child->pid;
  pid_fd_ = child->pid_fd;
  stdout_fd_ = out->first;
  const std::string command = absl::StrJoin(argv, " ");
  absl::Status status = ReadStartupReport(command, wanted, start_timeout);
  if (!status.ok()) Kill();
  return status;
}

absl::Status ServerProcess::ReadStartupReport(const std::string& command,
                                              int wanted,
                                              absl::Duration start_timeout) {
  int found = 0;
  std::string pending;
  const absl::Time deadline = absl::Now() + start_timeout;
  bool reported = false;
  while (found < wanted || !reported) {
    pollfd pfd{stdout_fd_, POLLIN, 0};
    const int ready = poll(&pfd, 1, internal::PollTimeoutMs(deadline));
    if (ready < 0 && errno == EINTR) continue;
    if (ready <= 0) {
      return absl::InternalError(
          absl::StrCat("`", command, "` did not report listening within ",
                       absl::FormatDuration(start_timeout)));
    }
    char buffer[4096];
    const ssize_t got = read(stdout_fd_, buffer, sizeof(buffer));
    if (got < 0 && errno == EINTR) continue;
    if (got <= 0) {
      const std::optional<int> status = WaitForExit(absl::Seconds(10));
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
      startup_output_ += line + "\n";
      if (absl::StartsWith(line, kDataLaneOnPort)) {
        if (!absl::SimpleAtoi(line.substr(kDataLaneOnPort.size()),
                              &data_lane_port_)) {
          return absl::InternalError(
              absl::StrCat("`", command, "` printed '", line, "'"));
        }
        continue;
      }
      if (absl::StartsWith(line, kDataLaneOnUnix)) {
        data_lane_unix_path_ = line.substr(kDataLaneOnUnix.size());
        continue;
      }
      if (absl::StartsWith(line, kHoldsUpTo)) {
        reported = true;
        continue;
      }
      if (!absl::StartsWith(line, kListeningOn)) continue;
      const std::string target = line.substr(kListeningOn.size());
      if (absl::StartsWith(target, "unix:")) {
        unix_target_ = target;
        unix_socket_path_ = target.substr(5);
      } else {
        tcp_target_ = target;
      }
      ++found;
    }
  }
  // What followed the report in the last read is AwaitOutputLine's.
  output_pending_ = std::move(pending);
  return absl::OkStatus();
}

absl::StatusOr<std::string> ServerProcess::AwaitOutputLine(
    const std::string& prefix, absl::Duration timeout) {
  const absl::Time deadline = absl::Now() + timeout;
  while (true) {
    for (size_t end; (end = output_pending_.find('\n')) != std::string::npos;) {
      std::string line = output_pending_.substr(0, end);
      output_pending_.erase(0, end + 1);
      if (absl::StartsWith(line, prefix)) return line;
    }
    pollfd pfd{stdout_fd_, POLLIN, 0};
    const int ready = poll(&pfd, 1, internal::PollTimeoutMs(deadline));
    if (ready < 0 && errno == EINTR) continue;
    if (ready < 0) return absl::InternalError("poll of h5depotd's stdout");
    if (ready == 0) {
      return absl::DeadlineExceededError(
          absl::StrCat("h5depotd printed no line starting with '", prefix,
                       "' within ", absl::FormatDuration(timeout)));
    }
    char buffer[4096];
    const ssize_t got = read(stdout_fd_, buffer, sizeof(buffer));
    if (got < 0 && errno == EINTR) continue;
    if (got <= 0) {
      return absl::InternalError(absl::StrCat(
          "h5depotd closed its stdout before printing a line starting with '",
          prefix, "'"));
    }
    output_pending_.append(buffer, static_cast<size_t>(got));
  }
}

ServerProcess::~ServerProcess() {
  (void)Terminate();
  internal::CloseFd(pid_fd_);
  internal::CloseFd(stdout_fd_);
}

int ServerProcess::ReportedPort(std::string_view line_start) const {
  const absl::string_view start(line_start.data(), line_start.size());
  for (absl::string_view line : absl::StrSplit(startup_output_, '\n')) {
    if (!absl::StartsWith(line, start)) continue;
    const size_t colon = line.rfind(':');
    const size_t slash = line.find('/', colon);
    int port = 0;
    if (colon != absl::string_view::npos &&
        absl::SimpleAtoi(line.substr(colon + 1, slash - colon - 1), &port)) {
      return port;
    }
  }
  return 0;
}

const std::string& ServerProcess::target() const {
  return tcp_target_.empty() ? unix_target_ : tcp_target_;
}

std::optional<int> ServerProcess::WaitForExit(absl::Duration timeout) {
  std::optional<int> status =
      internal::WaitForExit(internal::Child{pid_, pid_fd_}, timeout);
  if (status.has_value()) {
    pid_ = -1;
    suspended_ = false;
  }
  return status;
}

absl::Status ServerProcess::Suspend() {
  if (!running() || suspended_) {
    return absl::FailedPreconditionError(running()
                                             ? "h5depotd is suspended already"
                                             : "h5depotd is not running");
  }
  if (kill(pid_, SIGSTOP) != 0) {
    return absl::InternalError(
        absl::StrCat("cannot stop h5depotd: ", std::strerror(errno)));
  }
  // WNOWAIT: an exit instead of the stop stays to be reaped by WaitForExit.
  siginfo_t info{};
  while (waitid(P_PID, static_cast<id_t>(pid_), &info,
                WSTOPPED | WEXITED | WNOWAIT) != 0) {
    if (errno != EINTR) {
      return absl::InternalError(
          absl::StrCat("waiting for h5depotd to stop: ", std::strerror(errno)));
    }
  }
  if (info.si_code != CLD_STOPPED) {
    const std::optional<int> status = WaitForExit(absl::InfiniteDuration());
    return absl::InternalError(
        absl::StrCat("h5depotd ", internal::DescribeWaitStatus(*status),
                     " instead of stopping"));
  }
  suspended_ = true;
  return absl::OkStatus();
}

absl::Status ServerProcess::Resume() {
  if (!running() || !suspended_) {
    return absl::FailedPreconditionError("h5depotd is not suspended");
  }
  if (kill(pid_, SIGCONT) != 0) {
    return absl::InternalError(
        absl::StrCat("cannot continue h5depotd: ", std::strerror(errno)));
  }
  suspended_ = false;
  return absl::OkStatus();
}

void ServerProcess::Kill() {
  if (!running()) return;
  kill(pid_, SIGKILL);  // ends a stopped process too
  WaitForExit(absl::InfiniteDuration());
}

absl::Status ServerProcess::Terminate(absl::Duration timeout) {
  if (!running()) return absl::OkStatus();
  kill(pid_, SIGTERM);
  // A stopped process keeps the SIGTERM pending until it is continued.
  if (suspended_) static_cast<void>(Resume());
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
