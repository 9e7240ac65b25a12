#include "vfd/src/page_cache.h"

#include <algorithm>
#include <utility>

namespace h5depot::vfd {

PageCache::PageCache(size_t page_size, size_t capacity_pages)
    : page_size_(page_size),
      capacity_pages_(std::max<size_t>(capacity_pages, 1)) {}

const char* PageCache::Find(uint64_t page) {
  auto it = index_.find(page);
  if (it == index_.end()) return nullptr;
  lru_.splice(lru_.begin(), lru_, it->second);
  return it->second->bytes.get();
}

const char* PageCache::Peek(uint64_t page) const {
  auto it = index_.find(page);
  return it == index_.end() ? nullptr : it->second->bytes.get();
}

void PageCache::Insert(uint64_t page, PageBuffer bytes) {
  auto it = index_.find(page);
  if (it != index_.end()) {
    it->second->bytes = std::move(bytes);
    lru_.splice(lru_.begin(), lru_, it->second);
    return;
  }
  lru_.push_front(Entry{page, std::move(bytes)});
  index_.emplace(page, lru_.begin());
  while (index_.size() > capacity_pages_) {
    index_.erase(lru_.back().page);
    lru_.pop_back();
  }
}

PageBuffer PageCache::Take(uint64_t page) {
  auto it = index_.find(page);
  if (it == index_.end()) return nullptr;
  PageBuffer bytes = std::move(it->second->bytes);
  lru_.erase(it->second);
  index_.erase(it);
  return bytes;
}

void PageCache::Erase(uint64_t page) { Take(page); }

void PageCache::EraseFrom(uint64_t first) {
  for (auto it = lru_.begin(); it != lru_.end();) {
    if (it->page >= first) {
      index_.erase(it->page);
      it = lru_.erase(it);
    } else {
      ++it;
    }
  }
}

}  // namespace h5depot::vfd
