// Who may reach the server's Unix sockets: the mode and group given to both
// socket files (gRPC's and the data lane's), and the allow-list of peer
// user and group ids, which refuses a peer on gRPC and the lane alike and
// serves one it names. Against an in-process DepotServer and a real
// h5depotd; the flags' errors against h5depotd.
#include <grp.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "client/src/lane_client_internal.h"
#include "gtest/gtest.h"
#include "h5depot/client.h"
#include "h5depot/server/depot_server.h"
#include "h5depot/testing/in_process_depot.h"
#include "h5depot/testing/server_process.h"
#include "h5depot/testing/subprocess.h"
#include "test_images.h"

namespace h5depot {
namespace {

using ::h5depot::testing::H5depotCliPath;
using ::h5depot::testing::H5depotdPath;
using ::h5depot::testing::InProcessDepot;
using ::h5depot::testing::Listeners;
using ::h5depot::testing::MakeTestImage;
using ::h5depot::testing::RunCommand;
using ::h5depot::testing::ServerProcess;
using ::h5depot::testing::ServerProcessOptions;

// A user id that is not this process's.
uint32_t SomeoneElse() { return static_cast<uint32_t>(getuid()) + 1; }

// Connects a plain socket to `path` and reads: 0 (end of stream) when the
// server closes the connection unheard, as the lane does a refused peer.
// The lane never closes an admitted one unprompted, so this is called only
// where a refusal is expected.
ssize_t ConnectAndRead(const std::string& path) {
  sockaddr_un address{};
  address.sun_family = AF_UNIX;
  std::memcpy(address.sun_path, path.data(), path.size());
  const int fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return -1;
  if (::connect(fd, reinterpret_cast<const sockaddr*>(&address),
                sizeof(address)) != 0) {
    ::close(fd);
    return -1;
  }
  char byte = 0;
  const ssize_t got = ::read(fd, &byte, 1);
  ::close(fd);
  return got;
}

// A lane connection made and greeted directly, bypassing the client's
// fallback to gRPC: OK only if the lane admitted us.
absl::Status GreetLane(const std::string& lane_path) {
  std::shared_ptr<internal::DataLane> lane =
      internal::DataLane::ForServer("unix:" + lane_path, 0, lane_path);
  if (lane == nullptr) return absl::InternalError("no lane for that path");
  return lane->ConnectNew(absl::Now() + absl::Seconds(30)).status();
}

ClientOptions Patient() {
  ClientOptions options;
  options.connect_timeout = absl::Seconds(30);  // a loaded machine is slow
  return options;
}

TEST(UnixAccessTest, ModeAndGroupApplyToBothSocketFiles) {
  server::ServerOptions options;
  options.unix_socket_mode = 0660;
  options.unix_socket_group = std::to_string(getgid());
  auto depot = InProcessDepot::Start(options, Listeners::kUnix);
  ASSERT_TRUE(depot.ok()) << depot.status();
  const std::string grpc_path =
      (*depot)->unix_target().substr(std::strlen("unix:"));
  const std::string lane_path = (*depot)->server().data_lane_unix_path();
  ASSERT_EQ(lane_path, grpc_path + ".data");
  for (const std::string& path : {grpc_path, lane_path}) {
    struct stat info {};
    ASSERT_EQ(::stat(path.c_str(), &info), 0) << path;
    EXPECT_TRUE(S_ISSOCK(info.st_mode)) << path;
    EXPECT_EQ(info.st_mode & 07777, 0660u) << path;
    EXPECT_EQ(info.st_gid, getgid()) << path;
  }
  // The listener accepted by the server itself still serves gRPC.
  auto client = (*depot)->Connect(Patient());
  ASSERT_TRUE(client.ok()) << client.status();
  EXPECT_EQ((*depot)->server().targets(),
            std::vector<std::string>{"unix:" + grpc_path});
}

// Whether a process running as user and group `id` (root may become
// anyone) can connect to the Unix socket at `path`: 0 if it can, else the
// errno connect failed with. The child only makes system calls, which is
// all a fork of a threaded process may do.
int ConnectErrorAs(uint32_t id, const std::string& path) {
  sockaddr_un address{};
  address.sun_family = AF_UNIX;
  std::memcpy(address.sun_path, path.data(), path.size());
  const pid_t child = ::fork();
  if (child == 0) {
    if (::setgroups(0, nullptr) != 0 || ::setgid(id) != 0 ||
        ::setuid(id) != 0) {
      ::_exit(255);
    }
    const int fd = ::socket(AF_UNIX, SOCK_STREAM, 0);
    const int connected = ::connect(
        fd, reinterpret_cast<const sockaddr*>(&address), sizeof(address));
    ::_exit(connected == 0 ? 0 : errno);
  }
  int status = 0;
  ::waitpid(child, &status, 0);
  return WIFEXITED(status) ? WEXITSTATUS(status) : 255;
}

TEST(UnixAccessTest, ASocketWithoutWritePermissionCannotBeReached) {
  // Root connects regardless of mode: it tries as another user (below).
  const bool root = geteuid() == 0;
  server::ServerOptions options;
  options.unix_socket_mode = root ? 0660 : 0400;
  auto depot = InProcessDepot::Start(options, Listeners::kUnix);
  ASSERT_TRUE(depot.ok()) << depot.status();
  const std::string grpc_path =
      (*depot)->unix_target().substr(std::strlen("unix:"));
  const std::string lane_path = (*depot)->server().data_lane_unix_path();
  if (root) {
    // A user outside the owner and the group (nobody, 65534) may not. The
    // socket's directory is opened for it, so that only the socket's own mode
    // stands in the way.
    const std::string dir = grpc_path.substr(0, grpc_path.rfind('/'));
    ASSERT_EQ(::chmod(dir.c_str(), 0711), 0);
    EXPECT_EQ(ConnectErrorAs(65534, grpc_path), EACCES);
    EXPECT_EQ(ConnectErrorAs(65534, lane_path), EACCES);
    ASSERT_EQ(::chmod(grpc_path.c_str(), 0666), 0);
    EXPECT_EQ(ConnectErrorAs(65534, grpc_path), 0);  // the check is real
    return;
  }
  // Not even the owner may connect without write permission.
  auto client = (*depot)->Connect(Patient());
  ASSERT_FALSE(client.ok());
  EXPECT_EQ(client.status().code(), absl::StatusCode::kUnavailable)
      << client.status();
  EXPECT_FALSE(GreetLane(lane_path).ok());
}

TEST(UnixAccessTest, AnAllowListWithoutTheCallerRefusesGrpcAndLaneAlike) {
  server::ServerOptions options;
  options.unix_allow_uids = {SomeoneElse()};
  options.unix_allow_gids = {static_cast<uint32_t>(getgid()) + 1};
  auto depot = InProcessDepot::Start(options, Listeners::kUnix);
  ASSERT_TRUE(depot.ok()) << depot.status();
  const std::string lane_path = (*depot)->server().data_lane_unix_path();

  // The lane closes a refused connection before saying anything.
  EXPECT_EQ(ConnectAndRead(lane_path), 0);
  absl::Status lane = GreetLane(lane_path);
  EXPECT_EQ(lane.code(), absl::StatusCode::kUnavailable) << lane;

  // The client, falling back from the lane to gRPC, is told there why.
  auto client = (*depot)->Connect(Patient());
  ASSERT_FALSE(client.ok());
  EXPECT_EQ(client.status().code(), absl::StatusCode::kPermissionDenied)
      << client.status();
  EXPECT_TRUE(absl::StrContains(client.status().message(), "--unix-allow-uids"))
      << client.status();
  EXPECT_TRUE((*depot)->store().List("", 0, "").images.empty());
}

TEST(UnixAccessTest, AnAllowListNamingTheCallerServesPushAndFetch) {
  for (const bool by_group : {false, true}) {
    SCOPED_TRACE(by_group ? "by group" : "by user");
    server::ServerOptions options;
    if (by_group) {
      options.unix_allow_uids = {SomeoneElse()};
      options.unix_allow_gids = {static_cast<uint32_t>(getegid())};
    } else {
      options.unix_allow_uids = {SomeoneElse(),
                                 static_cast<uint32_t>(getuid())};
    }
    auto depot = InProcessDepot::Start(options, Listeners::kUnix);
    ASSERT_TRUE(depot.ok()) << depot.status();
    EXPECT_TRUE(GreetLane((*depot)->server().data_lane_unix_path()).ok());
    auto client = (*depot)->Connect(Patient());
    ASSERT_TRUE(client.ok()) << client.status();
    const std::vector<uint8_t> image = MakeTestImage(300000);
    ASSERT_TRUE((*client)->Push("admitted", image.data(), image.size()).ok());
    auto fetched = (*client)->Fetch("admitted");
    ASSERT_TRUE(fetched.ok()) << fetched.status();
    ASSERT_EQ(fetched->buffer.size(), image.size());
    EXPECT_EQ(std::memcmp(fetched->buffer.data(), image.data(), image.size()),
              0);
  }
}

TEST(UnixAccessTest, AnUnknownGroupStopsTheServerFromStarting) {
  server::ServerOptions options;
  options.unix_socket_group = "no-such-group-h5depot";
  auto depot = InProcessDepot::Start(options, Listeners::kUnix);
  ASSERT_FALSE(depot.ok());
  EXPECT_EQ(depot.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(
      absl::StrContains(depot.status().message(), "no-such-group-h5depot"))
      << depot.status();
}

TEST(UnixAccessTest, H5depotdAppliesItsFlagsAndRefusesOthers) {
  ServerProcessOptions options;
  options.tcp = false;
  options.unix_socket = true;
  options.extra_flags = {"--unix-mode=0660",
                         absl::StrCat("--unix-group=", getgid()),
                         absl::StrCat("--unix-allow-uids=", SomeoneElse())};
  auto server = ServerProcess::Start(options);
  ASSERT_TRUE(server.ok()) << server.status();
  struct stat info {};
  ASSERT_EQ(::stat((*server)->data_lane_unix_path().c_str(), &info), 0);
  EXPECT_EQ(info.st_mode & 07777, 0660u);
  ASSERT_EQ(::stat((*server)->unix_socket_path().c_str(), &info), 0);
  EXPECT_EQ(info.st_mode & 07777, 0660u);
  EXPECT_EQ(info.st_gid, getgid());

  testing::CommandResult ls = RunCommand(
      {H5depotCliPath(), "--server", (*server)->unix_target(), "ls"});
  EXPECT_EQ(ls.exit_code, 9) << ls.stderr_text;  // PERMISSION_DENIED
}

TEST(UnixAccessTest, H5depotdRefusesBadUnixFlags) {
  struct Case {
    std::vector<std::string> flags;
    std::string says;
  };
  const std::vector<Case> cases = {
      {{"--unix-mode=0999"}, "--unix-mode"},
      {{"--unix-mode=01777"}, "--unix-mode"},
      {{"--unix-group=no-such-group-h5depot"}, "no-such-group-h5depot"},
      {{"--unix-allow-uids=no-such-user-h5depot"}, "no-such-user-h5depot"},
      {{"--unix-allow-gids=12,no-such-group-h5depot"}, "no-such-group-h5depot"},
  };
  for (const Case& c : cases) {
    std::vector<std::string> argv = {
        H5depotdPath(), "--listen=", "--unix=/nonexistent/h5depot-test.sock"};
    argv.insert(argv.end(), c.flags.begin(), c.flags.end());
    testing::CommandResult result = RunCommand(argv);
    EXPECT_EQ(result.exit_code, 1) << c.flags[0];
    EXPECT_TRUE(absl::StrContains(result.stderr_text, c.says))
        << c.flags[0] << ": " << result.stderr_text;
  }
  testing::CommandResult no_socket =
      RunCommand({H5depotdPath(), "--listen=127.0.0.1:0", "--unix-mode=0660"});
  EXPECT_EQ(no_socket.exit_code, 1);
  EXPECT_TRUE(absl::StrContains(no_socket.stderr_text, "--unix=PATH"))
      << no_socket.stderr_text;
}

}  // namespace
}  // namespace h5depot
