// The h5depot command-line tool, run as a real process against a real
// h5depotd: what a user types and what a script relies on (stdout, the
// one-line error on stderr, the exit code, files left behind or not).
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <functional>
#include <memory>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/time/clock.h"
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

using ::h5depot::testing::CommandOptions;
using ::h5depot::testing::CommandResult;
using ::h5depot::testing::H5depotCliPath;
using ::h5depot::testing::MakeHdf5Image;
using ::h5depot::testing::ReadFile;
using ::h5depot::testing::RunCommand;
using ::h5depot::testing::ServerProcess;
using ::h5depot::testing::ServerProcessOptions;
using ::h5depot::testing::TempDir;
using ::h5depot::testing::WriteFile;

// The exit codes `h5depot --help` documents.
constexpr int kExitFailed = 1;
constexpr int kExitUsage = 2;
constexpr int kExitNotFound = 3;
constexpr int kExitConflict = 4;
constexpr int kExitUnavailable = 5;
constexpr int kExitTimedOut = 6;
constexpr int kExitOverLimit = 7;

// A failure is reported as exactly one line "h5depot: ...".
::testing::AssertionResult IsOneErrorLine(const std::string& text) {
  if (absl::StartsWith(text, "h5depot: ") && absl::EndsWith(text, "\n") &&
      text.find('\n') == text.size() - 1) {
    return ::testing::AssertionSuccess();
  }
  return ::testing::AssertionFailure()
         << "not one \"h5depot: ...\" line: \"" << text << "\"";
}

// The "key: value" lines of `stat` / `put` output.
std::string Field(const std::string& info, const std::string& key) {
  for (absl::string_view line : absl::StrSplit(info, '\n')) {
    if (absl::ConsumePrefix(&line, key + ":")) {
      return std::string(absl::StripAsciiWhitespace(line));
    }
  }
  return "<no " + key + ">";
}

// The ids column of `ls` output, without the header.
std::vector<std::string> ListedIds(const std::string& table) {
  std::vector<std::string> ids;
  for (absl::string_view line :
       absl::StrSplit(table, '\n', absl::SkipEmpty())) {
    std::vector<std::string> columns =
        absl::StrSplit(line, ' ', absl::SkipEmpty());
    ids.push_back(columns.empty() ? "" : columns[0]);
  }
  if (!ids.empty() && ids[0] == "ID") ids.erase(ids.begin());
  return ids;
}

// The names in `dir`, sorted.
std::vector<std::string> Entries(const std::string& dir) {
  std::vector<std::string> names;
  for (const auto& entry : std::filesystem::directory_iterator(dir)) {
    names.push_back(entry.path().filename().string());
  }
  std::sort(names.begin(), names.end());
  return names;
}

// Makes a character device with /dev/null's numbers (1, 3) at `path`: the
// test's own, so that the system's /dev/null is never at risk. Returns 0,
// or errno (EPERM without CAP_MKNOD).
int MakeNullDevice(const std::string& path) {
  return mknod(path.c_str(), S_IFCHR | 0666, makedev(1, 3)) == 0 ? 0 : errno;
}

// Runs `run` while reading the FIFO at `path`. Returns what `run` returned
// and every byte written into the FIFO, up to the first writer's close or,
// if no writer ever opens it, until `run` returns.
std::pair<CommandResult, std::string> RunReadingFifo(
    const std::string& path, const std::function<CommandResult()>& run) {
  // Non-blocking, so that no writer is needed to open it; Linux reports no
  // hangup on it before a writer has come and gone.
  const int fifo = open(path.c_str(), O_RDONLY | O_NONBLOCK | O_CLOEXEC);
  EXPECT_GE(fifo, 0) << path << ": " << std::strerror(errno);
  int done[2];
  EXPECT_EQ(pipe2(done, O_CLOEXEC), 0) << std::strerror(errno);
  CommandResult result;
  std::thread runner([&] {
    result = run();
    close(done[1]);  // a hangup on done[0]
  });
  std::string data;
  char buffer[1 << 16];
  bool running = true;
  while (running && fifo >= 0) {
    pollfd fds[2] = {{fifo, POLLIN, 0}, {done[0], POLLIN, 0}};
    if (poll(fds, 2, -1) < 0) continue;  // EINTR
    running = fds[1].revents == 0;
    // Once `run` returned, whatever is still in the FIFO is the rest.
    while (true) {
      const ssize_t got = read(fifo, buffer, sizeof(buffer));
      if (got > 0) data.append(buffer, static_cast<size_t>(got));
      if (got == 0) running = false;  // the writer closed it
      if (got <= 0 || running) break;
    }
  }
  runner.join();
  if (fifo >= 0) close(fifo);
  close(done[0]);
  return {std::move(result), std::move(data)};
}

// A process started without waiting for it, so that a test can stop it
// mid-way; killed and reaped on destruction if it is still running.
class BackgroundProcess {
 public:
  explicit BackgroundProcess(const std::vector<std::string>& args) {
    std::vector<char*> argv;
    argv.reserve(args.size() + 1);
    for (const std::string& arg : args) {
      argv.push_back(const_cast<char*>(arg.c_str()));
    }
    argv.push_back(nullptr);
    const int error =
        posix_spawn(&pid_, argv[0], nullptr, nullptr, argv.data(), environ);
    EXPECT_EQ(error, 0) << argv[0] << ": " << std::strerror(error);
    if (error != 0) pid_ = -1;
  }

  ~BackgroundProcess() {
    if (pid_ > 0) Stop(SIGKILL);
  }

  BackgroundProcess(const BackgroundProcess&) = delete;
  BackgroundProcess& operator=(const BackgroundProcess&) = delete;

  bool started() const { return pid_ > 0; }

  // Sends `sig`, waits for the process to end and returns its wait status.
  int Stop(int sig) {
    kill(pid_, sig);
    int status = 0;
    while (waitpid(pid_, &status, 0) < 0 && errno == EINTR) {
    }
    pid_ = -1;
    return status;
  }

 private:
  pid_t pid_ = -1;
};

// Waits until `dir` holds more than `count` entries; false if that takes
// longer than `timeout`.
bool WaitForMoreEntries(const std::string& dir, size_t count,
                        absl::Duration timeout) {
  const absl::Time deadline = absl::Now() + timeout;
  while (Entries(dir).size() <= count) {
    if (absl::Now() > deadline) return false;
    absl::SleepFor(absl::Milliseconds(5));
  }
  return true;
}

class CliTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ServerProcessOptions options;
    options.unix_socket = true;
    auto server = ServerProcess::Start(options);
    ASSERT_TRUE(server.ok()) << server.status();
    server_ = *std::move(server);
    auto dir = TempDir::Create();
    ASSERT_TRUE(dir.ok()) << dir.status();
    dir_ = std::make_unique<TempDir>(*std::move(dir));
  }

  void TearDown() override {
    // The server must also stop cleanly (and, in sanitizer builds, leak-free).
    if (server_ != nullptr) {
      const absl::Status stopped = server_->Terminate();
      EXPECT_TRUE(stopped.ok()) << stopped;
    }
  }

  // Runs `h5depot --server <the test server> args...`, with
  // H5DEPOT_SERVER unset so the developer's environment cannot interfere.
  CommandResult Cli(std::vector<std::string> args,
                    CommandOptions options = {}) {
    args.insert(args.begin(),
                {H5depotCliPath(), "--server", server_->target()});
    return RunBare(args, std::move(options));
  }

  // Runs exactly `argv` (no --server added).
  static CommandResult RunBare(const std::vector<std::string>& argv,
                               CommandOptions options = {}) {
    options.env.emplace("H5DEPOT_SERVER", std::nullopt);
    return RunCommand(argv, options);
  }

  // Writes an HDF5 image into the temp dir as `name`; returns its bytes.
  std::string MakeImageFile(const std::string& name, size_t data_bytes,
                            uint32_t seed) {
    std::string image = MakeHdf5Image(data_bytes, seed);
    EXPECT_FALSE(image.empty());
    EXPECT_TRUE(WriteFile(dir_->File(name), image).ok());
    return image;
  }

  // Pushes `image` as `id` through stdin; fails the test if that fails.
  void Put(const std::string& id, const std::string& image) {
    CommandOptions options;
    options.stdin_data = image;
    CommandResult put = Cli({"put", "-", "--id", id}, options);
    ASSERT_EQ(put.exit_code, 0) << put.stderr_text;
  }

  std::unique_ptr<ServerProcess> server_;
  std::unique_ptr<TempDir> dir_;
};

TEST_F(CliTest, PutThenGetIntoAFileIsByteIdentical) {
  // Several MiB, so the image crosses many chunks each way.
  const std::string image = MakeImageFile("packet.h5", 5 << 20, 1);
  CommandResult put = Cli({"put", dir_->File("packet.h5")});
  ASSERT_EQ(put.exit_code, 0) << put.stderr_text;
  EXPECT_EQ(put.stderr_text, "");
  // The id defaults to the file's base name.
  EXPECT_EQ(Field(put.stdout_text, "id"), "packet.h5");
  EXPECT_EQ(Field(put.stdout_text, "size"), absl::StrCat(image.size()));

  CommandResult get = Cli({"get", "packet.h5", "-o", dir_->File("copy.h5")});
  ASSERT_EQ(get.exit_code, 0) << get.stderr_text;
  EXPECT_EQ(get.stdout_text, "");
  auto copy = ReadFile(dir_->File("copy.h5"));
  ASSERT_TRUE(copy.ok()) << copy.status();
  EXPECT_TRUE(*copy == image) << "the fetched file differs from the pushed one";
}

// --sync makes the file durable before the CLI exits; it is accepted for
// every kind of destination, including those that have nothing to sync
// (a character device, where fsync fails with EINVAL).
TEST_F(CliTest, GetWithSyncWritesTheWholeFileAndAcceptsADevice) {
  const std::string image = MakeHdf5Image(2 << 20, 21);
  Put("synced", image);
  CommandResult get =
      Cli({"get", "synced", "-o", dir_->File("synced.h5"), "--sync"});
  ASSERT_EQ(get.exit_code, 0) << get.stderr_text;
  auto copy = ReadFile(dir_->File("synced.h5"));
  ASSERT_TRUE(copy.ok()) << copy.status();
  EXPECT_TRUE(*copy == image) << "the fetched file differs from the pushed one";
  EXPECT_EQ(Entries(dir_->path()), std::vector<std::string>{"synced.h5"});

  CommandResult to_null = Cli({"get", "synced", "-o", "/dev/null", "--sync"});
  EXPECT_EQ(to_null.exit_code, 0) << to_null.stderr_text;
}

TEST_F(CliTest, GetWritesTheImageToStdout) {
  const std::string image = MakeHdf5Image(3 << 20, 2);
  Put("run-1/packet", image);
  CommandResult get = Cli({"get", "run-1/packet"});
  ASSERT_EQ(get.exit_code, 0) << get.stderr_text;
  EXPECT_TRUE(get.stdout_text == image) << "stdout differs from the image";
  CommandResult dash = Cli({"get", "run-1/packet", "-o", "-"});
  ASSERT_EQ(dash.exit_code, 0) << dash.stderr_text;
  EXPECT_TRUE(dash.stdout_text == image) << "-o - differs from the image";
}

TEST_F(CliTest, PutWithIdReplacesTheImageWithANewGeneration) {
  const std::string first = MakeImageFile("a.h5", 1000, 3);
  const std::string second = MakeImageFile("b.h5", 2000, 4);
  CommandResult put1 = Cli({"put", dir_->File("a.h5"), "--id", "shared"});
  ASSERT_EQ(put1.exit_code, 0) << put1.stderr_text;
  CommandResult put2 = Cli({"put", dir_->File("b.h5"), "--id=shared"});
  ASSERT_EQ(put2.exit_code, 0) << put2.stderr_text;
  EXPECT_LT(std::stoull(Field(put1.stdout_text, "generation")),
            std::stoull(Field(put2.stdout_text, "generation")));
  CommandResult get = Cli({"get", "shared"});
  ASSERT_EQ(get.exit_code, 0) << get.stderr_text;
  EXPECT_TRUE(get.stdout_text == second);
}

TEST_F(CliTest, LsListsTheImagesUnderAPrefixInIdOrder) {
  const std::string image = MakeHdf5Image(100, 5);
  for (const char* id : {"run-2/b", "run-1/x", "run-2/a", "other"}) {
    Put(id, image);
  }
  CommandResult some = Cli({"ls", "run-2/"});
  ASSERT_EQ(some.exit_code, 0) << some.stderr_text;
  EXPECT_EQ(ListedIds(some.stdout_text),
            (std::vector<std::string>{"run-2/a", "run-2/b"}))
      << some.stdout_text;
  EXPECT_TRUE(absl::StartsWith(some.stdout_text, "ID "));

  CommandResult all = Cli({"ls"});
  ASSERT_EQ(all.exit_code, 0) << all.stderr_text;
  EXPECT_EQ(
      ListedIds(all.stdout_text),
      (std::vector<std::string>{"other", "run-1/x", "run-2/a", "run-2/b"}))
      << all.stdout_text;

  CommandResult none = Cli({"ls", "nothing-here"});
  ASSERT_EQ(none.exit_code, 0) << none.stderr_text;
  EXPECT_TRUE(ListedIds(none.stdout_text).empty()) << none.stdout_text;
}

TEST_F(CliTest, LsPagesThroughManyImages) {
  // More images than the server returns in one page; pushed through the
  // library, since 1200 CLI processes would only make the test slow.
  auto client = Client::Connect(server_->target());
  ASSERT_TRUE(client.ok()) << client.status();
  const std::string image = MakeHdf5Image(10, 6);
  std::vector<std::string> expected;
  for (int i = 0; i < 1200; ++i) {
    expected.push_back(absl::StrFormat("many/%04d", i));
    auto pushed = (*client)->Push(expected.back(), image.data(), image.size());
    ASSERT_TRUE(pushed.ok()) << pushed.status();
  }
  CommandResult ls = Cli({"ls", "many/"});
  ASSERT_EQ(ls.exit_code, 0) << ls.stderr_text;
  EXPECT_EQ(ListedIds(ls.stdout_text), expected);
}

TEST_F(CliTest, StatShowsSizeGenerationChecksumAndExpiry) {
  const std::string image = MakeImageFile("s.h5", 4096, 7);
  CommandResult put = Cli({"put", dir_->File("s.h5"), "--id", "s"});
  ASSERT_EQ(put.exit_code, 0) << put.stderr_text;
  CommandResult stat = Cli({"stat", "s"});
  ASSERT_EQ(stat.exit_code, 0) << stat.stderr_text;
  EXPECT_EQ(Field(stat.stdout_text, "id"), "s");
  EXPECT_EQ(Field(stat.stdout_text, "size"), absl::StrCat(image.size()));
  EXPECT_EQ(Field(stat.stdout_text, "generation"),
            Field(put.stdout_text, "generation"));
  EXPECT_EQ(
      Field(stat.stdout_text, "checksum"),
      absl::StrFormat("%016x", internal::Checksum(image.data(), image.size())));
  EXPECT_EQ(Field(stat.stdout_text, "expires"), "never");
  EXPECT_TRUE(absl::EndsWith(Field(stat.stdout_text, "created"), "Z"));

  CommandResult with_ttl =
      Cli({"put", dir_->File("s.h5"), "--id", "t", "--ttl", "1h"});
  ASSERT_EQ(with_ttl.exit_code, 0) << with_ttl.stderr_text;
  EXPECT_NE(Field(with_ttl.stdout_text, "expires"), "never");
  EXPECT_GT(Field(with_ttl.stdout_text, "expires"),
            Field(with_ttl.stdout_text, "created"));
}

TEST_F(CliTest, RmThenGetFailsWithOneLineError) {
  Put("doomed", MakeHdf5Image(100, 8));
  CommandResult rm = Cli({"rm", "doomed"});
  ASSERT_EQ(rm.exit_code, 0) << rm.stderr_text;
  EXPECT_EQ(rm.stdout_text, "");

  CommandResult get = Cli({"get", "doomed"});
  EXPECT_EQ(get.exit_code, kExitNotFound);
  EXPECT_TRUE(IsOneErrorLine(get.stderr_text));
  EXPECT_NE(get.stderr_text.find("doomed"), std::string::npos);
  EXPECT_EQ(get.stdout_text, "");

  CommandResult again = Cli({"rm", "doomed"});
  EXPECT_EQ(again.exit_code, kExitNotFound);
  EXPECT_TRUE(IsOneErrorLine(again.stderr_text));
}

TEST_F(CliTest, GenerationMismatchIsAConflict) {
  const std::string image = MakeHdf5Image(100, 9);
  Put("g", image);
  CommandOptions options;
  options.stdin_data = image;
  CommandResult create_only =
      Cli({"put", "-", "--id", "g", "--if-generation-match", "0"}, options);
  EXPECT_EQ(create_only.exit_code, kExitConflict);
  EXPECT_TRUE(IsOneErrorLine(create_only.stderr_text));

  CommandResult stat = Cli({"stat", "g"});
  ASSERT_EQ(stat.exit_code, 0) << stat.stderr_text;
  const uint64_t generation =
      std::stoull(Field(stat.stdout_text, "generation"));
  CommandResult wrong_rm = Cli(
      {"rm", "g", "--if-generation-match", absl::StrCat(generation + 1000)});
  EXPECT_EQ(wrong_rm.exit_code, kExitConflict);
  EXPECT_TRUE(IsOneErrorLine(wrong_rm.stderr_text));
  CommandResult right_rm =
      Cli({"rm", "g", "--if-generation-match", absl::StrCat(generation)});
  EXPECT_EQ(right_rm.exit_code, 0) << right_rm.stderr_text;
}

TEST_F(CliTest, APushThatLostAGenerationRaceIsAConflict) {
  const std::string image = MakeHdf5Image(100, 11);
  Put("raced", image);
  CommandResult stat = Cli({"stat", "raced"});
  ASSERT_EQ(stat.exit_code, 0) << stat.stderr_text;
  const uint64_t generation =
      std::stoull(Field(stat.stdout_text, "generation"));
  Put("raced", image);  // somebody else's push: the generation moved on
  CommandOptions options;
  options.stdin_data = image;
  CommandResult stale = Cli({"put", "-", "--id", "raced",
                             "--if-generation-match", absl::StrCat(generation)},
                            options);
  EXPECT_EQ(stale.exit_code, kExitConflict);
  EXPECT_TRUE(IsOneErrorLine(stale.stderr_text));
}

TEST_F(CliTest, StatAndGetTakeOnlyAGenerationNewerThanTheOneGiven) {
  const std::string image = MakeHdf5Image(100, 12);
  Put("n", image);
  CommandResult stat = Cli({"stat", "n"});
  ASSERT_EQ(stat.exit_code, 0) << stat.stderr_text;
  const std::string generation = Field(stat.stdout_text, "generation");

  CommandResult none_now = Cli({"stat", "n", "--newer-than", generation});
  EXPECT_EQ(none_now.exit_code, kExitFailed);
  EXPECT_TRUE(IsOneErrorLine(none_now.stderr_text));
  EXPECT_NE(none_now.stderr_text.find("no generation newer than " + generation),
            std::string::npos)
      << none_now.stderr_text;
  CommandResult none_in_time =
      Cli({"get", "n", "-o", dir_->File("n.h5"), "--newer-than", generation,
           "--wait", "100ms"});
  EXPECT_EQ(none_in_time.exit_code, kExitTimedOut);
  EXPECT_EQ(Entries(dir_->path()), std::vector<std::string>{});

  const std::string older = absl::StrCat(std::stoull(generation) - 1);
  CommandResult got =
      Cli({"get", "n", "-o", dir_->File("n.h5"), "--newer-than", older});
  ASSERT_EQ(got.exit_code, 0) << got.stderr_text;
  auto copy = ReadFile(dir_->File("n.h5"));
  ASSERT_TRUE(copy.ok());
  EXPECT_TRUE(*copy == image);

  CommandResult malformed = Cli({"stat", "n", "--newer-than", "latest"});
  EXPECT_EQ(malformed.exit_code, kExitUsage);
}

TEST_F(CliTest, AnImageOverTheServersLimitExitsOverLimit) {
  ServerProcessOptions options;
  options.extra_flags = {"--max-image-size=1M"};
  auto limited = ServerProcess::Start(options);
  ASSERT_TRUE(limited.ok()) << limited.status();
  MakeImageFile("big.h5", 2 << 20, 12);
  CommandResult put =
      RunBare({H5depotCliPath(), "--server", (*limited)->target(), "put",
               dir_->File("big.h5")});
  EXPECT_EQ(put.exit_code, kExitOverLimit) << put.stderr_text;
  EXPECT_TRUE(IsOneErrorLine(put.stderr_text));
  EXPECT_TRUE((*limited)->Terminate().ok());
}

TEST_F(CliTest, GetOfAMissingImageIntoAFileLeavesNothingBehind) {
  auto out_dir = TempDir::Create(dir_->path());
  ASSERT_TRUE(out_dir.ok());
  CommandResult get =
      Cli({"get", "never-pushed", "-o", out_dir->File("out.h5")});
  EXPECT_EQ(get.exit_code, kExitNotFound);
  EXPECT_TRUE(IsOneErrorLine(get.stderr_text));
  for (const auto& entry :
       std::filesystem::directory_iterator(out_dir->path())) {
    ADD_FAILURE() << "left behind: " << entry.path();
  }
}

TEST_F(CliTest, FailedGetKeepsAnExistingFileUnchanged) {
  ASSERT_TRUE(WriteFile(dir_->File("keep.h5"), "old contents").ok());
  CommandResult get = Cli({"get", "never-pushed", "-o", dir_->File("keep.h5")});
  EXPECT_EQ(get.exit_code, kExitNotFound);
  auto kept = ReadFile(dir_->File("keep.h5"));
  ASSERT_TRUE(kept.ok());
  EXPECT_EQ(*kept, "old contents");
}

// A get whose writes fail part way (here: a file size limit, with SIGXFSZ
// ignored so that a write fails with EFBIG instead of killing the CLI)
// leaves the old file and no temporary one.
TEST_F(CliTest, AGetCutOffPartWayLeavesTheOldFileAndNoTemporaryOne) {
  Put("cut", MakeHdf5Image(8 << 20, 21));
  ASSERT_TRUE(WriteFile(dir_->File("keep.h5"), "old contents").ok());
  CommandResult get = RunBare(
      {"/bin/sh", "-c",
       "trap '' XFSZ; exec prlimit --fsize=1048576 \"$0\" --server \"$1\" "
       "get cut -o \"$2\"",
       H5depotCliPath(), server_->target(), dir_->File("keep.h5")});
  EXPECT_NE(get.exit_code, 0);
  EXPECT_NE(get.stderr_text.find("too large"), std::string::npos)
      << get.stderr_text;
  auto kept = ReadFile(dir_->File("keep.h5"));
  ASSERT_TRUE(kept.ok());
  EXPECT_EQ(*kept, "old contents");
  EXPECT_EQ(Entries(dir_->path()), std::vector<std::string>{"keep.h5"});
}

// The peak resident set, in KiB, that tools/peak_rss reported on the last
// line of `stderr_text`; -1 if it did not.
int64_t PeakRssKib(const std::string& stderr_text) {
  const size_t at = stderr_text.rfind("peak_rss_kib ");
  if (at == std::string::npos) return -1;
  return std::strtoll(stderr_text.c_str() + at + 13, nullptr, 10);
}

// Whether a process's peak resident set measures what the program holds.
// Under AddressSanitizer it does not: every allocation carries redzones and
// shadow, freed memory waits in a quarantine, and gRPC's receive window
// (which grows with the round trip a loaded machine makes long) fills with
// such allocations, so the same get peaked at 75 MiB on one run and 143
// MiB on another. The sanitized build checks the bytes; the others the
// memory too.
#if defined(__SANITIZE_ADDRESS__)
constexpr bool kPeakRssMeasuresTheProgram = false;
#else
constexpr bool kPeakRssMeasuresTheProgram = true;
#endif

// Expects the peak resident set that tools/peak_rss reported on the last
// line of `stderr_text` to be under `limit_kib`, where that measures the
// program (kPeakRssMeasuresTheProgram).
void ExpectPeakRssUnder(const std::string& stderr_text, int64_t limit_kib) {
  const int64_t peak_kib = PeakRssKib(stderr_text);
  EXPECT_GT(peak_kib, 0) << stderr_text;
  if (kPeakRssMeasuresTheProgram) {
    EXPECT_LT(peak_kib, limit_kib);
  }
}

// The CLI holds a piece of an image at a time, however large, over the
// data lane (TCP, and the Unix socket, where a get maps the server's
// memory a window at a time) and over gRPC: a put from a file and a get
// into a file or through a pipe each peak at a small fraction of a
// 256 MiB image, and the bytes arrive whole.
TEST_F(CliTest, LargeImagesPassThroughASmallPieceOfMemory) {
  const std::string image = MakeImageFile("large.h5", 256 << 20, 22);
  const int64_t half_the_image_kib = static_cast<int64_t>(image.size()) / 2048;
  const std::string cli = H5depotCliPath();
  ServerProcessOptions grpc_only;
  grpc_only.extra_flags = {"--nodata-lane"};
  auto without_lane = ServerProcess::Start(grpc_only);
  ASSERT_TRUE(without_lane.ok()) << without_lane.status();

  for (const std::string& target :
       {server_->target(), server_->unix_target(), (*without_lane)->target()}) {
    SCOPED_TRACE(target);
    CommandResult put = RunBare({PEAK_RSS_PATH, cli, "--server", target, "put",
                                 dir_->File("large.h5"), "--id", "large"});
    ASSERT_EQ(put.exit_code, 0) << put.stderr_text;
    ExpectPeakRssUnder(put.stderr_text, half_the_image_kib);

    CommandResult get = RunBare({PEAK_RSS_PATH, cli, "--server", target, "get",
                                 "large", "-o", dir_->File("copy.h5")});
    ASSERT_EQ(get.exit_code, 0) << get.stderr_text;
    ExpectPeakRssUnder(get.stderr_text, half_the_image_kib);
    auto copy = ReadFile(dir_->File("copy.h5"));
    ASSERT_TRUE(copy.ok());
    EXPECT_TRUE(*copy == image);

    CommandResult piped =
        RunBare({PEAK_RSS_PATH, "/bin/sh", "-c",
                 "\"$0\" --server \"$1\" get large | wc -c", cli, target});
    ASSERT_EQ(piped.exit_code, 0) << piped.stderr_text;
    EXPECT_EQ(piped.stdout_text, absl::StrCat(image.size(), "\n"));
    ExpectPeakRssUnder(piped.stderr_text, half_the_image_kib);
  }
}

// Writing to a path that is not a regular file writes into what is there,
// as `cp` and `curl -o` do: replacing it would destroy a device node, a
// FIFO or a symlink that other programs rely on.

TEST_F(CliTest, GetIntoACharacterDeviceWritesIntoItAndKeepsIt) {
  const std::string device = dir_->File("null");
  const int made = MakeNullDevice(device);
  if (made == EPERM) {
    GTEST_SKIP() << "mknod needs CAP_MKNOD";
  }
  ASSERT_EQ(made, 0) << std::strerror(made);
  Put("to-device", MakeHdf5Image(1 << 20, 13));

  CommandResult get = Cli({"get", "to-device", "-o", device});
  EXPECT_EQ(get.exit_code, 0) << get.stderr_text;
  struct stat st;
  ASSERT_EQ(lstat(device.c_str(), &st), 0);
  EXPECT_TRUE(S_ISCHR(st.st_mode)) << "the device was replaced";
  EXPECT_EQ(st.st_rdev, makedev(1, 3));
  EXPECT_EQ(Entries(dir_->path()), std::vector<std::string>{"null"});
}

TEST_F(CliTest, GetIntoAFifoWritesTheImageIntoIt) {
  // Larger than a pipe's buffer, so the CLI waits on the reader.
  const std::string image = MakeHdf5Image(3 << 20, 14);
  Put("to-fifo", image);
  const std::string fifo = dir_->File("pipe");
  ASSERT_EQ(mkfifo(fifo.c_str(), 0600), 0) << std::strerror(errno);

  auto [get, read] = RunReadingFifo(fifo, [&] {
    return Cli({"get", "to-fifo", "-o", fifo});
  });
  EXPECT_EQ(get.exit_code, 0) << get.stderr_text;
  EXPECT_EQ(read.size(), image.size());
  EXPECT_TRUE(read == image) << "the FIFO carried other bytes than the image";
  struct stat st;
  ASSERT_EQ(lstat(fifo.c_str(), &st), 0);
  EXPECT_TRUE(S_ISFIFO(st.st_mode)) << "the FIFO was replaced";
}

TEST_F(CliTest, GetThroughASymlinkReplacesItsTargetAndKeepsTheLink) {
  const std::string image = MakeHdf5Image(100000, 15);
  Put("via-link", image);
  ASSERT_TRUE(WriteFile(dir_->File("real.h5"), "old contents").ok());
  ASSERT_EQ(symlink("real.h5", dir_->File("link.h5").c_str()), 0);

  CommandResult get = Cli({"get", "via-link", "-o", dir_->File("link.h5")});
  ASSERT_EQ(get.exit_code, 0) << get.stderr_text;
  struct stat st;
  ASSERT_EQ(lstat(dir_->File("link.h5").c_str(), &st), 0);
  EXPECT_TRUE(S_ISLNK(st.st_mode)) << "the symlink was replaced";
  std::error_code error;
  EXPECT_EQ(std::filesystem::read_symlink(dir_->File("link.h5"), error),
            "real.h5");
  auto written = ReadFile(dir_->File("real.h5"));
  ASSERT_TRUE(written.ok()) << written.status();
  EXPECT_TRUE(*written == image) << "the link's target does not hold the image";
  EXPECT_EQ(Entries(dir_->path()),
            (std::vector<std::string>{"link.h5", "real.h5"}));
}

TEST_F(CliTest, GetThroughASymlinkToADeviceWritesIntoTheDevice) {
  const std::string device = dir_->File("null");
  const int made = MakeNullDevice(device);
  if (made == EPERM) {
    GTEST_SKIP() << "mknod needs CAP_MKNOD";
  }
  ASSERT_EQ(made, 0) << std::strerror(made);
  ASSERT_EQ(symlink(device.c_str(), dir_->File("sink").c_str()), 0);
  Put("to-device", MakeHdf5Image(100000, 16));

  CommandResult get = Cli({"get", "to-device", "-o", dir_->File("sink")});
  EXPECT_EQ(get.exit_code, 0) << get.stderr_text;
  struct stat st;
  ASSERT_EQ(lstat(dir_->File("sink").c_str(), &st), 0);
  EXPECT_TRUE(S_ISLNK(st.st_mode)) << "the symlink was replaced";
  ASSERT_EQ(lstat(device.c_str(), &st), 0);
  EXPECT_TRUE(S_ISCHR(st.st_mode)) << "the device was replaced";
  EXPECT_EQ(st.st_rdev, makedev(1, 3));
}

TEST_F(CliTest, GetOverAnExistingFileKeepsItsModeAndOwner) {
  const std::string image = MakeHdf5Image(100000, 17);
  Put("private", image);
  const std::string path = dir_->File("private.h5");
  ASSERT_TRUE(WriteFile(path, "old contents").ok());
  ASSERT_EQ(chmod(path.c_str(), 0600), 0);
  // Only root can hand a file to someone else, and only root's CLI can keep
  // it theirs; numbers no account needs to have.
  const bool as_root = geteuid() == 0;
  if (as_root) {
    ASSERT_EQ(chown(path.c_str(), 4321, 8765), 0);
  }

  CommandResult get = Cli({"get", "private", "-o", path});
  ASSERT_EQ(get.exit_code, 0) << get.stderr_text;
  auto written = ReadFile(path);
  ASSERT_TRUE(written.ok()) << written.status();
  EXPECT_TRUE(*written == image);
  struct stat st;
  ASSERT_EQ(stat(path.c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 07777, 0600u);
  if (as_root) {
    EXPECT_EQ(st.st_uid, 4321u);
    EXPECT_EQ(st.st_gid, 8765u);
  }
}

// A replacement larger than the step at which its writeback is started
// early (8 MiB) has it started several times during the transfer; the file
// is still the image alone, over an old file larger than it, with or
// without --sync, and no temporary file is left beside it.
TEST_F(CliTest, GetReplacingAFileWithALargeImageWritesExactlyTheImage) {
  const std::string image = MakeHdf5Image(20 << 20, 23);
  Put("large", image);
  const std::string path = dir_->File("large.h5");
  for (const bool sync : {false, true}) {
    SCOPED_TRACE(sync ? "--sync" : "without --sync");
    ASSERT_TRUE(WriteFile(path, std::string(image.size() + 12345, 'o')).ok());
    std::vector<std::string> args = {"get", "large", "-o", path};
    if (sync) args.push_back("--sync");
    CommandResult get = Cli(args);
    ASSERT_EQ(get.exit_code, 0) << get.stderr_text;
    auto written = ReadFile(path);
    ASSERT_TRUE(written.ok()) << written.status();
    EXPECT_EQ(written->size(), image.size());
    EXPECT_TRUE(*written == image) << "the file differs from the image";
    EXPECT_EQ(Entries(dir_->path()), std::vector<std::string>{"large.h5"});
  }
}

TEST_F(CliTest, GetIntoAPathThatCannotBeCreatedFailsBeforeFetching) {
  // A directory's write permission does not stop root, which tests often
  // run as; a path through a regular file stops everyone (ENOTDIR).
  ASSERT_TRUE(WriteFile(dir_->File("plain"), "not a directory").ok());
  // An image that never comes: a CLI that fetched before opening its output
  // would wait out --wait and report a timeout instead.
  CommandResult get = Cli({"get", "never-pushed", "--wait", "60s", "-o",
                           dir_->File("plain/out.h5")});
  EXPECT_EQ(get.exit_code, kExitNotFound) << get.stderr_text;
  EXPECT_TRUE(IsOneErrorLine(get.stderr_text));
  EXPECT_NE(get.stderr_text.find("plain"), std::string::npos)
      << get.stderr_text;
  EXPECT_EQ(Entries(dir_->path()), std::vector<std::string>{"plain"});
  auto kept = ReadFile(dir_->File("plain"));
  ASSERT_TRUE(kept.ok());
  EXPECT_EQ(*kept, "not a directory");

  if (geteuid() != 0) {
    auto read_only = TempDir::Create(dir_->path());
    ASSERT_TRUE(read_only.ok());
    ASSERT_EQ(chmod(read_only->path().c_str(), 0500), 0);
    CommandResult denied = Cli({"get", "never-pushed", "--wait", "60s", "-o",
                                read_only->File("out.h5")});
    chmod(read_only->path().c_str(), 0700);
    EXPECT_NE(denied.exit_code, 0);
    EXPECT_NE(denied.exit_code, kExitTimedOut) << denied.stderr_text;
    EXPECT_TRUE(IsOneErrorLine(denied.stderr_text));
    EXPECT_TRUE(Entries(read_only->path()).empty());
  }
}

TEST_F(CliTest, GetIntoADirectoryIsRefused) {
  Put("image", MakeHdf5Image(100, 18));
  auto out_dir = TempDir::Create(dir_->path());
  ASSERT_TRUE(out_dir.ok());
  CommandResult get = Cli({"get", "image", "-o", out_dir->path()});
  EXPECT_EQ(get.exit_code, kExitFailed);
  EXPECT_TRUE(IsOneErrorLine(get.stderr_text));
  EXPECT_NE(get.stderr_text.find("directory"), std::string::npos)
      << get.stderr_text;
  EXPECT_TRUE(Entries(out_dir->path()).empty());
}

// A get killed before its rename: the CLI creates its temporary file before
// it fetches, and waits for an image that is never pushed, so the test can
// stop it at that point without timing anything. (The same for SIGTERM,
// below.)
TEST_F(CliTest, KilledGetLeavesTheOldFileWhole) {
  auto out_dir = TempDir::Create(dir_->path());
  ASSERT_TRUE(out_dir.ok());
  ASSERT_TRUE(WriteFile(out_dir->File("keep.h5"), "old contents").ok());
  BackgroundProcess get({H5depotCliPath(), "--server", server_->target(), "get",
                         "never-pushed", "--wait", "60s", "-o",
                         out_dir->File("keep.h5")});
  ASSERT_TRUE(get.started());
  ASSERT_TRUE(WaitForMoreEntries(out_dir->path(), 1, absl::Seconds(30)))
      << "no temporary file appeared";

  const int status = get.Stop(SIGKILL);
  ASSERT_TRUE(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL) << status;
  auto kept = ReadFile(out_dir->File("keep.h5"));
  ASSERT_TRUE(kept.ok());
  EXPECT_EQ(*kept, "old contents");
  // SIGKILL allows no clean-up: the temporary file stays, hidden.
  const std::vector<std::string> left = Entries(out_dir->path());
  ASSERT_EQ(left.size(), 2u);
  EXPECT_EQ(left[0][0], '.') << left[0];
  EXPECT_EQ(left[1], "keep.h5");
}

TEST_F(CliTest, TerminatedGetRemovesItsTemporaryFile) {
  auto out_dir = TempDir::Create(dir_->path());
  ASSERT_TRUE(out_dir.ok());
  ASSERT_TRUE(WriteFile(out_dir->File("keep.h5"), "old contents").ok());
  BackgroundProcess get({H5depotCliPath(), "--server", server_->target(), "get",
                         "never-pushed", "--wait", "60s", "-o",
                         out_dir->File("keep.h5")});
  ASSERT_TRUE(get.started());
  ASSERT_TRUE(WaitForMoreEntries(out_dir->path(), 1, absl::Seconds(30)))
      << "no temporary file appeared";

  const int status = get.Stop(SIGTERM);
  ASSERT_TRUE(WIFSIGNALED(status) && WTERMSIG(status) == SIGTERM) << status;
  EXPECT_EQ(Entries(out_dir->path()), std::vector<std::string>{"keep.h5"});
  auto kept = ReadFile(out_dir->File("keep.h5"));
  ASSERT_TRUE(kept.ok());
  EXPECT_EQ(*kept, "old contents");
}

TEST_F(CliTest, GetWaitGivesUpWithTimedOut) {
  CommandResult get = Cli({"get", "late", "--wait", "200ms"});
  EXPECT_EQ(get.exit_code, kExitTimedOut);
  EXPECT_TRUE(IsOneErrorLine(get.stderr_text));
}

TEST_F(CliTest, BadImageIdIsRefusedWithTheRules) {
  CommandResult get = Cli({"get", "../etc/passwd"});
  EXPECT_EQ(get.exit_code, kExitUsage);
  EXPECT_TRUE(IsOneErrorLine(get.stderr_text));
  EXPECT_NE(get.stderr_text.find("../etc/passwd"), std::string::npos)
      << get.stderr_text;

  // A file name that is not a valid id needs --id, and the error says so.
  MakeImageFile("has space.h5", 100, 10);
  CommandResult put = Cli({"put", dir_->File("has space.h5")});
  EXPECT_EQ(put.exit_code, kExitUsage);
  EXPECT_TRUE(IsOneErrorLine(put.stderr_text));
  EXPECT_NE(put.stderr_text.find("--id"), std::string::npos) << put.stderr_text;
  CommandResult put_with_id =
      Cli({"put", dir_->File("has space.h5"), "--id", "no-space.h5"});
  EXPECT_EQ(put_with_id.exit_code, 0) << put_with_id.stderr_text;
}

TEST_F(CliTest, NonHdf5FileIsRefused) {
  ASSERT_TRUE(WriteFile(dir_->File("notes.txt"), "just some text\n").ok());
  CommandResult put = Cli({"put", dir_->File("notes.txt")});
  EXPECT_EQ(put.exit_code, kExitFailed);
  EXPECT_TRUE(IsOneErrorLine(put.stderr_text));
  CommandResult ls = Cli({"ls"});
  EXPECT_TRUE(ListedIds(ls.stdout_text).empty()) << ls.stdout_text;
}

TEST_F(CliTest, MissingFileIsNotFound) {
  CommandResult put = Cli({"put", dir_->File("absent.h5")});
  EXPECT_EQ(put.exit_code, kExitNotFound);
  EXPECT_TRUE(IsOneErrorLine(put.stderr_text));
  EXPECT_NE(put.stderr_text.find("absent.h5"), std::string::npos);
}

TEST_F(CliTest, UnreachableServerIsReportedClearly) {
  // A port nothing listens on any more: the test server's, once it is gone.
  const std::string target = server_->tcp_target();
  server_->Kill();
  CommandResult ls = RunBare(
      {H5depotCliPath(), "--server", target, "--connect-timeout", "2s", "ls"});
  EXPECT_EQ(ls.exit_code, kExitUnavailable);
  EXPECT_TRUE(IsOneErrorLine(ls.stderr_text));
  EXPECT_NE(ls.stderr_text.find(target), std::string::npos) << ls.stderr_text;

  CommandResult no_socket =
      RunBare({H5depotCliPath(), "--server", "unix:" + dir_->File("no.sock"),
               "--connect-timeout", "2s", "stat", "x"});
  EXPECT_EQ(no_socket.exit_code, kExitUnavailable);
  EXPECT_TRUE(IsOneErrorLine(no_socket.stderr_text));
}

// --timeout, before or after the command, bounds calls and is not in the
// way of ones that finish in time (client_faults_test: calls that do not).
TEST_F(CliTest, TimeoutIsAcceptedBeforeOrAfterTheCommand) {
  Put("timeout-image", MakeHdf5Image(100, 13));
  CommandResult before = Cli({"--timeout=5s", "stat", "timeout-image"});
  EXPECT_EQ(before.exit_code, 0) << before.stderr_text;
  CommandResult after = Cli({"stat", "timeout-image", "--timeout", "250ms"});
  EXPECT_EQ(after.exit_code, 0) << after.stderr_text;
  // Added to --wait, not taken from it.
  CommandResult wait =
      Cli({"get", "not-yet", "--wait", "300ms", "--timeout", "5s", "-o", "-"});
  EXPECT_EQ(wait.exit_code, kExitTimedOut) << wait.stderr_text;
}

TEST_F(CliTest, ServerComesFromTheEnvironmentUnlessGiven) {
  Put("env-image", MakeHdf5Image(100, 11));
  CommandOptions from_env;
  from_env.env["H5DEPOT_SERVER"] = server_->target();
  CommandResult stat =
      RunCommand({H5depotCliPath(), "stat", "env-image"}, from_env);
  EXPECT_EQ(stat.exit_code, 0) << stat.stderr_text;
  EXPECT_EQ(Field(stat.stdout_text, "id"), "env-image");

  // --server wins over the environment.
  CommandOptions wrong_env;
  wrong_env.env["H5DEPOT_SERVER"] = "unix:" + dir_->File("no.sock");
  CommandResult overridden = RunCommand(
      {H5depotCliPath(), "stat", "env-image", "--server", server_->target()},
      wrong_env);
  EXPECT_EQ(overridden.exit_code, 0) << overridden.stderr_text;
}

TEST_F(CliTest, WorksOverTheUnixSocket) {
  const std::string image = MakeImageFile("u.h5", 1 << 20, 12);
  const std::string socket = server_->unix_target();
  CommandResult put = RunBare(
      {H5depotCliPath(), "--server", socket, "put", dir_->File("u.h5")});
  ASSERT_EQ(put.exit_code, 0) << put.stderr_text;
  CommandResult get =
      RunBare({H5depotCliPath(), "--server=" + socket, "get", "u.h5"});
  ASSERT_EQ(get.exit_code, 0) << get.stderr_text;
  EXPECT_TRUE(get.stdout_text == image);
  // Same store behind both addresses.
  CommandResult tcp_stat = Cli({"stat", "u.h5"});
  EXPECT_EQ(tcp_stat.exit_code, 0) << tcp_stat.stderr_text;
}

TEST_F(CliTest, CommandLineMistakesAreUsageErrors) {
  for (const std::vector<std::string>& args :
       std::vector<std::vector<std::string>>{
           {},
           {"frobnicate"},
           {"get"},
           {"get", "a", "b"},
           {"get", "a", "--bogus"},
           {"get", "a", "--wait", "soon"},
           {"rm", "a", "--if-generation-match", "-1"},
           {"put", "-"},
           {"ls", "--server"},
           {"ls", "--timeout", "soon"},
           {"--timeout=0", "ls"},
       }) {
    std::vector<std::string> argv = {H5depotCliPath()};
    argv.insert(argv.end(), args.begin(), args.end());
    CommandResult result = RunBare(argv);
    EXPECT_EQ(result.exit_code, kExitUsage)
        << absl::StrJoin(args, " ") << ": " << result.stderr_text;
    EXPECT_TRUE(IsOneErrorLine(result.stderr_text)) << absl::StrJoin(args, " ");
  }
}

TEST_F(CliTest, HelpAndVersion) {
  CommandResult help = RunBare({H5depotCliPath(), "--help"});
  EXPECT_EQ(help.exit_code, 0);
  EXPECT_TRUE(absl::StartsWith(help.stdout_text, "usage: h5depot"));
  for (const char* command : {"put", "get", "ls", "stat", "rm"}) {
    EXPECT_NE(help.stdout_text.find(absl::StrCat("  ", command, " ")),
              std::string::npos)
        << command;
  }
  for (const char* option : {"--server=", "--connect-timeout=", "--timeout="}) {
    EXPECT_NE(help.stdout_text.find(option), std::string::npos) << option;
  }
  CommandResult version = RunBare({H5depotCliPath(), "--version"});
  EXPECT_EQ(version.exit_code, 0);
  EXPECT_TRUE(absl::StartsWith(version.stdout_text, "h5depot "));
}

}  // namespace
}  // namespace h5depot
