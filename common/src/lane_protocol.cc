#include "h5depot/internal/lane_protocol.h"

#include <cstring>

#include "absl/strings/str_cat.h"
#include "h5depot/internal/token.h"

namespace h5depot::internal::lane {
namespace {

// Request flag bits.
constexpr uint8_t kHasGenerationMatch = 1;
constexpr uint8_t kAcceptsDescriptor = 2;
constexpr uint8_t kDescriptorOnly = 4;
constexpr uint8_t kStreamAppend = 8;
constexpr uint8_t kStepBuffer = 16;

// Response flag bits.
constexpr uint8_t kWithDescriptor = 1;

void Put16(uint16_t value, uint8_t* out) {
  out[0] = static_cast<uint8_t>(value);
  out[1] = static_cast<uint8_t>(value >> 8);
}

void Put32(uint32_t value, uint8_t* out) {
  for (int i = 0; i < 4; ++i) out[i] = static_cast<uint8_t>(value >> (8 * i));
}

uint16_t Get16(const uint8_t* in) {
  return static_cast<uint16_t>(in[0] | (in[1] << 8));
}

uint32_t Get32(const uint8_t* in) {
  uint32_t value = 0;
  for (int i = 0; i < 4; ++i) value |= uint32_t{in[i]} << (8 * i);
  return value;
}

// The ops that name a generation instead of a precondition, TTL and wait.
bool HasReadLayout(Op op) {
  return op == Op::kRead || op == Op::kPin || op == Op::kUnpin;
}

}  // namespace

void EncodeU64(uint64_t value, uint8_t out[8]) {
  for (int i = 0; i < 8; ++i) out[i] = static_cast<uint8_t>(value >> (8 * i));
}

uint64_t DecodeU64(const uint8_t in[8]) {
  uint64_t value = 0;
  for (int i = 0; i < 8; ++i) value |= uint64_t{in[i]} << (8 * i);
  return value;
}

//  0 magic  4 version  6 features
void EncodeHello(uint8_t out[kHelloBytes], uint16_t features) {
  Put32(kMagic, out);
  Put16(kVersion, out + 4);
  Put16(features, out + 6);
}

absl::Status DecodeHello(const uint8_t in[kHelloBytes], uint16_t* features) {
  if (Get32(in) != kMagic) {
    return absl::InvalidArgumentError("the peer does not speak the data lane");
  }
  if (Get16(in + 4) != kVersion) {
    return absl::InvalidArgumentError(
        absl::StrCat("the peer speaks data lane version ", Get16(in + 4),
                     ", not ", kVersion));
  }
  if (features != nullptr) *features = Get16(in + 6);
  return absl::OkStatus();
}

//  0 grpc_port  2 flags (bit 0: admitted; the rest reserved)  3 reserved
void EncodeIdentity(const Identity& identity, uint8_t out[kIdentityBytes]) {
  std::memset(out, 0, kIdentityBytes);
  Put16(identity.grpc_port, out);
  out[2] = identity.admitted ? 1 : 0;
}

absl::Status DecodeIdentity(const uint8_t in[kIdentityBytes],
                            Identity* identity) {
  identity->grpc_port = Get16(in);
  identity->admitted = (in[2] & 1) != 0;
  return absl::OkStatus();
}

void EncodeTokenHeader(uint16_t token_bytes, uint8_t out[kTokenHeaderBytes]) {
  Put16(token_bytes, out);
}

absl::Status DecodeTokenHeader(const uint8_t in[kTokenHeaderBytes],
                               uint16_t* token_bytes) {
  const uint16_t length = Get16(in);
  if (length == 0 || length > kMaxTokenBytes) {
    return absl::InvalidArgumentError(
        absl::StrCat("a token of ", length, " bytes (1 to ", kMaxTokenBytes,
                     " are allowed)"));
  }
  *token_bytes = length;
  return absl::OkStatus();
}

//  0 op  1 flags  2 image_id_bytes  4 client_cpu + 1 (0: not said)  8 size
// 16 if_generation_match (PUT), newer_than (GET)  24 ttl_ms  32 wait_ms
// READ has no generation precondition, time to live nor wait: its
// generation is at 16 and its offset at 24. PIN and UNPIN are laid out as
// READ, with only the generation set.
void EncodeRequestHeader(const RequestHeader& header,
                         uint8_t out[kRequestHeaderBytes]) {
  std::memset(out, 0, kRequestHeaderBytes);
  out[0] = static_cast<uint8_t>(header.op);
  out[1] = (header.if_generation_match.has_value() ? kHasGenerationMatch : 0) |
           (header.accepts_descriptor ? kAcceptsDescriptor : 0) |
           (header.descriptor_only ? kDescriptorOnly : 0) |
           (header.stream_append ? kStreamAppend : 0) |
           (header.step_buffer ? kStepBuffer : 0);
  Put16(header.image_id_bytes, out + 2);
  if (header.client_cpu.has_value() && *header.client_cpu < UINT32_MAX) {
    Put32(*header.client_cpu + 1, out + 4);
  }
  EncodeU64(header.size, out + 8);
  if (HasReadLayout(header.op)) {
    out[1] = 0;
    EncodeU64(header.generation, out + 16);
    EncodeU64(header.offset, out + 24);
    return;
  }
  if (header.op == Op::kGet) {
    out[1] &= ~kHasGenerationMatch;
    EncodeU64(header.newer_than, out + 16);
  } else {
    EncodeU64(header.if_generation_match.value_or(0), out + 16);
  }
  EncodeU64(header.ttl_ms, out + 24);
  const bool put = header.op == Op::kPut || header.op == Op::kPutSealed;
  EncodeU64(put ? header.replica_generation : header.wait_ms, out + 32);
}

absl::Status DecodeRequestHeader(const uint8_t in[kRequestHeaderBytes],
                                 RequestHeader* header) {
  if (in[0] != static_cast<uint8_t>(Op::kPut) &&
      in[0] != static_cast<uint8_t>(Op::kGet) &&
      in[0] != static_cast<uint8_t>(Op::kRead) &&
      in[0] != static_cast<uint8_t>(Op::kPutSealed) &&
      in[0] != static_cast<uint8_t>(Op::kRelease) &&
      in[0] != static_cast<uint8_t>(Op::kPin) &&
      in[0] != static_cast<uint8_t>(Op::kUnpin) &&
      in[0] != static_cast<uint8_t>(Op::kNext)) {
    return absl::InvalidArgumentError(
        absl::StrCat("unknown data lane request ", in[0]));
  }
  if ((in[1] & ~(kHasGenerationMatch | kAcceptsDescriptor | kDescriptorOnly |
                 kStreamAppend | kStepBuffer)) != 0) {
    return absl::InvalidArgumentError("unknown data lane request flags");
  }
  header->op = static_cast<Op>(in[0]);
  header->image_id_bytes = Get16(in + 2);
  header->size = DecodeU64(in + 8);
  header->if_generation_match.reset();
  if ((in[1] & kHasGenerationMatch) != 0) {
    header->if_generation_match = DecodeU64(in + 16);
  }
  header->accepts_descriptor = (in[1] & kAcceptsDescriptor) != 0;
  header->descriptor_only = (in[1] & kDescriptorOnly) != 0;
  header->stream_append = (in[1] & kStreamAppend) != 0;
  header->step_buffer = (in[1] & kStepBuffer) != 0;
  if (header->step_buffer &&
      (header->op != Op::kPutSealed || !header->stream_append)) {
    return absl::InvalidArgumentError(
        "a step buffer that is not a PUT_SEALED stream append");
  }
  if (header->stream_append && header->op != Op::kPut &&
      header->op != Op::kPutSealed) {
    return absl::InvalidArgumentError(
        "a stream append that is not a PUT or PUT_SEALED");
  }
  header->ttl_ms = DecodeU64(in + 24);
  header->wait_ms = 0;
  header->replica_generation = 0;
  if (header->op == Op::kPut || header->op == Op::kPutSealed) {
    header->replica_generation = DecodeU64(in + 32);
  } else {
    header->wait_ms = DecodeU64(in + 32);
  }
  header->client_cpu.reset();
  if (const uint32_t cpu_plus_one = Get32(in + 4); cpu_plus_one != 0) {
    header->client_cpu = cpu_plus_one - 1;
  }
  header->generation = 0;
  header->offset = 0;
  header->newer_than = 0;
  if (header->op == Op::kGet) {
    if (header->if_generation_match.has_value()) {
      return absl::InvalidArgumentError(
          "a data lane GET with a generation precondition");
    }
    header->newer_than = DecodeU64(in + 16);
  }
  if (header->op == Op::kNext &&
      (header->if_generation_match.has_value() || header->ttl_ms != 0 ||
       header->accepts_descriptor || header->descriptor_only ||
       header->size < kNextBodyFixedBytes ||
       header->size > kMaxNextBodyBytes)) {
    return absl::InvalidArgumentError(
        "a data lane NEXT with a generation precondition, a time to live, "
        "descriptor flags or a body of the wrong length");
  }
  if (HasReadLayout(header->op)) {
    if (header->if_generation_match.has_value() || header->wait_ms != 0 ||
        header->accepts_descriptor || header->descriptor_only) {
      return absl::InvalidArgumentError(
          "a data lane READ, PIN or UNPIN with a generation precondition, a "
          "wait or descriptor flags");
    }
    header->generation = DecodeU64(in + 16);
    header->offset = DecodeU64(in + 24);
    header->ttl_ms = 0;
    if (header->op != Op::kRead && (header->offset != 0 || header->size != 0)) {
      return absl::InvalidArgumentError(
          "a data lane PIN or UNPIN with an offset or a size");
    }
  }
  return absl::OkStatus();
}

//  0 kind  1 flags  2 code  4 message_bytes  6 reserved  8 size
// 16 generation  24 checksum  32 created_unix_micros  40 expires_unix_micros
void EncodeResponse(const Response& response,
                    uint8_t out[kResponseHeaderBytes]) {
  std::memset(out, 0, kResponseHeaderBytes);
  out[0] = static_cast<uint8_t>(response.kind);
  out[1] = response.with_descriptor ? kWithDescriptor : 0;
  Put16(static_cast<uint16_t>(response.code), out + 2);
  Put16(response.message_bytes, out + 4);
  EncodeU64(response.size, out + 8);
  EncodeU64(response.generation, out + 16);
  EncodeU64(response.checksum, out + 24);
  EncodeU64(static_cast<uint64_t>(response.created_unix_micros), out + 32);
  EncodeU64(static_cast<uint64_t>(response.expires_unix_micros), out + 40);
}

absl::Status DecodeResponse(const uint8_t in[kResponseHeaderBytes],
                            Response* response) {
  if (in[0] != static_cast<uint8_t>(ResponseKind::kContinue) &&
      in[0] != static_cast<uint8_t>(ResponseKind::kFinal)) {
    return absl::InvalidArgumentError(
        absl::StrCat("unknown data lane response ", in[0]));
  }
  const uint16_t code = Get16(in + 2);
  if (code > static_cast<uint16_t>(absl::StatusCode::kUnauthenticated)) {
    return absl::InvalidArgumentError(
        absl::StrCat("unknown status code ", code, " on the data lane"));
  }
  if ((in[1] & ~kWithDescriptor) != 0) {
    return absl::InvalidArgumentError("unknown data lane response flags");
  }
  response->kind = static_cast<ResponseKind>(in[0]);
  response->with_descriptor = (in[1] & kWithDescriptor) != 0;
  response->code = static_cast<absl::StatusCode>(code);
  response->message_bytes = Get16(in + 4);
  if (response->message_bytes > kMaxMessageBytes) {
    return absl::InvalidArgumentError("data lane status message too long");
  }
  response->size = DecodeU64(in + 8);
  response->generation = DecodeU64(in + 16);
  response->checksum = DecodeU64(in + 24);
  response->created_unix_micros = static_cast<int64_t>(DecodeU64(in + 32));
  response->expires_unix_micros = static_cast<int64_t>(DecodeU64(in + 40));
  return absl::OkStatus();
}

//  0 flags (bit 0: ack_step set)  1 start  2 group bytes  4 consumer bytes
//  6 reserved  8 start_step  16 lease_ms  24 ack_step; then the names
std::string EncodeNextBody(const NextBody& body) {
  std::string out(kNextBodyFixedBytes, '\0');
  auto* raw = reinterpret_cast<uint8_t*>(out.data());
  raw[0] = body.ack_step.has_value() ? 1 : 0;
  raw[1] = static_cast<uint8_t>(body.start);
  Put16(static_cast<uint16_t>(body.group.size()), raw + 2);
  Put16(static_cast<uint16_t>(body.consumer.size()), raw + 4);
  EncodeU64(body.start_step, raw + 8);
  EncodeU64(body.lease_ms, raw + 16);
  EncodeU64(body.ack_step.value_or(0), raw + 24);
  out += body.group;
  out += body.consumer;
  return out;
}

absl::Status DecodeNextBody(std::string_view in, NextBody* body) {
  if (in.size() < kNextBodyFixedBytes) {
    return absl::InvalidArgumentError("a NEXT body too short");
  }
  const auto* raw = reinterpret_cast<const uint8_t*>(in.data());
  if ((raw[0] & ~1) != 0 ||
      raw[1] > static_cast<uint8_t>(NextBody::Start::kStep)) {
    return absl::InvalidArgumentError("a NEXT body with unknown flags");
  }
  const size_t group_bytes = Get16(raw + 2);
  const size_t consumer_bytes = Get16(raw + 4);
  if (group_bytes == 0 || group_bytes > kMaxStreamNameBytes ||
      consumer_bytes == 0 || consumer_bytes > kMaxStreamNameBytes ||
      in.size() != kNextBodyFixedBytes + group_bytes + consumer_bytes) {
    return absl::InvalidArgumentError(
        "a NEXT body whose names are empty, too long or not its length");
  }
  body->start = static_cast<NextBody::Start>(raw[1]);
  body->start_step = DecodeU64(raw + 8);
  body->lease_ms = DecodeU64(raw + 16);
  body->ack_step.reset();
  if ((raw[0] & 1) != 0) body->ack_step = DecodeU64(raw + 24);
  body->group = std::string(in.substr(kNextBodyFixedBytes, group_bytes));
  body->consumer =
      std::string(in.substr(kNextBodyFixedBytes + group_bytes, consumer_bytes));
  return absl::OkStatus();
}

//  0 step  8 lost ranges  12 flags (bit 0: the bytes follow)  13 reserved
void EncodeStepTrailer(const StepTrailer& trailer,
                       uint8_t out[kStepTrailerBytes]) {
  std::memset(out, 0, kStepTrailerBytes);
  EncodeU64(trailer.step, out);
  Put32(trailer.lost_ranges, out + 8);
  out[12] = trailer.with_bytes ? 1 : 0;
}

absl::Status DecodeStepTrailer(const uint8_t in[kStepTrailerBytes],
                               StepTrailer* trailer) {
  if ((in[12] & ~1) != 0) {
    return absl::InvalidArgumentError("a step trailer with unknown flags");
  }
  trailer->step = DecodeU64(in);
  trailer->lost_ranges = Get32(in + 8);
  trailer->with_bytes = (in[12] & 1) != 0;
  if (trailer->lost_ranges > kMaxLostRanges) {
    return absl::InvalidArgumentError("a step trailer with too many ranges");
  }
  return absl::OkStatus();
}

}  // namespace h5depot::internal::lane
