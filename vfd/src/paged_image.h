// PagedImage: the bytes of one file opened through the remote driver.
//
// The file's contents are a base -- one pinned generation of an image on the
// server, read lazily through an ImageReader -- overlaid with local pages
// that this process wrote and has not committed yet. Writing never waits
// for the server: a page partly overwritten before any of it was fetched
// keeps just the written bytes until a read needs the rest. Clean base pages
// are kept in a PageCache; a miss fetches the missing pages of the request in
// as few reads as there are gaps between cached pages, plus readahead. Reads
// of four pages or more take what is cached and read the rest straight from
// the server into the caller's buffer, without readahead and without passing
// through the cache.
//
// Knows nothing of HDF5 or of how the base is reached, so that it can be
// tested alone. Not thread-safe: the owner serialises calls.
#ifndef H5DEPOT_VFD_PAGED_IMAGE_H_
#define H5DEPOT_VFD_PAGED_IMAGE_H_

#include <cstddef>
#include <cstdint>
#include <map>
#include <memory>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "h5depot/client.h"
#include "h5depot/image_buffer.h"
#include "vfd/src/page_cache.h"

namespace h5depot::vfd {

struct PagedImageOptions {
  // A power of two.
  size_t page_size = size_t{64} << 10;
  // Clean pages kept; rounded down to whole pages, at least one.
  size_t cache_bytes = size_t{64} << 20;
  // Bytes fetched past a miss; doubles while misses are sequential, up to
  // max(readahead_bytes, cache_bytes / 4). 0: none.
  size_t readahead_bytes = size_t{64} << 10;
};

struct PagedImageStats {
  uint64_t base_reads = 0;     // Read calls on a base reader
  uint64_t bytes_fetched = 0;  // bytes those calls returned
  uint64_t page_hits = 0;      // base pages found in the cache by Read
  uint64_t page_misses = 0;    // base pages Read had to fetch
};

class PagedImage {
 public:
  // An image whose contents start as what `base` reads (its whole
  // info().size bytes).
  static std::unique_ptr<PagedImage> Open(std::unique_ptr<ImageReader> base,
                                          const PagedImageOptions& options);

  // An empty image with no base: every byte written lives locally.
  static std::unique_ptr<PagedImage> CreateEmpty(
      const PagedImageOptions& options);

  PagedImage(const PagedImage&) = delete;
  PagedImage& operator=(const PagedImage&) = delete;

  // The logical size (the driver's end of file).
  uint64_t size() const { return size_; }

  // Whether anything was written or resized since creation or the last
  // Rebase.
  bool modified() const { return modified_; }

  // Copies `length` bytes at `offset` into `out`; bytes at or past size()
  // read as zeros. Errors are the base reader's (UNAVAILABLE,
  // DEADLINE_EXCEEDED, ...) or DATA_LOSS if the base is shorter than it
  // said; `out` is then partly written.
  absl::Status Read(uint64_t offset, void* out, size_t length);

  // Stores `length` bytes at `offset` in local pages, growing size() if the
  // range ends past it. Never reads the base, so it succeeds whatever the
  // server does (HDF5 flushes its metadata cache through writes, and a
  // write failing halfway through that flush leaves the file unclosable).
  // Rewriting bytes with what they already hold (HDF5 rewrites the
  // superblock of every file opened read-write) changes nothing, as long as
  // those bytes are at hand without a round trip.
  void Write(uint64_t offset, const void* data, size_t length);

  // Sets size() to `size`. Shrinking discards what lies past the new end;
  // growing again later reads zeros there.
  void Resize(uint64_t size);

  // The whole image, size() bytes, in one new buffer: local pages plus the
  // base between them (read in one request per gap).
  absl::StatusOr<ImageBuffer> Assemble();

  // Called after the contents were committed. With `committed` (a reader of
  // the new generation), local pages become clean cached pages of that new
  // base; without (it could not be opened), the old base and local pages
  // stay as they are. Either way modified() becomes false.
  void Rebase(std::unique_ptr<ImageReader> committed);

  const PagedImageStats& stats() const { return stats_; }

  // The generation of the base, 0 if there is none.
  uint64_t base_generation() const;

 private:
  PagedImage(std::unique_ptr<ImageReader> base,
             const PagedImageOptions& options);

  uint64_t PageStart(uint64_t page) const { return page * page_size_; }

  // Reads exactly `length` base bytes at `offset`.
  absl::Status ReadBase(uint64_t offset, char* out, size_t length);

  // Serves [lo, hi) (all below base_limit_, pages first..last all missing
  // from the cache) into `out`, fetching through the cache with readahead,
  // or, if `direct`, straight into `out`.
  absl::Status FetchMissing(uint64_t first, uint64_t last, uint64_t lo,
                            uint64_t hi, char* out, bool direct);

  // Whether [offset, offset + length) certainly holds `data` already,
  // judged from local and cached pages only.
  bool AlreadyHolds(uint64_t offset, const char* data, size_t length) const;

  // A page this process wrote. Whole: `bytes` hold the page's current
  // contents. Partial: only the byte ranges in `written` do; the rest is
  // still the base's and has not been fetched.
  struct LocalPage {
    PageBuffer bytes;
    bool whole = false;
    // Disjoint, non-touching [begin, end) offsets within the page, keyed by
    // begin. Empty when whole.
    std::map<size_t, size_t> written;
  };

  // Starts local page `page`, about to have [lo, hi) of it (offsets within
  // the page) overwritten, from what is at hand without a round trip.
  LocalPage StartLocal(uint64_t page, size_t lo, size_t hi);

  // Records that [lo, hi) of partial page `local` now hold its contents.
  void AddWritten(LocalPage& local, size_t lo, size_t hi) const;

  // Whether [lo, hi) of `local` hold the page's current contents.
  static bool Holds(const LocalPage& local, size_t lo, size_t hi);

  // Makes partial page `page` whole by reading the rest from the base.
  absl::Status FillFromBase(uint64_t page, LocalPage& local);

  PageBuffer NewPage() const { return PageBuffer(new char[page_size_]); }

  const size_t page_size_;
  const size_t initial_readahead_;
  const size_t max_readahead_;
  const size_t direct_read_bytes_;     // reads this large bypass the cache
  std::unique_ptr<ImageReader> base_;  // null: no base
  // Base bytes at or past this offset are not part of the image any more
  // (the image was shrunk) and read as zeros. Never above size_.
  uint64_t base_limit_ = 0;
  uint64_t size_ = 0;
  bool modified_ = false;
  PageCache cache_;
  std::map<uint64_t, LocalPage> local_;
  // Sequential-miss detection for readahead.
  uint64_t next_sequential_ = 0;
  size_t readahead_ = 0;
  std::vector<char> scratch_;
  PagedImageStats stats_;
};

}  // namespace h5depot::vfd

#endif  // H5DEPOT_VFD_PAGED_IMAGE_H_
