// Fuzzes the data lane's decoders (h5depot/internal/lane_protocol.h): the
// first thing the server does with a client's bytes, and the client with
// the server's. The first byte of an input says what the rest is:
//
//   0  a hello, then an identity  3  field values, encoded and decoded again
//   1  a request header           4  a NEXT's body (any length)
//   2  a response header          5  a step trailer
//
// (the byte modulo 6). Each fixed-size decoder gets a buffer of exactly its
// size (the input's bytes, zero-padded when short), so ASan reports a read
// past it; a NEXT's body is the rest of the input, copied to a buffer of
// its own. Besides not crashing, decoding must refuse only with
// INVALID_ARGUMENT, and what it accepts must encode back to the same bytes,
// less those the protocol ignores.
#include <fuzzer/FuzzedDataProvider.h>

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "fuzz/fuzz_check.h"
#include "h5depot/internal/lane_protocol.h"

namespace h5depot::internal::lane {
namespace {

using ::h5depot::fuzz::ExactBytes;

bool SameRequest(const RequestHeader& a, const RequestHeader& b) {
  return a.op == b.op && a.image_id_bytes == b.image_id_bytes &&
         a.size == b.size && a.if_generation_match == b.if_generation_match &&
         a.ttl_ms == b.ttl_ms && a.wait_ms == b.wait_ms &&
         a.generation == b.generation && a.offset == b.offset &&
         a.accepts_descriptor == b.accepts_descriptor &&
         a.descriptor_only == b.descriptor_only &&
         a.newer_than == b.newer_than &&
         a.replica_generation == b.replica_generation &&
         a.stream_append == b.stream_append && a.step_buffer == b.step_buffer &&
         a.client_cpu == b.client_cpu;
}

bool SameResponse(const Response& a, const Response& b) {
  return a.kind == b.kind && a.code == b.code &&
         a.with_descriptor == b.with_descriptor &&
         a.message_bytes == b.message_bytes && a.size == b.size &&
         a.generation == b.generation && a.checksum == b.checksum &&
         a.created_unix_micros == b.created_unix_micros &&
         a.expires_unix_micros == b.expires_unix_micros;
}

void CheckHello(const uint8_t* data, size_t size) {
  const std::vector<uint8_t> in = ExactBytes(data, size, kHelloBytes);
  uint16_t features = 0;
  const absl::Status status = DecodeHello(in.data(), &features);
  if (!status.ok()) {
    FUZZ_CHECK(status.code() == absl::StatusCode::kInvalidArgument);
    return;
  }
  uint8_t again[kHelloBytes];
  EncodeHello(again, features);
  FUZZ_CHECK(std::memcmp(again, in.data(), kHelloBytes) == 0);
  FUZZ_CHECK(DecodeHello(in.data()).ok());  // features are optional

  // What follows a server's hello when the client asked who it is: every
  // value decodes, and encodes back less its reserved bits.
  const std::vector<uint8_t> rest =
      size > kHelloBytes
          ? ExactBytes(data + kHelloBytes, size - kHelloBytes, kIdentityBytes)
          : std::vector<uint8_t>(kIdentityBytes, 0);
  Identity identity;
  FUZZ_CHECK(DecodeIdentity(rest.data(), &identity).ok());
  uint8_t identity_again[kIdentityBytes];
  EncodeIdentity(identity, identity_again);
  FUZZ_CHECK(std::memcmp(identity_again, rest.data(), 2) == 0);
  FUZZ_CHECK(identity_again[2] == (rest[2] & 1) && identity_again[3] == 0);
}

// The ops whose header names a generation (and for READ an offset) in the
// place of a precondition, a TTL and a wait.
bool HasReadLayout(Op op) {
  return op == Op::kRead || op == Op::kPin || op == Op::kUnpin;
}

void CheckRequestHeader(const uint8_t* data, size_t size) {
  const std::vector<uint8_t> in = ExactBytes(data, size, kRequestHeaderBytes);
  RequestHeader header;
  const absl::Status status = DecodeRequestHeader(in.data(), &header);
  if (!status.ok()) {
    FUZZ_CHECK(status.code() == absl::StatusCode::kInvalidArgument);
    return;
  }
  FUZZ_CHECK(header.op == Op::kPut || header.op == Op::kGet ||
             header.op == Op::kRead || header.op == Op::kPutSealed ||
             header.op == Op::kRelease || header.op == Op::kPin ||
             header.op == Op::kUnpin || header.op == Op::kNext);
  if (header.stream_append) {
    FUZZ_CHECK(header.op == Op::kPut || header.op == Op::kPutSealed);
  }
  if (header.step_buffer) {
    FUZZ_CHECK(header.op == Op::kPutSealed && header.stream_append);
  }
  if (header.op == Op::kNext) {
    FUZZ_CHECK(header.size >= kNextBodyFixedBytes &&
               header.size <= kMaxNextBodyBytes && header.ttl_ms == 0 &&
               !header.if_generation_match && !header.accepts_descriptor &&
               !header.descriptor_only);
  }
  if (header.op == Op::kPin || header.op == Op::kUnpin) {
    FUZZ_CHECK(header.offset == 0 && header.size == 0);
  }
  // Every byte means something, except the generation to match (offset 16)
  // of a PUT whose flags do not ask for one. (A GET's newer_than, and a
  // READ's, PIN's or UNPIN's generation are there.)
  std::vector<uint8_t> meant = in;
  if (header.op == Op::kGet) FUZZ_CHECK(!header.if_generation_match);
  if (!HasReadLayout(header.op) && header.op != Op::kGet &&
      !header.if_generation_match.has_value()) {
    std::memset(meant.data() + 16, 0, 8);
  }
  uint8_t again[kRequestHeaderBytes];
  EncodeRequestHeader(header, again);
  FUZZ_CHECK(std::memcmp(again, meant.data(), kRequestHeaderBytes) == 0);
}

void CheckResponse(const uint8_t* data, size_t size) {
  const std::vector<uint8_t> in = ExactBytes(data, size, kResponseHeaderBytes);
  Response response;
  const absl::Status status = DecodeResponse(in.data(), &response);
  if (!status.ok()) {
    FUZZ_CHECK(status.code() == absl::StatusCode::kInvalidArgument);
    return;
  }
  FUZZ_CHECK(response.kind == ResponseKind::kContinue ||
             response.kind == ResponseKind::kFinal);
  FUZZ_CHECK(response.message_bytes <= kMaxMessageBytes);
  // Bytes 6 and 7 are reserved: sent as zero, ignored when read.
  std::vector<uint8_t> meant = in;
  meant[6] = meant[7] = 0;
  uint8_t again[kResponseHeaderBytes];
  EncodeResponse(response, again);
  FUZZ_CHECK(std::memcmp(again, meant.data(), kResponseHeaderBytes) == 0);
}

void CheckNextBody(const uint8_t* data, size_t size) {
  // A buffer of its own, so that ASan sees a read past it.
  const std::vector<char> in(data, data + size);
  const std::string_view body_bytes(in.data(), in.size());
  NextBody body;
  const absl::Status status = DecodeNextBody(body_bytes, &body);
  if (!status.ok()) {
    FUZZ_CHECK(status.code() == absl::StatusCode::kInvalidArgument);
    return;
  }
  FUZZ_CHECK(!body.group.empty() && body.group.size() <= kMaxStreamNameBytes);
  FUZZ_CHECK(!body.consumer.empty() &&
             body.consumer.size() <= kMaxStreamNameBytes);
  // Bytes 6 and 7 are reserved, and the acknowledged step is read only
  // when the flags say one is there.
  std::string meant(body_bytes);
  meant[6] = meant[7] = 0;
  if (!body.ack_step.has_value()) std::memset(meant.data() + 24, 0, 8);
  FUZZ_CHECK(EncodeNextBody(body) == meant);
}

void CheckStepTrailer(const uint8_t* data, size_t size) {
  const std::vector<uint8_t> in = ExactBytes(data, size, kStepTrailerBytes);
  StepTrailer trailer;
  const absl::Status status = DecodeStepTrailer(in.data(), &trailer);
  if (!status.ok()) {
    FUZZ_CHECK(status.code() == absl::StatusCode::kInvalidArgument);
    return;
  }
  FUZZ_CHECK(trailer.lost_ranges <= kMaxLostRanges);
  // Bytes 13 to 15 are reserved.
  std::vector<uint8_t> meant = in;
  meant[13] = meant[14] = meant[15] = 0;
  uint8_t again[kStepTrailerBytes];
  EncodeStepTrailer(trailer, again);
  FUZZ_CHECK(std::memcmp(again, meant.data(), kStepTrailerBytes) == 0);
}

// Whatever the sender may say decodes to what it said.
void CheckRoundTrips(const uint8_t* data, size_t size) {
  FuzzedDataProvider provider(data, size);

  const uint16_t features = provider.ConsumeIntegral<uint16_t>();
  uint8_t hello[kHelloBytes];
  EncodeHello(hello, features);
  uint16_t features_read = 0;
  FUZZ_CHECK(DecodeHello(hello, &features_read).ok());
  FUZZ_CHECK(features_read == features);

  RequestHeader request;
  constexpr Op kOps[] = {Op::kPut,     Op::kGet, Op::kRead,  Op::kPutSealed,
                         Op::kRelease, Op::kPin, Op::kUnpin, Op::kNext};
  request.op = kOps[provider.ConsumeIntegralInRange(0, 7)];
  request.accepts_descriptor = provider.ConsumeBool();
  request.descriptor_only = provider.ConsumeBool();
  request.image_id_bytes = provider.ConsumeIntegral<uint16_t>();
  request.size = provider.ConsumeIntegral<uint64_t>();
  if (provider.ConsumeBool()) {
    request.if_generation_match = provider.ConsumeIntegral<uint64_t>();
  }
  request.ttl_ms = provider.ConsumeIntegral<uint64_t>();
  request.wait_ms = provider.ConsumeIntegral<uint64_t>();
  if (provider.ConsumeBool()) {
    request.client_cpu = provider.ConsumeIntegral<uint32_t>();
  }
  if (request.op == Op::kPut || request.op == Op::kPutSealed) {
    // A PUT's replica generation takes the place of a GET's wait.
    request.wait_ms = 0;
    request.replica_generation = provider.ConsumeIntegral<uint64_t>();
    request.stream_append = provider.ConsumeBool();
    request.step_buffer = request.op == Op::kPutSealed &&
                          request.stream_append && provider.ConsumeBool();
  }
  if (request.op == Op::kNext) {
    // A NEXT has a wait and a body's length, and nothing of a push.
    request.if_generation_match.reset();
    request.ttl_ms = 0;
    request.accepts_descriptor = false;
    request.descriptor_only = false;
    request.size = provider.ConsumeIntegralInRange<uint64_t>(
        kNextBodyFixedBytes, kMaxNextBodyBytes);
  }
  if (request.op == Op::kGet) {
    // A GET has no precondition; its newer_than is in that place.
    request.if_generation_match.reset();
    request.newer_than = provider.ConsumeIntegral<uint64_t>();
  }
  if (HasReadLayout(request.op)) {
    // A READ carries a generation and an offset in their place; a PIN or
    // UNPIN only the generation.
    request.if_generation_match.reset();
    request.ttl_ms = 0;
    request.wait_ms = 0;
    request.accepts_descriptor = false;
    request.descriptor_only = false;
    request.generation = provider.ConsumeIntegral<uint64_t>();
    request.offset = provider.ConsumeIntegral<uint64_t>();
    if (request.op != Op::kRead) request.offset = request.size = 0;
  }
  uint8_t request_bytes[kRequestHeaderBytes];
  EncodeRequestHeader(request, request_bytes);
  RequestHeader request_read;
  FUZZ_CHECK(DecodeRequestHeader(request_bytes, &request_read).ok());
  // UINT32_MAX is no CPU number the encoding can carry: it is not sent.
  if (request.client_cpu == UINT32_MAX) request.client_cpu.reset();
  FUZZ_CHECK(SameRequest(request_read, request));

  Response response;
  response.kind =
      provider.ConsumeBool() ? ResponseKind::kContinue : ResponseKind::kFinal;
  response.with_descriptor = provider.ConsumeBool();
  response.code = static_cast<absl::StatusCode>(provider.ConsumeIntegralInRange(
      0, static_cast<int>(absl::StatusCode::kUnauthenticated)));
  response.message_bytes = static_cast<uint16_t>(
      provider.ConsumeIntegralInRange<size_t>(0, kMaxMessageBytes));
  response.size = provider.ConsumeIntegral<uint64_t>();
  response.generation = provider.ConsumeIntegral<uint64_t>();
  response.checksum = provider.ConsumeIntegral<uint64_t>();
  response.created_unix_micros = provider.ConsumeIntegral<int64_t>();
  response.expires_unix_micros = provider.ConsumeIntegral<int64_t>();
  uint8_t response_bytes[kResponseHeaderBytes];
  EncodeResponse(response, response_bytes);
  Response response_read;
  FUZZ_CHECK(DecodeResponse(response_bytes, &response_read).ok());
  FUZZ_CHECK(SameResponse(response_read, response));

  Identity identity;
  identity.grpc_port = provider.ConsumeIntegral<uint16_t>();
  identity.admitted = provider.ConsumeBool();
  uint8_t identity_bytes[kIdentityBytes];
  EncodeIdentity(identity, identity_bytes);
  Identity identity_read;
  FUZZ_CHECK(DecodeIdentity(identity_bytes, &identity_read).ok());
  FUZZ_CHECK(identity_read.grpc_port == identity.grpc_port &&
             identity_read.admitted == identity.admitted);

  NextBody body;
  body.start = static_cast<NextBody::Start>(provider.ConsumeIntegralInRange(
      0, static_cast<int>(NextBody::Start::kStep)));
  body.start_step = provider.ConsumeIntegral<uint64_t>();
  body.lease_ms = provider.ConsumeIntegral<uint64_t>();
  if (provider.ConsumeBool())
    body.ack_step = provider.ConsumeIntegral<uint64_t>();
  body.group = provider.ConsumeRandomLengthString(kMaxStreamNameBytes);
  body.consumer = provider.ConsumeRandomLengthString(kMaxStreamNameBytes);
  if (body.group.empty()) body.group = "g";
  if (body.consumer.empty()) body.consumer = "c";
  NextBody body_read;
  FUZZ_CHECK(DecodeNextBody(EncodeNextBody(body), &body_read).ok());
  FUZZ_CHECK(body_read.start == body.start &&
             body_read.start_step == body.start_step &&
             body_read.lease_ms == body.lease_ms &&
             body_read.ack_step == body.ack_step &&
             body_read.group == body.group &&
             body_read.consumer == body.consumer);

  StepTrailer trailer;
  trailer.step = provider.ConsumeIntegral<uint64_t>();
  trailer.lost_ranges =
      provider.ConsumeIntegralInRange<uint32_t>(0, kMaxLostRanges);
  trailer.with_bytes = provider.ConsumeBool();
  uint8_t trailer_bytes[kStepTrailerBytes];
  EncodeStepTrailer(trailer, trailer_bytes);
  StepTrailer trailer_read;
  FUZZ_CHECK(DecodeStepTrailer(trailer_bytes, &trailer_read).ok());
  FUZZ_CHECK(trailer_read.step == trailer.step &&
             trailer_read.lost_ranges == trailer.lost_ranges &&
             trailer_read.with_bytes == trailer.with_bytes);

  const uint64_t value = provider.ConsumeIntegral<uint64_t>();
  uint8_t value_bytes[8];
  EncodeU64(value, value_bytes);
  FUZZ_CHECK(DecodeU64(value_bytes) == value);
}

}  // namespace
}  // namespace h5depot::internal::lane

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  namespace lane = ::h5depot::internal::lane;
  if (size == 0) return 0;
  const uint8_t* message = data + 1;
  const size_t message_size = size - 1;
  switch (data[0] % 6) {
    case 0:
      lane::CheckHello(message, message_size);
      break;
    case 1:
      lane::CheckRequestHeader(message, message_size);
      break;
    case 2:
      lane::CheckResponse(message, message_size);
      break;
    case 3:
      lane::CheckRoundTrips(message, message_size);
      break;
    case 4:
      lane::CheckNextBody(message, message_size);
      break;
    case 5:
      lane::CheckStepTrailer(message, message_size);
      break;
  }
  return 0;
}
