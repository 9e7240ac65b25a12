// h5depotd --eviction=lru, end to end: a server used as a cache makes
// room for a push by deleting the least recently used images nobody
// holds, over every transport, and watchers see each eviction; without
// it a full server refuses, as it always has.
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "gtest/gtest.h"
#include "h5depot/client.h"
#include "h5depot/testing/hdf5_images.h"
#include "h5depot/testing/server_paths.h"
#include "h5depot/testing/server_process.h"

namespace h5depot {
namespace {

using ::h5depot::testing::AllServerPaths;
using ::h5depot::testing::MakeHdf5Image;
using ::h5depot::testing::ServerOptionsFor;
using ::h5depot::testing::ServerPath;
using ::h5depot::testing::ServerPathName;
using ::h5depot::testing::ServerProcess;
using ::h5depot::testing::ServerProcessOptions;
using ::h5depot::testing::TargetFor;

// Room for three of these images, not four.
constexpr size_t kImageBytes = 64 << 10;
constexpr char kMaxMemory[] = "--max-memory=224K";

class EvictionTest : public ::testing::TestWithParam<ServerPath> {
 protected:
  void Start(const std::vector<std::string>& flags) {
    ServerProcessOptions options = ServerOptionsFor(GetParam());
    options.extra_flags.insert(options.extra_flags.end(), flags.begin(),
                               flags.end());
    auto server = ServerProcess::Start(options);
    ASSERT_TRUE(server.ok()) << server.status();
    server_ = *std::move(server);
    auto client = Client::Connect(TargetFor(*server_, GetParam()));
    ASSERT_TRUE(client.ok()) << client.status();
    client_ = *std::move(client);
  }

  absl::StatusOr<ImageInfo> Push(const std::string& id) {
    return client_->Push(id, image_.data(), image_.size());
  }

  const std::string image_ = MakeHdf5Image(kImageBytes, 7);
  std::unique_ptr<ServerProcess> server_;
  std::unique_ptr<Client> client_;
};

TEST_P(EvictionTest, APushToAFullCacheEvictsTheLeastRecentlyUsed) {
  Start({kMaxMemory, "--eviction=lru"});
  for (const char* id : {"cache/a", "cache/b", "cache/c"}) {
    ASSERT_TRUE(Push(id).ok()) << id;
  }
  absl::StatusOr<FetchedImage> used = client_->Fetch("cache/a");
  ASSERT_TRUE(used.ok()) << used.status();
  WatchOptions watch_options;
  watch_options.prefix = "cache/";
  absl::StatusOr<std::unique_ptr<ImageWatch>> watch =
      client_->Watch(watch_options);
  ASSERT_TRUE(watch.ok()) << watch.status();

  absl::StatusOr<ImageInfo> pushed = Push("cache/d");
  ASSERT_TRUE(pushed.ok()) << pushed.status();
  EXPECT_EQ(client_->Stat("cache/b").status().code(),
            absl::StatusCode::kNotFound);
  for (const char* id : {"cache/a", "cache/c", "cache/d"}) {
    EXPECT_TRUE(client_->Stat(id).ok()) << id;
  }
  absl::StatusOr<ImageEvent> evicted =
      (*watch)->Next(absl::Now() + absl::Seconds(60));
  ASSERT_TRUE(evicted.ok()) << evicted.status();
  EXPECT_EQ(evicted->kind, ImageEvent::Kind::kEvicted);
  EXPECT_EQ(evicted->image_id, "cache/b");
  absl::StatusOr<ImageEvent> published =
      (*watch)->Next(absl::Now() + absl::Seconds(60));
  ASSERT_TRUE(published.ok()) << published.status();
  EXPECT_EQ(published->generation, pushed->generation);
}

// An image pinned by a reader stays; with nothing else to evict the push
// is refused and nothing is deleted.
TEST_P(EvictionTest, AnImageAReaderHoldsIsNeverEvicted) {
  Start({kMaxMemory, "--eviction=lru"});
  ASSERT_TRUE(Push("pinned").ok());
  absl::StatusOr<std::unique_ptr<ImageReader>> reader =
      client_->OpenReader("pinned");
  ASSERT_TRUE(reader.ok()) << reader.status();
  ASSERT_TRUE(Push("b").ok());
  ASSERT_TRUE(Push("c").ok());
  ASSERT_TRUE(Push("d").ok());  // b goes, not the older pinned one
  EXPECT_TRUE(client_->Stat("pinned").ok());
  EXPECT_EQ(client_->Stat("b").status().code(), absl::StatusCode::kNotFound);
}

TEST_P(EvictionTest, WithoutEvictionAFullServerRefuses) {
  Start({kMaxMemory});
  for (const char* id : {"a", "b", "c"}) ASSERT_TRUE(Push(id).ok()) << id;
  EXPECT_EQ(Push("d").status().code(), absl::StatusCode::kResourceExhausted);
  for (const char* id : {"a", "b", "c"}) EXPECT_TRUE(client_->Stat(id).ok());
}

INSTANTIATE_TEST_SUITE_P(Paths, EvictionTest, AllServerPaths(), ServerPathName);

TEST(EvictionFlagTest, AnUnknownPolicyIsRefusedAtStart) {
  ServerProcessOptions options;
  options.extra_flags = {"--eviction=fifo"};
  EXPECT_FALSE(ServerProcess::Start(options).ok());
}

}  // namespace
}  // namespace h5depot
