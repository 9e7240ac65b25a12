// h5depotd --snapshot-dir, end to end with real servers, restarts and
// crashes: a restart brings every image back with its id, generation,
// checksum, creation time and expiry; a crash at any step of a snapshot
// leaves the last complete one, and nothing half-written is loaded; a
// damaged image file is refused alone; a full disk fails the snapshot and
// keeps the previous one.
#include <signal.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/time/time.h"
#include "gtest/gtest.h"
#include "h5depot/client.h"
#include "h5depot/internal/checksum.h"
#include "h5depot/testing/hdf5_images.h"
#include "h5depot/testing/server_process.h"
#include "h5depot/testing/subprocess.h"
#include "h5depot/testing/temp_dir.h"

namespace h5depot {
namespace {

using ::h5depot::testing::MakeHdf5Image;
using ::h5depot::testing::ServerProcess;
using ::h5depot::testing::ServerProcessOptions;
using ::h5depot::testing::TempDir;

constexpr absl::Duration kLineWait = absl::Seconds(60);

// The files in `dir`, by name.
std::set<std::string> FilesIn(const std::string& dir) {
  std::set<std::string> names;
  for (const auto& entry : std::filesystem::directory_iterator(dir)) {
    names.insert(entry.path().filename().string());
  }
  return names;
}

class SnapshotTest : public ::testing::Test {
 protected:
  void SetUp() override {
    absl::StatusOr<TempDir> dir = TempDir::Create();
    ASSERT_TRUE(dir.ok()) << dir.status();
    dir_.emplace(*std::move(dir));
    snapshots_ = dir_->path() + "/snapshots";
  }

  // A server snapshotting to `snapshots_` (only when asked and when
  // stopping), with `env` and further `flags`.
  std::unique_ptr<ServerProcess> StartServer(
      std::map<std::string, std::optional<std::string>> env = {},
      std::vector<std::string> flags = {}) {
    ServerProcessOptions options;
    options.extra_flags = {absl::StrCat("--snapshot-dir=", snapshots_),
                           "--snapshot-interval=0"};
    options.extra_flags.insert(options.extra_flags.end(), flags.begin(),
                               flags.end());
    options.env = std::move(env);
    absl::StatusOr<std::unique_ptr<ServerProcess>> server =
        ServerProcess::Start(options);
    EXPECT_TRUE(server.ok()) << server.status();
    if (!server.ok()) return nullptr;
    auto client = Client::Connect((*server)->tcp_target());
    EXPECT_TRUE(client.ok()) << client.status();
    if (client.ok()) client_ = *std::move(client);
    return *std::move(server);
  }

  ImageInfo Push(const std::string& id, const std::string& image,
                 absl::Duration ttl = absl::ZeroDuration()) {
    PushOptions options;
    options.ttl = ttl;
    absl::StatusOr<ImageInfo> info =
        client_->Push(id, image.data(), image.size(), options);
    EXPECT_TRUE(info.ok()) << info.status();
    return info.ok() ? *info : ImageInfo{};
  }

  // Asks `server` for a snapshot and returns the line it reports it with.
  static std::string Snapshot(ServerProcess& server) {
    EXPECT_EQ(kill(server.pid(), SIGUSR1), 0);
    absl::StatusOr<std::string> line =
        server.AwaitOutputLine("h5depotd snapshot", kLineWait);
    EXPECT_TRUE(line.ok()) << line.status();
    return line.ok() ? *line : "";
  }

  // The name of the file that holds `image`: its generation and a hash of
  // its id.
  static std::string FileOf(const ImageInfo& image) {
    return absl::StrCat(image.generation, "-",
                        absl::Hex(internal::Checksum(image.image_id.data(),
                                                     image.image_id.size()),
                                  absl::kZeroPad16),
                        ".img");
  }

  // The image files the snapshot directory holds.
  std::set<std::string> ImageFiles() const {
    return FilesIn(snapshots_ + "/images");
  }

  std::optional<TempDir> dir_;
  std::string snapshots_;
  std::unique_ptr<Client> client_;
  const std::string first_ = MakeHdf5Image(64 << 10, 1);
  const std::string second_ = MakeHdf5Image(96 << 10, 2);
};

// Stopped with SIGTERM and started again, the server has every image as
// it was: bytes, generation, checksum, creation time, expiry; what was
// deleted stays deleted; new generations come after the restored ones.
TEST_F(SnapshotTest, ARestartBringsEveryImageBack) {
  auto server = StartServer();
  ASSERT_NE(server, nullptr);
  const ImageInfo kept = Push("run/a", first_);
  const ImageInfo expiring = Push("run/b", second_, absl::Hours(1));
  Push("run/c", first_);
  ASSERT_TRUE(client_->Delete("run/c").ok());
  ASSERT_TRUE(server->Terminate().ok());

  server = StartServer();
  ASSERT_NE(server, nullptr);
  EXPECT_TRUE(
      absl::StrContains(server->startup_output(), "h5depotd restored 2 images"))
      << server->startup_output();
  absl::StatusOr<FetchedImage> fetched = client_->Fetch("run/a");
  ASSERT_TRUE(fetched.ok()) << fetched.status();
  EXPECT_EQ(fetched->info.generation, kept.generation);
  EXPECT_EQ(fetched->info.checksum, kept.checksum);
  EXPECT_EQ(fetched->info.created, kept.created);
  EXPECT_EQ(fetched->info.expires, absl::InfiniteFuture());
  EXPECT_EQ(std::string(static_cast<const char*>(fetched->buffer.data()),
                        fetched->buffer.size()),
            first_);
  absl::StatusOr<ImageInfo> b = client_->Stat("run/b");
  ASSERT_TRUE(b.ok()) << b.status();
  EXPECT_EQ(b->generation, expiring.generation);
  EXPECT_EQ(b->expires, expiring.expires);
  EXPECT_EQ(client_->Stat("run/c").status().code(),
            absl::StatusCode::kNotFound);
  const ImageInfo later = Push("run/a", second_);
  EXPECT_GT(later.generation, expiring.generation);
}

// Streams survive a restart: the policy, the steps kept (their numbers,
// bytes and generations), each group's position, and a step that was
// leased when the server stopped, which is handed out again; appends go
// on with the next number.
TEST_F(SnapshotTest, ARestartBringsStreamsAndTheirGroupsBack) {
  auto server = StartServer();
  ASSERT_NE(server, nullptr);
  StreamPolicy policy;
  policy.max_steps = 5;
  policy.reserve_steps = 1;
  policy.keep_first_step = true;
  ASSERT_TRUE(client_->CreateStream("sim/out", policy).ok());
  NextOptions now;
  now.wait = absl::Seconds(30);
  std::vector<AppendedStep> appended;
  for (const std::string* image : {&first_, &second_, &first_, &second_}) {
    absl::StatusOr<AppendedStep> step =
        client_->Append("sim/out", image->data(), image->size());
    ASSERT_TRUE(step.ok()) << step.status();
    appended.push_back(*step);
  }
  // "fast" has acknowledged steps 0 and 1, and holds step 2; "slow" has
  // acknowledged step 0.
  for (uint64_t i = 0; i < 2; ++i) {
    absl::StatusOr<StreamStep> step = client_->Next("sim/out", "fast", now);
    ASSERT_TRUE(step.ok()) << step.status();
    ASSERT_TRUE(client_->Ack("sim/out", "fast", step->step).ok());
  }
  ASSERT_TRUE(client_->Next("sim/out", "fast", now).ok());
  absl::StatusOr<StreamStep> slow = client_->Next("sim/out", "slow", now);
  ASSERT_TRUE(slow.ok()) << slow.status();
  EXPECT_EQ(slow->step, 0u);
  ASSERT_TRUE(client_->Ack("sim/out", "slow", 0).ok());
  ASSERT_TRUE(server->Terminate().ok());

  server = StartServer();
  ASSERT_NE(server, nullptr);
  EXPECT_TRUE(
      absl::StrContains(server->startup_output(), "and 1 streams (4 steps)"))
      << server->startup_output();
  absl::StatusOr<StreamInfo> info = client_->StatStream("sim/out");
  ASSERT_TRUE(info.ok()) << info.status();
  EXPECT_EQ(info->policy.max_steps, 5u);
  EXPECT_EQ(info->policy.reserve_steps, 1u);
  EXPECT_TRUE(info->policy.keep_first_step);
  EXPECT_EQ(info->appended_steps, 4u);
  // The leased step 2 comes again, then 3; the slow group goes on at 1.
  for (uint64_t expected : {2u, 3u}) {
    absl::StatusOr<StreamStep> step = client_->Next("sim/out", "fast", now);
    ASSERT_TRUE(step.ok()) << step.status();
    EXPECT_EQ(step->step, expected);
    EXPECT_EQ(step->image.info.generation, appended[expected].info.generation);
    ASSERT_TRUE(client_->Ack("sim/out", "fast", step->step).ok());
  }
  for (uint64_t expected : {1u, 2u, 3u}) {
    absl::StatusOr<StreamStep> step = client_->Next("sim/out", "slow", now);
    ASSERT_TRUE(step.ok()) << step.status();
    EXPECT_EQ(step->step, expected);
    EXPECT_EQ(std::string(static_cast<const char*>(step->image.buffer.data()),
                          step->image.buffer.size()),
              expected % 2 == 0 ? first_ : second_);
    ASSERT_TRUE(client_->Ack("sim/out", "slow", step->step).ok());
  }
  absl::StatusOr<AppendedStep> next =
      client_->Append("sim/out", first_.data(), first_.size());
  ASSERT_TRUE(next.ok()) << next.status();
  EXPECT_EQ(next->step, 4u);
  EXPECT_GT(next->info.generation, appended.back().info.generation);
}

// A crash (SIGKILL) at each step of a snapshot: the restart loads the last
// complete snapshot, which is the new one only once its manifest is in
// place, and leaves no file that manifest does not name.
class SnapshotCrashTest : public SnapshotTest,
                          public ::testing::WithParamInterface<const char*> {};

TEST_P(SnapshotCrashTest, ARestartLoadsTheLastCompleteSnapshot) {
  const std::string step = GetParam();
  auto server =
      StartServer({{"H5DEPOT_SNAPSHOT_FAILPOINT", absl::StrCat(step, ":2")}});
  ASSERT_NE(server, nullptr);
  const ImageInfo a1 = Push("a", first_);
  const ImageInfo b1 = Push("b", first_);
  EXPECT_TRUE(absl::StrContains(Snapshot(*server), "2 images")) << step;
  const std::set<std::string> first_files = ImageFiles();

  const ImageInfo a2 = Push("a", second_);
  ASSERT_TRUE(client_->Delete("b").ok());
  const ImageInfo c2 = Push("c", second_);
  ASSERT_EQ(kill(server->pid(), SIGUSR1), 0);
  // The server dies at the step: its output ends before any report.
  EXPECT_FALSE(server->AwaitOutputLine("h5depotd snapshot", kLineWait).ok());
  server->Kill();

  server = StartServer();
  ASSERT_NE(server, nullptr);
  if (step == "after-manifest") {
    EXPECT_EQ(client_->Stat("a")->generation, a2.generation);
    EXPECT_EQ(client_->Stat("b").status().code(), absl::StatusCode::kNotFound);
    EXPECT_EQ(client_->Stat("c")->generation, c2.generation);
    EXPECT_EQ(ImageFiles(), (std::set<std::string>{FileOf(a2), FileOf(c2)}));
  } else {
    EXPECT_EQ(client_->Stat("a")->generation, a1.generation);
    EXPECT_EQ(client_->Stat("b")->generation, b1.generation);
    EXPECT_EQ(client_->Stat("c").status().code(), absl::StatusCode::kNotFound);
    EXPECT_EQ(ImageFiles(), first_files);
  }
  absl::StatusOr<FetchedImage> a = client_->Fetch("a");  // checksum-verified
  ASSERT_TRUE(a.ok()) << a.status();
  EXPECT_EQ(FilesIn(snapshots_), (std::set<std::string>{"MANIFEST", "images"}));
}

// "before-data" as a test name: "beforedata".
std::string StepName(const ::testing::TestParamInfo<const char*>& step) {
  std::string name;
  for (const char* c = step.param; *c != '\0'; ++c) {
    if (*c != '-') name += *c;
  }
  return name;
}

INSTANTIATE_TEST_SUITE_P(Steps, SnapshotCrashTest,
                         ::testing::Values("before-data", "mid-data",
                                           "before-manifest", "after-manifest"),
                         StepName);

// An image file damaged on disk is refused with a log line naming it; the
// other images load.
TEST_F(SnapshotTest, ADamagedImageFileIsRefusedAndTheRestLoads) {
  auto server = StartServer();
  ASSERT_NE(server, nullptr);
  const ImageInfo a = Push("a", first_);
  const ImageInfo b = Push("b", second_);
  ASSERT_TRUE(server->Terminate().ok());
  {
    std::fstream file(absl::StrCat(snapshots_, "/images/", FileOf(b)),
                      std::ios::in | std::ios::out | std::ios::binary);
    file.seekp(1000);
    file.put('\x5a');
  }
  server = StartServer();
  ASSERT_NE(server, nullptr);
  EXPECT_TRUE(absl::StrContains(server->startup_output(),
                                "snapshot: image 'b' (generation"))
      << server->startup_output();
  EXPECT_TRUE(absl::StrContains(server->startup_output(), "1 refused"));
  EXPECT_EQ(client_->Stat("a")->generation, a.generation);
  EXPECT_EQ(client_->Stat("b").status().code(), absl::StatusCode::kNotFound);
}

// A manifest that is not whole is not loaded: the server refuses to start
// and says so, and the directory is left as it was for the operator.
TEST_F(SnapshotTest, ADamagedManifestStopsTheStartAndTouchesNothing) {
  auto server = StartServer();
  ASSERT_NE(server, nullptr);
  Push("a", first_);
  ASSERT_TRUE(server->Terminate().ok());
  const std::string manifest = snapshots_ + "/MANIFEST";
  ASSERT_EQ(truncate(manifest.c_str(), 30), 0);
  const std::set<std::string> files = ImageFiles();

  const testing::CommandResult refused =
      testing::RunCommand({testing::H5depotdPath(), "--listen=127.0.0.1:0",
                           absl::StrCat("--snapshot-dir=", snapshots_)});
  EXPECT_EQ(refused.exit_code, 1);
  EXPECT_TRUE(
      absl::StrContains(refused.stderr_text,
                        absl::StrCat(manifest, " is not a complete snapshot")))
      << refused.stderr_text;
  EXPECT_EQ(ImageFiles(), files);
}

// A snapshot that does not fit on its disk (a 512 KiB tmpfs) fails with
// the system's reason and leaves the previous snapshot, whole.
TEST_F(SnapshotTest, AFullDiskFailsTheSnapshotAndKeepsThePreviousOne) {
  ASSERT_EQ(mkdir(snapshots_.c_str(), 0700), 0);
  if (mount("tmpfs", snapshots_.c_str(), "tmpfs", 0, "size=512k") != 0) {
    GTEST_SKIP() << "cannot mount a small tmpfs here (" << std::strerror(errno)
                 << "): needs root";
  }
  struct Unmount {
    std::string path;
    ~Unmount() { umount2(path.c_str(), MNT_DETACH); }
  } unmount{snapshots_};
  auto server = StartServer();
  ASSERT_NE(server, nullptr);
  const ImageInfo a = Push("a", first_);
  EXPECT_TRUE(absl::StrContains(Snapshot(*server), "1 images"));
  Push("big", MakeHdf5Image(1 << 20, 3));
  const std::string failed = Snapshot(*server);
  EXPECT_TRUE(absl::StrContains(failed,
                                "snapshot failed, the previous one "
                                "stays"))
      << failed;
  EXPECT_TRUE(absl::StrContains(failed, "No space left on device")) << failed;
  server->Kill();

  server = StartServer();
  ASSERT_NE(server, nullptr);
  EXPECT_EQ(client_->Stat("a")->generation, a.generation);
  EXPECT_EQ(client_->Stat("big").status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(ImageFiles(), (std::set<std::string>{FileOf(a)}));
}

// Two images whose generations have one number (one a cluster replica's
// copy) are kept apart on disk and come back each with its own bytes; a
// snapshot from before that, whose files are named by generation alone,
// still loads.
TEST_F(SnapshotTest, ImagesSharingAGenerationNumberComeBackApart) {
  auto server = StartServer();
  ASSERT_NE(server, nullptr);
  const ImageInfo a = Push("a", first_);
  PushOptions copy;
  copy.replica_generation = a.generation;
  absl::StatusOr<ImageInfo> b =
      client_->Push("b", second_.data(), second_.size(), copy);
  ASSERT_TRUE(b.ok()) << b.status();
  ASSERT_EQ(b->generation, a.generation);
  ASSERT_TRUE(server->Terminate().ok());
  EXPECT_EQ(ImageFiles(), (std::set<std::string>{FileOf(a), FileOf(*b)}));

  server = StartServer();
  ASSERT_NE(server, nullptr);
  for (const auto& [id, bytes] : {std::pair{"a", &first_}, {"b", &second_}}) {
    absl::StatusOr<FetchedImage> fetched = client_->Fetch(id);
    ASSERT_TRUE(fetched.ok()) << fetched.status();
    EXPECT_EQ(fetched->info.generation, a.generation);
    EXPECT_EQ(std::string(static_cast<const char*>(fetched->buffer.data()),
                          fetched->buffer.size()),
              *bytes);
  }
  ASSERT_TRUE(server->Terminate().ok());

  // The older naming: a's file renamed to its generation alone.
  ASSERT_EQ(
      std::rename(
          (snapshots_ + "/images/" + FileOf(a)).c_str(),
          absl::StrCat(snapshots_, "/images/", a.generation, ".img").c_str()),
      0);
  server = StartServer();
  ASSERT_NE(server, nullptr);
  absl::StatusOr<FetchedImage> legacy = client_->Fetch("a");
  ASSERT_TRUE(legacy.ok()) << legacy.status();
  EXPECT_EQ(std::string(static_cast<const char*>(legacy->buffer.data()),
                        legacy->buffer.size()),
            first_);
}

}  // namespace
}  // namespace h5depot
