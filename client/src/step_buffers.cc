#include <fcntl.h>
#include <poll.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "client/src/step_buffers_internal.h"
#include "h5depot/internal/fork_generation.h"

namespace h5depot::internal {
namespace {

// A buffer's size for a step of `size` bytes: rounded up to an eighth of
// its power of two (and to whole pages), so that steps of nearly the same
// size share buffers, wasting at most an eighth.
uint64_t CapacityFor(uint64_t size) {
  uint64_t power = 1;
  while (power < size) power <<= 1;
  const uint64_t grain = std::max<uint64_t>(power / 8, 4096);
  return (size + grain - 1) / grain * grain;
}

// Whether the pipe's read end `fd` reads end-of-file: every write end is
// closed (nothing is ever written to it).
bool AtEndOfFile(int fd) {
  pollfd poll_fd{fd, POLLIN, 0};
  if (::poll(&poll_fd, 1, 0) <= 0) return false;
  if ((poll_fd.revents & (POLLHUP | POLLERR | POLLNVAL)) != 0) return true;
  char byte;
  return ::read(fd, &byte, 1) == 0;
}

}  // namespace

bool StepBufferPool::Released(StepBufferSlot& slot) {
  auto& holders = slot.holders;
  holders.erase(
      std::remove_if(holders.begin(), holders.end(),
                     [](const UniqueFd& fd) { return AtEndOfFile(fd.get()); }),
      holders.end());
  return holders.empty();
}

void StepBufferPool::ForgetAfterFork() {
  const uint64_t generation = ForkGeneration();
  if (generation == fork_generation_) return;
  fork_generation_ = generation;
  slots_.clear();
}

absl::StatusOr<std::shared_ptr<StepBufferSlot>> StepBufferPool::Lend(
    uint64_t size, absl::Time deadline) {
  const uint64_t capacity = CapacityFor(size);
  for (;;) {
    std::vector<UniqueFd> waited_on;
    {
      MutexLock lock(&mutex_);
      ForgetAfterFork();
      // The smallest free buffer that fits; free ones too small are
      // dropped if a new buffer is to be made.
      std::shared_ptr<StepBufferSlot> best;
      std::vector<size_t> too_small;
      for (size_t i = 0; i < slots_.size(); ++i) {
        StepBufferSlot& slot = *slots_[i];
        if (slot.lent.load() || !Released(slot)) continue;
        if (slot.capacity < size) {
          too_small.push_back(i);
        } else if (best == nullptr || slot.capacity < best->capacity) {
          best = slots_[i];
        }
      }
      if (best != nullptr) {
        best->lent.store(true);
        return best;
      }
      for (auto i = too_small.rbegin(); i != too_small.rend(); ++i) {
        slots_.erase(slots_.begin() + static_cast<std::ptrdiff_t>(*i));
      }
      if (slots_.size() < kMaxStepBuffers) {
        auto slot = std::make_shared<StepBufferSlot>();
        absl::StatusOr<UniqueFd> memfd =
            CreateMemfd("h5depot-step-buffer", capacity);
        if (!memfd.ok()) return memfd.status();
        if (absl::Status sealed = AddSeals(memfd->get(), kSealsOfStepBuffer);
            !sealed.ok()) {
          return sealed;
        }
        absl::StatusOr<Mapping> mapping =
            Mapping::Map(memfd->get(), capacity, Mapping::Access::kReadWrite);
        if (!mapping.ok()) return mapping.status();
        slot->memfd = *std::move(memfd);
        slot->mapping = *std::move(mapping);
        slot->capacity = capacity;
        slot->lent.store(true);
        slots_.push_back(slot);
        return slot;
      }
      // Every buffer is held: wait for a release, on copies of the read
      // ends (another thread may drop the originals meanwhile).
      for (const auto& slot : slots_) {
        if (slot->lent.load()) continue;
        for (const UniqueFd& holder : slot->holders) {
          UniqueFd copy(fcntl(holder.get(), F_DUPFD_CLOEXEC, 0));
          if (copy) waited_on.push_back(std::move(copy));
        }
      }
    }
    const absl::Duration left = deadline - absl::Now();
    if (left <= absl::ZeroDuration()) {
      return absl::DeadlineExceededError(absl::StrCat(
          "all ", kMaxStepBuffers,
          " step buffers are still held by the server or its readers"));
    }
    if (waited_on.empty()) {
      // Every buffer is lent to a step being built: nothing to wait on
      // here but the other writers' commits.
      return absl::ResourceExhaustedError(
          absl::StrCat("all ", kMaxStepBuffers,
                       " step buffers are lent to steps not yet "
                       "committed"));
    }
    std::vector<pollfd> polled;
    for (const UniqueFd& fd : waited_on)
      polled.push_back({fd.get(), POLLIN, 0});
    const int timeout_ms = static_cast<int>(
        std::min<int64_t>(absl::ToInt64Milliseconds(left) + 1, 60'000));
    if (::poll(polled.data(), polled.size(), timeout_ms) < 0 &&
        errno != EINTR) {
      return absl::InternalError(absl::StrCat("poll: ", std::strerror(errno)));
    }
  }
}

absl::StatusOr<UniqueFd> StepBufferPool::NewHolder(StepBufferSlot& slot) {
  int ends[2];
  if (::pipe2(ends, O_CLOEXEC) != 0) {
    return absl::ResourceExhaustedError(
        absl::StrCat("pipe: ", std::strerror(errno)));
  }
  MutexLock lock(&mutex_);
  slot.holders.emplace_back(ends[0]);
  return UniqueFd(ends[1]);
}

void StepBufferPool::Trim() {
  MutexLock lock(&mutex_);
  ForgetAfterFork();
  std::vector<std::shared_ptr<StepBufferSlot>> kept;
  for (std::shared_ptr<StepBufferSlot>& slot : slots_) {
    if (slot->lent.load() || !Released(*slot)) kept.push_back(std::move(slot));
  }
  slots_ = std::move(kept);
}

size_t StepBufferPool::size() const {
  MutexLock lock(&mutex_);
  return slots_.size();
}

absl::StatusOr<std::shared_ptr<const Mapping>> StepBufferMappings::Map(
    int memfd, uint64_t length) {
  struct stat st;
  if (fstat(memfd, &st) != 0) {
    return absl::InternalError(absl::StrCat("fstat: ", std::strerror(errno)));
  }
  const auto device = static_cast<uint64_t>(st.st_dev);
  const auto inode = static_cast<uint64_t>(st.st_ino);
  // A kept mapping holds its file open, so no other file has its inode.
  {
    MutexLock lock(&mutex_);
    for (size_t i = 0; i < kept_.size(); ++i) {
      if (kept_[i].device != device || kept_[i].inode != inode) continue;
      Kept found = std::move(kept_[i]);
      kept_.erase(kept_.begin() + static_cast<std::ptrdiff_t>(i));
      std::shared_ptr<const Mapping> mapping = found.mapping;
      kept_.push_back(std::move(found));
      if (mapping->length() >= length) return mapping;
      break;  // cannot be: the buffer is sealed against growing
    }
  }
  absl::StatusOr<Mapping> made =
      Mapping::Map(memfd, length, Mapping::Access::kReadOnly);
  if (!made.ok()) return made.status();
  auto mapping = std::make_shared<const Mapping>(*std::move(made));
  std::shared_ptr<const Mapping> dropped;  // unmapped outside the lock
  MutexLock lock(&mutex_);
  if (kept_.size() >= kMaxCachedStepBuffers) {
    dropped = std::move(kept_.front().mapping);
    kept_.erase(kept_.begin());
  }
  kept_.push_back(Kept{device, inode, mapping});
  return mapping;
}

}  // namespace h5depot::internal
