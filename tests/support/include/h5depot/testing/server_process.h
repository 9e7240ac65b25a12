// h5depot::testing::ServerProcess: a real h5depotd, started as a child
// process for one test or test suite.
//
// Start() returns only once the server printed that it is listening (and the
// rest of its start-up report: data lane, memory), so the target can be used
// at once: no sleeps, no polling. The server's stderr
// goes to the test's stderr, where ctest shows it when a test fails.
//
// For fault tests the server can be stopped and continued (Suspend,
// Resume: SIGSTOP and SIGCONT), killed (Kill), and started again where it
// was (Restart), so that clients connected to the first one find the next.
//
// Example:
//   ServerProcessOptions options;
//   options.unix_socket = true;
//   auto server = ServerProcess::Start(options);
//   ASSERT_TRUE(server.ok()) << server.status();
//   auto client = h5depot::Client::Connect((*server)->unix_target());
#ifndef H5DEPOT_TESTING_SERVER_PROCESS_H_
#define H5DEPOT_TESTING_SERVER_PROCESS_H_

#include <sys/types.h>

#include <map>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "h5depot/testing/temp_dir.h"

namespace h5depot::testing {

struct ServerProcessOptions {
  // Listen on 127.0.0.1 on a free port the server picks (--listen=...:0).
  bool tcp = true;
  // The TCP port to listen on instead of a free one (with tcp).
  int tcp_port = 0;
  // Also (or instead) listen on a unix socket in a new private directory.
  bool unix_socket = false;
  // The socket's path instead of one in a new private directory (with
  // unix_socket); its directory must exist, and is left in place.
  std::string unix_socket_path;
  // Further flags, passed as given, e.g. "--max-memory=1M".
  std::vector<std::string> extra_flags;
  // The server's soft limit on open descriptors (RLIMIT_NOFILE), set
  // before it starts; 0: the test's own. For tests of what it does when it
  // runs out of them.
  uint64_t max_open_files = 0;
  // Changes to the server's environment, which is otherwise this
  // process's: a value sets the variable, nullopt removes it.
  std::map<std::string, std::optional<std::string>> env;
  // The binary to run; empty: H5depotdPath().
  std::string binary;
  // How long Start() waits for the "listening on" lines before it gives up
  // and kills the server (generous: sanitizer builds start slowly).
  absl::Duration start_timeout = absl::Seconds(60);
};

class ServerProcess {
 public:
  // Starts h5depotd and waits until it listens on every requested address.
  // INVALID_ARGUMENT if neither tcp nor unix_socket is set; INTERNAL if the
  // process cannot be started, exits, or is not ready within start_timeout
  // (the message then carries its exit status). The server is killed if
  // the thread that started it exits, or this process dies: start it from
  // the test (or fixture) that uses it.
  static absl::StatusOr<std::unique_ptr<ServerProcess>> Start(
      const ServerProcessOptions& options = {});

  // Stops the server (SIGTERM, SIGKILL if it is not gone within 30 s; a
  // suspended server is continued first) and reaps it. Removes the unix
  // socket's private directory.
  ~ServerProcess();
  ServerProcess(const ServerProcess&) = delete;
  ServerProcess& operator=(const ServerProcess&) = delete;

  // A target for Client::Connect and `h5depot --server`: tcp_target() if
  // the server listens on TCP, else unix_target(). Still valid (and then
  // unreachable) after the server stopped.
  const std::string& target() const;
  // "127.0.0.1:PORT", or empty when not listening on TCP.
  const std::string& tcp_target() const { return tcp_target_; }
  // "unix:/path/to/h5depotd.sock", or empty when not listening on a socket.
  const std::string& unix_target() const { return unix_target_; }
  // The socket's file system path (unix_target() without "unix:").
  const std::string& unix_socket_path() const { return unix_socket_path_; }

  // The data lane as h5depotd reported it on start: the TCP port (0 if it
  // reported none) and the Unix socket path (empty if none).
  int data_lane_port() const { return data_lane_port_; }
  const std::string& data_lane_unix_path() const {
    return data_lane_unix_path_;
  }
  // Everything h5depotd printed on stdout while starting, line by line.
  const std::string& startup_output() const { return startup_output_; }
  // The port of the address in the start-up line that begins with
  // `line_start` ("h5depotd metrics on http://" finds 9464 in "h5depotd
  // metrics on http://127.0.0.1:9464/metrics"); 0 if there is no such line.
  int ReportedPort(std::string_view line_start) const;

  // Reads what h5depotd prints on stdout after its start-up report until a
  // line that starts with `prefix`, and returns that line (without its
  // newline); earlier lines are skipped. DEADLINE_EXCEEDED if none comes
  // within `timeout`, INTERNAL if the server closes its stdout first. For
  // tests that wait for the server to report what a signal did.
  absl::StatusOr<std::string> AwaitOutputLine(const std::string& prefix,
                                              absl::Duration timeout);

  pid_t pid() const { return pid_; }
  // The CPU time (user and system) the server has used so far, from
  // /proc/PID/stat, to tell an idle server from a busy one. INTERNAL if it
  // cannot be read (the server is not running).
  absl::StatusOr<absl::Duration> CpuTime() const;
  // Whether the process exists (suspended or not).
  bool running() const { return pid_ > 0; }
  bool suspended() const { return suspended_; }

  // SIGKILLs the server and reaps it now: the server dies as it would in a
  // crash, with calls still under way. No-op if it is not running.
  void Kill();

  // SIGTERMs the server and waits up to `timeout` for it to exit. OK if it
  // exited with status 0; INTERNAL with how it ended otherwise (after a
  // timeout it is killed). No-op returning OK if it is not running.
  // A suspended server is continued after the SIGTERM, so that it sees it.
  absl::Status Terminate(absl::Duration timeout = absl::Seconds(30));

  // SIGSTOPs the server and returns once it is stopped: its sockets stay
  // open and the kernel still accepts connections on them, but nothing
  // answers, as with a hung or swapped-out server. FAILED_PRECONDITION if
  // it is not running or already suspended.
  absl::Status Suspend();

  // SIGCONTs a suspended server: it carries on where it was, with the
  // requests that arrived meanwhile. FAILED_PRECONDITION if it is not
  // suspended.
  absl::Status Resume();

  // Starts h5depotd again with the same flags at the same addresses: the
  // TCP port, the Unix socket path and the data lane's port and path of
  // the first start, so that existing clients reach the new server with
  // the targets they have. A server still running is killed first
  // (SIGKILL, as in a crash); a clean stop is Terminate() before this.
  // Returns, as Start() does, once the new server listens; the errors of
  // Start(), and the object then holds no running server. Its images are
  // gone, as with any restart.
  absl::Status Restart();

 private:
  ServerProcess() = default;

  // Runs `argv` and reads its start-up report until every address is
  // listening; fills the fields below from it.
  absl::Status Launch(const std::vector<std::string>& argv, int wanted,
                      absl::Duration start_timeout);
  absl::Status ReadStartupReport(const std::string& command, int wanted,
                                 absl::Duration start_timeout);

  // Waits up to `timeout` for the server to exit and reaps it. Returns its
  // wait status, or nullopt if it is still running.
  std::optional<int> WaitForExit(absl::Duration timeout);

  ServerProcessOptions options_;   // as given, with the socket path set
  std::vector<std::string> argv_;  // of the first start
  pid_t pid_ = -1;                 // -1 once reaped
  bool suspended_ = false;
  int pid_fd_ = -1;     // pidfd of the server: waits with a timeout
  int stdout_fd_ = -1;  // kept open so late output never hits a closed pipe
  std::string tcp_target_;
  std::string unix_target_;
  std::string unix_socket_path_;
  int data_lane_port_ = 0;
  std::string data_lane_unix_path_;
  std::string startup_output_;
  std::string output_pending_;  // read after start-up, not yet a line
  std::optional<TempDir> socket_dir_;
};

}  // namespace h5depot::testing

#endif  // H5DEPOT_TESTING_SERVER_PROCESS_H_
