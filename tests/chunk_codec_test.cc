// The raw chunk codec against protobuf's own encoding: what one end builds
// by hand the other must read with generated code, and the other way round,
// however gRPC happens to slice the bytes.
#include "h5depot/rpc/chunk_codec.h"

#include <grpcpp/support/proto_buffer_reader.h>
#include <grpcpp/support/proto_buffer_writer.h>

#include <memory>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "h5depot/v1/depot.pb.h"
#include "wire_messages.h"

namespace h5depot::internal {
namespace {

using ::h5depot::testing::WireBytes;

std::string Pattern(size_t size) {
  std::string bytes(size, '\0');
  for (size_t i = 0; i < size; ++i) bytes[i] = static_cast<char>(i * 131 + 7);
  return bytes;
}

// `bytes` as a byte buffer cut into slices at `cuts`.
grpc::ByteBuffer Sliced(const std::string& bytes, std::vector<size_t> cuts) {
  std::vector<grpc::Slice> slices;
  size_t at = 0;
  cuts.push_back(bytes.size());
  for (size_t cut : cuts) {
    slices.emplace_back(bytes.data() + at, cut - at);
    at = cut;
  }
  return grpc::ByteBuffer(slices.data(), slices.size());
}

std::string Payload(const ChunkPayload& chunk) {
  std::string bytes;
  chunk.ForEachPiece([&](const uint8_t* data, size_t size) {
    bytes.append(reinterpret_cast<const char*>(data), size);
    return true;
  });
  return bytes;
}

class ChunkCodecTest : public ::testing::TestWithParam<size_t> {};

TEST_P(ChunkCodecTest, HandBuiltChunkIsWhatProtobufWouldSend) {
  const std::string payload = Pattern(GetParam());
  v1::FetchResponse expected;
  expected.set_chunk(payload);
  grpc::ByteBuffer built =
      ChunkMessageReferencing(reinterpret_cast<const uint8_t*>(payload.data()),
                              payload.size(), std::make_shared<int>(0));
  EXPECT_EQ(WireBytes(built), expected.SerializeAsString());
  EXPECT_EQ(
      WireBytes(ChunkMessageCopying(
          reinterpret_cast<const uint8_t*>(payload.data()), payload.size())),
      expected.SerializeAsString());
}

TEST_P(ChunkCodecTest, ProtobufChunkIsReadInPlace) {
  v1::PushRequest message;
  message.set_chunk(Pattern(GetParam()));
  const std::string wire = message.SerializeAsString();
  ChunkPayload chunk;
  ASSERT_TRUE(chunk.Parse(Sliced(wire, {})));
  EXPECT_EQ(chunk.size(), GetParam());
  EXPECT_EQ(Payload(chunk), message.chunk());
}

TEST_P(ChunkCodecTest, ChunkSplitAcrossSlicesAnywhereIsReadWhole) {
  v1::ReadResponse message;
  message.set_chunk(Pattern(GetParam()));
  const std::string wire = message.SerializeAsString();
  // Every cut within the prefix and the first bytes, then a few more
  // slices further on (including empty ones).
  for (size_t cut = 0; cut <= std::min<size_t>(wire.size(), 16); ++cut) {
    std::vector<size_t> cuts = {cut, cut};
    if (wire.size() > cut + 3) cuts.push_back(cut + 3);
    if (wire.size() > 2 * cut + 5) cuts.push_back(wire.size() - cut);
    ChunkPayload chunk;
    ASSERT_TRUE(chunk.Parse(Sliced(wire, cuts))) << "cut at " << cut;
    EXPECT_EQ(Payload(chunk), message.chunk()) << "cut at " << cut;
  }
}

// Around the points where the length varint grows a byte.
INSTANTIATE_TEST_SUITE_P(Sizes, ChunkCodecTest,
                         ::testing::Values(0, 1, 127, 128, 16383, 16384,
                                           (1 << 20) - 1, 1 << 20,
                                           (1 << 20) + 1));

TEST(ChunkCodecEdgeTest, InfoMessageIsLeftToProtobuf) {
  v1::FetchResponse message;
  message.mutable_info()->set_image_id("x");
  message.mutable_info()->set_size(12);
  ChunkPayload chunk;
  EXPECT_FALSE(chunk.Parse(Sliced(message.SerializeAsString(), {})));
}

TEST(ChunkCodecEdgeTest, ChunkFollowedByAnotherFieldIsLeftToProtobuf) {
  v1::FetchResponse first, second;
  first.set_chunk("abc");
  second.mutable_info()->set_size(1);
  ChunkPayload chunk;
  EXPECT_FALSE(chunk.Parse(
      Sliced(first.SerializeAsString() + second.SerializeAsString(), {})));
}

TEST(ChunkCodecEdgeTest, TruncatedOrGarbageMessagesAreRefused) {
  v1::FetchResponse message;
  message.set_chunk(Pattern(300));
  const std::string wire = message.SerializeAsString();
  ChunkPayload chunk;
  for (size_t size = 0; size < 8; ++size) {
    EXPECT_FALSE(chunk.Parse(Sliced(wire.substr(0, size), {}))) << size;
  }
  EXPECT_FALSE(chunk.Parse(Sliced(wire.substr(0, wire.size() - 1), {})));
  // A varint that never ends.
  EXPECT_FALSE(chunk.Parse(
      Sliced(std::string("\x12") + std::string(12, '\xff') + "payload", {})));
  EXPECT_FALSE(chunk.Parse(grpc::ByteBuffer()));
}

// Protobuf reads a length written in up to five bytes, even where fewer
// would do, and refuses longer ones. The codec reads only the shortest
// form and leaves the others to protobuf (fuzz/chunk_codec_fuzzer.cc
// caught it taking a six-byte length, and a ten-byte one whose last byte
// overflows 64 bits, for chunks).
TEST(ChunkCodecEdgeTest, LengthLongerThanItNeedsToBeIsLeftToProtobuf) {
  for (const std::string& length :
       {std::string("\x85\x00", 2), std::string("\x85\x80\x80\x80\x00", 5),
        std::string("\x85\x80\x80\x80\x80\x00", 6),
        std::string("\x85\x80\x80\x80\x80\x80\x80\x80\x80\x02", 10)}) {
    const std::string wire = "\x12" + length + "hello";
    ChunkPayload chunk;
    EXPECT_FALSE(chunk.Parse(Sliced(wire, {}))) << length.size();
    v1::FetchResponse message;
    if (length.size() <= 5) {
      ASSERT_TRUE(message.ParseFromString(wire)) << length.size();
      EXPECT_EQ(message.chunk(), "hello");
    } else {
      EXPECT_FALSE(message.ParseFromString(wire)) << length.size();
    }
  }
}

TEST(ChunkCodecEdgeTest, ReferencedBytesStayAliveUntilTheMessageIsGone) {
  auto owner = std::make_shared<std::string>(Pattern(4096));
  std::weak_ptr<std::string> watch = owner;
  {
    grpc::ByteBuffer message = ChunkMessageReferencing(
        reinterpret_cast<const uint8_t*>(owner->data()), owner->size(), owner);
    owner.reset();
    EXPECT_FALSE(watch.expired());
    grpc::ByteBuffer shared = message;  // a second reference to the slices
    message.Clear();
    EXPECT_FALSE(watch.expired());
    ChunkPayload chunk;
    ASSERT_TRUE(chunk.Parse(shared));
    EXPECT_EQ(Payload(chunk), Pattern(4096));
  }
  EXPECT_TRUE(watch.expired());
}

TEST(ChunkCodecEdgeTest, ForEachPieceStopsWhenAskedTo) {
  v1::FetchResponse message;
  message.set_chunk(Pattern(100));
  ChunkPayload chunk;
  ASSERT_TRUE(chunk.Parse(Sliced(message.SerializeAsString(), {10, 50})));
  int calls = 0;
  EXPECT_FALSE(chunk.ForEachPiece([&](const uint8_t*, size_t) {
    ++calls;
    return false;
  }));
  EXPECT_EQ(calls, 1);
}

}  // namespace
}  // namespace h5depot::internal
