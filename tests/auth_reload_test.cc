// Reloading the auth file without a restart (DepotServer::ReloadAccessRules,
// h5depotd's SIGHUP): a token added is served and a token removed refused
// on every transport from the next call on, a call under way finishes
// under the rules it began with, and a malformed or missing file keeps the
// rules in force. In-process, and once against a real h5depotd.
#include <signal.h>

#include <future>
#include <memory>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "h5depot/client.h"
#include "h5depot/internal/token.h"
#include "h5depot/server/depot_server.h"
#include "h5depot/testing/in_process_depot.h"
#include "h5depot/testing/server_process.h"
#include "h5depot/testing/temp_dir.h"
#include "test_images.h"

namespace h5depot {
namespace {

using ::h5depot::testing::InProcessDepot;
using ::h5depot::testing::Listeners;
using ::h5depot::testing::MakeTestImage;
using ::h5depot::testing::ServerProcess;
using ::h5depot::testing::ServerProcessOptions;
using ::h5depot::testing::TempDir;
using ::h5depot::testing::WriteFile;

std::string Line(const std::string& name, const std::string& token) {
  return absl::StrCat(name, " write ", internal::TokenHash(token), "\n");
}

ClientOptions WithToken(const std::string& token) {
  ClientOptions options;
  options.token = token;
  options.connect_timeout = absl::Seconds(30);
  return options;
}

class AuthReloadTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto dir = TempDir::Create();
    ASSERT_TRUE(dir.ok()) << dir.status();
    dir_.emplace(*std::move(dir));
    auth_file_ = dir_->File("auth");
    ASSERT_TRUE(WriteFile(auth_file_, Line("old", "token-old")).ok());
    server::ServerOptions options;
    options.auth_file = auth_file_;
    // Over the Unix socket with its lane: pushes and fetches go over the
    // lane, the rest over gRPC, and both must see each reload.
    auto depot = InProcessDepot::Start(options, Listeners::kUnix);
    ASSERT_TRUE(depot.ok()) << depot.status();
    depot_ = *std::move(depot);
  }

  // Whether the store holds at least `n` pending waits within a minute: a
  // waiting call is asynchronous, and this is how the test knows it has
  // arrived at the server.
  bool AwaitPendingWaits(uint64_t n) {
    const absl::Time deadline = absl::Now() + absl::Minutes(1);
    while (depot_->store().Stats().pending_waits < n) {
      if (absl::Now() >= deadline) return false;
      absl::SleepFor(absl::Milliseconds(2));
    }
    return true;
  }

  std::optional<TempDir> dir_;
  std::string auth_file_;
  std::unique_ptr<InProcessDepot> depot_;
};

TEST_F(AuthReloadTest, ATokenAddedIsServedAndATokenRemovedIsRefused) {
  auto old_client = depot_->Connect(WithToken("token-old"));
  ASSERT_TRUE(old_client.ok()) << old_client.status();
  const std::vector<uint8_t> image = MakeTestImage(100000);
  ASSERT_TRUE((*old_client)->Push("a", image.data(), image.size()).ok());
  EXPECT_EQ(depot_->Connect(WithToken("token-new")).status().code(),
            absl::StatusCode::kUnauthenticated);

  ASSERT_TRUE(WriteFile(auth_file_, Line("new", "token-new")).ok());
  absl::StatusOr<size_t> reloaded = depot_->server().ReloadAccessRules();
  ASSERT_TRUE(reloaded.ok()) << reloaded.status();
  EXPECT_EQ(*reloaded, 1u);

  auto new_client = depot_->Connect(WithToken("token-new"));
  ASSERT_TRUE(new_client.ok()) << new_client.status();
  ASSERT_TRUE((*new_client)->Push("b", image.data(), image.size()).ok());
  auto fetched = (*new_client)->Fetch("a");
  ASSERT_TRUE(fetched.ok()) << fetched.status();
  EXPECT_EQ(fetched->buffer.size(), image.size());

  // The old token's client, connected before, is refused on the lane
  // (push, fetch) and over gRPC (stat, list) alike.
  EXPECT_EQ(
      (*old_client)->Push("c", image.data(), image.size()).status().code(),
      absl::StatusCode::kUnauthenticated);
  EXPECT_EQ((*old_client)->Fetch("a").status().code(),
            absl::StatusCode::kUnauthenticated);
  EXPECT_EQ((*old_client)->Stat("a").status().code(),
            absl::StatusCode::kUnauthenticated);
  EXPECT_EQ(depot_->Connect(WithToken("token-old")).status().code(),
            absl::StatusCode::kUnauthenticated);
}

TEST_F(AuthReloadTest, ACallUnderWayFinishesUnderTheRulesItBeganWith) {
  auto old_client = depot_->Connect(WithToken("token-old"));
  ASSERT_TRUE(old_client.ok()) << old_client.status();
  FetchOptions wait;
  wait.wait = absl::Minutes(1);
  std::future<absl::StatusOr<FetchedImage>> waiting =
      std::async(std::launch::async,
                 [&] { return (*old_client)->Fetch("pushed-later", wait); });
  ASSERT_TRUE(AwaitPendingWaits(1));

  ASSERT_TRUE(WriteFile(auth_file_, Line("new", "token-new")).ok());
  ASSERT_TRUE(depot_->server().ReloadAccessRules().ok());
  auto new_client = depot_->Connect(WithToken("token-new"));
  ASSERT_TRUE(new_client.ok()) << new_client.status();
  const std::vector<uint8_t> image = MakeTestImage(5000);
  ASSERT_TRUE(
      (*new_client)->Push("pushed-later", image.data(), image.size()).ok());
  absl::StatusOr<FetchedImage> fetched = waiting.get();
  ASSERT_TRUE(fetched.ok()) << fetched.status();
  EXPECT_EQ(fetched->buffer.size(), image.size());
}

TEST_F(AuthReloadTest, AMalformedOrMissingFileKeepsTheRulesInForce) {
  ASSERT_TRUE(
      WriteFile(auth_file_, Line("new", "token-new") + "broken line\n").ok());
  absl::StatusOr<size_t> malformed = depot_->server().ReloadAccessRules();
  EXPECT_EQ(malformed.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(absl::StrContains(malformed.status().message(), "line 2"))
      << malformed.status();

  ASSERT_EQ(::unlink(auth_file_.c_str()), 0);
  absl::StatusOr<size_t> missing = depot_->server().ReloadAccessRules();
  EXPECT_EQ(missing.status().code(), absl::StatusCode::kNotFound)
      << missing.status();

  EXPECT_TRUE(depot_->Connect(WithToken("token-old")).ok());
  EXPECT_EQ(depot_->Connect(WithToken("token-new")).status().code(),
            absl::StatusCode::kUnauthenticated);
}

TEST(AuthReloadWithoutRulesTest, AServerWithoutAnAuthFileHasNothingToReload) {
  auto depot = InProcessDepot::Start();
  ASSERT_TRUE(depot.ok()) << depot.status();
  EXPECT_EQ((*depot)->server().ReloadAccessRules().status().code(),
            absl::StatusCode::kFailedPrecondition);
  EXPECT_TRUE((*depot)->Connect().ok());
}

TEST(AuthReloadProcessTest, H5depotdReloadsItsAuthFileOnSighup) {
  auto dir = TempDir::Create();
  ASSERT_TRUE(dir.ok()) << dir.status();
  const std::string auth_file = dir->File("auth");
  ASSERT_TRUE(WriteFile(auth_file, Line("old", "token-old")).ok());
  ServerProcessOptions options;
  options.tcp = false;
  options.unix_socket = true;
  options.extra_flags = {"--auth-file=" + auth_file};
  auto server = ServerProcess::Start(options);
  ASSERT_TRUE(server.ok()) << server.status();
  const std::string target = (*server)->unix_target();
  EXPECT_EQ(Client::Connect(target, WithToken("token-new")).status().code(),
            absl::StatusCode::kUnauthenticated);

  ASSERT_TRUE(WriteFile(auth_file,
                        Line("new", "token-new") + Line("other", "token-other"))
                  .ok());
  ASSERT_EQ(::kill((*server)->pid(), SIGHUP), 0);
  absl::StatusOr<std::string> line =
      (*server)->AwaitOutputLine("h5depotd ", absl::Minutes(1));
  ASSERT_TRUE(line.ok()) << line.status();
  EXPECT_EQ(*line,
            absl::StrCat("h5depotd reloaded ", auth_file, ": 2 principals"));
  EXPECT_TRUE(Client::Connect(target, WithToken("token-new")).ok());
  EXPECT_EQ(Client::Connect(target, WithToken("token-old")).status().code(),
            absl::StatusCode::kUnauthenticated);

  ASSERT_TRUE(WriteFile(auth_file, "nonsense\n").ok());
  ASSERT_EQ(::kill((*server)->pid(), SIGHUP), 0);
  line = (*server)->AwaitOutputLine("h5depotd ", absl::Minutes(1));
  ASSERT_TRUE(line.ok()) << line.status();
  EXPECT_TRUE(absl::StartsWith(*line, "h5depotd kept its access rules: "))
      << *line;
  EXPECT_TRUE(Client::Connect(target, WithToken("token-new")).ok());
  EXPECT_TRUE((*server)->Terminate().ok());
}

}  // namespace
}  // namespace h5depot
