// Chunk messages as raw gRPC byte buffers, without protobuf in between.
//
// Every streamed response and PushRequest carries image bytes in a oneof
// field `bytes chunk = 2`; such a message encodes as one tag byte (0x12),
// the payload length as a varint, then the payload. Building that encoding
// around slices that reference the image, and reading the payload straight
// out of the received slices, spares the two copies a protobuf message
// costs on each side (into the message's string and out of it). The bytes
// on the wire are exactly what protobuf would produce, so either end may
// still use the generated code.
#ifndef H5DEPOT_RPC_CHUNK_CODEC_H_
#define H5DEPOT_RPC_CHUNK_CODEC_H_

#include <grpcpp/support/byte_buffer.h>
#include <grpcpp/support/proto_buffer_reader.h>
#include <grpcpp/support/proto_buffer_writer.h>
#include <grpcpp/support/slice.h>

#include <cstddef>
#include <cstdint>
#include <memory>
#include <vector>

namespace h5depot::internal {

// A chunk message whose payload is the `size` bytes at `data`, which are
// referenced, not copied: `owner` is kept alive until gRPC has sent them.
grpc::ByteBuffer ChunkMessageReferencing(const uint8_t* data, size_t size,
                                         std::shared_ptr<const void> owner);

// A chunk message holding a copy of the `size` bytes at `data`.
grpc::ByteBuffer ChunkMessageCopying(const uint8_t* data, size_t size);

// The payload of a received chunk message, as the pieces of memory it
// arrived in. Holds references to those slices; valid while it lives.
class ChunkPayload {
 public:
  // Parses `message`. Returns false if it is not exactly one chunk field as
  // protobuf writes it (an info or header message, or an unusual encoding
  // such as a length prefix longer than it needs to be): the caller then
  // parses it with protobuf, which decides whether it is valid.
  bool Parse(const grpc::ByteBuffer& message);

  uint64_t size() const { return size_; }

  // Calls `piece(data, length)` for each contiguous piece of the payload,
  // in order; stops and returns false as soon as `piece` does.
  template <typename Fn>
  bool ForEachPiece(Fn&& piece) const {
    for (size_t i = first_slice_; i < slices_.size(); ++i) {
      const uint8_t* data = slices_[i].begin();
      size_t length = slices_[i].size();
      if (i == first_slice_) {
        data += first_offset_;
        length -= first_offset_;
      }
      if (length > 0 && !piece(data, length)) return false;
    }
    return true;
  }

 private:
  std::vector<grpc::Slice> slices_;
  size_t first_slice_ = 0;   // where the payload starts
  size_t first_offset_ = 0;  // within that slice
  uint64_t size_ = 0;
};

// Protobuf messages to and from raw byte buffers, for the other messages of
// calls that move chunks raw (headers, infos, requests).
template <typename Message>
bool ParseMessage(const grpc::ByteBuffer& buffer, Message* message) {
  grpc::ByteBuffer copy(buffer);  // shares the slices; Deserialize eats it
  return grpc::SerializationTraits<Message>::Deserialize(&copy, message).ok();
}

template <typename Message>
grpc::ByteBuffer SerializeMessage(const Message& message) {
  grpc::ByteBuffer buffer;
  bool own_buffer = false;
  grpc::SerializationTraits<Message>::Serialize(message, &buffer, &own_buffer)
      .IgnoreError();
  return buffer;
}

}  // namespace h5depot::internal

#endif  // H5DEPOT_RPC_CHUNK_CODEC_H_
