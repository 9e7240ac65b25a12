// ImageBuffer's recycling of large buffers
// (client/src/buffer_recycler_internal.h): what a process that fetches image
// after image relies on, and the limits that keep it from holding memory nobody
// uses.
#include "h5depot/image_buffer.h"

#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstring>
#include <thread>
#include <vector>

#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "client/src/buffer_recycler_internal.h"
#include "gtest/gtest.h"

namespace h5depot {
namespace {

using internal::FreeRecycledBuffersDueBy;
using internal::RecycledBytes;
using Clock = std::chrono::steady_clock;

constexpr size_t kMiB = size_t{1} << 20;

class ImageBufferRecyclingTest : public ::testing::Test {
 protected:
  void SetUp() override { FreeRecycledBuffersDueBy(absl::InfiniteFuture()); }
  void TearDown() override { FreeRecycledBuffersDueBy(absl::InfiniteFuture()); }

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
  FreeRecycledBuffersDueBy(absl::Now());
  EXPECT_GE(RecycledBytes(), 8 * kMiB);
  FreeRecycledBuffersDueBy(absl::Now() + internal::kRecycleRetainFor +
                           absl::Milliseconds(1));
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

// A process fetching on many threads drops and allocates buffers while
// the recycler's thread is waiting for the oldest kept one to fall due: the
// kept list changes under it, every way it can (taken, evicted, swapped out
// whole), and whatever the reaper holds of it must stay valid. Under
// AddressSanitizer a reaper that kept a reference into the list across its
// wait reads freed memory here. Runs until the reaper has woken to free
// buffers a few times (each falls due kRecycleRetainFor after it is kept).
TEST_F(ImageBufferRecyclingTest, ManyThreadsChurnBuffersWhileTheReaperWakes) {
  constexpr int kThreads = 8;
  const Clock::time_point until =
      Clock::now() + absl::ToChronoSeconds(3 * internal::kRecycleRetainFor);
  std::atomic<int> wrong{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([t, until, &wrong] {
      // Sizes that fit each other and sizes that do not, so that a take
      // finds a kept buffer, or finds none and frees them all.
      const size_t sizes[] = {1 * kMiB, 2 * kMiB, 1 * kMiB + kMiB / 8,
                              3 * kMiB};
      for (unsigned i = static_cast<unsigned>(t); Clock::now() < until; ++i) {
        const size_t size = sizes[i % 4];
        ImageBuffer buffer = *ImageBuffer::Allocate(size);
        const char fill = static_cast<char>(i);
        std::memset(buffer.data(), fill, size);
        if (static_cast<const char*>(buffer.data())[size - 1] != fill) ++wrong;
        if (i % 16 == 0) {
          // Now and then let the buffers age, so that some fall due.
          std::this_thread::yield();
        }
      }
    });
  }
  for (std::thread& thread : threads) thread.join();
  EXPECT_EQ(wrong.load(), 0);
  // And the reaper still does its work afterwards.
  AllocateAndDrop(8 * kMiB);
  const Clock::time_point give_up = Clock::now() + std::chrono::seconds(30);
  while (RecycledBytes() != 0 && Clock::now() < give_up) {
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  EXPECT_EQ(RecycledBytes(), 0u);
}

// Forks, and in the child: nothing kept is inherited, a buffer dropped is
// kept, and the child's own reaper frees it. Returns the child's exit
// status, 0 if all of that held.
int ForkAndCheckTheChildFreesItsOwn() {
  const pid_t child = fork();
  if (child < 0) return -1;
  if (child == 0) {
    if (RecycledBytes() != 0) _exit(1);
    {
      ImageBuffer buffer = *ImageBuffer::Allocate(8 * kMiB);
      std::memset(buffer.data(), 0x5a, 8 * kMiB);
    }
    if (RecycledBytes() < 8 * kMiB) _exit(2);
    const Clock::time_point give_up = Clock::now() + std::chrono::seconds(30);
    while (RecycledBytes() != 0 && Clock::now() < give_up) {
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
    _exit(RecycledBytes() == 0 ? 0 : 3);
  }
  // A child that hangs (on a lock inherited held, say) fails the test
  // instead of stalling it.
  const Clock::time_point give_up = Clock::now() + std::chrono::seconds(60);
  int status = 0;
  pid_t reaped = 0;
  while ((reaped = waitpid(child, &status, WNOHANG)) == 0 &&
         Clock::now() < give_up) {
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  if (reaped == 0) {
    kill(child, SIGKILL);
    waitpid(child, &status, 0);
    return 4;
  }
  if (reaped != child || !WIFEXITED(status)) return -1;
  return WEXITSTATUS(status);
}

constexpr char kChildExitCodes[] =
    "1: inherited kept buffers, 2: kept none of its own, 3: never freed "
    "them, 4: hung";

// Scientists' programs fork workers (Python's multiprocessing, say) after
// fetching; the child must neither inherit the parent's kept buffers nor
// be left without the thread that frees its own. Here the fork comes right
// after the parent kept its first buffer, while its reaper starts.
TEST_F(ImageBufferRecyclingTest, AForkedChildStartsWithNoneAndFreesItsOwn) {
  AllocateAndDrop(8 * kMiB);
  ASSERT_GE(RecycledBytes(), 8 * kMiB);
  EXPECT_EQ(ForkAndCheckTheChildFreesItsOwn(), 0) << kChildExitCodes;
}

// The same with the parent's reaper idle, waiting for something to be kept
// (it waits on a condition variable the child inherits).
TEST_F(ImageBufferRecyclingTest, AChildForkedWhileTheReaperIdlesFreesItsOwn) {
  AllocateAndDrop(8 * kMiB);
  const Clock::time_point give_up = Clock::now() + std::chrono::seconds(30);
  while (RecycledBytes() != 0 && Clock::now() < give_up) {
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  ASSERT_EQ(RecycledBytes(), 0u);
  EXPECT_EQ(ForkAndCheckTheChildFreesItsOwn(), 0) << kChildExitCodes;
}

}  // namespace
}  // namespace h5depot
