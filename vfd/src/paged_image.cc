#include "vfd/src/paged_image.h"

#include <algorithm>
#include <cstring>
#include <utility>

#include "absl/strings/str_cat.h"

namespace h5depot::vfd {

std::unique_ptr<PagedImage> PagedImage::Open(std::unique_ptr<ImageReader> base,
                                             const PagedImageOptions& options) {
  return std::unique_ptr<PagedImage>(new PagedImage(std::move(base), options));
}

std::unique_ptr<PagedImage> PagedImage::CreateEmpty(
    const PagedImageOptions& options) {
  return std::unique_ptr<PagedImage>(new PagedImage(nullptr, options));
}

PagedImage::PagedImage(std::unique_ptr<ImageReader> base,
                       const PagedImageOptions& options)
    : page_size_(options.page_size),
      initial_readahead_(options.readahead_bytes),
      max_readahead_(
          options.readahead_bytes == 0
              ? 0
              : std::max(options.readahead_bytes, options.cache_bytes / 4)),
      direct_read_bytes_(4 * options.page_size),
      base_(std::move(base)),
      cache_(options.page_size, options.cache_bytes / options.page_size),
      readahead_(options.readahead_bytes) {
  if (base_ != nullptr) {
    size_ = base_->info().size;
    base_limit_ = size_;
  }
}

uint64_t PagedImage::base_generation() const {
  return base_ == nullptr ? 0 : base_->info().generation;
}

absl::Status PagedImage::ReadBase(uint64_t offset, char* out, size_t length) {
  ++stats_.base_reads;
  absl::StatusOr<size_t> got = base_->Read(offset, out, length);
  if (!got.ok()) {
    return absl::Status(
        got.status().code(),
        absl::StrCat("reading bytes [", offset, ", ", offset + length,
                     ") of generation ", base_->info().generation, ": ",
                     got.status().message()));
  }
  stats_.bytes_fetched += *got;
  if (*got != length) {
    return absl::DataLossError(
        absl::StrCat("generation ", base_->info().generation, " returned ",
                     *got, " of ", length, " bytes at offset ", offset,
                     " although its size is ", base_->info().size));
  }
  return absl::OkStatus();
}

absl::Status PagedImage::Read(uint64_t offset, void* out, size_t length) {
  char* const dst = static_cast<char*>(out);
  const uint64_t end = offset + length;
  const uint64_t data_end = std::min(end, size_);
  if (data_end < end) {
    const uint64_t zeros_from = std::max(offset, data_end);
    std::memset(dst + (zeros_from - offset), 0, end - zeros_from);
  }
  if (offset >= data_end) return absl::OkStatus();

  // First pass: serve what is local, cached or past the base; collect the
  // missing base pages as runs of consecutive pages.
  struct Run {
    uint64_t first, last;
  };
  std::vector<Run> runs;
  for (uint64_t page = offset / page_size_; PageStart(page) < data_end;
       ++page) {
    const uint64_t lo = std::max(offset, PageStart(page));
    const uint64_t hi = std::min(data_end, PageStart(page + 1));
    char* const d = dst + (lo - offset);
    if (auto it = local_.find(page); it != local_.end()) {
      LocalPage& local = it->second;
      const size_t at = lo - PageStart(page);
      if (!Holds(local, at, at + (hi - lo))) {
        absl::Status status = FillFromBase(page, local);
        if (!status.ok()) return status;
      }
      std::memcpy(d, local.bytes.get() + at, hi - lo);
      continue;
    }
    if (lo >= base_limit_) {
      std::memset(d, 0, hi - lo);
      continue;
    }
    const uint64_t base_hi = std::min(hi, base_limit_);
    if (base_hi < hi) std::memset(d + (base_hi - lo), 0, hi - base_hi);
    if (const char* cached = cache_.Find(page)) {
      ++stats_.page_hits;
      std::memcpy(d, cached + (lo - PageStart(page)), base_hi - lo);
      continue;
    }
    ++stats_.page_misses;
    if (!runs.empty() && runs.back().last + 1 == page) {
      runs.back().last = page;
    } else {
      runs.push_back(Run{page, page});
    }
  }

  for (const Run& run : runs) {
    const uint64_t lo = std::max(offset, PageStart(run.first));
    const uint64_t hi =
        std::min({data_end, base_limit_, PageStart(run.last + 1)});
    absl::Status status =
        FetchMissing(run.first, run.last, lo, hi, dst + (lo - offset),
                     /*direct=*/length >= direct_read_bytes_);
    if (!status.ok()) return status;
  }
  return absl::OkStatus();
}

absl::Status PagedImage::FetchMissing(uint64_t first, uint64_t last,
                                      uint64_t lo, uint64_t hi, char* out,
                                      bool direct) {
  // Readahead grows while misses continue where the last fetch ended and
  // falls back to its initial size on a jump.
  if (lo == next_sequential_ && lo != 0) {
    readahead_ = std::min(max_readahead_, std::max<size_t>(readahead_, 1) * 2);
  } else {
    readahead_ = initial_readahead_;
  }

  const uint64_t wanted = hi - lo;
  if (direct) {
    // Large reads stream into the caller's buffer: caching them would only
    // evict pages worth keeping, and copying them twice more (into the
    // scratch buffer, then into pages) costs more than the round trip of
    // one more request: a sequential reader of a few pages at a time is
    // served faster by a request per read than by readahead through the
    // cache (docs/PERFORMANCE.md, "The remote driver").
    next_sequential_ = hi;
    return ReadBase(lo, out, wanted);
  }

  uint64_t fetch_last = last;
  const uint64_t readahead_pages = (readahead_ + page_size_ - 1) / page_size_;
  while (fetch_last - last < readahead_pages &&
         PageStart(fetch_last + 1) < base_limit_ &&
         !cache_.Contains(fetch_last + 1) &&
         local_.count(fetch_last + 1) == 0) {
    ++fetch_last;
  }
  const uint64_t fetch_lo = PageStart(first);
  const uint64_t fetch_hi = std::min(PageStart(fetch_last + 1), base_limit_);
  scratch_.resize(fetch_hi - fetch_lo);
  absl::Status status = ReadBase(fetch_lo, scratch_.data(), scratch_.size());
  if (!status.ok()) return status;
  next_sequential_ = fetch_hi;

  std::memcpy(out, scratch_.data() + (lo - fetch_lo), wanted);
  for (uint64_t page = first; page <= fetch_last; ++page) {
    PageBuffer bytes = NewPage();
    const uint64_t from = PageStart(page) - fetch_lo;
    const uint64_t n = std::min<uint64_t>(page_size_, scratch_.size() - from);
    std::memcpy(bytes.get(), scratch_.data() + from, n);
    std::memset(bytes.get() + n, 0, page_size_ - n);
    cache_.Insert(page, std::move(bytes));
  }
  return absl::OkStatus();
}

PagedImage::LocalPage PagedImage::StartLocal(uint64_t page, size_t lo,
                                             size_t hi) {
  LocalPage local;
  local.whole = true;
  const uint64_t start = PageStart(page);
  const size_t base_bytes = std::clamp(base_limit_, start, start + page_size_) -
                            start;        // of this page, still the base's
  PageBuffer cached = cache_.Take(page);  // the local copy shadows it
  if (lo == 0 && hi == page_size_) {
    local.bytes = NewPage();  // all of it is about to be overwritten
  } else if (base_bytes == 0 || cached != nullptr) {
    local.bytes = cached != nullptr ? std::move(cached) : NewPage();
    std::memset(local.bytes.get() + base_bytes, 0, page_size_ - base_bytes);
  } else {
    local.bytes = NewPage();
    local.whole = false;
  }
  return local;
}

void PagedImage::AddWritten(LocalPage& local, size_t lo, size_t hi) const {
  std::map<size_t, size_t>& ranges = local.written;
  auto it = ranges.upper_bound(lo);
  if (it != ranges.begin() && std::prev(it)->second >= lo) --it;
  while (it != ranges.end() && it->first <= hi) {
    lo = std::min(lo, it->first);
    hi = std::max(hi, it->second);
    it = ranges.erase(it);
  }
  if (lo == 0 && hi == page_size_) {
    local.whole = true;  // every byte written: nothing left to fetch
    return;
  }
  ranges.emplace(lo, hi);
}

bool PagedImage::Holds(const LocalPage& local, size_t lo, size_t hi) {
  if (local.whole) return true;
  auto it = local.written.upper_bound(lo);
  return it != local.written.begin() && std::prev(it)->second >= hi;
}

absl::Status PagedImage::FillFromBase(uint64_t page, LocalPage& local) {
  const uint64_t start = PageStart(page);
  const size_t base_bytes =
      std::clamp(base_limit_, start, start + page_size_) - start;
  PageBuffer merged = NewPage();
  if (base_bytes > 0) {
    absl::Status status = ReadBase(start, merged.get(), base_bytes);
    if (!status.ok()) return status;
  }
  std::memset(merged.get() + base_bytes, 0, page_size_ - base_bytes);
  for (const auto& [lo, hi] : local.written) {
    std::memcpy(merged.get() + lo, local.bytes.get() + lo, hi - lo);
  }
  local.bytes = std::move(merged);
  local.written.clear();
  local.whole = true;
  return absl::OkStatus();
}

bool PagedImage::AlreadyHolds(uint64_t offset, const char* data,
                              size_t length) const {
  const uint64_t end = offset + length;
  if (end > size_) return false;
  for (uint64_t page = offset / page_size_; PageStart(page) < end; ++page) {
    const uint64_t lo = std::max(offset, PageStart(page));
    const uint64_t hi = std::min(end, PageStart(page + 1));
    const char* wanted = data + (lo - offset);
    if (auto it = local_.find(page); it != local_.end()) {
      const size_t at = lo - PageStart(page);
      if (!Holds(it->second, at, at + (hi - lo)) ||
          std::memcmp(it->second.bytes.get() + at, wanted, hi - lo) != 0) {
        return false;
      }
      continue;
    }
    // Base bytes below base_limit_ (if cached), zeros above it.
    const uint64_t base_hi = std::clamp(base_limit_, lo, hi);
    if (lo < base_hi) {
      const char* cached = cache_.Peek(page);
      if (cached == nullptr || std::memcmp(cached + (lo - PageStart(page)),
                                           wanted, base_hi - lo) != 0) {
        return false;
      }
    }
    for (uint64_t at = base_hi; at < hi; ++at) {
      if (data[at - offset] != 0) return false;
    }
  }
  return true;
}

void PagedImage::Write(uint64_t offset, const void* data, size_t length) {
  if (length == 0) return;
  const char* src = static_cast<const char*>(data);
  if (AlreadyHolds(offset, src, length)) return;
  const uint64_t end = offset + length;
  for (uint64_t page = offset / page_size_; PageStart(page) < end; ++page) {
    const size_t lo = std::max(offset, PageStart(page)) - PageStart(page);
    const size_t hi = std::min(end, PageStart(page + 1)) - PageStart(page);
    auto [it, added] = local_.try_emplace(page);
    LocalPage& local = it->second;
    if (added) local = StartLocal(page, lo, hi);
    std::memcpy(local.bytes.get() + lo, src + (PageStart(page) + lo - offset),
                hi - lo);
    if (!local.whole) AddWritten(local, lo, hi);
  }
  size_ = std::max(size_, end);
  modified_ = true;
}

void PagedImage::Resize(uint64_t size) {
  if (size == size_) return;
  if (size < size_) {
    const uint64_t boundary = size / page_size_;
    local_.erase(local_.upper_bound(boundary), local_.end());
    if (auto it = local_.find(boundary); it != local_.end()) {
      const size_t keep = size - PageStart(boundary);
      if (keep == 0) {
        local_.erase(it);
      } else {
        // Past the end, the page holds zeros from now on.
        LocalPage& local = it->second;
        std::memset(local.bytes.get() + keep, 0, page_size_ - keep);
        if (!local.whole) AddWritten(local, keep, page_size_);
      }
    }
    base_limit_ = std::min(base_limit_, size);
  }
  size_ = size;
  modified_ = true;
}

absl::StatusOr<ImageBuffer> PagedImage::Assemble() {
  absl::StatusOr<ImageBuffer> buffer = ImageBuffer::Allocate(size_);
  if (!buffer.ok()) return buffer.status();
  char* const image = static_cast<char*>(buffer->data());

  // Fills [from, to) with base bytes where there are any, zeros elsewhere.
  auto fill_gap = [&](uint64_t from, uint64_t to) -> absl::Status {
    const uint64_t base_to = std::min(to, base_limit_);
    if (from < base_to) {
      absl::Status status = ReadBase(from, image + from, base_to - from);
      if (!status.ok()) return status;
    }
    const uint64_t zeros_from = std::max(from, base_to);
    if (zeros_from < to) std::memset(image + zeros_from, 0, to - zeros_from);
    return absl::OkStatus();
  };

  // Whole local pages are copied; the rest, partial pages included, is
  // read from the base in one request per gap, and the bytes written to
  // partial pages then laid over it.
  uint64_t pos = 0;
  for (const auto& [page, local] : local_) {
    const uint64_t lo = PageStart(page);
    if (lo >= size_) break;
    if (!local.whole) continue;
    absl::Status status = fill_gap(pos, lo);
    if (!status.ok()) return status;
    const uint64_t hi = std::min(size_, PageStart(page + 1));
    std::memcpy(image + lo, local.bytes.get(), hi - lo);
    pos = hi;
  }
  absl::Status status = fill_gap(pos, size_);
  if (!status.ok()) return status;
  for (const auto& [page, local] : local_) {
    for (const auto& [lo, hi] : local.written) {
      const uint64_t from = PageStart(page) + lo;
      const uint64_t to = std::min<uint64_t>(size_, PageStart(page) + hi);
      if (from < to)
        std::memcpy(image + from, local.bytes.get() + lo, to - from);
    }
  }
  return buffer;
}

void PagedImage::Rebase(std::unique_ptr<ImageReader> committed) {
  modified_ = false;
  if (committed == nullptr) return;
  // A cached page reaching past the old limit may hold bytes the image no
  // longer has; everything below it is unchanged unless written locally.
  cache_.EraseFrom(base_limit_ / page_size_);
  // Whole local pages become cached pages of the new base; what partial
  // ones lacked is in the new base too.
  for (auto& [page, local] : local_) {
    if (local.whole) cache_.Insert(page, std::move(local.bytes));
  }
  local_.clear();
  base_ = std::move(committed);
  base_limit_ = std::min<uint64_t>(size_, base_->info().size);
}

}  // namespace h5depot::vfd
