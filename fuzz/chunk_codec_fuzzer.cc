// Fuzzes the chunk codec's reader (h5depot/rpc/chunk_codec.h): how the
// server reads pushed chunks and the client fetched ones, straight out of
// the slices gRPC received, without protobuf. An input is
//
//   byte 0          the number of cuts (its low 3 bits)
//   one byte each   how far each cut is past the one before
//   the rest        the message, cut into slices there
//
// so that the prefix and payload arrive split anywhere, as gRPC may split
// them. ChunkPayload::Parse must agree with protobuf: what it accepts,
// protobuf reads as the same chunk, and it accepts every chunk message as
// protobuf writes it (except payloads of 2 GiB and more, which protobuf
// refuses, the codec reads, and no input here can hold). Its pieces must be
// the message's bytes after the prefix, in order; ParseMessage must read
// what protobuf reads; and the codec's own messages must read back to their
// payload.
#include <grpcpp/impl/codegen/proto_utils.h>
#include <grpcpp/support/byte_buffer.h>
#include <grpcpp/support/slice.h>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "fuzz/fuzz_check.h"
#include "google/protobuf/stubs/logging.h"
#include "h5depot/rpc/chunk_codec.h"
#include "h5depot/v1/depot.pb.h"

namespace h5depot::internal {
namespace {

// `message` as a byte buffer cut into slices at `cuts` (ascending, each at
// most message.size()), empty slices included.
grpc::ByteBuffer Sliced(const std::string& message,
                        const std::vector<size_t>& cuts) {
  std::vector<grpc::Slice> slices;
  size_t at = 0;
  for (size_t cut : cuts) {
    slices.emplace_back(message.data() + at, cut - at);
    at = cut;
  }
  slices.emplace_back(message.data() + at, message.size() - at);
  return grpc::ByteBuffer(slices.data(), slices.size());
}

// The payload's pieces, joined; each piece must hold at least one byte.
std::string JoinedPieces(const ChunkPayload& chunk) {
  std::string payload;
  FUZZ_CHECK(chunk.ForEachPiece([&](const uint8_t* data, size_t size) {
    FUZZ_CHECK(size > 0);
    payload.append(reinterpret_cast<const char*>(data), size);
    return true;
  }));
  return payload;
}

void CheckParse(const std::string& message, const std::vector<size_t>& cuts) {
  const grpc::ByteBuffer buffer = Sliced(message, cuts);
  v1::FetchResponse by_protobuf;
  const bool protobuf_parsed = by_protobuf.ParseFromString(message);

  v1::FetchResponse by_parse_message;
  FUZZ_CHECK(ParseMessage(buffer, &by_parse_message) == protobuf_parsed);
  if (protobuf_parsed) {
    FUZZ_CHECK(by_parse_message.SerializeAsString() ==
               by_protobuf.SerializeAsString());
  }

  ChunkPayload chunk;
  if (!chunk.Parse(buffer)) {
    // Only other messages and unusual encodings of a chunk are left to
    // protobuf, never a lone chunk field as protobuf writes it.
    if (protobuf_parsed &&
        by_protobuf.kind_case() == v1::FetchResponse::kChunk) {
      v1::FetchResponse lone_chunk;
      lone_chunk.set_chunk(by_protobuf.chunk());
      FUZZ_CHECK(lone_chunk.SerializeAsString() != message);
    }
    return;
  }
  FUZZ_CHECK(chunk.size() <= message.size());
  const std::string payload = JoinedPieces(chunk);
  FUZZ_CHECK(payload.size() == chunk.size());
  FUZZ_CHECK(payload == message.substr(message.size() - payload.size()));
  FUZZ_CHECK(protobuf_parsed);
  FUZZ_CHECK(by_protobuf.kind_case() == v1::FetchResponse::kChunk);
  FUZZ_CHECK(by_protobuf.chunk() == payload);
  // ForEachPiece stops at the first piece refused.
  int pieces_seen = 0;
  const bool all = chunk.ForEachPiece([&](const uint8_t*, size_t) {
    ++pieces_seen;
    return false;
  });
  FUZZ_CHECK(all == payload.empty());
  FUZZ_CHECK(pieces_seen == (payload.empty() ? 0 : 1));
}

void CheckRoundTrip(const std::string& payload) {
  const auto* bytes = reinterpret_cast<const uint8_t*>(payload.data());
  auto owner = std::make_shared<std::string>(payload);
  for (const grpc::ByteBuffer& message :
       {ChunkMessageCopying(bytes, payload.size()),
        ChunkMessageReferencing(reinterpret_cast<const uint8_t*>(owner->data()),
                                owner->size(), owner)}) {
    ChunkPayload chunk;
    FUZZ_CHECK(chunk.Parse(message));
    FUZZ_CHECK(chunk.size() == payload.size());
    FUZZ_CHECK(JoinedPieces(chunk) == payload);
  }
}

}  // namespace
}  // namespace h5depot::internal

extern "C" int LLVMFuzzerInitialize(int* /*argc*/, char*** /*argv*/) {
  // Protobuf logs every string field with invalid UTF-8 it parses, which
  // generated inputs are full of: noise that would drown the reports.
  google::protobuf::SetLogHandler(nullptr);
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  namespace internal = ::h5depot::internal;
  if (size == 0) return 0;
  const size_t cut_count = std::min<size_t>(data[0] & 7, size - 1);
  const auto* message_start = data + 1 + cut_count;
  const std::string message(reinterpret_cast<const char*>(message_start),
                            size - 1 - cut_count);
  std::vector<size_t> cuts;
  size_t at = 0;
  for (size_t i = 0; i < cut_count; ++i) {
    at = std::min(at + data[1 + i], message.size());
    cuts.push_back(at);
  }
  internal::CheckParse(message, cuts);
  internal::CheckRoundTrip(message);
  return 0;
}
