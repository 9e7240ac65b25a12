// The push progress deadline (--push-idle-timeout, --push-min-rate),
// against a real h5depotd over gRPC and the data lane: a client that
// declares all free memory and then sends nothing, or trickles, is cut off
// with DEADLINE_EXCEEDED, its memory released before it is told, so that
// another client's push of the same size succeeds at once; a client
// sending at a normal speed is never cut off.
#include <grpcpp/grpcpp.h>
#include <sys/socket.h>
#include <sys/uio.h>

#include <atomic>
#include <memory>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "gtest/gtest.h"
#include "h5depot/client.h"
#include "h5depot/internal/lane_protocol.h"
#include "h5depot/internal/lane_socket.h"
#include "h5depot/testing/hdf5_images.h"
#include "h5depot/testing/server_process.h"
#include "h5depot/v1/depot.grpc.pb.h"

namespace h5depot {
namespace {

namespace lane = internal::lane;
using ::h5depot::testing::MakeHdf5Image;
using ::h5depot::testing::ServerProcess;
using ::h5depot::testing::ServerProcessOptions;
using lane::LaneSocket;

// A safety net against a server that never cuts anything off (the test
// then fails instead of hanging), not a measurement.
absl::Time IoDeadline() { return absl::Now() + absl::Seconds(60); }

// Bounds on when a push given a 1 s idle timeout may be cut off: not
// before the timeout, and, generously for a loaded machine, well before
// the safety net.
constexpr absl::Duration kIdleTimeout = absl::Seconds(1);
constexpr absl::Duration kLatestCutOff = absl::Seconds(20);

class PushDeadlineTest : public ::testing::Test {
 protected:
  // An image that fills the server's memory limit exactly.
  PushDeadlineTest() : image_(MakeHdf5Image(16 << 20, 21)) {}

  // Starts h5depotd with a 1 s idle timeout, a 64 KiB/s minimum rate and
  // room for one `image_`, plus `flags`.
  void StartServer(std::vector<std::string> flags = {}) {
    ServerProcessOptions options;
    options.extra_flags = {"--push-idle-timeout=1s", "--push-min-rate=64K",
                           absl::StrCat("--max-memory=", image_.size())};
    options.extra_flags.insert(options.extra_flags.end(), flags.begin(),
                               flags.end());
    auto server = ServerProcess::Start(options);
    ASSERT_TRUE(server.ok()) << server.status();
    server_ = *std::move(server);
  }

  // The push another client makes once the hog is cut off: all of the
  // memory, at once, with no retry.
  void ExpectWholePushFits(const std::string& image_id) {
    auto client = Client::Connect(server_->target());
    ASSERT_TRUE(client.ok()) << client.status();
    auto pushed = (*client)->Push(image_id, image_.data(), image_.size());
    EXPECT_TRUE(pushed.ok()) << pushed.status();
  }

  // A lane connection to the server that has exchanged hellos.
  absl::StatusOr<LaneSocket> OpenLane() {
    absl::StatusOr<LaneSocket> socket =
        lane::ConnectTcp("127.0.0.1", server_->data_lane_port(), IoDeadline());
    if (!socket.ok()) return socket.status();
    uint8_t hello[lane::kHelloBytes];
    lane::EncodeHello(hello, 0);
    if (absl::Status status = socket->Send(hello, sizeof(hello), IoDeadline());
        !status.ok()) {
      return status;
    }
    if (absl::Status status =
            socket->Receive(hello, sizeof(hello), IoDeadline());
        !status.ok()) {
      return status;
    }
    if (absl::Status status = lane::DecodeHello(hello, nullptr); !status.ok()) {
      return status;
    }
    return socket;
  }

  // Sends a lane PUT header declaring `image_`'s size for `image_id`, and
  // expects the server's Continue: the memory is reserved.
  void BeginLanePut(LaneSocket& socket, std::string_view image_id) {
    lane::RequestHeader header;
    header.op = lane::Op::kPut;
    header.size = image_.size();
    header.image_id_bytes = static_cast<uint16_t>(image_id.size());
    uint8_t raw[lane::kRequestHeaderBytes];
    lane::EncodeRequestHeader(header, raw);
    iovec iov[2] = {{raw, sizeof(raw)},
                    {const_cast<char*>(image_id.data()), image_id.size()}};
    ASSERT_TRUE(socket.SendAll(iov, 2, IoDeadline()).ok());
    absl::StatusOr<absl::Status> reply = ReceiveLaneReply(socket);
    ASSERT_TRUE(reply.ok()) << reply.status();
    ASSERT_TRUE(reply->ok()) << "expected Continue, got " << *reply;
  }

  // The status a lane response carries (OK for a Continue).
  static absl::StatusOr<absl::Status> ReceiveLaneReply(LaneSocket& socket) {
    uint8_t raw[lane::kResponseHeaderBytes];
    if (absl::Status status = socket.Receive(raw, sizeof(raw), IoDeadline());
        !status.ok()) {
      return status;
    }
    lane::Response response;
    if (absl::Status status = lane::DecodeResponse(raw, &response);
        !status.ok()) {
      return status;
    }
    std::string message(response.message_bytes, '\0');
    if (absl::Status status =
            socket.Receive(message.data(), message.size(), IoDeadline());
        !status.ok()) {
      return status;
    }
    if (response.kind == lane::ResponseKind::kContinue) {
      return absl::OkStatus();
    }
    return absl::Status(response.code, message);
  }

  static void ExpectCutOff(const absl::Status& status,
                           const std::string& image_id) {
    EXPECT_EQ(status.code(), absl::StatusCode::kDeadlineExceeded) << status;
    EXPECT_TRUE(absl::StartsWith(
        status.message(), absl::StrCat("push of '", image_id, "' cancelled")))
        << status;
    EXPECT_TRUE(absl::EndsWith(status.message(), "nothing was stored"))
        << status;
  }

  std::string image_;
  std::unique_ptr<ServerProcess> server_;
};

TEST_F(PushDeadlineTest, GrpcPushOfOnlyAHeaderIsCutOffAndItsMemoryFreed) {
  ASSERT_NO_FATAL_FAILURE(StartServer());
  auto stub = v1::Depot::NewStub(grpc::CreateChannel(
      server_->target(), grpc::InsecureChannelCredentials()));
  grpc::ClientContext context;
  context.set_deadline(absl::ToChronoTime(IoDeadline()));
  v1::PushResponse response;
  auto writer = stub->Push(&context, &response);
  v1::PushRequest header;
  header.mutable_header()->set_image_id("hog");
  header.mutable_header()->set_size(image_.size());
  ASSERT_TRUE(writer->Write(header));
  writer->WaitForInitialMetadata();  // the server reserved the memory
  const absl::Time begun = absl::Now();
  // Nothing more is sent, and the stream is left open: only the server
  // can end it.
  const grpc::Status status = writer->Finish();
  const absl::Duration held = absl::Now() - begun;
  ExpectCutOff(absl::Status(static_cast<absl::StatusCode>(status.error_code()),
                            status.error_message()),
               "hog");
  EXPECT_GE(held, kIdleTimeout - absl::Milliseconds(100));
  EXPECT_LT(held, kLatestCutOff);
  ExpectWholePushFits("after-grpc-hog");
}

TEST_F(PushDeadlineTest, LanePutOfOnlyAHeaderIsCutOffAndItsMemoryFreed) {
  ASSERT_NO_FATAL_FAILURE(StartServer());
  auto socket = OpenLane();
  ASSERT_TRUE(socket.ok()) << socket.status();
  ASSERT_NO_FATAL_FAILURE(BeginLanePut(*socket, "hog"));
  const absl::Time begun = absl::Now();
  absl::StatusOr<absl::Status> final_reply = ReceiveLaneReply(*socket);
  const absl::Duration held = absl::Now() - begun;
  ASSERT_TRUE(final_reply.ok()) << final_reply.status();
  ExpectCutOff(*final_reply, "hog");
  EXPECT_GE(held, kIdleTimeout - absl::Milliseconds(100));
  EXPECT_LT(held, kLatestCutOff);
  ExpectWholePushFits("after-lane-hog");
}

TEST_F(PushDeadlineTest, LaneTrickleIsCutOffForFallingBelowTheMinimumRate) {
  ASSERT_NO_FATAL_FAILURE(StartServer());
  auto socket = OpenLane();
  ASSERT_TRUE(socket.ok()) << socket.status();
  ASSERT_NO_FATAL_FAILURE(BeginLanePut(*socket, "trickle"));
  const absl::Time begun = absl::Now();
  // A byte every 200 ms: progress, each byte well within the idle
  // timeout, but far below 64 KiB/s. (The pace of the trickle, not a wait
  // for anything.)
  std::atomic<bool> stop{false};
  std::thread trickle([&] {
    for (size_t i = 0; !stop.load() && i < image_.size(); ++i) {
      if (::send(socket->fd(), image_.data() + i, 1, MSG_NOSIGNAL) != 1) {
        return;
      }
      absl::SleepFor(absl::Milliseconds(200));
    }
  });
  absl::StatusOr<absl::Status> final_reply = ReceiveLaneReply(*socket);
  const absl::Duration held = absl::Now() - begun;
  stop.store(true);
  trickle.join();
  ASSERT_TRUE(final_reply.ok()) << final_reply.status();
  ExpectCutOff(*final_reply, "trickle");
  EXPECT_TRUE(absl::StrContains(final_reply->message(),
                                "below the server's minimum of 64.0 KiB/s"))
      << *final_reply;
  EXPECT_GE(held, kIdleTimeout - absl::Milliseconds(100));
  EXPECT_LT(held, kLatestCutOff);
  ExpectWholePushFits("after-trickle");
}

// A push at loopback speed, over each transport, is far ahead of any
// schedule: a 1 s idle timeout never cuts it off.
class PushDeadlineTransportTest : public PushDeadlineTest,
                                  public ::testing::WithParamInterface<bool> {};

INSTANTIATE_TEST_SUITE_P(LaneAndGrpc, PushDeadlineTransportTest,
                         ::testing::Bool(),
                         [](const ::testing::TestParamInfo<bool>& param) {
                           return param.param ? "Lane" : "Grpc";
                         });

TEST_P(PushDeadlineTransportTest, LargePushAtNormalSpeedIsNotCutOff) {
  image_ = MakeHdf5Image(64 << 20, 22);
  // Room for a replaced generation beside the new one; the default rate.
  ASSERT_NO_FATAL_FAILURE(
      StartServer({absl::StrCat("--max-memory=", 3 * image_.size()),
                   "--push-min-rate=256K"}));
  ClientOptions options;
  options.use_data_lane = GetParam();
  auto client = Client::Connect(server_->target(), options);
  ASSERT_TRUE(client.ok()) << client.status();
  for (int i = 0; i < 3; ++i) {
    auto pushed = (*client)->Push("large", image_.data(), image_.size());
    ASSERT_TRUE(pushed.ok()) << pushed.status();
    EXPECT_EQ(pushed->size, image_.size());
  }
}

}  // namespace
}  // namespace h5depot
