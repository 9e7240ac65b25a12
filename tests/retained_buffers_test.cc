// The retention rules both ends share (h5depot/internal/retained_buffers.h),
// on the pool alone: which buffer a request gets, what is given up and when.
// The ends' own policies are in image_store_test.cc and image_buffer_test.cc.
#include "h5depot/internal/retained_buffers.h"

#include <cstdint>
#include <vector>

#include "absl/time/time.h"
#include "gtest/gtest.h"

namespace h5depot::internal {
namespace {

constexpr uint64_t kMiB = uint64_t{1} << 20;

// Stands for memory: each buffer is a distinct address, never dereferenced.
char kArena[16];

std::vector<void*>& Freed() {
  static std::vector<void*> freed;
  return freed;
}

void RecordFree(const h5depot::internal::RetainedBuffers::Buffer& buffer) {
  Freed().push_back(buffer.data);
}

class RetainedBuffersTest : public ::testing::Test {
 protected:
  void SetUp() override { Freed().clear(); }

  static RetainedBuffers::Options Options(size_t max_buffers,
                                          uint64_t max_bytes = UINT64_MAX) {
    RetainedBuffers::Options options;
    options.retain_for = absl::Seconds(1);
    options.max_buffers = max_buffers;
    options.max_bytes = max_bytes;
    options.release = RecordFree;
    return options;
  }

  const absl::Time now_ = absl::FromUnixSeconds(1000);
};

TEST_F(RetainedBuffersTest, TakeGivesTheSmallestThatWastesNoMoreThanAQuarter) {
  RetainedBuffers pool(Options(4));
  { auto released = pool.Keep({&kArena[0], 10 * kMiB}, now_); }
  { auto released = pool.Keep({&kArena[1], 9 * kMiB}, now_); }
  { auto released = pool.Keep({&kArena[2], 16 * kMiB}, now_); }

  RetainedBuffers::Taken taken = pool.Take(8 * kMiB);
  EXPECT_EQ(taken.buffer.data, &kArena[1]);
  EXPECT_EQ(taken.buffer.capacity, 9 * kMiB);
  EXPECT_EQ(pool.bytes(), 26 * kMiB);
  EXPECT_TRUE(Freed().empty());
}

TEST_F(RetainedBuffersTest, ARequestNothingFitsGivesUpEverything) {
  RetainedBuffers pool(Options(4));
  { auto released = pool.Keep({&kArena[0], 10 * kMiB}, now_); }
  { auto released = pool.Keep({&kArena[1], 2 * kMiB}, now_); }
  {
    RetainedBuffers::Taken taken = pool.Take(4 * kMiB);
    EXPECT_EQ(taken.buffer.data, nullptr);
    EXPECT_EQ(pool.bytes(), 0u);
    EXPECT_TRUE(Freed().empty()) << "freed before the caller let go";
  }
  EXPECT_EQ(Freed(), (std::vector<void*>{&kArena[0], &kArena[1]}));
}

TEST_F(RetainedBuffersTest, KeepingOneOverALimitGivesUpTheOldest) {
  RetainedBuffers pool(Options(2, 20 * kMiB));
  { auto released = pool.Keep({&kArena[0], 4 * kMiB}, now_); }
  { auto released = pool.Keep({&kArena[1], 4 * kMiB}, now_); }
  { auto released = pool.Keep({&kArena[2], 4 * kMiB}, now_); }
  EXPECT_EQ(Freed(), std::vector<void*>{&kArena[0]});
  EXPECT_EQ(pool.bytes(), 8 * kMiB);

  { auto released = pool.Keep({&kArena[3], 17 * kMiB}, now_); }
  EXPECT_EQ(Freed(), (std::vector<void*>{&kArena[0], &kArena[1], &kArena[2]}));
  EXPECT_EQ(pool.bytes(), 17 * kMiB);

  // Alone over the byte limit: not kept at all.
  { auto released = pool.Keep({&kArena[4], 21 * kMiB}, now_); }
  EXPECT_EQ(Freed().back(), &kArena[4]);
  EXPECT_EQ(pool.bytes(), 17 * kMiB);
}

TEST_F(RetainedBuffersTest, BuffersAreGivenUpWhenDue) {
  RetainedBuffers pool(Options(4));
  { auto released = pool.Keep({&kArena[0], 4 * kMiB}, now_); }
  {
    auto released = pool.Keep({&kArena[1], 4 * kMiB}, now_ + absl::Seconds(5));
  }
  EXPECT_EQ(pool.next_due(), now_ + absl::Seconds(1));

  { auto due = pool.TakeDue(now_ + absl::Milliseconds(999)); }
  EXPECT_TRUE(Freed().empty());
  { auto due = pool.TakeDue(now_ + absl::Seconds(1)); }
  EXPECT_EQ(Freed(), std::vector<void*>{&kArena[0]});
  EXPECT_EQ(pool.next_due(), now_ + absl::Seconds(6));
  EXPECT_EQ(pool.bytes(), 4 * kMiB);
}

TEST_F(RetainedBuffersTest, DestroyingThePoolFreesWhatItRetains) {
  {
    RetainedBuffers pool(Options(4));
    auto released = pool.Keep({&kArena[0], 4 * kMiB}, now_);
  }
  EXPECT_EQ(Freed(), std::vector<void*>{&kArena[0]});
  RetainedBuffers empty(Options(4));
  EXPECT_EQ(empty.next_due(), absl::InfiniteFuture());
}

}  // namespace
}  // namespace h5depot::internal
