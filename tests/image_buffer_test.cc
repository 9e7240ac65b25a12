// ImageBuffer's recycling of large buffers
// (client/src/buffer_recycler_internal.h): what a process that fetches image
// after image relies on, and the limits that keep it from holding memory nobody
// uses.
#include "h5depot/image_buffer.h"

#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstring>
#include <thread>

#include "buffer_recycler_internal.h"
#include "gtest/gtest.h"

namespace h5depot {
namespace {

using internal::FreeRecycledBuffersDueBy;
using internal::RecycledBytes;
using Clock = std::chrono::steady_clock;

constexpr size_t kMiB = size_t{1} << 20;

class ImageBufferRecyclingTest : public ::testing::Test {
 protected:
  void SetUp() override { FreeRecycledBuffersDueBy(Clock::time_point::max()); }
  void TearDown() override {
    FreeRecycledBuffersDueBy(Clock::time_point::max());
  }

  // Allocates a buffer of `size`, fills it, drops it; returns where it was.
  static const void* AllocateAndDrop(size_t size) {
    ImageBuffer buffer = *ImageBuffer::Allocate(size);
    std::memset(buffer.data(), 0x5a, size);
    return buffer.data();
  }
};

TEST_F(ImageBufferRecyclingTest,
       ADroppedLargeBufferServesTheNextOfAboutItsSize) {
  const void* dropped = AllocateAndDrop(8 * kMiB);
  EXPECT_GE(RecycledBytes(), 8 * kMiB);

  ImageBuffer next = *ImageBuffer::Allocate(7 * kMiB);
  EXPECT_EQ(next.data(), dropped);
  EXPECT_EQ(next.size(), 7 * kMiB);
  EXPECT_EQ(RecycledBytes(), 0u);
}

TEST_F(ImageBufferRecyclingTest, ABufferThatDoesNotFitIsFreedNotKept) {
  AllocateAndDrop(8 * kMiB);
  // Too large for it, and too small (it would waste over a quarter): the
  // kept buffer is freed before the new one is allocated.
  ImageBuffer larger = *ImageBuffer::Allocate(16 * kMiB);
  EXPECT_EQ(RecycledBytes(), 0u);

  AllocateAndDrop(8 * kMiB);
  ImageBuffer smaller = *ImageBuffer::Allocate(2 * kMiB);
  EXPECT_EQ(RecycledBytes(), 0u);
}

TEST_F(ImageBufferRecyclingTest, SmallBuffersAreNotKept) {
  AllocateAndDrop(internal::kRecycleMinBytes - 1);
  EXPECT_EQ(RecycledBytes(), 0u);
}

TEST_F(ImageBufferRecyclingTest, NoMoreThanTheLimitIsKept) {
  {
    ImageBuffer a = *ImageBuffer::Allocate(4 * kMiB);
    ImageBuffer b = *ImageBuffer::Allocate(4 * kMiB);
    ImageBuffer c = *ImageBuffer::Allocate(4 * kMiB);
  }
  EXPECT_GE(RecycledBytes(), internal::kRecycleMaxRetained * 4 * kMiB);
  EXPECT_LT(RecycledBytes(), (internal::kRecycleMaxRetained + 1) * 4 * kMiB);
}

TEST_F(ImageBufferRecyclingTest, AReleasedBufferBelongsToWhoeverTookIt) {
  void* taken = nullptr;
  {
    ImageBuffer buffer = *ImageBuffer::Allocate(8 * kMiB);
    taken = buffer.Release();
  }
  EXPECT_EQ(RecycledBytes(), 0u);
  std::free(taken);
}

TEST_F(ImageBufferRecyclingTest, KeptBuffersAreFreedWhenTheirSecondIsUp) {
  AllocateAndDrop(8 * kMiB);
  FreeRecycledBuffersDueBy(Clock::now());
  EXPECT_GE(RecycledBytes(), 8 * kMiB);
  FreeRecycledBuffersDueBy(Clock::now() + internal::kRecycleRetainFor +
                           std::chrono::milliseconds(1));
  EXPECT_EQ(RecycledBytes(), 0u);
}

TEST_F(ImageBufferRecyclingTest, NobodyNeedsToAskForThemToBeFreed) {
  AllocateAndDrop(8 * kMiB);
  ASSERT_GE(RecycledBytes(), 8 * kMiB);
  // The recycler's own thread frees them; wait for that, with a bound.
  const Clock::time_point give_up = Clock::now() + std::chrono::seconds(30);
  while (RecycledBytes() != 0 && Clock::now() < give_up) {
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  EXPECT_EQ(RecycledBytes(), 0u);
}

// Scientists' programs fork workers (Python's multiprocessing, say) after
// fetching; the child must neither inherit the parent's kept buffers nor
// be left without the thread that frees its own.
TEST_F(ImageBufferRecyclingTest, AForkedChildStartsWithNoneAndFreesItsOwn) {
  AllocateAndDrop(8 * kMiB);
  ASSERT_GE(RecycledBytes(), 8 * kMiB);
  const pid_t child = fork();
  ASSERT_GE(child, 0);
  if (child == 0) {
    if (RecycledBytes() != 0) _exit(1);
    AllocateAndDrop(8 * kMiB);
    if (RecycledBytes() < 8 * kMiB) _exit(2);
    const Clock::time_point give_up = Clock::now() + std::chrono::seconds(30);
    while (RecycledBytes() != 0 && Clock::now() < give_up) {
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
    _exit(RecycledBytes() == 0 ? 0 : 3);
  }
  int status = 0;
  ASSERT_EQ(waitpid(child, &status, 0), child);
  ASSERT_TRUE(WIFEXITED(status));
  EXPECT_EQ(WEXITSTATUS(status), 0)
      << "1: inherited kept buffers, 2: kept none of its own, 3: never "
         "freed them";
}

}  // namespace
}  // namespace h5depot
