#include "h5depot/rpc/chunk_codec.h"

#include <cstring>
#include <utility>

namespace h5depot::internal {
namespace {

// Field 2, wire type 2 (length-delimited).
constexpr uint8_t kChunkTag = (2 << 3) | 2;
// A tag byte and a varint of at most ten bytes.
constexpr size_t kMaxPrefixBytes = 11;

size_t EncodePrefix(uint64_t payload_size, uint8_t* out) {
  size_t n = 0;
  out[n++] = kChunkTag;
  while (payload_size >= 0x80) {
    out[n++] = static_cast<uint8_t>(payload_size | 0x80);
    payload_size >>= 7;
  }
  out[n++] = static_cast<uint8_t>(payload_size);
  return n;
}

grpc::Slice PrefixSlice(size_t payload_size) {
  uint8_t prefix[kMaxPrefixBytes];
  return grpc::Slice(prefix, EncodePrefix(payload_size, prefix));
}

void ReleaseOwner(void* owner) {
  delete static_cast<std::shared_ptr<const void>*>(owner);
}

}  // namespace

grpc::ByteBuffer ChunkMessageReferencing(const uint8_t* data, size_t size,
                                         std::shared_ptr<const void> owner) {
  if (size == 0) {
    grpc::Slice prefix = PrefixSlice(0);
    return grpc::ByteBuffer(&prefix, 1);
  }
  grpc::Slice slices[2] = {
      PrefixSlice(size),
      grpc::Slice(const_cast<uint8_t*>(data), size, &ReleaseOwner,
                  new std::shared_ptr<const void>(std::move(owner)))};
  return grpc::ByteBuffer(slices, 2);
}

grpc::ByteBuffer ChunkMessageCopying(const uint8_t* data, size_t size) {
  grpc::Slice slices[2] = {PrefixSlice(size), grpc::Slice(data, size)};
  return grpc::ByteBuffer(slices, size == 0 ? 1 : 2);
}

bool ChunkPayload::Parse(const grpc::ByteBuffer& message) {
  slices_.clear();
  first_slice_ = 0;
  first_offset_ = 0;
  size_ = 0;
  if (!message.Dump(&slices_).ok()) return false;
  // Walk the prefix, which may itself be split across slices.
  size_t slice = 0, offset = 0, consumed = 0;
  uint8_t prefix[kMaxPrefixBytes];
  auto next_byte = [&](uint8_t* byte) {
    while (slice < slices_.size() && offset == slices_[slice].size()) {
      ++slice;
      offset = 0;
    }
    if (slice == slices_.size()) return false;
    *byte = slices_[slice].begin()[offset++];
    prefix[consumed++] = *byte;
    return true;
  };
  uint8_t byte = 0;
  if (!next_byte(&byte) || byte != kChunkTag) return false;
  uint64_t length = 0;
  for (int shift = 0;; shift += 7) {
    if (shift > 63 || !next_byte(&byte)) return false;
    length |= static_cast<uint64_t>(byte & 0x7f) << shift;
    if ((byte & 0x80) == 0) break;
  }
  // Only the prefix protobuf writes: the length in its shortest form.
  // Longer forms, and ten-byte ones with bits past the 64th, are left to
  // protobuf, which refuses some of them; read here, they passed for chunks
  // that the generated code would not accept.
  uint8_t expected[kMaxPrefixBytes];
  if (EncodePrefix(length, expected) != consumed ||
      std::memcmp(prefix, expected, consumed) != 0) {
    return false;
  }
  // Anything after the payload (a second field) is left to protobuf.
  if (message.Length() - consumed != length) return false;
  first_slice_ = slice;
  first_offset_ = offset;
  size_ = length;
  return true;
}

}  // namespace h5depot::internal
