#include "h5depot/server/image_store.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <thread>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/notification.h"
#include "h5depot/internal/byte_size.h"
#include "h5depot/internal/checksum.h"
#include "h5depot/internal/hdf5_signature.h"
#include "h5depot/internal/huge_pages.h"
#include "h5depot/internal/image_id.h"
#include "h5depot/internal/retained_buffers.h"
#include "server/src/stream_table_internal.h"

namespace h5depot::server {

namespace {

// Large buffers come straight from the kernel so that freeing an image
// returns its memory at once, whatever the allocator's heuristics.
constexpr uint64_t kMmapThreshold = uint64_t{1} << 20;

// Fresh buffers up to this size are mapped with their pages made at once
// (MapImageBytes).
constexpr uint64_t kPopulateBytes = uint64_t{16} << 20;

// How long a freed large buffer is kept for reuse, and how many at most.
constexpr absl::Duration kRetainFor = absl::Seconds(1);
constexpr size_t kMaxRetained = 4;

// A large image's buffer: a memfd sealed for sharing (kSealsFromServer),
// mapped writable for the push to receive into, so that clients on this
// host can later be handed its descriptor; anonymous memory (`*memfd` -1)
// if no memfd can be made (out of descriptors, say). Null if memory is
// short.
//
// A memfd's pages are allocated, zeroed, in one call before it is mapped,
// rather than faulted in a page at a time by the push's writes: a fresh
// buffer fills about a tenth faster that way (docs/PERFORMANCE.md, "Fresh
// memory on the server"), and a machine short of memory says so here, as
// an error for the push, rather than with a SIGBUS half way through it.
// Up to kPopulateBytes the mapping's pages are made in the mmap call too,
// which fills such a buffer up to twice as fast; larger ones are left to
// fault in, so that a large push's first bytes do not wait for all its
// pages (and where that was measured, populating was no faster).
uint8_t* MapImageBytes(uint64_t size, int* memfd) {
  *memfd = -1;
  absl::StatusOr<internal::UniqueFd> file =
      internal::CreateMemfd("h5depot-image", size);
  if (file.ok() &&
      fallocate(file->get(), 0, 0, static_cast<off_t>(size)) != 0) {
    if (errno == ENOSPC || errno == ENOMEM) return nullptr;
    // Anything else (a kernel that cannot): the writes fault them in.
  }
  if (file.ok()) {
    // Mapped before sealing: the seals stop every later writable mapping
    // and write(2), this one keeps working.
    absl::StatusOr<internal::Mapping> mapping = internal::Mapping::Map(
        file->get(), size, internal::Mapping::Access::kReadWrite,
        size <= kPopulateBytes ? internal::Mapping::Pages::kAtOnce
                               : internal::Mapping::Pages::kOnFirstTouch);
    if (mapping.ok() &&
        internal::AddSeals(file->get(), internal::kSealsFromServer).ok()) {
      *memfd = file->Release();
      return static_cast<uint8_t*>(mapping->Release());
    }
  }
  void* p = mmap(nullptr, size, PROT_READ | PROT_WRITE,
                 MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (p == MAP_FAILED) return nullptr;
  internal::AdviseHugePages(p, size);
  return static_cast<uint8_t*>(p);
}

void UnmapImageBytes(const internal::RetainedBuffers::Buffer& buffer) {
  munmap(buffer.data, buffer.capacity);
  if (buffer.memfd >= 0) close(buffer.memfd);
}

absl::Status NotHdf5Error(const std::string& image_id) {
  return absl::InvalidArgumentError(absl::StrCat(
      "'", image_id,
      "' is not an HDF5 file image: no HDF5 signature at offset 0, 512, "
      "1024, ... (start the server with --allow-non-hdf5 to store any "
      "bytes)"));
}

internal::RetainedBuffers::Options RetentionOptions() {
  internal::RetainedBuffers::Options options;
  options.retain_for = kRetainFor;
  options.max_buffers = kMaxRetained;
  options.release = UnmapImageBytes;
  return options;
}

}  // namespace

// Counts every byte of image data the store is responsible for, against one
// limit, and hands out and takes back the buffers that hold it. Shared with
// each image so that a buffer still pinned by a reader keeps counting until
// it is actually freed.
//
// Large buffers just freed are retained for a moment (kRetainFor) instead of
// going back to the system at once: the next push of about the same size,
// as when a producer replaces its image, reuses one whose pages are already
// there, sparing the kernel zeroing fresh ones, which is most of what a
// large push costs the server. A push that finds none to reuse frees every
// retained buffer before it allocates, so retention never raises the
// process's peak memory; the store's reaper frees the ones left unused.
// The retention rules are the client's too (internal::RetainedBuffers);
// the budget adds the server's policy: retained bytes are outside the
// memory limit, and the store's reaper is told when each falls due.
class MemoryBudget {
 public:
  explicit MemoryBudget(uint64_t limit)
      : limit_(limit), retained_(RetentionOptions()) {}

  bool TryReserve(uint64_t bytes) {
    uint64_t used = used_.load(std::memory_order_relaxed);
    do {
      if (bytes > limit_ || used > limit_ - bytes) return false;
    } while (!used_.compare_exchange_weak(used, used + bytes,
                                          std::memory_order_relaxed));
    return true;
  }

  void Release(uint64_t bytes) {
    used_.fetch_sub(bytes, std::memory_order_relaxed);
  }

  uint64_t used() const { return used_.load(std::memory_order_relaxed); }
  uint64_t limit() const { return limit_; }

  // A buffer of at least `size` bytes, its actual size in `*capacity` and
  // the memfd holding it in `*memfd` (-1: none); null if memory is short.
  // Bytes past `size` in a reused buffer are zeroed: a client handed the
  // memfd can read to its end.
  uint8_t* Allocate(uint64_t size, uint64_t* capacity, int* memfd) {
    *capacity = size;
    *memfd = -1;
    if (size == 0) return nullptr;
    if (size < kMmapThreshold) return static_cast<uint8_t*>(std::malloc(size));
    internal::RetainedBuffers::Taken taken;  // unfit ones freed after the lock
    {
      absl::MutexLock lock(&mutex_);
      taken = retained_.Take(size);
    }
    if (taken.buffer.data == nullptr) return MapImageBytes(size, memfd);
    *capacity = taken.buffer.capacity;
    *memfd = taken.buffer.memfd;
    auto* data = static_cast<uint8_t*>(taken.buffer.data);
    if (*memfd >= 0) std::memset(data + size, 0, *capacity - size);
    return data;
  }

  // Takes back a buffer from Allocate(), or a sealed push's mapping. One
  // that is not `reusable` (its memfd went to a client, or it is not the
  // store's) goes back to the system at once.
  void Free(uint8_t* data, uint64_t capacity, int memfd, bool reusable) {
    if (data == nullptr) return;
    if (capacity < kMmapThreshold && memfd < 0) {
      std::free(data);
      return;
    }
    if (!reusable) {
      UnmapImageBytes({data, capacity, memfd});
      return;
    }
    internal::RetainedBuffers::Released evicted;  // freed after the lock
    absl::MutexLock lock(&mutex_);
    evicted = retained_.Keep({data, capacity, memfd}, absl::Now());
    if (on_retained_) on_retained_(retained_.next_due());
  }

  // Frees the retained buffers due by `now`; returns when the next one will
  // be (InfiniteFuture if none is left).
  absl::Time TrimRetained(absl::Time now) {
    internal::RetainedBuffers::Released due;  // freed after the lock
    absl::MutexLock lock(&mutex_);
    due = retained_.TakeDue(now);
    return retained_.next_due();
  }

  uint64_t retained_bytes() {
    absl::MutexLock lock(&mutex_);
    return retained_.bytes();
  }

  // Called whenever a buffer is retained, with the time the first retained
  // one is due; empty to stop. Must not call back into this object.
  void SetOnRetained(std::function<void(absl::Time)> on_retained) {
    absl::MutexLock lock(&mutex_);
    on_retained_ = std::move(on_retained);
  }

 private:
  const uint64_t limit_;
  std::atomic<uint64_t> used_{0};
  absl::Mutex mutex_;
  internal::RetainedBuffers retained_ ABSL_GUARDED_BY(mutex_);
  std::function<void(absl::Time)> on_retained_ ABSL_GUARDED_BY(mutex_);
};

namespace {

bool IsExpired(const StoredImage& image, absl::Time now) {
  return image.expires() <= now;
}

bool HasPrefix(std::string_view text, std::string_view prefix) {
  return text.substr(0, prefix.size()) == prefix;
}

// A watched push is looked at again no sooner than this after a look, so
// that a client keeping just ahead of its schedule cannot make the reaper
// spin; a push falling behind is cut off at most this late.
constexpr absl::Duration kPushCheckSpacing = absl::Milliseconds(250);

bool WatchesPushes(const StoreOptions& options) {
  return options.push_idle_timeout > absl::ZeroDuration() &&
         options.push_idle_timeout != absl::InfiniteDuration();
}

// The progress rule (StoreOptions::push_idle_timeout), in this one place:
// when a push begun at `begun`, whose last byte came at `last_progress`
// and which has received `received` of its `size` bytes, falls behind.
absl::Time PushDeadline(const StoreOptions& options, absl::Time begun,
                        absl::Time last_progress, uint64_t received,
                        uint64_t size) {
  const absl::Time idle_deadline = last_progress + options.push_idle_timeout;
  if (options.push_min_bytes_per_second == 0 || received == size) {
    return idle_deadline;
  }
  const absl::Time rate_deadline =
      begun + options.push_idle_timeout +
      absl::Seconds(static_cast<double>(received) /
                    static_cast<double>(options.push_min_bytes_per_second));
  return std::min(idle_deadline, rate_deadline);
}

std::string Seconds(absl::Duration duration) {
  return absl::FormatDuration(absl::Trunc(duration, absl::Milliseconds(100)));
}

// What a push cut off at `now` is told, saying which rule it broke.
absl::Status CutOffStatus(const StoreOptions& options,
                          std::string_view image_id, uint64_t size,
                          absl::Time begun, absl::Time last_progress,
                          uint64_t received, absl::Time now) {
  const std::string progress = absl::StrCat(
      internal::HumanSize(received), " of ", internal::HumanSize(size),
      " received in ", Seconds(now - begun));
  if (now >= last_progress + options.push_idle_timeout) {
    return absl::DeadlineExceededError(absl::StrCat(
        "push of '", std::string(image_id), "' cancelled: ", progress,
        ", nothing for ", Seconds(now - last_progress),
        "; the server cancels a push idle for ",
        Seconds(options.push_idle_timeout), "; nothing was stored"));
  }
  return absl::DeadlineExceededError(absl::StrCat(
      "push of '", std::string(image_id), "' cancelled: ", progress,
      ", below the server's minimum of ",
      internal::HumanSize(options.push_min_bytes_per_second), "/s after ",
      Seconds(options.push_idle_timeout), "; nothing was stored"));
}

}  // namespace

// One push as the store watches it: its progress, published by the thread
// receiving it, and whether it has been cut off, decided once, either by
// the reaper (Cut) or by the push's end (End), whichever comes first.
class PushWatch {
 public:
  PushWatch(uint64_t id, std::string_view image_id, uint64_t size,
            absl::Time begun, PushCutOff cut_off)
      : id_(id),
        image_id_(image_id),
        size_(size),
        begun_(begun),
        last_progress_(absl::ToUnixNanos(begun)),
        cut_off_(std::move(cut_off)) {}

  uint64_t id() const { return id_; }
  // Valid while the push is watched (the PendingImage holds it).
  std::string_view image_id() const { return image_id_; }
  uint64_t size() const { return size_; }
  absl::Time begun() const { return begun_; }

  // By the receiving thread, after each piece.
  void Progress(uint64_t received, absl::Time now) {
    received_.store(received, std::memory_order_relaxed);
    last_progress_.store(absl::ToUnixNanos(now), std::memory_order_relaxed);
  }
  uint64_t received() const {
    return received_.load(std::memory_order_relaxed);
  }
  absl::Time last_progress() const {
    return absl::FromUnixNanos(last_progress_.load(std::memory_order_relaxed));
  }
  // A cheap look for the receiving thread; cut_status() says why.
  bool is_cut() const { return is_cut_.load(std::memory_order_acquire); }

  absl::Status cut_status() {
    absl::MutexLock lock(&mutex_);
    return cut_status_;
  }

  // Cuts the push off with `status`, calling its cut-off outside the lock;
  // false if it has ended (or was cut) already.
  bool Cut(const absl::Status& status) {
    PushCutOff cut_off;
    {
      absl::MutexLock lock(&mutex_);
      if (state_ != State::kWatched) return false;
      state_ = State::kCutting;
      cutter_ = std::this_thread::get_id();
      cut_status_ = status;
      is_cut_.store(true, std::memory_order_release);
      cut_off = std::move(cut_off_);
    }
    if (cut_off) cut_off(status);
    absl::MutexLock lock(&mutex_);
    state_ = State::kCut;
    return true;
  }

  // The push ends (is published, or dropped): it is never cut off from
  // now on. Returns the cut status if it was cut off first, after its
  // cut-off has returned, unless this thread is the one calling it.
  absl::Status End() {
    PushCutOff unused;  // destroyed after the lock
    absl::MutexLock lock(&mutex_);
    if (state_ == State::kCutting && cutter_ != std::this_thread::get_id()) {
      mutex_.Await(absl::Condition(
          +[](State* state) { return *state != State::kCutting; }, &state_));
    }
    if (state_ == State::kWatched) {
      state_ = State::kEnded;
      unused = std::move(cut_off_);
    }
    return cut_status_;
  }

 private:
  enum class State { kWatched, kCutting, kCut, kEnded };

  const uint64_t id_;
  const std::string_view image_id_;
  const uint64_t size_;
  const absl::Time begun_;
  std::atomic<uint64_t> received_{0};
  std::atomic<int64_t> last_progress_;  // Unix nanoseconds
  std::atomic<bool> is_cut_{false};

  absl::Mutex mutex_;
  State state_ ABSL_GUARDED_BY(mutex_) = State::kWatched;
  std::thread::id cutter_ ABSL_GUARDED_BY(mutex_);
  absl::Status cut_status_ ABSL_GUARDED_BY(mutex_);
  PushCutOff cut_off_ ABSL_GUARDED_BY(mutex_);
};

StoredImage::~StoredImage() {
  // The quota first: whoever sees the store's memory back finds the
  // tenant's back too.
  if (quota_ != nullptr) {
    quota_->used_bytes_.fetch_sub(charged_bytes_, std::memory_order_relaxed);
  }
  if (budget_ != nullptr) {
    budget_->Free(data_, capacity_, memfd_, !shared_.load());
    budget_->Release(charged_bytes_);
  }
  // Last: the writer may fill its buffer again once this end closes.
  if (release_signal_ >= 0) close(release_signal_);
}

uint64_t StoredImage::checksum() const {
  if (checksum_deferred_) {
    absl::call_once(checksum_once_, [this] {
      checksum_ = internal::Checksum(data_, size_);
      checksum_computed_.store(true, std::memory_order_release);
    });
  }
  return checksum_;
}

std::optional<uint64_t> StoredImage::known_checksum() const {
  if (checksum_deferred_ &&
      !checksum_computed_.load(std::memory_order_acquire)) {
    return std::nullopt;
  }
  return checksum_;
}

// The leases of one store, counted per generation. Shared with each lease,
// so that a lease may outlive the store.
class LeaseRegistry {
 public:
  void Add(const StoredImage* image) {
    absl::MutexLock lock(&mutex_);
    ++leases_[image];
  }
  void Remove(const StoredImage* image) {
    absl::MutexLock lock(&mutex_);
    auto it = leases_.find(image);
    if (--it->second == 0) leases_.erase(it);
  }
  // Calls `visit` for each leased generation.
  template <typename Visit>
  void ForEach(Visit visit) {
    absl::MutexLock lock(&mutex_);
    for (const auto& [image, count] : leases_) visit(*image);
  }

 private:
  absl::Mutex mutex_;
  std::unordered_map<const StoredImage*, uint64_t> leases_
      ABSL_GUARDED_BY(mutex_);
};

void ImageLease::Reset() {
  if (image_ == nullptr) return;
  registry_->Remove(image_.get());
  image_.reset();
  registry_.reset();
}

PendingImage::PendingImage(ImageStore* store, PushRequest request,
                           std::unique_ptr<StoredImage> image)
    : store_(store),
      request_(std::move(request)),
      image_(std::move(image)),
      checksum_(std::make_unique<internal::StreamingChecksum>(request_.size)) {}

PendingImage::~PendingImage() {
  if (holds_stream_place_) {
    store_->streams().AbandonAppend(request_.image_id, request_.size);
  }
  EndPending();
  EndWatch().IgnoreError();
}

void PendingImage::EndPending() {
  if (!counted_pending_) return;
  counted_pending_ = false;
  request_.quota->pending_pushes_.fetch_sub(1, std::memory_order_relaxed);
}

absl::Status PendingImage::EndWatch() {
  if (watch_ == nullptr) return absl::OkStatus();
  const std::shared_ptr<PushWatch> watch = std::move(watch_);
  absl::Status cut = watch->End();
  store_->Unwatch(watch->id());
  return cut;
}

absl::Status PendingImage::cut_status() const {
  return watch_ == nullptr ? absl::OkStatus() : watch_->cut_status();
}

uint64_t PendingImage::received_checksum() const {
  return checksum_ == nullptr ? 0 : checksum_->Digest();
}

absl::Status PendingImage::Append(const void* data, size_t size) {
  // CommitReceived refuses what does not fit; copy only what does.
  if (image_ != nullptr && size <= request_.size - received_) {
    std::memcpy(image_->data_ + received_, data, size);
  }
  return CommitReceived(size);
}

uint8_t* PendingImage::Unreceived() {
  return image_ == nullptr ? nullptr : image_->data_ + received_;
}

absl::Status PendingImage::CommitReceived(size_t size) {
  if (image_ == nullptr) {
    return absl::FailedPreconditionError("push was already finished");
  }
  if (watch_ != nullptr && watch_->is_cut()) {
    image_.reset();
    return watch_->cut_status();
  }
  if (size > request_.size - received_) {
    image_.reset();
    return absl::InvalidArgumentError(absl::StrCat(
        "push of '", request_.image_id, "' sent more than the declared ",
        request_.size, " bytes"));
  }
  checksum_->Update(image_->data_ + received_, size);
  received_ += size;
  if (watch_ != nullptr && size > 0) {
    watch_->Progress(received_, store_->options_.clock());
  }
  return absl::OkStatus();
}

absl::StatusOr<ImageRef> PendingImage::Publish() {
  return Publish(request_.checksum);
}

absl::StatusOr<ImageRef> PendingImage::Publish(uint64_t expected_checksum) {
  std::unique_ptr<StoredImage> image = std::move(image_);
  EndPending();
  if (absl::Status cut = EndWatch(); !cut.ok()) return cut;
  if (image == nullptr) {
    return absl::FailedPreconditionError("push was already finished");
  }
  if (received_ != request_.size) {
    return absl::InvalidArgumentError(absl::StrCat(
        "push of '", request_.image_id, "' ended after ", received_,
        " of the declared ", request_.size, " bytes; nothing was stored"));
  }
  const uint64_t checksum = checksum_->Digest();
  if (checksum != expected_checksum) {
    return absl::DataLossError(absl::StrCat(
        "push of '", request_.image_id, "': the received bytes have checksum ",
        absl::Hex(checksum, absl::kZeroPad16), ", not the declared ",
        absl::Hex(expected_checksum, absl::kZeroPad16),
        "; nothing was stored"));
  }
  if (store_->options_.require_hdf5 &&
      !internal::FindSuperblock(image->data_, image->size_).has_value()) {
    return NotHdf5Error(request_.image_id);
  }
  image->checksum_ = checksum;
  absl::StatusOr<ImageRef> published =
      store_->Install(std::move(image), request_);
  if (published.ok()) holds_stream_place_ = false;  // it is a step now
  return published;
}

ImageStore::ImageStore(StoreOptions options)
    : options_(std::move(options)),
      budget_(std::make_shared<MemoryBudget>(options_.max_memory_bytes)),
      leases_(std::make_shared<LeaseRegistry>()),
      // Generations start at the current time in microseconds so that they
      // stay unique and increasing across restarts of the server.
      next_generation_(
          std::max<uint64_t>(1, absl::ToUnixMicros(options_.clock()))),
      history_after_(next_generation_ - 1),
      streams_(std::make_unique<StreamTable>(
          options_.clock,
          [this](std::vector<std::string> step_ids) {
            RemoveStreamSteps(step_ids);
          },
          options_.start_reaper)) {
  if (options_.start_reaper) {
    budget_->SetOnRetained([this](absl::Time due) { WakeReaperFor(due); });
    reaper_ = std::thread([this] { ReaperLoop(); });
  }
}

ImageStore::~ImageStore() {
  // Images may outlive the store (held by calls still finishing).
  budget_->SetOnRetained(nullptr);
  Shutdown();
  if (reaper_.joinable()) reaper_.join();
}

absl::Status ImageStore::Admit(const PushRequest& request, uint64_t charge) {
  if (absl::Status status = internal::ValidateImageId(request.image_id);
      !status.ok()) {
    return status;
  }
  if (request.size > options_.max_image_bytes) {
    return absl::ResourceExhaustedError(absl::StrCat(
        "image '", request.image_id, "' is ", internal::HumanSize(request.size),
        ", larger than this server's limit of ",
        internal::HumanSize(options_.max_image_bytes), " per image"));
  }
  if (request.ttl < absl::ZeroDuration()) {
    return absl::InvalidArgumentError("time to live must not be negative");
  }
  if (shutting_down_.load(std::memory_order_relaxed)) {
    return absl::UnavailableError("server is shutting down");
  }
  if (request.replica_step.has_value() && !request.stream_append) {
    return absl::InvalidArgumentError(absl::StrCat(
        "'", request.image_id, "': a replica step is for stream appends only"));
  }
  if (request.stream_append) {
    if (request.if_generation_match.has_value() ||
        request.replica_generation != 0 ||
        request.ttl != absl::ZeroDuration()) {
      return absl::InvalidArgumentError(absl::StrCat(
          "an append to stream '", request.image_id,
          "' takes no generation precondition, replica generation or time "
          "to live"));
    }
    return AdmitStreamAppend(request, charge);
  }
  // Only a precondition needs the map (Install() checks everything again).
  if (request.if_generation_match.has_value() ||
      request.replica_generation != 0) {
    absl::ReaderMutexLock lock(&mutex_);
    if (absl::Status status =
            CheckGeneration(request.image_id, request.if_generation_match);
        !status.ok()) {
      return status;
    }
    if (absl::Status status = CheckReplicaGeneration(
            request.image_id, request.replica_generation);
        !status.ok()) {
      return status;
    }
  }
  return Charge(request, charge);
}

absl::Status ImageStore::AdmitStreamAppend(const PushRequest& request,
                                           uint64_t charge) {
  // A restored step was in the queue before: it is not admitted again.
  if (absl::Status status =
          request.restored.has_value()
              ? streams_->AdmitRestoredStep(request.image_id, request.size)
              : streams_->AdmitAppend(request.image_id, request.size,
                                      request.replica_step);
      !status.ok()) {
    return status;
  }
  absl::Status charged = Charge(request, charge);
  if (!charged.ok()) streams_->AbandonAppend(request.image_id, request.size);
  return charged;
}

absl::Status ImageStore::Charge(const PushRequest& request, uint64_t charge) {
  // Charged in this order, each given back if a later one refuses: the
  // pending push, the tenant's memory, the store's memory.
  Quota* const quota = request.quota.get();
  if (quota != nullptr) {
    if (!Quota::TryAdd(quota->pending_pushes_, 1,
                       quota->max_pending_pushes())) {
      return absl::ResourceExhaustedError(absl::StrCat(
          "push of '", request.image_id, "' refused: ", quota->owner(), " has ",
          quota->pending_pushes(), " pushes under way, its limit of ",
          quota->max_pending_pushes()));
    }
    if (!Quota::TryAdd(quota->used_bytes_, charge, quota->max_memory_bytes())) {
      quota->pending_pushes_.fetch_sub(1, std::memory_order_relaxed);
      return absl::ResourceExhaustedError(absl::StrCat(
          "image '", request.image_id, "' needs ", internal::HumanSize(charge),
          " but ", quota->owner(), " has ",
          internal::HumanSize(quota->used_bytes()), " of its ",
          internal::HumanSize(quota->max_memory_bytes()),
          " memory quota in use (images it pushed, until freed, and its "
          "pushes under way)"));
    }
  }
  bool reserved = budget_->TryReserve(charge);
  // Room made by an eviction may go to a concurrent push first.
  for (int attempt = 0;
       !reserved && attempt < 3 &&
       options_.eviction == StoreOptions::Eviction::kLru && EvictFor(charge);
       ++attempt) {
    reserved = budget_->TryReserve(charge);
  }
  if (!reserved) {
    if (quota != nullptr) {
      quota->used_bytes_.fetch_sub(charge, std::memory_order_relaxed);
      quota->pending_pushes_.fetch_sub(1, std::memory_order_relaxed);
    }
    const uint64_t used = budget_->used();
    return absl::ResourceExhaustedError(absl::StrCat(
        "image '", request.image_id, "' needs ", internal::HumanSize(charge),
        " but only ",
        internal::HumanSize(budget_->limit() -
                            std::min(used, budget_->limit())),
        " of this server's ", internal::HumanSize(budget_->limit()),
        " memory limit is free",
        options_.eviction == StoreOptions::Eviction::kLru
            ? " (the images that could be evicted would not make room: "
              "the rest are held by readers or pushes under way)"
            : ""));
  }
  return absl::OkStatus();
}

absl::StatusOr<std::unique_ptr<PendingImage>> ImageStore::BeginPush(
    PushRequest request, PushCutOff cut_off) {
  if (absl::Status status = Admit(request, request.size); !status.ok()) {
    return status;
  }
  Quota* const quota = request.quota.get();
  auto image = std::unique_ptr<StoredImage>(new StoredImage());
  // From here on the destructor gives back the memory, and the
  // PendingImage the pending push.
  image->budget_ = budget_;
  image->quota_ = request.quota;
  image->size_ = request.size;
  image->charged_bytes_ = request.size;
  image->data_ =
      budget_->Allocate(request.size, &image->capacity_, &image->memfd_);
  if (request.size > 0 && image->data_ == nullptr) {
    if (quota != nullptr) {
      quota->pending_pushes_.fetch_sub(1, std::memory_order_relaxed);
    }
    if (request.stream_append) {
      streams_->AbandonAppend(request.image_id, request.size);
    }
    return absl::ResourceExhaustedError(
        absl::StrCat("cannot allocate ", internal::HumanSize(request.size),
                     " for image '", request.image_id, "'"));
  }
  image->image_id_ = request.image_id;
  auto pending = std::unique_ptr<PendingImage>(
      new PendingImage(this, std::move(request), std::move(image)));
  pending->counted_pending_ = quota != nullptr;
  pending->holds_stream_place_ = pending->request_.stream_append;
  if (!WatchesPushes(options_)) return pending;
  const absl::Time begun = options_.clock();
  const absl::Time first_check = begun + options_.push_idle_timeout;
  {
    absl::MutexLock lock(&pushes_mutex_);
    const uint64_t id = next_push_++;
    pending->watch_ = std::make_shared<PushWatch>(
        id, pending->request_.image_id, pending->request_.size, begun,
        std::move(cut_off));
    watched_pushes_.emplace(id, WatchedPush{pending->watch_, first_check});
    push_checks_.emplace(first_check, id);
  }
  WakeReaperFor(first_check);
  return pending;
}

absl::StatusOr<ImageRef> ImageStore::PublishSealed(
    PushRequest request, internal::UniqueFd memfd,
    internal::UniqueFd release_signal) {
  const bool step_buffer = static_cast<bool>(release_signal);
  absl::StatusOr<uint64_t> length =
      step_buffer && !request.stream_append
          ? absl::InvalidArgumentError("a step buffer outside a stream")
          : internal::CheckSealedImage(memfd.get(),
                                       step_buffer
                                           ? internal::kSealsOfStepBuffer
                                           : internal::kSealsFromClient,
                                       request.size);
  if (!length.ok()) {
    return absl::InvalidArgumentError(absl::StrCat(
        request.stream_append ? "append to '" : "push of '", request.image_id,
        "' as a memfd refused: ", length.status().message()));
  }
  if (request.size == 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "push of '", request.image_id, "' as a memfd: the image is empty"));
  }
  if (absl::Status status = Admit(request, *length); !status.ok()) {
    return status;
  }
  auto image = std::unique_ptr<StoredImage>(new StoredImage());
  // From here on the destructor gives back the memory; the pending push
  // is given back below, whatever happens.
  image->budget_ = budget_;
  image->quota_ = request.quota;
  image->charged_bytes_ = *length;
  image->image_id_ = request.image_id;
  image->size_ = request.size;
  // Never written by anyone, and not the store's to reuse.
  image->shared_.store(true);
  image->checksum_deferred_ = true;
  absl::StatusOr<internal::Mapping> mapping = internal::Mapping::Map(
      memfd.get(), *length, internal::Mapping::Access::kReadOnly);
  absl::StatusOr<ImageRef> published;
  if (!mapping.ok()) {
    published = mapping.status();
  } else {
    image->capacity_ = mapping->length();
    image->data_ = static_cast<uint8_t*>(mapping->Release());
    image->memfd_ = memfd.Release();
    image->release_signal_ = release_signal.Release();
    if (options_.require_hdf5 &&
        !internal::FindSuperblock(image->data_, image->size_).has_value()) {
      published = NotHdf5Error(request.image_id);
    } else {
      published = Install(std::move(image), request);
    }
  }
  if (request.quota != nullptr) {
    request.quota->pending_pushes_.fetch_sub(1, std::memory_order_relaxed);
  }
  if (request.stream_append && !published.ok()) {
    streams_->AbandonAppend(request.image_id, request.size);
  }
  return published;
}

ImageLease ImageStore::Lease(ImageRef image) {
  image->shared_.store(true);
  leases_->Add(image.get());
  return ImageLease(leases_, std::move(image));
}

void ImageStore::Unwatch(uint64_t push) {
  absl::MutexLock lock(&pushes_mutex_);
  auto it = watched_pushes_.find(push);
  if (it == watched_pushes_.end()) return;
  push_checks_.erase({it->second.next_check, push});
  watched_pushes_.erase(it);
}

size_t ImageStore::CutOffStalledPushes() {
  const absl::Time now = options_.clock();
  std::vector<std::pair<std::shared_ptr<PushWatch>, absl::Status>> behind;
  {
    absl::MutexLock lock(&pushes_mutex_);
    while (!push_checks_.empty() && push_checks_.begin()->first <= now) {
      const uint64_t id = push_checks_.begin()->second;
      push_checks_.erase(push_checks_.begin());
      auto it = watched_pushes_.find(id);
      const PushWatch& watch = *it->second.watch;
      const uint64_t received = watch.received();
      const absl::Time last_progress = watch.last_progress();
      const absl::Time deadline = PushDeadline(
          options_, watch.begun(), last_progress, received, watch.size());
      if (deadline <= now) {
        // Unwatched now: the message names the id while the push still
        // holds it.
        behind.emplace_back(
            std::move(it->second.watch),
            CutOffStatus(options_, watch.image_id(), watch.size(),
                         watch.begun(), last_progress, received, now));
        watched_pushes_.erase(it);
        continue;
      }
      it->second.next_check = std::max(deadline, now + kPushCheckSpacing);
      push_checks_.emplace(it->second.next_check, id);
    }
  }
  size_t cut = 0;
  for (auto& [watch, status] : behind) cut += watch->Cut(status) ? 1 : 0;
  return cut;
}

absl::StatusOr<ImageRef> ImageStore::InstallRestored(
    std::unique_ptr<StoredImage> image, const PushRequest& request) {
  const PushRequest::Restored& restored = *request.restored;
  StoredImage& stored = *image;
  stored.created_ = restored.created;
  stored.expires_ = restored.expires;
  stored.generation_ = restored.generation;
  if (request.stream_append) {
    stored.image_id_ = internal::StreamStepId(request.image_id, restored.step);
    stored.stream_step_ = true;
  }
  const ImageRef published(std::move(image));
  {
    absl::MutexLock lock(&mutex_);
    if (shutting_down_)
      return absl::UnavailableError("server is shutting down");
    if (event_count_ > 0) {
      return absl::FailedPreconditionError(
          "images are restored only into a store that has not changed yet");
    }
    if (!images_.try_emplace(stored.image_id(), published).second) {
      return absl::AlreadyExistsError(
          absl::StrCat("image '", stored.image_id(), "' is restored twice"));
    }
    restored_at_ = std::max(restored_at_, options_.clock());
    // Sequences go on after every restored generation; what came before
    // is history this store never recorded (ReadEvents calls it lost).
    next_generation_ = std::max(next_generation_, stored.generation_ + 1);
    history_after_ = next_generation_ - 1;
    LruAdd(stored);
    if (request.stream_append) {
      streams_->AddRestoredStep(request.image_id, restored.step, request.size,
                                published);
    }
    if (stored.expires_ != absl::InfiniteFuture()) {
      expiry_queue_.emplace(stored.expires_, stored.image_id_);
    }
    stored_bytes_ += published->size();
  }
  if (published->expires() != absl::InfiniteFuture()) {
    WakeReaperFor(published->expires());
  }
  return published;
}

absl::StatusOr<ImageRef> ImageStore::Install(std::unique_ptr<StoredImage> image,
                                             const PushRequest& request) {
  if (request.restored.has_value()) {
    return InstallRestored(std::move(image), request);
  }
  // Every push waits for this lock, so what needs none (reading the clock,
  // allocating the reference count) is done before taking it.
  StoredImage& stored = *image;
  stored.created_ = options_.clock();
  if (request.ttl > absl::ZeroDuration()) {
    stored.expires_ = stored.created_ + request.ttl;
  }
  if (request.stream_append) return InstallStep(std::move(image), request);
  const ImageRef published(std::move(image));
  ImageRef replaced;                // released after the lock, it may be large
  std::vector<WaitCallback> woken;  // called after the lock
  std::vector<absl::AnyInvocable<void()>> watchers;  // the same
  {
    absl::MutexLock lock(&mutex_);
    if (shutting_down_)
      return absl::UnavailableError("server is shutting down");
    if (absl::Status status =
            CheckGeneration(request.image_id, request.if_generation_match);
        !status.ok()) {
      return status;
    }
    if (absl::Status status = CheckReplicaGeneration(
            request.image_id, request.replica_generation);
        !status.ok()) {
      return status;
    }
    auto [it, inserted] = images_.try_emplace(stored.image_id(), published);
    if (!inserted) {
      replaced = std::move(it->second);
      Retire(replaced);
      it->second = published;
    }
    LruAdd(stored);
    // An expired image the reaper has not removed yet was, to everyone,
    // gone: it expires now, and its successor is a first publish.
    const bool replaces_live =
        replaced != nullptr && !IsExpired(*replaced, stored.created_);
    if (replaced != nullptr && !replaces_live) {
      RecordEvent(ImageEvent::Kind::kExpired, *replaced, 0, &watchers);
      ++expired_images_;
    }
    const uint64_t sequence =
        RecordEvent(replaces_live ? ImageEvent::Kind::kReplaced
                                  : ImageEvent::Kind::kPublished,
                    stored, replaces_live ? replaced->generation() : 0,
                    &watchers, request.replica_generation);
    stored.generation_ =
        request.replica_generation != 0 ? request.replica_generation : sequence;
    if (stored.expires_ != absl::InfiniteFuture()) {
      expiry_queue_.emplace(stored.expires_, stored.image_id_);
    }
    stored_bytes_ += published->size();
    if (!waits_by_image_.empty()) {
      auto [first, last] = waits_by_image_.equal_range(stored.image_id());
      while (first != last) {
        const WaitId wait = (first++)->second;
        if (waits_.at(wait).newer_than < stored.generation_) {
          woken.push_back(TakeWait(wait));
        }
      }
    }
  }
  if (published->expires() != absl::InfiniteFuture()) {
    WakeReaperFor(published->expires());
  }
  for (WaitCallback& done : woken) done(published);
  for (auto& ready : watchers) ready();
  return published;
}

absl::StatusOr<ImageRef> ImageStore::InstallStep(
    std::unique_ptr<StoredImage> image, const PushRequest& request) {
  StoredImage& stored = *image;
  stored.created_ = options_.clock();
  stored.stream_step_ = true;
  const ImageRef published(std::move(image));
  std::vector<ImageRef> discarded;                // released after the lock
  std::vector<WaitCallback> woken;                // called after the lock
  std::vector<absl::AnyInvocable<void()>> after;  // the same
  {
    absl::MutexLock lock(&mutex_);
    if (shutting_down_)
      return absl::UnavailableError("server is shutting down");
    // Numbered and published under the store's lock, so that steps are
    // numbered in the order they are published.
    absl::StatusOr<uint64_t> step =
        streams_->ReserveStepNumber(request.image_id, request.replica_step);
    if (!step.ok()) return step.status();
    stored.image_id_ = internal::StreamStepId(request.image_id, *step);
    // A step id was never an image's, and is never used again.
    images_.emplace(stored.image_id(), published);
    stored.generation_ =
        RecordEvent(ImageEvent::Kind::kPublished, stored, 0, &after);
    stored_bytes_ += published->size();
    std::vector<std::string> dropped;
    streams_->AddStep(request.image_id, *step, request.size, published,
                      &dropped, &after);
    for (const std::string& id : dropped) {
      auto it = images_.find(id);
      if (it == images_.end()) continue;
      discarded.push_back(std::move(it->second));
      images_.erase(it);
      Retire(discarded.back());
      RecordEvent(ImageEvent::Kind::kDeleted, *discarded.back(), 0, &after);
    }
    if (!waits_by_image_.empty()) {
      auto [first, last] = waits_by_image_.equal_range(stored.image_id());
      while (first != last) woken.push_back(TakeWait((first++)->second));
    }
  }
  for (WaitCallback& done : woken) done(published);
  for (auto& run : after) run();
  return published;
}

void ImageStore::RemoveStreamSteps(const std::vector<std::string>& step_ids) {
  std::vector<ImageRef> removed;                     // released after the lock
  std::vector<absl::AnyInvocable<void()>> watchers;  // called after the lock
  {
    absl::MutexLock lock(&mutex_);
    for (const std::string& id : step_ids) {
      auto it = images_.find(id);
      if (it == images_.end()) continue;
      removed.push_back(std::move(it->second));
      images_.erase(it);
      Retire(removed.back());
      RecordEvent(ImageEvent::Kind::kDeleted, *removed.back(), 0, &watchers);
    }
  }
  for (auto& ready : watchers) ready();
}

uint64_t ImageStore::RecordEvent(ImageEvent::Kind kind,
                                 const StoredImage& image,
                                 uint64_t replaced_generation,
                                 std::vector<absl::AnyInvocable<void()>>* ready,
                                 uint64_t replica_generation) {
  // A replica's generation ahead of the counter moves it there (a Lamport
  // clock's receive); CheckReplicaGeneration bounded how far.
  next_generation_ = std::max(next_generation_, replica_generation);
  const uint64_t sequence = next_generation_++;
  const size_t capacity = std::max<size_t>(1, options_.event_history);
  ImageEvent* event;
  if (event_count_ < capacity) {
    if (events_.size() < capacity) events_.emplace_back();
    event = &events_[(event_head_ + event_count_++) % capacity];
  } else {
    // The oldest goes; its slot (and its string's memory) is reused.
    event = &events_[event_head_];
    history_after_ = event->sequence;
    event_head_ = (event_head_ + 1) % capacity;
  }
  event->kind = kind;
  event->sequence = sequence;
  event->image_id.assign(image.image_id());
  event->generation =
      kind == ImageEvent::Kind::kPublished ||
              kind == ImageEvent::Kind::kReplaced
          ? (replica_generation != 0 ? replica_generation : sequence)
          : image.generation();
  event->size = image.size();
  event->replaced_generation = replaced_generation;
  event->time = options_.clock();
  for (size_t i = 0; i < notifications_.size();) {
    if (HasPrefix(image.image_id(), notifications_[i].prefix)) {
      ready->push_back(std::move(notifications_[i].ready));
      notifications_[i] = std::move(notifications_.back());
      notifications_.pop_back();
    } else {
      ++i;
    }
  }
  return sequence;
}

uint64_t ImageStore::LatestSequence() const {
  absl::ReaderMutexLock lock(&mutex_);
  return next_generation_ - 1;
}

absl::StatusOr<EventPage> ImageStore::ReadEvents(
    std::string_view prefix, uint64_t position, size_t max_events,
    size_t max_scan,
    const std::function<bool(std::string_view)>& visible) const {
  EventPage page;
  page.position = position;
  absl::ReaderMutexLock lock(&mutex_);
  if (shutting_down_) return absl::UnavailableError("server is shutting down");
  if (position < history_after_) {
    page.lost_first = position + 1;
    page.lost_last = history_after_;
    page.position = history_after_;
  }
  const size_t capacity = std::max<size_t>(1, options_.event_history);
  size_t slot = FirstEventAfter(page.position);
  for (size_t scanned = 0; slot < event_count_ && scanned < max_scan &&
                           page.events.size() < max_events;
       ++slot, ++scanned) {
    const ImageEvent& event = events_[(event_head_ + slot) % capacity];
    page.position = event.sequence;
    if (HasPrefix(event.image_id, prefix) &&
        (visible == nullptr || visible(event.image_id))) {
      page.events.push_back(event);
    }
  }
  page.more = slot < event_count_;
  // Numbers a replica's publish skipped are no changes: looked at too.
  if (!page.more) page.position = std::max(page.position, next_generation_ - 1);
  return page;
}

size_t ImageStore::FirstEventAfter(uint64_t position) const {
  const size_t capacity = std::max<size_t>(1, options_.event_history);
  size_t low = 0;
  size_t high = event_count_;
  while (low < high) {
    const size_t middle = low + (high - low) / 2;
    if (events_[(event_head_ + middle) % capacity].sequence <= position) {
      low = middle + 1;
    } else {
      high = middle;
    }
  }
  return low;
}

ImageStore::NotificationId ImageStore::NotifyOnEvent(
    std::string_view prefix, uint64_t position,
    absl::AnyInvocable<void()> ready) {
  absl::MutexLock lock(&mutex_);
  if (shutting_down_ || next_generation_ - 1 > position) return 0;
  const NotificationId id = next_notification_++;
  notifications_.push_back(
      EventNotification{id, std::string(prefix), std::move(ready)});
  return id;
}

bool ImageStore::CancelEventNotification(NotificationId id) {
  absl::AnyInvocable<void()> cancelled;  // destroyed after the lock
  absl::MutexLock lock(&mutex_);
  for (EventNotification& notification : notifications_) {
    if (notification.id == id) {
      cancelled = std::move(notification.ready);
      notification = std::move(notifications_.back());
      notifications_.pop_back();
      return true;
    }
  }
  return false;
}

void ImageStore::WakeReaperFor(absl::Time due) {
  absl::MutexLock lock(&reaper_mutex_);
  ++reaper_wakeups_;
  if (due < reaper_wakes_at_) reaper_wakeup_.Signal();
}

absl::Status ImageStore::CheckGeneration(
    std::string_view image_id,
    std::optional<uint64_t> if_generation_match) const {
  if (!if_generation_match.has_value()) return absl::OkStatus();
  ImageRef current = FindLive(image_id);
  if (*if_generation_match == 0) {
    if (current == nullptr) return absl::OkStatus();
    return absl::AlreadyExistsError(absl::StrCat(
        "image '", std::string(image_id), "' already exists (generation ",
        current->generation(), ")"));
  }
  if (current == nullptr) {
    return absl::AbortedError(absl::StrCat(
        "image '", std::string(image_id), "' does not exist, so generation ",
        *if_generation_match, " is not current"));
  }
  if (current->generation() != *if_generation_match) {
    return absl::AbortedError(
        absl::StrCat("image '", std::string(image_id), "' is at generation ",
                     current->generation(), ", not ", *if_generation_match,
                     "; it was changed by someone else"));
  }
  return absl::OkStatus();
}

absl::Status ImageStore::CheckReplicaGeneration(
    std::string_view image_id, uint64_t replica_generation) const {
  if (replica_generation == 0) return absl::OkStatus();
  const uint64_t now_micros = static_cast<uint64_t>(
      std::max<int64_t>(0, absl::ToUnixMicros(options_.clock())));
  if (replica_generation - 1 >=
      std::max(next_generation_, now_micros) + kMaxGenerationLead) {
    return absl::InvalidArgumentError(absl::StrCat(
        "push of '", std::string(image_id), "' as a copy of generation ",
        replica_generation, ": that is too far ahead of this server's ",
        next_generation_ - 1,
        " (a generation counts microseconds since 1970 and changes)"));
  }
  if (ImageRef current = FindLive(image_id);
      current != nullptr && current->generation() >= replica_generation) {
    return absl::FailedPreconditionError(absl::StrCat(
        "push of '", std::string(image_id), "' as a copy of generation ",
        replica_generation, ": this server holds generation ",
        current->generation(), ", as new or newer"));
  }
  return absl::OkStatus();
}

ImageRef ImageStore::FindLive(std::string_view image_id) const {
  auto it = images_.find(image_id);
  if (it == images_.end() || IsExpired(*it->second, options_.clock())) {
    return nullptr;
  }
  return it->second;
}

void ImageStore::LruAdd(const StoredImage& image) {
  if (options_.eviction != StoreOptions::Eviction::kLru || image.stream_step_) {
    return;
  }
  absl::MutexLock lock(&lru_mutex_);
  image.lru_older_ = lru_newest_;
  image.lru_newer_ = nullptr;
  if (lru_newest_ != nullptr)
    lru_newest_->lru_newer_ = const_cast<StoredImage*>(&image);
  lru_newest_ = const_cast<StoredImage*>(&image);
  if (lru_oldest_ == nullptr) lru_oldest_ = lru_newest_;
}

void ImageStore::LruRemove(const StoredImage& image) {
  if (options_.eviction != StoreOptions::Eviction::kLru || image.stream_step_) {
    return;
  }
  absl::MutexLock lock(&lru_mutex_);
  (image.lru_older_ != nullptr ? image.lru_older_->lru_newer_ : lru_oldest_) =
      image.lru_newer_;
  (image.lru_newer_ != nullptr ? image.lru_newer_->lru_older_ : lru_newest_) =
      image.lru_older_;
  image.lru_older_ = image.lru_newer_ = nullptr;
}

void ImageStore::LruTouch(const StoredImage& image) const {
  if (options_.eviction != StoreOptions::Eviction::kLru || image.stream_step_) {
    return;
  }
  absl::MutexLock lock(&lru_mutex_);
  if (lru_newest_ == &image) return;
  // Unlinked (it has a newer one), then linked as the newest. Current:
  // the caller's shared hold of mutex_ keeps it from being retired.
  image.lru_newer_->lru_older_ = image.lru_older_;
  (image.lru_older_ != nullptr ? image.lru_older_->lru_newer_ : lru_oldest_) =
      image.lru_newer_;
  image.lru_older_ = lru_newest_;
  image.lru_newer_ = nullptr;
  lru_newest_->lru_newer_ = const_cast<StoredImage*>(&image);
  lru_newest_ = const_cast<StoredImage*>(&image);
}

bool ImageStore::EvictFor(uint64_t charge) {
  std::vector<ImageRef> evicted;  // freed last, after the lock
  std::vector<absl::AnyInvocable<void()>> watchers;  // called after the lock
  {
    absl::MutexLock lock(&mutex_);
    const uint64_t limit = budget_->limit();
    const uint64_t used = budget_->used();
    if (charge > limit) return false;
    if (used <= limit - charge) return true;  // room came meanwhile
    const uint64_t needed = used - (limit - charge);
    // Chosen first, evicted only if they make room: deleting images that
    // would not let the push in helps nobody.
    std::vector<const StoredImage*> chosen;
    uint64_t freeing = 0;
    {
      absl::MutexLock lru(&lru_mutex_);
      for (const StoredImage* image = lru_oldest_;
           image != nullptr && freeing < needed; image = image->lru_newer_) {
        // Nobody can take hold of it meanwhile: that goes through mutex_.
        if (images_.find(image->image_id())->second.use_count() > 1) continue;
        chosen.push_back(image);
        freeing += image->charged_bytes_;
      }
    }
    if (freeing < needed) return false;
    for (const StoredImage* image : chosen) {
      auto it = images_.find(image->image_id());
      evicted.push_back(std::move(it->second));
      images_.erase(it);
      Retire(evicted.back());
      RecordEvent(ImageEvent::Kind::kEvicted, *evicted.back(), 0, &watchers);
      ++evicted_images_;
      evicted_bytes_ += evicted.back()->size();
    }
  }
  for (auto& ready : watchers) ready();
  return true;
}

void ImageStore::Retire(const ImageRef& image) {
  LruRemove(*image);
  stored_bytes_ -= image->size();
  if (image->expires() != absl::InfiniteFuture()) {
    expiry_queue_.erase({image->expires(), image->image_id()});
  }
  // Only a generation somebody still holds can be asked for again. Nobody
  // new can take hold of it (that would go through the store's lock), so
  // one held by `image` alone is gone for good.
  if (image.use_count() > 1) retired_.emplace(image->generation(), image);
  // Forget generations nobody holds any more, in batches.
  if (retired_.size() > 64 && retired_.size() > 2 * images_.size()) {
    for (auto it = retired_.begin(); it != retired_.end();) {
      it = it->second.expired() ? retired_.erase(it) : std::next(it);
    }
  }
}

absl::StatusOr<ImageRef> ImageStore::Get(std::string_view image_id) const {
  if (absl::Status valid = internal::ValidateReadableId(image_id);
      !valid.ok()) {
    return valid;
  }
  absl::ReaderMutexLock lock(&mutex_);
  ImageRef image = FindLive(image_id);
  if (image == nullptr) {
    return absl::NotFoundError(
        absl::StrCat("no image '", std::string(image_id), "'"));
  }
  LruTouch(*image);
  return image;
}

namespace {

// The DEADLINE_EXCEEDED of a wait for `image_id` newer than `newer_than`.
absl::Status WaitTimedOut(std::string_view image_id, uint64_t newer_than) {
  if (newer_than == 0) {
    return absl::DeadlineExceededError(absl::StrCat(
        "image '", std::string(image_id), "' did not appear in time"));
  }
  return absl::DeadlineExceededError(
      absl::StrCat("no generation of image '", std::string(image_id),
                   "' newer than ", newer_than, " came in time"));
}

}  // namespace

ImageStore::WaitId ImageStore::Await(std::string_view image_id,
                                     uint64_t newer_than, absl::Time deadline,
                                     WaitCallback done) {
  absl::StatusOr<ImageRef> answer;
  WaitId registered = 0;
  if (absl::Status valid = internal::ValidateReadableId(image_id);
      !valid.ok()) {
    answer = std::move(valid);
  } else {
    absl::MutexLock lock(&mutex_);
    if (ImageRef image = FindLive(image_id);
        image != nullptr && image->generation() > newer_than) {
      LruTouch(*image);
      answer = std::move(image);
    } else if (shutting_down_) {
      answer = absl::UnavailableError("server is shutting down");
    } else if (deadline <= absl::Now()) {
      answer = WaitTimedOut(image_id, newer_than);
    } else {
      registered = next_wait_++;
      Wait& wait = waits_[registered];
      wait.done = std::move(done);
      wait.by_image =
          waits_by_image_.emplace(std::string(image_id), registered);
      wait.newer_than = newer_than;
      wait.deadline = deadline;
      if (deadline != absl::InfiniteFuture()) {
        wait_deadlines_.emplace(deadline, registered);
      }
    }
  }
  if (registered == 0) {
    done(std::move(answer));
    return 0;
  }
  // The reaper keeps the deadline. Woken after the lock, as after a
  // publish, so that the two mutexes are never held together.
  if (deadline != absl::InfiniteFuture()) WakeReaperFor(deadline);
  return registered;
}

ImageStore::WaitCallback ImageStore::TakeWait(WaitId id) {
  auto it = waits_.find(id);
  if (it == waits_.end()) return nullptr;
  WaitCallback done = std::move(it->second.done);
  waits_by_image_.erase(it->second.by_image);
  if (it->second.deadline != absl::InfiniteFuture()) {
    wait_deadlines_.erase({it->second.deadline, id});
  }
  waits_.erase(it);
  return done;
}

bool ImageStore::CancelWait(WaitId wait, const absl::Status& status) {
  WaitCallback done;
  {
    absl::MutexLock lock(&mutex_);
    done = TakeWait(wait);
  }
  if (done == nullptr) return false;
  done(status);
  return true;
}

size_t ImageStore::ExpireWaits(absl::Time now) {
  std::vector<std::pair<WaitCallback, absl::Status>> expired;
  {
    absl::MutexLock lock(&mutex_);
    while (!wait_deadlines_.empty() && wait_deadlines_.begin()->first <= now) {
      const WaitId id = wait_deadlines_.begin()->second;
      const Wait& wait = waits_.at(id);
      absl::Status timed_out =
          WaitTimedOut(wait.by_image->first, wait.newer_than);
      expired.emplace_back(TakeWait(id), std::move(timed_out));
    }
  }
  for (auto& [done, timed_out] : expired) done(std::move(timed_out));
  return expired.size();
}

absl::StatusOr<ImageRef> ImageStore::WaitFor(
    std::string_view image_id, absl::Time deadline,
    const std::function<bool()>& is_cancelled) {
  // Cancellation is not an event the store can wait on, so a wait with a
  // cancellation predicate wakes up this often to look at it.
  constexpr absl::Duration kCancellationPoll = absl::Milliseconds(200);
  // Safe to destroy once `ended` is notified: Notify() touches nothing of
  // it afterwards.
  absl::StatusOr<ImageRef> result;
  absl::Notification ended;
  // Registered without a deadline: this thread keeps it (below), so that
  // it holds in a store without a reaper too.
  const WaitId wait = Await(image_id, absl::InfiniteFuture(),
                            [&result, &ended](absl::StatusOr<ImageRef> answer) {
                              result = std::move(answer);
                              ended.Notify();
                            });
  while (wait != 0 && !ended.HasBeenNotified()) {
    const absl::Time now = absl::Now();
    if (now >= deadline) {
      CancelWait(wait, WaitTimedOut(image_id, /*newer_than=*/0));
      break;
    }
    if (is_cancelled && is_cancelled()) {
      CancelWait(wait,
                 absl::CancelledError("wait was cancelled by the client"));
      break;
    }
    ended.WaitForNotificationWithDeadline(
        is_cancelled ? std::min(deadline, now + kCancellationPoll) : deadline);
  }
  // The wait may have ended on another thread that is still in `done`.
  ended.WaitForNotification();
  return result;
}

absl::StatusOr<ImageRef> ImageStore::GetGeneration(std::string_view image_id,
                                                   uint64_t generation) const {
  if (absl::Status valid = internal::ValidateReadableId(image_id);
      !valid.ok()) {
    return valid;
  }
  absl::ReaderMutexLock lock(&mutex_);
  ImageRef current = FindLive(image_id);
  if (generation == 0 ||
      (current != nullptr && current->generation() == generation)) {
    if (current != nullptr) {
      LruTouch(*current);
      return current;
    }
  } else {
    auto [first, last] = retired_.equal_range(generation);
    for (; first != last; ++first) {
      if (ImageRef held = first->second.lock();
          held != nullptr && held->image_id() == image_id) {
        return held;
      }
    }
  }
  if (generation == 0 || current == nullptr) {
    return absl::NotFoundError(
        absl::StrCat("no image '", std::string(image_id), "'"));
  }
  return absl::NotFoundError(absl::StrCat(
      "generation ", generation, " of image '", std::string(image_id),
      "' is no longer stored (current: ", current->generation(), ")"));
}

absl::Status ImageStore::Delete(std::string_view image_id,
                                std::optional<uint64_t> if_generation_match) {
  if (absl::Status valid = internal::ValidateImageId(image_id); !valid.ok()) {
    return valid;
  }
  ImageRef deleted;  // released after the lock, it may be large
  std::vector<absl::AnyInvocable<void()>> watchers;  // called after the lock
  {
    absl::MutexLock lock(&mutex_);
    ImageRef current = FindLive(image_id);
    if (current == nullptr) {
      return absl::NotFoundError(
          absl::StrCat("no image '", std::string(image_id), "'"));
    }
    if (if_generation_match.has_value() &&
        *if_generation_match != current->generation()) {
      return absl::AbortedError(
          absl::StrCat("image '", std::string(image_id), "' is at generation ",
                       current->generation(), ", not ", *if_generation_match));
    }
    auto it = images_.find(image_id);
    deleted = std::move(it->second);
    images_.erase(it);
    Retire(deleted);
    RecordEvent(ImageEvent::Kind::kDeleted, *deleted, 0, &watchers);
  }
  for (auto& ready : watchers) ready();
  return absl::OkStatus();
}

ListResult ImageStore::List(std::string_view prefix, size_t page_size,
                            std::string_view page_token) const {
  constexpr size_t kDefaultPageSize = 1000;
  if (page_size == 0) page_size = kDefaultPageSize;
  ListResult result;
  absl::ReaderMutexLock lock(&mutex_);
  const absl::Time now = options_.clock();
  auto it = page_token.empty() ? images_.lower_bound(prefix)
                               : images_.upper_bound(page_token);
  if (it != images_.end() && it->first < prefix)
    it = images_.lower_bound(prefix);
  for (;
       it != images_.end() && it->first.compare(0, prefix.size(), prefix) == 0;
       ++it) {
    if (IsExpired(*it->second, now)) continue;
    if (result.images.size() == page_size) {
      result.next_page_token = result.images.back()->image_id();
      break;
    }
    result.images.push_back(it->second);
  }
  return result;
}

size_t ImageStore::RemoveExpired() {
  std::vector<ImageRef> expired;                     // released after the lock
  std::vector<absl::AnyInvocable<void()>> watchers;  // called after the lock
  {
    absl::MutexLock lock(&mutex_);
    const absl::Time now = options_.clock();
    while (!expiry_queue_.empty() && expiry_queue_.begin()->first <= now) {
      auto it = images_.find(expiry_queue_.begin()->second);
      if (it != images_.end() && IsExpired(*it->second, now)) {
        expired.push_back(std::move(it->second));
        images_.erase(it);
        Retire(expired.back());  // also pops the queue entry
        RecordEvent(ImageEvent::Kind::kExpired, *expired.back(), 0, &watchers);
      } else {
        expiry_queue_.erase(expiry_queue_.begin());
      }
    }
    expired_images_ += expired.size();
  }
  for (auto& ready : watchers) ready();
  return expired.size();
}

void ImageStore::ReaperLoop() {
  while (true) {
    uint64_t publishes_seen;
    {
      absl::MutexLock lock(&reaper_mutex_);
      if (reaper_stop_) return;
      publishes_seen = reaper_wakeups_;
    }
    RemoveExpired();
    ExpireWaits(absl::Now());
    CutOffStalledPushes();
    // Retained buffers and waits are due on the real clock; expiry is on
    // the store's.
    absl::Time next_expiry = budget_->TrimRetained(absl::Now());
    {
      absl::ReaderMutexLock lock(&mutex_);
      if (!expiry_queue_.empty()) {
        next_expiry = std::min(next_expiry, expiry_queue_.begin()->first);
      }
      if (!wait_deadlines_.empty()) {
        next_expiry = std::min(next_expiry, wait_deadlines_.begin()->first);
      }
    }
    {
      absl::MutexLock lock(&pushes_mutex_);
      if (!push_checks_.empty()) {
        next_expiry = std::min(next_expiry, push_checks_.begin()->first);
      }
    }
    absl::MutexLock lock(&reaper_mutex_);
    // Something due sooner may have come meanwhile: look again.
    if (reaper_wakeups_ != publishes_seen) continue;
    reaper_wakes_at_ = next_expiry;
    while (!reaper_stop_ && reaper_wakeups_ == publishes_seen &&
           !reaper_wakeup_.WaitWithDeadline(&reaper_mutex_, next_expiry)) {
    }
    reaper_wakes_at_ = absl::InfiniteFuture();
  }
}

absl::Time ImageStore::restored_at() const {
  absl::MutexLock lock(&mutex_);
  return restored_at_;
}

StoreStats ImageStore::Stats() const {
  absl::ReaderMutexLock lock(&mutex_);
  StoreStats stats{images_.size(), stored_bytes_, budget_->used(),
                   budget_->retained_bytes(), waits_.size()};
  stats.expired_images = expired_images_;
  stats.evicted_images = evicted_images_;
  stats.evicted_bytes = evicted_bytes_;
  // Lock order: the store's, then the leases'.
  leases_->ForEach([&](const StoredImage& image) {
    mutex_.AssertReaderHeld();  // held by Stats, around this call
    ++stats.leased_generations;
    stats.leased_bytes += image.charged_bytes_;
    auto current = images_.find(image.image_id());
    if (current == images_.end() || current->second.get() != &image) {
      stats.leased_superseded_bytes += image.charged_bytes_;
    }
  });
  return stats;
}

void ImageStore::Shutdown() {
  std::vector<WaitCallback> ended;          // called after the lock
  std::vector<EventNotification> notified;  // the same
  {
    absl::MutexLock lock(&mutex_);
    shutting_down_ = true;
    ended.reserve(waits_.size());
    for (auto& [id, wait] : waits_) ended.push_back(std::move(wait.done));
    waits_.clear();
    waits_by_image_.clear();
    wait_deadlines_.clear();
    notified.swap(notifications_);
  }
  streams_->Shutdown();
  for (WaitCallback& done : ended) {
    done(absl::UnavailableError("server is shutting down"));
  }
  for (EventNotification& notification : notified) notification.ready();
  absl::MutexLock lock(&reaper_mutex_);
  reaper_stop_ = true;
  reaper_wakeup_.Signal();
}

}  // namespace h5depot::server
