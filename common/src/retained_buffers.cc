#include "h5depot/internal/retained_buffers.h"

#include <algorithm>
#include <utility>

namespace h5depot::internal {

RetainedBuffers::Released::Released(Released&& other) noexcept
    : release_(other.release_), buffers_(std::move(other.buffers_)) {
  other.buffers_.clear();
}

RetainedBuffers::Released& RetainedBuffers::Released::operator=(
    Released&& other) noexcept {
  if (this != &other) {
    FreeAll();
    release_ = other.release_;
    buffers_ = std::move(other.buffers_);
    other.buffers_.clear();
  }
  return *this;
}

RetainedBuffers::Released::~Released() { FreeAll(); }

void RetainedBuffers::Released::FreeAll() {
  for (const Buffer& buffer : buffers_) release_(buffer);
  buffers_.clear();
}

RetainedBuffers::RetainedBuffers(Options options) : options_(options) {}

RetainedBuffers::~RetainedBuffers() { Released all = TakeAll(); }

RetainedBuffers::Released RetainedBuffers::Keep(Buffer buffer, absl::Time now) {
  Released released = NewReleased();
  if (buffer.capacity > options_.max_bytes || options_.max_buffers == 0) {
    released.buffers_.push_back(buffer);
    return released;
  }
  // The oldest go first: the ones kept longest are the least likely to be
  // asked for again.
  size_t given_up = 0;
  while (retained_.size() - given_up >= options_.max_buffers ||
         bytes_ > options_.max_bytes - buffer.capacity) {
    bytes_ -= retained_[given_up].buffer.capacity;
    released.buffers_.push_back(retained_[given_up].buffer);
    ++given_up;
  }
  retained_.erase(retained_.begin(), retained_.begin() + given_up);
  retained_.push_back({buffer, now + options_.retain_for});
  bytes_ += buffer.capacity;
  return released;
}

RetainedBuffers::Taken RetainedBuffers::Take(uint64_t size) {
  // The smallest that holds `size` without wasting over a quarter of it.
  auto best = retained_.end();
  for (auto it = retained_.begin(); it != retained_.end(); ++it) {
    const uint64_t capacity = it->buffer.capacity;
    if (capacity >= size && capacity - size <= size / 4 &&
        (best == retained_.end() || capacity < best->buffer.capacity)) {
      best = it;
    }
  }
  Taken taken;
  if (best == retained_.end()) {
    taken.unfit = TakeAll();
    return taken;
  }
  taken.buffer = best->buffer;
  bytes_ -= best->buffer.capacity;
  retained_.erase(best);
  return taken;
}

RetainedBuffers::Released RetainedBuffers::TakeDue(absl::Time now) {
  Released released = NewReleased();
  // Each caller reads its own clock: due ones need not come first.
  auto it = retained_.begin();
  while (it != retained_.end()) {
    if (it->due <= now) {
      bytes_ -= it->buffer.capacity;
      released.buffers_.push_back(it->buffer);
      it = retained_.erase(it);
    } else {
      ++it;
    }
  }
  return released;
}

RetainedBuffers::Released RetainedBuffers::TakeAll() {
  Released released = NewReleased();
  for (const Retained& kept : retained_)
    released.buffers_.push_back(kept.buffer);
  retained_.clear();
  bytes_ = 0;
  return released;
}

absl::Time RetainedBuffers::next_due() const {
  absl::Time next = absl::InfiniteFuture();
  for (const Retained& kept : retained_) next = std::min(next, kept.due);
  return next;
}

RetainedBuffers::Released RetainedBuffers::NewReleased() const {
  Released released;
  released.release_ = options_.release;
  return released;
}

}  // namespace h5depot::internal
