// What a user of h5depot::Client relies on now that Push, Fetch and reads
// (Read, readers and so the remote driver) move image bytes over the
// server's data lane: the same results as over gRPC,
// the lane really carrying the bytes when it is offered, a server restart,
// progress, a client process dying mid-push, call timeouts, and many
// threads on one Client. Against real servers: an in-process DepotServer,
// or h5depotd as a process.
//
// Whether bytes went over the lane or over gRPC is told apart by putting a
// relay that counts bytes in front of the gRPC listener only: the client
// learns the lane's address from the server, so lane traffic bypasses it.
#include <grpcpp/grpcpp.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstring>
#include <future>
#include <memory>
#include <string>
#include <thread>
#include <tuple>
#include <utility>
#include <vector>

#include "H5FDremote.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "client/src/lane_client_internal.h"
#include "gtest/gtest.h"
#include "h5depot/client.h"
#include "h5depot/internal/checksum.h"
#include "h5depot/internal/lane_protocol.h"
#include "h5depot/server/depot_server.h"
#include "h5depot/testing/hdf5_images.h"
#include "h5depot/testing/in_process_depot.h"
#include "h5depot/testing/server_process.h"
#include "h5depot/testing/subprocess.h"
#include "h5depot/testing/temp_dir.h"
#include "h5depot/v1/depot.grpc.pb.h"
#include "test_images.h"

namespace h5depot {
namespace {

using ::h5depot::internal::lane::kEagerPutBytes;
using ::h5depot::testing::InProcessDepot;
using ::h5depot::testing::Listeners;
using ::h5depot::testing::MakeTestImage;
using ::h5depot::testing::ServerProcess;
using ::h5depot::testing::ServerProcessOptions;
using ::h5depot::testing::TempDir;

enum class Transport { kTcp, kUnix };

std::string TransportName(Transport transport) {
  return transport == Transport::kTcp ? "Tcp" : "Unix";
}

// A TCP port on 127.0.0.1 that nothing listens on right now.
int PickFreePort() {
  const int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_in address{};
  address.sin_family = AF_INET;
  address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t length = sizeof(address);
  int port = 0;
  if (::bind(fd, reinterpret_cast<sockaddr*>(&address), sizeof(address)) == 0 &&
      ::getsockname(fd, reinterpret_cast<sockaddr*>(&address), &length) == 0) {
    port = ntohs(address.sin_port);
  }
  ::close(fd);
  return port;
}

// The data lane port a server's GetLimits names, through the raw stub.
uint32_t AdvertisedLanePort(const std::string& target) {
  auto stub = v1::Depot::NewStub(
      grpc::CreateChannel(target, grpc::InsecureChannelCredentials()));
  grpc::ClientContext context;
  context.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(30)));
  v1::ServerLimits limits;
  const grpc::Status status =
      stub->GetLimits(&context, v1::GetLimitsRequest(), &limits);
  EXPECT_TRUE(status.ok()) << status.error_message();
  return limits.data_lane_port();
}

// Forwards every connection made to it to an upstream address, byte for
// byte, and counts the bytes it carried either way. In front of a server's
// gRPC listener it shows how much of a transfer went over gRPC.
class CountingRelay {
 public:
  // Listens on 127.0.0.1 (any free port) or at `unix_path`, and forwards to
  // 127.0.0.1:`upstream_port` or to the Unix socket at `upstream_path`.
  static std::unique_ptr<CountingRelay> ToTcp(int upstream_port) {
    sockaddr_in up{};
    up.sin_family = AF_INET;
    up.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    up.sin_port = htons(static_cast<uint16_t>(upstream_port));
    std::unique_ptr<CountingRelay> relay(new CountingRelay());
    std::memcpy(&relay->upstream_, &up, sizeof(up));
    relay->upstream_bytes_ = sizeof(up);
    relay->listener_ = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_in here = up;
    here.sin_port = 0;
    socklen_t length = sizeof(here);
    if (::bind(relay->listener_, reinterpret_cast<sockaddr*>(&here),
               sizeof(here)) != 0 ||
        ::getsockname(relay->listener_, reinterpret_cast<sockaddr*>(&here),
                      &length) != 0) {
      return nullptr;
    }
    relay->target_ = absl::StrCat("127.0.0.1:", ntohs(here.sin_port));
    return relay->Listen() ? std::move(relay) : nullptr;
  }

  static std::unique_ptr<CountingRelay> ToUnix(const std::string& unix_path,
                                               const std::string& upstream) {
    sockaddr_un up{};
    up.sun_family = AF_UNIX;
    if (upstream.size() >= sizeof(up.sun_path) ||
        unix_path.size() >= sizeof(up.sun_path)) {
      return nullptr;
    }
    std::memcpy(up.sun_path, upstream.data(), upstream.size());
    std::unique_ptr<CountingRelay> relay(new CountingRelay());
    std::memcpy(&relay->upstream_, &up, sizeof(up));
    relay->upstream_bytes_ = sizeof(up);
    relay->listener_ = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_un here{};
    here.sun_family = AF_UNIX;
    std::memcpy(here.sun_path, unix_path.data(), unix_path.size());
    if (::bind(relay->listener_, reinterpret_cast<sockaddr*>(&here),
               sizeof(here)) != 0) {
      return nullptr;
    }
    relay->target_ = absl::StrCat("unix:", unix_path);
    return relay->Listen() ? std::move(relay) : nullptr;
  }

  ~CountingRelay() {
    // Shutting a listening socket down ends a blocked accept().
    stopping_ = true;
    ::shutdown(listener_, SHUT_RDWR);
    if (acceptor_.joinable()) acceptor_.join();
    ::close(listener_);
    absl::MutexLock lock(&mutex_);
    for (int fd : fds_) ::shutdown(fd, SHUT_RDWR);
    for (std::thread& pump : pumps_) pump.join();
    for (int fd : fds_) ::close(fd);
  }

  // A target for Client::Connect that reaches the upstream server.
  const std::string& target() const { return target_; }

  // Bytes carried so far, both directions together.
  uint64_t bytes() const { return bytes_.load(); }

 private:
  CountingRelay() = default;

  bool Listen() {
    if (::listen(listener_, 64) != 0) return false;
    acceptor_ = std::thread([this] { AcceptLoop(); });
    return true;
  }

  void AcceptLoop() {
    while (!stopping_) {
      const int client = ::accept4(listener_, nullptr, nullptr, SOCK_CLOEXEC);
      if (client < 0) {
        if (errno == EINTR || errno == ECONNABORTED) continue;
        return;
      }
      const int server =
          ::socket(upstream_.ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
      if (::connect(server, reinterpret_cast<const sockaddr*>(&upstream_),
                    upstream_bytes_) != 0) {
        ::close(server);
        ::close(client);  // as if the server had refused the connection
        continue;
      }
      absl::MutexLock lock(&mutex_);
      fds_.push_back(client);
      fds_.push_back(server);
      pumps_.emplace_back([this, client, server] { Pump(client, server); });
      pumps_.emplace_back([this, client, server] { Pump(server, client); });
    }
  }

  // Copies `from` to `to` until either end is done, then ends both, as a
  // single connection would. The descriptors are closed by the destructor.
  void Pump(int from, int to) {
    std::vector<char> buffer(64 << 10);
    while (true) {
      const ssize_t got = ::recv(from, buffer.data(), buffer.size(), 0);
      if (got < 0 && errno == EINTR) continue;
      if (got <= 0) break;
      // Counted before they are passed on, so that whoever receives them
      // finds them counted already.
      bytes_ += static_cast<uint64_t>(got);
      bool sent_all = true;
      for (ssize_t sent = 0; sent < got;) {
        const ssize_t n =
            ::send(to, buffer.data() + sent, got - sent, MSG_NOSIGNAL);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) {
          sent_all = false;
          break;
        }
        sent += n;
      }
      if (!sent_all) break;
    }
    ::shutdown(from, SHUT_RDWR);
    ::shutdown(to, SHUT_RDWR);
  }

  int listener_ = -1;
  sockaddr_storage upstream_{};
  socklen_t upstream_bytes_ = 0;
  std::string target_;
  std::atomic<bool> stopping_{false};
  std::atomic<uint64_t> bytes_{0};
  std::thread acceptor_;
  absl::Mutex mutex_;
  std::vector<int> fds_ ABSL_GUARDED_BY(mutex_);
  std::vector<std::thread> pumps_ ABSL_GUARDED_BY(mutex_);
};

// Pushes `bytes` as `id`, fetches it back and checks the bytes; returns how
// many bytes `relay` carried meanwhile.
uint64_t RoundTripThrough(Client& client, const CountingRelay& relay,
                          const std::string& id,
                          const std::vector<uint8_t>& bytes) {
  const uint64_t before = relay.bytes();
  auto pushed = client.Push(id, bytes.data(), bytes.size());
  EXPECT_TRUE(pushed.ok()) << pushed.status();
  auto fetched = client.Fetch(id);
  EXPECT_TRUE(fetched.ok()) << fetched.status();
  if (fetched.ok()) {
    EXPECT_EQ(fetched->buffer.size(), bytes.size());
    EXPECT_TRUE(
        fetched->buffer.size() == bytes.size() &&
        std::memcmp(fetched->buffer.data(), bytes.data(), bytes.size()) == 0)
        << id << ": the fetched bytes differ from the pushed ones";
  }
  return relay.bytes() - before;
}

// An image this large pushed and fetched moves twice its size; over the
// lane, gRPC carries none of it.
constexpr size_t kProbeBytes = size_t{8} << 20;
constexpr uint64_t kLittleGrpcTraffic = uint64_t{256} << 10;

void ExpectStatus(const absl::Status& status, absl::StatusCode code,
                  const std::string& message) {
  EXPECT_EQ(status.code(), code) << status;
  EXPECT_EQ(status.message(), message);
}

// ---------------------------------------------------------------------------
// The same results with and without the lane, over TCP and a Unix socket.

class ClientDataLaneTest
    : public ::testing::TestWithParam<std::tuple<Transport, bool>> {
 protected:
  void SetUp() override {
    server::ServerOptions options;
    options.store.require_hdf5 = false;  // an empty image is no HDF5 file
    options.store.max_memory_bytes = uint64_t{512} << 20;
    options.store.max_image_bytes = uint64_t{64} << 20;
    auto depot = InProcessDepot::Start(
        options, std::get<0>(GetParam()) == Transport::kTcp ? Listeners::kTcp
                                                            : Listeners::kUnix);
    ASSERT_TRUE(depot.ok()) << depot.status();
    depot_ = *std::move(depot);
    ClientOptions client_options;
    client_options.use_data_lane = std::get<1>(GetParam());
    auto client = depot_->Connect(client_options);
    ASSERT_TRUE(client.ok()) << client.status();
    client_ = *std::move(client);
  }

  void TearDown() override {
    client_.reset();
    depot_.reset();
  }

  std::unique_ptr<InProcessDepot> depot_;
  std::unique_ptr<Client> client_;
};

// Sizes around the lane's switch from eager to confirmed pushes.
const size_t kSizes[] = {0, 4096, kEagerPutBytes, kEagerPutBytes + 1,
                         (size_t{8} << 20) + 12345};

TEST_P(ClientDataLaneTest, EverySizeComesBackIdenticalWithConsistentInfo) {
  for (size_t size : kSizes) {
    SCOPED_TRACE(size);
    const std::string id = absl::StrCat("size/", size);
    const std::vector<uint8_t> bytes =
        MakeTestImage(size, static_cast<uint32_t>(size));
    auto pushed = client_->Push(id, bytes.data(), bytes.size());
    ASSERT_TRUE(pushed.ok()) << pushed.status();
    auto stat = client_->Stat(id);
    ASSERT_TRUE(stat.ok()) << stat.status();
    auto fetched = client_->Fetch(id);
    ASSERT_TRUE(fetched.ok()) << fetched.status();

    ASSERT_EQ(fetched->buffer.size(), size);
    if (size > 0) {
      EXPECT_EQ(std::memcmp(fetched->buffer.data(), bytes.data(), size), 0);
    }
    for (const ImageInfo* info : {&*pushed, &fetched->info}) {
      EXPECT_EQ(info->image_id, id);
      EXPECT_EQ(info->size, size);
      EXPECT_EQ(info->generation, stat->generation);
      EXPECT_EQ(info->checksum, internal::Checksum(bytes.data(), size));
      EXPECT_EQ(info->checksum, stat->checksum);
      EXPECT_EQ(info->created, stat->created);
      EXPECT_EQ(info->expires, absl::InfiniteFuture());
      EXPECT_EQ(info->expires, stat->expires);
    }
  }
}

TEST_P(ClientDataLaneTest, ConditionalPushesAreRefusedWithTheSameCodes) {
  for (size_t size : {size_t{4096}, size_t{3} << 20}) {
    SCOPED_TRACE(size);
    const std::string id = absl::StrCat("conditional/", size);
    const auto first = MakeTestImage(size, 1);
    const auto second = MakeTestImage(size, 2);
    PushOptions create_only;
    create_only.if_generation_match = 0;
    auto created = client_->Push(id, first.data(), first.size(), create_only);
    ASSERT_TRUE(created.ok()) << created.status();

    // A refused push of more than kEagerPutBytes moves none of its bytes.
    uint64_t sent = 0;
    create_only.progress = [&](uint64_t done, uint64_t) { sent = done; };
    auto exists = client_->Push(id, second.data(), second.size(), create_only);
    EXPECT_EQ(exists.status().code(), absl::StatusCode::kAlreadyExists)
        << exists.status();
    EXPECT_TRUE(absl::StartsWith(exists.status().message(),
                                 absl::StrCat("push '", id, "': ")))
        << exists.status();

    PushOptions stale;
    stale.if_generation_match = created->generation + 1;
    stale.progress = create_only.progress;
    auto mismatch = client_->Push(id, second.data(), second.size(), stale);
    EXPECT_EQ(mismatch.status().code(), absl::StatusCode::kAborted)
        << mismatch.status();
    EXPECT_TRUE(absl::StartsWith(mismatch.status().message(),
                                 absl::StrCat("push '", id, "': ")))
        << mismatch.status();
    EXPECT_EQ(sent, 0u) << "bytes were sent for a refused push";

    // Neither refusal changed the image, and the client is still in step.
    auto fetched = client_->Fetch(id);
    ASSERT_TRUE(fetched.ok()) << fetched.status();
    EXPECT_EQ(fetched->info.generation, created->generation);
    EXPECT_EQ(std::memcmp(fetched->buffer.data(), first.data(), size), 0);

    PushOptions current;
    current.if_generation_match = created->generation;
    auto replaced = client_->Push(id, second.data(), second.size(), current);
    ASSERT_TRUE(replaced.ok()) << replaced.status();
    EXPECT_GT(replaced->generation, created->generation);
    fetched = client_->Fetch(id);
    ASSERT_TRUE(fetched.ok()) << fetched.status();
    EXPECT_EQ(fetched->info.generation, replaced->generation);
    EXPECT_EQ(std::memcmp(fetched->buffer.data(), second.data(), size), 0);
  }
}

TEST_P(ClientDataLaneTest, TtlIsReportedInExpires) {
  for (size_t size : {size_t{4096}, size_t{2} << 20}) {
    SCOPED_TRACE(size);
    const std::string id = absl::StrCat("ttl/", size);
    const auto bytes = MakeTestImage(size);
    PushOptions options;
    options.ttl = absl::Hours(1);
    auto pushed = client_->Push(id, bytes.data(), bytes.size(), options);
    ASSERT_TRUE(pushed.ok()) << pushed.status();
    EXPECT_EQ(pushed->expires - pushed->created, absl::Hours(1));
    auto fetched = client_->Fetch(id);
    ASSERT_TRUE(fetched.ok()) << fetched.status();
    EXPECT_EQ(fetched->info.expires, pushed->expires);
    auto stat = client_->Stat(id);
    ASSERT_TRUE(stat.ok()) << stat.status();
    EXPECT_EQ(stat->expires, pushed->expires);
  }
}

TEST_P(ClientDataLaneTest, MissingImageIsNotFoundNamingIt) {
  ExpectStatus(client_->Fetch("no/such").status(), absl::StatusCode::kNotFound,
               "fetch 'no/such': no image 'no/such'");
}

TEST_P(ClientDataLaneTest, WaitingFetchGetsTheImageAnotherThreadPushes) {
  const auto bytes = MakeTestImage((size_t{3} << 20) + 7);
  absl::StatusOr<FetchedImage> fetched;
  std::thread fetcher([&] {
    FetchOptions options;
    options.wait = absl::Seconds(60);
    fetched = client_->Fetch("later", options);
  });
  auto pushed = client_->Push("later", bytes.data(), bytes.size());
  fetcher.join();
  ASSERT_TRUE(pushed.ok()) << pushed.status();
  ASSERT_TRUE(fetched.ok()) << fetched.status();
  EXPECT_EQ(fetched->info.generation, pushed->generation);
  ASSERT_EQ(fetched->buffer.size(), bytes.size());
  EXPECT_EQ(std::memcmp(fetched->buffer.data(), bytes.data(), bytes.size()), 0);
}

TEST_P(ClientDataLaneTest, WaitThatExpiresIsDeadlineExceeded) {
  FetchOptions options;
  options.wait = absl::Milliseconds(100);
  ExpectStatus(client_->Fetch("never", options).status(),
               absl::StatusCode::kDeadlineExceeded,
               "fetch 'never': image 'never' did not appear in time");
  // The client is still in step afterwards.
  const auto bytes = MakeTestImage(4096);
  ASSERT_TRUE(client_->Push("after-wait", bytes.data(), bytes.size()).ok());
  EXPECT_TRUE(client_->Fetch("after-wait").ok());
}

TEST_P(ClientDataLaneTest, BadImageIdsAreInvalidArgumentAndChangeNothing) {
  const auto bytes = MakeTestImage(4096);
  ASSERT_TRUE(client_->Push("victim", bytes.data(), bytes.size()).ok());

  const std::string rules = "A-Z a-z 0-9";
  auto pushed = client_->Push("has space", bytes.data(), bytes.size());
  EXPECT_EQ(pushed.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(absl::StartsWith(pushed.status().message(), "push 'has space': "))
      << pushed.status();
  auto fetched = client_->Fetch("has space");
  EXPECT_EQ(fetched.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(
      absl::StartsWith(fetched.status().message(), "fetch 'has space': "))
      << fetched.status();
  EXPECT_NE(fetched.status().message().find(rules), std::string::npos);

  // An id longer than any the lane can name must not be cut short into
  // another image's id, nor leave the rest of it on the connection.
  const std::string too_long = "victim" + std::string(65536, 'a');
  fetched = client_->Fetch(too_long);
  EXPECT_EQ(fetched.status().code(), absl::StatusCode::kInvalidArgument)
      << "got " << (fetched.ok() ? "an image" : "another error");
  pushed = client_->Push(too_long, bytes.data(), bytes.size());
  EXPECT_EQ(pushed.status().code(), absl::StatusCode::kInvalidArgument);

  for (int i = 0; i < 3; ++i) {
    auto again = client_->Fetch("victim");
    ASSERT_TRUE(again.ok()) << again.status();
    EXPECT_EQ(std::memcmp(again->buffer.data(), bytes.data(), bytes.size()), 0);
  }
  auto listed = client_->List();
  ASSERT_TRUE(listed.ok()) << listed.status();
  EXPECT_EQ(listed->images.size(), 1u);
}

TEST_P(ClientDataLaneTest, ProgressRunsInOrderOnTheCallingThreadUpToTheTotal) {
  for (size_t size : kSizes) {
    if (size == 0) continue;
    SCOPED_TRACE(size);
    const std::string id = absl::StrCat("progress/", size);
    const auto bytes = MakeTestImage(size);
    std::vector<std::pair<uint64_t, uint64_t>> calls;
    const std::thread::id caller = std::this_thread::get_id();
    auto record = [&](uint64_t done, uint64_t total) {
      EXPECT_EQ(std::this_thread::get_id(), caller);
      calls.emplace_back(done, total);
    };
    for (bool push : {true, false}) {
      SCOPED_TRACE(push ? "push" : "fetch");
      calls.clear();
      // A fetch that maps the server's memory moves no bytes: it reports
      // its progress once, whole.
      bool moved_bytes = true;
      if (push) {
        PushOptions options;
        options.progress = record;
        ASSERT_TRUE(client_->Push(id, bytes.data(), size, options).ok());
      } else {
        FetchOptions options;
        options.progress = record;
        absl::StatusOr<FetchedImage> fetched = client_->Fetch(id, options);
        ASSERT_TRUE(fetched.ok()) << fetched.status();
        moved_bytes = !fetched->buffer.is_mapped();
      }
      ASSERT_FALSE(calls.empty());
      for (size_t i = 0; i < calls.size(); ++i) {
        EXPECT_EQ(calls[i].second, size);
        EXPECT_GT(calls[i].first, 0u);
        if (i > 0) {
          EXPECT_GE(calls[i].first, calls[i - 1].first);
        }
      }
      EXPECT_EQ(calls.back(), std::make_pair(uint64_t{size}, uint64_t{size}));
      if (size > (size_t{4} << 20) && moved_bytes) {
        EXPECT_GT(calls.size(), 1u) << "a large transfer reported only once";
      }
      if (!moved_bytes) {
        EXPECT_EQ(calls.size(), 1u);
      }
    }
  }
}

TEST_P(ClientDataLaneTest, ManyThreadsOnOneClientAllGetTheirOwnBytes) {
  constexpr int kThreads = 8;
  constexpr int kSmallPerThread = 40;
  constexpr int kLargePerThread = 2;
  std::atomic<int> failures{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      for (int i = 0; i < kSmallPerThread + kLargePerThread; ++i) {
        const bool large = i % 20 == 7 && i / 20 < kLargePerThread;
        const size_t size = large ? (size_t{3} << 20) + 17 * i
                                  : 512 + 997 * ((t * 31 + i) % 64);
        const uint32_t seed = static_cast<uint32_t>(t * 1000 + i);
        const std::string id = absl::StrCat("thread", t, "/image", i);
        const auto bytes = MakeTestImage(size, seed);
        auto pushed = client_->Push(id, bytes.data(), bytes.size());
        auto fetched = client_->Fetch(id);
        if (!pushed.ok() || !fetched.ok() ||
            fetched->info.generation != pushed->generation ||
            fetched->buffer.size() != size ||
            std::memcmp(fetched->buffer.data(), bytes.data(), size) != 0) {
          ADD_FAILURE() << id << ": " << pushed.status() << " "
                        << fetched.status();
          ++failures;
        }
      }
    });
  }
  for (std::thread& thread : threads) thread.join();
  EXPECT_EQ(failures.load(), 0);
  // Everything is still there afterwards, fetched once more.
  for (int t = 0; t < kThreads; ++t) {
    auto again = client_->Fetch(absl::StrCat("thread", t, "/image7"));
    EXPECT_TRUE(again.ok()) << again.status();
  }
}

INSTANTIATE_TEST_SUITE_P(
    TransportsWithAndWithoutLane, ClientDataLaneTest,
    ::testing::Combine(::testing::Values(Transport::kTcp, Transport::kUnix),
                       ::testing::Bool()),
    [](const ::testing::TestParamInfo<std::tuple<Transport, bool>>& param) {
      return TransportName(std::get<0>(param.param)) +
             (std::get<1>(param.param) ? "Lane" : "GrpcOnly");
    });

// ---------------------------------------------------------------------------
// The lane carries the bytes when the server offers it, and gRPC does when
// it does not.

class LaneUseTest : public ::testing::TestWithParam<Transport> {
 protected:
  void SetUp() override {
    auto dir = TempDir::Create("/tmp");
    ASSERT_TRUE(dir.ok()) << dir.status();
    dir_.emplace(*std::move(dir));
  }

  // An in-process server with or without its lane, and a relay in front of
  // its gRPC listener (a Unix one at `relay_socket` in the test's
  // directory).
  void StartServer(bool data_lane,
                   const std::string& relay_socket = "relay.sock") {
    server::ServerOptions options;
    options.data_lane = data_lane;
    auto depot = InProcessDepot::Start(options, GetParam() == Transport::kTcp
                                                    ? Listeners::kTcp
                                                    : Listeners::kUnix);
    ASSERT_TRUE(depot.ok()) << depot.status();
    depot_ = *std::move(depot);
    relay_ = GetParam() == Transport::kTcp
                 ? CountingRelay::ToTcp(depot_->server().port())
                 : CountingRelay::ToUnix(
                       dir_->File(relay_socket),
                       depot_->unix_target().substr(sizeof("unix:") - 1));
    ASSERT_NE(relay_, nullptr);
  }

  // A relay, on this test's transport, in front of an h5depotd process;
  // a Unix relay listens at `relay_socket` in the test's directory.
  std::unique_ptr<CountingRelay> RelayTo(const ServerProcess& server,
                                         const std::string& relay_socket) {
    const std::string& target = server.target();
    return GetParam() == Transport::kTcp
               ? CountingRelay::ToTcp(
                     std::stoi(target.substr(target.rfind(':') + 1)))
               : CountingRelay::ToUnix(dir_->File(relay_socket),
                                       server.unix_socket_path());
  }

  std::unique_ptr<Client> Connect(bool use_data_lane) {
    ClientOptions options;
    options.use_data_lane = use_data_lane;
    auto client = Client::Connect(relay_->target(), options);
    EXPECT_TRUE(client.ok()) << client.status();
    return client.ok() ? *std::move(client) : nullptr;
  }

  std::optional<TempDir> dir_;
  std::unique_ptr<InProcessDepot> depot_;
  std::unique_ptr<CountingRelay> relay_;
};

TEST_P(LaneUseTest, OfferedLaneCarriesTheImageBytesInsteadOfGrpc) {
  StartServer(/*data_lane=*/true);
  const auto bytes = MakeTestImage(kProbeBytes);
  std::unique_ptr<Client> lane_client = Connect(true);
  ASSERT_NE(lane_client, nullptr);
  EXPECT_LT(RoundTripThrough(*lane_client, *relay_, "over/lane", bytes),
            kLittleGrpcTraffic);

  // The same through a client told not to use it: all of it over gRPC.
  std::unique_ptr<Client> grpc_client = Connect(false);
  ASSERT_NE(grpc_client, nullptr);
  EXPECT_GT(RoundTripThrough(*grpc_client, *relay_, "over/grpc", bytes),
            2 * bytes.size());
}

TEST_P(LaneUseTest, ServerWithoutLaneIsServedOverGrpc) {
  StartServer(/*data_lane=*/false);
  EXPECT_EQ(depot_->server().data_lane_port(), 0);
  EXPECT_TRUE(depot_->server().data_lane_unix_path().empty());
  std::unique_ptr<Client> client = Connect(true);
  ASSERT_NE(client, nullptr);
  const auto bytes = MakeTestImage(kProbeBytes);
  EXPECT_GT(RoundTripThrough(*client, *relay_, "no/lane", bytes),
            2 * bytes.size());
}

TEST_P(LaneUseTest, H5depotdWithNoDataLaneFlagIsServedOverGrpc) {
  ServerProcessOptions options;
  options.tcp = GetParam() == Transport::kTcp;
  options.unix_socket = GetParam() == Transport::kUnix;
  options.extra_flags = {"--nodata-lane"};
  auto server = ServerProcess::Start(options);
  ASSERT_TRUE(server.ok()) << server.status();
  relay_ = RelayTo(**server, "relay.sock");
  ASSERT_NE(relay_, nullptr);
  std::unique_ptr<Client> client = Connect(true);
  ASSERT_NE(client, nullptr);
  const auto bytes = MakeTestImage(kProbeBytes);
  EXPECT_GT(RoundTripThrough(*client, *relay_, "no/lane", bytes),
            2 * bytes.size());
  // And the same h5depotd with its lane: the bytes bypass gRPC.
  client.reset();
  relay_.reset();
  server->reset();
  options.extra_flags.clear();
  server = ServerProcess::Start(options);
  ASSERT_TRUE(server.ok()) << server.status();
  relay_ = RelayTo(**server, "relay2.sock");
  ASSERT_NE(relay_, nullptr);
  client = Connect(true);
  ASSERT_NE(client, nullptr);
  EXPECT_LT(RoundTripThrough(*client, *relay_, "with/lane", bytes),
            kLittleGrpcTraffic);
}

// Reads all of `id` through a reader, in 1 MiB pieces, and through
// Client::Read; returns how many bytes `relay` carried meanwhile.
uint64_t ReadBackThrough(Client& client, const CountingRelay& relay,
                         const std::string& id,
                         const std::vector<uint8_t>& bytes) {
  const uint64_t before = relay.bytes();
  auto reader = client.OpenReader(id);
  EXPECT_TRUE(reader.ok()) << reader.status();
  if (!reader.ok()) return 0;
  std::vector<uint8_t> read(bytes.size() + 100);
  constexpr size_t kPiece = size_t{1} << 20;
  for (size_t offset = 0; offset < read.size(); offset += kPiece) {
    auto n = (*reader)->Read(offset, read.data() + offset,
                             std::min(kPiece, read.size() - offset));
    EXPECT_TRUE(n.ok()) << n.status();
    if (!n.ok()) return 0;
    EXPECT_EQ(*n,
              std::min(kPiece, bytes.size() - std::min(offset, bytes.size())));
  }
  read.resize(bytes.size());
  EXPECT_TRUE(read == bytes) << id << ": a reader read other bytes";
  auto ranged =
      client.Read(id, (*reader)->info().generation, 4096, read.data(), 2 << 20);
  EXPECT_TRUE(ranged.ok()) << ranged.status();
  if (ranged.ok()) {
    EXPECT_EQ(ranged->bytes_read, size_t{2} << 20);
    EXPECT_EQ(std::memcmp(read.data(), bytes.data() + 4096, 2 << 20), 0);
  }
  return relay.bytes() - before;
}

TEST_P(LaneUseTest, ReadersReadOverTheOfferedLaneAndOverGrpcWithout) {
  StartServer(/*data_lane=*/true);
  const auto bytes = MakeTestImage(kProbeBytes);
  std::unique_ptr<Client> lane_client = Connect(true);
  ASSERT_NE(lane_client, nullptr);
  ASSERT_TRUE(lane_client->Push("read/me", bytes.data(), bytes.size()).ok());
  // The pin stays a gRPC stream; the bytes bypass gRPC.
  EXPECT_LT(ReadBackThrough(*lane_client, *relay_, "read/me", bytes),
            kLittleGrpcTraffic);

  std::unique_ptr<Client> grpc_client = Connect(false);
  ASSERT_NE(grpc_client, nullptr);
  EXPECT_GT(ReadBackThrough(*grpc_client, *relay_, "read/me", bytes),
            bytes.size() + (2 << 20));
}

TEST_P(LaneUseTest, H5depotdWithNoDataLaneServesReadersOverGrpc) {
  ServerProcessOptions options;
  options.tcp = GetParam() == Transport::kTcp;
  options.unix_socket = GetParam() == Transport::kUnix;
  options.extra_flags = {"--nodata-lane"};
  auto server = ServerProcess::Start(options);
  ASSERT_TRUE(server.ok()) << server.status();
  relay_ = RelayTo(**server, "relay.sock");
  ASSERT_NE(relay_, nullptr);
  std::unique_ptr<Client> client = Connect(true);
  ASSERT_NE(client, nullptr);
  const auto bytes = MakeTestImage(kProbeBytes);
  ASSERT_TRUE(client->Push("read/me", bytes.data(), bytes.size()).ok());
  EXPECT_GT(ReadBackThrough(*client, *relay_, "read/me", bytes),
            bytes.size() + (2 << 20));
}

// The remote driver reads through a reader of the target it was given:
// its reads follow the same choice. `/data` of the image at `id` read
// through the driver must be `expected`.
void ReadDatasetWithTheDriver(const std::string& target, const std::string& id,
                              const std::vector<char>& expected) {
  hid_t fapl = H5Pcreate(H5P_FILE_ACCESS);
  ASSERT_GE(H5Pset_fapl_remote(fapl, target.c_str(), nullptr), 0);
  hid_t file = H5Fopen(id.c_str(), H5F_ACC_RDONLY, fapl);
  H5Pclose(fapl);
  ASSERT_GE(file, 0);
  hid_t dataset = H5Dopen2(file, "/data", H5P_DEFAULT);
  ASSERT_GE(dataset, 0);
  std::vector<char> data(expected.size());
  EXPECT_GE(H5Dread(dataset, H5T_NATIVE_UCHAR, H5S_ALL, H5S_ALL, H5P_DEFAULT,
                    data.data()),
            0);
  H5Dclose(dataset);
  H5Fclose(file);
  EXPECT_TRUE(data == expected);
}

// `/data` of an HDF5 image, read from memory (a copy HDF5's core driver
// owns).
std::vector<char> DatasetOf(const std::string& image) {
  hid_t fapl = H5Pcreate(H5P_FILE_ACCESS);
  H5Pset_fapl_core(fapl, 1 << 20, /*backing_store=*/0);
  H5Pset_file_image(fapl, const_cast<char*>(image.data()), image.size());
  hid_t file = H5Fopen("in-memory", H5F_ACC_RDONLY, fapl);
  H5Pclose(fapl);
  if (file < 0) return {};
  hid_t dataset = H5Dopen2(file, "/data", H5P_DEFAULT);
  hid_t space = H5Dget_space(dataset);
  std::vector<char> data(
      static_cast<size_t>(H5Sget_simple_extent_npoints(space)));
  H5Dread(dataset, H5T_NATIVE_UCHAR, H5S_ALL, H5S_ALL, H5P_DEFAULT,
          data.data());
  H5Sclose(space);
  H5Dclose(dataset);
  H5Fclose(file);
  return data;
}

TEST_P(LaneUseTest, RemoteDriverReadsOverTheLaneWhereThereIsOne) {
  const std::string image = testing::MakeHdf5Image(kProbeBytes, 31);
  const std::vector<char> expected = DatasetOf(image);
  ASSERT_EQ(expected.size(), kProbeBytes);
  for (bool data_lane : {true, false}) {
    SCOPED_TRACE(data_lane ? "with a lane" : "without a lane");
    // A relay of its own: the driver keeps its connection per target.
    StartServer(data_lane, data_lane ? "lane.sock" : "grpc.sock");
    std::unique_ptr<Client> client = Connect(true);
    ASSERT_NE(client, nullptr);
    ASSERT_TRUE(
        client->Push("driver/read.h5", image.data(), image.size()).ok());
    const uint64_t before = relay_->bytes();
    ReadDatasetWithTheDriver(relay_->target(), "driver/read.h5", expected);
    const uint64_t over_grpc = relay_->bytes() - before;
    if (data_lane) {
      EXPECT_LT(over_grpc, kLittleGrpcTraffic);
    } else {
      EXPECT_GT(over_grpc, kProbeBytes);
    }
    client.reset();
    relay_.reset();
    depot_.reset();
  }
}

// A reader being opened has the connection its reads need greeted while
// its PIN is answered: the first read takes that one from the pool rather
// than dialling its own. With one in the pool already, none is dialled.
TEST(DataLanePinTest, AReaderOpenedLeavesAConnectionForItsReadsInThePool) {
  auto depot = InProcessDepot::Start();
  ASSERT_TRUE(depot.ok()) << depot.status();
  std::shared_ptr<internal::DataLane> lane = internal::DataLane::ForServer(
      (*depot)->target(),
      static_cast<uint32_t>((*depot)->server().data_lane_port()), "");
  ASSERT_NE(lane, nullptr);
  const absl::Time deadline = absl::Now() + absl::Seconds(30);
  const std::vector<uint8_t> image = MakeTestImage(10000);
  auto pushing = lane->ConnectNew(deadline);
  ASSERT_TRUE(pushing.ok()) << pushing.status();
  ASSERT_TRUE(lane->Push(*std::move(pushing), "pin/reads", image.data(),
                         image.size(), PushOptions(), deadline,
                         /*stream_append=*/false)
                  .ok());
  // The push gave its connection back: the pool holds one. Empty it.
  auto pooled = lane->Connect(deadline);
  ASSERT_TRUE(pooled.ok()) << pooled.status();
  ASSERT_TRUE((*pooled)->reused);

  auto reader = lane->OpenReader(*std::move(pooled), "pin/reads", 0, deadline,
                                 absl::Seconds(30), nullptr);
  ASSERT_TRUE(reader.ok()) << reader.status();
  auto for_reads = lane->Connect(deadline);
  ASSERT_TRUE(for_reads.ok()) << for_reads.status();
  EXPECT_TRUE((*for_reads)->reused);  // dialled during the PIN
  EXPECT_TRUE((*for_reads)->reads);
  EXPECT_TRUE((*for_reads)->pins);
  // The pool is empty again: the next call dials.
  auto dialled = lane->Connect(deadline);
  ASSERT_TRUE(dialled.ok()) << dialled.status();
  EXPECT_FALSE((*dialled)->reused);

  // With a connection in the pool, opening a reader dials no other.
  lane->GiveBack(*std::move(for_reads));
  auto second = lane->OpenReader(*std::move(dialled), "pin/reads", 0, deadline,
                                 absl::Seconds(30), nullptr);
  ASSERT_TRUE(second.ok()) << second.status();
  auto from_pool = lane->Connect(deadline);
  ASSERT_TRUE(from_pool.ok()) << from_pool.status();
  EXPECT_TRUE((*from_pool)->reused);
  auto next = lane->Connect(deadline);
  ASSERT_TRUE(next.ok()) << next.status();
  EXPECT_FALSE((*next)->reused);
}

INSTANTIATE_TEST_SUITE_P(Transports, LaneUseTest,
                         ::testing::Values(Transport::kTcp, Transport::kUnix),
                         [](const ::testing::TestParamInfo<Transport>& param) {
                           return TransportName(param.param);
                         });

// ---------------------------------------------------------------------------
// A restarted h5depotd: same gRPC address, a new lane.

// Starts h5depotd on the given flags, which name its gRPC address.
absl::StatusOr<std::unique_ptr<ServerProcess>> StartAt(
    std::vector<std::string> flags) {
  ServerProcessOptions options;
  // The flags given later override ServerProcess's own --listen.
  options.extra_flags = std::move(flags);
  return ServerProcess::Start(options);
}

TEST(ServerRestartTest, SameClientFindsTheRestartedServersNewLane) {
  const int grpc_port = PickFreePort();
  ASSERT_NE(grpc_port, 0);
  const std::string listen = absl::StrCat("--listen=127.0.0.1:", grpc_port);
  auto server = StartAt({listen});
  ASSERT_TRUE(server.ok()) << server.status();
  ASSERT_EQ((*server)->tcp_target(), absl::StrCat("127.0.0.1:", grpc_port));
  const uint32_t first_lane = AdvertisedLanePort((*server)->target());
  ASSERT_NE(first_lane, 0u);

  // One client straight to the server, one through a relay that shows
  // whether the bytes bypass gRPC.
  auto direct = Client::Connect((*server)->target());
  ASSERT_TRUE(direct.ok()) << direct.status();
  auto relay = CountingRelay::ToTcp(grpc_port);
  ASSERT_NE(relay, nullptr);
  auto relayed = Client::Connect(relay->target());
  ASSERT_TRUE(relayed.ok()) << relayed.status();

  const auto before = MakeTestImage((size_t{4} << 20) + 3, 1);
  EXPECT_LT(RoundTripThrough(**relayed, *relay, "before", before),
            kLittleGrpcTraffic);
  ASSERT_TRUE(
      (*direct)->Push("before/direct", before.data(), before.size()).ok());
  ASSERT_TRUE((*direct)->Fetch("before/direct").ok());

  ASSERT_TRUE((*server)->Terminate().ok());
  // A lane port other than the first, so that the client must ask anew.
  int second_lane = 0;
  while (second_lane == 0 || second_lane == static_cast<int>(first_lane)) {
    second_lane = PickFreePort();
  }
  server = StartAt({listen, absl::StrCat("--data-port=", second_lane)});
  ASSERT_TRUE(server.ok()) << server.status();
  ASSERT_EQ(AdvertisedLanePort((*server)->target()),
            static_cast<uint32_t>(second_lane));

  // The images went with the old server; the clients carry on.
  EXPECT_EQ((*direct)->Fetch("before/direct").status().code(),
            absl::StatusCode::kNotFound);
  for (size_t size : {size_t{4096}, (size_t{6} << 20) + 5}) {
    SCOPED_TRACE(size);
    const auto after = MakeTestImage(size, 2);
    EXPECT_LT(RoundTripThrough(**relayed, *relay, absl::StrCat("after/", size),
                               after),
              kLittleGrpcTraffic)
        << "after the restart the bytes went over gRPC, not the new lane";
    auto pushed = (*direct)->Push(absl::StrCat("after/direct/", size),
                                  after.data(), after.size());
    ASSERT_TRUE(pushed.ok()) << pushed.status();
    auto fetched = (*direct)->Fetch(absl::StrCat("after/direct/", size));
    ASSERT_TRUE(fetched.ok()) << fetched.status();
    ASSERT_EQ(fetched->buffer.size(), size);
    EXPECT_EQ(std::memcmp(fetched->buffer.data(), after.data(), size), 0);
  }
}

TEST(ServerRestartTest, SameClientCarriesOnOverAUnixSocketAfterARestart) {
  auto dir = TempDir::Create("/tmp");
  ASSERT_TRUE(dir.ok()) << dir.status();
  const std::string unix = "--unix=" + dir->File("depot.sock");
  auto server = StartAt({"--listen=", unix});
  ASSERT_TRUE(server.ok()) << server.status();
  auto client = Client::Connect("unix:" + dir->File("depot.sock"));
  ASSERT_TRUE(client.ok()) << client.status();
  const auto bytes = MakeTestImage((size_t{3} << 20) + 1, 3);
  ASSERT_TRUE((*client)->Push("x", bytes.data(), bytes.size()).ok());
  ASSERT_TRUE((*client)->Fetch("x").ok());  // leaves idle lane connections

  ASSERT_TRUE((*server)->Terminate().ok());
  server = StartAt({"--listen=", unix});
  ASSERT_TRUE(server.ok()) << server.status();

  for (size_t size : {size_t{4096}, bytes.size()}) {
    auto pushed = (*client)->Push("y", bytes.data(), size);
    ASSERT_TRUE(pushed.ok()) << pushed.status();
    auto fetched = (*client)->Fetch("y");
    ASSERT_TRUE(fetched.ok()) << fetched.status();
    ASSERT_EQ(fetched->buffer.size(), size);
    EXPECT_EQ(std::memcmp(fetched->buffer.data(), bytes.data(), size), 0);
  }
}

// A pooled lane connection that the server closed after the pool checked
// it (a restart within the moment the pool trusts an idle connection) is
// replaced by a new one, not reported: the push and the fetch reach the
// restarted server. Driven through the pool itself, so that the connection
// is known to be a pooled one whose server is gone.
TEST(ServerRestartTest, APooledConnectionTheServerClosedIsReplacedNotReported) {
  auto dir = TempDir::Create("/tmp");
  ASSERT_TRUE(dir.ok()) << dir.status();
  const std::string unix = "--unix=" + dir->File("depot.sock");
  const std::string target = "unix:" + dir->File("depot.sock");
  auto server = StartAt({"--listen=", unix});
  ASSERT_TRUE(server.ok()) << server.status();
  std::shared_ptr<internal::DataLane> lane = internal::DataLane::ForServer(
      target, 0, (*server)->data_lane_unix_path());
  ASSERT_NE(lane, nullptr);
  const absl::Time deadline = absl::Now() + absl::Seconds(60);
  const auto bytes = MakeTestImage(4096, 5);

  // Each call leaves its connection in the pool; the next Connect takes it.
  auto first = lane->ConnectNew(deadline);
  ASSERT_TRUE(first.ok()) << first.status();
  ASSERT_TRUE(lane->Push(*std::move(first), "a", bytes.data(), bytes.size(), {},
                         deadline, /*stream_append=*/false)
                  .ok());
  auto pooled = lane->Connect(deadline);
  ASSERT_TRUE(pooled.ok()) << pooled.status();
  ASSERT_TRUE((*pooled)->reused);

  ASSERT_TRUE((*server)->Terminate().ok());
  server = StartAt({"--listen=", unix});
  ASSERT_TRUE(server.ok()) << server.status();
  absl::StatusOr<ImageInfo> pushed = lane->Push(
      *std::move(pooled), "b", bytes.data(), bytes.size(), {}, deadline,
      /*stream_append=*/false);
  ASSERT_TRUE(pushed.ok()) << pushed.status();
  EXPECT_EQ(pushed->size, bytes.size());

  pooled = lane->Connect(deadline);
  ASSERT_TRUE(pooled.ok()) << pooled.status();
  ASSERT_TRUE((*pooled)->reused);
  ASSERT_TRUE((*server)->Terminate().ok());
  server = StartAt({"--listen=", unix});
  ASSERT_TRUE(server.ok()) << server.status();
  // The restarted server holds nothing: its answer, not the dead socket's.
  absl::StatusOr<FetchedImage> fetched = lane->Fetch(
      *std::move(pooled), "b", {}, internal::CallDeadline::At(deadline));
  EXPECT_EQ(fetched.status().code(), absl::StatusCode::kNotFound)
      << fetched.status();
}

// ---------------------------------------------------------------------------
// A client process that dies in the middle of a push over the lane.

TEST(KilledLaneClientTest, ClientKilledMidPushLeavesNoImageAndNoReservation) {
  constexpr size_t kImageBytes = size_t{32} << 20;
  ServerProcessOptions options;
  options.extra_flags = {"--max-memory=40M"};  // one image, not two
  auto server = ServerProcess::Start(options);
  ASSERT_TRUE(server.ok()) << server.status();
  const std::string& target = (*server)->target();
  auto relay =
      CountingRelay::ToTcp(std::stoi(target.substr(target.rfind(':') + 1)));
  ASSERT_NE(relay, nullptr);

  const testing::CommandResult killed =
      testing::RunCommand({KILLED_LANE_PUSH_PATH, relay->target(), "dying",
                           std::to_string(kImageBytes)});
  ASSERT_EQ(killed.term_signal, SIGKILL)
      << "exit " << killed.exit_code << ": " << killed.stderr_text;
  // It got halfway, and not over gRPC: the lane is what it was cut from.
  EXPECT_LT(relay->bytes(), kImageBytes / 4);

  auto client = Client::Connect(target);
  ASSERT_TRUE(client.ok()) << client.status();
  EXPECT_EQ((*client)->Stat("dying").status().code(),
            absl::StatusCode::kNotFound);
  // The server notices the closed connection on its own time; until then
  // the half-pushed image still holds its memory. Bounded wait.
  const auto bytes = MakeTestImage(kImageBytes, 9);
  const absl::Time give_up = absl::Now() + absl::Seconds(60);
  absl::StatusOr<ImageInfo> pushed;
  while (true) {
    pushed = (*client)->Push("full", bytes.data(), bytes.size());
    if (pushed.ok() || absl::Now() > give_up ||
        pushed.status().code() != absl::StatusCode::kResourceExhausted) {
      break;
    }
    std::this_thread::yield();
  }
  ASSERT_TRUE(pushed.ok()) << pushed.status();
  auto fetched = (*client)->Fetch("full");
  ASSERT_TRUE(fetched.ok()) << fetched.status();
  EXPECT_EQ(std::memcmp(fetched->buffer.data(), bytes.data(), bytes.size()), 0);
  EXPECT_EQ((*client)->Fetch("dying").status().code(),
            absl::StatusCode::kNotFound);
}

// ---------------------------------------------------------------------------
// The call timeout holds on the lane when the server stops answering.

// Resumes a stopped process when it goes out of scope.
class ResumeOnExit {
 public:
  explicit ResumeOnExit(pid_t pid) : pid_(pid) {}
  ~ResumeOnExit() { ::kill(pid_, SIGCONT); }

 private:
  pid_t pid_;
};

TEST(LaneCallTimeoutTest, StoppedServerTimesCallsOutAndTheClientRecovers) {
  auto server = ServerProcess::Start();
  ASSERT_TRUE(server.ok()) << server.status();
  ClientOptions options;
  options.call_timeout = absl::Milliseconds(300);
  auto client = Client::Connect((*server)->target(), options);
  ASSERT_TRUE(client.ok()) << client.status();
  const auto small = MakeTestImage(4096, 1);
  const auto large = MakeTestImage((size_t{3} << 20) + 11, 2);
  // Idle lane connections in the pool, as a busy client has.
  ASSERT_TRUE((*client)->Push("small", small.data(), small.size()).ok());
  ASSERT_TRUE((*client)->Push("large", large.data(), large.size()).ok());
  ASSERT_TRUE((*client)->Fetch("large").ok());

  std::future<std::vector<absl::Status>> calls;
  {
    ASSERT_EQ(::kill((*server)->pid(), SIGSTOP), 0);
    ResumeOnExit resume((*server)->pid());
    // kill() returns before every thread has stopped; wait until they have.
    siginfo_t stopped{};
    ASSERT_EQ(::waitid(P_PID, static_cast<id_t>((*server)->pid()), &stopped,
                       WSTOPPED),
              0);
    ASSERT_EQ(stopped.si_code, CLD_STOPPED);
    calls = std::async(std::launch::async, [&] {
      std::vector<absl::Status> statuses;
      statuses.push_back(
          (*client)->Push("small2", small.data(), small.size()).status());
      statuses.push_back(
          (*client)->Push("large2", large.data(), large.size()).status());
      statuses.push_back((*client)->Fetch("small").status());
      statuses.push_back((*client)->Fetch("large").status());
      return statuses;
    });
    // A guard against a hang, not a measurement.
    ASSERT_EQ(calls.wait_for(std::chrono::seconds(120)),
              std::future_status::ready)
        << "calls to a stopped server did not return";
  }
  const std::vector<absl::Status> statuses = calls.get();
  const char* const prefixes[] = {"push 'small2': ", "push 'large2': ",
                                  "fetch 'small': ", "fetch 'large': "};
  for (size_t i = 0; i < statuses.size(); ++i) {
    const absl::Status& status = statuses[i];
    EXPECT_TRUE(status.code() == absl::StatusCode::kDeadlineExceeded ||
                status.code() == absl::StatusCode::kUnavailable)
        << prefixes[i] << status;
    EXPECT_TRUE(absl::StartsWith(status.message(), prefixes[i]))
        << prefixes[i] << status;
  }

  // Resumed, the server answers the same client again.
  auto pushed = (*client)->Push("small3", small.data(), small.size());
  ASSERT_TRUE(pushed.ok()) << pushed.status();
  pushed = (*client)->Push("large3", large.data(), large.size());
  ASSERT_TRUE(pushed.ok()) << pushed.status();
  auto fetched = (*client)->Fetch("large3");
  ASSERT_TRUE(fetched.ok()) << fetched.status();
  EXPECT_EQ(std::memcmp(fetched->buffer.data(), large.data(), large.size()), 0);
  fetched = (*client)->Fetch("small");
  ASSERT_TRUE(fetched.ok()) << fetched.status();
  EXPECT_EQ(std::memcmp(fetched->buffer.data(), small.data(), small.size()), 0);
}

}  // namespace
}  // namespace h5depot
