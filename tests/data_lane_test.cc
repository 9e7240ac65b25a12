// The data lane's wire protocol (h5depot/internal/lane_protocol.h), spoken
// message by message against a real h5depotd over TCP and its Unix socket:
// what a lane client relies on -- the hello, eager and large pushes, every
// refusal answered without losing the connection, nothing stored from a
// push that did not arrive intact, waits, ranged reads of a generation
// (READ) with their refusals and tokens, and a clean stop.
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/uio.h>

#include <algorithm>
#include <cstring>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "gtest/gtest.h"
#include "h5depot/client.h"
#include "h5depot/internal/checksum.h"
#include "h5depot/internal/lane_protocol.h"
#include "h5depot/internal/lane_socket.h"
#include "h5depot/internal/token.h"
#include "h5depot/testing/hdf5_images.h"
#include "h5depot/testing/server_process.h"
#include "h5depot/testing/subprocess.h"
#include "h5depot/testing/temp_dir.h"

namespace h5depot {
namespace {

namespace lane = internal::lane;
using ::h5depot::testing::H5depotdPath;
using ::h5depot::testing::MakeHdf5Image;
using ::h5depot::testing::RunCommand;
using ::h5depot::testing::ServerProcess;
using ::h5depot::testing::ServerProcessOptions;
using lane::LaneSocket;

// A safety net against a server that never answers (the test then fails
// instead of hanging), not a measurement.
absl::Time IoDeadline() { return absl::Now() + absl::Seconds(60); }

enum class Transport { kTcp, kUnix };

std::string TransportName(
    const ::testing::TestParamInfo<Transport>& param_info) {
  return param_info.param == Transport::kTcp ? "Tcp" : "Unix";
}

// A response and the status message that follows it.
struct Reply {
  lane::Response header;
  std::string message;
};

std::string Describe(const Reply& reply) {
  return absl::StrCat(
      reply.header.kind == lane::ResponseKind::kContinue ? "Continue" : "Final",
      " ", absl::StatusCodeToString(reply.header.code), " '", reply.message,
      "'");
}

absl::StatusOr<Reply> ReceiveReply(LaneSocket& socket) {
  uint8_t raw[lane::kResponseHeaderBytes];
  if (absl::Status status = socket.Receive(raw, sizeof(raw), IoDeadline());
      !status.ok()) {
    return status;
  }
  Reply reply;
  if (absl::Status status = lane::DecodeResponse(raw, &reply.header);
      !status.ok()) {
    return status;
  }
  reply.message.resize(reply.header.message_bytes);
  if (absl::Status status = socket.Receive(reply.message.data(),
                                           reply.message.size(), IoDeadline());
      !status.ok()) {
    return status;
  }
  return reply;
}

// Sends `header` for `image_id`, and `payload` right behind it.
absl::Status SendRequest(LaneSocket& socket, lane::RequestHeader header,
                         std::string_view image_id,
                         std::string_view payload = {}) {
  header.image_id_bytes = static_cast<uint16_t>(image_id.size());
  uint8_t raw[lane::kRequestHeaderBytes];
  lane::EncodeRequestHeader(header, raw);
  iovec iov[3] = {{raw, sizeof(raw)},
                  {const_cast<char*>(image_id.data()), image_id.size()},
                  {const_cast<char*>(payload.data()), payload.size()}};
  return socket.SendAll(iov, 3, IoDeadline());
}

// The 8-byte trailer of a push of `bytes`.
std::string Trailer(std::string_view bytes) {
  uint8_t raw[8];
  lane::EncodeU64(internal::Checksum(bytes.data(), bytes.size()), raw);
  return std::string(reinterpret_cast<const char*>(raw), sizeof(raw));
}

struct PutOptions {
  std::optional<uint64_t> if_generation_match;
  uint64_t ttl_ms = 0;
  // Sent instead of the bytes' own checksum.
  std::optional<uint64_t> trailer_checksum;
  // The image id names a stream; the image is its next step.
  bool stream_append = false;
};

PutOptions IfGenerationMatch(uint64_t generation) {
  PutOptions options;
  options.if_generation_match = generation;
  return options;
}

PutOptions WithTrailerChecksum(uint64_t checksum) {
  PutOptions options;
  options.trailer_checksum = checksum;
  return options;
}

struct PutResult {
  bool continued = false;  // the server said Continue before the bytes
  Reply final_reply;
};

// A whole PUT as a client that follows the protocol sends it: the bytes
// right behind the header if they are few, else only after a Continue.
absl::StatusOr<PutResult> Put(LaneSocket& socket, std::string_view image_id,
                              std::string_view bytes,
                              const PutOptions& options = {}) {
  lane::RequestHeader header;
  header.op = lane::Op::kPut;
  header.size = bytes.size();
  header.if_generation_match = options.if_generation_match;
  header.ttl_ms = options.ttl_ms;
  header.stream_append = options.stream_append;
  std::string trailer = Trailer(bytes);
  if (options.trailer_checksum.has_value()) {
    uint8_t raw[8];
    lane::EncodeU64(*options.trailer_checksum, raw);
    trailer.assign(reinterpret_cast<const char*>(raw), sizeof(raw));
  }
  PutResult result;
  if (bytes.size() <= lane::kEagerPutBytes) {
    if (absl::Status status =
            SendRequest(socket, header, image_id, std::string(bytes) + trailer);
        !status.ok()) {
      return status;
    }
  } else {
    if (absl::Status status = SendRequest(socket, header, image_id);
        !status.ok()) {
      return status;
    }
    absl::StatusOr<Reply> first = ReceiveReply(socket);
    if (!first.ok()) return first.status();
    if (first->header.kind == lane::ResponseKind::kFinal) {
      result.final_reply = *std::move(first);
      return result;
    }
    result.continued = true;
    iovec iov[2] = {{const_cast<char*>(bytes.data()), bytes.size()},
                    {trailer.data(), trailer.size()}};
    if (absl::Status status = socket.SendAll(iov, 2, IoDeadline());
        !status.ok()) {
      return status;
    }
  }
  absl::StatusOr<Reply> reply = ReceiveReply(socket);
  if (!reply.ok()) return reply.status();
  result.final_reply = *std::move(reply);
  return result;
}

struct GetResult {
  Reply reply;
  std::string bytes;  // the image, after an OK reply
};

absl::StatusOr<GetResult> Get(LaneSocket& socket, std::string_view image_id,
                              uint64_t wait_ms = 0) {
  lane::RequestHeader header;
  header.op = lane::Op::kGet;
  header.wait_ms = wait_ms;
  if (absl::Status status = SendRequest(socket, header, image_id);
      !status.ok()) {
    return status;
  }
  absl::StatusOr<Reply> reply = ReceiveReply(socket);
  if (!reply.ok()) return reply.status();
  GetResult result;
  result.reply = *std::move(reply);
  if (result.reply.header.code == absl::StatusCode::kOk) {
    result.bytes.resize(result.reply.header.size);
    if (absl::Status status = socket.Receive(result.bytes.data(),
                                             result.bytes.size(), IoDeadline());
        !status.ok()) {
      return status;
    }
  }
  return result;
}

struct ReadReply {
  Reply reply;
  std::string bytes;  // the range, after an OK reply
};

// A READ of [offset, offset + length) of `generation`; after an OK reply,
// receives the clamped range, as many bytes as the reply's image size
// leaves past `offset`.
absl::StatusOr<ReadReply> ReadRange(LaneSocket& socket,
                                    std::string_view image_id,
                                    uint64_t generation, uint64_t offset,
                                    uint64_t length) {
  lane::RequestHeader header;
  header.op = lane::Op::kRead;
  header.generation = generation;
  header.offset = offset;
  header.size = length;
  if (absl::Status status = SendRequest(socket, header, image_id);
      !status.ok()) {
    return status;
  }
  absl::StatusOr<Reply> reply = ReceiveReply(socket);
  if (!reply.ok()) return reply.status();
  ReadReply result;
  result.reply = *std::move(reply);
  if (result.reply.header.code == absl::StatusCode::kOk) {
    const uint64_t size = result.reply.header.size;
    result.bytes.resize(offset >= size ? 0 : std::min(length, size - offset));
    if (absl::Status status = socket.Receive(result.bytes.data(),
                                             result.bytes.size(), IoDeadline());
        !status.ok()) {
      return status;
    }
  }
  return result;
}

// The response's image info is what the control plane says about it.
void ExpectSameInfo(const lane::Response& response, const ImageInfo& info) {
  EXPECT_EQ(response.size, info.size);
  EXPECT_EQ(response.generation, info.generation);
  EXPECT_EQ(response.checksum, info.checksum);
  EXPECT_EQ(response.created_unix_micros, absl::ToUnixMicros(info.created));
}

// Whether the server closed the connection: the next receive finds its end
// rather than any byte.
bool ServerClosed(LaneSocket& socket) {
  uint8_t byte;
  const absl::Status status = socket.Receive(&byte, 1, IoDeadline());
  return absl::IsUnavailable(status);
}

class DataLaneTest : public ::testing::Test {
 protected:
  // Starts h5depotd on TCP and a Unix socket, with `flags`, and a gRPC
  // client to look at what it stores.
  void StartServer(std::vector<std::string> flags = {}) {
    ServerProcessOptions options;
    options.unix_socket = true;
    options.extra_flags = std::move(flags);
    auto server = ServerProcess::Start(options);
    ASSERT_TRUE(server.ok()) << server.status();
    server_ = *std::move(server);
    auto client = Client::Connect(server_->target());
    ASSERT_TRUE(client.ok()) << client.status();
    client_ = *std::move(client);
    auto limits = client_->GetLimits();
    ASSERT_TRUE(limits.ok()) << limits.status();
    limits_ = *limits;
  }

  // A lane connection that has exchanged hellos, offering `features`; those
  // the server agreed to go to `*agreed` if given.
  absl::StatusOr<LaneSocket> OpenLane(Transport transport = Transport::kTcp,
                                      uint16_t features = 0,
                                      uint16_t* agreed = nullptr) {
    absl::StatusOr<LaneSocket> socket =
        transport == Transport::kTcp
            ? lane::ConnectTcp("127.0.0.1", limits_.data_lane_port,
                               IoDeadline())
            : lane::ConnectUnix(limits_.data_lane_unix_path, IoDeadline());
    if (!socket.ok()) return socket.status();
    uint8_t hello[lane::kHelloBytes];
    lane::EncodeHello(hello, features);
    if (absl::Status status = socket->Send(hello, sizeof(hello), IoDeadline());
        !status.ok()) {
      return status;
    }
    if (absl::Status status =
            socket->Receive(hello, sizeof(hello), IoDeadline());
        !status.ok()) {
      return status;
    }
    if (absl::Status status = lane::DecodeHello(hello, agreed); !status.ok()) {
      return status;
    }
    return socket;
  }

  absl::StatusCode StatCode(const std::string& image_id) {
    return client_->Stat(image_id).status().code();
  }

  std::unique_ptr<ServerProcess> server_;
  std::unique_ptr<Client> client_;
  ServerLimits limits_;
};

// --- 1. Hello -------------------------------------------------------------

TEST_F(DataLaneTest, HelloOfAnotherProtocolGetsTheServersHelloAndIsClosed) {
  ASSERT_NO_FATAL_FAILURE(StartServer());
  auto socket =
      lane::ConnectTcp("127.0.0.1", limits_.data_lane_port, IoDeadline());
  ASSERT_TRUE(socket.ok()) << socket.status();
  ASSERT_TRUE(socket->Send("GET / HT", 8, IoDeadline()).ok());
  uint8_t hello[lane::kHelloBytes];
  ASSERT_TRUE(socket->Receive(hello, sizeof(hello), IoDeadline()).ok());
  EXPECT_TRUE(lane::DecodeHello(hello).ok()) << lane::DecodeHello(hello);
  EXPECT_TRUE(ServerClosed(*socket));
}

TEST_F(DataLaneTest, HelloOfAnotherVersionGetsTheServersVersionAndIsClosed) {
  ASSERT_NO_FATAL_FAILURE(StartServer());
  auto socket =
      lane::ConnectTcp("127.0.0.1", limits_.data_lane_port, IoDeadline());
  ASSERT_TRUE(socket.ok()) << socket.status();
  uint8_t hello[lane::kHelloBytes];
  lane::EncodeHello(hello);
  hello[4] = static_cast<uint8_t>(lane::kVersion + 1);  // a future version
  ASSERT_EQ(lane::DecodeHello(hello).code(),
            absl::StatusCode::kInvalidArgument);
  ASSERT_TRUE(socket->Send(hello, sizeof(hello), IoDeadline()).ok());
  uint8_t answer[lane::kHelloBytes];
  ASSERT_TRUE(socket->Receive(answer, sizeof(answer), IoDeadline()).ok());
  // The client can tell which version the server speaks.
  EXPECT_TRUE(lane::DecodeHello(answer).ok()) << lane::DecodeHello(answer);
  EXPECT_EQ(answer[4] | (answer[5] << 8), lane::kVersion);
  EXPECT_TRUE(ServerClosed(*socket));
}

TEST_F(DataLaneTest, CorrectHelloGetsAHelloAndAUsableConnection) {
  ASSERT_NO_FATAL_FAILURE(StartServer());
  for (Transport transport : {Transport::kTcp, Transport::kUnix}) {
    auto socket = OpenLane(transport);  // checks the server's hello
    ASSERT_TRUE(socket.ok()) << socket.status();
    auto got = Get(*socket, "absent");
    ASSERT_TRUE(got.ok()) << got.status();
    EXPECT_EQ(got->reply.header.code, absl::StatusCode::kNotFound)
        << Describe(got->reply);
  }
}

TEST_F(DataLaneTest, LocalClientsOfferingTheirCpuAreAgreedAndNothingElse) {
  ASSERT_NO_FATAL_FAILURE(StartServer());
  constexpr uint16_t kUnknownFeature = 0x8000;
  for (Transport transport : {Transport::kTcp, Transport::kUnix}) {
    uint16_t agreed = 0xffff;
    auto offering =
        OpenLane(transport, lane::kFeatureClientCpu | kUnknownFeature, &agreed);
    ASSERT_TRUE(offering.ok()) << offering.status();
    EXPECT_EQ(agreed, lane::kFeatureClientCpu);
    agreed = 0xffff;
    auto silent = OpenLane(transport, 0, &agreed);
    ASSERT_TRUE(silent.ok()) << silent.status();
    EXPECT_EQ(agreed, 0);
  }
}

TEST_F(DataLaneTest, ServerToldNotToFollowClientCpusAgreesToNothing) {
  ASSERT_NO_FATAL_FAILURE(StartServer({"--nofollow-client-cpu"}));
  for (Transport transport : {Transport::kTcp, Transport::kUnix}) {
    uint16_t agreed = 0xffff;
    auto socket = OpenLane(transport, lane::kFeatureClientCpu, &agreed);
    ASSERT_TRUE(socket.ok()) << socket.status();
    EXPECT_EQ(agreed, 0);
    // Its requests are served all the same.
    auto got = Get(*socket, "absent");
    ASSERT_TRUE(got.ok()) << got.status();
    EXPECT_EQ(got->reply.header.code, absl::StatusCode::kNotFound);
  }
}

TEST(LaneProtocolTest, RequestSaysTheClientCpuOnlyWhenGiven) {
  for (std::optional<uint32_t> cpu :
       {std::optional<uint32_t>(), std::optional<uint32_t>(0),
        std::optional<uint32_t>(7), std::optional<uint32_t>(4095)}) {
    lane::RequestHeader header;
    header.op = lane::Op::kPut;
    header.size = 4096;
    header.client_cpu = cpu;
    uint8_t raw[lane::kRequestHeaderBytes];
    lane::EncodeRequestHeader(header, raw);
    lane::RequestHeader decoded;
    decoded.client_cpu = 99;  // overwritten
    ASSERT_TRUE(lane::DecodeRequestHeader(raw, &decoded).ok());
    EXPECT_EQ(decoded.client_cpu, cpu);
    EXPECT_EQ(decoded.size, 4096u);
  }
}

TEST(LaneProtocolTest, OnlyAPutMayAppendToAStream) {
  for (lane::Op op : {lane::Op::kPut, lane::Op::kPutSealed, lane::Op::kGet,
                      lane::Op::kRead, lane::Op::kPin}) {
    lane::RequestHeader header;
    header.op = op;
    header.stream_append = true;
    uint8_t raw[lane::kRequestHeaderBytes];
    lane::EncodeRequestHeader(header, raw);
    raw[1] |= 8;  // the flag, whatever the encoder makes of it for `op`
    lane::RequestHeader decoded;
    const absl::Status status = lane::DecodeRequestHeader(raw, &decoded);
    if (op == lane::Op::kPut || op == lane::Op::kPutSealed) {
      ASSERT_TRUE(status.ok()) << status;
      EXPECT_TRUE(decoded.stream_append);
    } else {
      EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument)
          << static_cast<int>(op);
    }
  }
}

// A step buffer rides only on a PUT_SEALED that appends to a stream.
TEST(LaneProtocolTest, OnlyASealedStreamAppendMayCarryAStepBuffer) {
  for (lane::Op op : {lane::Op::kPut, lane::Op::kPutSealed, lane::Op::kGet}) {
    for (bool stream_append : {false, true}) {
      lane::RequestHeader header;
      header.op = op;
      header.stream_append = stream_append && op != lane::Op::kGet;
      uint8_t raw[lane::kRequestHeaderBytes];
      lane::EncodeRequestHeader(header, raw);
      raw[1] |= 16;  // the step buffer flag
      lane::RequestHeader decoded;
      const absl::Status status = lane::DecodeRequestHeader(raw, &decoded);
      if (op == lane::Op::kPutSealed && stream_append) {
        ASSERT_TRUE(status.ok()) << status;
        EXPECT_TRUE(decoded.step_buffer);
        uint8_t again[lane::kRequestHeaderBytes];
        lane::EncodeRequestHeader(decoded, again);
        EXPECT_EQ(std::memcmp(raw, again, sizeof(raw)), 0);
      } else {
        EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument)
            << static_cast<int>(op) << " " << stream_append;
      }
    }
  }
}

TEST(LaneProtocolTest, NextBodiesAndStepTrailersRoundTripAndAreChecked) {
  lane::NextBody body;
  body.start = lane::NextBody::Start::kStep;
  body.start_step = 12;
  body.lease_ms = 5000;
  body.ack_step = 11;
  body.group = "analysis";
  body.consumer = "worker-3";
  const std::string encoded = lane::EncodeNextBody(body);
  lane::NextBody decoded;
  ASSERT_TRUE(lane::DecodeNextBody(encoded, &decoded).ok());
  EXPECT_EQ(decoded.start, lane::NextBody::Start::kStep);
  EXPECT_EQ(decoded.start_step, 12u);
  EXPECT_EQ(decoded.lease_ms, 5000u);
  EXPECT_EQ(decoded.ack_step, std::optional<uint64_t>(11));
  EXPECT_EQ(decoded.group, "analysis");
  EXPECT_EQ(decoded.consumer, "worker-3");

  // Cut short, one byte too many, an empty name, an unknown start.
  EXPECT_FALSE(
      lane::DecodeNextBody(encoded.substr(0, encoded.size() - 1), &decoded)
          .ok());
  EXPECT_FALSE(lane::DecodeNextBody(encoded + "x", &decoded).ok());
  lane::NextBody nameless = body;
  nameless.group.clear();
  EXPECT_FALSE(
      lane::DecodeNextBody(lane::EncodeNextBody(nameless), &decoded).ok());
  std::string unknown_start = encoded;
  unknown_start[1] = 3;
  EXPECT_FALSE(lane::DecodeNextBody(unknown_start, &decoded).ok());

  lane::StepTrailer trailer;
  trailer.step = 1u << 20;
  trailer.lost_ranges = 2;
  trailer.with_bytes = true;
  uint8_t raw[lane::kStepTrailerBytes];
  lane::EncodeStepTrailer(trailer, raw);
  lane::StepTrailer back;
  ASSERT_TRUE(lane::DecodeStepTrailer(raw, &back).ok());
  EXPECT_EQ(back.step, trailer.step);
  EXPECT_EQ(back.lost_ranges, 2u);
  EXPECT_TRUE(back.with_bytes);
  trailer.lost_ranges = lane::kMaxLostRanges + 1;
  lane::EncodeStepTrailer(trailer, raw);
  EXPECT_FALSE(lane::DecodeStepTrailer(raw, &back).ok());

  // A NEXT header whose body cannot be one.
  lane::RequestHeader header;
  header.op = lane::Op::kNext;
  header.size = lane::kMaxNextBodyBytes + 1;
  uint8_t raw_header[lane::kRequestHeaderBytes];
  lane::EncodeRequestHeader(header, raw_header);
  lane::RequestHeader decoded_header;
  EXPECT_FALSE(lane::DecodeRequestHeader(raw_header, &decoded_header).ok());
}

TEST_F(DataLaneTest, ServerReportsItsLaneOnStartAndInGetLimits) {
  ASSERT_NO_FATAL_FAILURE(StartServer());
  EXPECT_GT(limits_.data_lane_port, 0);
  EXPECT_EQ(limits_.data_lane_port, server_->data_lane_port());
  EXPECT_EQ(limits_.data_lane_unix_path, server_->unix_socket_path() + ".data");
  EXPECT_EQ(limits_.data_lane_unix_path, server_->data_lane_unix_path());
}

// --- 2 and 3. Push then fetch, over each transport ------------------------

class DataLaneTransportTest : public DataLaneTest,
                              public ::testing::WithParamInterface<Transport> {
};

INSTANTIATE_TEST_SUITE_P(BothTransports, DataLaneTransportTest,
                         ::testing::Values(Transport::kTcp, Transport::kUnix),
                         TransportName);

TEST_P(DataLaneTransportTest, EagerPutThenGetReturnsTheSameBytesAndInfo) {
  ASSERT_NO_FATAL_FAILURE(StartServer());
  auto socket = OpenLane(GetParam());
  ASSERT_TRUE(socket.ok()) << socket.status();
  const std::string image = MakeHdf5Image(64 << 10, 1);
  ASSERT_FALSE(image.empty());
  ASSERT_LE(image.size(), lane::kEagerPutBytes);

  auto put = Put(*socket, "runs/eager.h5", image);
  ASSERT_TRUE(put.ok()) << put.status();
  EXPECT_FALSE(put->continued);
  const lane::Response& pushed = put->final_reply.header;
  ASSERT_EQ(pushed.code, absl::StatusCode::kOk) << Describe(put->final_reply);
  EXPECT_EQ(pushed.kind, lane::ResponseKind::kFinal);
  EXPECT_EQ(pushed.size, image.size());
  EXPECT_EQ(pushed.checksum, internal::Checksum(image.data(), image.size()));
  EXPECT_GT(pushed.generation, 0u);
  EXPECT_EQ(pushed.expires_unix_micros, 0);

  auto stat = client_->Stat("runs/eager.h5");
  ASSERT_TRUE(stat.ok()) << stat.status();
  ExpectSameInfo(pushed, *stat);

  auto got = Get(*socket, "runs/eager.h5");
  ASSERT_TRUE(got.ok()) << got.status();
  ASSERT_EQ(got->reply.header.code, absl::StatusCode::kOk)
      << Describe(got->reply);
  EXPECT_TRUE(got->bytes == image) << "the fetched bytes differ";
  ExpectSameInfo(got->reply.header, *stat);

  // A second push on the same connection is a new generation.
  const std::string second = MakeHdf5Image(32 << 10, 2);
  auto again = Put(*socket, "runs/eager.h5", second);
  ASSERT_TRUE(again.ok()) << again.status();
  ASSERT_EQ(again->final_reply.header.code, absl::StatusCode::kOk)
      << Describe(again->final_reply);
  EXPECT_GT(again->final_reply.header.generation, pushed.generation);
  auto fetched = client_->Fetch("runs/eager.h5");
  ASSERT_TRUE(fetched.ok()) << fetched.status();
  EXPECT_EQ(fetched->info.generation, again->final_reply.header.generation);
}

// A stream append (kFeatureStreams) is answered with the id of the step
// it published; a cut-off one publishes nothing, and the next is the step
// it would have been.
TEST_P(DataLaneTransportTest, AStreamAppendIsAnsweredWithItsStepsId) {
  ASSERT_NO_FATAL_FAILURE(StartServer());
  uint16_t agreed = 0;
  auto socket = OpenLane(GetParam(), lane::kFeatureStreams, &agreed);
  ASSERT_TRUE(socket.ok()) << socket.status();
  EXPECT_NE(agreed & lane::kFeatureStreams, 0);
  PutOptions append;
  append.stream_append = true;
  const std::string small = MakeHdf5Image(16 << 10, 1);
  const std::string large = MakeHdf5Image(3 << 20, 2);

  auto first = Put(*socket, "frames", small, append);
  ASSERT_TRUE(first.ok()) << first.status();
  ASSERT_EQ(first->final_reply.header.code, absl::StatusCode::kOk)
      << Describe(first->final_reply);
  EXPECT_EQ(first->final_reply.message, "frames@0");
  EXPECT_EQ(first->final_reply.header.size, small.size());
  auto second = Put(*socket, "frames", large, append);
  ASSERT_TRUE(second.ok()) << second.status();
  EXPECT_TRUE(second->continued);
  ASSERT_EQ(second->final_reply.header.code, absl::StatusCode::kOk)
      << Describe(second->final_reply);
  EXPECT_EQ(second->final_reply.message, "frames@1");

  // Cut off half way: nothing of it is ever a step.
  {
    auto cut = OpenLane(GetParam(), lane::kFeatureStreams);
    ASSERT_TRUE(cut.ok()) << cut.status();
    lane::RequestHeader header;
    header.op = lane::Op::kPut;
    header.size = small.size();
    header.stream_append = true;
    ASSERT_TRUE(SendRequest(*cut, header, "frames",
                            std::string_view(small).substr(0, small.size() / 2))
                    .ok());
  }  // closes the connection
  // A step id may not be pushed to, and a plain push's answer names nothing.
  auto forged = Put(*socket, "frames@2", small);
  ASSERT_TRUE(forged.ok()) << forged.status();
  EXPECT_EQ(forged->final_reply.header.code, absl::StatusCode::kInvalidArgument)
      << Describe(forged->final_reply);
  auto plain = Put(*socket, "plain", small);
  ASSERT_TRUE(plain.ok()) << plain.status();
  EXPECT_EQ(plain->final_reply.message, "");

  auto third = Put(*socket, "frames", small, append);
  ASSERT_TRUE(third.ok()) << third.status();
  ASSERT_EQ(third->final_reply.header.code, absl::StatusCode::kOk)
      << Describe(third->final_reply);
  EXPECT_EQ(third->final_reply.message, "frames@2");
  absl::StatusOr<StreamInfo> info = client_->StatStream("frames");
  ASSERT_TRUE(info.ok()) << info.status();
  EXPECT_EQ(info->appended_steps, 3u);
  absl::StatusOr<FetchedImage> step = client_->Fetch("frames@1");
  ASSERT_TRUE(step.ok()) << step.status();
  EXPECT_EQ(std::string(static_cast<const char*>(step->buffer.data()),
                        step->buffer.size()),
            large);
}

struct NextResult {
  Reply reply;
  lane::StepTrailer trailer;
  std::vector<StepRange> lost;
  std::string bytes;  // when the trailer says they follow
};

// A NEXT for `consumer` of `group`, waiting up to `wait_ms`, with `ack`
// acknowledged first if given.
absl::StatusOr<NextResult> Next(LaneSocket& socket, std::string_view stream,
                                std::string group, std::string consumer,
                                uint64_t wait_ms = 0,
                                std::optional<uint64_t> ack = std::nullopt) {
  lane::NextBody body;
  body.group = std::move(group);
  body.consumer = std::move(consumer);
  body.ack_step = ack;
  const std::string encoded = lane::EncodeNextBody(body);
  lane::RequestHeader header;
  header.op = lane::Op::kNext;
  header.size = encoded.size();
  header.wait_ms = wait_ms;
  if (absl::Status status = SendRequest(socket, header, stream, encoded);
      !status.ok()) {
    return status;
  }
  absl::StatusOr<Reply> reply = ReceiveReply(socket);
  if (!reply.ok()) return reply.status();
  NextResult result;
  result.reply = *std::move(reply);
  if (result.reply.header.code != absl::StatusCode::kOk) return result;
  uint8_t raw[lane::kStepTrailerBytes];
  if (absl::Status status = socket.Receive(raw, sizeof(raw), IoDeadline());
      !status.ok()) {
    return status;
  }
  if (absl::Status status = lane::DecodeStepTrailer(raw, &result.trailer);
      !status.ok()) {
    return status;
  }
  for (uint32_t i = 0; i < result.trailer.lost_ranges; ++i) {
    uint8_t range[16];
    if (absl::Status status =
            socket.Receive(range, sizeof(range), IoDeadline());
        !status.ok()) {
      return status;
    }
    result.lost.push_back({lane::DecodeU64(range), lane::DecodeU64(range + 8)});
  }
  if (result.trailer.with_bytes) {
    result.bytes.resize(result.reply.header.size);
    if (absl::Status status = socket.Receive(result.bytes.data(),
                                             result.bytes.size(), IoDeadline());
        !status.ok()) {
      return status;
    }
  }
  return result;
}

// A NEXT leases a step as gRPC's NextStep does: its info, id, number and
// bytes in one answer; an acknowledgement rides on the next one; a
// refusal or a wait that runs out leaves the connection in step.
TEST_P(DataLaneTransportTest, ANextLeasesAStepAndSendsItsBytes) {
  ASSERT_NO_FATAL_FAILURE(StartServer());
  auto socket = OpenLane(GetParam(), lane::kFeatureStreams);
  ASSERT_TRUE(socket.ok()) << socket.status();
  PutOptions append;
  append.stream_append = true;
  const std::string first = MakeHdf5Image(8 << 10, 1);
  const std::string second = MakeHdf5Image(2 << 20, 2);
  for (const std::string* image : {&first, &second}) {
    auto put = Put(*socket, "frames", *image, append);
    ASSERT_TRUE(put.ok()) << put.status();
    ASSERT_EQ(put->final_reply.header.code, absl::StatusCode::kOk)
        << Describe(put->final_reply);
  }

  auto taken = Next(*socket, "frames", "readers", "w1");
  ASSERT_TRUE(taken.ok()) << taken.status();
  ASSERT_EQ(taken->reply.header.code, absl::StatusCode::kOk)
      << Describe(taken->reply);
  EXPECT_EQ(taken->reply.message, "frames@0");
  EXPECT_EQ(taken->trailer.step, 0u);
  EXPECT_TRUE(taken->lost.empty());
  ASSERT_TRUE(taken->trailer.with_bytes);
  EXPECT_TRUE(taken->bytes == first);
  EXPECT_EQ(taken->reply.header.checksum,
            internal::Checksum(first.data(), first.size()));

  // Acknowledging a step this consumer does not hold is refused, and
  // takes nothing.
  auto wrong = Next(*socket, "frames", "readers", "w1", 0, uint64_t{1});
  ASSERT_TRUE(wrong.ok()) << wrong.status();
  EXPECT_EQ(wrong->reply.header.code, absl::StatusCode::kFailedPrecondition)
      << Describe(wrong->reply);

  auto next = Next(*socket, "frames", "readers", "w1", 0, uint64_t{0});
  ASSERT_TRUE(next.ok()) << next.status();
  ASSERT_EQ(next->reply.header.code, absl::StatusCode::kOk)
      << Describe(next->reply);
  EXPECT_EQ(next->trailer.step, 1u);
  EXPECT_TRUE(next->bytes == second) << "the step's bytes differ";

  // Nothing more: a wait that runs out, the connection still in step.
  auto none = Next(*socket, "frames", "readers", "w1", 20, uint64_t{1});
  ASSERT_TRUE(none.ok()) << none.status();
  EXPECT_EQ(none->reply.header.code, absl::StatusCode::kDeadlineExceeded)
      << Describe(none->reply);
  absl::StatusOr<StreamInfo> info = client_->StatStream("frames");
  ASSERT_TRUE(info.ok()) << info.status();
  ASSERT_EQ(info->groups.size(), 1u);
  EXPECT_EQ(info->groups[0].next_step, 2u);
  EXPECT_EQ(info->groups[0].leased_steps, 0u);
  EXPECT_EQ(info->kept_steps, 0u);  // both acknowledged: freed

  // A NEXT on a connection that did not agree to streams is malformed.
  auto plain = OpenLane(GetParam());
  ASSERT_TRUE(plain.ok()) << plain.status();
  lane::NextBody body;
  body.group = "readers";
  body.consumer = "w2";
  const std::string encoded = lane::EncodeNextBody(body);
  lane::RequestHeader header;
  header.op = lane::Op::kNext;
  header.size = encoded.size();
  ASSERT_TRUE(SendRequest(*plain, header, "frames", encoded).ok());
  EXPECT_TRUE(ServerClosed(*plain));
}

TEST_P(DataLaneTransportTest, LargePutWaitsForContinueAndIsPublished) {
  ASSERT_NO_FATAL_FAILURE(StartServer());
  auto socket = OpenLane(GetParam());
  ASSERT_TRUE(socket.ok()) << socket.status();
  const std::string image = MakeHdf5Image(3 << 20, 3);
  ASSERT_GT(image.size(), lane::kEagerPutBytes);

  PutOptions expiring;
  expiring.ttl_ms = 3600000;
  auto put = Put(*socket, "large.h5", image, expiring);
  ASSERT_TRUE(put.ok()) << put.status();
  EXPECT_TRUE(put->continued);
  ASSERT_EQ(put->final_reply.header.code, absl::StatusCode::kOk)
      << Describe(put->final_reply);
  EXPECT_GT(put->final_reply.header.expires_unix_micros, 0);

  auto stat = client_->Stat("large.h5");
  ASSERT_TRUE(stat.ok()) << stat.status();
  ExpectSameInfo(put->final_reply.header, *stat);
  EXPECT_EQ(put->final_reply.header.expires_unix_micros,
            absl::ToUnixMicros(stat->expires));

  auto got = Get(*socket, "large.h5");
  ASSERT_TRUE(got.ok()) << got.status();
  ASSERT_EQ(got->reply.header.code, absl::StatusCode::kOk)
      << Describe(got->reply);
  EXPECT_TRUE(got->bytes == image) << "the fetched bytes differ";
  ExpectSameInfo(got->reply.header, *stat);
}

// --- 4. A large push refused before any data moves -------------------------

TEST_F(DataLaneTest, LargePutOverTheImageLimitIsRefusedWithoutContinue) {
  ASSERT_NO_FATAL_FAILURE(StartServer({"--max-image-size=2M"}));
  auto socket = OpenLane();
  ASSERT_TRUE(socket.ok()) << socket.status();
  auto put = Put(*socket, "too/large.h5", MakeHdf5Image(3 << 20, 4));
  ASSERT_TRUE(put.ok()) << put.status();
  EXPECT_FALSE(put->continued);
  EXPECT_EQ(put->final_reply.header.kind, lane::ResponseKind::kFinal);
  EXPECT_EQ(put->final_reply.header.code, absl::StatusCode::kResourceExhausted)
      << Describe(put->final_reply);
  EXPECT_TRUE(absl::StrContains(put->final_reply.message, "too/large.h5"))
      << put->final_reply.message;
  EXPECT_EQ(StatCode("too/large.h5"), absl::StatusCode::kNotFound);

  // A declared size no server could hold is refused the same way: the
  // client never sends (or allocates) a byte of it.
  lane::RequestHeader absurd;
  absurd.op = lane::Op::kPut;
  absurd.size = ~uint64_t{0};
  ASSERT_TRUE(SendRequest(*socket, absurd, "absurd.h5").ok());
  auto refusal = ReceiveReply(*socket);
  ASSERT_TRUE(refusal.ok()) << refusal.status();
  EXPECT_EQ(refusal->header.kind, lane::ResponseKind::kFinal);
  EXPECT_EQ(refusal->header.code, absl::StatusCode::kResourceExhausted)
      << Describe(*refusal);

  // No byte was sent, and the connection serves the next request.
  const std::string small = MakeHdf5Image(1 << 20, 5);
  ASSERT_GT(small.size(), lane::kEagerPutBytes);
  auto next = Put(*socket, "fits.h5", small);
  ASSERT_TRUE(next.ok()) << next.status();
  EXPECT_TRUE(next->continued);
  EXPECT_EQ(next->final_reply.header.code, absl::StatusCode::kOk)
      << Describe(next->final_reply);
}

TEST_F(DataLaneTest, LargePutBeyondFreeMemoryIsRefusedWithoutContinue) {
  ASSERT_NO_FATAL_FAILURE(StartServer({"--max-memory=5M"}));
  auto socket = OpenLane();
  ASSERT_TRUE(socket.ok()) << socket.status();
  const std::string first = MakeHdf5Image(3 << 20, 6);
  auto stored = Put(*socket, "first.h5", first);
  ASSERT_TRUE(stored.ok()) << stored.status();
  ASSERT_EQ(stored->final_reply.header.code, absl::StatusCode::kOk)
      << Describe(stored->final_reply);

  auto put = Put(*socket, "second.h5", MakeHdf5Image(3 << 20, 7));
  ASSERT_TRUE(put.ok()) << put.status();
  EXPECT_FALSE(put->continued);
  EXPECT_EQ(put->final_reply.header.code, absl::StatusCode::kResourceExhausted)
      << Describe(put->final_reply);
  EXPECT_EQ(StatCode("second.h5"), absl::StatusCode::kNotFound);

  auto got = Get(*socket, "first.h5");
  ASSERT_TRUE(got.ok()) << got.status();
  ASSERT_EQ(got->reply.header.code, absl::StatusCode::kOk)
      << Describe(got->reply);
  EXPECT_TRUE(got->bytes == first);
}

TEST_F(DataLaneTest, LargePutWithTheWrongGenerationIsRefusedWithoutContinue) {
  ASSERT_NO_FATAL_FAILURE(StartServer());
  auto socket = OpenLane();
  ASSERT_TRUE(socket.ok()) << socket.status();
  const std::string image = MakeHdf5Image(2 << 20, 8);
  auto stored = Put(*socket, "guarded.h5", image);
  ASSERT_TRUE(stored.ok()) << stored.status();
  ASSERT_EQ(stored->final_reply.header.code, absl::StatusCode::kOk)
      << Describe(stored->final_reply);
  const uint64_t generation = stored->final_reply.header.generation;

  auto stale =
      Put(*socket, "guarded.h5", image, IfGenerationMatch(generation + 1));
  ASSERT_TRUE(stale.ok()) << stale.status();
  EXPECT_FALSE(stale->continued);
  EXPECT_EQ(stale->final_reply.header.code, absl::StatusCode::kAborted)
      << Describe(stale->final_reply);

  auto only_if_absent = Put(*socket, "guarded.h5", image, IfGenerationMatch(0));
  ASSERT_TRUE(only_if_absent.ok()) << only_if_absent.status();
  EXPECT_FALSE(only_if_absent->continued);
  EXPECT_EQ(only_if_absent->final_reply.header.code,
            absl::StatusCode::kAlreadyExists)
      << Describe(only_if_absent->final_reply);

  auto stat = client_->Stat("guarded.h5");
  ASSERT_TRUE(stat.ok()) << stat.status();
  EXPECT_EQ(stat->generation, generation);

  // The same connection takes the push with the right generation.
  auto right = Put(*socket, "guarded.h5", image, IfGenerationMatch(generation));
  ASSERT_TRUE(right.ok()) << right.status();
  EXPECT_TRUE(right->continued);
  ASSERT_EQ(right->final_reply.header.code, absl::StatusCode::kOk)
      << Describe(right->final_reply);
  EXPECT_GT(right->final_reply.header.generation, generation);
}

// --- 5. A refused eager push is read past ----------------------------------

TEST_F(DataLaneTest, RefusedEagerPutsKeepTheConnectionInStep) {
  ASSERT_NO_FATAL_FAILURE(StartServer({"--max-image-size=512K"}));
  auto socket = OpenLane();
  ASSERT_TRUE(socket.ok()) << socket.status();
  const std::string image = MakeHdf5Image(100 << 10, 9);
  auto stored = Put(*socket, "kept.h5", image);
  ASSERT_TRUE(stored.ok()) << stored.status();
  ASSERT_EQ(stored->final_reply.header.code, absl::StatusCode::kOk)
      << Describe(stored->final_reply);
  const uint64_t generation = stored->final_reply.header.generation;

  struct Refusal {
    std::string image_id;
    std::string bytes;
    PutOptions options;
    absl::StatusCode code;
  };
  const std::vector<Refusal> refusals = {
      {"kept.h5", image, IfGenerationMatch(generation + 7),
       absl::StatusCode::kAborted},
      {"kept.h5", image, IfGenerationMatch(0),
       absl::StatusCode::kAlreadyExists},
      {"bad id", image, {}, absl::StatusCode::kInvalidArgument},
      {"a/../b", image, {}, absl::StatusCode::kInvalidArgument},
      {"", image, {}, absl::StatusCode::kInvalidArgument},
      {"big.h5",
       MakeHdf5Image(900 << 10, 10),
       {},
       absl::StatusCode::kResourceExhausted},
  };
  for (const Refusal& refusal : refusals) {
    SCOPED_TRACE(absl::StrCat("'", refusal.image_id, "'"));
    ASSERT_LE(refusal.bytes.size(), lane::kEagerPutBytes);
    auto put = Put(*socket, refusal.image_id, refusal.bytes, refusal.options);
    ASSERT_TRUE(put.ok()) << put.status();
    EXPECT_EQ(put->final_reply.header.code, refusal.code)
        << Describe(put->final_reply);
    EXPECT_FALSE(put->final_reply.message.empty());
    // The refused push's bytes were skipped, not taken for the next request.
    auto got = Get(*socket, "kept.h5");
    ASSERT_TRUE(got.ok()) << got.status();
    ASSERT_EQ(got->reply.header.code, absl::StatusCode::kOk)
        << Describe(got->reply);
    EXPECT_EQ(got->reply.header.generation, generation);
    EXPECT_TRUE(got->bytes == image);
  }
  EXPECT_EQ(StatCode("big.h5"), absl::StatusCode::kNotFound);
}

// --- 6. Bytes that are not what was promised -------------------------------

TEST_F(DataLaneTest, WrongChecksumIsDataLossAndStoresNothing) {
  // Room for one large image only: a reservation left behind would show.
  const std::string image = MakeHdf5Image(3 << 20, 11);
  ASSERT_NO_FATAL_FAILURE(StartServer(
      {absl::StrCat("--max-memory=", image.size() + image.size() / 2)}));
  auto socket = OpenLane();
  ASSERT_TRUE(socket.ok()) << socket.status();
  const uint64_t checksum = internal::Checksum(image.data(), image.size());

  for (int attempt = 0; attempt < 2; ++attempt) {
    auto put =
        Put(*socket, "corrupt.h5", image, WithTrailerChecksum(checksum ^ 1));
    ASSERT_TRUE(put.ok()) << put.status();
    EXPECT_TRUE(put->continued);
    EXPECT_EQ(put->final_reply.header.code, absl::StatusCode::kDataLoss)
        << Describe(put->final_reply);
    EXPECT_EQ(StatCode("corrupt.h5"), absl::StatusCode::kNotFound);
  }
  const std::string small = MakeHdf5Image(10 << 10, 12);
  auto eager = Put(
      *socket, "corrupt-small.h5", small,
      WithTrailerChecksum(internal::Checksum(small.data(), small.size()) + 1));
  ASSERT_TRUE(eager.ok()) << eager.status();
  EXPECT_EQ(eager->final_reply.header.code, absl::StatusCode::kDataLoss)
      << Describe(eager->final_reply);
  EXPECT_EQ(StatCode("corrupt-small.h5"), absl::StatusCode::kNotFound);

  // Every refused push gave its memory back: the full image fits.
  auto put = Put(*socket, "corrupt.h5", image);
  ASSERT_TRUE(put.ok()) << put.status();
  EXPECT_EQ(put->final_reply.header.code, absl::StatusCode::kOk)
      << Describe(put->final_reply);
}

TEST_F(DataLaneTest, NonHdf5BytesAreInvalidArgumentAndStoreNothing) {
  ASSERT_NO_FATAL_FAILURE(StartServer());
  auto socket = OpenLane();
  ASSERT_TRUE(socket.ok()) << socket.status();
  const std::string empty;
  const std::string text(200 << 10, 'x');
  const std::string large(2 << 20, '\x01');
  for (const std::string* bytes : {&empty, &text, &large}) {
    SCOPED_TRACE(absl::StrCat(bytes->size(), " bytes"));
    auto put = Put(*socket, "not-hdf5", *bytes);
    ASSERT_TRUE(put.ok()) << put.status();
    EXPECT_EQ(put->final_reply.header.code, absl::StatusCode::kInvalidArgument)
        << Describe(put->final_reply);
    EXPECT_EQ(StatCode("not-hdf5"), absl::StatusCode::kNotFound);
  }
  auto limits = client_->GetLimits();
  ASSERT_TRUE(limits.ok()) << limits.status();
  EXPECT_EQ(limits->stored_bytes, 0u);
  auto got = Get(*socket, "not-hdf5");
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_EQ(got->reply.header.code, absl::StatusCode::kNotFound);
}

// --- 7. A push cut off part way ---------------------------------------------

enum class CutOff { kClose, kShutdownWrite };

struct TruncationCase {
  size_t data_bytes;  // of the image; above kEagerPutBytes: a large push
  CutOff how;
};

class DataLaneTruncationTest
    : public DataLaneTest,
      public ::testing::WithParamInterface<TruncationCase> {};

std::string TruncationName(
    const ::testing::TestParamInfo<TruncationCase>& param_info) {
  return absl::StrCat(
      param_info.param.data_bytes > lane::kEagerPutBytes ? "Large" : "Eager",
      param_info.param.how == CutOff::kClose ? "Closed" : "ShutDown");
}

INSTANTIATE_TEST_SUITE_P(
    EagerAndLarge, DataLaneTruncationTest,
    ::testing::Values(TruncationCase{600 << 10, CutOff::kClose},
                      TruncationCase{600 << 10, CutOff::kShutdownWrite},
                      TruncationCase{3 << 20, CutOff::kClose},
                      TruncationCase{3 << 20, CutOff::kShutdownWrite}),
    TruncationName);

TEST_P(DataLaneTruncationTest, NothingIsStoredAndTheMemoryIsReleased) {
  const std::string image = MakeHdf5Image(GetParam().data_bytes, 13);
  // Room for one such image, not two.
  ASSERT_NO_FATAL_FAILURE(StartServer(
      {absl::StrCat("--max-memory=", image.size() + image.size() / 2)}));
  const bool eager = image.size() <= lane::kEagerPutBytes;
  {
    auto socket = OpenLane();
    ASSERT_TRUE(socket.ok()) << socket.status();
    lane::RequestHeader header;
    header.op = lane::Op::kPut;
    header.size = image.size();
    ASSERT_TRUE(SendRequest(*socket, header, "cut.h5").ok());
    if (!eager) {
      auto reply = ReceiveReply(*socket);
      ASSERT_TRUE(reply.ok()) << reply.status();
      ASSERT_EQ(reply->header.kind, lane::ResponseKind::kContinue)
          << Describe(*reply);
    }
    ASSERT_TRUE(
        socket->Send(image.data(), image.size() / 2, IoDeadline()).ok());
    if (GetParam().how == CutOff::kShutdownWrite) {
      ASSERT_EQ(::shutdown(socket->fd(), SHUT_WR), 0);
      // The server answers an unfinished push by closing, never with a
      // response that could be taken for a result.
      EXPECT_TRUE(ServerClosed(*socket));
    }
  }  // closes the connection
  EXPECT_EQ(StatCode("cut.h5"), absl::StatusCode::kNotFound);

  // The server notices the end of the connection on its own time; once it
  // has, the cut push's reservation is gone and a whole push fits.
  auto socket = OpenLane();
  ASSERT_TRUE(socket.ok()) << socket.status();
  const absl::Time give_up = absl::Now() + absl::Seconds(10);
  absl::StatusOr<PutResult> put;
  while (true) {
    put = Put(*socket, "whole.h5", image);
    ASSERT_TRUE(put.ok()) << put.status();
    if (put->final_reply.header.code != absl::StatusCode::kResourceExhausted ||
        absl::Now() > give_up) {
      break;
    }
    absl::SleepFor(absl::Milliseconds(20));  // poll interval
  }
  EXPECT_EQ(put->final_reply.header.code, absl::StatusCode::kOk)
      << Describe(put->final_reply);
  EXPECT_EQ(StatCode("cut.h5"), absl::StatusCode::kNotFound);
}

// --- 8. GET refusals ---------------------------------------------------------

TEST_F(DataLaneTest, GetOfUnknownOrInvalidIdsIsRefusedAndTheConnectionStays) {
  ASSERT_NO_FATAL_FAILURE(StartServer());
  auto socket = OpenLane();
  ASSERT_TRUE(socket.ok()) << socket.status();
  const std::string image = MakeHdf5Image(20 << 10, 14);
  ASSERT_EQ(client_->Push("known.h5", image.data(), image.size()).status(),
            absl::OkStatus());

  struct Case {
    std::string image_id;
    absl::StatusCode code;
  };
  for (const Case& c : std::vector<Case>{
           {"unknown.h5", absl::StatusCode::kNotFound},
           {"", absl::StatusCode::kInvalidArgument},
           {"has space", absl::StatusCode::kInvalidArgument},
           {"/leading-slash", absl::StatusCode::kInvalidArgument},
           {std::string(300, 'a'), absl::StatusCode::kInvalidArgument}}) {
    SCOPED_TRACE(absl::StrCat("'", c.image_id, "'"));
    auto got = Get(*socket, c.image_id);
    ASSERT_TRUE(got.ok()) << got.status();
    EXPECT_EQ(got->reply.header.code, c.code) << Describe(got->reply);
    EXPECT_FALSE(got->reply.message.empty());
    auto known = Get(*socket, "known.h5");
    ASSERT_TRUE(known.ok()) << known.status();
    ASSERT_EQ(known->reply.header.code, absl::StatusCode::kOk)
        << Describe(known->reply);
    EXPECT_TRUE(known->bytes == image);
  }
}

// --- 9. GET waiting for a push ----------------------------------------------

TEST_F(DataLaneTest, WaitingGetReceivesTheImagePushedMeanwhile) {
  ASSERT_NO_FATAL_FAILURE(StartServer());
  auto waiter = OpenLane(Transport::kUnix);
  ASSERT_TRUE(waiter.ok()) << waiter.status();
  lane::RequestHeader header;
  header.op = lane::Op::kGet;
  header.wait_ms = 60000;
  ASSERT_TRUE(SendRequest(*waiter, header, "later.h5").ok());

  auto pusher = OpenLane(Transport::kTcp);
  ASSERT_TRUE(pusher.ok()) << pusher.status();
  const std::string image = MakeHdf5Image(1500 << 10, 15);
  auto put = Put(*pusher, "later.h5", image);
  ASSERT_TRUE(put.ok()) << put.status();
  ASSERT_EQ(put->final_reply.header.code, absl::StatusCode::kOk)
      << Describe(put->final_reply);

  auto reply = ReceiveReply(*waiter);
  ASSERT_TRUE(reply.ok()) << reply.status();
  ASSERT_EQ(reply->header.code, absl::StatusCode::kOk) << Describe(*reply);
  EXPECT_EQ(reply->header.generation, put->final_reply.header.generation);
  std::string bytes(reply->header.size, '\0');
  ASSERT_TRUE(waiter->Receive(bytes.data(), bytes.size(), IoDeadline()).ok());
  EXPECT_TRUE(bytes == image);
}

TEST_F(DataLaneTest, ShortWaitForAMissingImageIsDeadlineExceeded) {
  ASSERT_NO_FATAL_FAILURE(StartServer());
  auto socket = OpenLane();
  ASSERT_TRUE(socket.ok()) << socket.status();
  auto got = Get(*socket, "never.h5", /*wait_ms=*/50);
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_EQ(got->reply.header.code, absl::StatusCode::kDeadlineExceeded)
      << Describe(got->reply);
  // Still usable.
  auto again = Get(*socket, "never.h5");
  ASSERT_TRUE(again.ok()) << again.status();
  EXPECT_EQ(again->reply.header.code, absl::StatusCode::kNotFound);
}

// --- 10. Malformed requests -------------------------------------------------

TEST_F(DataLaneTest, MalformedRequestClosesOnlyThatConnection) {
  ASSERT_NO_FATAL_FAILURE(StartServer());
  auto bystander = OpenLane();
  ASSERT_TRUE(bystander.ok()) << bystander.status();

  uint8_t unknown_op[lane::kRequestHeaderBytes] = {0x7f};
  uint8_t unknown_flags[lane::kRequestHeaderBytes] = {
      static_cast<uint8_t>(lane::Op::kGet), 0x80};
  // A CPU on a connection whose hello did not agree to it.
  lane::RequestHeader with_cpu;
  with_cpu.op = lane::Op::kGet;
  with_cpu.client_cpu = 0;
  uint8_t unagreed_cpu[lane::kRequestHeaderBytes];
  lane::EncodeRequestHeader(with_cpu, unagreed_cpu);
  for (const uint8_t* garbage : {unknown_op, unknown_flags, unagreed_cpu}) {
    auto socket = OpenLane();
    ASSERT_TRUE(socket.ok()) << socket.status();
    ASSERT_TRUE(
        socket->Send(garbage, lane::kRequestHeaderBytes, IoDeadline()).ok());
    EXPECT_TRUE(ServerClosed(*socket));
  }

  // Other connections, old and new, and gRPC carry on.
  const std::string image = MakeHdf5Image(30 << 10, 16);
  auto put = Put(*bystander, "after.h5", image);
  ASSERT_TRUE(put.ok()) << put.status();
  EXPECT_EQ(put->final_reply.header.code, absl::StatusCode::kOk)
      << Describe(put->final_reply);
  auto fresh = OpenLane(Transport::kUnix);
  ASSERT_TRUE(fresh.ok()) << fresh.status();
  auto got = Get(*fresh, "after.h5");
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_TRUE(got->bytes == image);
  EXPECT_EQ(StatCode("after.h5"), absl::StatusCode::kOk);
}

// --- 11. Turning the lane off, and a port that is taken ---------------------

TEST_F(DataLaneTest, NoDataLaneOffersNoLaneAndPushAndFetchStillWork) {
  ASSERT_NO_FATAL_FAILURE(StartServer({"--nodata-lane"}));
  EXPECT_EQ(limits_.data_lane_port, 0);
  EXPECT_EQ(limits_.data_lane_unix_path, "");
  EXPECT_FALSE(absl::StrContains(server_->startup_output(), "data lane"))
      << server_->startup_output();
  EXPECT_FALSE(testing::PathExists(server_->unix_socket_path() + ".data"));
  const std::string image = MakeHdf5Image(2 << 20, 17);
  auto pushed = client_->Push("grpc-only.h5", image.data(), image.size());
  ASSERT_TRUE(pushed.ok()) << pushed.status();
  auto fetched = client_->Fetch("grpc-only.h5");
  ASSERT_TRUE(fetched.ok()) << fetched.status();
  EXPECT_EQ(fetched->info.checksum, pushed->checksum);
}

TEST(DataLaneStartTest, TakenDataPortStopsTheServerWithAClearMessage) {
  LaneSocket taken(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
  ASSERT_TRUE(taken.is_open());
  sockaddr_in address{};
  address.sin_family = AF_INET;
  address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  ASSERT_EQ(::bind(taken.fd(), reinterpret_cast<sockaddr*>(&address),
                   sizeof(address)),
            0);
  ASSERT_EQ(::listen(taken.fd(), 1), 0);
  socklen_t address_bytes = sizeof(address);
  ASSERT_EQ(::getsockname(taken.fd(), reinterpret_cast<sockaddr*>(&address),
                          &address_bytes),
            0);
  const int port = ntohs(address.sin_port);

  testing::CommandOptions options;
  options.timeout = absl::Seconds(60);  // a server that starts would hang
  const testing::CommandResult result =
      RunCommand({H5depotdPath(), "--listen=127.0.0.1:0",
                  absl::StrCat("--data-port=", port)},
                 options);
  EXPECT_FALSE(result.timed_out) << "h5depotd started on a taken data port";
  EXPECT_NE(result.exit_code, 0);
  EXPECT_TRUE(absl::StrContains(result.stderr_text, "data lane"))
      << result.stderr_text;
  EXPECT_TRUE(absl::StrContains(result.stderr_text, absl::StrCat(port)))
      << result.stderr_text;
  EXPECT_FALSE(absl::StrContains(result.stdout_text, "listening on"))
      << result.stdout_text;
}

// --- The client end ----------------------------------------------------------

// An image id is framed with a 16-bit length. A longer one must be refused
// before it is sent: sent anyway, the server would take its tail for further
// requests, and their answers, left on the pooled connection, for the
// answers to the next fetch -- which would then return another image.
TEST_F(DataLaneTest, ClientRefusesToFetchAnIdTheLaneCannotFrame) {
  ASSERT_NO_FATAL_FAILURE(StartServer());
  const std::string known = MakeHdf5Image(20 << 10, 18);
  const std::string other = MakeHdf5Image(20 << 10, 19);
  ASSERT_TRUE(client_->Push("known.h5", known.data(), known.size()).ok());
  ASSERT_TRUE(client_->Push("other.h5", other.data(), other.size()).ok());

  // Cut to its low 16 bits, this id's length is 1: the server would read
  // "!", then a GET of "known.h5", then a GET of a long invalid id.
  std::string id = "!";
  uint8_t raw[lane::kRequestHeaderBytes];
  lane::RequestHeader get_known;
  get_known.op = lane::Op::kGet;
  get_known.image_id_bytes = 8;
  lane::EncodeRequestHeader(get_known, raw);
  id.append(reinterpret_cast<const char*>(raw), sizeof(raw));
  id.append("known.h5");
  lane::RequestHeader filler;
  filler.op = lane::Op::kGet;
  filler.image_id_bytes =
      static_cast<uint16_t>(65536 - 2 * lane::kRequestHeaderBytes - 8);
  lane::EncodeRequestHeader(filler, raw);
  id.append(reinterpret_cast<const char*>(raw), sizeof(raw));
  id.append(filler.image_id_bytes, '!');
  ASSERT_EQ(id.size(), 65537u);

  auto refused = client_->Fetch(id);
  EXPECT_EQ(refused.status().code(), absl::StatusCode::kInvalidArgument)
      << refused.status();
  auto fetched = client_->Fetch("other.h5");
  ASSERT_TRUE(fetched.ok()) << fetched.status();
  EXPECT_EQ(fetched->info.checksum,
            internal::Checksum(other.data(), other.size()));
  ASSERT_EQ(fetched->buffer.size(), other.size());
  EXPECT_EQ(std::memcmp(fetched->buffer.data(), other.data(), other.size()), 0)
      << "the fetch of other.h5 returned another image's bytes";
}

// A Unix socket path that gRPC takes but that leaves no room for the lane's
// ".data" beside it: the server starts as it did before the lane existed,
// without a Unix lane, and its Unix clients push and fetch over gRPC.
TEST(DataLaneStartTest, UnixPathWithNoRoomForTheLaneStillServes) {
  auto dir = testing::TempDir::Create("/tmp");
  ASSERT_TRUE(dir.ok()) << dir.status();
  std::string path = dir->path() + "/";
  ASSERT_LT(path.size(), 105u);
  path.append(105 - path.size(), 's');  // sun_path holds 107 and a NUL
  ServerProcessOptions options;
  options.extra_flags = {"--unix=" + path};
  auto server = ServerProcess::Start(options);
  ASSERT_TRUE(server.ok()) << server.status();
  EXPECT_EQ((*server)->unix_target(), "unix:" + path);
  EXPECT_GT((*server)->data_lane_port(), 0);
  EXPECT_EQ((*server)->data_lane_unix_path(), "");

  auto client = Client::Connect("unix:" + path);
  ASSERT_TRUE(client.ok()) << client.status();
  auto limits = (*client)->GetLimits();
  ASSERT_TRUE(limits.ok()) << limits.status();
  EXPECT_EQ(limits->data_lane_unix_path, "");
  const std::string image = MakeHdf5Image(2 << 20, 20);
  auto pushed = (*client)->Push("beside.h5", image.data(), image.size());
  ASSERT_TRUE(pushed.ok()) << pushed.status();
  auto fetched = (*client)->Fetch("beside.h5");
  ASSERT_TRUE(fetched.ok()) << fetched.status();
  ASSERT_EQ(fetched->buffer.size(), image.size());
  EXPECT_EQ(std::memcmp(fetched->buffer.data(), image.data(), image.size()), 0);
}

// --- 12. READ: ranges of a generation ----------------------------------------

TEST(LaneProtocolTest, ReadCarriesItsGenerationOffsetAndLength) {
  lane::RequestHeader header;
  header.op = lane::Op::kRead;
  header.generation = 0x0123456789abcdef;
  header.offset = uint64_t{5} << 40;
  header.size = 4096;
  header.client_cpu = 3;
  uint8_t raw[lane::kRequestHeaderBytes];
  lane::EncodeRequestHeader(header, raw);
  lane::RequestHeader decoded;
  ASSERT_TRUE(lane::DecodeRequestHeader(raw, &decoded).ok());
  EXPECT_EQ(decoded.op, lane::Op::kRead);
  EXPECT_EQ(decoded.generation, header.generation);
  EXPECT_EQ(decoded.offset, header.offset);
  EXPECT_EQ(decoded.size, 4096u);
  EXPECT_EQ(decoded.client_cpu, 3u);
  EXPECT_FALSE(decoded.if_generation_match.has_value());
  EXPECT_EQ(decoded.ttl_ms, 0u);
  EXPECT_EQ(decoded.wait_ms, 0u);
}

TEST_P(DataLaneTransportTest, ReadOfferedIsAgreedAndServesTheClampedRange) {
  ASSERT_NO_FATAL_FAILURE(StartServer());
  uint16_t agreed = 0;
  auto socket = OpenLane(GetParam(), lane::kFeatureRead, &agreed);
  ASSERT_TRUE(socket.ok()) << socket.status();
  EXPECT_EQ(agreed, lane::kFeatureRead);
  const std::string image = MakeHdf5Image(3 << 20, 21);
  auto pushed = client_->Push("runs/read.h5", image.data(), image.size());
  ASSERT_TRUE(pushed.ok()) << pushed.status();
  const uint64_t size = image.size();

  struct Case {
    uint64_t generation, offset, length;
    std::string expected;
  };
  for (const Case& c : std::vector<Case>{
           {pushed->generation, 0, 512, image.substr(0, 512)},
           {0, 100000, 2 << 20, image.substr(100000, 2 << 20)},
           {pushed->generation, 0, size, image},
           // Past the end: clamped, as gRPC's Read is.
           {pushed->generation, size - 10, 4096, image.substr(size - 10)},
           {pushed->generation, size, 4096, ""},
           {pushed->generation, size + 12345, 4096, ""},
           {pushed->generation, 77, 0, ""}}) {
    SCOPED_TRACE(absl::StrCat("generation ", c.generation, " [", c.offset,
                              ", +", c.length, ")"));
    auto read =
        ReadRange(*socket, "runs/read.h5", c.generation, c.offset, c.length);
    ASSERT_TRUE(read.ok()) << read.status();
    ASSERT_EQ(read->reply.header.code, absl::StatusCode::kOk)
        << Describe(read->reply);
    ExpectSameInfo(read->reply.header, *pushed);
    EXPECT_EQ(read->bytes.size(), c.expected.size());
    EXPECT_TRUE(read->bytes == c.expected);
  }
}

TEST_F(DataLaneTest, ReadOfAReplacedGenerationIsServedWhileAReaderPinsIt) {
  ASSERT_NO_FATAL_FAILURE(StartServer());
  const std::string first = MakeHdf5Image(64 << 10, 22);
  const std::string second = MakeHdf5Image(96 << 10, 23);
  auto old_info = client_->Push("runs/pinned.h5", first.data(), first.size());
  ASSERT_TRUE(old_info.ok()) << old_info.status();
  auto pin = client_->OpenReader("runs/pinned.h5", old_info->generation);
  ASSERT_TRUE(pin.ok()) << pin.status();
  auto new_info = client_->Push("runs/pinned.h5", second.data(), second.size());
  ASSERT_TRUE(new_info.ok()) << new_info.status();

  auto socket = OpenLane(Transport::kUnix, lane::kFeatureRead);
  ASSERT_TRUE(socket.ok()) << socket.status();
  auto old_read = ReadRange(*socket, "runs/pinned.h5", old_info->generation, 0,
                            first.size());
  ASSERT_TRUE(old_read.ok()) << old_read.status();
  ASSERT_EQ(old_read->reply.header.code, absl::StatusCode::kOk)
      << Describe(old_read->reply);
  EXPECT_EQ(old_read->reply.header.generation, old_info->generation);
  EXPECT_TRUE(old_read->bytes == first);
  auto current = ReadRange(*socket, "runs/pinned.h5", 0, 0, second.size());
  ASSERT_TRUE(current.ok()) << current.status();
  EXPECT_EQ(current->reply.header.generation, new_info->generation);
  EXPECT_TRUE(current->bytes == second);
}

TEST_F(DataLaneTest, ReadRefusalsAreAnsweredAndTheConnectionStays) {
  ASSERT_NO_FATAL_FAILURE(StartServer());
  auto socket = OpenLane(Transport::kTcp, lane::kFeatureRead);
  ASSERT_TRUE(socket.ok()) << socket.status();
  const std::string image = MakeHdf5Image(20 << 10, 24);
  auto pushed = client_->Push("known.h5", image.data(), image.size());
  ASSERT_TRUE(pushed.ok()) << pushed.status();

  struct Case {
    std::string image_id;
    uint64_t generation;
    absl::StatusCode code;
    std::string says;
  };
  for (const Case& c : std::vector<Case>{
           {"known.h5", pushed->generation + 1, absl::StatusCode::kNotFound,
            "generation"},
           {"known.h5", 1, absl::StatusCode::kNotFound, "generation"},
           {"unknown.h5", 0, absl::StatusCode::kNotFound, "unknown.h5"},
           {"", 0, absl::StatusCode::kInvalidArgument, ""},
           {"has space", 0, absl::StatusCode::kInvalidArgument, ""}}) {
    SCOPED_TRACE(absl::StrCat("'", c.image_id, "' generation ", c.generation));
    auto read = ReadRange(*socket, c.image_id, c.generation, 0, 4096);
    ASSERT_TRUE(read.ok()) << read.status();
    EXPECT_EQ(read->reply.header.code, c.code) << Describe(read->reply);
    EXPECT_FALSE(read->reply.message.empty());
    EXPECT_TRUE(absl::StrContains(read->reply.message, c.says))
        << read->reply.message;
    // The connection is still in step.
    auto known = ReadRange(*socket, "known.h5", 0, 0, image.size());
    ASSERT_TRUE(known.ok()) << known.status();
    ASSERT_EQ(known->reply.header.code, absl::StatusCode::kOk)
        << Describe(known->reply);
    EXPECT_TRUE(known->bytes == image);
  }
}

TEST_F(DataLaneTest, ReadWithAPreconditionOrAWaitClosesTheConnection) {
  ASSERT_NO_FATAL_FAILURE(StartServer());
  lane::RequestHeader with_precondition;
  with_precondition.op = lane::Op::kPut;
  with_precondition.if_generation_match = 7;
  lane::RequestHeader with_wait;
  with_wait.op = lane::Op::kGet;
  with_wait.wait_ms = 1000;
  for (const lane::RequestHeader& wrong : {with_precondition, with_wait}) {
    // Encoded as the request they are, then relabelled READ: fields a READ
    // does not have.
    uint8_t raw[lane::kRequestHeaderBytes];
    lane::EncodeRequestHeader(wrong, raw);
    raw[0] = static_cast<uint8_t>(lane::Op::kRead);
    lane::RequestHeader decoded;
    EXPECT_EQ(lane::DecodeRequestHeader(raw, &decoded).code(),
              absl::StatusCode::kInvalidArgument);
    auto socket = OpenLane(Transport::kTcp, lane::kFeatureRead);
    ASSERT_TRUE(socket.ok()) << socket.status();
    ASSERT_TRUE(socket->Send(raw, sizeof(raw), IoDeadline()).ok());
    EXPECT_TRUE(ServerClosed(*socket));
  }
}

TEST_F(DataLaneTest, ReadIsAuthorisedByTheConnectionsTokenAsGrpcReadIs) {
  auto dir = testing::TempDir::Create();
  ASSERT_TRUE(dir.ok()) << dir.status();
  const std::string writer = internal::NewToken();
  const std::string reader = internal::NewToken();
  const std::string auth_file = dir->File("auth");
  ASSERT_TRUE(
      testing::WriteFile(
          auth_file, absl::StrCat("writer write ", internal::TokenHash(writer),
                                  " runs/ other/\n", "reader read ",
                                  internal::TokenHash(reader), " runs/\n"))
          .ok());
  unsetenv("H5DEPOT_TOKEN");
  unsetenv("H5DEPOT_TOKEN_FILE");
  ServerProcessOptions options;
  options.unix_socket = true;
  options.extra_flags = {absl::StrCat("--auth-file=", auth_file)};
  auto server = ServerProcess::Start(options);
  ASSERT_TRUE(server.ok()) << server.status();
  ClientOptions client_options;
  client_options.token = writer;
  auto client = Client::Connect((*server)->unix_target(), client_options);
  ASSERT_TRUE(client.ok()) << client.status();
  auto limits = (*client)->GetLimits();
  ASSERT_TRUE(limits.ok()) << limits.status();
  limits_ = *limits;
  const std::string image = MakeHdf5Image(16 << 10, 25);
  for (const char* id : {"runs/a.h5", "other/b.h5"}) {
    ASSERT_TRUE((*client)->Push(id, image.data(), image.size()).ok());
  }

  // A lane connection that presents `token` (none if empty).
  auto open_with = [this](const std::string& token) {
    uint16_t offered = lane::kFeatureRead;
    if (!token.empty()) offered |= lane::kFeatureToken;
    absl::StatusOr<LaneSocket> socket =
        OpenLane(Transport::kUnix, offered, nullptr);
    if (socket.ok() && !token.empty()) {
      uint8_t header[lane::kTokenHeaderBytes];
      lane::EncodeTokenHeader(static_cast<uint16_t>(token.size()), header);
      iovec iov[2] = {{header, sizeof(header)},
                      {const_cast<char*>(token.data()), token.size()}};
      EXPECT_TRUE(socket->SendAll(iov, 2, IoDeadline()).ok());
    }
    return socket;
  };
  struct Case {
    std::string token, image_id;
    absl::StatusCode code;
  };
  for (const Case& c : std::vector<Case>{
           {"", "runs/a.h5", absl::StatusCode::kUnauthenticated},
           {"not-a-token", "runs/a.h5", absl::StatusCode::kUnauthenticated},
           {reader, "other/b.h5", absl::StatusCode::kPermissionDenied},
           {reader, "runs/a.h5", absl::StatusCode::kOk}}) {
    SCOPED_TRACE(
        absl::StrCat(c.token.empty() ? "no token" : c.token, " ", c.image_id));
    auto socket = open_with(c.token);
    ASSERT_TRUE(socket.ok()) << socket.status();
    auto read = ReadRange(*socket, c.image_id, 0, 0, image.size());
    ASSERT_TRUE(read.ok()) << read.status();
    EXPECT_EQ(read->reply.header.code, c.code) << Describe(read->reply);
    if (c.code == absl::StatusCode::kOk) {
      EXPECT_TRUE(read->bytes == image);
    } else {
      EXPECT_FALSE(read->reply.message.empty());
      EXPECT_EQ(read->reply.header.size, 0u);  // nothing about the image
      // Refused, and still in step: the same answer again.
      auto again = ReadRange(*socket, c.image_id, 0, 0, image.size());
      ASSERT_TRUE(again.ok()) << again.status();
      EXPECT_EQ(again->reply.header.code, c.code);
    }
  }
}

// --- 13. Stopping with lane connections open ---------------------------------

TEST_F(DataLaneTest, SigtermEndsIdleAndWaitingConnectionsAndExitsCleanly) {
  ASSERT_NO_FATAL_FAILURE(StartServer());
  auto idle = OpenLane(Transport::kTcp);
  ASSERT_TRUE(idle.ok()) << idle.status();
  auto waiter = OpenLane(Transport::kUnix);
  ASSERT_TRUE(waiter.ok()) << waiter.status();
  lane::RequestHeader header;
  header.op = lane::Op::kGet;
  header.wait_ms = 3600 * 1000;
  ASSERT_TRUE(SendRequest(*waiter, header, "never.h5").ok());

  // Only lane connections are open (server_shutdown_test covers idle gRPC
  // channels).
  client_.reset();
  EXPECT_EQ(server_->Terminate(), absl::OkStatus());

  EXPECT_TRUE(ServerClosed(*idle));
  // The waiting GET ends: with UNAVAILABLE, or with the connection's end.
  auto reply = ReceiveReply(*waiter);
  if (reply.ok()) {
    EXPECT_EQ(reply->header.code, absl::StatusCode::kUnavailable)
        << Describe(*reply);
    EXPECT_TRUE(ServerClosed(*waiter));
  } else {
    EXPECT_TRUE(absl::IsUnavailable(reply.status())) << reply.status();
  }
}

// --- First contact and pins --------------------------------------------------

// A listening loopback socket the test holds: a port taken, and a program
// that accepts connections (the kernel does, into its backlog) and never
// says anything.
struct SilentListener {
  LaneSocket socket;
  int port = 0;
};

// Listens on 127.0.0.1:`port` (0: a free one).
absl::StatusOr<SilentListener> ListenSilently(int port = 0) {
  SilentListener listener{
      LaneSocket(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0)), 0};
  if (!listener.socket.is_open()) return absl::InternalError("socket");
  sockaddr_in address{};
  address.sin_family = AF_INET;
  address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  address.sin_port = htons(static_cast<uint16_t>(port));
  socklen_t address_bytes = sizeof(address);
  if (::bind(listener.socket.fd(), reinterpret_cast<sockaddr*>(&address),
             sizeof(address)) != 0 ||
      ::listen(listener.socket.fd(), 8) != 0 ||
      ::getsockname(listener.socket.fd(), reinterpret_cast<sockaddr*>(&address),
                    &address_bytes) != 0) {
    return absl::UnavailableError(absl::StrCat("cannot listen on ", port));
  }
  listener.port = ntohs(address.sin_port);
  return listener;
}

// A free loopback port whose next port is free too. Another process may
// take either before the caller does: callers try again with a new pair.
int FreePortPair() {
  while (true) {
    absl::StatusOr<SilentListener> first = ListenSilently();
    if (!first.ok() || first->port >= 65535) continue;
    if (ListenSilently(first->port + 1).ok()) return first->port;
  }
}

// h5depotd listening on TCP at a given free port, with `flags`, whose lane
// is (`lane_beside`) or is not at the next port; tried on up to three port
// pairs, in case another process took one meanwhile.
std::unique_ptr<ServerProcess> StartOnAGivenPort(
    std::vector<std::string> flags, bool lane_beside,
    const std::function<void(int port)>& before_start = nullptr) {
  for (int attempt = 0; attempt < 3; ++attempt) {
    ServerProcessOptions options;
    options.tcp_port = FreePortPair();
    options.extra_flags = flags;
    if (before_start) before_start(options.tcp_port);
    auto server = ServerProcess::Start(options);
    if (!server.ok()) continue;
    if (((*server)->data_lane_port() == options.tcp_port + 1) == lane_beside) {
      return *std::move(server);
    }
  }
  ADD_FAILURE() << "no server started with its lane "
                << (lane_beside ? "beside" : "away from") << " its port";
  return nullptr;
}

TEST_F(DataLaneTest, IdentityNamesTheGrpcPortAndWhetherTheCallerIsAdmitted) {
  ASSERT_NO_FATAL_FAILURE(StartServer());
  for (Transport transport : {Transport::kTcp, Transport::kUnix}) {
    SCOPED_TRACE(transport == Transport::kTcp ? "tcp" : "unix");
    uint16_t agreed = 0;
    auto socket = OpenLane(transport, lane::kFeatureIdentity, &agreed);
    ASSERT_TRUE(socket.ok()) << socket.status();
    ASSERT_NE(agreed & lane::kFeatureIdentity, 0);
    uint8_t raw[lane::kIdentityBytes];
    ASSERT_TRUE(socket->Receive(raw, sizeof(raw), IoDeadline()).ok());
    lane::Identity identity;
    ASSERT_TRUE(lane::DecodeIdentity(raw, &identity).ok());
    EXPECT_EQ(absl::StrCat("127.0.0.1:", identity.grpc_port),
              server_->tcp_target());
    EXPECT_TRUE(identity.admitted);
    // Nothing else came: the connection is in step.
    const std::string image = MakeHdf5Image(8 << 10, 40);
    auto put = Put(*socket, "identified.h5", image);
    ASSERT_TRUE(put.ok()) << put.status();
    EXPECT_EQ(put->final_reply.header.code, absl::StatusCode::kOk)
        << Describe(put->final_reply);
  }
}

// A PIN or UNPIN request for `generation` of `image_id`; a PIN's reply.
absl::StatusOr<Reply> Pin(LaneSocket& socket, const std::string& image_id,
                          uint64_t generation) {
  lane::RequestHeader header;
  header.op = lane::Op::kPin;
  header.generation = generation;
  if (absl::Status status = SendRequest(socket, header, image_id);
      !status.ok()) {
    return status;
  }
  return ReceiveReply(socket);
}

absl::Status Unpin(LaneSocket& socket, const std::string& image_id,
                   uint64_t generation) {
  lane::RequestHeader header;
  header.op = lane::Op::kUnpin;
  header.generation = generation;
  return SendRequest(socket, header, image_id);
}

TEST_F(DataLaneTest, PinHoldsAGenerationForReadsAnywhereUntilUnpinned) {
  ASSERT_NO_FATAL_FAILURE(StartServer());
  const std::string first = MakeHdf5Image(64 << 10, 41);
  const std::string second = MakeHdf5Image(96 << 10, 42);
  auto old_info = client_->Push("runs/pin.h5", first.data(), first.size());
  ASSERT_TRUE(old_info.ok()) << old_info.status();

  uint16_t agreed = 0;
  auto pinner = OpenLane(Transport::kTcp,
                         lane::kFeaturePin | lane::kFeatureRead, &agreed);
  ASSERT_TRUE(pinner.ok()) << pinner.status();
  ASSERT_EQ(agreed, lane::kFeaturePin | lane::kFeatureRead);
  auto pinned = Pin(*pinner, "runs/pin.h5", 0);
  ASSERT_TRUE(pinned.ok()) << pinned.status();
  ASSERT_EQ(pinned->header.code, absl::StatusCode::kOk) << Describe(*pinned);
  ExpectSameInfo(pinned->header, *old_info);

  // Replaced, and still there for a reader on another connection.
  auto new_info = client_->Push("runs/pin.h5", second.data(), second.size());
  ASSERT_TRUE(new_info.ok()) << new_info.status();
  auto reader = OpenLane(Transport::kUnix, lane::kFeatureRead);
  ASSERT_TRUE(reader.ok()) << reader.status();
  auto old_read =
      ReadRange(*reader, "runs/pin.h5", old_info->generation, 0, first.size());
  ASSERT_TRUE(old_read.ok()) << old_read.status();
  ASSERT_EQ(old_read->reply.header.code, absl::StatusCode::kOk)
      << Describe(old_read->reply);
  EXPECT_TRUE(old_read->bytes == first);
  // The reader's connection lets go of what it sent only once sendmsg
  // returns, which may be after the bytes arrived here; its next answer
  // comes once it has.
  ASSERT_TRUE(ReadRange(*reader, "runs/pin.h5", 0, 0, 16).ok());

  // Unpinned: gone. (The pinner's own connection reads it next, after the
  // UNPIN, which has no answer.) An UNPIN of nothing pinned is ignored.
  ASSERT_TRUE(Unpin(*pinner, "runs/pin.h5", old_info->generation).ok());
  ASSERT_TRUE(Unpin(*pinner, "runs/pin.h5", old_info->generation).ok());
  auto after = ReadRange(*pinner, "runs/pin.h5", old_info->generation, 0, 16);
  ASSERT_TRUE(after.ok()) << after.status();
  EXPECT_EQ(after->reply.header.code, absl::StatusCode::kNotFound)
      << Describe(after->reply);
  auto current = ReadRange(*pinner, "runs/pin.h5", 0, 0, second.size());
  ASSERT_TRUE(current.ok()) << current.status();
  EXPECT_TRUE(current->bytes == second);
}

TEST_F(DataLaneTest, PinRefusalsAreAnsweredAndPinsAreCappedPerConnection) {
  ASSERT_NO_FATAL_FAILURE(StartServer());
  const std::string image = MakeHdf5Image(16 << 10, 43);
  auto pushed = client_->Push("runs/capped.h5", image.data(), image.size());
  ASSERT_TRUE(pushed.ok()) << pushed.status();
  auto socket = OpenLane(Transport::kUnix, lane::kFeaturePin);
  ASSERT_TRUE(socket.ok()) << socket.status();

  auto absent = Pin(*socket, "runs/absent.h5", 0);
  ASSERT_TRUE(absent.ok()) << absent.status();
  EXPECT_EQ(absent->header.code, absl::StatusCode::kNotFound);
  auto old = Pin(*socket, "runs/capped.h5", pushed->generation + 1);
  ASSERT_TRUE(old.ok()) << old.status();
  EXPECT_EQ(old->header.code, absl::StatusCode::kNotFound);
  auto invalid = Pin(*socket, "has space", 0);
  ASSERT_TRUE(invalid.ok()) << invalid.status();
  EXPECT_EQ(invalid->header.code, absl::StatusCode::kInvalidArgument);

  for (size_t i = 0; i < lane::kMaxPinsPerConnection; ++i) {
    auto pinned = Pin(*socket, "runs/capped.h5", 0);
    ASSERT_TRUE(pinned.ok()) << pinned.status();
    ASSERT_EQ(pinned->header.code, absl::StatusCode::kOk) << Describe(*pinned);
  }
  auto one_more = Pin(*socket, "runs/capped.h5", 0);
  ASSERT_TRUE(one_more.ok()) << one_more.status();
  EXPECT_EQ(one_more->header.code, absl::StatusCode::kResourceExhausted)
      << Describe(*one_more);
  // Unpinning one makes room again.
  ASSERT_TRUE(Unpin(*socket, "runs/capped.h5", pushed->generation).ok());
  auto again = Pin(*socket, "runs/capped.h5", 0);
  ASSERT_TRUE(again.ok()) << again.status();
  EXPECT_EQ(again->header.code, absl::StatusCode::kOk) << Describe(*again);
}

TEST_F(DataLaneTest, PinWithoutAgreeingToClosesTheConnection) {
  ASSERT_NO_FATAL_FAILURE(StartServer());
  auto socket = OpenLane(Transport::kTcp, lane::kFeatureRead);
  ASSERT_TRUE(socket.ok()) << socket.status();
  lane::RequestHeader header;
  header.op = lane::Op::kPin;
  ASSERT_TRUE(SendRequest(*socket, header, "runs/a.h5").ok());
  EXPECT_TRUE(ServerClosed(*socket));
}

TEST(FirstContactTest, TheLaneListensBesideAGivenPortAndClientsFindItThere) {
  std::unique_ptr<ServerProcess> server =
      StartOnAGivenPort({}, /*lane_beside=*/true);
  ASSERT_NE(server, nullptr);
  auto client = Client::Connect(server->tcp_target());
  ASSERT_TRUE(client.ok()) << client.status();
  const std::string image = MakeHdf5Image(3 << 20, 44);
  auto pushed = (*client)->Push("runs/beside.h5", image.data(), image.size());
  ASSERT_TRUE(pushed.ok()) << pushed.status();
  auto fetched = (*client)->Fetch("runs/beside.h5");
  ASSERT_TRUE(fetched.ok()) << fetched.status();
  EXPECT_EQ(fetched->info.checksum, pushed->checksum);
  auto reader = (*client)->OpenReader("runs/beside.h5");
  ASSERT_TRUE(reader.ok()) << reader.status();
  std::string head(4096, '\0');
  auto read = (*reader)->Read(0, head.data(), head.size());
  ASSERT_TRUE(read.ok()) << read.status();
  EXPECT_EQ(head, image.substr(0, head.size()));
  // Calls only gRPC carries work too, on the channel made without a call.
  auto limits = (*client)->GetLimits();
  ASSERT_TRUE(limits.ok()) << limits.status();
  EXPECT_EQ(limits->data_lane_port, server->data_lane_port());
}

TEST(FirstContactTest, ASilentProgramOnTheNextPortCostsAWaitNotAFailure) {
  std::optional<SilentListener> squatter;
  std::unique_ptr<ServerProcess> server =
      StartOnAGivenPort({}, /*lane_beside=*/false, [&](int port) {
        absl::StatusOr<SilentListener> listener = ListenSilently(port + 1);
        if (listener.ok()) squatter = *std::move(listener);
      });
  ASSERT_NE(server, nullptr);
  ASSERT_TRUE(squatter.has_value());
  ASSERT_NE(server->data_lane_port(), 0);
  auto client = Client::Connect(server->tcp_target());
  ASSERT_TRUE(client.ok()) << client.status();
  const std::string image = MakeHdf5Image(2 << 20, 45);
  auto pushed = (*client)->Push("runs/squatted.h5", image.data(), image.size());
  ASSERT_TRUE(pushed.ok()) << pushed.status();
  auto fetched = (*client)->Fetch("runs/squatted.h5");
  ASSERT_TRUE(fetched.ok()) << fetched.status();
  EXPECT_EQ(fetched->info.checksum, pushed->checksum);
}

TEST(FirstContactTest, AnotherServersLaneOnTheNextPortIsNotTaken) {
  // `other` has its lane where `server`'s would be looked for.
  std::unique_ptr<ServerProcess> other;
  std::unique_ptr<ServerProcess> server =
      StartOnAGivenPort({}, /*lane_beside=*/false, [&](int port) {
        ServerProcessOptions options;
        options.extra_flags = {absl::StrCat("--data-port=", port + 1)};
        auto started = ServerProcess::Start(options);
        if (started.ok()) other = *std::move(started);
      });
  ASSERT_NE(server, nullptr);
  ASSERT_NE(other, nullptr);
  ASSERT_EQ(other->data_lane_port(),
            std::stoi(server->tcp_target().substr(10)) + 1);

  auto client = Client::Connect(server->tcp_target());
  ASSERT_TRUE(client.ok()) << client.status();
  const std::string image = MakeHdf5Image(64 << 10, 46);
  auto pushed = (*client)->Push("runs/mine.h5", image.data(), image.size());
  ASSERT_TRUE(pushed.ok()) << pushed.status();
  EXPECT_TRUE((*client)->Stat("runs/mine.h5").ok());
  auto other_client = Client::Connect(other->tcp_target());
  ASSERT_TRUE(other_client.ok()) << other_client.status();
  EXPECT_EQ((*other_client)->Stat("runs/mine.h5").status().code(),
            absl::StatusCode::kNotFound);
}

}  // namespace
}  // namespace h5depot
