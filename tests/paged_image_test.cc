// Tests of the remote driver's page cache and paged image, alone: the base
// is an in-memory image behind the ImageReader interface, so that every
// read that would be a round trip to the server can be counted exactly.
#include "vfd/src/paged_image.h"

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstring>
#include <memory>
#include <random>
#include <string>
#include <string_view>
#include <thread>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "vfd/src/page_cache.h"

namespace h5depot::vfd {
namespace {

using ::testing::HasSubstr;

constexpr size_t kPage = 4096;

// One generation of an image, in memory, counting the reads it serves.
class MemoryReader : public ImageReader {
 public:
  MemoryReader(std::string bytes, uint64_t generation)
      : bytes_(std::move(bytes)) {
    info_.image_id = "test";
    info_.size = bytes_.size();
    info_.generation = generation;
  }

  const ImageInfo& info() const override { return info_; }

  absl::StatusOr<size_t> Read(uint64_t offset, void* out,
                              size_t length) override {
    ++*reads_;
    if (!failure_.ok()) return failure_;
    if (offset >= bytes_.size()) return 0;
    const size_t n = std::min<uint64_t>(length, bytes_.size() - offset);
    std::memcpy(out, bytes_.data() + offset, n);
    return n;
  }

  // Counts into `reads` (which must outlive the reader) from now on.
  void CountInto(int* reads) { reads_ = reads; }
  void FailWith(absl::Status status) { failure_ = std::move(status); }
  // Makes the reader claim more bytes than it holds.
  void ClaimSize(uint64_t size) { info_.size = size; }

 private:
  std::string bytes_;
  ImageInfo info_;
  int own_reads_ = 0;
  int* reads_ = &own_reads_;
  absl::Status failure_;
};

std::string Pattern(size_t size, unsigned seed) {
  std::string bytes(size, '\0');
  std::mt19937 rng(seed);
  for (char& c : bytes) c = static_cast<char>(rng());
  return bytes;
}

PagedImageOptions Options(size_t cache_pages, size_t readahead_pages) {
  PagedImageOptions options;
  options.page_size = kPage;
  options.cache_bytes = cache_pages * kPage;
  options.readahead_bytes = readahead_pages * kPage;
  return options;
}

struct Fixture {
  Fixture(std::string bytes, PagedImageOptions options) : base(bytes) {
    auto reader = std::make_unique<MemoryReader>(std::move(bytes), 7);
    reader->CountInto(&reads);
    reader_ = reader.get();
    image = PagedImage::Open(std::move(reader), options);
  }

  std::string Read(uint64_t offset, size_t length) {
    std::string out(length, '?');
    EXPECT_TRUE(image->Read(offset, out.data(), length).ok());
    return out;
  }

  std::string base;
  int reads = 0;
  MemoryReader* reader_;
  std::unique_ptr<PagedImage> image;
};

TEST(PageCacheTest, EvictsTheLeastRecentlyUsedPage) {
  PageCache cache(kPage, 2);
  cache.Insert(1, PageBuffer(new char[kPage]));
  cache.Insert(2, PageBuffer(new char[kPage]));
  ASSERT_NE(cache.Find(1), nullptr);  // 2 is now the least recently used
  cache.Insert(3, PageBuffer(new char[kPage]));
  EXPECT_TRUE(cache.Contains(1));
  EXPECT_FALSE(cache.Contains(2));
  EXPECT_TRUE(cache.Contains(3));
  EXPECT_EQ(cache.size(), 2u);
}

TEST(PageCacheTest, TakeHandsOverThePageAndEraseFromDropsTheTail) {
  PageCache cache(kPage, 8);
  for (uint64_t page = 0; page < 6; ++page) {
    PageBuffer bytes(new char[kPage]);
    bytes[0] = static_cast<char>('a' + page);
    cache.Insert(page, std::move(bytes));
  }
  PageBuffer taken = cache.Take(2);
  ASSERT_NE(taken, nullptr);
  EXPECT_EQ(taken[0], 'c');
  EXPECT_EQ(cache.Take(2), nullptr);
  cache.EraseFrom(4);
  EXPECT_TRUE(cache.Contains(3));
  EXPECT_FALSE(cache.Contains(4));
  EXPECT_FALSE(cache.Contains(5));
  EXPECT_EQ(cache.size(), 3u);
}

TEST(PageCacheTest, InsertingACachedPageReplacesIt) {
  PageCache cache(kPage, 2);
  PageBuffer first(new char[kPage]);
  first[0] = 'x';
  cache.Insert(9, std::move(first));
  PageBuffer second(new char[kPage]);
  second[0] = 'y';
  cache.Insert(9, std::move(second));
  EXPECT_EQ(cache.size(), 1u);
  EXPECT_EQ(cache.Find(9)[0], 'y');
}

TEST(PagedImageTest, ReadsMatchTheBaseWhateverTheAccessPattern) {
  const std::string bytes = Pattern(300 * kPage + 123, 1);
  for (size_t cache_pages : {size_t{1}, size_t{8}, size_t{1024}}) {
    for (size_t readahead_pages : {size_t{0}, size_t{1}, size_t{16}}) {
      Fixture f(bytes, Options(cache_pages, readahead_pages));
      std::mt19937_64 rng(cache_pages * 31 + readahead_pages);
      for (int i = 0; i < 400; ++i) {
        const uint64_t offset = rng() % bytes.size();
        const size_t length =
            std::min<uint64_t>(rng() % (i % 10 == 0 ? 200 * kPage : 3 * kPage),
                               bytes.size() - offset);
        ASSERT_EQ(f.Read(offset, length), bytes.substr(offset, length))
            << "cache " << cache_pages << " readahead " << readahead_pages
            << " at " << offset << "+" << length;
      }
    }
  }
}

TEST(PagedImageTest, AdjacentMissesAreFetchedInOneRead) {
  Fixture f(Pattern(64 * kPage, 2), Options(64, 0));
  EXPECT_EQ(f.Read(100, 10 * kPage), f.base.substr(100, 10 * kPage));
  EXPECT_EQ(f.reads, 1);
  EXPECT_EQ(f.image->stats().page_misses, 11u);
}

TEST(PagedImageTest, CachedPagesSplitAMissIntoOneReadPerGap) {
  Fixture f(Pattern(64 * kPage, 3), Options(64, 0));
  f.Read(2 * kPage, 1);
  f.Read(5 * kPage, 1);
  ASSERT_EQ(f.reads, 2);
  EXPECT_EQ(f.Read(0, 8 * kPage), f.base.substr(0, 8 * kPage));
  EXPECT_EQ(f.reads, 2 + 3);  // pages 0-1, 3-4 and 6-7
  EXPECT_EQ(f.image->stats().page_hits, 2u);
}

TEST(PagedImageTest, ReadaheadServesTheFollowingSmallReads) {
  Fixture f(Pattern(256 * kPage, 4), Options(256, 4));
  for (uint64_t offset = 0; offset < 256 * kPage; offset += 1000) {
    const size_t length = std::min<uint64_t>(1000, 256 * kPage - offset);
    ASSERT_EQ(f.Read(offset, length), f.base.substr(offset, length));
  }
  // Without readahead this would be 256 reads; it doubles from 4 pages
  // while the misses stay sequential.
  EXPECT_LE(f.reads, 8);
}

TEST(PagedImageTest, ReadaheadStopsAtCachedPages) {
  Fixture f(Pattern(64 * kPage, 5), Options(64, 16));
  f.Read(3 * kPage, 1);  // caches pages 3..19
  const int before = f.reads;
  const uint64_t misses = f.image->stats().page_misses;
  f.Read(0, 1);  // fetches 0..2 only, then stops at page 3
  EXPECT_EQ(f.reads, before + 1);
  EXPECT_EQ(f.image->stats().page_misses, misses + 1);
  EXPECT_EQ(f.Read(0, 20 * kPage), f.base.substr(0, 20 * kPage));
  EXPECT_EQ(f.reads, before + 1);
}

TEST(PagedImageTest, LargeReadsGoStraightToTheCallerAndAreNotCached) {
  Fixture f(Pattern(512 * kPage, 6), Options(64, 4));  // max readahead 16
  EXPECT_EQ(f.Read(kPage / 2, 300 * kPage),
            f.base.substr(kPage / 2, 300 * kPage));
  EXPECT_EQ(f.reads, 1);
  EXPECT_EQ(f.image->stats().bytes_fetched, 300 * kPage);
  f.Read(10 * kPage, 1);
  EXPECT_EQ(f.reads, 2);  // still a miss: the large read left no pages
}

TEST(PagedImageTest, SequentialReadsOfFourPagesAreARequestEachWithoutCaching) {
  Fixture f(Pattern(512 * kPage, 9), Options(256, 64));  // readahead up to 64
  for (uint64_t i = 0; i < 8; ++i) {
    ASSERT_EQ(f.Read(i * 4 * kPage, 4 * kPage),
              f.base.substr(i * 4 * kPage, 4 * kPage));
  }
  EXPECT_EQ(f.reads, 8);
  EXPECT_EQ(f.image->stats().bytes_fetched, 32 * kPage);  // no readahead
  f.Read(kPage, 1);
  EXPECT_EQ(f.reads, 9);  // nothing was cached
}

TEST(PagedImageTest, BytesPastTheEndReadAsZeros) {
  Fixture f(Pattern(3 * kPage + 10, 7), Options(8, 1));
  std::string out = f.Read(3 * kPage, 100);
  EXPECT_EQ(out.substr(0, 10), f.base.substr(3 * kPage, 10));
  EXPECT_EQ(out.substr(10), std::string(90, '\0'));
  EXPECT_EQ(f.Read(10 * kPage, 50), std::string(50, '\0'));
}

TEST(PagedImageTest, WritesOverlayTheBaseAndAssembleGivesTheWholeImage) {
  std::string model = Pattern(40 * kPage + 77, 8);
  Fixture f(model, Options(4, 2));
  std::mt19937_64 rng(8);
  for (int i = 0; i < 300; ++i) {
    const int op = static_cast<int>(rng() % 10);
    if (op < 5) {
      const uint64_t offset = rng() % (model.size() + 3 * kPage);
      const std::string data = Pattern(rng() % (2 * kPage) + 1, i);
      if (offset + data.size() > model.size()) {
        model.resize(offset + data.size(), '\0');
      }
      model.replace(offset, data.size(), data);
      f.image->Write(offset, data.data(), data.size());
    } else if (op < 9) {
      const uint64_t offset = rng() % (model.size() + kPage);
      const size_t length = rng() % (3 * kPage);
      std::string expected(length, '\0');
      if (offset < model.size()) {
        const size_t n = std::min<uint64_t>(length, model.size() - offset);
        std::memcpy(expected.data(), model.data() + offset, n);
      }
      ASSERT_EQ(f.Read(offset, length), expected) << "op " << i;
    } else {
      const uint64_t size = rng() % (model.size() + 2 * kPage);
      model.resize(size, '\0');
      f.image->Resize(size);
    }
    ASSERT_EQ(f.image->size(), model.size());
  }
  EXPECT_TRUE(f.image->modified());
  absl::StatusOr<ImageBuffer> whole = f.image->Assemble();
  ASSERT_TRUE(whole.ok()) << whole.status();
  EXPECT_EQ(std::string(static_cast<const char*>(whole->data()), whole->size()),
            model);
}

TEST(PagedImageTest, ShrinkingThenGrowingReadsZerosWhereTheOldBytesWere) {
  Fixture f(Pattern(10 * kPage, 9), Options(16, 4));
  f.Read(0, 10 * kPage);  // everything cached
  f.image->Resize(2 * kPage + 5);
  f.image->Resize(6 * kPage);
  std::string expected = f.base.substr(0, 2 * kPage + 5);
  expected.resize(6 * kPage, '\0');
  EXPECT_EQ(f.Read(0, 6 * kPage), expected);
  absl::StatusOr<ImageBuffer> whole = f.image->Assemble();
  ASSERT_TRUE(whole.ok());
  EXPECT_EQ(std::string(static_cast<const char*>(whole->data()), whole->size()),
            expected);
}

TEST(PagedImageTest, WritesNeverReadTheBase) {
  Fixture f(Pattern(32 * kPage, 10), Options(32, 0));
  const std::string data(6 * kPage, 'w');
  f.image->Write(kPage / 2, data.data(), data.size());
  f.image->Write(8 * kPage + 10, data.data(), 20);
  f.image->Write(8 * kPage + 100, data.data(), 20);
  EXPECT_EQ(f.reads, 0);

  // A read needing the rest of a partly written page fetches it once and
  // merges: written bytes win, the rest is the base's.
  std::string expected = f.base.substr(8 * kPage, kPage);
  expected.replace(10, 20, 20, 'w');
  expected.replace(100, 20, 20, 'w');
  EXPECT_EQ(f.Read(8 * kPage, kPage), expected);
  EXPECT_EQ(f.reads, 1);
  EXPECT_EQ(f.Read(8 * kPage, kPage), expected);
  EXPECT_EQ(f.reads, 1);
  EXPECT_EQ(f.Read(8 * kPage + 10, 20), std::string(20, 'w'));  // page 8
  EXPECT_EQ(f.Read(kPage, 10), std::string(10, 'w'));  // written, no read
  EXPECT_EQ(f.reads, 1);
}

// HDF5 flushes its metadata cache through the driver's writes, and a write
// failing there leaves the file unclosable: so a write must succeed while
// the server is away, and what it wrote must survive until it is back.
TEST(PagedImageTest, WritesSucceedWhileTheBaseFailsAndAreKept) {
  Fixture f(Pattern(16 * kPage, 20), Options(4, 1));
  f.Read(0, 10);  // pages 0 and 1 cached
  f.reader_->FailWith(absl::UnavailableError("server stopped"));
  std::string model = f.base;
  for (uint64_t offset : {uint64_t{5}, 3 * kPage + 7, 9 * kPage - 3,
                          15 * kPage + 9, 17 * kPage}) {
    const std::string data = Pattern(100, static_cast<unsigned>(offset));
    f.image->Write(offset, data.data(), data.size());
    if (offset + data.size() > model.size()) {
      model.resize(offset + data.size(), '\0');
    }
    model.replace(offset, data.size(), data);
  }
  std::string out(50, '\0');
  EXPECT_EQ(f.image->Read(3 * kPage + 100, out.data(), out.size()).code(),
            absl::StatusCode::kUnavailable);
  EXPECT_EQ(f.image->Assemble().status().code(),
            absl::StatusCode::kUnavailable);

  f.reader_->FailWith(absl::OkStatus());
  EXPECT_EQ(f.Read(0, model.size()), model);
  absl::StatusOr<ImageBuffer> whole = f.image->Assemble();
  ASSERT_TRUE(whole.ok()) << whole.status();
  EXPECT_EQ(std::string(static_cast<const char*>(whole->data()), whole->size()),
            model);
}

TEST(PagedImageTest, AssembleMergesPartlyWrittenPagesWithTheBase) {
  Fixture f(Pattern(12 * kPage + 300, 21), Options(4, 0));
  std::string model = f.base;
  const std::string data = Pattern(50, 22);
  for (uint64_t offset : {uint64_t{3}, 2 * kPage + 9, 12 * kPage + 200}) {
    f.image->Write(offset, data.data(), data.size());
    model.replace(offset, data.size(), data);
  }
  f.image->Resize(12 * kPage + 220);  // cuts the last write short
  model.resize(12 * kPage + 220);
  f.image->Resize(13 * kPage);
  model.resize(13 * kPage, '\0');
  absl::StatusOr<ImageBuffer> whole = f.image->Assemble();
  ASSERT_TRUE(whole.ok()) << whole.status();
  EXPECT_EQ(std::string(static_cast<const char*>(whole->data()), whole->size()),
            model);
  EXPECT_EQ(f.Read(0, model.size()), model);
}

TEST(PagedImageTest, RewritingCachedBytesWithThemselvesChangesNothing) {
  Fixture f(Pattern(8 * kPage, 18), Options(8, 0));
  const std::string head = f.Read(0, 96);
  f.image->Write(0, head.data(), head.size());
  EXPECT_FALSE(f.image->modified());
  std::string changed = head;
  changed[50] ^= 1;
  f.image->Write(0, changed.data(), changed.size());
  EXPECT_TRUE(f.image->modified());
  EXPECT_EQ(f.Read(0, 96), changed);
}

TEST(PagedImageTest, AnEmptyImageHoldsWhatWasWritten) {
  auto image = PagedImage::CreateEmpty(Options(4, 1));
  EXPECT_EQ(image->size(), 0u);
  EXPECT_FALSE(image->modified());
  const std::string data = Pattern(5 * kPage + 3, 11);
  image->Write(kPage, data.data(), data.size());
  absl::StatusOr<ImageBuffer> whole = image->Assemble();
  ASSERT_TRUE(whole.ok());
  EXPECT_EQ(std::string(static_cast<const char*>(whole->data()), whole->size()),
            std::string(kPage, '\0') + data);
  EXPECT_EQ(image->base_generation(), 0u);
}

TEST(PagedImageTest, RebaseOntoTheCommittedGenerationKeepsTheContents) {
  Fixture f(Pattern(20 * kPage, 12), Options(8, 2));
  const std::string data = Pattern(3 * kPage, 13);
  f.image->Write(17 * kPage + 9, data.data(), data.size());
  absl::StatusOr<ImageBuffer> whole = f.image->Assemble();
  ASSERT_TRUE(whole.ok());
  const std::string committed(static_cast<const char*>(whole->data()),
                              whole->size());

  int new_reads = 0;
  auto reader = std::make_unique<MemoryReader>(committed, 8);
  reader->CountInto(&new_reads);
  f.image->Rebase(std::move(reader));
  EXPECT_FALSE(f.image->modified());
  EXPECT_EQ(f.image->base_generation(), 8u);
  EXPECT_EQ(f.Read(0, committed.size()), committed);
}

TEST(PagedImageTest, RebaseWithoutANewReaderKeepsLocalPages) {
  Fixture f(Pattern(20 * kPage, 14), Options(8, 2));
  const std::string data = Pattern(kPage, 15);
  f.image->Write(25 * kPage, data.data(), data.size());
  f.image->Rebase(nullptr);
  EXPECT_FALSE(f.image->modified());
  EXPECT_EQ(f.Read(25 * kPage, kPage), data);
  EXPECT_EQ(f.Read(0, kPage), f.base.substr(0, kPage));
}

// A PagedImage is not thread-safe (the driver serialises the calls on each
// file), but the files a process has open are used from threads of their
// own. Several images over one generation's bytes, each read, written and
// assembled on its own thread, share nothing but the base bytes (read only)
// and the process's recycled image buffers, which pass between the threads
// as each drops an assembled image and another assembles the next: every
// read and every assembled image still holds exactly that file's contents.
TEST(PagedImageTest, ImagesOnSeparateThreadsStayIndependent) {
  constexpr int kThreads = 4;
  constexpr int kRounds = 3;
  // Above the recycler's threshold (1 MiB), so that assembled images are
  // kept when dropped and taken again by the next Assemble of about the
  // same size, on whichever thread.
  const std::string base = Pattern(300 * kPage + 55, 19);
  std::atomic<int> wrong{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([t, &base, &wrong] {
      auto reader = std::make_unique<MemoryReader>(base, 7);
      auto image = PagedImage::Open(std::move(reader), Options(16, 4));
      std::string model = base;
      std::mt19937_64 rng(100 + t);
      for (int round = 0; round < kRounds; ++round) {
        for (int i = 0; i < 40; ++i) {
          const uint64_t offset = rng() % model.size();
          if (rng() % 3 == 0) {
            const std::string data = Pattern(rng() % (2 * kPage) + 1, i);
            const size_t n =
                std::min<uint64_t>(data.size(), model.size() - offset);
            model.replace(offset, n, data.substr(0, n));
            image->Write(offset, data.data(), n);
          } else {
            const size_t length =
                std::min<uint64_t>(rng() % (3 * kPage), model.size() - offset);
            std::string out(length, '?');
            if (!image->Read(offset, out.data(), length).ok() ||
                out != model.substr(offset, length)) {
              ++wrong;
            }
          }
        }
        absl::StatusOr<ImageBuffer> whole = image->Assemble();
        if (!whole.ok() ||
            std::string_view(static_cast<const char*>(whole->data()),
                             whole->size()) != model) {
          ++wrong;
        }
      }
    });
  }
  for (std::thread& thread : threads) thread.join();
  EXPECT_EQ(wrong.load(), 0);
}

TEST(PagedImageTest, BaseErrorsKeepTheirCodeAndSayWhichBytes) {
  Fixture f(Pattern(8 * kPage, 16), Options(8, 0));
  f.reader_->FailWith(absl::UnavailableError("connection reset"));
  std::string out(100, '\0');
  absl::Status status = f.image->Read(kPage, out.data(), out.size());
  EXPECT_EQ(status.code(), absl::StatusCode::kUnavailable);
  EXPECT_THAT(status.message(), HasSubstr("connection reset"));
  EXPECT_THAT(status.message(), HasSubstr("[4096, 8192)"));
  EXPECT_THAT(status.message(), HasSubstr("generation 7"));
}

TEST(PagedImageTest, ABaseShorterThanItClaimsIsDataLoss) {
  auto reader = std::make_unique<MemoryReader>(Pattern(2 * kPage, 17), 7);
  reader->ClaimSize(4 * kPage);
  auto image = PagedImage::Open(std::move(reader), Options(8, 0));
  std::string out(kPage, '\0');
  EXPECT_EQ(image->Read(3 * kPage, out.data(), out.size()).code(),
            absl::StatusCode::kDataLoss);
}

}  // namespace
}  // namespace h5depot::vfd
