// Step buffers (Client::BeginStep, CommitStep; docs/STREAMS.md, "Step
// buffers"), against a real h5depotd over every transport, with the writer
// a process of its own: every step arrives intact and once, although the
// writer fills the same few buffers again and again, even while readers
// hold steps; on the server's host a step is the writer's memory, mapped
// read-only; elsewhere its bytes are sent, as Append's are.
#include <fcntl.h>
#include <sys/uio.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "absl/time/time.h"
#include "gtest/gtest.h"
#include "h5depot/client.h"
#include "h5depot/file_image.h"
#include "h5depot/h5depot.h"
#include "h5depot/hdf5_transfer.h"
#include "h5depot/internal/lane_protocol.h"
#include "h5depot/internal/lane_socket.h"
#include "h5depot/internal/memfd.h"
#include "h5depot/testing/hdf5_datasets.h"
#include "h5depot/testing/hdf5_images.h"
#include "h5depot/testing/server_paths.h"
#include "h5depot/testing/server_process.h"
#include "h5depot/testing/subprocess.h"
#include "h5depot/testing/temp_dir.h"

namespace h5depot {
namespace {

using ::h5depot::testing::AllServerPaths;
using ::h5depot::testing::CommandResult;
using ::h5depot::testing::MemfdsOf;
using ::h5depot::testing::RunCommand;
using ::h5depot::testing::ServerOptionsFor;
using ::h5depot::testing::ServerPath;
using ::h5depot::testing::ServerPathName;
using ::h5depot::testing::ServerProcess;
using ::h5depot::testing::StepBufferImage;
using ::h5depot::testing::TargetFor;

constexpr absl::Duration kLongWait = absl::Seconds(60);

std::string BytesOf(const StreamStep& step) {
  return std::string(static_cast<const char*>(step.image.buffer.data()),
                     step.image.buffer.size());
}

class StepBufferTest : public ::testing::TestWithParam<ServerPath> {
 protected:
  void SetUp() override {
    auto server = ServerProcess::Start(ServerOptionsFor(GetParam()));
    ASSERT_TRUE(server.ok()) << server.status();
    server_ = *std::move(server);
    auto client = Client::Connect(Target());
    ASSERT_TRUE(client.ok()) << client.status();
    client_ = *std::move(client);
  }

  std::string Target() const { return TargetFor(*server_, GetParam()); }

  // The next step of `stream` for group "g", waited for; a step built in
  // a step buffer is read-only where it is the writer's memory, on the
  // server's host.
  absl::StatusOr<StreamStep> NextOfGroup(const std::string& stream) {
    NextOptions options;
    options.wait = kLongWait;
    absl::StatusOr<StreamStep> step = client_->Next(stream, "g", options);
    if (step.ok()) {
      EXPECT_EQ(step->image.buffer.is_read_only(),
                GetParam() == ServerPath::kLaneUnix);
    }
    return step;
  }

  std::unique_ptr<ServerProcess> server_;
  std::unique_ptr<Client> client_;
};

// The writer, another process, builds 300 steps in at most 16 buffers
// while this reader holds four steps at a time (four members of one
// group) and checks them only after taking all four: a buffer filled
// again while a reader held its step would show here as wrong bytes.
TEST_P(StepBufferTest, EveryStepArrivesIntactWhileTheWriterReusesBuffers) {
  const std::string stream = "frames";
  ASSERT_TRUE(client_->CreateStream(stream, StreamPolicy{}).ok());
  constexpr uint64_t kSteps = 300;
  CommandResult writer;
  std::thread writing([&] {
    writer = RunCommand(
        {STEP_BUFFER_WRITER_PATH, Target(), stream, absl::StrCat(kSteps)});
  });

  std::set<uint64_t> seen;
  bool finished = false;
  while (!finished) {
    std::vector<StreamStep> held;
    for (int member = 0; member < 4 && !finished; ++member) {
      NextOptions options;
      options.wait = kLongWait;
      options.consumer = absl::StrCat("member-", member);
      absl::StatusOr<StreamStep> step = client_->Next(stream, "g", options);
      if (absl::IsOutOfRange(step.status())) {
        finished = true;
        break;
      }
      ASSERT_TRUE(step.ok()) << step.status();
      held.push_back(*std::move(step));
    }
    for (const StreamStep& step : held) {
      EXPECT_EQ(BytesOf(step), StepBufferImage(step.step))
          << "step " << step.step;
      EXPECT_TRUE(seen.insert(step.step).second) << "step " << step.step;
      EXPECT_EQ(step.image.buffer.is_read_only(),
                GetParam() == ServerPath::kLaneUnix);
      ASSERT_TRUE(client_->Ack(stream, "g", step.step, step.consumer).ok());
    }
  }
  writing.join();
  ASSERT_EQ(writer.exit_code, 0) << writer.stderr_text;
  EXPECT_EQ(seen.size(), kSteps);
  if (seen.size() == kSteps) {
    EXPECT_EQ(*seen.rbegin(), kSteps - 1);
  }
  // The buffers were reused: never more than a client keeps.
  int buffers = -1;
  ASSERT_EQ(std::sscanf(writer.stdout_text.c_str(), "buffers %d", &buffers), 1)
      << writer.stdout_text;
  EXPECT_GE(buffers, 1);
  EXPECT_LE(buffers, 16);
  // Every step freed, and with it every hold on the writer's buffers.
  absl::StatusOr<StreamInfo> info = client_->StatStream(stream);
  ASSERT_TRUE(info.ok()) << info.status();
  EXPECT_EQ(info->kept_steps, 0u);
}

// A step from a step buffer is read-only on the writer's host: Release()
// hands over a copy, which may be written.
TEST_P(StepBufferTest, ATakenStepCopiesOutOfItsReadOnlyBuffer) {
  const std::string stream = "copies";
  const std::string image = StepBufferImage(1);
  absl::StatusOr<StepBuffer> buffer = client_->BeginStep(stream, image.size());
  ASSERT_TRUE(buffer.ok()) << buffer.status();
  std::memcpy(buffer->data(), image.data(), image.size());
  absl::StatusOr<AppendedStep> appended =
      client_->CommitStep(*std::move(buffer));
  ASSERT_TRUE(appended.ok()) << appended.status();
  EXPECT_EQ(appended->step, 0u);

  absl::StatusOr<StreamStep> step = NextOfGroup(stream);
  ASSERT_TRUE(step.ok()) << step.status();
  const size_t size = step->image.buffer.size();
  auto* copy = static_cast<char*>(step->image.buffer.Release());
  ASSERT_NE(copy, nullptr);
  EXPECT_EQ(std::string(copy, size), image);
  copy[size - 1] ^= 1;  // the copy is this process's own
  std::free(copy);
}

// Bad use changes nothing: an empty step, a buffer moved from, and a step
// that is not HDF5, which the server refuses without appending anything.
TEST_P(StepBufferTest, BadStepsAreRefusedAndChangeNothing) {
  const std::string stream = "refusals";
  ASSERT_TRUE(client_->CreateStream(stream, StreamPolicy{}).ok());
  EXPECT_TRUE(absl::IsInvalidArgument(client_->BeginStep(stream, 0).status()));

  absl::StatusOr<StepBuffer> buffer = client_->BeginStep(stream, 1 << 20);
  ASSERT_TRUE(buffer.ok()) << buffer.status();
  std::memset(buffer->data(), 'x', buffer->size());
  StepBuffer moved = *std::move(buffer);
  EXPECT_TRUE(absl::IsInvalidArgument(
      client_->CommitStep(*std::move(buffer)).status()));
  // Only the Client that lent a buffer commits it.
  absl::StatusOr<std::unique_ptr<Client>> other = Client::Connect(Target());
  ASSERT_TRUE(other.ok()) << other.status();
  absl::StatusOr<StepBuffer> others = (*other)->BeginStep(stream, 4096);
  ASSERT_TRUE(others.ok()) << others.status();
  EXPECT_TRUE(absl::IsInvalidArgument(
      client_->CommitStep(*std::move(others)).status()));
  EXPECT_TRUE(
      absl::IsInvalidArgument(client_->CommitStep(std::move(moved)).status()));

  absl::StatusOr<StreamInfo> info = client_->StatStream(stream);
  ASSERT_TRUE(info.ok()) << info.status();
  EXPECT_EQ(info->appended_steps, 0u);
  EXPECT_EQ(info->kept_steps, 0u);

  // The refused buffer is free again at once: a good step goes next.
  const std::string image = StepBufferImage(2);
  absl::StatusOr<StepBuffer> next = client_->BeginStep(stream, image.size());
  ASSERT_TRUE(next.ok()) << next.status();
  std::memcpy(next->data(), image.data(), image.size());
  absl::StatusOr<AppendedStep> appended = client_->CommitStep(*std::move(next));
  ASSERT_TRUE(appended.ok()) << appended.status();
  EXPECT_EQ(appended->step, 0u);
}

// An open file's image copied by HDF5 straight into a step buffer
// (AppendFileImageInStepBuffer, and the C API's
// h5depot_stream_append_file_buffered): each step is the file as it was
// when appended, read-only writer's memory on the server's host, and the
// file stays open and the writer's own. Something that is not a file is
// refused and appends nothing.
TEST_P(StepBufferTest, AnOpenFilesImageIsCopiedStraightIntoAStepBuffer) {
  const std::string stream = "files";
  absl::StatusOr<testing::TempDir> dir = testing::TempDir::Create();
  ASSERT_TRUE(dir.ok()) << dir.status();
  const hid_t file = H5Fcreate(dir->File("frames.h5").c_str(), H5F_ACC_TRUNC,
                               H5P_DEFAULT, H5P_DEFAULT);
  ASSERT_GE(file, 0);
  // 4 MiB a step: handed over on the server's host.
  const std::vector<double> first(512 * 1024, 1.5);
  const std::vector<double> second(512 * 1024, -2.5);
  ASSERT_TRUE(testing::WriteDataset(file, "/values", first));
  absl::StatusOr<AppendedStep> appended =
      AppendFileImageInStepBuffer(*client_, stream, file);
  ASSERT_TRUE(appended.ok()) << appended.status();
  EXPECT_EQ(appended->step, 0u);
  // The image went through one of this client's step buffers, which on
  // the server's host the server now holds too.
  EXPECT_GE(MemfdsOf(getpid(), "h5depot-step-buffer"), 1);
  EXPECT_EQ(MemfdsOf(server_->pid(), "h5depot-step-buffer") >= 1,
            GetParam() == ServerPath::kLaneUnix);
  ASSERT_TRUE(testing::WriteDataset(file, "/values", second));
  // The C API's form of the same call.
  h5depot_client* c_client = h5depot_connect(Target().c_str());
  ASSERT_NE(c_client, nullptr) << h5depot_errmsg();
  uint64_t second_step = 0;
  EXPECT_EQ(h5depot_stream_append_file_buffered(c_client, stream.c_str(), file,
                                                -1, &second_step),
            0)
      << h5depot_errmsg();
  EXPECT_EQ(second_step, 1u);
  h5depot_disconnect(c_client);
  EXPECT_TRUE(absl::IsInvalidArgument(
      AppendFileImageInStepBuffer(*client_, stream, H5P_DEFAULT).status()));
  absl::StatusOr<StreamInfo> info = client_->StatStream(stream);
  ASSERT_TRUE(info.ok()) << info.status();
  EXPECT_EQ(info->appended_steps, 2u);
  // The writer's file is still open, and its own.
  EXPECT_EQ(testing::ReadDataset<double>(file, "/values"), second);
  H5Fclose(file);

  for (const std::vector<double>* expected : {&first, &second}) {
    absl::StatusOr<StreamStep> step = NextOfGroup(stream);
    ASSERT_TRUE(step.ok()) << step.status();
    const uint64_t number = step->step;
    absl::StatusOr<hid_t> opened = OpenFileImage(std::move(step->image.buffer));
    ASSERT_TRUE(opened.ok()) << opened.status();
    EXPECT_EQ(testing::ReadDataset<double>(*opened, "/values"), *expected)
        << "step " << number;
    H5Fclose(*opened);
    ASSERT_TRUE(client_->Ack(stream, "g", number).ok());
  }
}

INSTANTIATE_TEST_SUITE_P(Paths, StepBufferTest, AllServerPaths(),
                         ServerPathName);

// A real h5depotd on a Unix socket only, where step buffers are handed
// over.
class StepBufferUnixTest : public ::testing::Test {
 protected:
  void SetUp() override {
    testing::ServerProcessOptions options;
    options.unix_socket = true;
    auto server = ServerProcess::Start(options);
    ASSERT_TRUE(server.ok()) << server.status();
    server_ = *std::move(server);
    auto client = Client::Connect(server_->unix_target());
    ASSERT_TRUE(client.ok()) << client.status();
    client_ = *std::move(client);
  }

  std::unique_ptr<ServerProcess> server_;
  std::unique_ptr<Client> client_;
};

// The server takes a step buffer only sealed against resizing, which a
// mapping needs to never fault: one that could still shrink is refused
// with a clear error, nothing is appended, and the release pipe is
// closed at once (the writer may use its buffer again).
TEST_F(StepBufferUnixTest, ABufferThatCouldShrinkIsRefusedAndReleasedAtOnce) {
  const std::string stream = "unsealed";
  ASSERT_TRUE(client_->CreateStream(stream, StreamPolicy{}).ok());

  const absl::Time deadline = absl::Now() + absl::Seconds(30);
  absl::StatusOr<internal::lane::LaneSocket> socket =
      internal::lane::ConnectUnix(server_->data_lane_unix_path(), deadline);
  ASSERT_TRUE(socket.ok()) << socket.status();
  socket->AcceptDescriptors();
  const uint16_t features = internal::lane::kFeatureDescriptors |
                            internal::lane::kFeatureStreams |
                            internal::lane::kFeatureStepBuffers;
  uint8_t hello[internal::lane::kHelloBytes];
  internal::lane::EncodeHello(hello, features);
  ASSERT_TRUE(socket->Send(hello, sizeof(hello), deadline).ok());
  ASSERT_TRUE(socket->Receive(hello, sizeof(hello), deadline).ok());
  uint16_t agreed = 0;
  ASSERT_TRUE(internal::lane::DecodeHello(hello, &agreed).ok());
  ASSERT_EQ(agreed & features, features);

  const std::string image = StepBufferImage(0);
  absl::StatusOr<internal::UniqueFd> memfd =
      internal::CreateMemfd("unsealed-step", image.size());
  ASSERT_TRUE(memfd.ok()) << memfd.status();
  ASSERT_EQ(pwrite(memfd->get(), image.data(), image.size(), 0),
            static_cast<ssize_t>(image.size()));
  int release[2];
  ASSERT_EQ(pipe2(release, O_CLOEXEC), 0);
  internal::UniqueFd release_read(release[0]);
  internal::lane::RequestHeader request;
  request.op = internal::lane::Op::kPutSealed;
  request.image_id_bytes = static_cast<uint16_t>(stream.size());
  request.size = image.size();
  request.stream_append = true;
  request.step_buffer = true;
  uint8_t header[internal::lane::kRequestHeaderBytes];
  internal::lane::EncodeRequestHeader(request, header);
  iovec iov[2] = {{header, sizeof(header)},
                  {const_cast<char*>(stream.data()), stream.size()}};
  ASSERT_TRUE(
      socket->SendAllWithDescriptors(iov, 2, memfd->get(), release[1], deadline)
          .ok());
  close(release[1]);
  uint8_t answer[internal::lane::kResponseHeaderBytes];
  ASSERT_TRUE(socket->Receive(answer, sizeof(answer), deadline).ok());
  internal::lane::Response response;
  ASSERT_TRUE(internal::lane::DecodeResponse(answer, &response).ok());
  EXPECT_EQ(response.code, absl::StatusCode::kInvalidArgument);
  std::string message(response.message_bytes, '\0');
  ASSERT_TRUE(socket->Receive(message.data(), message.size(), deadline).ok());
  EXPECT_NE(message.find("F_SEAL_SHRINK"), std::string::npos) << message;
  // The server's end of the pipe is closed: end-of-file, not a wait.
  char byte;
  EXPECT_EQ(read(release_read.get(), &byte, 1), 0);

  absl::StatusOr<StreamInfo> info = client_->StatStream(stream);
  ASSERT_TRUE(info.ok()) << info.status();
  EXPECT_EQ(info->appended_steps, 0u);
}

// A child of fork() that goes on with its parent's Client fills buffers
// of its own: were it lent the parent's free buffer, the two processes
// would write one buffer and one step would carry the other's bytes.
TEST_F(StepBufferUnixTest, AChildOfForkFillsBuffersOfItsOwn) {
  const std::string stream = "forked";
  ASSERT_TRUE(client_->CreateStream(stream, StreamPolicy{}).ok());
  const std::string parents = StepBufferImage(2);
  const std::string childs = StepBufferImage(1);
  {
    // One free buffer in the pool when the fork comes.
    absl::StatusOr<StepBuffer> unused =
        client_->BeginStep(stream, parents.size());
    ASSERT_TRUE(unused.ok()) << unused.status();
  }
  int lent[2];
  int go[2];
  ASSERT_EQ(pipe(lent), 0);
  ASSERT_EQ(pipe(go), 0);
  const pid_t child = fork();
  ASSERT_GE(child, 0);
  if (child == 0) {
    absl::StatusOr<StepBuffer> buffer =
        client_->BeginStep(stream, childs.size());
    if (!buffer.ok()) _exit(3);
    std::memcpy(buffer->data(), childs.data(), childs.size());
    char byte = 'l';
    if (write(lent[1], &byte, 1) != 1 || read(go[0], &byte, 1) != 1) _exit(4);
    _exit(client_->CommitStep(*std::move(buffer)).ok() ? 0 : 5);
  }
  absl::StatusOr<StepBuffer> buffer =
      client_->BeginStep(stream, parents.size());
  ASSERT_TRUE(buffer.ok()) << buffer.status();
  char byte = 0;
  ASSERT_EQ(read(lent[0], &byte, 1), 1);  // the child's buffer is filled
  std::memcpy(buffer->data(), parents.data(), parents.size());
  ASSERT_EQ(write(go[1], &byte, 1), 1);
  ASSERT_TRUE(client_->CommitStep(*std::move(buffer)).ok());
  int status = 0;
  ASSERT_EQ(waitpid(child, &status, 0), child);
  ASSERT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << status;
  for (int fd : {lent[0], lent[1], go[0], go[1]}) close(fd);

  std::multiset<std::string> taken;
  for (int i = 0; i < 2; ++i) {
    NextOptions next;
    next.wait = kLongWait;
    absl::StatusOr<StreamStep> step = client_->Next(stream, "g", next);
    ASSERT_TRUE(step.ok()) << step.status();
    const std::string bytes = BytesOf(*step);
    taken.insert(bytes == parents  ? "the parent's"
                 : bytes == childs ? "the child's"
                                   : "other bytes");
  }
  EXPECT_EQ(taken, (std::multiset<std::string>{"the child's", "the parent's"}));
}

}  // namespace
}  // namespace h5depot
