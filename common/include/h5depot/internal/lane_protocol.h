// The data lane: a plain stream socket (TCP or Unix) beside gRPC over which
// push and fetch move image bytes straight between the image buffers at
// both ends, with one kernel copy each way and nothing in between. gRPC
// stays the control plane: clients learn the lane's address from
// GetLimits, and everything else (Stat, List, Delete, readers, health) is
// served there. docs/ARCHITECTURE.md describes the exchange; this header is
// its one encoding and decoding.
//
// All integers are little-endian. A connection starts with a Hello each way
// (client first); then the client sends requests one at a time, each
// answered in full before the next:
//
//   PUT  client: RequestHeader, image id
//        if size > kEagerPutBytes: server: Continue, or a final Response
//                                  refusing the push (and nothing more)
//        client: `size` image bytes, then the 8-byte XXH3-64 of them
//        server: Response (the published generation, or why not)
//   GET  client: RequestHeader, image id
//        server: Response; if it says OK, `size` image bytes follow, or,
//                when the response says `with_descriptor`, none: the
//                image's sealed memfd rides with the response header
//   READ client: RequestHeader (generation, offset, size: the length asked
//        for), image id; only once kFeatureRead was agreed
//        server: Response (the info of the generation read); if it says
//        OK, the part of [offset, offset + size) within the image follows:
//        min(size, image size - offset) bytes, none at or past its end
//   PUT_SEALED (kFeatureDescriptors only)
//        client: RequestHeader, image id, with a memfd sealed against any
//                change (memfd.h, kSealsFromClient) riding with the header
//        server: Response (the published generation, or why not)
//        With step_buffer set (kFeatureStepBuffers, stream appends only),
//        two descriptors ride instead: the writer's step buffer, a memfd
//        sealed only against resizing (memfd.h, kSealsOfStepBuffer) that
//        the writer fills again later, and the write end of a pipe that
//        the server holds until nothing of it, nor any reader it handed
//        the step to, uses the buffer any longer (docs/STREAMS.md, "Step
//        buffers")
//   RELEASE (kFeatureDescriptors only)
//        client: RequestHeader (`size`: a generation), image id
//        server: nothing
//   PIN  (kFeaturePin only)
//        client: RequestHeader (generation: 0 for the current one), image id
//        server: Response (the info of the generation pinned, or why not)
//        The connection then holds that generation, as a gRPC reader's
//        pin does: READs of it on any connection find it, however often
//        the image is replaced, until the client sends UNPIN for it or the
//        connection closes. At most kMaxPinsPerConnection at once.
//   UNPIN (kFeaturePin only)
//        client: RequestHeader (generation: one the connection pinned),
//        image id; server: nothing (a generation not pinned is ignored)
//   NEXT (kFeatureStreams only)
//        client: RequestHeader (size: the NextBody's length; wait_ms),
//        the stream's name as the image id, then the NextBody
//        server: Response (the step's info, its message the step's id;
//        or why not), and if it says OK, a StepTrailer, its lost ranges,
//        and, if the trailer says so, the step's `size` bytes (else the
//        client fetches the step by its id)
//
// Descriptors ride as SCM_RIGHTS on the message's first bytes, on a Unix
// socket only. Each descriptor a GET hands out is a lease on that
// generation, held by the connection: the server counts its memory until
// the client sends one RELEASE for it (after unmapping it) or the
// connection closes, and never reuses its memory for another image.
//
// A refused eager PUT is still read to its end, so the connection stays
// usable after any refusal. Anything malformed closes the connection.
//
// A hello also offers features (kFeature* bits); the server's hello answers
// with those of the client's it takes up, and only those are used.
//
// The lane's address: a client learns it from GetLimits, or, on the
// server's host, finds it without asking (docs/ARCHITECTURE.md, "First
// contact"): beside a Unix socket PATH at PATH.data, beside a TCP port P
// given to --listen at P + 1. It then offers kFeatureIdentity, and trusts
// the lane only if the Identity that follows the server's hello names the
// gRPC port it was given.
#ifndef H5DEPOT_COMMON_LANE_PROTOCOL_H_
#define H5DEPOT_COMMON_LANE_PROTOCOL_H_

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

#include "absl/status/status.h"
#include "h5depot/internal/token.h"

namespace h5depot::internal::lane {

// "H5DL" as it appears on the wire.
inline constexpr uint32_t kMagic = 0x4c443548;
inline constexpr uint16_t kVersion = 1;
inline constexpr size_t kHelloBytes = 8;

// Requests say which CPU the client's calling thread runs on (client_cpu),
// so that a server on the same host can serve them on that CPU. A server
// takes it up only from a client on its own host: over its Unix socket or
// TCP loopback.
inline constexpr uint16_t kFeatureClientCpu = 1;

// A client with a bearer token (token.h) offers this; once the server's
// hello agrees, the client sends a token header (the token's length) and
// the token, before its first request. The server then authorises each
// request of the connection against that token, by the same rule as a
// gRPC call carrying it. A server that does not agree needs no token.
inline constexpr uint16_t kFeatureToken = 2;
inline constexpr size_t kTokenHeaderBytes = 2;

// Over a Unix socket, a client that can map images offers this, and a
// server that keeps images in memfds agrees: a GET may then be answered
// with the image's descriptor instead of its bytes (the client says it
// takes one: RequestHeader::accepts_descriptor), and the client may push
// a sealed memfd (PUT_SEALED) and RELEASE what it was handed.
inline constexpr uint16_t kFeatureDescriptors = 4;
// A client that may send READ requests offers this; a server that serves
// them agrees. Without it (a server from before READ), ranged reads go
// over gRPC.
inline constexpr uint16_t kFeatureRead = 8;
// A client that asks whose lane it reached offers this; a server agrees
// and sends an Identity right after its hello, or, if the token was
// agreed, right after it read the token.
inline constexpr uint16_t kFeatureIdentity = 16;
// A client that may pin generations (PIN, UNPIN) offers this; a server
// that serves them agrees.
inline constexpr uint16_t kFeaturePin = 32;

// A client that may append steps to streams, and take them (NEXT),
// offers this; a server that
// has streams agrees. A PUT or PUT_SEALED may then set
// RequestHeader::stream_append: its image id names a stream, and the
// image becomes the stream's next step (docs/STREAMS.md). The Response
// that says it succeeded carries, as its message, the id of the step it
// published (image_id.h, StreamStepId). A stream append is not repeated
// by the client once all of it was sent: it may have been appended.
inline constexpr uint16_t kFeatureStreams = 64;

// A writer that may append a step in a buffer it reuses (PUT_SEALED with
// RequestHeader::step_buffer) offers this; a server that holds such steps
// agrees. Only with kFeatureDescriptors and kFeatureStreams.
inline constexpr uint16_t kFeatureStepBuffers = 128;

// Generations one connection may hold pinned at once; one more PIN is
// refused (RESOURCE_EXHAUSTED), the connection stays usable.
inline constexpr size_t kMaxPinsPerConnection = 64;

// Who answers on a lane: the server's gRPC TCP port, 0 if it has none;
// and whether it admits the connection's caller (the token it sent, or
// none) as a GetLimits call from it would be.
struct Identity {
  uint16_t grpc_port = 0;
  bool admitted = false;
};
inline constexpr size_t kIdentityBytes = 4;

// A PUT of at most this many bytes sends them right behind its header; a
// larger one waits for the server's Continue first, so that a push bound to
// be refused (too large, out of memory, wrong generation) moves no data.
inline constexpr uint64_t kEagerPutBytes = uint64_t{1} << 20;

// Longest status message a Response carries.
inline constexpr size_t kMaxMessageBytes = 4096;

enum class Op : uint8_t {
  kPut = 1,
  kGet = 2,
  kRead = 3,
  kPutSealed = 4,
  kRelease = 5,
  kPin = 6,
  kUnpin = 7,
  kNext = 8,
};

struct RequestHeader {
  Op op = Op::kGet;
  uint16_t image_id_bytes = 0;                  // the id follows the header
  uint64_t size = 0;                            // PUT: image bytes to follow
  std::optional<uint64_t> if_generation_match;  // PUT
  uint64_t ttl_ms = 0;                          // PUT; 0: never expires
  uint64_t wait_ms = 0;                         // GET; 0: do not wait
  // PUT, PUT_SEALED: not 0, the push is a copy of this generation held
  // elsewhere, published under it (PushOptions::replica_generation). It
  // rides in the slot a GET's wait takes, which servers from before it
  // ignore on a PUT.
  uint64_t replica_generation = 0;
  // GET: only a generation newer than this one (0: any), as FetchRequest's
  // newer_than_generation. A server from before it ignores it.
  uint64_t newer_than = 0;
  // PUT, PUT_SEALED: the image is the next step of the stream the id
  // names (kFeatureStreams).
  bool stream_append = false;
  // PUT_SEALED with stream_append: the memfd is a step buffer the writer
  // reuses, with its release pipe (kFeatureStepBuffers).
  bool step_buffer = false;
  // GET: the answer may be the image's descriptor (kFeatureDescriptors).
  bool accepts_descriptor = false;
  // GET, with accepts_descriptor: only the descriptor; an image that
  // cannot be handed over so is refused (FAILED_PRECONDITION), no bytes.
  bool descriptor_only = false;
  uint64_t generation = 0;  // READ, PIN (0: the current one), UNPIN
  uint64_t offset = 0;      // READ: of `size` bytes
  // The CPU the client waits on for the answer, if kFeatureClientCpu was
  // agreed; never sent otherwise.
  std::optional<uint32_t> client_cpu;
};
inline constexpr size_t kRequestHeaderBytes = 40;

enum class ResponseKind : uint8_t { kContinue = 1, kFinal = 2 };

// What the server says about a request; for a success, the image's info.
struct Response {
  ResponseKind kind = ResponseKind::kFinal;
  absl::StatusCode code = absl::StatusCode::kOk;
  uint16_t message_bytes = 0;  // the message follows the header
  // A GET's image came as a descriptor with this header: no bytes follow.
  bool with_descriptor = false;
  uint64_t size = 0;
  uint64_t generation = 0;
  uint64_t checksum = 0;  // 0 when not computed (a descriptor handed over)
  int64_t created_unix_micros = 0;
  int64_t expires_unix_micros = 0;  // 0: never
};
inline constexpr size_t kResponseHeaderBytes = 48;

// A hello offering `features`.
void EncodeHello(uint8_t out[kHelloBytes], uint16_t features = 0);
// INVALID_ARGUMENT naming what is wrong (not a lane, other version). The
// features offered go to `*features` if given; unknown ones are kept, for
// the receiver to ignore.
absl::Status DecodeHello(const uint8_t in[kHelloBytes],
                         uint16_t* features = nullptr);

// The header of a token `token_bytes` long (1 to kMaxTokenBytes).
void EncodeIdentity(const Identity& identity, uint8_t out[kIdentityBytes]);
// Always succeeds: every value is an identity (the reserved bits are
// ignored); returns a status only to keep the decoders alike.
absl::Status DecodeIdentity(const uint8_t in[kIdentityBytes],
                            Identity* identity);

void EncodeTokenHeader(uint16_t token_bytes, uint8_t out[kTokenHeaderBytes]);
// INVALID_ARGUMENT for a length of 0 or over kMaxTokenBytes.
absl::Status DecodeTokenHeader(const uint8_t in[kTokenHeaderBytes],
                               uint16_t* token_bytes);

void EncodeRequestHeader(const RequestHeader& header,
                         uint8_t out[kRequestHeaderBytes]);
// INVALID_ARGUMENT for an unknown op or flags, a READ with fields it does
// not have, or a PIN or UNPIN with any besides its generation.
absl::Status DecodeRequestHeader(const uint8_t in[kRequestHeaderBytes],
                                 RequestHeader* header);

void EncodeResponse(const Response& response,
                    uint8_t out[kResponseHeaderBytes]);
// INVALID_ARGUMENT for an unknown kind or code.
absl::Status DecodeResponse(const uint8_t in[kResponseHeaderBytes],
                            Response* response);

// What a NEXT asks besides its stream and wait: as
// Client::Next's NextOptions, with the consumer named.
struct NextBody {
  enum class Start : uint8_t { kOldest = 0, kLatest = 1, kStep = 2 };
  Start start = Start::kOldest;      // for a group that does not exist yet
  uint64_t start_step = 0;           // kStep
  uint64_t lease_ms = 0;             // 0: the server's default
  std::optional<uint64_t> ack_step;  // acknowledged first
  std::string group;                 // 1 to kMaxStreamNameBytes
  std::string consumer;              // 1 to kMaxStreamNameBytes
};
inline constexpr size_t kNextBodyFixedBytes = 32;
inline constexpr size_t kMaxStreamNameBytes = 255;
inline constexpr size_t kMaxNextBodyBytes =
    kNextBodyFixedBytes + 2 * kMaxStreamNameBytes;

// Follows a NEXT's OK response: the step's number, how many lost ranges
// (two u64 each: first, last) follow it, and whether the step's bytes
// follow them.
struct StepTrailer {
  uint64_t step = 0;
  uint32_t lost_ranges = 0;
  bool with_bytes = false;
};
inline constexpr size_t kStepTrailerBytes = 16;
// More lost ranges than this in one answer is malformed.
inline constexpr uint32_t kMaxLostRanges = 1 << 16;

// The body's encoding: kNextBodyFixedBytes, then the group and consumer.
std::string EncodeNextBody(const NextBody& body);
// INVALID_ARGUMENT for a body of the wrong length, an unknown start or
// flags, or a name of 0 or over kMaxStreamNameBytes bytes.
absl::Status DecodeNextBody(std::string_view in, NextBody* body);

void EncodeStepTrailer(const StepTrailer& trailer,
                       uint8_t out[kStepTrailerBytes]);
// INVALID_ARGUMENT for unknown flags or more than kMaxLostRanges.
absl::Status DecodeStepTrailer(const uint8_t in[kStepTrailerBytes],
                               StepTrailer* trailer);

void EncodeU64(uint64_t value, uint8_t out[8]);
uint64_t DecodeU64(const uint8_t in[8]);

}  // namespace h5depot::internal::lane

#endif  // H5DEPOT_COMMON_LANE_PROTOCOL_H_
