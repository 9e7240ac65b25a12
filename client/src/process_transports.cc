#include <string>
#include <utility>

#include "absl/strings/str_cat.h"
#include "client/src/process_transports_internal.h"
#include "h5depot/internal/fork_generation.h"
#include "h5depot/internal/mutex.h"
#include "h5depot/rpc/grpc_runtime.h"

namespace h5depot::internal {
namespace {

// Keeps `object`, which a child of fork() inherited from its parent,
// reachable and alive for good: the child must neither use it nor destroy
// it, and a leak checker would otherwise report it. Lock-free, so that no
// lock the parent's threads may have held is needed.
void Abandon(const void* object) {
  struct Node {
    const Node* next;
    const void* object;
  };
  static std::atomic<const Node*> abandoned{nullptr};
  auto* node = new Node{abandoned.load(std::memory_order_relaxed), object};
  while (!abandoned.compare_exchange_weak(
      node->next, node, std::memory_order_release, std::memory_order_relaxed)) {
  }
}

class ProcessReader final : public ImageReader {
 public:
  explicit ProcessReader(std::unique_ptr<ImageReader> reader)
      : fork_generation_(ForkGeneration()), reader_(std::move(reader)) {}

  ~ProcessReader() override {
    if (!InItsProcess()) {
      Abandon(reader_.release());
      return;
    }
    const GrpcUse grpc_use;
    reader_.reset();
  }

  const ImageInfo& info() const override { return reader_->info(); }

  absl::StatusOr<size_t> Read(uint64_t offset, void* out,
                              size_t length) override {
    if (!InItsProcess()) return OpenedByParent();
    return reader_->Read(offset, out, length);
  }

  absl::StatusOr<size_t> ReadWithDeadline(uint64_t offset, void* out,
                                          size_t length,
                                          absl::Time deadline) override {
    if (!InItsProcess()) return OpenedByParent();
    return reader_->ReadWithDeadline(offset, out, length, deadline);
  }

 private:
  bool InItsProcess() const { return ForkGeneration() == fork_generation_; }

  absl::Status OpenedByParent() const {
    return absl::FailedPreconditionError(
        absl::StrCat("read '", reader_->info().image_id,
                     "': the reader was opened by the parent of this "
                     "process, before fork(); open another one here"));
  }

  const uint64_t fork_generation_;
  std::unique_ptr<ImageReader> reader_;
};

}  // namespace

// The transports of the process at one fork generation. Its mutex is only
// ever taken in that process: a child never waits on a lock its parent's
// threads may have held at the fork.
struct PerProcessTransports::Slot {
  explicit Slot(uint64_t generation) : fork_generation(generation) {}
  ~Slot() { delete made.load(); }

  const uint64_t fork_generation;
  Mutex mutex;                             // held while `made` is made
  std::atomic<Transports*> made{nullptr};  // owned; set once
};

PerProcessTransports::PerProcessTransports(std::unique_ptr<Transports> made,
                                           Connect connect)
    : connect_(std::move(connect)), slot_(new Slot(ForkGeneration())) {
  slot_.load()->made.store(made.release());
}

PerProcessTransports::~PerProcessTransports() {
  Slot* slot = slot_.load(std::memory_order_acquire);
  if (slot->fork_generation != ForkGeneration()) {
    Abandon(slot);
    return;
  }
  const GrpcUse grpc_use;
  delete slot;
}

absl::StatusOr<Transports*> PerProcessTransports::ForThisProcess() {
  const uint64_t fork_generation = ForkGeneration();
  Slot* slot = slot_.load(std::memory_order_acquire);
  if (slot->fork_generation != fork_generation) {
    slot = SlotOfThisProcess(slot, fork_generation);
  } else if (Transports* made = slot->made.load(std::memory_order_acquire)) {
    return made;
  }
  MutexLock lock(&slot->mutex);
  if (Transports* made = slot->made.load(std::memory_order_acquire)) {
    return made;
  }
  absl::StatusOr<std::unique_ptr<Transports>> made = connect_();
  if (!made.ok()) return made.status();
  slot->made.store(made->get(), std::memory_order_release);
  return made->release();
}

// Replaces `inherited`, a slot of an earlier generation, with one for this
// process, unless another thread of this process did already.
PerProcessTransports::Slot* PerProcessTransports::SlotOfThisProcess(
    Slot* inherited, uint64_t fork_generation) {
  auto fresh = std::make_unique<Slot>(fork_generation);
  Slot* seen = inherited;
  while (!slot_.compare_exchange_weak(seen, fresh.get(),
                                      std::memory_order_acq_rel,
                                      std::memory_order_acquire)) {
    if (seen->fork_generation == fork_generation) return seen;
  }
  Abandon(seen);
  return fresh.release();
}

std::unique_ptr<ImageReader> BindReaderToThisProcess(
    std::unique_ptr<ImageReader> reader) {
  return std::make_unique<ProcessReader>(std::move(reader));
}

}  // namespace h5depot::internal
