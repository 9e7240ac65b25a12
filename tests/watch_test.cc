// Watching the changes under a prefix (Client::Watch, `h5depot watch`),
// against a real h5depotd: changes made over the data lane (TCP, Unix
// socket) and over gRPC alone each show up once, in order, numbered as
// the server numbers them; a watch from a generation replays what came
// after it; a watcher further behind than the server's history is told
// what it lost; access rules narrow what a principal sees; a stopping
// server ends every watch.
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "absl/time/time.h"
#include "gtest/gtest.h"
#include "h5depot/client.h"
#include "h5depot/internal/token.h"
#include "h5depot/testing/hdf5_images.h"
#include "h5depot/testing/server_paths.h"
#include "h5depot/testing/server_process.h"
#include "h5depot/testing/subprocess.h"
#include "h5depot/testing/temp_dir.h"

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

using Kind = ImageEvent::Kind;

// Longer than any event here should take to arrive: a Next that ends by
// it means an event was missed.
constexpr absl::Duration kLongWait = absl::Seconds(60);

absl::Time Soon() { return absl::Now() + kLongWait; }

// The next `n` events of `watch`, failing the test on an error.
std::vector<ImageEvent> NextEvents(ImageWatch& watch, size_t n) {
  std::vector<ImageEvent> events;
  while (events.size() < n) {
    absl::StatusOr<ImageEvent> event = watch.Next(Soon());
    EXPECT_TRUE(event.ok()) << event.status();
    if (!event.ok()) break;
    events.push_back(*std::move(event));
  }
  return events;
}

class WatchTest : public ::testing::TestWithParam<ServerPath> {
 protected:
  void SetUp() override { StartServer({}); }

  void StartServer(const std::vector<std::string>& extra_flags) {
    ServerProcessOptions options = ServerOptionsFor(GetParam());
    options.extra_flags.insert(options.extra_flags.end(), extra_flags.begin(),
                               extra_flags.end());
    server_.reset();
    auto server = ServerProcess::Start(options);
    ASSERT_TRUE(server.ok()) << server.status();
    server_ = *std::move(server);
    client_ = NewClient();
  }

  std::unique_ptr<Client> NewClient(ClientOptions options = {}) {
    auto client = Client::Connect(TargetFor(*server_, GetParam()), options);
    EXPECT_TRUE(client.ok()) << client.status();
    return client.ok() ? *std::move(client) : nullptr;
  }

  ImageInfo Push(const std::string& id, int seed,
                 absl::Duration ttl = absl::ZeroDuration()) {
    const std::string image = MakeHdf5Image(4096, seed);
    PushOptions options;
    options.ttl = ttl;
    absl::StatusOr<ImageInfo> info =
        client_->Push(id, image.data(), image.size(), options);
    EXPECT_TRUE(info.ok()) << info.status();
    return info.ok() ? *info : ImageInfo{};
  }

  std::unique_ptr<ImageWatch> Watch(const std::string& prefix,
                                    std::optional<uint64_t> after = {}) {
    WatchOptions options;
    options.prefix = prefix;
    options.after = after;
    absl::StatusOr<std::unique_ptr<ImageWatch>> watch = client_->Watch(options);
    EXPECT_TRUE(watch.ok()) << watch.status();
    return watch.ok() ? *std::move(watch) : nullptr;
  }

  std::unique_ptr<ServerProcess> server_;
  std::unique_ptr<Client> client_;
};

// Every kind of change under the prefix, made after the watch started,
// arrives once, in order, with the generations and sizes the pushes and
// deletes had; changes to other ids do not.
TEST_P(WatchTest, SeesEveryChangeUnderItsPrefixOnceInOrder) {
  std::unique_ptr<ImageWatch> watch = Watch("run/");
  ASSERT_NE(watch, nullptr);
  const ImageInfo first = Push("run/a", 1);
  const ImageInfo second = Push("run/a", 2);
  Push("other/a", 3);
  Push("runs/a", 4);  // "runs/" does not start with "run/"
  ASSERT_TRUE(client_->Delete("run/a").ok());
  const ImageInfo expiring = Push("run/b", 5, absl::Milliseconds(1));

  const std::vector<ImageEvent> events = NextEvents(*watch, 5);
  ASSERT_EQ(events.size(), 5u);
  EXPECT_EQ(events[0].kind, Kind::kPublished);
  EXPECT_EQ(events[0].image_id, "run/a");
  EXPECT_EQ(events[0].generation, first.generation);
  EXPECT_EQ(events[0].sequence, first.generation);
  EXPECT_EQ(events[0].size, first.size);
  EXPECT_EQ(events[1].kind, Kind::kReplaced);
  EXPECT_EQ(events[1].generation, second.generation);
  EXPECT_EQ(events[1].replaced_generation, first.generation);
  EXPECT_EQ(events[2].kind, Kind::kDeleted);
  EXPECT_EQ(events[2].image_id, "run/a");
  EXPECT_EQ(events[2].generation, second.generation);
  EXPECT_EQ(events[3].kind, Kind::kPublished);
  EXPECT_EQ(events[3].image_id, "run/b");
  EXPECT_EQ(events[3].generation, expiring.generation);
  EXPECT_EQ(events[4].kind, Kind::kExpired);
  EXPECT_EQ(events[4].image_id, "run/b");
  EXPECT_EQ(events[4].generation, expiring.generation);
  for (size_t i = 0; i < events.size(); ++i) {
    EXPECT_GT(events[i].sequence, watch->started_after());
    if (i > 0) {
      EXPECT_GT(events[i].sequence, events[i - 1].sequence);
    }
  }
  // The server numbers every change, under any prefix, without gaps: the
  // two pushes elsewhere and the delete fill the space between.
  EXPECT_EQ(events[2].sequence, second.generation + 3);
}

// A consumer holding generation G asks for everything after it: the
// changes made before the watch began are replayed, then new ones follow.
TEST_P(WatchTest, AWatchFromAGenerationReplaysWhatCameAfterIt) {
  const ImageInfo held = Push("stream/x", 1);
  const ImageInfo next = Push("stream/x", 2);
  ASSERT_TRUE(client_->Delete("stream/x").ok());
  std::unique_ptr<ImageWatch> watch = Watch("stream/", held.generation);
  ASSERT_NE(watch, nullptr);
  EXPECT_EQ(watch->started_after(), held.generation);
  const ImageInfo later = Push("stream/x", 3);

  const std::vector<ImageEvent> events = NextEvents(*watch, 3);
  ASSERT_EQ(events.size(), 3u);
  EXPECT_EQ(events[0].kind, Kind::kReplaced);
  EXPECT_EQ(events[0].generation, next.generation);
  EXPECT_EQ(events[1].kind, Kind::kDeleted);
  EXPECT_EQ(events[2].kind, Kind::kPublished);
  EXPECT_EQ(events[2].generation, later.generation);
}

// With a history of 4 changes, a watcher asking from further back learns
// exactly which changes it lost, then gets the 4 kept, then new ones.
TEST_P(WatchTest, AWatcherBehindTheHistoryIsToldWhatItLost) {
  StartServer({"--watch-history=4"});
  std::vector<ImageInfo> pushed;
  for (int i = 0; i < 10; ++i) {
    pushed.push_back(Push(absl::StrCat("burst/", i), i));
  }
  std::unique_ptr<ImageWatch> watch = Watch("burst/", pushed[0].generation);
  ASSERT_NE(watch, nullptr);
  const std::vector<ImageEvent> events = NextEvents(*watch, 5);
  ASSERT_EQ(events.size(), 5u);
  EXPECT_EQ(events[0].kind, Kind::kLost);
  EXPECT_EQ(events[0].first_lost_sequence, pushed[1].generation);
  EXPECT_EQ(events[0].sequence, pushed[5].generation);
  for (int i = 1; i < 5; ++i) {
    EXPECT_EQ(events[i].kind, Kind::kPublished);
    EXPECT_EQ(events[i].generation, pushed[5 + i].generation);
  }
  const ImageInfo after = Push("burst/new", 11);
  const std::vector<ImageEvent> more = NextEvents(*watch, 1);
  ASSERT_EQ(more.size(), 1u);
  EXPECT_EQ(more[0].generation, after.generation);
}

// A watch over a busy store with nothing under its own prefix still
// sees its change when it comes: the history it skips is read in bounded
// pieces, and the watch is woken only by changes under its prefix.
TEST_P(WatchTest, AQuietPrefixOnABusyStoreStillSeesItsChange) {
  std::unique_ptr<ImageWatch> watch = Watch("quiet/");
  ASSERT_NE(watch, nullptr);
  const std::string image = MakeHdf5Image(4096, 1);
  for (int i = 0; i < 5000; ++i) {
    ASSERT_TRUE(client_->Push("busy/x", image.data(), image.size()).ok());
  }
  const ImageInfo quiet = Push("quiet/x", 2);
  const std::vector<ImageEvent> events = NextEvents(*watch, 1);
  ASSERT_EQ(events.size(), 1u);
  EXPECT_EQ(events[0].image_id, "quiet/x");
  EXPECT_EQ(events[0].generation, quiet.generation);
}

// Next gives up at its deadline and the watch goes on; Cancel ends it.
TEST_P(WatchTest, NextGivesUpAtItsDeadlineAndCancelEndsTheWatch) {
  std::unique_ptr<ImageWatch> watch = Watch("t/");
  ASSERT_NE(watch, nullptr);
  EXPECT_EQ(watch->Next(absl::Now() + absl::Milliseconds(20)).status().code(),
            absl::StatusCode::kDeadlineExceeded);
  const ImageInfo pushed = Push("t/a", 1);
  absl::StatusOr<ImageEvent> event = watch->Next(Soon());
  ASSERT_TRUE(event.ok()) << event.status();
  EXPECT_EQ(event->generation, pushed.generation);

  std::thread canceller([&watch] { watch->Cancel(); });
  canceller.join();
  EXPECT_EQ(watch->Next(Soon()).status().code(), absl::StatusCode::kCancelled);
  EXPECT_EQ(watch->Next(Soon()).status().code(), absl::StatusCode::kCancelled);
}

// A server that stops ends its watches with UNAVAILABLE, and stops
// promptly with watches open.
TEST_P(WatchTest, AStoppingServerEndsItsWatches) {
  std::unique_ptr<ImageWatch> watch = Watch("");
  ASSERT_NE(watch, nullptr);
  std::unique_ptr<ImageWatch> idle = Watch("nothing/");
  ASSERT_NE(idle, nullptr);
  ASSERT_TRUE(server_->Terminate().ok());
  EXPECT_EQ(watch->Next(Soon()).status().code(),
            absl::StatusCode::kUnavailable);
  EXPECT_EQ(idle->Next(Soon()).status().code(), absl::StatusCode::kUnavailable);
}

TEST_P(WatchTest, AnOverlongPrefixIsRefused) {
  WatchOptions options;
  options.prefix = std::string(256, 'a');
  EXPECT_EQ(client_->Watch(options).status().code(),
            absl::StatusCode::kInvalidArgument);
}

// `h5depot watch` prints one line per change in its documented format.
TEST_P(WatchTest, TheCliPrintsALinePerChange) {
  const ImageInfo held = Push("cli/a", 1);
  const ImageInfo replaced = Push("cli/a", 2);
  const ImageInfo other = Push("cli/b", 3);
  ASSERT_TRUE(client_->Delete("cli/a").ok());
  const testing::CommandResult result = testing::RunCommand(
      {testing::H5depotCliPath(), "--server", TargetFor(*server_, GetParam()),
       "watch", "cli/", "--after", absl::StrCat(held.generation), "--count",
       "3"});
  ASSERT_EQ(result.exit_code, 0) << result.stderr_text;
  EXPECT_EQ(result.stdout_text,
            absl::StrCat(replaced.generation, " replaced cli/a generation=",
                         replaced.generation, " size=", replaced.size,
                         " replaced=", held.generation, "\n", other.generation,
                         " published cli/b generation=", other.generation,
                         " size=", other.size, "\n", other.generation + 1,
                         " deleted cli/a generation=", replaced.generation,
                         " size=", replaced.size, "\n"));

  // --for ends a quiet watch with success and nothing printed.
  const testing::CommandResult quiet = testing::RunCommand(
      {testing::H5depotCliPath(), "--server", TargetFor(*server_, GetParam()),
       "watch", "none/", "--for", "100ms"});
  EXPECT_EQ(quiet.exit_code, 0) << quiet.stderr_text;
  EXPECT_EQ(quiet.stdout_text, "");
}

INSTANTIATE_TEST_SUITE_P(Paths, WatchTest, AllServerPaths(), ServerPathName);

// With access rules, a watch shows a principal only the ids under its
// prefixes, whatever prefix it watches.
TEST(WatchAccessTest, APrincipalSeesOnlyItsOwnPrefixes) {
  absl::StatusOr<testing::TempDir> dir = testing::TempDir::Create();
  ASSERT_TRUE(dir.ok()) << dir.status();
  const std::string auth = dir->path() + "/auth";
  ASSERT_TRUE(
      testing::WriteFile(
          auth,
          absl::StrCat("writer write ", internal::TokenHash("tok-w"), " *\n",
                       "viewer read ", internal::TokenHash("tok-r"), " a/\n"))
          .ok());
  ServerProcessOptions options;
  options.extra_flags = {absl::StrCat("--auth-file=", auth)};
  auto server = ServerProcess::Start(options);
  ASSERT_TRUE(server.ok()) << server.status();

  ClientOptions writer_options;
  writer_options.token = "tok-w";
  auto writer = Client::Connect((*server)->tcp_target(), writer_options);
  ASSERT_TRUE(writer.ok()) << writer.status();
  ClientOptions viewer_options;
  viewer_options.token = "tok-r";
  auto viewer = Client::Connect((*server)->tcp_target(), viewer_options);
  ASSERT_TRUE(viewer.ok()) << viewer.status();
  absl::StatusOr<std::unique_ptr<ImageWatch>> watch = (*viewer)->Watch({});
  ASSERT_TRUE(watch.ok()) << watch.status();

  const std::string image = MakeHdf5Image(4096, 1);
  ASSERT_TRUE((*writer)->Push("b/hidden", image.data(), image.size()).ok());
  absl::StatusOr<ImageInfo> seen =
      (*writer)->Push("a/seen", image.data(), image.size());
  ASSERT_TRUE(seen.ok()) << seen.status();
  absl::StatusOr<ImageEvent> event = (*watch)->Next(Soon());
  ASSERT_TRUE(event.ok()) << event.status();
  EXPECT_EQ(event->image_id, "a/seen");
  EXPECT_EQ(event->generation, seen->generation);
}

}  // namespace
}  // namespace h5depot
