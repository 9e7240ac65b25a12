// h5depotd stops promptly on SIGTERM when clients are connected but idle
// (their gRPC channels, data lane connections and readers open, over TCP
// and a Unix socket), and still gives a call under way its grace period:
// the daemon's stop as a supervisor (systemd, a container runtime, a test)
// sees it.
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cstring>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/notification.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "gtest/gtest.h"
#include "h5depot/client.h"
#include "h5depot/testing/hdf5_images.h"
#include "h5depot/testing/server_process.h"

namespace h5depot {
namespace {

using ::h5depot::testing::ServerProcess;
using ::h5depot::testing::ServerProcessOptions;

// Well under a second on an idle machine; the bound leaves room for a
// loaded CI machine, and is far below the 5 s grace period that an idle
// connection used to hold the stop for.
constexpr absl::Duration kPromptStop = absl::Seconds(2);

absl::StatusOr<std::unique_ptr<ServerProcess>> StartServer() {
  ServerProcessOptions options;
  options.unix_socket = true;
  return ServerProcess::Start(options);
}

// Clients of every kind, each left idle after a push and a fetch: over TCP
// and the Unix socket, with and without the data lane.
std::vector<std::unique_ptr<Client>> IdleClients(const ServerProcess& server) {
  const std::string image = testing::MakeHdf5Image(4096, 1);
  std::vector<std::unique_ptr<Client>> clients;
  for (const std::string& target :
       {server.tcp_target(), server.unix_target()}) {
    for (bool lane : {true, false}) {
      ClientOptions options;
      options.use_data_lane = lane;
      auto client = Client::Connect(target, options);
      EXPECT_TRUE(client.ok()) << client.status();
      if (!client.ok()) continue;
      const std::string id = absl::StrCat("idle/", clients.size());
      EXPECT_TRUE((*client)->Push(id, image.data(), image.size()).ok());
      EXPECT_TRUE((*client)->Fetch(id).ok());
      clients.push_back(*std::move(client));
    }
  }
  return clients;
}

TEST(ServerShutdownTest, SigtermWithIdleClientsConnectedStopsPromptly) {
  auto server = StartServer();
  ASSERT_TRUE(server.ok()) << server.status();
  std::vector<std::unique_ptr<Client>> clients = IdleClients(**server);
  ASSERT_EQ(clients.size(), 4u);
  // A reader pinning a generation, as a file the remote driver keeps open
  // does: its stream stays open, with nothing to do.
  auto reader = clients[0]->OpenReader("idle/0");
  ASSERT_TRUE(reader.ok()) << reader.status();

  const absl::Time start = absl::Now();
  EXPECT_EQ((*server)->Terminate(), absl::OkStatus());
  const absl::Duration took = absl::Now() - start;
  EXPECT_LT(took, kPromptStop);

  // The clients see a server that is gone, not one that hangs.
  for (auto& client : clients) {
    EXPECT_EQ(client->Stat("idle/0").status().code(),
              absl::StatusCode::kUnavailable);
  }
}

TEST(ServerShutdownTest, SigtermWithIdleGrpcChannelsOnlyStopsPromptly) {
  auto server = StartServer();
  ASSERT_TRUE(server.ok()) << server.status();
  std::vector<std::unique_ptr<Client>> clients;
  for (const std::string& target :
       {(*server)->tcp_target(), (*server)->unix_target()}) {
    ClientOptions options;
    options.use_data_lane = false;
    auto client = Client::Connect(target, options);
    ASSERT_TRUE(client.ok()) << client.status();
    clients.push_back(*std::move(client));
  }

  const absl::Time start = absl::Now();
  EXPECT_EQ((*server)->Terminate(), absl::OkStatus());
  EXPECT_LT(absl::Now() - start, kPromptStop);
}

// Whether nothing listens at `port` on 127.0.0.1 any more.
bool RefusesConnections(int port) {
  const int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_in address{};
  address.sin_family = AF_INET;
  address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  address.sin_port = htons(static_cast<uint16_t>(port));
  const bool refused = ::connect(fd, reinterpret_cast<sockaddr*>(&address),
                                 sizeof(address)) != 0;
  ::close(fd);
  return refused;
}

// A fetch whose receiving end is held up: its progress callback blocks
// until `release` is notified, so the server has the call under way (its
// sends wait for the client to read) for as long as the test wants.
struct HeldFetch {
  absl::Notification started;  // the first bytes arrived
  absl::Notification* release = nullptr;
  absl::StatusOr<FetchedImage> result;
  std::thread thread;

  void Start(Client& client, const std::string& id) {
    thread = std::thread([this, &client, id] {
      FetchOptions options;
      options.progress = [this](uint64_t, uint64_t) {
        if (!started.HasBeenNotified()) started.Notify();
        release->WaitForNotification();
      };
      result = client.Fetch(id, options);
    });
  }
};

// Fetches under way when the stop begins, over the data lane and over
// gRPC, are let finish (h5depotd's grace period is 5 s) with every byte,
// and the server exits as soon as they are done.
TEST(ServerShutdownTest, FetchesUnderWayWhenSigtermArrivesAreServedToTheEnd) {
  auto server = StartServer();
  ASSERT_TRUE(server.ok()) << server.status();
  ASSERT_NE((*server)->data_lane_port(), 0);
  // Larger than what gRPC's flow control and the sockets buffer, so that
  // the server cannot be done sending before the client reads.
  const std::string image = testing::MakeHdf5Image(size_t{48} << 20, 3);
  std::vector<std::unique_ptr<Client>> clients;
  for (bool lane : {true, false}) {
    ClientOptions options;
    options.use_data_lane = lane;
    auto client = Client::Connect((*server)->tcp_target(), options);
    ASSERT_TRUE(client.ok()) << client.status();
    clients.push_back(*std::move(client));
  }
  ASSERT_TRUE(clients[0]->Push("big", image.data(), image.size()).ok());

  absl::Notification release;
  HeldFetch fetches[2];
  for (size_t i = 0; i < 2; ++i) {
    fetches[i].release = &release;
    fetches[i].Start(*clients[i], "big");
  }
  for (HeldFetch& fetch : fetches) fetch.started.WaitForNotification();

  ASSERT_EQ(kill((*server)->pid(), SIGTERM), 0);
  // The stop has begun once the data lane no longer accepts connections.
  while (!RefusesConnections((*server)->data_lane_port())) {
    absl::SleepFor(absl::Milliseconds(1));
  }
  release.Notify();
  for (HeldFetch& fetch : fetches) {
    fetch.thread.join();
    ASSERT_TRUE(fetch.result.ok()) << fetch.result.status();
    ASSERT_EQ(fetch.result->buffer.size(), image.size());
    EXPECT_EQ(
        std::memcmp(fetch.result->buffer.data(), image.data(), image.size()),
        0);
  }
  // And with them done, nothing holds the server.
  const absl::Time done = absl::Now();
  EXPECT_EQ((*server)->Terminate(), absl::OkStatus());
  EXPECT_LT(absl::Now() - done, kPromptStop);
}

}  // namespace
}  // namespace h5depot
