#include "h5depot/server/image_store.h"

#include <algorithm>
#include <atomic>
#include <cstring>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/notification.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "gtest/gtest.h"
#include "h5depot/internal/checksum.h"
#include "test_images.h"

namespace h5depot::server {
namespace {

using ::h5depot::testing::MakeTestImage;

class ImageStoreTest : public ::testing::Test {
 protected:
  ImageStoreTest() { store_ = MakeStore(StoreOptions{}); }

  std::unique_ptr<ImageStore> MakeStore(StoreOptions options) {
    options.clock = [this] { return now_; };
    options.start_reaper = false;
    return std::make_unique<ImageStore>(std::move(options));
  }

  static PushRequest RequestFor(const std::string& id,
                                const std::vector<uint8_t>& bytes) {
    PushRequest request;
    request.image_id = id;
    request.size = bytes.size();
    request.checksum = internal::Checksum(bytes.data(), bytes.size());
    return request;
  }

  absl::StatusOr<ImageRef> PushWhole(ImageStore& store, PushRequest request,
                                     const std::vector<uint8_t>& bytes) {
    auto pending = store.BeginPush(std::move(request));
    if (!pending.ok()) return pending.status();
    if (absl::Status s = (*pending)->Append(bytes.data(), bytes.size());
        !s.ok()) {
      return s;
    }
    return (*pending)->Publish();
  }

  absl::StatusOr<ImageRef> Push(const std::string& id,
                                const std::vector<uint8_t>& bytes) {
    return PushWhole(*store_, RequestFor(id, bytes), bytes);
  }

  absl::Time now_ = absl::FromUnixSeconds(1'800'000'000);
  std::unique_ptr<ImageStore> store_;
};

TEST_F(ImageStoreTest, PublishedImageIsReadableByteForByte) {
  const auto bytes = MakeTestImage(10000);
  auto published = Push("a/b", bytes);
  ASSERT_TRUE(published.ok()) << published.status();
  auto got = store_->Get("a/b");
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_EQ((*got)->generation(), (*published)->generation());
  ASSERT_EQ((*got)->size(), bytes.size());
  EXPECT_EQ(0, std::memcmp((*got)->data(), bytes.data(), bytes.size()));
  EXPECT_EQ(store_->Stats().stored_bytes, bytes.size());
}

TEST_F(ImageStoreTest, PendingImageIsInvisibleUntilPublished) {
  const auto bytes = MakeTestImage(4096);
  auto pending = store_->BeginPush(RequestFor("x", bytes));
  ASSERT_TRUE(pending.ok());
  ASSERT_TRUE((*pending)->Append(bytes.data(), bytes.size()).ok());
  EXPECT_EQ(store_->Get("x").status().code(), absl::StatusCode::kNotFound);
  ASSERT_TRUE((*pending)->Publish().ok());
  EXPECT_TRUE(store_->Get("x").ok());
}

TEST_F(ImageStoreTest, AbandonedPushLeavesNothingAndFreesItsMemory) {
  const auto bytes = MakeTestImage(1 << 20);
  {
    auto pending = store_->BeginPush(RequestFor("x", bytes));
    ASSERT_TRUE(pending.ok());
    ASSERT_TRUE((*pending)->Append(bytes.data(), bytes.size() / 2).ok());
    EXPECT_EQ(store_->Stats().reserved_bytes, bytes.size());
  }
  EXPECT_EQ(store_->Get("x").status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(store_->Stats().reserved_bytes, 0u);
}

// Ids no push could have stored: path tricks, empty, too long, a NUL.
const std::vector<std::string>& MalformedIds() {
  static const auto* ids = new std::vector<std::string>{
      "../etc", "", std::string(300, 'a'), std::string("a\0b", 3), "a//b"};
  return *ids;
}

TEST_F(ImageStoreTest, EveryLookupOfAMalformedIdIsInvalidNotMissing) {
  ASSERT_TRUE(Push("a", MakeTestImage(1000)).ok());
  const absl::Time later = absl::Now() + absl::Hours(1);
  for (const std::string& id : MalformedIds()) {
    SCOPED_TRACE(absl::CEscape(id));
    EXPECT_EQ(store_->Get(id).status().code(),
              absl::StatusCode::kInvalidArgument);
    EXPECT_EQ(store_->GetGeneration(id, 0).status().code(),
              absl::StatusCode::kInvalidArgument);
    // At once, not after the wait.
    EXPECT_EQ(store_->WaitFor(id, later, nullptr).status().code(),
              absl::StatusCode::kInvalidArgument);
    EXPECT_EQ(store_->Delete(id, std::nullopt).code(),
              absl::StatusCode::kInvalidArgument);
    EXPECT_EQ(
        store_->BeginPush(RequestFor(id, MakeTestImage(1000))).status().code(),
        absl::StatusCode::kInvalidArgument);
  }
  EXPECT_TRUE(store_->Get("a").ok());
}

TEST_F(ImageStoreTest, ShortPushIsRefusedAndLeavesNothing) {
  const auto bytes = MakeTestImage(4096);
  auto pending = store_->BeginPush(RequestFor("x", bytes));
  ASSERT_TRUE(pending.ok());
  ASSERT_TRUE((*pending)->Append(bytes.data(), 100).ok());
  auto published = (*pending)->Publish();
  EXPECT_EQ(published.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(published.status().message().find("100 of the declared 4096"),
            std::string::npos)
      << published.status();
  EXPECT_FALSE(store_->Get("x").ok());
  pending->reset();
  EXPECT_EQ(store_->Stats().reserved_bytes, 0u);
}

TEST_F(ImageStoreTest, OverlongPushIsRefused) {
  const auto bytes = MakeTestImage(4096);
  PushRequest request = RequestFor("x", bytes);
  request.size = 100;
  auto pending = store_->BeginPush(request);
  ASSERT_TRUE(pending.ok());
  EXPECT_EQ((*pending)->Append(bytes.data(), 101).code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_FALSE((*pending)->Publish().ok());
  EXPECT_FALSE(store_->Get("x").ok());
}

TEST_F(ImageStoreTest, WrongChecksumIsDataLossAndLeavesNothing) {
  const auto bytes = MakeTestImage(4096);
  PushRequest request = RequestFor("x", bytes);
  request.checksum ^= 1;
  auto published = PushWhole(*store_, request, bytes);
  EXPECT_EQ(published.status().code(), absl::StatusCode::kDataLoss);
  EXPECT_FALSE(store_->Get("x").ok());
  EXPECT_EQ(store_->Stats().reserved_bytes, 0u);
}

TEST_F(ImageStoreTest, NonHdf5BytesAreRefusedUnlessAllowed) {
  std::vector<uint8_t> bytes(4096, 'x');
  auto refused = Push("blob", bytes);
  EXPECT_EQ(refused.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(refused.status().message().find("not an HDF5 file image"),
            std::string::npos);

  StoreOptions options;
  options.require_hdf5 = false;
  auto lenient = MakeStore(options);
  EXPECT_TRUE(PushWhole(*lenient, RequestFor("blob", bytes), bytes).ok());
}

TEST_F(ImageStoreTest, BadIdIsRefusedBeforeAnyData) {
  const auto bytes = MakeTestImage(64);
  auto pending = store_->BeginPush(RequestFor("../etc", bytes));
  EXPECT_EQ(pending.status().code(), absl::StatusCode::kInvalidArgument);
}

TEST_F(ImageStoreTest, PushOverMemoryLimitIsRefusedUpFront) {
  StoreOptions options;
  options.max_memory_bytes = 10000;
  options.max_image_bytes = 10000;
  auto store = MakeStore(options);
  const auto first = MakeTestImage(6000);
  ASSERT_TRUE(PushWhole(*store, RequestFor("a", first), first).ok());
  const auto second = MakeTestImage(6000, 2);
  auto pending = store->BeginPush(RequestFor("b", second));
  EXPECT_EQ(pending.status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_NE(pending.status().message().find("memory limit"), std::string::npos)
      << pending.status();
  // Deleting the first makes room.
  ASSERT_TRUE(store->Delete("a", std::nullopt).ok());
  EXPECT_TRUE(PushWhole(*store, RequestFor("b", second), second).ok());
}

TEST_F(ImageStoreTest, ImageOverSizeLimitIsRefusedUpFront) {
  StoreOptions options;
  options.max_image_bytes = 1000;
  auto store = MakeStore(options);
  const auto bytes = MakeTestImage(1001);
  EXPECT_EQ(store->BeginPush(RequestFor("a", bytes)).status().code(),
            absl::StatusCode::kResourceExhausted);
}

TEST_F(ImageStoreTest, ReplacingAnImageKeepsOldReadersConsistent) {
  const auto v1 = MakeTestImage(5000, 1);
  const auto v2 = MakeTestImage(7000, 2);
  auto first = Push("x", v1);
  ASSERT_TRUE(first.ok());
  ImageRef reader = *store_->Get("x");
  auto second = Push("x", v2);
  ASSERT_TRUE(second.ok());
  EXPECT_GT((*second)->generation(), (*first)->generation());
  // The old reader still sees all of the first generation.
  ASSERT_EQ(reader->size(), v1.size());
  EXPECT_EQ(0, std::memcmp(reader->data(), v1.data(), v1.size()));
  // And it can still be found by generation while held.
  EXPECT_TRUE(store_->GetGeneration("x", (*first)->generation()).ok());
  EXPECT_EQ((*store_->Get("x"))->size(), v2.size());
  EXPECT_EQ(store_->Stats().reserved_bytes, v1.size() + v2.size());
  reader.reset();
  first->reset();
  EXPECT_EQ(store_->GetGeneration("x", 1).status().code(),
            absl::StatusCode::kNotFound);
  EXPECT_EQ(store_->Stats().reserved_bytes, v2.size());
}

TEST_F(ImageStoreTest, GenerationsIncreaseAndAreNeverReused) {
  const auto bytes = MakeTestImage(100);
  uint64_t last = 0;
  for (int i = 0; i < 5; ++i) {
    auto a = Push("a", bytes);
    auto b = Push("b", bytes);
    ASSERT_TRUE(a.ok() && b.ok());
    EXPECT_GT((*a)->generation(), last);
    EXPECT_GT((*b)->generation(), (*a)->generation());
    last = (*b)->generation();
    ASSERT_TRUE(store_->Delete("a", std::nullopt).ok());
  }
}

TEST_F(ImageStoreTest, IfGenerationMatchZeroMeansOnlyIfAbsent) {
  const auto bytes = MakeTestImage(100);
  PushRequest request = RequestFor("x", bytes);
  request.if_generation_match = 0;
  ASSERT_TRUE(PushWhole(*store_, request, bytes).ok());
  EXPECT_EQ(store_->BeginPush(request).status().code(),
            absl::StatusCode::kAlreadyExists);
}

TEST_F(ImageStoreTest, IfGenerationMatchIsCheckedAgainAtPublish) {
  const auto bytes = MakeTestImage(100);
  auto first = Push("x", bytes);
  ASSERT_TRUE(first.ok());
  PushRequest request = RequestFor("x", bytes);
  request.if_generation_match = (*first)->generation();
  auto slow = store_->BeginPush(request);
  ASSERT_TRUE(slow.ok());
  // Someone else replaces the image while the slow push is under way.
  ASSERT_TRUE(Push("x", bytes).ok());
  ASSERT_TRUE((*slow)->Append(bytes.data(), bytes.size()).ok());
  EXPECT_EQ((*slow)->Publish().status().code(), absl::StatusCode::kAborted);
}

TEST_F(ImageStoreTest, ConcurrentConditionalPushesHaveExactlyOneWinner) {
  const auto bytes = MakeTestImage(20000);
  auto base = Push("x", bytes);
  ASSERT_TRUE(base.ok());
  constexpr int kWriters = 8;
  std::atomic<int> winners{0};
  std::atomic<int> conflicts{0};
  std::vector<std::thread> writers;
  for (int i = 0; i < kWriters; ++i) {
    writers.emplace_back([&] {
      PushRequest request = RequestFor("x", bytes);
      request.if_generation_match = (*base)->generation();
      auto result = PushWhole(*store_, request, bytes);
      if (result.ok()) {
        ++winners;
      } else if (result.status().code() == absl::StatusCode::kAborted) {
        ++conflicts;
      }
    });
  }
  for (auto& t : writers) t.join();
  EXPECT_EQ(winners.load(), 1);
  EXPECT_EQ(conflicts.load(), kWriters - 1);
}

// Threads pushing, fetching, listing and deleting one shared id and ids of
// their own, some of the images large enough to be mapped and recycled,
// with the reaper running: every image anyone fetches or lists is whole
// (one of the versions pushed, byte for byte), every generation is handed
// out once, each thread's own id ends as that thread left it, and the
// memory accounting comes out exact.
TEST_F(ImageStoreTest, ConcurrentPushesFetchesListsAndDeletesSeeWholeImages) {
  constexpr int kThreads = 6;
  constexpr int kOpsPerThread = 200;
  // Versions of distinct sizes, so that a fetched image says which it is.
  std::vector<std::vector<uint8_t>> versions;
  for (uint32_t v = 0; v < 4; ++v) {
    versions.push_back(MakeTestImage(3000 + 1000 * v, v + 1));
  }
  versions.push_back(MakeTestImage((1 << 20) + 4096, 9));  // mapped
  auto is_whole = [&versions](const StoredImage& image) {
    for (const std::vector<uint8_t>& version : versions) {
      if (image.size() == version.size()) {
        return std::memcmp(image.data(), version.data(), version.size()) == 0 &&
               image.checksum() ==
                   internal::Checksum(version.data(), version.size());
      }
    }
    return false;
  };

  StoreOptions options;
  options.max_memory_bytes = uint64_t{256} << 20;
  ImageStore store(options);   // real clock, reaper running
  std::atomic<int> broken{0};  // fetched or listed images not whole
  std::atomic<int> unexpected_codes{0};
  std::vector<std::vector<uint64_t>> generations(kThreads);
  // What each thread last did to its own id: the version it pushed, or -1
  // for deleted (or never pushed).
  std::vector<int> own_last(kThreads, -1);

  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      const std::string own = "own/" + std::to_string(t);
      uint32_t state = 2654435761u * (t + 1);
      auto next = [&state](uint32_t bound) {
        state = state * 1664525u + 1013904223u;
        return (state >> 8) % bound;
      };
      std::vector<ImageRef> held;  // readers keep their generation
      for (int op = 0; op < kOpsPerThread; ++op) {
        const bool shared = next(2) == 0;
        const std::string id = shared ? "shared" : own;
        switch (next(5)) {
          case 0:
          case 1: {  // push, some on the generation last fetched
            const int v = static_cast<int>(next(versions.size()));
            PushRequest request = RequestFor(id, versions[v]);
            if (!held.empty() && held.back()->image_id() == id) {
              request.if_generation_match = held.back()->generation();
            }
            auto pushed = PushWhole(store, request, versions[v]);
            if (pushed.ok()) {
              generations[t].push_back((*pushed)->generation());
              if (!shared) own_last[t] = v;
            } else if (pushed.status().code() != absl::StatusCode::kAborted) {
              ++unexpected_codes;
            }
            break;
          }
          case 2: {  // fetch, and now and then keep it
            auto got = store.Get(id);
            if (got.ok()) {
              if (!is_whole(**got)) ++broken;
              if (held.size() < 4) held.push_back(*got);
            } else if (got.status().code() != absl::StatusCode::kNotFound) {
              ++unexpected_codes;
            }
            break;
          }
          case 3: {  // delete
            absl::Status deleted = store.Delete(id, std::nullopt);
            if (deleted.ok()) {
              if (!shared) own_last[t] = -1;
            } else if (deleted.code() != absl::StatusCode::kNotFound) {
              ++unexpected_codes;
            }
            break;
          }
          default: {  // list everything, then drop the oldest held reader
            for (const ImageRef& image : store.List("", 0, "").images) {
              if (!is_whole(*image)) ++broken;
            }
            for (const ImageRef& image : held) {
              auto again =
                  store.GetGeneration(image->image_id(), image->generation());
              if (!again.ok() || *again != image || !is_whole(*image)) {
                ++broken;
              }
            }
            if (!held.empty()) held.erase(held.begin());
            break;
          }
        }
      }
    });
  }
  for (std::thread& thread : threads) thread.join();

  EXPECT_EQ(broken.load(), 0);
  EXPECT_EQ(unexpected_codes.load(), 0);
  std::vector<uint64_t> all;
  for (const std::vector<uint64_t>& mine : generations) {
    EXPECT_TRUE(std::is_sorted(mine.begin(), mine.end()));
    all.insert(all.end(), mine.begin(), mine.end());
  }
  std::sort(all.begin(), all.end());
  EXPECT_EQ(std::adjacent_find(all.begin(), all.end()), all.end())
      << "a generation was handed out twice";
  for (int t = 0; t < kThreads; ++t) {
    auto got = store.Get("own/" + std::to_string(t));
    if (own_last[t] < 0) {
      EXPECT_EQ(got.status().code(), absl::StatusCode::kNotFound) << t;
    } else {
      ASSERT_TRUE(got.ok()) << t << ": " << got.status();
      EXPECT_EQ((*got)->size(), versions[own_last[t]].size()) << t;
    }
  }
  // Nobody holds a replaced generation any more: only current images count.
  uint64_t listed_bytes = 0;
  for (const ImageRef& image : store.List("", 0, "").images) {
    listed_bytes += image->size();
  }
  const StoreStats stats = store.Stats();
  EXPECT_EQ(stats.stored_bytes, listed_bytes);
  EXPECT_EQ(stats.reserved_bytes, listed_bytes);
}

TEST_F(ImageStoreTest, DeleteHonoursGeneration) {
  const auto bytes = MakeTestImage(100);
  auto image = Push("x", bytes);
  ASSERT_TRUE(image.ok());
  EXPECT_EQ(store_->Delete("x", (*image)->generation() + 1).code(),
            absl::StatusCode::kAborted);
  EXPECT_TRUE(store_->Delete("x", (*image)->generation()).ok());
  EXPECT_EQ(store_->Delete("x", std::nullopt).code(),
            absl::StatusCode::kNotFound);
}

TEST_F(ImageStoreTest, ExpiredImagesDisappearOnTime) {
  const auto bytes = MakeTestImage(100);
  PushRequest request = RequestFor("short", bytes);
  request.ttl = absl::Seconds(10);
  ASSERT_TRUE(PushWhole(*store_, request, bytes).ok());
  ASSERT_TRUE(Push("forever", bytes).ok());
  now_ += absl::Seconds(9);
  EXPECT_TRUE(store_->Get("short").ok());
  EXPECT_EQ(store_->RemoveExpired(), 0u);
  now_ += absl::Seconds(1);
  // Invisible from the expiry time on, even before it is reaped.
  EXPECT_EQ(store_->Get("short").status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(store_->List("", 0, "").images.size(), 1u);
  EXPECT_EQ(store_->RemoveExpired(), 1u);
  EXPECT_TRUE(store_->Get("forever").ok());
  EXPECT_EQ(store_->Stats().reserved_bytes, bytes.size());
}

TEST_F(ImageStoreTest, ReplacingAnImageResetsItsExpiry) {
  const auto bytes = MakeTestImage(100);
  PushRequest request = RequestFor("x", bytes);
  request.ttl = absl::Seconds(10);
  ASSERT_TRUE(PushWhole(*store_, request, bytes).ok());
  ASSERT_TRUE(Push("x", bytes).ok());  // no ttl now
  now_ += absl::Hours(1);
  EXPECT_EQ(store_->RemoveExpired(), 0u);
  EXPECT_TRUE(store_->Get("x").ok());
}

// The reaper frees an expired image's memory on its own, on the real clock,
// even when it was already asleep until a much later expiry.
TEST_F(ImageStoreTest, TheReaperFreesExpiredImagesWithoutBeingAsked) {
  StoreOptions options;
  options.max_memory_bytes = 1 << 20;
  ImageStore store(options);  // real clock, reaper running
  const auto bytes = MakeTestImage(100);
  PushRequest later = RequestFor("later", bytes);
  later.ttl = absl::Hours(1);
  ASSERT_TRUE(PushWhole(store, later, bytes).ok());
  PushRequest soon = RequestFor("soon", bytes);
  soon.ttl = absl::Milliseconds(20);
  ASSERT_TRUE(PushWhole(store, soon, bytes).ok());
  // No time to live: does not disturb the reaper.
  ASSERT_TRUE(PushWhole(store, RequestFor("forever", bytes), bytes).ok());

  // Waits for the reaper's work to show, bounded in case it never does.
  const absl::Time give_up = absl::Now() + absl::Seconds(20);
  while (store.Stats().image_count != 2 && absl::Now() < give_up) {
    absl::SleepFor(absl::Milliseconds(5));
  }
  EXPECT_EQ(store.Stats().image_count, 2u);
  EXPECT_EQ(store.Stats().reserved_bytes, 2 * bytes.size());
  EXPECT_FALSE(store.Get("soon").ok());
  EXPECT_TRUE(store.Get("later").ok());
}

// A freed large buffer serves the next push of about its size, is given
// up as soon as a push needs fresh memory, and is freed on its own soon.
TEST_F(ImageStoreTest, FreedLargeBuffersAreReusedBrieflyThenReturned) {
  StoreOptions options;
  options.max_memory_bytes = 64 << 20;
  ImageStore store(options);  // reaper running, real clock
  const auto large = MakeTestImage(8 << 20);
  ASSERT_TRUE(PushWhole(store, RequestFor("a", large), large).ok());
  ASSERT_TRUE(store.Delete("a", std::nullopt).ok());
  EXPECT_EQ(store.Stats().reserved_bytes, 0u);
  EXPECT_EQ(store.Stats().retained_bytes, large.size());

  // The same size again: the retained buffer is taken, and the image holds
  // the new bytes only.
  const auto same_size = MakeTestImage(8 << 20, /*seed=*/7);
  ASSERT_EQ(same_size.size(), large.size());
  auto pushed = PushWhole(store, RequestFor("b", same_size), same_size);
  ASSERT_TRUE(pushed.ok()) << pushed.status();
  EXPECT_EQ(store.Stats().retained_bytes, 0u);
  EXPECT_EQ(std::vector<uint8_t>((*pushed)->data(),
                                 (*pushed)->data() + (*pushed)->size()),
            same_size);

  // A size it does not fit frees whatever is retained before allocating.
  ASSERT_TRUE(store.Delete("b", std::nullopt).ok());
  const auto smaller = MakeTestImage(2 << 20);
  ASSERT_TRUE(PushWhole(store, RequestFor("c", smaller), smaller).ok());
  EXPECT_EQ(store.Stats().retained_bytes, 0u);

  // Left unused, a retained buffer is freed within about a second.
  ASSERT_TRUE(store.Delete("c", std::nullopt).ok());
  EXPECT_EQ(store.Stats().retained_bytes, smaller.size());
  const absl::Time give_up = absl::Now() + absl::Seconds(20);
  while (store.Stats().retained_bytes != 0 && absl::Now() < give_up) {
    absl::SleepFor(absl::Milliseconds(10));
  }
  EXPECT_EQ(store.Stats().retained_bytes, 0u);
}

TEST_F(ImageStoreTest, ListFiltersByPrefixAndPages) {
  const auto bytes = MakeTestImage(100);
  for (const char* id : {"run1/a", "run1/b", "run1/c", "run2/a", "other"}) {
    ASSERT_TRUE(Push(id, bytes).ok());
  }
  ListResult first = store_->List("run1/", 2, "");
  ASSERT_EQ(first.images.size(), 2u);
  EXPECT_EQ(first.images[0]->image_id(), "run1/a");
  EXPECT_EQ(first.images[1]->image_id(), "run1/b");
  ASSERT_FALSE(first.next_page_token.empty());
  ListResult second = store_->List("run1/", 2, first.next_page_token);
  ASSERT_EQ(second.images.size(), 1u);
  EXPECT_EQ(second.images[0]->image_id(), "run1/c");
  EXPECT_TRUE(second.next_page_token.empty());
  EXPECT_EQ(store_->List("", 0, "").images.size(), 5u);
}

TEST_F(ImageStoreTest, WaitIsSatisfiedByALaterPush) {
  StoreOptions options;
  options.start_reaper = false;
  ImageStore store(options);  // real clock: WaitFor uses real deadlines
  const auto bytes = MakeTestImage(100);
  std::thread pusher;
  auto result = store.WaitFor("late", absl::Now() + absl::Seconds(30), [&] {
    // The waiter is parked; now let the push happen.
    if (!pusher.joinable()) {
      pusher = std::thread([&] {
        ASSERT_TRUE(PushWhole(store, RequestFor("late", bytes), bytes).ok());
      });
    }
    return false;
  });
  pusher.join();
  ASSERT_TRUE(result.ok()) << result.status();
  EXPECT_EQ((*result)->image_id(), "late");
}

TEST_F(ImageStoreTest, WaitTimesOutWithDeadlineExceeded) {
  auto result =
      store_->WaitFor("never", absl::Now() + absl::Milliseconds(50), nullptr);
  EXPECT_EQ(result.status().code(), absl::StatusCode::kDeadlineExceeded);
}

TEST_F(ImageStoreTest, ShutdownWakesWaitersAndRefusesPushes) {
  std::thread stopper;
  auto result = store_->WaitFor("never", absl::Now() + absl::Seconds(30), [&] {
    if (!stopper.joinable()) stopper = std::thread([&] { store_->Shutdown(); });
    return false;
  });
  stopper.join();
  EXPECT_EQ(result.status().code(), absl::StatusCode::kUnavailable);
  const auto bytes = MakeTestImage(100);
  EXPECT_EQ(store_->BeginPush(RequestFor("x", bytes)).status().code(),
            absl::StatusCode::kUnavailable);
}

// The waits of Await(): each ends exactly once, by whichever comes first of
// a publish, its deadline, CancelWait() and Shutdown(), with its callback
// called outside the store's lock.

// Records the one outcome of a wait.
struct WaitOutcome {
  absl::Notification ended;
  absl::StatusOr<ImageRef> result;
  std::atomic<int> calls{0};

  ImageStore::WaitCallback Callback() {
    return [this](absl::StatusOr<ImageRef> answer) {
      ++calls;
      result = std::move(answer);
      ended.Notify();
    };
  }
};

TEST_F(ImageStoreTest, AwaitAnswersAtOnceWhenTheImageIsThere) {
  ASSERT_TRUE(Push("x", MakeTestImage(100)).ok());
  WaitOutcome outcome;
  EXPECT_EQ(store_->Await("x", absl::InfiniteFuture(), outcome.Callback()), 0u);
  ASSERT_TRUE(outcome.ended.HasBeenNotified());
  ASSERT_TRUE(outcome.result.ok()) << outcome.result.status();
  EXPECT_EQ((*outcome.result)->image_id(), "x");
  EXPECT_EQ(store_->Stats().pending_waits, 0u);
}

TEST_F(ImageStoreTest, AwaitOfAMalformedIdIsInvalidAtOnce) {
  WaitOutcome outcome;
  EXPECT_EQ(store_->Await("../x", absl::InfiniteFuture(), outcome.Callback()),
            0u);
  ASSERT_TRUE(outcome.ended.HasBeenNotified());
  EXPECT_EQ(outcome.result.status().code(), absl::StatusCode::kInvalidArgument);
}

TEST_F(ImageStoreTest, APublishEndsEveryWaitForItsIdAndNoOther) {
  constexpr int kWaits = 50;
  std::vector<WaitOutcome> waits(kWaits);
  WaitOutcome other;
  for (WaitOutcome& wait : waits) {
    EXPECT_NE(store_->Await("x", absl::InfiniteFuture(), wait.Callback()), 0u);
  }
  const ImageStore::WaitId other_wait =
      store_->Await("y", absl::InfiniteFuture(), other.Callback());
  EXPECT_EQ(store_->Stats().pending_waits, kWaits + 1u);
  auto published = Push("x", MakeTestImage(100));
  ASSERT_TRUE(published.ok());
  for (WaitOutcome& wait : waits) {
    ASSERT_TRUE(wait.ended.HasBeenNotified());
    EXPECT_EQ(wait.calls.load(), 1);
    ASSERT_TRUE(wait.result.ok());
    EXPECT_EQ(wait.result->get(), published->get());
  }
  EXPECT_FALSE(other.ended.HasBeenNotified());
  EXPECT_EQ(store_->Stats().pending_waits, 1u);
  EXPECT_TRUE(store_->CancelWait(other_wait, absl::CancelledError("done")));
}

TEST_F(ImageStoreTest, AWaitForANewerGenerationIgnoresTheCurrentOne) {
  auto first = Push("x", MakeTestImage(100));
  ASSERT_TRUE(first.ok());
  WaitOutcome newer;
  const ImageStore::WaitId wait = store_->Await(
      "x", (*first)->generation(), absl::InfiniteFuture(), newer.Callback());
  ASSERT_NE(wait, 0u);
  EXPECT_FALSE(newer.ended.HasBeenNotified());
  auto second = Push("x", MakeTestImage(100));
  ASSERT_TRUE(second.ok());
  ASSERT_TRUE(newer.ended.HasBeenNotified());
  ASSERT_TRUE(newer.result.ok()) << newer.result.status();
  EXPECT_EQ(newer.result->get(), second->get());

  // Already newer: answered at once.
  WaitOutcome at_once;
  EXPECT_EQ(store_->Await("x", (*first)->generation(), absl::InfiniteFuture(),
                          at_once.Callback()),
            0u);
  ASSERT_TRUE(at_once.result.ok());
  EXPECT_EQ(at_once.result->get(), second->get());
}

TEST_F(ImageStoreTest, APublishNotNewerThanAWaitAsksLeavesItWaiting) {
  WaitOutcome far;
  const ImageStore::WaitId wait = store_->Await(
      "x", UINT64_MAX - 1, absl::Now() + absl::Hours(1), far.Callback());
  ASSERT_NE(wait, 0u);
  ASSERT_TRUE(Push("x", MakeTestImage(100)).ok());
  EXPECT_FALSE(far.ended.HasBeenNotified());
  EXPECT_EQ(store_->Stats().pending_waits, 1u);
  EXPECT_EQ(store_->ExpireWaits(absl::Now() + absl::Hours(2)), 1u);
  ASSERT_TRUE(far.ended.HasBeenNotified());
  EXPECT_EQ(far.result.status().code(), absl::StatusCode::kDeadlineExceeded);
  EXPECT_NE(far.result.status().message().find(
                "no generation of image 'x' newer than"),
            std::string::npos)
      << far.result.status();
}

TEST_F(ImageStoreTest, AWaitsCallbackMayCallTheStore) {
  // Callbacks run outside the store's lock: one that calls back in must
  // not deadlock.
  absl::StatusOr<ImageRef> seen;
  store_->Await("x", absl::InfiniteFuture(),
                [&](absl::StatusOr<ImageRef> image) {
                  ASSERT_TRUE(image.ok());
                  seen = store_->Get("x");
                  EXPECT_EQ(store_->Stats().pending_waits, 0u);
                });
  ASSERT_TRUE(Push("x", MakeTestImage(100)).ok());
  EXPECT_TRUE(seen.ok()) << seen.status();
}

TEST_F(ImageStoreTest, CancellingAWaitEndsItOnceWithTheCallersStatus) {
  WaitOutcome outcome;
  const ImageStore::WaitId wait =
      store_->Await("x", absl::InfiniteFuture(), outcome.Callback());
  ASSERT_NE(wait, 0u);
  EXPECT_TRUE(store_->CancelWait(wait, absl::CancelledError("client left")));
  ASSERT_TRUE(outcome.ended.HasBeenNotified());
  EXPECT_EQ(outcome.result.status().code(), absl::StatusCode::kCancelled);
  // Ended: a second cancel, a publish, shutdown do nothing more.
  EXPECT_FALSE(store_->CancelWait(wait, absl::CancelledError("again")));
  ASSERT_TRUE(Push("x", MakeTestImage(100)).ok());
  store_->Shutdown();
  EXPECT_EQ(outcome.calls.load(), 1);
  EXPECT_EQ(outcome.result.status().code(), absl::StatusCode::kCancelled);
}

TEST_F(ImageStoreTest, WaitsPastTheirDeadlineEndWithDeadlineExceeded) {
  // No reaper here: ExpireWaits is what the reaper calls.
  const absl::Time now = absl::Now();
  WaitOutcome soon;
  WaitOutcome later;
  ASSERT_NE(store_->Await("x", now + absl::Hours(1), soon.Callback()), 0u);
  ASSERT_NE(store_->Await("x", now + absl::Hours(3), later.Callback()), 0u);
  EXPECT_EQ(store_->ExpireWaits(now + absl::Hours(2)), 1u);
  ASSERT_TRUE(soon.ended.HasBeenNotified());
  EXPECT_EQ(soon.result.status().code(), absl::StatusCode::kDeadlineExceeded);
  EXPECT_FALSE(later.ended.HasBeenNotified());
  EXPECT_EQ(store_->Stats().pending_waits, 1u);
  // The remaining one still gets the image.
  ASSERT_TRUE(Push("x", MakeTestImage(100)).ok());
  ASSERT_TRUE(later.ended.HasBeenNotified());
  EXPECT_TRUE(later.result.ok());
}

TEST_F(ImageStoreTest, AWaitWhoseDeadlineHasPassedEndsAtOnce) {
  WaitOutcome outcome;
  EXPECT_EQ(
      store_->Await("x", absl::Now() - absl::Seconds(1), outcome.Callback()),
      0u);
  ASSERT_TRUE(outcome.ended.HasBeenNotified());
  EXPECT_EQ(outcome.result.status().code(),
            absl::StatusCode::kDeadlineExceeded);
}

TEST_F(ImageStoreTest, TheReaperEndsWaitsAtTheirDeadline) {
  StoreOptions options;  // a reaper, and the real clock
  ImageStore store(options);
  WaitOutcome outcome;
  ASSERT_NE(store.Await("x", absl::Now() + absl::Milliseconds(20),
                        outcome.Callback()),
            0u);
  // Only the reaper can end it: nothing else is done to the store.
  outcome.ended.WaitForNotification();
  EXPECT_EQ(outcome.result.status().code(),
            absl::StatusCode::kDeadlineExceeded);
  EXPECT_EQ(store.Stats().pending_waits, 0u);
}

TEST_F(ImageStoreTest, ShutdownEndsPendingWaitsAndRefusesNewOnes) {
  std::vector<WaitOutcome> waits(10);
  for (size_t i = 0; i < waits.size(); ++i) {
    ASSERT_NE(store_->Await(absl::StrCat("id", i % 3), absl::InfiniteFuture(),
                            waits[i].Callback()),
              0u);
  }
  store_->Shutdown();
  for (WaitOutcome& wait : waits) {
    ASSERT_TRUE(wait.ended.HasBeenNotified());
    EXPECT_EQ(wait.result.status().code(), absl::StatusCode::kUnavailable);
  }
  EXPECT_EQ(store_->Stats().pending_waits, 0u);
  WaitOutcome late;
  EXPECT_EQ(store_->Await("x", absl::InfiniteFuture(), late.Callback()), 0u);
  EXPECT_EQ(late.result.status().code(), absl::StatusCode::kUnavailable);
}

TEST_F(ImageStoreTest, DestroyingTheStoreEndsItsWaits) {
  WaitOutcome outcome;
  {
    auto store = MakeStore(StoreOptions{});
    ASSERT_NE(store->Await("x", absl::InfiniteFuture(), outcome.Callback()),
              0u);
  }
  ASSERT_TRUE(outcome.ended.HasBeenNotified());
  EXPECT_EQ(outcome.result.status().code(), absl::StatusCode::kUnavailable);
}

// --- Eviction ----------------------------------------------------------------

class EvictionTest : public ImageStoreTest {
 protected:
  // Room for three images of kSize.
  static constexpr size_t kSize = 4096;
  EvictionTest() {
    StoreOptions options;
    options.max_memory_bytes = 3 * kSize + kSize / 2;
    options.eviction = StoreOptions::Eviction::kLru;
    store_ = MakeStore(options);
  }
  const std::vector<uint8_t> bytes_ = MakeTestImage(kSize);
};

// A push that does not fit deletes the least recently used image: the
// oldest publish, unless a fetch, stat or read used it since.
TEST_F(EvictionTest, APushThatDoesNotFitEvictsTheLeastRecentlyUsed) {
  for (const char* id : {"a", "b", "c"}) ASSERT_TRUE(Push(id, bytes_).ok());
  ASSERT_TRUE(store_->Get("a").ok());  // a is now the most recently used
  auto d = Push("d", bytes_);
  ASSERT_TRUE(d.ok()) << d.status();
  const uint64_t d_generation = (*d)->generation();
  d = absl::NotFoundError("not held any more");
  EXPECT_EQ(store_->Get("b").status().code(), absl::StatusCode::kNotFound);
  for (const char* id : {"a", "c", "d"}) EXPECT_TRUE(store_->Get(id).ok());
  // c, d, then a (just used above in that order): c goes next.
  ASSERT_TRUE(store_->GetGeneration("c", 0).ok());
  ASSERT_TRUE(store_->Get("a").ok());
  ASSERT_TRUE(Push("e", bytes_).ok());
  EXPECT_EQ(store_->Get("d").status().code(), absl::StatusCode::kNotFound);
  const StoreStats stats = store_->Stats();
  EXPECT_EQ(stats.evicted_images, 2u);
  EXPECT_EQ(stats.evicted_bytes, 2 * kSize);
  EXPECT_EQ(stats.image_count, 3u);

  auto page = store_->ReadEvents("", d_generation, 10, 10);
  ASSERT_TRUE(page.ok());
  ASSERT_EQ(page->events.size(), 2u);
  EXPECT_EQ(page->events[0].kind, ImageEvent::Kind::kEvicted);
  EXPECT_EQ(page->events[0].image_id, "d");
  EXPECT_EQ(page->events[1].image_id, "e");
}

// An image somebody holds (a reader, a call sending it) is never
// evicted; if evicting what nobody holds would not make room, nothing is
// evicted and the push is refused.
TEST_F(EvictionTest, HeldImagesStayAndAPushThatCannotFitEvictsNothing) {
  for (const char* id : {"a", "b", "c"}) ASSERT_TRUE(Push(id, bytes_).ok());
  auto held_a = store_->Get("a");
  auto held_b = store_->Get("b");
  ASSERT_TRUE(held_a.ok() && held_b.ok());
  ASSERT_TRUE(Push("d", bytes_).ok());  // c goes
  EXPECT_EQ(store_->Get("c").status().code(), absl::StatusCode::kNotFound);
  // Two images' worth: only d could go, which is not enough.
  const auto big = MakeTestImage(2 * kSize);
  auto refused = Push("big", big);
  EXPECT_EQ(refused.status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_TRUE(store_->Get("d").ok());
  EXPECT_EQ(store_->Stats().evicted_images, 1u);
  // Once the readers let go, they can go too.
  held_a = absl::NotFoundError("released");
  held_b = absl::NotFoundError("released");
  ASSERT_TRUE(Push("big", big).ok());
}

// Replaced and deleted images leave the order of use with them: what
// is evicted is always current.
TEST_F(EvictionTest, ReplacedAndDeletedImagesLeaveTheOrder) {
  for (const char* id : {"a", "b", "a", "c"}) {
    ASSERT_TRUE(Push(id, bytes_).ok());
  }
  ASSERT_TRUE(store_->Delete("c", std::nullopt).ok());
  ASSERT_TRUE(Push("d", bytes_).ok());
  ASSERT_TRUE(Push("e", bytes_).ok());  // b, the oldest current, goes
  EXPECT_EQ(store_->Get("b").status().code(), absl::StatusCode::kNotFound);
  for (const char* id : {"a", "d", "e"}) EXPECT_TRUE(store_->Get(id).ok());
}

// Without eviction (the default) a full store refuses, as always.
TEST_F(ImageStoreTest, WithoutEvictionAFullStoreRefuses) {
  StoreOptions options;
  options.max_memory_bytes = 4096 + 2048;
  auto store = MakeStore(options);
  const auto bytes = MakeTestImage(4096);
  ASSERT_TRUE(PushWhole(*store, RequestFor("a", bytes), bytes).ok());
  EXPECT_EQ(PushWhole(*store, RequestFor("b", bytes), bytes).status().code(),
            absl::StatusCode::kResourceExhausted);
  EXPECT_TRUE(store->Get("a").ok());
}

// --- The change history (watchers) ----------------------------------------

// Publishes, replaces, deletes and expiries each take the next sequence, a
// publish's being its generation, and are read back in order, under a
// prefix.
TEST_F(ImageStoreTest, ChangesAreNumberedWithoutGapsAndReadInOrder) {
  const auto bytes = MakeTestImage(4096);
  const uint64_t start = store_->LatestSequence();
  auto first = Push("run/a", bytes);
  auto second = Push("run/a", bytes);
  ASSERT_TRUE(first.ok() && second.ok());
  ASSERT_TRUE(Push("other/x", bytes).ok());
  ASSERT_TRUE(store_->Delete("run/a", std::nullopt).ok());
  PushRequest expiring = RequestFor("run/b", bytes);
  expiring.ttl = absl::Seconds(10);
  auto third = PushWhole(*store_, std::move(expiring), bytes);
  ASSERT_TRUE(third.ok());
  now_ += absl::Seconds(11);
  ASSERT_EQ(store_->RemoveExpired(), 1u);
  EXPECT_EQ(store_->LatestSequence(), (*third)->generation() + 1);

  auto page = store_->ReadEvents("run/", start, 100, 100);
  ASSERT_TRUE(page.ok()) << page.status();
  EXPECT_EQ(page->lost_last, 0u);
  EXPECT_FALSE(page->more);
  EXPECT_EQ(page->position, store_->LatestSequence());
  using Kind = ImageEvent::Kind;
  const std::vector<ImageEvent>& events = page->events;
  ASSERT_EQ(events.size(), 5u);
  EXPECT_EQ(events[0].kind, Kind::kPublished);
  EXPECT_EQ(events[0].sequence, (*first)->generation());
  EXPECT_EQ(events[1].kind, Kind::kReplaced);
  EXPECT_EQ(events[1].generation, (*second)->generation());
  EXPECT_EQ(events[1].replaced_generation, (*first)->generation());
  EXPECT_EQ(events[2].kind, Kind::kDeleted);
  EXPECT_EQ(events[2].generation, (*second)->generation());
  EXPECT_EQ(events[2].sequence, (*second)->generation() + 2);
  EXPECT_EQ(events[3].kind, Kind::kPublished);
  EXPECT_EQ(events[3].image_id, "run/b");
  EXPECT_EQ(events[4].kind, Kind::kExpired);
  EXPECT_EQ(events[4].generation, (*third)->generation());
  EXPECT_EQ(events[4].time, now_);
}

// An expired image the reaper has not removed yet, pushed again: it
// expires, then the new one is a first publish, not a replacement.
TEST_F(ImageStoreTest, PushingOverAnExpiredImageRecordsItsExpiryFirst) {
  const auto bytes = MakeTestImage(4096);
  PushRequest expiring = RequestFor("x", bytes);
  expiring.ttl = absl::Seconds(1);
  auto old = PushWhole(*store_, std::move(expiring), bytes);
  ASSERT_TRUE(old.ok());
  now_ += absl::Seconds(2);
  auto fresh = Push("x", bytes);
  ASSERT_TRUE(fresh.ok());
  auto page = store_->ReadEvents("", (*old)->generation(), 10, 10);
  ASSERT_TRUE(page.ok());
  ASSERT_EQ(page->events.size(), 2u);
  EXPECT_EQ(page->events[0].kind, ImageEvent::Kind::kExpired);
  EXPECT_EQ(page->events[0].generation, (*old)->generation());
  EXPECT_EQ(page->events[1].kind, ImageEvent::Kind::kPublished);
  EXPECT_EQ(page->events[1].generation, (*fresh)->generation());
  EXPECT_EQ(store_->Stats().expired_images, 1u);
}

// The store keeps the latest event_history changes; a read from further
// back says exactly which it lost, then goes on from the oldest kept. A
// read looks at no more than max_scan changes and says there are more.
TEST_F(ImageStoreTest, TheHistoryKeepsTheLatestChangesAndNamesTheLost) {
  StoreOptions options;
  options.event_history = 3;
  auto store = MakeStore(options);
  const auto bytes = MakeTestImage(4096);
  std::vector<uint64_t> generations;
  for (int i = 0; i < 6; ++i) {
    auto pushed =
        PushWhole(*store, RequestFor(absl::StrCat("i", i), bytes), bytes);
    ASSERT_TRUE(pushed.ok());
    generations.push_back((*pushed)->generation());
  }
  auto page = store->ReadEvents("", generations[0], 100, 2);
  ASSERT_TRUE(page.ok());
  EXPECT_EQ(page->lost_first, generations[1]);
  EXPECT_EQ(page->lost_last, generations[2]);
  ASSERT_EQ(page->events.size(), 2u);
  EXPECT_EQ(page->events[0].generation, generations[3]);
  EXPECT_EQ(page->events[1].generation, generations[4]);
  EXPECT_TRUE(page->more);
  EXPECT_EQ(page->position, generations[4]);
  page = store->ReadEvents("", page->position, 100, 2);
  ASSERT_TRUE(page.ok());
  EXPECT_EQ(page->lost_last, 0u);
  ASSERT_EQ(page->events.size(), 1u);
  EXPECT_EQ(page->events[0].generation, generations[5]);
  EXPECT_FALSE(page->more);
  // From before the store began: lost too, it never knew them.
  page = store->ReadEvents("", 0, 100, 100);
  ASSERT_TRUE(page.ok());
  EXPECT_EQ(page->lost_first, 1u);
  EXPECT_EQ(page->lost_last, generations[2]);
  // A filter the caller gives hides what it refuses.
  page = store->ReadEvents("", generations[2], 100, 100,
                           [](std::string_view id) { return id != "i4"; });
  ASSERT_TRUE(page.ok());
  ASSERT_EQ(page->events.size(), 2u);
  EXPECT_EQ(page->events[1].image_id, "i5");
}

// A copy of another server's generation is published under that number,
// and the store's own changes are numbered after it, as a Lamport clock
// moves on receiving a later time; a copy that is not newer than what the
// store holds, or is implausibly far ahead, changes nothing.
TEST_F(ImageStoreTest,
       AReplicaIsPublishedUnderItsGenerationAndMovesTheCounter) {
  const auto bytes = MakeTestImage(4096);
  const uint64_t start = store_->LatestSequence();
  const uint64_t ahead = start + 1000;
  PushRequest copy = RequestFor("r/x", bytes);
  copy.replica_generation = ahead;
  auto copied = PushWhole(*store_, copy, bytes);
  ASSERT_TRUE(copied.ok()) << copied.status();
  EXPECT_EQ((*copied)->generation(), ahead);
  auto local = Push("r/y", bytes);
  ASSERT_TRUE(local.ok());
  EXPECT_EQ((*local)->generation(), ahead + 1);

  // The same generation again, or an older one: the store has it.
  for (uint64_t older : {ahead, ahead - 1}) {
    PushRequest again = RequestFor("r/x", bytes);
    again.replica_generation = older;
    auto refused = PushWhole(*store_, again, bytes);
    EXPECT_EQ(refused.status().code(), absl::StatusCode::kFailedPrecondition)
        << refused.status();
  }
  PushRequest far = RequestFor("r/far", bytes);
  far.replica_generation =
      store_->LatestSequence() + ImageStore::kMaxGenerationLead + 2;
  EXPECT_EQ(PushWhole(*store_, far, bytes).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(store_->Get("r/far").status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ((*store_->Get("r/x"))->generation(), ahead);

  // A copy of a generation the counter passed already: published under
  // it, numbered after the counter as a change.
  PushRequest behind = RequestFor("r/z", bytes);
  behind.replica_generation = start + 5;
  auto late = PushWhole(*store_, behind, bytes);
  ASSERT_TRUE(late.ok()) << late.status();
  EXPECT_EQ((*late)->generation(), start + 5);

  // The history reads across the jump with nothing lost.
  auto page = store_->ReadEvents("r/", start, 100, 100);
  ASSERT_TRUE(page.ok());
  EXPECT_EQ(page->lost_last, 0u);
  ASSERT_EQ(page->events.size(), 3u);
  EXPECT_EQ(page->events[0].sequence, ahead);
  EXPECT_EQ(page->events[0].generation, ahead);
  EXPECT_EQ(page->events[1].sequence, ahead + 1);
  EXPECT_EQ(page->events[2].generation, start + 5);
  EXPECT_EQ(page->events[2].sequence, ahead + 2);
  EXPECT_EQ(page->position, store_->LatestSequence());
  // From inside the gap: the changes after it.
  page = store_->ReadEvents("r/", start + 10, 100, 100);
  ASSERT_TRUE(page.ok());
  EXPECT_EQ(page->lost_last, 0u);
  EXPECT_EQ(page->events.size(), 3u);
}

// A history that lost the changes around a jump names what it lost up to
// the last one it dropped, and goes on from the oldest kept.
TEST_F(ImageStoreTest, TheHistoryNamesWhatItLostAcrossAJump) {
  StoreOptions options;
  options.event_history = 2;
  auto store = MakeStore(options);
  const auto bytes = MakeTestImage(4096);
  const uint64_t start = store->LatestSequence();
  auto first = PushWhole(*store, RequestFor("a", bytes), bytes);
  PushRequest copy = RequestFor("b", bytes);
  copy.replica_generation = start + 500;
  auto jumped = PushWhole(*store, copy, bytes);
  auto third = PushWhole(*store, RequestFor("c", bytes), bytes);
  auto fourth = PushWhole(*store, RequestFor("d", bytes), bytes);
  ASSERT_TRUE(first.ok() && jumped.ok() && third.ok() && fourth.ok());
  auto page = store->ReadEvents("", start, 100, 100);
  ASSERT_TRUE(page.ok());
  EXPECT_EQ(page->lost_first, start + 1);
  EXPECT_EQ(page->lost_last, start + 500);
  ASSERT_EQ(page->events.size(), 2u);
  EXPECT_EQ(page->events[0].image_id, "c");
  EXPECT_EQ(page->events[1].image_id, "d");
}

// Two images may hold generations with the same number (one a copy of
// another server's): a reader of either finds its own, replaced or not.
TEST_F(ImageStoreTest, EqualGenerationsOfTwoImagesAreKeptApart) {
  const auto bytes = MakeTestImage(4096);
  const auto other_bytes = MakeTestImage(8192);
  auto a = Push("a", bytes);
  ASSERT_TRUE(a.ok());
  PushRequest copy = RequestFor("b", other_bytes);
  copy.replica_generation = (*a)->generation();
  auto b = PushWhole(*store_, copy, other_bytes);
  ASSERT_TRUE(b.ok()) << b.status();
  ASSERT_EQ((*b)->generation(), (*a)->generation());
  const uint64_t shared = (*a)->generation();
  ASSERT_TRUE(Push("a", other_bytes).ok());
  ASSERT_TRUE(Push("b", bytes).ok());
  auto old_a = store_->GetGeneration("a", shared);
  auto old_b = store_->GetGeneration("b", shared);
  ASSERT_TRUE(old_a.ok() && old_b.ok());
  EXPECT_EQ(*old_a, *a);
  EXPECT_EQ(*old_b, *b);
}

// A notification is called once, by the first change under its prefix
// after its position, and not by others; it is not registered when such a
// change came already; it can be cancelled; shutdown calls those left.
TEST_F(ImageStoreTest, EventNotificationsComeOnceForTheirPrefix) {
  const auto bytes = MakeTestImage(4096);
  int calls = 0;
  const ImageStore::NotificationId id = store_->NotifyOnEvent(
      "a/", store_->LatestSequence(), [&calls] { ++calls; });
  ASSERT_NE(id, 0u);
  ASSERT_TRUE(Push("b/x", bytes).ok());
  EXPECT_EQ(calls, 0);
  ASSERT_TRUE(Push("a/x", bytes).ok());
  EXPECT_EQ(calls, 1);
  ASSERT_TRUE(Push("a/x", bytes).ok());
  EXPECT_EQ(calls, 1);
  EXPECT_FALSE(store_->CancelEventNotification(id));
  EXPECT_EQ(store_->NotifyOnEvent("a/", 0, [&calls] { ++calls; }), 0u);

  const ImageStore::NotificationId cancelled = store_->NotifyOnEvent(
      "", store_->LatestSequence(), [&calls] { ++calls; });
  EXPECT_TRUE(store_->CancelEventNotification(cancelled));
  ASSERT_TRUE(Push("a/y", bytes).ok());
  EXPECT_EQ(calls, 1);

  ASSERT_NE(store_->NotifyOnEvent("z/", store_->LatestSequence(),
                                  [&calls] { ++calls; }),
            0u);
  store_->Shutdown();
  EXPECT_EQ(calls, 2);
  EXPECT_EQ(store_->ReadEvents("", 0, 1, 1).status().code(),
            absl::StatusCode::kUnavailable);
}

// Producers publishing on several threads, and a watcher reading the
// history and sleeping on notifications when it has caught up: it sees
// every publish once, in sequence order, and never sleeps through one.
TEST_F(ImageStoreTest, AWatcherOfConcurrentPublishesSeesEachOnceInOrder) {
  constexpr int kProducers = 4;
  constexpr int kPushesEach = 200;
  const auto bytes = MakeTestImage(4096);
  const uint64_t start = store_->LatestSequence();
  std::vector<std::vector<uint64_t>> published(kProducers);
  std::vector<ImageEvent> seen;
  std::thread watcher([&] {
    uint64_t position = start;
    while (seen.size() < size_t{kProducers} * kPushesEach) {
      auto page = store_->ReadEvents("p/", position, 64, 4096);
      ASSERT_TRUE(page.ok()) << page.status();
      ASSERT_EQ(page->lost_last, 0u);
      seen.insert(seen.end(), page->events.begin(), page->events.end());
      position = page->position;
      if (page->more || !page->events.empty()) continue;
      auto woken = std::make_shared<absl::Notification>();
      if (store_->NotifyOnEvent("p/", position, [woken] { woken->Notify(); }) !=
          0) {
        woken->WaitForNotification();
      }
    }
  });
  std::vector<std::thread> producers;
  for (int t = 0; t < kProducers; ++t) {
    producers.emplace_back([&, t] {
      for (int i = 0; i < kPushesEach; ++i) {
        // Other ids too, which the watcher skips.
        ASSERT_TRUE(Push(absl::StrCat("q/", t), bytes).ok());
        auto pushed = Push(absl::StrCat("p/", t), bytes);
        ASSERT_TRUE(pushed.ok());
        published[t].push_back((*pushed)->generation());
      }
    });
  }
  for (std::thread& producer : producers) producer.join();
  watcher.join();
  ASSERT_EQ(seen.size(), size_t{kProducers} * kPushesEach);
  std::vector<std::vector<uint64_t>> seen_by_producer(kProducers);
  for (size_t i = 0; i < seen.size(); ++i) {
    if (i > 0) {
      EXPECT_GT(seen[i].sequence, seen[i - 1].sequence);
    }
    seen_by_producer[seen[i].image_id.back() - '0'].push_back(
        seen[i].generation);
  }
  EXPECT_EQ(seen_by_producer, published);
}

// Publishes, cancellations, deadlines and shutdown racing: every wait ends
// exactly once, whichever wins.
TEST_F(ImageStoreTest, RacingEndsOfAWaitCallItsCallbackExactlyOnce) {
  StoreOptions options;
  ImageStore store(options);
  constexpr int kWaits = 400;
  std::vector<WaitOutcome> waits(kWaits);
  std::vector<ImageStore::WaitId> ids(kWaits);
  const absl::Time now = absl::Now();
  for (int i = 0; i < kWaits; ++i) {
    // A quarter with deadlines that pass while the others race.
    const absl::Time deadline =
        i % 4 == 0 ? now + absl::Microseconds(i * 10) : absl::InfiniteFuture();
    ids[i] =
        store.Await(absl::StrCat("id", i % 8), deadline, waits[i].Callback());
  }
  const auto bytes = MakeTestImage(100);
  std::thread publisher([&] {
    for (int k = 0; k < 8; ++k) {
      PushWhole(store, RequestFor(absl::StrCat("id", k), bytes), bytes)
          .IgnoreError();
    }
  });
  std::thread canceller([&] {
    for (int i = kWaits - 1; i >= 0; --i) {
      store.CancelWait(ids[i], absl::CancelledError("cancelled"));
    }
  });
  publisher.join();
  canceller.join();
  store.Shutdown();
  for (WaitOutcome& wait : waits) {
    ASSERT_TRUE(wait.ended.HasBeenNotified());
    EXPECT_EQ(wait.calls.load(), 1);
  }
  EXPECT_EQ(store.Stats().pending_waits, 0u);
}

// --- Progress deadline: a push that falls behind is cut off --------------

// The cut-offs a push received, and the push, which a cut-off may drop.
struct CutOffs {
  std::atomic<int> calls{0};
  absl::Status last;  // written by the only call
};

PushCutOff CountInto(CutOffs* cut_offs) {
  return [cut_offs](const absl::Status& why) {
    cut_offs->last = why;
    cut_offs->calls.fetch_add(1);
  };
}

StoreOptions DeadlineOptions(absl::Duration idle, uint64_t min_rate) {
  StoreOptions options;
  options.push_idle_timeout = idle;
  options.push_min_bytes_per_second = min_rate;
  options.require_hdf5 = false;
  return options;
}

TEST_F(ImageStoreTest, PushThatSendsNothingIsCutOffAtTheIdleTimeout) {
  auto store = MakeStore(DeadlineOptions(absl::Seconds(30), 256 << 10));
  const auto bytes = MakeTestImage(1 << 20);
  CutOffs cut_offs;
  auto pending =
      store->BeginPush(RequestFor("idle", bytes), CountInto(&cut_offs));
  ASSERT_TRUE(pending.ok()) << pending.status();
  now_ += absl::Seconds(29);
  EXPECT_EQ(store->CutOffStalledPushes(), 0u);
  EXPECT_EQ(cut_offs.calls.load(), 0);
  EXPECT_TRUE((*pending)->cut_status().ok());

  now_ += absl::Seconds(1);
  EXPECT_EQ(store->CutOffStalledPushes(), 1u);
  ASSERT_EQ(cut_offs.calls.load(), 1);
  EXPECT_EQ(cut_offs.last.code(), absl::StatusCode::kDeadlineExceeded);
  EXPECT_EQ(cut_offs.last.message(),
            "push of 'idle' cancelled: 0 B of 1.0 MiB received in 30s, "
            "nothing for 30s; the server cancels a push idle for 30s; "
            "nothing was stored");
  EXPECT_EQ((*pending)->cut_status(), cut_offs.last);
  // The push is spoiled for its transport too.
  EXPECT_EQ((*pending)->Append(bytes.data(), 10), cut_offs.last);
  EXPECT_EQ((*pending)->Publish().status(), cut_offs.last);
  EXPECT_EQ(store->CutOffStalledPushes(), 0u);
  EXPECT_EQ(cut_offs.calls.load(), 1);
  pending->reset();
  EXPECT_EQ(store->Stats().reserved_bytes, 0u);
  EXPECT_EQ(store->Get("idle").status().code(), absl::StatusCode::kNotFound);
}

TEST_F(ImageStoreTest, TrickleIsCutOffOnceBehindTheMinimumRate) {
  auto store = MakeStore(DeadlineOptions(absl::Seconds(1), 64 << 10));
  const auto bytes = MakeTestImage(1 << 20);
  CutOffs cut_offs;
  auto pending =
      store->BeginPush(RequestFor("trickle", bytes), CountInto(&cut_offs));
  ASSERT_TRUE(pending.ok()) << pending.status();
  const absl::Time begun = now_;
  // A byte every 200 ms is progress, but nowhere near 64 KiB/s.
  size_t sent = 0;
  while (cut_offs.calls.load() == 0 && now_ - begun < absl::Seconds(10)) {
    now_ += absl::Milliseconds(200);
    ASSERT_TRUE((*pending)->Append(bytes.data() + sent, 1).ok());
    ++sent;
    store->CutOffStalledPushes();
  }
  ASSERT_EQ(cut_offs.calls.load(), 1);
  // Due at the idle timeout; looked at again at most kPushCheckSpacing
  // (250 ms) later, on this test's 200 ms steps.
  EXPECT_GE(now_ - begun, absl::Seconds(1));
  EXPECT_LE(now_ - begun, absl::Milliseconds(1400));
  EXPECT_EQ(cut_offs.last.code(), absl::StatusCode::kDeadlineExceeded);
  EXPECT_EQ(cut_offs.last.message(),
            absl::StrCat("push of 'trickle' cancelled: ", sent,
                         " B of 1.0 MiB received in ",
                         absl::FormatDuration(now_ - begun),
                         ", below the server's minimum of 64.0 KiB/s after "
                         "1s; nothing was stored"));
  pending->reset();
  EXPECT_EQ(store->Stats().reserved_bytes, 0u);
}

TEST_F(ImageStoreTest, PushAtTheMinimumRateIsNeverCutOff) {
  auto store = MakeStore(DeadlineOptions(absl::Seconds(1), 64 << 10));
  const auto bytes = MakeTestImage(1 << 20);
  CutOffs cut_offs;
  auto pending =
      store->BeginPush(RequestFor("steady", bytes), CountInto(&cut_offs));
  ASSERT_TRUE(pending.ok()) << pending.status();
  // Exactly 64 KiB/s, from a start as late as the grace allows: nothing
  // for almost the idle timeout, then 16 KiB every 250 ms.
  now_ += absl::Milliseconds(990);
  EXPECT_EQ(store->CutOffStalledPushes(), 0u);
  for (size_t sent = 0; sent < bytes.size(); sent += 16 << 10) {
    ASSERT_TRUE((*pending)->Append(bytes.data() + sent, 16 << 10).ok());
    now_ += absl::Milliseconds(250);
    EXPECT_EQ(store->CutOffStalledPushes(), 0u);
  }
  // All there, and ended within the idle timeout after the last byte.
  now_ += absl::Milliseconds(500);
  EXPECT_EQ(store->CutOffStalledPushes(), 0u);
  EXPECT_TRUE((*pending)->Publish().ok());
  EXPECT_EQ(cut_offs.calls.load(), 0);
}

TEST_F(ImageStoreTest, PushThatStopsHalfWayIsCutOffAnIdleTimeoutLater) {
  // No minimum rate: only the idle rule.
  auto store = MakeStore(DeadlineOptions(absl::Seconds(1), 0));
  const auto bytes = MakeTestImage(1 << 20);
  CutOffs cut_offs;
  auto pending =
      store->BeginPush(RequestFor("stopped", bytes), CountInto(&cut_offs));
  ASSERT_TRUE(pending.ok()) << pending.status();
  now_ += absl::Milliseconds(900);
  ASSERT_TRUE((*pending)->Append(bytes.data(), bytes.size() / 2).ok());
  now_ += absl::Milliseconds(100);
  EXPECT_EQ(store->CutOffStalledPushes(), 0u);
  now_ += absl::Milliseconds(800);
  EXPECT_EQ(store->CutOffStalledPushes(), 0u);
  now_ += absl::Milliseconds(100);
  EXPECT_EQ(store->CutOffStalledPushes(), 1u);
  EXPECT_EQ(cut_offs.last.message(),
            "push of 'stopped' cancelled: 512.0 KiB of 1.0 MiB received in "
            "1.9s, nothing for 1s; the server cancels a push idle for 1s; "
            "nothing was stored");
}

TEST_F(ImageStoreTest, PushWithAllItsBytesMustStillEndWithinTheIdleTimeout) {
  auto store = MakeStore(DeadlineOptions(absl::Seconds(1), 64 << 10));
  const auto bytes = MakeTestImage(1 << 20);
  CutOffs cut_offs;
  auto pending =
      store->BeginPush(RequestFor("unended", bytes), CountInto(&cut_offs));
  ASSERT_TRUE(pending.ok()) << pending.status();
  ASSERT_TRUE((*pending)->Append(bytes.data(), bytes.size()).ok());
  now_ += absl::Milliseconds(900);
  EXPECT_EQ(store->CutOffStalledPushes(), 0u);
  now_ += absl::Milliseconds(100);
  EXPECT_EQ(store->CutOffStalledPushes(), 1u);
  EXPECT_EQ((*pending)->Publish().status().code(),
            absl::StatusCode::kDeadlineExceeded);
}

TEST_F(ImageStoreTest, WithoutAnIdleTimeoutNoPushIsEverCutOff) {
  auto store = MakeStore(DeadlineOptions(absl::ZeroDuration(), 64 << 10));
  const auto bytes = MakeTestImage(1 << 20);
  CutOffs cut_offs;
  auto pending =
      store->BeginPush(RequestFor("patient", bytes), CountInto(&cut_offs));
  ASSERT_TRUE(pending.ok()) << pending.status();
  now_ += absl::Hours(100);
  EXPECT_EQ(store->CutOffStalledPushes(), 0u);
  ASSERT_TRUE((*pending)->Append(bytes.data(), bytes.size()).ok());
  EXPECT_TRUE((*pending)->Publish().ok());
  EXPECT_EQ(cut_offs.calls.load(), 0);
}

TEST_F(ImageStoreTest, ACutOffMayDropThePushAndReleasesItsMemoryAtOnce) {
  auto store = MakeStore(DeadlineOptions(absl::Seconds(1), 64 << 10));
  const auto bytes = MakeTestImage(1 << 20);
  std::unique_ptr<PendingImage> pending;
  uint64_t reserved_after_cut_off = 1;
  ImageStore* raw_store = store.get();
  auto begun =
      store->BeginPush(RequestFor("dropped", bytes), [&](const absl::Status&) {
        pending.reset();  // as a transport does
        reserved_after_cut_off = raw_store->Stats().reserved_bytes;
      });
  ASSERT_TRUE(begun.ok()) << begun.status();
  pending = *std::move(begun);
  now_ += absl::Seconds(1);
  EXPECT_EQ(store->CutOffStalledPushes(), 1u);
  EXPECT_EQ(pending, nullptr);
  EXPECT_EQ(reserved_after_cut_off, 0u);
}

TEST_F(ImageStoreTest, PublishRacingACutOffEitherPublishesOrReportsTheCut) {
  auto store = MakeStore(DeadlineOptions(absl::Seconds(1), 64 << 10));
  const auto bytes = MakeTestImage(64 << 10);
  for (int round = 0; round < 200; ++round) {
    const std::string id = absl::StrCat("race/", round);
    CutOffs cut_offs;
    auto pending =
        store->BeginPush(RequestFor(id, bytes), CountInto(&cut_offs));
    ASSERT_TRUE(pending.ok()) << pending.status();
    ASSERT_TRUE((*pending)->Append(bytes.data(), bytes.size()).ok());
    now_ += absl::Seconds(2);  // behind: unless it ends first
    absl::StatusOr<ImageRef> published;
    std::thread publisher([&] { published = (*pending)->Publish(); });
    store->CutOffStalledPushes();
    publisher.join();
    if (published.ok()) {
      EXPECT_EQ(cut_offs.calls.load(), 0) << round;
      EXPECT_TRUE(store->Get(id).ok()) << round;
    } else {
      EXPECT_EQ(cut_offs.calls.load(), 1) << round;
      EXPECT_EQ(published.status(), cut_offs.last) << round;
      EXPECT_EQ(store->Get(id).status().code(), absl::StatusCode::kNotFound);
    }
  }
}

// The reaper looks at the pushes on its own, waking when the first is due.
TEST_F(ImageStoreTest, TheReaperCutsOffAStalledPushWithoutBeingAsked) {
  StoreOptions options = DeadlineOptions(absl::Milliseconds(200), 64 << 10);
  ImageStore store(options);  // real clock, reaper running
  const auto bytes = MakeTestImage(1 << 20);
  absl::Notification cut;
  const absl::Time begun = absl::Now();  // no later than the push began
  auto pending = store.BeginPush(RequestFor("stalled", bytes),
                                 [&cut](const absl::Status&) { cut.Notify(); });
  ASSERT_TRUE(pending.ok()) << pending.status();
  ASSERT_TRUE(cut.WaitForNotificationWithTimeout(absl::Seconds(30)));
  EXPECT_GE(absl::Now() - begun, absl::Milliseconds(200));
  EXPECT_EQ((*pending)->cut_status().code(),
            absl::StatusCode::kDeadlineExceeded);
  pending->reset();
  EXPECT_EQ(store.Stats().reserved_bytes, 0u);
}

}  // namespace
}  // namespace h5depot::server
