// The test support library keeps its promises: RunCommand captures exactly
// what a process wrote and how it ended, ServerProcess hands out a server
// that is ready, InProcessDepot serves its Clients on the listeners asked
// for and cleans up, and TempDir cleans up after itself.
#include <signal.h>

#include <string>

#include "absl/strings/numbers.h"
#include "gtest/gtest.h"
#include "h5depot/client.h"
#include "h5depot/internal/hdf5_signature.h"
#include "h5depot/testing/hdf5_images.h"
#include "h5depot/testing/in_process_depot.h"
#include "h5depot/testing/server_process.h"
#include "h5depot/testing/subprocess.h"
#include "h5depot/testing/temp_dir.h"

namespace h5depot::testing {
namespace {

TEST(RunCommandTest, CapturesStdoutStderrAndExitCode) {
  CommandResult result =
      RunCommand({"/bin/sh", "-c", "printf 'out\\n'; printf err >&2; exit 3"});
  EXPECT_EQ(result.exit_code, 3);
  EXPECT_EQ(result.stdout_text, "out\n");
  EXPECT_EQ(result.stderr_text, "err");
  EXPECT_FALSE(result.timed_out);
}

TEST(RunCommandTest, FeedsStdinByteForByte) {
  std::string input(1 << 20, '\0');  // larger than a pipe's buffer
  for (size_t i = 0; i < input.size(); ++i) input[i] = static_cast<char>(i);
  CommandOptions options;
  options.stdin_data = input;
  CommandResult result = RunCommand({"cat"}, options);
  EXPECT_EQ(result.exit_code, 0) << result.stderr_text;
  EXPECT_TRUE(result.stdout_text == input);
}

TEST(RunCommandTest, ChildThatIgnoresStdinDoesNotHurtTheCaller) {
  CommandOptions options;
  options.stdin_data = std::string(1 << 20, 'x');
  CommandResult result = RunCommand({"/bin/sh", "-c", "exit 0"}, options);
  EXPECT_EQ(result.exit_code, 0);
}

TEST(RunCommandTest, SetsAndRemovesEnvironmentVariables) {
  setenv("H5DEPOT_TEST_REMOVED", "still here", 1);
  CommandOptions options;
  options.env["H5DEPOT_TEST_SET"] = "hello";
  options.env["H5DEPOT_TEST_REMOVED"] = std::nullopt;
  CommandResult result = RunCommand({"/bin/sh", "-c",
                                     "printf '%s|%s' \"$H5DEPOT_TEST_SET\" "
                                     "\"${H5DEPOT_TEST_REMOVED-unset}\""},
                                    options);
  EXPECT_EQ(result.stdout_text, "hello|unset");
}

TEST(RunCommandTest, ReportsAProgramThatCannotStart) {
  CommandResult result = RunCommand({"/nonexistent/h5depot-no-such-binary"});
  EXPECT_EQ(result.exit_code, 127);
  EXPECT_NE(result.stderr_text.find("No such file"), std::string::npos)
      << result.stderr_text;
}

TEST(RunCommandTest, ReportsDeathBySignal) {
  CommandResult result = RunCommand({"/bin/sh", "-c", "kill -TERM $$"});
  EXPECT_EQ(result.exit_code, -1);
  EXPECT_EQ(result.term_signal, SIGTERM);
}

TEST(RunCommandTest, KillsAChildThatOutlivesItsTimeout) {
  CommandOptions options;
  options.timeout = absl::Milliseconds(100);
  CommandResult result =
      RunCommand({"/bin/sh", "-c", "printf started; exec sleep 1000"}, options);
  EXPECT_TRUE(result.timed_out);
  EXPECT_EQ(result.term_signal, SIGKILL);
  EXPECT_EQ(result.stdout_text, "started");
}

TEST(TempDirTest, IsRemovedWithEverythingInIt) {
  std::string path;
  {
    auto dir = TempDir::Create();
    ASSERT_TRUE(dir.ok()) << dir.status();
    path = dir->path();
    ASSERT_TRUE(WriteFile(dir->File("a"), "bytes").ok());
    auto read = ReadFile(dir->File("a"));
    ASSERT_TRUE(read.ok()) << read.status();
    EXPECT_EQ(*read, "bytes");
    auto other = TempDir::Create();
    ASSERT_TRUE(other.ok());
    EXPECT_NE(other->path(), path);
  }
  EXPECT_FALSE(PathExists(path));
  EXPECT_EQ(ReadFile(path + "/a").status().code(), absl::StatusCode::kNotFound);
}

TEST(TestImagesTest, MakesDistinctValidHdf5Images) {
  const std::string a = MakeHdf5Image(100000, 1);
  const std::string b = MakeHdf5Image(100000, 2);
  ASSERT_GT(a.size(), 100000u);
  EXPECT_EQ(internal::FindSuperblock(a.data(), a.size()), uint64_t{0});
  EXPECT_NE(a, b);
  EXPECT_EQ(a, MakeHdf5Image(100000, 1));
}

TEST(ServerProcessTest, StartsReadyOnTcpAndUnixSocket) {
  ServerProcessOptions options;
  options.unix_socket = true;
  auto server = ServerProcess::Start(options);
  ASSERT_TRUE(server.ok()) << server.status();
  EXPECT_TRUE((*server)->running());
  EXPECT_EQ((*server)->tcp_target().rfind("127.0.0.1:", 0), 0u)
      << (*server)->tcp_target();
  EXPECT_NE((*server)->tcp_target(), "127.0.0.1:0");
  EXPECT_EQ((*server)->target(), (*server)->tcp_target());
  EXPECT_EQ((*server)->unix_target(), "unix:" + (*server)->unix_socket_path());
  EXPECT_TRUE(PathExists((*server)->unix_socket_path()));
  EXPECT_TRUE((*server)->Terminate().ok());
  EXPECT_FALSE((*server)->running());
}

TEST(ServerProcessTest, UnixSocketOnlyServerHasAUnixTarget) {
  ServerProcessOptions options;
  options.tcp = false;
  options.unix_socket = true;
  auto server = ServerProcess::Start(options);
  ASSERT_TRUE(server.ok()) << server.status();
  EXPECT_TRUE((*server)->tcp_target().empty());
  EXPECT_EQ((*server)->target(), (*server)->unix_target());
}

TEST(InProcessDepotTest, ServesItsClientsOnEveryListenerAskedFor) {
  server::ServerOptions options;
  options.store.require_hdf5 = false;
  auto depot = InProcessDepot::Start(options, Listeners::kTcpAndUnix);
  ASSERT_TRUE(depot.ok()) << depot.status();
  EXPECT_EQ((*depot)->tcp_target().rfind("127.0.0.1:", 0), 0u)
      << (*depot)->tcp_target();
  EXPECT_NE((*depot)->tcp_target(), "127.0.0.1:0");
  EXPECT_EQ((*depot)->target(), (*depot)->tcp_target());
  const std::string socket_path = (*depot)->unix_target().substr(5);
  EXPECT_TRUE(PathExists(socket_path)) << (*depot)->unix_target();

  // A push through one listener is seen through the other, and in the store.
  auto over_tcp = (*depot)->Connect();
  ASSERT_TRUE(over_tcp.ok()) << over_tcp.status();
  ASSERT_TRUE((*over_tcp)->Push("fixture/image", "bytes", 5).ok());
  auto over_unix = Client::Connect((*depot)->unix_target());
  ASSERT_TRUE(over_unix.ok()) << over_unix.status();
  auto fetched = (*over_unix)->Fetch("fixture/image");
  ASSERT_TRUE(fetched.ok()) << fetched.status();
  EXPECT_EQ(fetched->buffer.size(), 5u);
  EXPECT_EQ((*depot)->store().Stats().image_count, 1u);

  depot->reset();
  EXPECT_FALSE(PathExists(socket_path));
}

TEST(InProcessDepotTest, TakesTheServerOptionsAsGiven) {
  server::ServerOptions options;
  options.store.max_image_bytes = 4;
  options.store.require_hdf5 = false;
  auto depot = InProcessDepot::Start(options, Listeners::kUnix);
  ASSERT_TRUE(depot.ok()) << depot.status();
  EXPECT_TRUE((*depot)->tcp_target().empty());
  EXPECT_EQ((*depot)->target(), (*depot)->unix_target());
  auto client = (*depot)->Connect();
  ASSERT_TRUE(client.ok()) << client.status();
  EXPECT_EQ((*client)->Push("too/large", "bytes", 5).status().code(),
            absl::StatusCode::kResourceExhausted);

  // After Shutdown() the server is unreachable.
  (*depot)->Shutdown();
  EXPECT_EQ((*client)->Stat("too/large").status().code(),
            absl::StatusCode::kUnavailable);
}

TEST(ServerProcessTest, KillStopsTheServerAtOnce) {
  auto server = ServerProcess::Start();
  ASSERT_TRUE(server.ok()) << server.status();
  const pid_t pid = (*server)->pid();
  (*server)->Kill();
  EXPECT_FALSE((*server)->running());
  EXPECT_NE(kill(pid, 0), 0);  // reaped: the pid is gone
}

TEST(ServerProcessTest, SuspendStopsTheServerUntilResumed) {
  ServerProcessOptions options;
  options.unix_socket = true;
  auto server = ServerProcess::Start(options);
  ASSERT_TRUE(server.ok()) << server.status();
  ASSERT_EQ((*server)->Suspend(), absl::OkStatus());
  EXPECT_TRUE((*server)->suspended());
  EXPECT_TRUE((*server)->running());
  EXPECT_EQ((*server)->Suspend().code(), absl::StatusCode::kFailedPrecondition);
  // Stopped: the kernel still completes the connection, nobody answers.
  ClientOptions client_options;
  client_options.connect_timeout = absl::Milliseconds(300);
  EXPECT_FALSE(Client::Connect((*server)->target(), client_options).ok());

  ASSERT_EQ((*server)->Resume(), absl::OkStatus());
  EXPECT_FALSE((*server)->suspended());
  EXPECT_EQ((*server)->Resume().code(), absl::StatusCode::kFailedPrecondition);
  auto client = Client::Connect((*server)->target());
  EXPECT_TRUE(client.ok()) << client.status();
}

TEST(ServerProcessTest, TerminateAndTheDestructorEndASuspendedServer) {
  auto server = ServerProcess::Start();
  ASSERT_TRUE(server.ok()) << server.status();
  ASSERT_EQ((*server)->Suspend(), absl::OkStatus());
  EXPECT_EQ((*server)->Terminate(), absl::OkStatus());
  EXPECT_FALSE((*server)->running());
  EXPECT_FALSE((*server)->suspended());

  auto other = ServerProcess::Start();
  ASSERT_TRUE(other.ok()) << other.status();
  const pid_t pid = (*other)->pid();
  ASSERT_EQ((*other)->Suspend(), absl::OkStatus());
  other->reset();
  EXPECT_NE(kill(pid, 0), 0);  // reaped
}

TEST(ServerProcessTest, RestartListensWhereTheFirstServerDid) {
  ServerProcessOptions options;
  options.unix_socket = true;
  auto server = ServerProcess::Start(options);
  ASSERT_TRUE(server.ok()) << server.status();
  const std::string tcp = (*server)->tcp_target();
  const std::string unix = (*server)->unix_target();
  const int lane_port = (*server)->data_lane_port();
  const std::string lane_path = (*server)->data_lane_unix_path();
  const pid_t first = (*server)->pid();
  auto client = Client::Connect(tcp);
  ASSERT_TRUE(client.ok()) << client.status();
  ASSERT_EQ((*client)->Stat("restart/x").status().code(),
            absl::StatusCode::kNotFound);

  // Suspended, then restarted: the first is killed, not left behind.
  ASSERT_EQ((*server)->Suspend(), absl::OkStatus());
  ASSERT_EQ((*server)->Restart(), absl::OkStatus());
  EXPECT_NE((*server)->pid(), first);
  EXPECT_NE(kill(first, 0), 0);
  EXPECT_FALSE((*server)->suspended());
  EXPECT_EQ((*server)->tcp_target(), tcp);
  EXPECT_EQ((*server)->unix_target(), unix);
  EXPECT_EQ((*server)->data_lane_port(), lane_port);
  EXPECT_EQ((*server)->data_lane_unix_path(), lane_path);
  for (const std::string& target : {tcp, unix}) {
    auto again = Client::Connect(target);
    EXPECT_TRUE(again.ok()) << again.status();
  }

  // After a clean stop too, and with a socket path given.
  ASSERT_EQ((*server)->Terminate(), absl::OkStatus());
  ASSERT_EQ((*server)->Restart(), absl::OkStatus());
  EXPECT_EQ((*server)->tcp_target(), tcp);
}

TEST(ServerProcessTest, StartsAtAGivenPortAndSocketPath) {
  auto first = ServerProcess::Start();
  ASSERT_TRUE(first.ok()) << first.status();
  const std::string target = (*first)->tcp_target();
  int port = 0;
  ASSERT_TRUE(absl::SimpleAtoi(target.substr(target.rfind(':') + 1), &port));
  ASSERT_EQ((*first)->Terminate(), absl::OkStatus());
  auto dir = TempDir::Create("/tmp");
  ASSERT_TRUE(dir.ok()) << dir.status();

  ServerProcessOptions options;
  options.tcp_port = port;
  options.unix_socket = true;
  options.unix_socket_path = dir->File("given.sock");
  auto server = ServerProcess::Start(options);
  ASSERT_TRUE(server.ok()) << server.status();
  EXPECT_EQ((*server)->tcp_target(), target);
  EXPECT_EQ((*server)->unix_socket_path(), dir->File("given.sock"));
}

TEST(ServerProcessTest, ReportsAServerThatExitsBeforeListening) {
  ServerProcessOptions options;
  options.extra_flags = {"--no-such-flag-for-h5depotd"};
  auto server = ServerProcess::Start(options);
  ASSERT_FALSE(server.ok());
  EXPECT_NE(server.status().message().find("before it was listening"),
            absl::string_view::npos)
      << server.status();
}

}  // namespace
}  // namespace h5depot::testing
