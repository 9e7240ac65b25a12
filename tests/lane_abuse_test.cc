// The data lane under abuse, against a real h5depotd: clients that hold
// connections, descriptors or waits they do not use must not take the
// server from everyone else. Each case mounts one attack, shows that it is
// turned away or outlasted, and that a well-behaved client is served.
//
// CPU use is measured on the server process over an interval (its
// /proc/PID/stat), with a wide margin: a server that is idle uses next to
// nothing, one that spins or polls uses a core.
#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/uio.h>

#include <cerrno>
#include <filesystem>
#include <fstream>
#include <memory>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "gtest/gtest.h"
#include "h5depot/client.h"
#include "h5depot/internal/lane_protocol.h"
#include "h5depot/internal/lane_socket.h"
#include "h5depot/testing/hdf5_images.h"
#include "h5depot/testing/server_process.h"

namespace h5depot {
namespace {

namespace lane = internal::lane;
using ::h5depot::testing::MakeHdf5Image;
using ::h5depot::testing::ServerProcess;
using ::h5depot::testing::ServerProcessOptions;
using lane::LaneSocket;

// A safety net against a server that never answers, not a measurement.
absl::Time IoDeadline() { return absl::Now() + absl::Seconds(30); }

// Recovery after an attack ends must come within this.
constexpr absl::Duration kRecoveryDeadline = absl::Seconds(30);

// The interval over which the server's CPU use is measured, and the most
// it may use meanwhile: a quarter of one core, where a spinning acceptor or
// hundreds of polling waits take one or two whole cores.
constexpr absl::Duration kCpuInterval = absl::Seconds(2);
constexpr double kIdleCpuShare = 0.25;

// The server's CPU time used over kCpuInterval from now. (The interval is
// what is measured; nothing waits on it for an event.)
absl::Duration CpuUsedOverInterval(const ServerProcess& server) {
  const absl::StatusOr<absl::Duration> before = server.CpuTime();
  EXPECT_TRUE(before.ok()) << before.status();
  absl::SleepFor(kCpuInterval);
  const absl::StatusOr<absl::Duration> after = server.CpuTime();
  EXPECT_TRUE(after.ok()) << after.status();
  if (!before.ok() || !after.ok()) return absl::InfiniteDuration();
  return *after - *before;
}

// The /proc entries of the server's lane threads (named h5depot-lane).
absl::StatusOr<std::vector<std::filesystem::path>> LaneThreads(
    const ServerProcess& server) {
  std::vector<std::filesystem::path> threads;
  std::error_code error;
  const std::string tasks = absl::StrCat("/proc/", server.pid(), "/task");
  for (const auto& task : std::filesystem::directory_iterator(tasks, error)) {
    std::ifstream comm(task.path() / "comm");
    std::string name;
    std::getline(comm, name);
    if (name == "h5depot-lane") threads.push_back(task.path());
  }
  if (error) {
    return absl::InternalError(
        absl::StrCat("cannot list ", tasks, ": ", error.message()));
  }
  return threads;
}

// How many times the server's lane threads have given up their CPU so far,
// all together: each sleep that ends, by an event or a timer, is one.
absl::StatusOr<uint64_t> LaneThreadSwitches(const ServerProcess& server) {
  absl::StatusOr<std::vector<std::filesystem::path>> threads =
      LaneThreads(server);
  if (!threads.ok()) return threads.status();
  uint64_t switches = 0;
  for (const std::filesystem::path& thread : *threads) {
    std::ifstream status(thread / "status");
    for (std::string line; std::getline(status, line);) {
      // Both voluntary_ctxt_switches and nonvoluntary_ctxt_switches.
      constexpr std::string_view kField = "voluntary_ctxt_switches:";
      const size_t at = line.find(kField);
      uint64_t count = 0;
      if (at != std::string::npos &&
          absl::SimpleAtoi(
              absl::StripAsciiWhitespace(line.substr(at + kField.size())),
              &count)) {
        switches += count;
      }
    }
  }
  return switches;
}

// Waits until the server has no lane thread left: every connection it
// served has ended. False if some remain at `deadline`.
bool AwaitNoLaneThreads(const ServerProcess& server, absl::Time deadline) {
  while (absl::Now() < deadline) {
    absl::StatusOr<std::vector<std::filesystem::path>> threads =
        LaneThreads(server);
    if (threads.ok() && threads->empty()) return true;
    std::this_thread::yield();
  }
  return false;
}

// Whether the server closed the connection (by `deadline`): the next
// receive finds its end rather than a byte.
bool ServerClosed(LaneSocket& socket, absl::Time deadline = IoDeadline()) {
  uint8_t byte;
  return absl::IsUnavailable(socket.Receive(&byte, 1, deadline));
}

// A response and the status message behind it.
struct Reply {
  lane::Response header;
  std::string message;
};

absl::StatusOr<Reply> ReceiveReply(LaneSocket& socket,
                                   absl::Time deadline = IoDeadline()) {
  uint8_t raw[lane::kResponseHeaderBytes];
  if (absl::Status status = socket.Receive(raw, sizeof(raw), deadline);
      !status.ok()) {
    return status;
  }
  Reply reply;
  if (absl::Status status = lane::DecodeResponse(raw, &reply.header);
      !status.ok()) {
    return status;
  }
  reply.message.resize(reply.header.message_bytes);
  if (absl::Status status =
          socket.Receive(reply.message.data(), reply.message.size(), deadline);
      !status.ok()) {
    return status;
  }
  return reply;
}

// Sends a GET of `image_id` that waits up to `wait_ms` for it.
absl::Status SendGet(LaneSocket& socket, std::string_view image_id,
                     uint64_t wait_ms) {
  lane::RequestHeader header;
  header.op = lane::Op::kGet;
  header.wait_ms = wait_ms;
  header.image_id_bytes = static_cast<uint16_t>(image_id.size());
  uint8_t raw[lane::kRequestHeaderBytes];
  lane::EncodeRequestHeader(header, raw);
  iovec iov[2] = {{raw, sizeof(raw)},
                  {const_cast<char*>(image_id.data()), image_id.size()}};
  return socket.SendAll(iov, 2, IoDeadline());
}

// A GET's final reply, and the image's bytes after an OK one.
absl::StatusOr<Reply> Get(LaneSocket& socket, std::string_view image_id,
                          uint64_t wait_ms = 0, std::string* bytes = nullptr) {
  if (absl::Status status = SendGet(socket, image_id, wait_ms); !status.ok()) {
    return status;
  }
  absl::StatusOr<Reply> reply = ReceiveReply(socket);
  if (!reply.ok() || reply->header.code != absl::StatusCode::kOk) return reply;
  std::string received(reply->header.size, '\0');
  if (absl::Status status =
          socket.Receive(received.data(), received.size(), IoDeadline());
      !status.ok()) {
    return status;
  }
  if (bytes != nullptr) *bytes = std::move(received);
  return reply;
}

class LaneAbuseTest : public ::testing::Test {
 protected:
  void StartServer(ServerProcessOptions options) {
    options.unix_socket = true;
    auto server = ServerProcess::Start(options);
    ASSERT_TRUE(server.ok()) << server.status();
    server_ = *std::move(server);
  }

  // A lane connection over TCP that has exchanged hellos. UNAVAILABLE if
  // the server closed it instead of answering (it sheds connections it
  // cannot serve), DEADLINE_EXCEEDED if it did not answer by `deadline`.
  absl::StatusOr<LaneSocket> OpenLane(absl::Time deadline = IoDeadline()) {
    return Hello(
        lane::ConnectTcp("127.0.0.1", server_->data_lane_port(), deadline),
        deadline);
  }

  // The same from the loopback address `source` (127.0.0.2, say), which
  // the server sees as another peer than 127.0.0.1.
  absl::StatusOr<LaneSocket> OpenLaneFrom(const std::string& source) {
    LaneSocket socket(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
    sockaddr_in address{};
    address.sin_family = AF_INET;
    ::inet_pton(AF_INET, source.c_str(), &address.sin_addr);
    if (::bind(socket.fd(), reinterpret_cast<const sockaddr*>(&address),
               sizeof(address)) != 0) {
      return absl::InternalError(absl::StrCat("bind to ", source));
    }
    address.sin_port = htons(static_cast<uint16_t>(server_->data_lane_port()));
    ::inet_pton(AF_INET, "127.0.0.1", &address.sin_addr);
    if (::connect(socket.fd(), reinterpret_cast<const sockaddr*>(&address),
                  sizeof(address)) != 0) {
      return absl::UnavailableError(absl::StrCat("connect from ", source));
    }
    return Hello(std::move(socket), IoDeadline());
  }

  absl::StatusOr<LaneSocket> OpenUnixLane() {
    return Hello(
        lane::ConnectUnix(server_->data_lane_unix_path(), IoDeadline()),
        IoDeadline());
  }

  // Exchanges hellos on a connected `socket`.
  static absl::StatusOr<LaneSocket> Hello(absl::StatusOr<LaneSocket> socket,
                                          absl::Time deadline) {
    if (!socket.ok()) return socket.status();
    uint8_t hello[lane::kHelloBytes];
    lane::EncodeHello(hello);
    if (absl::Status status = socket->Send(hello, sizeof(hello), deadline);
        !status.ok()) {
      return status;
    }
    if (absl::Status status = socket->Receive(hello, sizeof(hello), deadline);
        !status.ok()) {
      return status;
    }
    if (absl::Status status = lane::DecodeHello(hello); !status.ok()) {
      return status;
    }
    return socket;
  }

  // A client that pushes an image and fetches it back, over the lane where
  // it can and gRPC otherwise: what a legitimate user does.
  void ExpectPushAndFetchWork(const std::string& image_id) {
    ClientOptions options;
    options.connect_timeout = kRecoveryDeadline;
    auto client = Client::Connect(server_->target(), options);
    ASSERT_TRUE(client.ok()) << client.status();
    const std::string image = MakeHdf5Image(256 << 10, 7);
    auto pushed = (*client)->Push(image_id, image.data(), image.size());
    ASSERT_TRUE(pushed.ok()) << pushed.status();
    auto fetched = (*client)->Fetch(image_id);
    ASSERT_TRUE(fetched.ok()) << fetched.status();
    EXPECT_EQ(fetched->info.generation, pushed->generation);
    EXPECT_EQ(
        std::string_view(reinterpret_cast<const char*>(fetched->buffer.data()),
                         fetched->buffer.size()),
        image);
  }

  // `count` lane connections, each with a GET waiting ten minutes for an
  // image that does not exist, "<prefix><i>".
  absl::StatusOr<std::vector<LaneSocket>> OpenWaiters(
      int count, const std::string& prefix) {
    std::vector<LaneSocket> waiters;
    for (int i = 0; i < count; ++i) {
      absl::StatusOr<LaneSocket> socket = OpenLane();
      if (!socket.ok()) return socket.status();
      if (absl::Status status =
              SendGet(*socket, absl::StrCat(prefix, i), kTenMinutesMs);
          !status.ok()) {
        return status;
      }
      waiters.push_back(*std::move(socket));
    }
    return waiters;
  }

  // Waits until a waiting GET is refused for the cap on waits (as the
  // waits of `waiters`, sent before, have all been registered), and returns
  // its reply. Each try that is admitted instead ends at once (1 ms), but
  // holds a place under the cap meanwhile: a waiter the server reaches only
  // then is refused, and is sent again.
  absl::StatusOr<Reply> AwaitWaitCapReached(std::vector<LaneSocket>& waiters,
                                            const std::string& prefix) {
    absl::StatusOr<LaneSocket> socket = OpenLane();
    if (!socket.ok()) return socket.status();
    const absl::Time give_up = IoDeadline();
    while (true) {
      absl::StatusOr<Reply> reply = Get(*socket, "probe.h5", /*wait_ms=*/1);
      if (!reply.ok() ||
          reply->header.code == absl::StatusCode::kResourceExhausted ||
          absl::Now() > give_up) {
        return reply;
      }
      if (absl::Status status = ResendRefusedWaits(waiters, prefix);
          !status.ok()) {
        return status;
      }
    }
  }

  // Sends again the waiting GET of each of `waiters` that was answered
  // already: refused for the cap, as only a probe's wait can cause.
  static absl::Status ResendRefusedWaits(std::vector<LaneSocket>& waiters,
                                         const std::string& prefix) {
    std::vector<pollfd> answered(waiters.size());
    for (size_t i = 0; i < waiters.size(); ++i) {
      answered[i] = pollfd{waiters[i].fd(), POLLIN, 0};
    }
    if (::poll(answered.data(), answered.size(), 0) < 0) {
      return absl::ErrnoToStatus(errno, "poll");
    }
    for (size_t i = 0; i < waiters.size(); ++i) {
      if (answered[i].revents == 0) continue;
      absl::StatusOr<Reply> reply = ReceiveReply(waiters[i]);
      if (!reply.ok()) return reply.status();
      if (reply->header.code != absl::StatusCode::kResourceExhausted) {
        return absl::InternalError(
            absl::StrCat("waiter ", i, " was answered: ", reply->message));
      }
      if (absl::Status status =
              SendGet(waiters[i], absl::StrCat(prefix, i), kTenMinutesMs);
          !status.ok()) {
        return status;
      }
    }
    return absl::OkStatus();
  }

  static constexpr uint64_t kTenMinutesMs = 600 * 1000;

  std::unique_ptr<ServerProcess> server_;
};

// --- 1. Running out of descriptors ------------------------------------------

TEST_F(LaneAbuseTest, ExhaustedDescriptorsAreShedWithoutSpinningAndRecovered) {
#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
  // The sanitizers' runtime needs descriptors of its own: UBSan's vptr
  // check probes memory through a pipe, and a server with none left stops
  // at a false report there (-fno-sanitize-recover), not in its own code.
  GTEST_SKIP() << "a sanitized server cannot run out of descriptors";
#endif
  ServerProcessOptions options;
  options.max_open_files = 128;
  ASSERT_NO_FATAL_FAILURE(StartServer(options));

  // The attack: connections that say hello and nothing more, until the
  // server has no descriptor left for the next.
  std::vector<LaneSocket> attack;
  absl::Status refused;
  while (refused.ok() && attack.size() < 1000) {
    absl::StatusOr<LaneSocket> socket = OpenLane();
    if (socket.ok()) {
      attack.push_back(*std::move(socket));
    } else {
      refused = socket.status();
    }
  }
  ASSERT_FALSE(refused.ok()) << "the server took " << attack.size()
                             << " connections with 128 descriptors";
  // Shed at once (closed), not left queued until the attempt timed out.
  EXPECT_TRUE(absl::IsUnavailable(refused)) << refused;

  // Out of descriptors, with connections still arriving, the acceptor
  // sheds them and otherwise sleeps.
  for (int i = 0; i < 3; ++i) {
    absl::StatusOr<LaneSocket> shed = OpenLane();
    EXPECT_TRUE(absl::IsUnavailable(shed.status())) << shed.status();
  }
  EXPECT_LT(CpuUsedOverInterval(*server_), kIdleCpuShare * kCpuInterval);

  // The attack ends: every descriptor comes back without anything else
  // happening, and the lane serves again.
  attack.clear();
  const absl::Time give_up = absl::Now() + kRecoveryDeadline;
  absl::StatusOr<Reply> got = absl::UnavailableError("not tried");
  while (!got.ok() && absl::Now() < give_up) {
    absl::StatusOr<LaneSocket> socket = OpenLane();
    if (!socket.ok()) {
      got = socket.status();
      std::this_thread::yield();
      continue;
    }
    got = Get(*socket, "absent.h5");
  }
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_EQ(got->header.code, absl::StatusCode::kNotFound);
  ASSERT_NO_FATAL_FAILURE(ExpectPushAndFetchWork("after-exhaustion.h5"));
  EXPECT_LT(CpuUsedOverInterval(*server_), kIdleCpuShare * kCpuInterval);
}

// --- 2. Waiting fetches ----------------------------------------------------

TEST_F(LaneAbuseTest, HundredsOfWaitingGetsCostNoCpuAndOthersAreServed) {
  constexpr int kWaiters = 600;
  ServerProcessOptions options;
  // The cap, at exactly the waiters' number, is how the test sees that
  // every wait is registered: one more is refused only then.
  options.extra_flags = {absl::StrCat("--max-waits=", kWaiters),
                         "--max-lane-connections-per-peer=1000"};
  ASSERT_NO_FATAL_FAILURE(StartServer(options));
  absl::StatusOr<std::vector<LaneSocket>> waiters =
      OpenWaiters(kWaiters, "absent-");
  ASSERT_TRUE(waiters.ok()) << waiters.status();
  absl::StatusOr<Reply> refused = AwaitWaitCapReached(*waiters, "absent-");
  ASSERT_TRUE(refused.ok()) << refused.status();
  ASSERT_EQ(refused->header.code, absl::StatusCode::kResourceExhausted)
      << refused->message;

  // Waiting costs nothing while nothing happens: no CPU, and the waiting
  // threads sleep through (a wait that looked at its client on a timer,
  // five times a second, switched ten times per waiter over the interval).
  const absl::StatusOr<uint64_t> switches_before = LaneThreadSwitches(*server_);
  ASSERT_TRUE(switches_before.ok()) << switches_before.status();
  EXPECT_LT(CpuUsedOverInterval(*server_), kIdleCpuShare * kCpuInterval);
  const absl::StatusOr<uint64_t> switches_after = LaneThreadSwitches(*server_);
  ASSERT_TRUE(switches_after.ok()) << switches_after.status();
  EXPECT_LT(*switches_after - *switches_before, uint64_t{kWaiters});

  // Everyone else is served meanwhile, over the lane and gRPC.
  auto client = Client::Connect(server_->target());
  ASSERT_TRUE(client.ok()) << client.status();
  const std::string image = MakeHdf5Image(64 << 10, 3);
  auto pushed = (*client)->Push("present.h5", image.data(), image.size());
  ASSERT_TRUE(pushed.ok()) << pushed.status();
  for (int i = 0; i < 50; ++i) {
    auto fetched = (*client)->Fetch("present.h5");
    ASSERT_TRUE(fetched.ok()) << fetched.status();
    ASSERT_EQ(
        std::string_view(reinterpret_cast<const char*>(fetched->buffer.data()),
                         fetched->buffer.size()),
        image);
  }
  absl::StatusOr<LaneSocket> lane = OpenLane();
  ASSERT_TRUE(lane.ok()) << lane.status();
  std::string bytes;
  absl::StatusOr<Reply> got = Get(*lane, "present.h5", 0, &bytes);
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_EQ(got->header.code, absl::StatusCode::kOk) << got->message;
  EXPECT_EQ(bytes, image);

  // A publish still ends the wait for it, at once.
  auto awaited = (*client)->Push("absent-17", image.data(), image.size());
  ASSERT_TRUE(awaited.ok()) << awaited.status();
  absl::StatusOr<Reply> woken = ReceiveReply((*waiters)[17]);
  ASSERT_TRUE(woken.ok()) << woken.status();
  EXPECT_EQ(woken->header.code, absl::StatusCode::kOk) << woken->message;
  EXPECT_EQ(woken->header.generation, awaited->generation);
}

TEST_F(LaneAbuseTest, WaitsBeyondTheCapAreRefusedOnEveryTransport) {
  ServerProcessOptions options;
  options.extra_flags = {"--max-waits=4"};
  ASSERT_NO_FATAL_FAILURE(StartServer(options));
  absl::StatusOr<std::vector<LaneSocket>> waiters = OpenWaiters(4, "later-");
  ASSERT_TRUE(waiters.ok()) << waiters.status();
  absl::StatusOr<Reply> refused = AwaitWaitCapReached(*waiters, "later-");
  ASSERT_TRUE(refused.ok()) << refused.status();
  ASSERT_EQ(refused->header.code, absl::StatusCode::kResourceExhausted)
      << refused->message;
  EXPECT_NE(refused->message.find("--max-waits"), std::string::npos)
      << refused->message;

  // gRPC waits count against the same cap.
  ClientOptions grpc_only;
  grpc_only.use_data_lane = false;
  auto client = Client::Connect(server_->target(), grpc_only);
  ASSERT_TRUE(client.ok()) << client.status();
  FetchOptions wait;
  wait.wait = absl::Seconds(30);
  EXPECT_EQ((*client)->Fetch("other.h5", wait).status().code(),
            absl::StatusCode::kResourceExhausted);
  EXPECT_EQ((*client)->Stat("other.h5", absl::Seconds(30)).status().code(),
            absl::StatusCode::kResourceExhausted);

  // A wait that need not wait is answered at the cap.
  const std::string image = MakeHdf5Image(4 << 10, 5);
  ASSERT_TRUE((*client)->Push("here.h5", image.data(), image.size()).ok());
  EXPECT_TRUE((*client)->Fetch("here.h5", wait).ok());

  // A waiter that hangs up frees its place: noticed from the connection,
  // not by a timer.
  (*waiters)[0].Close();
  absl::StatusOr<LaneSocket> lane = OpenLane();
  ASSERT_TRUE(lane.ok()) << lane.status();
  const absl::Time give_up = IoDeadline();
  absl::StatusOr<Reply> admitted = absl::UnavailableError("not tried");
  do {
    admitted = Get(*lane, "probe.h5", /*wait_ms=*/1);
    ASSERT_TRUE(admitted.ok()) << admitted.status();
  } while (admitted->header.code == absl::StatusCode::kResourceExhausted &&
           absl::Now() < give_up);
  EXPECT_EQ(admitted->header.code, absl::StatusCode::kDeadlineExceeded)
      << admitted->message;
}

// --- 3. Idle and silent connections ---------------------------------------

TEST_F(LaneAbuseTest, ConnectionsThatNeverSayHelloAreClosed) {
  ServerProcessOptions options;
  options.extra_flags = {"--lane-handshake-timeout=1s"};
  ASSERT_NO_FATAL_FAILURE(StartServer(options));
  std::vector<LaneSocket> silent;
  for (int i = 0; i < 20; ++i) {
    absl::StatusOr<LaneSocket> socket =
        lane::ConnectTcp("127.0.0.1", server_->data_lane_port(), IoDeadline());
    ASSERT_TRUE(socket.ok()) << socket.status();
    silent.push_back(*std::move(socket));
  }
  // Half a hello is no better than none.
  ASSERT_TRUE(silent[0].Send("H5", 2, IoDeadline()).ok());
  for (LaneSocket& socket : silent) EXPECT_TRUE(ServerClosed(socket));
  EXPECT_TRUE(AwaitNoLaneThreads(*server_, IoDeadline()));

  // A client that says hello in time is served.
  absl::StatusOr<LaneSocket> prompt = OpenLane();
  ASSERT_TRUE(prompt.ok()) << prompt.status();
  absl::StatusOr<Reply> got = Get(*prompt, "absent.h5");
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_EQ(got->header.code, absl::StatusCode::kNotFound);
}

TEST_F(LaneAbuseTest, IdleConnectionsAreClosedAndClientsCarryOn) {
  ServerProcessOptions options;
  options.extra_flags = {"--lane-idle-timeout=1s"};
  ASSERT_NO_FATAL_FAILURE(StartServer(options));
  absl::StatusOr<LaneSocket> idle = OpenLane();
  ASSERT_TRUE(idle.ok()) << idle.status();
  absl::StatusOr<Reply> got = Get(*idle, "absent.h5");
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_EQ(got->header.code, absl::StatusCode::kNotFound);
  EXPECT_TRUE(ServerClosed(*idle));

  // A client whose pooled connection the server closed meanwhile carries
  // on: it calls again on a new connection.
  auto client = Client::Connect(server_->target());
  ASSERT_TRUE(client.ok()) << client.status();
  const std::string image = MakeHdf5Image(64 << 10, 9);
  ASSERT_TRUE((*client)->Push("idle.h5", image.data(), image.size()).ok());
  ASSERT_TRUE(AwaitNoLaneThreads(*server_, IoDeadline()));
  auto fetched = (*client)->Fetch("idle.h5");
  ASSERT_TRUE(fetched.ok()) << fetched.status();
  EXPECT_EQ(
      std::string_view(reinterpret_cast<const char*>(fetched->buffer.data()),
                       fetched->buffer.size()),
      image);

  // A wait is not idleness: a GET waiting longer than the idle timeout is
  // answered when the image comes.
  absl::StatusOr<LaneSocket> waiter = OpenLane();
  ASSERT_TRUE(waiter.ok()) << waiter.status();
  ASSERT_TRUE(SendGet(*waiter, "later.h5", kTenMinutesMs).ok());
  absl::SleepFor(absl::Seconds(2));  // the idle timeout passes (not a sync)
  ASSERT_TRUE((*client)->Push("later.h5", image.data(), image.size()).ok());
  absl::StatusOr<Reply> woken = ReceiveReply(*waiter);
  ASSERT_TRUE(woken.ok()) << woken.status();
  EXPECT_EQ(woken->header.code, absl::StatusCode::kOk) << woken->message;
}

// --- 4. One peer's share ----------------------------------------------------

TEST_F(LaneAbuseTest, OnePeerCannotHoldMoreThanItsShareOfConnections) {
  ServerProcessOptions options;
  options.extra_flags = {"--max-lane-connections-per-peer=8"};
  ASSERT_NO_FATAL_FAILURE(StartServer(options));
  std::vector<LaneSocket> greedy;
  for (int i = 0; i < 8; ++i) {
    absl::StatusOr<LaneSocket> socket = OpenLane();
    ASSERT_TRUE(socket.ok()) << i << ": " << socket.status();
    greedy.push_back(*std::move(socket));
  }
  // One more from the same address is closed at once.
  EXPECT_TRUE(absl::IsUnavailable(OpenLane().status()));

  // Other peers are served: another address, a Unix socket client.
  absl::StatusOr<LaneSocket> other = OpenLaneFrom("127.0.0.2");
  ASSERT_TRUE(other.ok()) << other.status();
  absl::StatusOr<Reply> got = Get(*other, "absent.h5");
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_EQ(got->header.code, absl::StatusCode::kNotFound);
  absl::StatusOr<LaneSocket> unix_client = OpenUnixLane();
  ASSERT_TRUE(unix_client.ok()) << unix_client.status();

  // A client on the greedy address still pushes and fetches (over gRPC,
  // as at the global cap).
  ASSERT_NO_FATAL_FAILURE(ExpectPushAndFetchWork("shared.h5"));

  // A connection given back makes room for the next.
  greedy.pop_back();
  const absl::Time give_up = IoDeadline();
  absl::StatusOr<LaneSocket> again = OpenLane();
  while (!again.ok() && absl::Now() < give_up) {
    std::this_thread::yield();
    again = OpenLane();
  }
  ASSERT_TRUE(again.ok()) << again.status();
  got = Get(*again, "shared.h5");
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_EQ(got->header.code, absl::StatusCode::kOk);
}

}  // namespace
}  // namespace h5depot
