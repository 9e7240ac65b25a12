// Waiting for a newer generation (FetchOptions::newer_than, Client::Stat's
// `newer_than`): a consumer following one id's generations, against a real
// h5depotd over the data lane (TCP and Unix socket) and over gRPC (a server
// without a lane).
#include <condition_variable>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "absl/time/time.h"
#include "gtest/gtest.h"
#include "h5depot/client.h"
#include "h5depot/testing/hdf5_images.h"
#include "h5depot/testing/server_paths.h"
#include "h5depot/testing/server_process.h"

namespace h5depot {
namespace {

using ::h5depot::testing::MakeHdf5Image;
using ::h5depot::testing::ServerProcess;

using ::h5depot::testing::AllServerPaths;
using ::h5depot::testing::ServerOptionsFor;
using ::h5depot::testing::ServerPath;
using ::h5depot::testing::ServerPathName;
using ::h5depot::testing::TargetFor;

// Longer than any of these tests should take: a wait that ends by its
// deadline here means a push was missed.
constexpr absl::Duration kLongWait = absl::Seconds(60);

class NewerGenerationTest : public ::testing::TestWithParam<ServerPath> {
 protected:
  void SetUp() override {
    auto server = ServerProcess::Start(ServerOptionsFor(GetParam()));
    ASSERT_TRUE(server.ok()) << server.status();
    server_ = *std::move(server);
    consumer_ = NewClient();
    producer_ = NewClient();
  }

  std::unique_ptr<Client> NewClient() {
    auto client = Client::Connect(TargetFor(*server_, GetParam()));
    EXPECT_TRUE(client.ok()) << client.status();
    return client.ok() ? *std::move(client) : nullptr;
  }

  std::unique_ptr<ServerProcess> server_;
  std::unique_ptr<Client> consumer_;
  std::unique_ptr<Client> producer_;
};

// The producer pushes packet i + 1 once the consumer has taken packet i:
// the consumer, asking each time for a generation newer than the last it
// received, gets every packet once, in order, with its own bytes, whether
// its wait began before the push or after.
TEST_P(NewerGenerationTest, AConsumerFollowingGenerationsGetsEveryPacketOnce) {
  constexpr int kPackets = 20;
  std::vector<std::string> packets;
  for (int i = 0; i < kPackets; ++i) {
    packets.push_back(MakeHdf5Image(4096 + i * 1000, 100 + i));
  }
  std::mutex mutex;
  std::condition_variable taken;
  int packets_taken = 0;
  std::thread producer([&] {
    for (int i = 0; i < kPackets; ++i) {
      {
        std::unique_lock<std::mutex> lock(mutex);
        taken.wait(lock, [&] { return packets_taken >= i; });
      }
      auto pushed = producer_->Push("stream/latest", packets[i].data(),
                                    packets[i].size());
      EXPECT_TRUE(pushed.ok()) << pushed.status();
    }
  });

  uint64_t last = 0;
  for (int i = 0; i < kPackets; ++i) {
    FetchOptions options;
    options.wait = kLongWait;
    options.newer_than = last;
    absl::StatusOr<FetchedImage> fetched =
        consumer_->Fetch("stream/latest", options);
    ASSERT_TRUE(fetched.ok()) << "packet " << i << ": " << fetched.status();
    EXPECT_GT(fetched->info.generation, last);
    last = fetched->info.generation;
    EXPECT_EQ(std::string(static_cast<const char*>(fetched->buffer.data()),
                          fetched->buffer.size()),
              packets[i])
        << "packet " << i;
    {
      std::lock_guard<std::mutex> lock(mutex);
      packets_taken = i + 1;
    }
    taken.notify_all();
  }
  producer.join();
}

TEST_P(NewerGenerationTest, TheCurrentGenerationIsAnsweredAtOnceIfNewer) {
  const std::string image = MakeHdf5Image(4096, 1);
  auto first = producer_->Push("x", image.data(), image.size());
  ASSERT_TRUE(first.ok()) << first.status();
  auto second = producer_->Push("x", image.data(), image.size());
  ASSERT_TRUE(second.ok()) << second.status();

  FetchOptions options;
  options.newer_than = first->generation;
  auto fetched = consumer_->Fetch("x", options);
  ASSERT_TRUE(fetched.ok()) << fetched.status();
  EXPECT_EQ(fetched->info.generation, second->generation);
  auto stat = consumer_->Stat("x", absl::ZeroDuration(), first->generation);
  ASSERT_TRUE(stat.ok()) << stat.status();
  EXPECT_EQ(stat->generation, second->generation);
}

TEST_P(NewerGenerationTest,
       NothingNewerFailsAtOnceWithoutAWaitAndTimesOutWithOne) {
  const std::string image = MakeHdf5Image(4096, 2);
  auto pushed = producer_->Push("x", image.data(), image.size());
  ASSERT_TRUE(pushed.ok()) << pushed.status();

  FetchOptions now;
  now.newer_than = pushed->generation;
  auto fetched = consumer_->Fetch("x", now);
  EXPECT_EQ(fetched.status().code(), absl::StatusCode::kFailedPrecondition)
      << fetched.status();
  EXPECT_NE(fetched.status().message().find(
                absl::StrCat("no generation newer than ", pushed->generation)),
            std::string::npos)
      << fetched.status();
  auto stat = consumer_->Stat("x", absl::ZeroDuration(), pushed->generation);
  EXPECT_EQ(stat.status().code(), absl::StatusCode::kFailedPrecondition)
      << stat.status();

  FetchOptions briefly = now;
  briefly.wait = absl::Milliseconds(100);
  fetched = consumer_->Fetch("x", briefly);
  EXPECT_EQ(fetched.status().code(), absl::StatusCode::kDeadlineExceeded)
      << fetched.status();
  EXPECT_NE(fetched.status().message().find("newer than"), std::string::npos)
      << fetched.status();
  stat = consumer_->Stat("x", absl::Milliseconds(100), pushed->generation);
  EXPECT_EQ(stat.status().code(), absl::StatusCode::kDeadlineExceeded)
      << stat.status();

  // An image that is not there at all is still NOT_FOUND without a wait.
  FetchOptions absent;
  absent.newer_than = 1;
  EXPECT_EQ(consumer_->Fetch("absent", absent).status().code(),
            absl::StatusCode::kNotFound);
}

// A delete while a consumer waits does not end its wait: the next push
// (a newer generation, as every push is) does.
TEST_P(NewerGenerationTest, AWaitOutlivesADeleteAndTakesTheNextPush) {
  const std::string image = MakeHdf5Image(4096, 3);
  auto first = producer_->Push("x", image.data(), image.size());
  ASSERT_TRUE(first.ok()) << first.status();

  absl::StatusOr<ImageInfo> seen = absl::UnknownError("not yet");
  std::thread consumer(
      [&] { seen = consumer_->Stat("x", kLongWait, first->generation); });
  ASSERT_TRUE(producer_->Delete("x").ok());
  auto second = producer_->Push("x", image.data(), image.size());
  ASSERT_TRUE(second.ok()) << second.status();
  consumer.join();
  ASSERT_TRUE(seen.ok()) << seen.status();
  EXPECT_EQ(seen->generation, second->generation);
}

// A newer_than beyond any generation the server has published (one from
// another server, say) is waited out, not answered by the next push.
TEST_P(NewerGenerationTest, AGenerationFromTheFutureIsWaitedOut) {
  const std::string image = MakeHdf5Image(4096, 4);
  auto pushed = producer_->Push("x", image.data(), image.size());
  ASSERT_TRUE(pushed.ok()) << pushed.status();
  FetchOptions options;
  options.newer_than = UINT64_MAX - 1;
  options.wait = absl::Milliseconds(200);
  absl::StatusOr<FetchedImage> fetched = absl::UnknownError("not yet");
  std::thread consumer([&] { fetched = consumer_->Fetch("x", options); });
  ASSERT_TRUE(producer_->Push("x", image.data(), image.size()).ok());
  consumer.join();
  EXPECT_EQ(fetched.status().code(), absl::StatusCode::kDeadlineExceeded)
      << fetched.status();
}

INSTANTIATE_TEST_SUITE_P(Paths, NewerGenerationTest, AllServerPaths(),
                         ServerPathName);

}  // namespace
}  // namespace h5depot
