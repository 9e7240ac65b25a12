// PageCache: a fixed number of equally sized pages of one image, evicted
// least recently used first. Plain C++, no HDF5 and no network: the remote
// driver owns one per open file and fills it from the server.
#ifndef H5DEPOT_VFD_PAGE_CACHE_H_
#define H5DEPOT_VFD_PAGE_CACHE_H_

#include <cstddef>
#include <cstdint>
#include <list>
#include <memory>

#include "absl/container/flat_hash_map.h"

namespace h5depot::vfd {

// A page's bytes: page_size of them, owned by whoever holds the pointer.
using PageBuffer = std::unique_ptr<char[]>;

class PageCache {
 public:
  // Holds at most `capacity_pages` (at least 1) pages of `page_size` bytes.
  PageCache(size_t page_size, size_t capacity_pages);

  PageCache(const PageCache&) = delete;
  PageCache& operator=(const PageCache&) = delete;

  size_t page_size() const { return page_size_; }
  size_t capacity_pages() const { return capacity_pages_; }
  size_t size() const { return index_.size(); }

  // The bytes of page `page`, which becomes the most recently used; null if
  // the page is not cached. Valid until the next non-const call.
  const char* Find(uint64_t page);

  // Whether page `page` is cached, without touching the eviction order.
  bool Contains(uint64_t page) const { return index_.contains(page); }

  // Like Find, without touching the eviction order.
  const char* Peek(uint64_t page) const;

  // Stores `bytes` (page_size of them) as page `page`, the most recently
  // used, replacing any cached copy and evicting the least recently used
  // pages beyond capacity.
  void Insert(uint64_t page, PageBuffer bytes);

  // Removes page `page` and hands its bytes to the caller; null if absent.
  PageBuffer Take(uint64_t page);

  // Drops page `page` if cached.
  void Erase(uint64_t page);

  // Drops every page numbered `first` or higher.
  void EraseFrom(uint64_t first);

 private:
  struct Entry {
    uint64_t page;
    PageBuffer bytes;
  };
  using Lru = std::list<Entry>;  // front: most recently used

  const size_t page_size_;
  const size_t capacity_pages_;
  Lru lru_;
  absl::flat_hash_map<uint64_t, Lru::iterator> index_;
};

}  // namespace h5depot::vfd

#endif  // H5DEPOT_VFD_PAGE_CACHE_H_
