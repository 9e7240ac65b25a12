// Streams (Client::Append, Next, Ack, FinishStream, DeleteStream;
// `h5depot stream`),
// against a real h5depotd over every transport: every step reaches every
// reader group once, in order within each member, with its bytes intact;
// a full queue blocks, discards (telling readers exactly what they lost)
// or refuses as its policy says, and memory stays within its limits; late
// readers get the reserve and step 0; a step held by a killed worker goes
// to another; a writer killed mid-append leaves nothing; bad input
// changes nothing.
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <map>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "absl/time/time.h"
#include "gtest/gtest.h"
#include "h5depot/client.h"
#include "h5depot/testing/hdf5_images.h"
#include "h5depot/testing/server_paths.h"
#include "h5depot/testing/server_process.h"
#include "h5depot/testing/subprocess.h"
#include "h5depot/testing/temp_dir.h"

extern char** environ;

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

// Longer than any step here should take to arrive: a Next that ends by
// it means a step was missed.
constexpr absl::Duration kLongWait = absl::Seconds(60);

// Distinct images of 4 KiB to 1 MiB of data; step N carries
// Images()[N % size].
const std::vector<std::string>& Images() {
  static const auto* const images = [] {
    auto* made = new std::vector<std::string>;
    for (uint32_t i = 0; i < 16; ++i) {
      const size_t data_bytes = i == 7 ? (size_t{1} << 20) : 4096 + 256 * i;
      made->push_back(MakeHdf5Image(data_bytes, i));
    }
    return made;
  }();
  return *images;
}

const std::string& ImageOf(uint64_t step) {
  return Images()[step % Images().size()];
}

std::string BytesOf(const StreamStep& step) {
  return std::string(reinterpret_cast<const char*>(step.image.buffer.data()),
                     step.image.buffer.size());
}

class StreamTest : public ::testing::TestWithParam<ServerPath> {
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

  std::string Target() const { return TargetFor(*server_, GetParam()); }

  std::unique_ptr<Client> NewClient() {
    auto client = Client::Connect(Target());
    EXPECT_TRUE(client.ok()) << client.status();
    return client.ok() ? *std::move(client) : nullptr;
  }

  void Create(const std::string& stream, const StreamPolicy& policy) {
    absl::StatusOr<StreamInfo> info = client_->CreateStream(stream, policy);
    ASSERT_TRUE(info.ok()) << info.status();
  }

  uint64_t Append(const std::string& stream, uint64_t step_image) {
    const std::string& image = ImageOf(step_image);
    absl::StatusOr<AppendedStep> appended =
        client_->Append(stream, image.data(), image.size());
    EXPECT_TRUE(appended.ok()) << appended.status();
    return appended.ok() ? appended->step : ~uint64_t{0};
  }

  // Takes and acknowledges the next step of `group`, failing the test on
  // an error; returns it.
  StreamStep TakeAndAck(Client& client, const std::string& stream,
                        const std::string& group, NextOptions options = {}) {
    if (options.wait == absl::ZeroDuration()) options.wait = kLongWait;
    absl::StatusOr<StreamStep> step = client.Next(stream, group, options);
    EXPECT_TRUE(step.ok()) << step.status();
    if (!step.ok()) return StreamStep{};
    EXPECT_TRUE(client.Ack(stream, group, step->step, step->consumer).ok());
    return *std::move(step);
  }

  StreamInfo Stat(const std::string& stream) {
    absl::StatusOr<StreamInfo> info = client_->StatStream(stream);
    EXPECT_TRUE(info.ok()) << info.status();
    return info.ok() ? *info : StreamInfo{};
  }

  std::unique_ptr<ServerProcess> server_;
  std::unique_ptr<Client> client_;
};

// One writer, three groups reading at once, one of them with three
// workers: every step reaches every group exactly once, each member sees
// its steps in order, and every step's bytes are the ones appended. The
// queue (8 steps) is far shorter than the stream, so the writer is held
// back by the slowest group throughout.
TEST_P(StreamTest, EveryStepReachesEveryGroupOnceInOrder) {
  const std::string stream = "detector/frames";
  // The Unix socket, the same-host path, carries the long run.
  const uint64_t kSteps = GetParam() == ServerPath::kLaneUnix ? 10000 : 2000;
  StreamPolicy policy;
  policy.max_steps = 8;
  Create(stream, policy);

  struct Member {
    std::string group;
    std::vector<uint64_t> steps;
    std::string error;
  };
  std::vector<Member> members = {{"archive", {}, ""},
                                 {"monitor", {}, ""},
                                 {"workers", {}, ""},
                                 {"workers", {}, ""},
                                 {"workers", {}, ""}};
  // Every group exists before the first append (a group starts at the
  // oldest step kept when it is made): a reader thread slow to connect
  // must not find the first steps freed by the other groups.
  for (const char* group : {"archive", "monitor", "workers"}) {
    EXPECT_TRUE(absl::IsDeadlineExceeded(
        client_->Next(stream, group, NextOptions{}).status()));
  }
  std::vector<std::thread> readers;
  for (Member& member : members) {
    readers.emplace_back([&, this] {
      std::unique_ptr<Client> client = NewClient();
      if (client == nullptr) return;
      NextOptions options;
      options.wait = kLongWait;
      for (;;) {
        absl::StatusOr<StreamStep> step =
            client->Next(stream, member.group, options);
        if (absl::IsOutOfRange(step.status())) return;  // finished
        if (!step.ok()) {
          member.error = step.status().ToString();
          return;
        }
        if (BytesOf(*step) != ImageOf(step->step)) {
          member.error = absl::StrCat("step ", step->step, " has other bytes");
          return;
        }
        if (!step->lost.empty()) {
          member.error = absl::StrCat("lost steps from ", step->lost[0].first);
          return;
        }
        member.steps.push_back(step->step);
        absl::Status acked =
            client->Ack(stream, member.group, step->step, step->consumer);
        if (!acked.ok()) {
          member.error = acked.ToString();
          return;
        }
      }
    });
  }
  for (uint64_t i = 0; i < kSteps; ++i) {
    const uint64_t step = Append(stream, i);
    EXPECT_EQ(step, i);
    if (step != i) {
      const StreamInfo info = Stat(stream);
      for (const StreamGroupInfo& g : info.groups) {
        ADD_FAILURE() << g.name << " next=" << g.next_step
                      << " acked_below=" << g.acked_below
                      << " leased=" << g.leased_steps
                      << " waiting=" << g.waiting_steps << " appended "
                      << info.appended_steps << " kept " << info.kept_steps;
      }
      break;
    }
  }
  // Finished whatever happened, so that every reader ends.
  ASSERT_TRUE(client_->FinishStream(stream).ok());
  for (std::thread& reader : readers) reader.join();

  std::map<std::string, std::vector<uint64_t>> by_group;
  for (const Member& member : members) {
    EXPECT_EQ(member.error, "") << member.group;
    EXPECT_TRUE(std::is_sorted(member.steps.begin(), member.steps.end()))
        << member.group;
    auto& all = by_group[member.group];
    all.insert(all.end(), member.steps.begin(), member.steps.end());
  }
  std::vector<uint64_t> every(kSteps);
  for (uint64_t i = 0; i < kSteps; ++i) every[i] = i;
  for (auto& [group, steps] : by_group) {
    std::sort(steps.begin(), steps.end());
    EXPECT_EQ(steps, every) << group;
  }
  // Acknowledged by every group: nothing is kept.
  const StreamInfo info = Stat(stream);
  EXPECT_EQ(info.kept_steps, 0u);
  EXPECT_EQ(info.kept_bytes, 0u);
  EXPECT_TRUE(info.finished);
}

// With `block`, a writer far faster than its reader is held to the
// queue's limit: the stream never holds more than max_steps unread steps,
// and the server's memory stays within them (measured at every read).
TEST_P(StreamTest, BlockingQueueKeepsMemoryWithinItsLimit) {
  const std::string stream = "sim/steps";
  StreamPolicy policy;
  policy.max_steps = 4;
  policy.when_full = StreamPolicy::WhenFull::kBlock;
  Create(stream, policy);
  // Makes the group, so that steps are queued for it.
  NextOptions at_once;
  EXPECT_TRUE(absl::IsDeadlineExceeded(
      client_->Next(stream, "slow", at_once).status()));

  const std::string& big = Images()[7];  // 1 MiB of data
  constexpr int kSteps = 24;
  std::atomic<int> appended{0};
  std::thread writer([&] {
    std::unique_ptr<Client> client = NewClient();
    for (int i = 0; i < kSteps; ++i) {
      absl::StatusOr<AppendedStep> step =
          client->Append(stream, big.data(), big.size());
      ASSERT_TRUE(step.ok()) << step.status();
      appended.fetch_add(1);
    }
  });
  uint64_t most_reserved = 0;
  for (int i = 0; i < kSteps; ++i) {
    const StreamInfo info = Stat(stream);
    EXPECT_LE(info.queued_steps, 4u);
    EXPECT_LE(info.kept_bytes, 4 * big.size());
    absl::StatusOr<ServerLimits> limits = client_->GetLimits();
    ASSERT_TRUE(limits.ok());
    most_reserved = std::max(most_reserved, limits->reserved_bytes);
    const StreamStep step = TakeAndAck(*client_, stream, "slow");
    EXPECT_EQ(step.step, static_cast<uint64_t>(i));
  }
  writer.join();
  EXPECT_EQ(appended.load(), kSteps);
  // Four queued steps and one append under way, at most.
  EXPECT_LE(most_reserved, 5 * big.size()) << most_reserved;
}

// With `discard-oldest` the writer never waits; a reader that fell behind
// is told exactly which steps it lost, and gets the ones kept.
TEST_P(StreamTest, DiscardOldestTellsTheReaderExactlyWhatItLost) {
  const std::string stream = "frames/lossy";
  StreamPolicy policy;
  policy.max_steps = 3;
  policy.when_full = StreamPolicy::WhenFull::kDiscardOldest;
  Create(stream, policy);
  EXPECT_TRUE(absl::IsDeadlineExceeded(
      client_->Next(stream, "viewer", NextOptions{}).status()));
  for (uint64_t i = 0; i < 10; ++i) ASSERT_EQ(Append(stream, i), i);

  const StreamStep first = TakeAndAck(*client_, stream, "viewer");
  EXPECT_EQ(first.step, 7u);
  ASSERT_EQ(first.lost.size(), 1u);
  EXPECT_EQ(first.lost[0].first, 0u);
  EXPECT_EQ(first.lost[0].last, 6u);
  EXPECT_EQ(BytesOf(first), ImageOf(7));
  const StreamStep second = TakeAndAck(*client_, stream, "viewer");
  EXPECT_EQ(second.step, 8u);
  EXPECT_TRUE(second.lost.empty());
  EXPECT_EQ(TakeAndAck(*client_, stream, "viewer").step, 9u);
  EXPECT_LE(Stat(stream).kept_steps, 3u);
}

// `refuse` turns a full queue into RESOURCE_EXHAUSTED at once, and
// changes nothing.
TEST_P(StreamTest, RefusingQueueRefusesTheAppendAndKeepsWhatItHad) {
  const std::string stream = "packets";
  StreamPolicy policy;
  policy.max_steps = 2;
  policy.when_full = StreamPolicy::WhenFull::kRefuse;
  Create(stream, policy);
  Append(stream, 0);
  Append(stream, 1);
  const std::string& image = ImageOf(2);
  absl::StatusOr<AppendedStep> refused =
      client_->Append(stream, image.data(), image.size());
  EXPECT_TRUE(absl::IsResourceExhausted(refused.status())) << refused.status();
  EXPECT_EQ(Stat(stream).appended_steps, 2u);
  EXPECT_EQ(TakeAndAck(*client_, stream, "g").step, 0u);
}

// A group that joins late gets step 0 (keep_first_step) and the reserved
// steps, then whatever comes next; one joining at the latest step gets
// step 0 and that one.
TEST_P(StreamTest, LateGroupsGetTheReserveAndTheFirstStep) {
  const std::string stream = "run/late";
  StreamPolicy policy;
  policy.max_steps = 4;
  policy.reserve_steps = 2;
  policy.keep_first_step = true;
  Create(stream, policy);
  EXPECT_TRUE(absl::IsDeadlineExceeded(
      client_->Next(stream, "early", NextOptions{}).status()));
  for (uint64_t i = 0; i < 10; ++i) {
    ASSERT_EQ(Append(stream, i), i);
    EXPECT_EQ(TakeAndAck(*client_, stream, "early").step, i);
  }
  // Kept: step 0 and the reserve (8, 9).
  const StreamInfo info = Stat(stream);
  EXPECT_EQ(info.kept_steps, 3u);
  EXPECT_EQ(info.queued_steps, 0u);

  std::vector<uint64_t> late;
  for (int i = 0; i < 3; ++i) {
    late.push_back(TakeAndAck(*client_, stream, "late").step);
  }
  EXPECT_EQ(late, (std::vector<uint64_t>{0, 8, 9}));
  NextOptions latest;
  latest.start = NextOptions::Start::kLatest;
  std::vector<uint64_t> newest;
  for (int i = 0; i < 2; ++i) {
    newest.push_back(TakeAndAck(*client_, stream, "newest", latest).step);
  }
  EXPECT_EQ(newest, (std::vector<uint64_t>{0, 9}));
  EXPECT_EQ(BytesOf(TakeAndAck(*client_, stream, "third")), ImageOf(0));
}

// A worker killed (SIGKILL) while it holds a step: once its lease runs
// out the step goes to another member of the group, which acknowledges
// it; the dead worker's late acknowledgement would be refused.
TEST_P(StreamTest, StepHeldByAKilledWorkerGoesToAnother) {
  const std::string stream = "jobs";
  Create(stream, StreamPolicy{});
  Append(stream, 0);
  Append(stream, 1);

  int out[2];
  ASSERT_EQ(pipe(out), 0);
  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  posix_spawn_file_actions_adddup2(&actions, out[1], STDOUT_FILENO);
  posix_spawn_file_actions_addclose(&actions, out[0]);
  std::string tool = STREAM_WORKER_PATH;
  std::string target = Target();
  std::string group = "pool";
  std::string lease_ms = "1000";
  char* argv[] = {
      tool.data(),  target.data(),   const_cast<char*>(stream.c_str()),
      group.data(), lease_ms.data(), nullptr};
  pid_t pid = 0;
  ASSERT_EQ(posix_spawn(&pid, tool.c_str(), &actions, nullptr, argv, environ),
            0);
  posix_spawn_file_actions_destroy(&actions);
  close(out[1]);
  char line[64] = {};
  FILE* from_worker = fdopen(out[0], "r");
  ASSERT_NE(std::fgets(line, sizeof(line), from_worker), nullptr);
  EXPECT_STREQ(line, "took 0\n");
  kill(pid, SIGKILL);
  int status = 0;
  ASSERT_EQ(waitpid(pid, &status, 0), pid);
  std::fclose(from_worker);

  // The live worker gets step 1 at once, then step 0 when the dead one's
  // lease ends.
  EXPECT_EQ(TakeAndAck(*client_, stream, group).step, 1u);
  const StreamStep again = TakeAndAck(*client_, stream, group);
  EXPECT_EQ(again.step, 0u);
  EXPECT_EQ(BytesOf(again), ImageOf(0));
  EXPECT_EQ(Stat(stream).kept_steps, 0u);
}

// A writer killed mid-append: no step appears, its place in the queue is
// given back, and the next append is step 0.
TEST_P(StreamTest, WriterKilledMidAppendLeavesNoPartialStep) {
  if (GetParam() != ServerPath::kGrpc && GetParam() != ServerPath::kLaneTcp) {
    GTEST_SKIP() << "the tool speaks gRPC over TCP";
  }
  const std::string stream = "half/written";
  StreamPolicy policy;
  policy.max_steps = 1;
  Create(stream, policy);
  int out[2];
  ASSERT_EQ(pipe(out), 0);
  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  posix_spawn_file_actions_adddup2(&actions, out[1], STDOUT_FILENO);
  posix_spawn_file_actions_addclose(&actions, out[0]);
  std::string tool = ABANDONED_PUSH_PATH;
  std::string target = server_->tcp_target();
  std::string append = "append";
  char* argv[] = {tool.data(), target.data(), const_cast<char*>(stream.c_str()),
                  append.data(), nullptr};
  pid_t pid = 0;
  ASSERT_EQ(posix_spawn(&pid, tool.c_str(), &actions, nullptr, argv, environ),
            0);
  posix_spawn_file_actions_destroy(&actions);
  close(out[1]);
  char line[64] = {};
  FILE* from_tool = fdopen(out[0], "r");
  ASSERT_NE(std::fgets(line, sizeof(line), from_tool), nullptr);
  EXPECT_STREQ(line, "streaming\n");
  kill(pid, SIGKILL);
  int status = 0;
  ASSERT_EQ(waitpid(pid, &status, 0), pid);
  std::fclose(from_tool);

  // The server learns of the death from the connection; the blocking
  // append below waits for the dead one's place in the queue.
  EXPECT_EQ(Append(stream, 3), 0u);
  const StreamInfo info = Stat(stream);
  EXPECT_EQ(info.appended_steps, 1u);
  EXPECT_EQ(info.kept_steps, 1u);
  EXPECT_EQ(BytesOf(TakeAndAck(*client_, stream, "g")), ImageOf(3));
}

// Readers see the end of a stream (OUT_OF_RANGE) distinctly from a wait
// that ran out (DEADLINE_EXCEEDED), and only after every step.
TEST_P(StreamTest, ReadersSeeTheEndAfterTheLastStep) {
  const std::string stream = "ending";
  Create(stream, StreamPolicy{});
  NextOptions briefly;
  briefly.wait = absl::Milliseconds(10);
  EXPECT_TRUE(
      absl::IsDeadlineExceeded(client_->Next(stream, "g", briefly).status()));
  Append(stream, 0);
  ASSERT_TRUE(client_->FinishStream(stream).ok());
  EXPECT_EQ(TakeAndAck(*client_, stream, "g").step, 0u);
  absl::StatusOr<StreamStep> end = client_->Next(stream, "g", briefly);
  EXPECT_TRUE(absl::IsOutOfRange(end.status())) << end.status();
  // A group that joins after the end gets what is kept, then the end.
  EXPECT_TRUE(
      absl::IsOutOfRange(client_->Next(stream, "after", briefly).status()));
}

// A reader's acknowledgement may ride on its request for the next step;
// one for a step it does not hold is refused, and then no step is taken.
TEST_P(StreamTest, TheNextRequestCarriesTheLastAcknowledgement) {
  const std::string stream = "riding";
  Create(stream, StreamPolicy{});
  for (uint64_t i = 0; i < 3; ++i) Append(stream, i);
  NextOptions options;
  options.wait = kLongWait;
  absl::StatusOr<StreamStep> first = client_->Next(stream, "g", options);
  ASSERT_TRUE(first.ok()) << first.status();
  options.ack_step = first->step;
  absl::StatusOr<StreamStep> second = client_->Next(stream, "g", options);
  ASSERT_TRUE(second.ok()) << second.status();
  EXPECT_EQ(second->step, 1u);
  EXPECT_EQ(BytesOf(*second), ImageOf(1));
  options.ack_step = 2;  // not held
  EXPECT_TRUE(
      absl::IsFailedPrecondition(client_->Next(stream, "g", options).status()));
  const StreamInfo info = Stat(stream);
  ASSERT_EQ(info.groups.size(), 1u);
  EXPECT_EQ(info.groups[0].acked_below, 1u);
  EXPECT_EQ(info.groups[0].next_step, 2u);
  EXPECT_EQ(info.groups[0].leased_steps, 1u);
}

// Bad input gets a clear error and changes nothing.
TEST_P(StreamTest, BadInputChangesNothing) {
  const std::string stream = "checked";
  StreamPolicy policy;
  policy.max_bytes = 64 << 10;
  Create(stream, policy);
  Append(stream, 0);

  const std::string not_hdf5(8192, 'x');
  absl::StatusOr<AppendedStep> bad =
      client_->Append(stream, not_hdf5.data(), not_hdf5.size());
  EXPECT_TRUE(absl::IsInvalidArgument(bad.status())) << bad.status();

  const std::string& big = Images()[7];  // over the queue's 64 KiB
  absl::StatusOr<AppendedStep> too_big =
      client_->Append(stream, big.data(), big.size());
  EXPECT_TRUE(absl::IsInvalidArgument(too_big.status())) << too_big.status();
  EXPECT_NE(too_big.status().message().find("queue limit"),
            std::string_view::npos)
      << too_big.status();

  StreamPolicy other = policy;
  other.max_steps = 3;
  EXPECT_TRUE(
      absl::IsAlreadyExists(client_->CreateStream(stream, other).status()));

  // Acknowledging a step this member does not hold.
  const StreamStep taken = TakeAndAck(*client_, stream, "g");
  EXPECT_EQ(taken.step, 0u);
  EXPECT_TRUE(absl::IsFailedPrecondition(
      client_->Ack(stream, "g", 0, taken.consumer)));  // twice
  EXPECT_TRUE(absl::IsFailedPrecondition(client_->Ack(stream, "g", 5)));
  EXPECT_TRUE(absl::IsNotFound(client_->Ack(stream, "nobody", 0)));
  EXPECT_TRUE(absl::IsNotFound(client_->Ack("no/such", "g", 0)));

  ASSERT_TRUE(client_->FinishStream(stream).ok());
  const std::string& image = ImageOf(1);
  absl::StatusOr<AppendedStep> late =
      client_->Append(stream, image.data(), image.size());
  EXPECT_TRUE(absl::IsFailedPrecondition(late.status())) << late.status();

  // A step id is not an image id a push or delete may use.
  EXPECT_TRUE(absl::IsInvalidArgument(
      client_->Push("checked@5", image.data(), image.size()).status()));
  EXPECT_TRUE(absl::IsInvalidArgument(client_->Delete("checked@0")));

  const StreamInfo info = Stat(stream);
  EXPECT_EQ(info.appended_steps, 1u);
  EXPECT_EQ(info.kept_steps, 0u);
}

// Steps are images: fetched by their id while the stream keeps them, and
// over the Unix socket handed over as the server's own memory.
TEST_P(StreamTest, StepsAreImagesReadableByTheirIds) {
  const std::string stream = "as/images";
  Create(stream, StreamPolicy{});
  const std::string& big = Images()[7];
  absl::StatusOr<AppendedStep> appended =
      client_->Append(stream, big.data(), big.size());
  ASSERT_TRUE(appended.ok()) << appended.status();
  EXPECT_EQ(appended->info.image_id, "as/images@0");
  absl::StatusOr<FetchedImage> fetched = client_->Fetch("as/images@0");
  ASSERT_TRUE(fetched.ok()) << fetched.status();
  EXPECT_EQ(fetched->info.generation, appended->info.generation);
  NextOptions options;
  options.wait = kLongWait;
  absl::StatusOr<StreamStep> step = client_->Next(stream, "g", options);
  ASSERT_TRUE(step.ok()) << step.status();
  EXPECT_EQ(BytesOf(*step), big);
  EXPECT_EQ(step->image.buffer.is_mapped(),
            GetParam() == ServerPath::kLaneUnix);
}

// The command line: create, append files, take steps into files, finish.
TEST_P(StreamTest, CommandLineAppendsAndTakesSteps) {
  absl::StatusOr<testing::TempDir> made = testing::TempDir::Create();
  ASSERT_TRUE(made.ok()) << made.status();
  const testing::TempDir& dir = *made;
  const std::string in = dir.path() + "/in.h5";
  {
    FILE* file = std::fopen(in.c_str(), "wb");
    ASSERT_NE(file, nullptr);
    ASSERT_EQ(std::fwrite(ImageOf(1).data(), 1, ImageOf(1).size(), file),
              ImageOf(1).size());
    std::fclose(file);
  }
  const std::string server = "--server=" + Target();
  auto run = [&](std::vector<std::string> args) {
    args.insert(args.begin(), {testing::H5depotCliPath(), server});
    return testing::RunCommand(args);
  };
  testing::CommandResult created =
      run({"stream", "create", "cli/s", "--max-steps", "4"});
  ASSERT_EQ(created.exit_code, 0) << created.stderr_text;
  for (int i = 0; i < 2; ++i) {
    testing::CommandResult appended = run({"stream", "append", "cli/s", in});
    ASSERT_EQ(appended.exit_code, 0) << appended.stderr_text;
    EXPECT_NE(appended.stdout_text.find(absl::StrCat("step:        ", i)),
              std::string::npos)
        << appended.stdout_text;
  }
  // A third from stdin, as a producer piping its file in would.
  testing::CommandOptions from_stdin;
  from_stdin.stdin_data = ImageOf(1);
  testing::CommandResult piped = testing::RunCommand(
      {testing::H5depotCliPath(), server, "stream", "append", "cli/s", "-"},
      from_stdin);
  ASSERT_EQ(piped.exit_code, 0) << piped.stderr_text;
  EXPECT_NE(piped.stdout_text.find("step:        2"), std::string::npos)
      << piped.stdout_text;
  // Something that is not HDF5 is refused, and no step is taken for it.
  from_stdin.stdin_data = "not an HDF5 file";
  testing::CommandResult refused = testing::RunCommand(
      {testing::H5depotCliPath(), server, "stream", "append", "cli/s", "-"},
      from_stdin);
  EXPECT_NE(refused.exit_code, 0);
  ASSERT_EQ(run({"stream", "finish", "cli/s"}).exit_code, 0);
  for (int i = 0; i < 3; ++i) {
    const std::string out = absl::StrCat(dir.path(), "/out", i, ".h5");
    testing::CommandResult next =
        run({"stream", "next", "cli/s", "--group", "g", "-o", out});
    ASSERT_EQ(next.exit_code, 0) << next.stderr_text;
    EXPECT_NE(next.stdout_text.find(absl::StrCat("step:        ", i)),
              std::string::npos);
    testing::CommandResult same = testing::RunCommand({"cmp", in, out});
    EXPECT_EQ(same.exit_code, 0) << same.stdout_text;
  }
  testing::CommandResult end =
      run({"stream", "next", "cli/s", "--group", "g", "-o", dir.path() + "/x"});
  EXPECT_EQ(end.exit_code, 10) << end.stderr_text;
  testing::CommandResult empty =
      run({"stream", "next", "cli/none", "--group", "g", "--wait", "10ms", "-o",
           dir.path() + "/y"});
  EXPECT_EQ(empty.exit_code, 6) << empty.stderr_text;
  EXPECT_EQ(run({"stream", "delete", "cli/s", "--group", "g"}).exit_code, 0);
  EXPECT_EQ(run({"stream", "delete", "cli/s", "--group", "g"}).exit_code, 3);
  EXPECT_EQ(run({"stream", "delete", "cli/s"}).exit_code, 0);
  testing::CommandResult gone = run({"stream", "stat", "cli/s"});
  EXPECT_EQ(gone.exit_code, 3) << gone.stdout_text;
  EXPECT_EQ(run({"stream", "delete", "cli/s"}).exit_code, 3);
}

// A copy of another server's step (a cluster's replica) is appended
// under that step's number: the steps this server never got are lost to
// its groups, which are told exactly which, and a copy of a step it has
// is refused, changing nothing.
TEST_P(StreamTest, ACopiedStepKeepsItsNumberAndTellsTheGroupsWhatWasMissed) {
  const std::string stream = "copied";
  EXPECT_TRUE(absl::IsDeadlineExceeded(
      client_->Next(stream, "g", NextOptions{}).status()));
  Append(stream, 0);
  Append(stream, 1);
  AppendOptions copy;
  copy.replica_step = 5;
  const std::string& image = ImageOf(5);
  absl::StatusOr<AppendedStep> copied =
      client_->Append(stream, image.data(), image.size(), copy);
  ASSERT_TRUE(copied.ok()) << copied.status();
  EXPECT_EQ(copied->step, 5u);
  EXPECT_EQ(copied->info.image_id, "copied@5");
  copy.replica_step = 3;
  EXPECT_EQ(
      client_->Append(stream, image.data(), image.size(), copy).status().code(),
      absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(Stat(stream).appended_steps, 6u);
  EXPECT_EQ(Append(stream, 6), 6u);  // numbered on from the copy

  // The loss is told with the next step the group takes after it was
  // known, as discard-oldest's are.
  std::vector<uint64_t> steps;
  std::vector<StepRange> lost;
  for (int i = 0; i < 4; ++i) {
    const StreamStep taken = TakeAndAck(*client_, stream, "g");
    steps.push_back(taken.step);
    lost.insert(lost.end(), taken.lost.begin(), taken.lost.end());
    if (taken.step == 5) {
      EXPECT_EQ(BytesOf(taken), ImageOf(5));
    }
  }
  EXPECT_EQ(steps, (std::vector<uint64_t>{0, 1, 5, 6}));
  ASSERT_EQ(lost.size(), 1u);
  EXPECT_EQ(lost[0].first, 2u);
  EXPECT_EQ(lost[0].last, 4u);
  EXPECT_EQ(Stat(stream).kept_steps, 0u);
}

// Deleting a stream frees its steps at once (the server's memory goes
// back to what it was), ends the wait of a reader on it with NOT_FOUND,
// and a later append starts a new stream of that name at step 0.
TEST_P(StreamTest, DeletingAStreamFreesItsStepsAndEndsItsWaits) {
  const std::string stream = "doomed";
  Create(stream, StreamPolicy{});
  absl::StatusOr<ServerLimits> before = client_->GetLimits();
  ASSERT_TRUE(before.ok()) << before.status();
  NextOptions at_once;
  EXPECT_TRUE(absl::IsDeadlineExceeded(
      client_->Next(stream, "keeper", at_once).status()));
  for (uint64_t i = 0; i < 3; ++i) ASSERT_EQ(Append(stream, i), i);
  EXPECT_EQ(Stat(stream).kept_steps, 3u);

  // A reader of another group, done with every step, waits for a fourth.
  absl::Notification took_every_step;
  std::atomic<bool> reader_done{false};
  absl::Status reader_status;
  std::thread reader([&] {
    std::unique_ptr<Client> client = NewClient();
    for (uint64_t i = 0; i < 3; ++i) TakeAndAck(*client, stream, "waiter");
    took_every_step.Notify();
    NextOptions options;
    options.wait = kLongWait;
    reader_status = client->Next(stream, "waiter", options).status();
    reader_done.store(true);
  });
  ASSERT_TRUE(took_every_step.WaitForNotificationWithTimeout(kLongWait));
  // Until the reader has its answer: deleting again finds nothing, or a
  // stream its late request named, whose wait it ends the same way.
  ASSERT_TRUE(client_->DeleteStream(stream).ok());
  const absl::Time deadline = absl::Now() + kLongWait;
  while (!reader_done.load() && absl::Now() < deadline) {
    const absl::Status again = client_->DeleteStream(stream);
    EXPECT_TRUE(again.ok() || absl::IsNotFound(again)) << again;
  }
  reader.join();
  EXPECT_TRUE(absl::IsNotFound(reader_status)) << reader_status;
  EXPECT_NE(reader_status.message().find("deleted"), std::string::npos)
      << reader_status;

  EXPECT_TRUE(absl::IsNotFound(client_->StatStream(stream).status()));
  EXPECT_TRUE(absl::IsNotFound(client_->Fetch(stream + "@0").status()));
  absl::StatusOr<ServerLimits> after = client_->GetLimits();
  ASSERT_TRUE(after.ok()) << after.status();
  EXPECT_EQ(after->reserved_bytes, before->reserved_bytes);
  EXPECT_TRUE(absl::IsNotFound(client_->DeleteStream(stream)));
  EXPECT_EQ(Append(stream, 5), 0u);
  EXPECT_EQ(BytesOf(TakeAndAck(*client_, stream, "keeper")), ImageOf(5));
}

// Deleting a group frees the steps only it still needed and forgets its
// position; the other groups keep theirs. A member that asks again makes
// a new group. Unknown streams and groups are NOT_FOUND.
TEST_P(StreamTest, DeletingAGroupFreesTheStepsOnlyItNeeded) {
  const std::string stream = "shared";
  Create(stream, StreamPolicy{});
  NextOptions at_once;
  for (const char* group : {"fast", "stalled"}) {
    EXPECT_TRUE(absl::IsDeadlineExceeded(
        client_->Next(stream, group, at_once).status()));
  }
  for (uint64_t i = 0; i < 3; ++i) Append(stream, i);
  for (uint64_t i = 0; i < 3; ++i) TakeAndAck(*client_, stream, "fast");
  EXPECT_EQ(Stat(stream).kept_steps, 3u);  // "stalled" has had none

  ASSERT_TRUE(client_->DeleteStreamGroup(stream, "stalled").ok());
  const StreamInfo info = Stat(stream);
  EXPECT_EQ(info.kept_steps, 0u);
  ASSERT_EQ(info.groups.size(), 1u);
  EXPECT_EQ(info.groups[0].name, "fast");
  EXPECT_EQ(info.groups[0].acked_below, 3u);
  // Asked again, "stalled" is new, at the oldest step kept: none yet.
  EXPECT_TRUE(absl::IsDeadlineExceeded(
      client_->Next(stream, "stalled", at_once).status()));
  Append(stream, 3);
  EXPECT_EQ(TakeAndAck(*client_, stream, "stalled").step, 3u);
  EXPECT_EQ(TakeAndAck(*client_, stream, "fast").step, 3u);

  EXPECT_TRUE(
      absl::IsNotFound(client_->DeleteStreamGroup(stream, "never-was")));
  EXPECT_TRUE(absl::IsNotFound(client_->DeleteStreamGroup("no-such", "g")));
  EXPECT_TRUE(absl::IsInvalidArgument(client_->DeleteStreamGroup(stream, "")));
  EXPECT_EQ(Stat(stream).groups.size(), 2u);
}

INSTANTIATE_TEST_SUITE_P(Paths, StreamTest, AllServerPaths(), ServerPathName);

}  // namespace
}  // namespace h5depot
