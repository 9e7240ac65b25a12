// The error contract (docs/ARCHITECTURE.md "Errors"): one code for one
// situation, on every operation and every transport that carries it.
// Against a real in-process DepotServer, through the public client over
// gRPC, over the data lane on TCP and over the data lane on a Unix socket;
// then the C API's codes for the same cases, and DATA_LOSS at the wire
// (no client API sends bytes that fail their checksum).
//
//   malformed image id      INVALID_ARGUMENT
//   not an HDF5 image       INVALID_ARGUMENT
//   unknown id, generation  NOT_FOUND
//   create-only clash       ALREADY_EXISTS
//   lost generation race    ABORTED (push and delete)
//   over a limit            RESOURCE_EXHAUSTED
//   wait or call deadline   DEADLINE_EXCEEDED
//   checksum mismatch       DATA_LOSS
//   server gone             UNAVAILABLE
#include <grpcpp/grpcpp.h>

#include <cstdint>
#include <cstdlib>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "h5depot/client.h"
#include "h5depot/h5depot.h"
#include "h5depot/internal/checksum.h"
#include "h5depot/server/depot_server.h"
#include "h5depot/testing/in_process_depot.h"
#include "h5depot/v1/depot.grpc.pb.h"
#include "test_images.h"

namespace h5depot {
namespace {

using ::h5depot::testing::InProcessDepot;
using ::h5depot::testing::Listeners;
using ::h5depot::testing::MakeTestImage;

constexpr uint64_t kMaxImageBytes = uint64_t{4} << 20;
// Larger than the data lane's eager limit and the client's chunk, so that
// a refused push of it is refused before its bytes move.
constexpr size_t kLargeImage = size_t{3} << 20;
constexpr char kMalformedId[] = "a/../b";

enum class Transport { kGrpc, kLaneTcp, kLaneUnix };

std::string TransportName(const ::testing::TestParamInfo<Transport>& info) {
  switch (info.param) {
    case Transport::kGrpc:
      return "Grpc";
    case Transport::kLaneTcp:
      return "LaneTcp";
    case Transport::kLaneUnix:
      return "LaneUnix";
  }
  return "Unknown";
}

// A server on loopback TCP or on a Unix socket, both with a data lane.
class ErrorContractTest : public ::testing::TestWithParam<Transport> {
 protected:
  void SetUp() override {
    server::ServerOptions options;
    options.store.max_image_bytes = kMaxImageBytes;
    auto depot = InProcessDepot::Start(
        options, GetParam() == Transport::kLaneUnix ? Listeners::kUnix
                                                    : Listeners::kTcp);
    ASSERT_TRUE(depot.ok()) << depot.status();
    depot_ = *std::move(depot);
    if (GetParam() == Transport::kLaneUnix) {
      ASSERT_FALSE(depot_->server().data_lane_unix_path().empty());
    } else {
      ASSERT_NE(depot_->server().data_lane_port(), 0);
    }
    ClientOptions client_options;
    client_options.use_data_lane = GetParam() != Transport::kGrpc;
    auto client = depot_->Connect(client_options);
    ASSERT_TRUE(client.ok()) << client.status();
    client_ = *std::move(client);
  }

  void TearDown() override { client_.reset(); }

  ImageInfo PushOrDie(const std::string& id, const std::vector<uint8_t>& bytes,
                      const PushOptions& options = {}) {
    absl::StatusOr<ImageInfo> pushed =
        client_->Push(id, bytes.data(), bytes.size(), options);
    EXPECT_TRUE(pushed.ok()) << pushed.status();
    return pushed.ok() ? *pushed : ImageInfo{};
  }

  static PushOptions IfGenerationMatch(uint64_t generation) {
    PushOptions options;
    options.if_generation_match = generation;
    return options;
  }

  std::unique_ptr<InProcessDepot> depot_;
  std::unique_ptr<Client> client_;
};

INSTANTIATE_TEST_SUITE_P(Transports, ErrorContractTest,
                         ::testing::Values(Transport::kGrpc,
                                           Transport::kLaneTcp,
                                           Transport::kLaneUnix),
                         TransportName);

TEST_P(ErrorContractTest, AMalformedIdIsInvalidArgumentOnEveryOperation) {
  const auto bytes = MakeTestImage(1000);
  std::vector<uint8_t> out(16);
  EXPECT_EQ(
      client_->Push(kMalformedId, bytes.data(), bytes.size()).status().code(),
      absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(client_->Fetch(kMalformedId).status().code(),
            absl::StatusCode::kInvalidArgument);
  FetchOptions wait;
  wait.wait = absl::Seconds(30);  // refused before any wait
  EXPECT_EQ(client_->Fetch(kMalformedId, wait).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(
      client_->Read(kMalformedId, 0, 0, out.data(), out.size()).status().code(),
      absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(client_->OpenReader(kMalformedId).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(client_->Stat(kMalformedId).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(client_->Stat(kMalformedId, absl::Seconds(30)).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(client_->Delete(kMalformedId).code(),
            absl::StatusCode::kInvalidArgument);
}

TEST_P(ErrorContractTest, BytesThatAreNoHdf5ImageAreInvalidArgument) {
  const std::vector<uint8_t> small(1000, 'x');
  const std::vector<uint8_t> large(kLargeImage, 'x');
  for (const std::vector<uint8_t>* bytes : {&small, &large}) {
    absl::StatusOr<ImageInfo> pushed =
        client_->Push("not-hdf5", bytes->data(), bytes->size());
    EXPECT_EQ(pushed.status().code(), absl::StatusCode::kInvalidArgument)
        << pushed.status();
  }
  EXPECT_EQ(client_->Stat("not-hdf5").status().code(),
            absl::StatusCode::kNotFound);
}

TEST_P(ErrorContractTest, AnUnknownImageIsNotFoundOnEveryOperation) {
  std::vector<uint8_t> out(16);
  EXPECT_EQ(client_->Fetch("missing").status().code(),
            absl::StatusCode::kNotFound);
  EXPECT_EQ(
      client_->Read("missing", 0, 0, out.data(), out.size()).status().code(),
      absl::StatusCode::kNotFound);
  EXPECT_EQ(client_->Stat("missing").status().code(),
            absl::StatusCode::kNotFound);
  EXPECT_EQ(client_->Delete("missing").code(), absl::StatusCode::kNotFound);
  // Opening a reader is refused with the server's code, every time (never
  // CANCELLED, however the refusal and the request cross).
  for (int i = 0; i < 50; ++i) {
    absl::StatusOr<std::unique_ptr<ImageReader>> reader =
        client_->OpenReader("missing");
    ASSERT_EQ(reader.status().code(), absl::StatusCode::kNotFound)
        << "attempt " << i << ": " << reader.status();
  }
  EXPECT_TRUE(client_->List().ok());
}

TEST_P(ErrorContractTest, AGenerationNoLongerStoredIsNotFound) {
  const ImageInfo first = PushOrDie("x", MakeTestImage(1000, 1));
  PushOrDie("x", MakeTestImage(1000, 2));
  std::vector<uint8_t> out(16);
  EXPECT_EQ(client_->Read("x", first.generation, 0, out.data(), out.size())
                .status()
                .code(),
            absl::StatusCode::kNotFound);
  EXPECT_EQ(client_->OpenReader("x", first.generation).status().code(),
            absl::StatusCode::kNotFound);
}

TEST_P(ErrorContractTest, ACreateOnlyPushOfAnExistingIdIsAlreadyExists) {
  PushOrDie("x", MakeTestImage(1000));
  for (size_t size : {size_t{1000}, kLargeImage}) {
    const auto bytes = MakeTestImage(size, 2);
    absl::StatusOr<ImageInfo> pushed =
        client_->Push("x", bytes.data(), bytes.size(), IfGenerationMatch(0));
    EXPECT_EQ(pushed.status().code(), absl::StatusCode::kAlreadyExists)
        << pushed.status();
  }
}

TEST_P(ErrorContractTest, ALostGenerationRaceIsAbortedOnPushAndDelete) {
  const ImageInfo base = PushOrDie("x", MakeTestImage(1000, 1));
  const ImageInfo theirs = PushOrDie("x", MakeTestImage(1000, 2));
  for (size_t size : {size_t{1000}, kLargeImage}) {
    const auto bytes = MakeTestImage(size, 3);
    absl::StatusOr<ImageInfo> pushed = client_->Push(
        "x", bytes.data(), bytes.size(), IfGenerationMatch(base.generation));
    EXPECT_EQ(pushed.status().code(), absl::StatusCode::kAborted)
        << pushed.status();
    EXPECT_TRUE(absl::StartsWith(pushed.status().message(), "push 'x': "))
        << pushed.status();
  }
  EXPECT_EQ(client_->Delete("x", base.generation).code(),
            absl::StatusCode::kAborted);
  EXPECT_EQ(client_->Stat("x")->generation, theirs.generation);

  // The image went away: a push conditional on its generation lost too.
  ASSERT_TRUE(client_->Delete("x", theirs.generation).ok());
  const auto bytes = MakeTestImage(1000, 4);
  EXPECT_EQ(client_
                ->Push("x", bytes.data(), bytes.size(),
                       IfGenerationMatch(theirs.generation))
                .status()
                .code(),
            absl::StatusCode::kAborted);
}

TEST_P(ErrorContractTest, AnImageOverTheSizeLimitIsResourceExhausted) {
  const auto bytes = MakeTestImage(kMaxImageBytes + 1);
  absl::StatusOr<ImageInfo> pushed =
      client_->Push("big", bytes.data(), bytes.size());
  EXPECT_EQ(pushed.status().code(), absl::StatusCode::kResourceExhausted)
      << pushed.status();
  EXPECT_EQ(client_->Stat("big").status().code(), absl::StatusCode::kNotFound);
}

TEST_P(ErrorContractTest, AWaitThatRunsOutIsDeadlineExceeded) {
  FetchOptions wait;
  wait.wait = absl::Milliseconds(50);
  EXPECT_EQ(client_->Fetch("late", wait).status().code(),
            absl::StatusCode::kDeadlineExceeded);
  EXPECT_EQ(client_->Stat("late", absl::Milliseconds(50)).status().code(),
            absl::StatusCode::kDeadlineExceeded);
}

TEST_P(ErrorContractTest, AReadPastItsDeadlineIsDeadlineExceededAndHarmless) {
  const auto bytes = MakeTestImage(100000);
  PushOrDie("x", bytes);
  absl::StatusOr<std::unique_ptr<ImageReader>> reader =
      client_->OpenReader("x");
  ASSERT_TRUE(reader.ok()) << reader.status();
  std::vector<uint8_t> out(1000);
  absl::StatusOr<size_t> late = (*reader)->ReadWithDeadline(
      0, out.data(), out.size(), absl::Now() - absl::Seconds(1));
  EXPECT_EQ(late.status().code(), absl::StatusCode::kDeadlineExceeded)
      << late.status();
  // The reader and its pin are intact.
  absl::StatusOr<size_t> read = (*reader)->ReadWithDeadline(
      500, out.data(), out.size(), absl::Now() + absl::Seconds(30));
  ASSERT_TRUE(read.ok()) << read.status();
  EXPECT_EQ(*read, out.size());
  EXPECT_EQ(std::vector<uint8_t>(bytes.begin() + 500, bytes.begin() + 1500),
            out);
}

TEST_P(ErrorContractTest, AStoppedServerIsUnavailableOnEveryOperation) {
  const auto bytes = MakeTestImage(1000);
  PushOrDie("x", bytes);
  depot_.reset();
  std::vector<uint8_t> out(16);
  EXPECT_EQ(client_->Push("x", bytes.data(), bytes.size()).status().code(),
            absl::StatusCode::kUnavailable);
  EXPECT_EQ(client_->Fetch("x").status().code(),
            absl::StatusCode::kUnavailable);
  EXPECT_EQ(client_->Read("x", 0, 0, out.data(), out.size()).status().code(),
            absl::StatusCode::kUnavailable);
  EXPECT_EQ(client_->OpenReader("x").status().code(),
            absl::StatusCode::kUnavailable);
  EXPECT_EQ(client_->Stat("x").status().code(), absl::StatusCode::kUnavailable);
  EXPECT_EQ(client_->List().status().code(), absl::StatusCode::kUnavailable);
  EXPECT_EQ(client_->Delete("x").code(), absl::StatusCode::kUnavailable);
}

// DATA_LOSS: bytes that do not match the checksum their header announced
// are refused, and nothing is stored. Pinned here at gRPC's wire, which is
// where such bytes can be sent; data_lane_test pins the lane's.
TEST(ErrorContractWireTest, BytesFailingTheirChecksumAreDataLoss) {
  auto depot = InProcessDepot::Start();
  ASSERT_TRUE(depot.ok()) << depot.status();
  auto stub = v1::Depot::NewStub(grpc::CreateChannel(
      (*depot)->target(), grpc::InsecureChannelCredentials()));
  const auto bytes = MakeTestImage(1000);
  grpc::ClientContext context;
  v1::PushResponse response;
  std::unique_ptr<grpc::ClientWriter<v1::PushRequest>> push =
      stub->Push(&context, &response);
  v1::PushRequest header;
  header.mutable_header()->set_image_id("corrupt");
  header.mutable_header()->set_size(bytes.size());
  header.mutable_header()->set_checksum(
      internal::Checksum(bytes.data(), bytes.size()) + 1);
  v1::PushRequest chunk;
  chunk.set_chunk(bytes.data(), bytes.size());
  push->Write(header);
  push->Write(chunk);
  push->WritesDone();
  const grpc::Status status = push->Finish();
  EXPECT_EQ(status.error_code(), grpc::StatusCode::DATA_LOSS)
      << status.error_message();

  auto client = (*depot)->Connect();
  ASSERT_TRUE(client.ok()) << client.status();
  EXPECT_EQ((*client)->Stat("corrupt").status().code(),
            absl::StatusCode::kNotFound);
}

// The C API returns the same codes, as h5depot_code values.
TEST(ErrorContractCApiTest, TheCApiReturnsTheTablesCodes) {
  server::ServerOptions options;
  options.store.max_image_bytes = kMaxImageBytes;
  auto depot = InProcessDepot::Start(options);
  ASSERT_TRUE(depot.ok()) << depot.status();
  h5depot_client* client = h5depot_connect((*depot)->target().c_str());
  ASSERT_NE(client, nullptr) << h5depot_errmsg();

  const auto bytes = MakeTestImage(1000);
  uint64_t generation = 0;
  EXPECT_EQ(h5depot_push_buffer(client, kMalformedId, bytes.data(),
                                bytes.size(), nullptr),
            H5DEPOT_INVALID_ARGUMENT);
  const std::vector<uint8_t> text(1000, 'x');
  EXPECT_EQ(
      h5depot_push_buffer(client, "text", text.data(), text.size(), nullptr),
      H5DEPOT_INVALID_ARGUMENT);
  void* buf = nullptr;
  size_t len = 0;
  EXPECT_EQ(h5depot_fetch(client, "missing", &buf, &len, nullptr),
            H5DEPOT_NOT_FOUND);
  EXPECT_EQ(h5depot_errcode(), H5DEPOT_NOT_FOUND);
  h5depot_image_info info;
  EXPECT_EQ(h5depot_stat(client, "missing", &info), H5DEPOT_NOT_FOUND);
  EXPECT_EQ(h5depot_delete(client, "missing"), H5DEPOT_NOT_FOUND);
  EXPECT_EQ(h5depot_wait(client, "missing", 50), H5DEPOT_DEADLINE_EXCEEDED);

  ASSERT_EQ(
      h5depot_push_buffer(client, "x", bytes.data(), bytes.size(), &generation),
      H5DEPOT_OK)
      << h5depot_errmsg();
  h5depot_push_options conditional = {};
  conditional.use_if_generation_match = 1;
  conditional.if_generation_match = 0;
  EXPECT_EQ(h5depot_push_buffer_ex(client, "x", bytes.data(), bytes.size(),
                                   &conditional, nullptr),
            H5DEPOT_ALREADY_EXISTS);
  conditional.if_generation_match = generation + 1;
  EXPECT_EQ(h5depot_push_buffer_ex(client, "x", bytes.data(), bytes.size(),
                                   &conditional, nullptr),
            H5DEPOT_ABORTED);
  EXPECT_EQ(h5depot_errcode(), H5DEPOT_ABORTED);

  const auto big = MakeTestImage(kMaxImageBytes + 1);
  EXPECT_EQ(h5depot_push_buffer(client, "big", big.data(), big.size(), nullptr),
            H5DEPOT_RESOURCE_EXHAUSTED);

  h5depot_disconnect(client);
}

}  // namespace
}  // namespace h5depot
