#include <xxhash.h>

#include <cstring>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "h5depot/internal/byte_size.h"
#include "h5depot/internal/checksum.h"
#include "h5depot/internal/hdf5_signature.h"
#include "h5depot/internal/image_id.h"

namespace h5depot::internal {
namespace {

TEST(ChecksumTest, StreamingEqualsOneShotWhateverTheSplit) {
  std::vector<unsigned char> bytes(100000);
  for (size_t i = 0; i < bytes.size(); ++i) bytes[i] = (i * 131) & 0xff;
  const uint64_t whole = Checksum(bytes.data(), bytes.size());
  for (size_t split :
       {size_t{1}, size_t{7}, size_t{4096}, size_t{65536}, bytes.size()}) {
    StreamingChecksum streaming(bytes.size());
    for (size_t at = 0; at < bytes.size(); at += split) {
      streaming.Update(bytes.data() + at, std::min(split, bytes.size() - at));
    }
    EXPECT_EQ(streaming.Digest(), whole) << "split " << split;
  }
  EXPECT_NE(Checksum(bytes.data(), bytes.size() - 1), whole);
}

TEST(ChecksumTest, StreamingOfNothingOrWithEmptyPiecesEqualsOneShot) {
  EXPECT_EQ(StreamingChecksum(0).Digest(), Checksum("", 0));
  const char bytes[] = "hdf5";
  StreamingChecksum streaming(4);
  streaming.Update(bytes, 0);
  streaming.Update(bytes, 4);
  streaming.Update(bytes + 4, 0);
  EXPECT_EQ(streaming.Digest(), Checksum(bytes, 4));
}

// The checksum is the wire's XXH3-64 (seed 0) whichever vector unit
// computes it: the same as the reference implementation, which the library
// builds for plain SSE2, at every length the vector code paths split on.
TEST(ChecksumTest, IsXxh3SixtyFourWithSeedZero) {
  EXPECT_EQ(Checksum("", 0), 0x2D06800538D394C2u);  // XXH3-64 of nothing
  std::vector<unsigned char> bytes(1 << 20);
  for (size_t i = 0; i < bytes.size(); ++i) bytes[i] = (i * 7919 + 13) & 0xff;
  for (size_t size : {size_t{1}, size_t{16}, size_t{17}, size_t{128},
                      size_t{129}, size_t{240}, size_t{241}, size_t{1024},
                      size_t{1025}, size_t{65536}, bytes.size()}) {
    EXPECT_EQ(Checksum(bytes.data(), size), XXH3_64bits(bytes.data(), size))
        << size;
  }
}

TEST(ImageIdTest, AcceptsPathLikeIds) {
  for (const char* id : {"a", "run-42/packet.h5", "A_b.c-d/e/f", "x..y"}) {
    EXPECT_TRUE(ValidateImageId(id).ok()) << id;
  }
}

TEST(ImageIdTest, RejectsWithAMessageSayingWhatIsAllowed) {
  for (std::string id :
       {std::string(""), std::string("a b"), std::string("/abs"),
        std::string("a//b"), std::string("a/../b"), std::string("trail/"),
        std::string("."), std::string(256, 'x'), std::string("nul\0x", 5)}) {
    absl::Status status = ValidateImageId(id);
    EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument) << id;
    EXPECT_NE(status.message().find("A-Z a-z 0-9"), std::string::npos)
        << status.message();
  }
}

TEST(Hdf5SignatureTest, FindsTheSuperblockAfterAUserBlock) {
  std::vector<unsigned char> image(4096, 0);
  EXPECT_FALSE(FindSuperblock(image.data(), image.size()).has_value());
  std::memcpy(image.data() + 1024, kHdf5Signature, sizeof(kHdf5Signature));
  EXPECT_EQ(FindSuperblock(image.data(), image.size()), 1024u);
  std::memcpy(image.data(), kHdf5Signature, sizeof(kHdf5Signature));
  EXPECT_EQ(FindSuperblock(image.data(), image.size()), 0u);
  EXPECT_FALSE(FindSuperblock(image.data(), 7).has_value());
}

TEST(ByteSizeTest, HumanSizeShowsOneDecimalOfTheLargestUnitBelow1024) {
  EXPECT_EQ(HumanSize(0), "0 B");
  EXPECT_EQ(HumanSize(1023), "1023 B");
  EXPECT_EQ(HumanSize(1024), "1.0 KiB");
  EXPECT_EQ(HumanSize(1536), "1.5 KiB");
  EXPECT_EQ(HumanSize((uint64_t{1} << 20) - 52), "1023.9 KiB");
  // Rounded to one decimal these would read 1024.0 of the smaller unit
  // (found by fuzz/byte_size_fuzzer.cc).
  EXPECT_EQ(HumanSize((uint64_t{1} << 20) - 51), "1.0 MiB");
  EXPECT_EQ(HumanSize(0xFFFFFF4338), "1.0 TiB");
  EXPECT_EQ(HumanSize(UINT64_MAX), "16.0 EiB");
}

}  // namespace
}  // namespace h5depot::internal
