// The gRPC connection limits (--max-concurrent-streams,
// --max-connection-age): one connection cannot hold more calls under way
// than the cap while another connection is still served, and a connection
// past its age is replaced under its client without a failed call. Against
// an in-process DepotServer through raw gRPC channels, whose connections
// the test can tell apart.
#include <grpcpp/grpcpp.h>

#include <future>
#include <memory>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "h5depot/client.h"
#include "h5depot/server/depot_server.h"
#include "h5depot/testing/in_process_depot.h"
#include "h5depot/v1/depot.grpc.pb.h"
#include "test_images.h"

namespace h5depot {
namespace {

using ::h5depot::testing::InProcessDepot;
using ::h5depot::testing::Listeners;
using ::h5depot::testing::MakeTestImage;

// A channel with a connection of its own (gRPC otherwise shares one among
// the channels of a process that name the same server).
std::shared_ptr<grpc::Channel> OwnChannel(const std::string& target) {
  grpc::ChannelArguments arguments;
  arguments.SetInt(GRPC_ARG_USE_LOCAL_SUBCHANNEL_POOL, 1);
  return grpc::CreateCustomChannel(target, grpc::InsecureChannelCredentials(),
                                   arguments);
}

grpc::Status GetLimits(v1::Depot::Stub& stub, absl::Duration timeout) {
  grpc::ClientContext context;
  context.set_deadline(absl::ToChronoTime(absl::Now() + timeout));
  v1::GetLimitsRequest request;
  v1::ServerLimits limits;
  return stub.GetLimits(&context, request, &limits);
}

// A Stat that waits up to a minute for `image_id` to be pushed.
grpc::Status WaitingStat(v1::Depot::Stub* stub, std::string image_id) {
  grpc::ClientContext context;
  context.set_deadline(absl::ToChronoTime(absl::Now() + absl::Minutes(2)));
  v1::StatRequest request;
  request.set_image_id(image_id);
  request.set_wait_timeout_ms(60000);
  v1::ImageInfo info;
  return stub->Stat(&context, request, &info);
}

// Whether the store holds at least `n` pending waits within a minute: the
// waiting calls are asynchronous, and this is how the test knows they have
// arrived at the server.
bool AwaitPendingWaits(InProcessDepot& depot, uint64_t n) {
  const absl::Time deadline = absl::Now() + absl::Minutes(1);
  while (depot.store().Stats().pending_waits < n) {
    if (absl::Now() >= deadline) return false;
    absl::SleepFor(absl::Milliseconds(2));
  }
  return true;
}

TEST(GrpcLimitsTest, AConnectionServesNoMoreCallsAtOnceThanItsCap) {
  server::ServerOptions options;
  options.grpc_max_concurrent_streams = 2;
  auto depot = InProcessDepot::Start(options, Listeners::kTcp);
  ASSERT_TRUE(depot.ok()) << depot.status();

  auto crowded = v1::Depot::NewStub(OwnChannel((*depot)->target()));
  // Answered after the server's settings (and so its cap) reached the
  // client.
  ASSERT_TRUE(GetLimits(*crowded, absl::Seconds(30)).ok());
  std::vector<std::future<grpc::Status>> waiting;
  for (int i = 0; i < 2; ++i) {
    waiting.push_back(std::async(std::launch::async, WaitingStat, crowded.get(),
                                 std::string("later")));
  }
  // Wait until both calls hold their streams: the server counts them as
  // waits, and a third call on the connection is then queued behind them.
  ASSERT_TRUE(AwaitPendingWaits(**depot, 2));
  const grpc::Status third = GetLimits(*crowded, absl::Seconds(1));
  EXPECT_EQ(third.error_code(), grpc::StatusCode::DEADLINE_EXCEEDED)
      << third.error_message();

  // Another connection is served meanwhile.
  auto other = v1::Depot::NewStub(OwnChannel((*depot)->target()));
  const grpc::Status served = GetLimits(*other, absl::Seconds(30));
  EXPECT_TRUE(served.ok()) << served.error_message();

  // Once the waits end, the crowded connection takes calls again.
  auto client = (*depot)->Connect();
  ASSERT_TRUE(client.ok()) << client.status();
  const std::vector<uint8_t> image = MakeTestImage(1000);
  ASSERT_TRUE((*client)->Push("later", image.data(), image.size()).ok());
  for (auto& call : waiting) EXPECT_TRUE(call.get().ok());
  EXPECT_TRUE(GetLimits(*crowded, absl::Seconds(30)).ok());
}

TEST(GrpcLimitsTest, AConnectionPastItsMaxAgeIsReplacedWithoutAFailedCall) {
  server::ServerOptions options;
  options.grpc_max_connection_age = absl::Milliseconds(300);
  auto depot = InProcessDepot::Start(options, Listeners::kTcp);
  ASSERT_TRUE(depot.ok()) << depot.status();
  auto channel = OwnChannel((*depot)->target());
  auto stub = v1::Depot::NewStub(channel);
  ASSERT_TRUE(GetLimits(*stub, absl::Seconds(30)).ok());
  // A call under way when the server says GOAWAY finishes on the old
  // connection (the grace is unlimited by default).
  std::future<grpc::Status> waiting = std::async(
      std::launch::async, WaitingStat, stub.get(), std::string("aged"));
  ASSERT_TRUE(AwaitPendingWaits(**depot, 1));

  // The server's GOAWAY takes the channel out of READY.
  ASSERT_EQ(channel->GetState(false), GRPC_CHANNEL_READY);
  ASSERT_TRUE(channel->WaitForStateChange(
      GRPC_CHANNEL_READY, absl::ToChronoTime(absl::Now() + absl::Minutes(1))));

  // The next call goes over a new connection, transparently.
  const grpc::Status after = GetLimits(*stub, absl::Seconds(30));
  EXPECT_TRUE(after.ok()) << after.error_message();
  auto client = (*depot)->Connect();
  ASSERT_TRUE(client.ok()) << client.status();
  const std::vector<uint8_t> image = MakeTestImage(1000);
  ASSERT_TRUE((*client)->Push("aged", image.data(), image.size()).ok());
  const grpc::Status waited = waiting.get();
  EXPECT_TRUE(waited.ok()) << waited.error_message();
}

}  // namespace
}  // namespace h5depot
