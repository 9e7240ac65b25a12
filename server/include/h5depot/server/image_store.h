// h5depot::server::ImageStore: the in-RAM image store at the heart of
// h5depotd. It knows nothing of gRPC and can be used, tested and
// benchmarked alone.
//
// Images are immutable, reference-counted buffers. A push writes into a
// PendingImage that nobody else can see; Publish() verifies it and swaps it
// in atomically as a new generation. Anyone holding an ImageRef keeps
// reading the generation they got, whatever happens to the image id later.
//
// Memory: every byte of every image, pending or published, pinned by a
// reader or current, counts against StoreOptions::max_memory_bytes until
// its buffer is freed. A push that would exceed the limit is refused when it
// begins, before any data is accepted. A push may also be charged to a
// Quota (PushRequest::quota), one tenant's share: its bytes count against
// that quota too, from the push's start until the generation's buffer is
// freed, whoever replaced or deleted it meanwhile.
//
// Progress: a push that does not keep up is cut off (StoreOptions'
// push_idle_timeout and push_min_bytes_per_second), so that one stalled
// client cannot hold its reservation, and with it everyone else's pushes,
// for ever. The store decides; the transport that carries the push says
// how to cut it off (ImageStore::BeginPush's `cut_off`).
//
// Thread safety: all methods may be called concurrently.
#ifndef H5DEPOT_SERVER_IMAGE_STORE_H_
#define H5DEPOT_SERVER_IMAGE_STORE_H_

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <string_view>
#include <thread>
#include <unordered_map>
#include <utility>
#include <vector>

#include "absl/base/call_once.h"
#include "absl/base/thread_annotations.h"
#include "absl/functional/any_invocable.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "h5depot/internal/memfd.h"

namespace h5depot::internal {
class StreamingChecksum;
}  // namespace h5depot::internal

namespace h5depot::server {

class MemoryBudget;
class PushWatch;
class StreamTable;

// One tenant's share of a store, charged by the pushes that name it
// (PushRequest::quota): a memory quota and a cap on pushes under way,
// checked by ImageStore::BeginPush beside the store's own limits.
//
// Charging: a push's declared size from its start until the buffer of the
// generation it made is freed. So a generation that was replaced or
// deleted but is still pinned by a reader keeps counting, to the tenant
// that pushed it, whoever replaced or deleted it; and a push replacing an
// image needs room for both generations until it is published. A failed,
// refused or cut-off push gives everything back when its PendingImage is
// destroyed.
//
// Thread safety: all methods may be called concurrently; the counters are
// atomics, so charging costs a push no lock.
class Quota {
 public:
  static constexpr uint64_t kUnlimited = ~uint64_t{0};

  // `owner` names the tenant in refusals ("principal 'ingest'").
  explicit Quota(std::string owner) : owner_(std::move(owner)) {}
  Quota(const Quota&) = delete;
  Quota& operator=(const Quota&) = delete;

  const std::string& owner() const { return owner_; }

  // The limits apply to pushes that begin afterwards; what is charged
  // already stays charged (a lowered quota refuses pushes until usage is
  // back under it). kUnlimited: none.
  void SetLimits(uint64_t max_memory_bytes, uint64_t max_pending_pushes) {
    max_memory_bytes_.store(max_memory_bytes, std::memory_order_relaxed);
    max_pending_pushes_.store(max_pending_pushes, std::memory_order_relaxed);
  }
  uint64_t max_memory_bytes() const {
    return max_memory_bytes_.load(std::memory_order_relaxed);
  }
  uint64_t max_pending_pushes() const {
    return max_pending_pushes_.load(std::memory_order_relaxed);
  }

  // Bytes charged now: pending pushes and generations not yet freed.
  uint64_t used_bytes() const {
    return used_bytes_.load(std::memory_order_relaxed);
  }
  // Pushes begun and not yet published or dropped.
  uint64_t pending_pushes() const {
    return pending_pushes_.load(std::memory_order_relaxed);
  }

 private:
  friend class ImageStore;
  friend class PendingImage;
  friend class StoredImage;

  // Counts up `counter` by `amount` if it stays within `limit`.
  static bool TryAdd(std::atomic<uint64_t>& counter, uint64_t amount,
                     uint64_t limit) {
    uint64_t used = counter.load(std::memory_order_relaxed);
    do {
      if (amount > limit || used > limit - amount) return false;
    } while (!counter.compare_exchange_weak(used, used + amount,
                                            std::memory_order_relaxed));
    return true;
  }

  const std::string owner_;
  std::atomic<uint64_t> max_memory_bytes_{kUnlimited};
  std::atomic<uint64_t> max_pending_pushes_{kUnlimited};
  std::atomic<uint64_t> used_bytes_{0};
  std::atomic<uint64_t> pending_pushes_{0};
};

struct StoreOptions {
  // Bytes of image data the store may hold at once, pending pushes included.
  uint64_t max_memory_bytes = uint64_t{1} << 30;
  // Largest single image accepted.
  uint64_t max_image_bytes = uint64_t{1} << 30;
  // Refuse images without an HDF5 signature (at 0, 512, 1024, ...).
  bool require_hdf5 = true;
  // The store's notion of now; replaceable so tests can move time.
  std::function<absl::Time()> clock = [] { return absl::Now(); };
  // Run a thread that deletes expired images when they expire, ends waits
  // at their deadline and cuts off pushes that fall behind. Expired images
  // are invisible from their expiry time on either way.
  bool start_reaper = true;
  // The progress a push must make, on `clock`. A push that has not been
  // published (or failed) is cut off when either
  //   - nothing has arrived for push_idle_timeout (since its last byte, or
  //     since it began), or
  //   - push_idle_timeout after it began, it has received less than
  //     push_min_bytes_per_second times the time since then: it gets
  //     push_idle_timeout of grace, then must average the minimum rate.
  // A client that sends at the minimum rate or faster, without a pause as
  // long as the idle timeout, is never cut off; one that trickles a byte
  // now and then is cut off about push_idle_timeout after it began. A push
  // whose bytes have all arrived is held to the idle rule alone: it must
  // end (publish) within the idle timeout of its last byte. Zero (or
  // infinite) push_idle_timeout: never cut off; zero
  // push_min_bytes_per_second: only the idle rule.
  absl::Duration push_idle_timeout = absl::Seconds(30);
  uint64_t push_min_bytes_per_second = uint64_t{256} << 10;
  // What a push that does not fit in max_memory_bytes does.
  enum class Eviction {
    kNone,  // it is refused (RESOURCE_EXHAUSTED)
    // The least recently used images nobody holds (no reader, no call
    // under way, no client mapping) are deleted, oldest use first, until it
    // fits; it is refused only if it still cannot. A use is a publish, a
    // fetch, a stat or a read; changes show evictions as kEvicted.
    kLru,
  };
  Eviction eviction = Eviction::kNone;
  // How many of the latest changes (ImageEvent) the store keeps for
  // watchers: a watcher further behind than this learns that it lost
  // events rather than holding memory on the store (at least 1).
  size_t event_history = 65536;
};

// One change to the store, as watchers see it (ImageStore::ReadEvents).
//
// Every change takes the next number of the store's one counter, its
// sequence: a publish's sequence is the generation it made, a delete's,
// an expiry's or an eviction's a number no generation gets. So a store's
// changes are numbered in the order they took effect, and a consumer that
// holds generation G of an image (or saw sequence G) can ask for every
// change after it. The numbers have gaps only where a replica's publish
// (PushRequest::replica_generation) moved the counter forward; such a
// publish's sequence is its generation if that was ahead of the counter,
// else the counter's next number (after the generation, never before).
struct ImageEvent {
  enum class Kind : uint8_t {
    kPublished,  // the first generation under its id (or the first after
                 // a delete or an expiry)
    kReplaced,   // a new generation replacing the current one
    kDeleted,    // removed by a delete
    kExpired,    // removed at the end of its time to live
    kEvicted,    // removed to make room (StoreOptions::eviction)
  };
  Kind kind = Kind::kPublished;
  uint64_t sequence = 0;
  std::string image_id;
  // Published, replaced: the new generation and its size. Deleted,
  // expired, evicted: the generation removed and its size.
  uint64_t generation = 0;
  uint64_t size = 0;
  // Replaced: the generation it replaced; else 0.
  uint64_t replaced_generation = 0;
  absl::Time time;  // when it took effect, on StoreOptions::clock
};

// A piece of the store's change history (ImageStore::ReadEvents).
struct EventPage {
  // The changes under the prefix asked for, in sequence order.
  std::vector<ImageEvent> events;
  // Changes after the position asked for that the store no longer keeps
  // (StoreOptions::event_history), or never knew (before it started):
  // sequences lost_first through lost_last. 0 and 0: none.
  uint64_t lost_first = 0;
  uint64_t lost_last = 0;
  // Where the next read goes on from: every change up to this sequence
  // has been looked at.
  uint64_t position = 0;
  // Whether more changes are kept after `position` now (a read looks at a
  // bounded number at a time).
  bool more = false;
};

// One published generation of an image. Immutable; shared by the store and
// every call reading it.
//
// Large images live in memfds (h5depot/internal/memfd.h), sealed so that
// they can be handed to clients on this host as descriptors: the store's
// own, sealed with kSealsFromServer as they are made (the store's mapping
// received the bytes and is never written again once published), or a
// client's, pushed sealed (ImageStore::PublishSealed).
class StoredImage {
 public:
  ~StoredImage();
  StoredImage(const StoredImage&) = delete;
  StoredImage& operator=(const StoredImage&) = delete;

  const std::string& image_id() const { return image_id_; }
  uint64_t generation() const { return generation_; }
  // The XXH3-64 of the bytes. Known from the push for bytes that were
  // sent; for an image pushed as a sealed memfd, computed on the first
  // call (one pass over the bytes, once).
  uint64_t checksum() const;
  // The checksum if it is known without a pass over the bytes.
  std::optional<uint64_t> known_checksum() const;
  absl::Time created() const { return created_; }
  absl::Time expires() const { return expires_; }  // InfiniteFuture: never
  const uint8_t* data() const { return data_; }
  uint64_t size() const { return size_; }

  // The sealed memfd holding the bytes from offset 0, for handing to a
  // client on this host; -1 if they are in anonymous memory (small
  // images, or no memfd could be made). Valid as long as the image. For a
  // stream step in a writer's step buffer, sealed only against resizing.
  int memfd() const { return memfd_; }

 private:
  friend class ImageStore;
  friend class PendingImage;
  friend class ImageLease;
  StoredImage() = default;

  std::string image_id_;
  uint64_t generation_ = 0;
  mutable uint64_t checksum_ = 0;
  // Set for a sealed push: checksum_ is computed on first use.
  bool checksum_deferred_ = false;
  mutable absl::once_flag checksum_once_;
  mutable std::atomic<bool> checksum_computed_{false};
  absl::Time created_;
  absl::Time expires_ = absl::InfiniteFuture();
  uint8_t* data_ = nullptr;
  uint64_t size_ = 0;
  uint64_t capacity_ = 0;  // of the buffer at data_, at least size_
  int memfd_ = -1;
  // A step buffer's release pipe (ImageStore::PublishSealed), closed once
  // the memfd is unmapped and closed; -1 for any other image.
  int release_signal_ = -1;
  // Once its memfd has gone to a client (who may map it for as long as it
  // likes), its memory is never reused for another image.
  mutable std::atomic<bool> shared_{false};
  // Bytes charged to the budget and the quota from the push's start until
  // the buffer is freed: size_, or a sealed push's whole memfd.
  uint64_t charged_bytes_ = 0;
  std::shared_ptr<MemoryBudget> budget_;
  std::shared_ptr<Quota> quota_;  // charged charged_bytes_; null: none
  // Its place in the store's order of use, while current, with eviction
  // on (guarded by the store's lru_mutex_).
  // A stream's step (StreamTable): freed by its stream, never evicted.
  bool stream_step_ = false;
  mutable StoredImage* lru_older_ = nullptr;
  mutable StoredImage* lru_newer_ = nullptr;
};

using ImageRef = std::shared_ptr<const StoredImage>;

class LeaseRegistry;

// A client's hold on a generation whose memfd it was handed: the client
// may map it until it says it is done, so the generation stays pinned
// (and counted against the memory limit) and shows in StoreStats as
// leased, until the lease is destroyed. Movable; may outlive the store.
class ImageLease {
 public:
  ImageLease() = default;
  ~ImageLease() { Reset(); }
  ImageLease(ImageLease&& other) noexcept = default;
  ImageLease& operator=(ImageLease&& other) noexcept {
    if (this != &other) {
      Reset();
      registry_ = std::move(other.registry_);
      image_ = std::move(other.image_);
    }
    return *this;
  }
  ImageLease(const ImageLease&) = delete;
  ImageLease& operator=(const ImageLease&) = delete;

  const ImageRef& image() const { return image_; }
  void Reset();

 private:
  friend class ImageStore;
  ImageLease(std::shared_ptr<LeaseRegistry> registry, ImageRef image)
      : registry_(std::move(registry)), image_(std::move(image)) {}

  std::shared_ptr<LeaseRegistry> registry_;
  ImageRef image_;
};

// What a push declares before sending data.
struct PushRequest {
  std::string image_id;
  uint64_t size = 0;
  uint64_t checksum = 0;                        // XXH3-64 of the whole image
  std::optional<uint64_t> if_generation_match;  // 0: only if absent
  absl::Duration ttl = absl::ZeroDuration();    // zero: never expires
  // Not 0: the image is a copy of this generation held by another server
  // (a cluster's replica), published under it rather than a new one. The
  // store's counter then moves past it, as a Lamport clock does, so that
  // every later change here is numbered after it: a generation the client
  // saw anywhere in the cluster is older than any this store makes next.
  // FAILED_PRECONDITION if the store holds that generation of the image or
  // a newer one; INVALID_ARGUMENT if it is over kMaxGenerationLead ahead
  // of both the counter and the clock (in microseconds).
  uint64_t replica_generation = 0;
  // The push appends a step to the stream named `image_id` (StreamTable):
  // it is published as "image_id@N", N the step's number, under the
  // stream's policy. No precondition, time to live or replica generation.
  bool stream_append = false;
  // With stream_append: a copy of this step of the stream held by another
  // server, appended as that step (StreamTable::ReserveStepNumber).
  std::optional<uint64_t> replica_step;
  // The share the push is charged to, beside the store's limit (see
  // Quota); null: only the store's limit.
  std::shared_ptr<Quota> quota;
  // Set when the push brings back an image from a snapshot: it is
  // published with this generation, creation and expiry time (`ttl` is
  // not used), as no change (no event is recorded), and the store's
  // counter moves past the generation. Only into a store that has
  // recorded no change yet (FAILED_PRECONDITION otherwise), and only for an
  // id not stored (ALREADY_EXISTS).
  struct Restored {
    uint64_t generation = 0;
    absl::Time created;
    absl::Time expires = absl::InfiniteFuture();
    uint64_t step = 0;  // with stream_append: the step's number
  };
  std::optional<Restored> restored;
};

class ImageStore;

// How the transport carrying a push cuts it off (see
// ImageStore::BeginPush): given why, it makes the transport stop receiving
// and drop the PendingImage, and tell its client that status.
using PushCutOff = absl::AnyInvocable<void(const absl::Status&)>;

// An image being received. Invisible to everyone until Publish() succeeds;
// destroying it unpublished frees its buffer and its memory reservation.
// Used by one thread at a time.
class PendingImage {
 public:
  ~PendingImage();
  PendingImage(const PendingImage&) = delete;
  PendingImage& operator=(const PendingImage&) = delete;

  // Appends the next `size` bytes. INVALID_ARGUMENT (and the push is
  // spoiled) if they would exceed the declared size; once the push has
  // been cut off, its cut_status() (and the buffer is freed).
  absl::Status Append(const void* data, size_t size);

  // Receiving in place, with no copy: the bytes still to come are written
  // straight into Unreceived() (by recv(), say), then counted, in order,
  // with CommitReceived(n), which checksums them.
  uint8_t* Unreceived();
  absl::Status CommitReceived(size_t size);

  uint64_t received() const { return received_; }
  // The XXH3-64 of the bytes received so far: what a transport with no
  // checksum of its own (HTTP's PUT, whose client may send none) publishes
  // with, once every byte is in.
  uint64_t received_checksum() const;
  uint64_t declared_size() const { return request_.size; }

  // Why the store cut this push off for falling behind (DEADLINE_EXCEEDED,
  // with a message for the client); OK if it has not. Thread-safe.
  absl::Status cut_status() const;

  // Verifies size, checksum, format and the generation precondition, then
  // makes the image current. The PendingImage is spent afterwards, whatever
  // the outcome: INVALID_ARGUMENT (size, not HDF5), DATA_LOSS (checksum),
  // ALREADY_EXISTS / ABORTED (generation: someone else's push or delete won
  // the race), UNAVAILABLE (store shutting down), DEADLINE_EXCEEDED (cut
  // off before it got here: cut_status()). Once Publish has begun the push
  // is never cut off.
  absl::StatusOr<ImageRef> Publish();
  // The same, checked against `checksum`, sent after the data, instead of
  // the request's.
  absl::StatusOr<ImageRef> Publish(uint64_t checksum);

 private:
  friend class ImageStore;
  PendingImage(ImageStore* store, PushRequest request,
               std::unique_ptr<StoredImage> image);
  // Takes the push out of the store's watch; the cut status if it was cut
  // off first. Waits for a cut-off under way on another thread to return.
  absl::Status EndWatch();
  // No longer counts the push among its quota's pending ones (idempotent).
  void EndPending();

  ImageStore* store_;
  PushRequest request_;
  std::unique_ptr<StoredImage> image_;  // null once spent
  uint64_t received_ = 0;
  std::unique_ptr<internal::StreamingChecksum> checksum_;
  // Shared with the store's watch while the push is watched; null if the
  // store has no deadline, or once Publish() has begun.
  std::shared_ptr<PushWatch> watch_;
  // Whether the push counts among request_.quota's pending pushes.
  bool counted_pending_ = false;
  // A stream append holding a place in its stream's queue, given back by
  // the destructor unless it became a step.
  bool holds_stream_place_ = false;
};

struct ListResult {
  std::vector<ImageRef> images;  // sorted by image id
  std::string next_page_token;   // empty after the last page
};

struct StoreStats {
  uint64_t image_count = 0;
  uint64_t stored_bytes = 0;    // current generations
  uint64_t reserved_bytes = 0;  // everything counted against the limit
  // Freed large buffers kept for a moment for the next push of about their
  // size; not image data, not counted against the limit, freed when unused
  // for a second or when a push needs fresh memory.
  uint64_t retained_bytes = 0;
  // Waits registered with Await() (WaitFor's included) not yet ended.
  uint64_t pending_waits = 0;
  // Generations whose memfd clients on this host hold (ImageLease), and
  // their bytes; of those, the bytes of generations no longer current
  // (replaced or deleted while mapped), which reserved_bytes still counts.
  uint64_t leased_generations = 0;
  uint64_t leased_bytes = 0;
  uint64_t leased_superseded_bytes = 0;
  // Images deleted at the end of their time to live, since the store began.
  uint64_t expired_images = 0;
  // Images deleted to make room (StoreOptions::eviction), and their bytes.
  uint64_t evicted_images = 0;
  uint64_t evicted_bytes = 0;
};

class ImageStore {
 public:
  // How far ahead of this store's counter and clock (in microseconds, about
  // 71 minutes) a replica's generation may be (PushRequest): clocks of
  // servers differ, but a number further ahead is a mistake that would
  // spend the counter.
  static constexpr uint64_t kMaxGenerationLead = uint64_t{1} << 32;

  explicit ImageStore(StoreOptions options);
  ~ImageStore();
  ImageStore(const ImageStore&) = delete;
  ImageStore& operator=(const ImageStore&) = delete;

  const StoreOptions& options() const { return options_; }

  // Starts a push: validates the id, the size against the limits, reserves
  // the memory and checks the generation precondition, so that a push bound
  // to fail is refused before its data moves. INVALID_ARGUMENT,
  // RESOURCE_EXHAUSTED (the store's limits, or the request's quota: its
  // memory or its pushes under way), ALREADY_EXISTS (`if_generation_match` 0
  // and the id exists), ABORTED (`if_generation_match` N and the current
  // generation is not N, or there is none), UNAVAILABLE.
  //
  // The push is then watched (StoreOptions::push_idle_timeout). If it falls
  // behind, the reaper (or CutOffStalledPushes) marks it cut off: from then
  // on Append, CommitReceived and Publish fail with its cut_status(), and
  // `cut_off` (may be null) is called once with that status, so that the
  // transport stops waiting for the client's bytes, destroys the
  // PendingImage (which releases the reservation) and answers the client.
  // `cut_off` is called on the reaper's thread, with no lock of the store
  // held; it may destroy the PendingImage itself. It is never called once
  // the PendingImage is destroyed or Publish has begun: both wait for a
  // call under way on another thread to return, so it must be quick and
  // must not wait for the thread that owns the PendingImage.
  absl::StatusOr<std::unique_ptr<PendingImage>> BeginPush(
      PushRequest request, PushCutOff cut_off = nullptr);

  // A push whose bytes are already in `memfd`, a memfd its sender sealed
  // against every change (internal::kSealsFromClient) holding at least
  // request.size bytes: the store keeps that memfd, mapped read-only, and
  // copies nothing. Its whole length is charged to the memory limit and the
  // quota. request.checksum is not used: the image's checksum is computed
  // when first asked for. Errors: INVALID_ARGUMENT (an unsealed or short
  // memfd, not HDF5) and those of BeginPush and Publish.
  //
  // With `release_signal` (the write end of a pipe), the memfd is instead a
  // stream writer's step buffer (docs/STREAMS.md, "Step buffers"): sealed
  // only against resizing (kSealsOfStepBuffer), for a stream append only
  // (INVALID_ARGUMENT otherwise). The image closes `release_signal` once
  // it is freed, after unmapping the buffer: the writer's end then reads
  // end-of-file and it may fill the buffer again.
  absl::StatusOr<ImageRef> PublishSealed(
      PushRequest request, internal::UniqueFd memfd,
      internal::UniqueFd release_signal = internal::UniqueFd());

  // A lease on `image` for a client about to be handed its memfd (which
  // it must have): from now on its memory is never reused.
  ImageLease Lease(ImageRef image);

  // Every call that names an image id checks it against the id rules
  // (h5depot/internal/image_id.h) first: a malformed id is INVALID_ARGUMENT
  // whichever front end it came through, never NOT_FOUND.

  // The current generation of `image_id`; NOT_FOUND if absent or expired.
  absl::StatusOr<ImageRef> Get(std::string_view image_id) const;

  // Waiting for an image to be published: one list of waits, per image id,
  // that costs no thread while it waits. A wait ends exactly once, with
  // its callback called:
  //   - with the image, by the push that publishes it (on the pushing
  //     thread, after the store's lock is released);
  //   - DEADLINE_EXCEEDED at its deadline, by the reaper thread (with
  //     StoreOptions::start_reaper false, only when ExpireWaits() is called);
  //   - UNAVAILABLE by Shutdown();
  //   - with the caller's status by CancelWait().
  // A callback is never called with the store's lock held, so it may call
  // the store again; it should be quick (it runs on someone else's thread).
  using WaitId = uint64_t;  // 0: no wait pending
  using WaitCallback = absl::AnyInvocable<void(absl::StatusOr<ImageRef>)>;

  // Calls `done` with `image_id`'s current generation once it is newer than
  // generation `newer_than` (0: once there is one; generations only grow,
  // so a consumer passing the last one it saw misses no publish). If the
  // answer is known at once (such a generation is current; a malformed id,
  // INVALID_ARGUMENT; a store shut down, UNAVAILABLE; `deadline` passed,
  // DEADLINE_EXCEEDED), `done` runs on this thread before Await returns
  // 0. Otherwise the wait is registered and its id returned.
  WaitId Await(std::string_view image_id, uint64_t newer_than,
               absl::Time deadline, WaitCallback done);
  // Await for any generation.
  WaitId Await(std::string_view image_id, absl::Time deadline,
               WaitCallback done) {
    return Await(image_id, /*newer_than=*/0, deadline, std::move(done));
  }

  // Ends wait `wait` with `status` if it has not ended yet: its callback
  // runs on this thread before CancelWait returns true. False if it has
  // ended already, or is ending on another thread (whose callback call may
  // still be under way): then nothing happens. Ids are never reused, so a
  // stale id is harmless.
  bool CancelWait(WaitId wait, const absl::Status& status);

  // Ends the waits whose deadline is at or before `now` (real time, not
  // StoreOptions::clock) with DEADLINE_EXCEEDED; returns how many.
  size_t ExpireWaits(absl::Time now);

  // Like Get, but blocks the calling thread until `deadline` for the image
  // to be published, as a wait of the list above. DEADLINE_EXCEEDED when
  // it passes (a malformed id is INVALID_ARGUMENT at once), CANCELLED when
  // `is_cancelled` (may be null) turns true, which is polled a few times a
  // second, UNAVAILABLE on shutdown. The deadline is kept by the calling
  // thread, so it holds without a reaper.
  absl::StatusOr<ImageRef> WaitFor(std::string_view image_id,
                                   absl::Time deadline,
                                   const std::function<bool()>& is_cancelled);

  // `generation` of `image_id` if it is current or still held by a reader
  // (0 means current). NOT_FOUND otherwise.
  absl::StatusOr<ImageRef> GetGeneration(std::string_view image_id,
                                         uint64_t generation) const;

  // Removes `image_id`. NOT_FOUND if absent; ABORTED if
  // `if_generation_match` is given and is not the current generation.
  absl::Status Delete(std::string_view image_id,
                      std::optional<uint64_t> if_generation_match);

  // Images whose ids start with `prefix`, after `page_token`, at most
  // `page_size` (0: 1000) of them.
  ListResult List(std::string_view prefix, size_t page_size,
                  std::string_view page_token) const;

  // Deletes the images whose expiry time has come; returns how many.
  size_t RemoveExpired();

  // Cuts off the pushes that have fallen behind by now (StoreOptions::clock)
  // as BeginPush describes; returns how many. The reaper calls it when the
  // first push is due to be looked at.
  size_t CutOffStalledPushes();

  StoreStats Stats() const;

  // When the last image was restored (StoreOptions::clock; PushRequest::
  // restored), InfinitePast if none was. Restores come before any other
  // change, so an image created before this time was restored, and every
  // image pushed since was created after it.
  absl::Time restored_at() const;

  // Watching the store's changes: the history of the latest ones
  // (ImageEvent, StoreOptions::event_history), read by each watcher at its
  // own pace from its own position, so that a slow watcher costs the store
  // nothing but the history it keeps anyway.

  // The sequence of the latest change (a watch "from now" starts after it).
  uint64_t LatestSequence() const;

  // Up to `max_events` changes after sequence `position` to ids that start
  // with `prefix` and that `visible` (may be null) accepts, looking at no
  // more than `max_scan` changes. UNAVAILABLE once the store is shutting
  // down.
  absl::StatusOr<EventPage> ReadEvents(
      std::string_view prefix, uint64_t position, size_t max_events,
      size_t max_scan,
      const std::function<bool(std::string_view)>& visible = nullptr) const;

  // Calls `ready` once, when a change after `position` to an id starting
  // with `prefix` has taken effect, or the store is shutting down: on the
  // thread that made it (after the store's lock is released), so it must
  // be quick. Returns 0 without calling it if that is so already (read
  // again); otherwise the id of the notification, for
  // CancelEventNotification.
  using NotificationId = uint64_t;
  NotificationId NotifyOnEvent(std::string_view prefix, uint64_t position,
                               absl::AnyInvocable<void()> ready);
  // Forgets notification `id` if it has not been called yet; false if it
  // has (or is being called on another thread).
  bool CancelEventNotification(NotificationId id);

  // Refuses new pushes and ends every wait with UNAVAILABLE (new ones too,
  // at once), and calls every event notification. Idempotent.
  void Shutdown();

  // The store's streams (server/src/stream_table_internal.h).
  StreamTable& streams() { return *streams_; }
  const StreamTable& streams() const { return *streams_; }

 private:
  friend class PendingImage;

  // Removes freed steps of streams (StreamTable's remove_steps).
  void RemoveStreamSteps(const std::vector<std::string>& step_ids);

  absl::StatusOr<ImageRef> Install(std::unique_ptr<StoredImage> image,
                                   const PushRequest& request);
  absl::StatusOr<ImageRef> InstallRestored(std::unique_ptr<StoredImage> image,
                                           const PushRequest& request);
  // The checks and charges a push passes before its data moves (those of
  // BeginPush but the allocation): charges `charge` bytes to the budget
  // and the quota, and counts the push among the quota's pending ones.
  // On an error nothing stays charged.
  absl::Status Admit(const PushRequest& request, uint64_t charge);
  // Admit's part for a stream append: a place in the stream's queue, then
  // the charges.
  absl::Status AdmitStreamAppend(const PushRequest& request, uint64_t charge);
  // Admit's charges: the pending push, the tenant's memory, the store's.
  absl::Status Charge(const PushRequest& request, uint64_t charge);
  // Install for a stream append: numbers the step and publishes it.
  absl::StatusOr<ImageRef> InstallStep(std::unique_ptr<StoredImage> image,
                                       const PushRequest& request);
  absl::Status CheckGeneration(std::string_view image_id,
                               std::optional<uint64_t> if_generation_match)
      const ABSL_SHARED_LOCKS_REQUIRED(mutex_);
  ImageRef FindLive(std::string_view image_id) const
      ABSL_SHARED_LOCKS_REQUIRED(mutex_);
  void Retire(const ImageRef& image) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mutex_);
  // The order of use of current images, with eviction on (no-ops
  // without): the newest is the last published or used. Lock order: the
  // store's mutex_ (shared is enough to touch), then lru_mutex_.
  void LruAdd(const StoredImage& image) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mutex_);
  void LruRemove(const StoredImage& image)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mutex_);
  void LruTouch(const StoredImage& image) const
      ABSL_SHARED_LOCKS_REQUIRED(mutex_);
  // Deletes least recently used images nobody holds until `charge` more
  // bytes fit in the memory limit, or none is left to delete; returns
  // whether any was.
  bool EvictFor(uint64_t charge);
  // Records a change that takes the next sequence (which it returns), and
  // moves the notifications it satisfies to `ready`, to be called once the
  // lock is released. A publish's generation is `replica_generation` if
  // not 0 (the sequence is then at least that), else its sequence.
  uint64_t RecordEvent(ImageEvent::Kind kind, const StoredImage& image,
                       uint64_t replaced_generation,
                       std::vector<absl::AnyInvocable<void()>>* ready,
                       uint64_t replica_generation = 0)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mutex_);
  // Why `replica_generation` cannot be published as `image_id`'s next
  // generation (PushRequest::replica_generation); OK if it can.
  absl::Status CheckReplicaGeneration(std::string_view image_id,
                                      uint64_t replica_generation) const
      ABSL_SHARED_LOCKS_REQUIRED(mutex_);
  // The slot in the ring of the oldest kept change with a sequence after
  // `position` (event_count_ if none).
  size_t FirstEventAfter(uint64_t position) const
      ABSL_SHARED_LOCKS_REQUIRED(mutex_);
  // Removes wait `wait` from the list and hands over its callback.
  WaitCallback TakeWait(WaitId wait) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mutex_);
  void ReaperLoop();
  // Forgets a watched push (no-op if it is not watched any more).
  void Unwatch(uint64_t push);

  const StoreOptions options_;
  const std::shared_ptr<MemoryBudget> budget_;
  const std::shared_ptr<LeaseRegistry> leases_;

  mutable absl::Mutex mutex_;
  std::map<std::string, ImageRef, std::less<>> images_ ABSL_GUARDED_BY(mutex_);
  // Replaced or deleted generations that a reader may still hold.
  // By generation: a replica's generation may equal one this store made
  // for another id, so each entry names its image (checked on lookup) and a
  // generation may have several.
  std::unordered_multimap<uint64_t, std::weak_ptr<const StoredImage>> retired_
      ABSL_GUARDED_BY(mutex_);
  std::set<std::pair<absl::Time, std::string>> expiry_queue_
      ABSL_GUARDED_BY(mutex_);
  uint64_t next_generation_ ABSL_GUARDED_BY(mutex_);
  // The pending waits, by id, by image id and by deadline (waits without
  // one are not in `wait_deadlines_`).
  struct Wait {
    WaitCallback done;
    std::multimap<std::string, WaitId, std::less<>>::iterator by_image;
    uint64_t newer_than = 0;
    absl::Time deadline;
  };
  std::unordered_map<WaitId, Wait> waits_ ABSL_GUARDED_BY(mutex_);
  std::multimap<std::string, WaitId, std::less<>> waits_by_image_
      ABSL_GUARDED_BY(mutex_);
  std::set<std::pair<absl::Time, WaitId>> wait_deadlines_
      ABSL_GUARDED_BY(mutex_);
  WaitId next_wait_ ABSL_GUARDED_BY(mutex_) = 1;
  uint64_t stored_bytes_ ABSL_GUARDED_BY(mutex_) = 0;
  absl::Time restored_at_ ABSL_GUARDED_BY(mutex_) = absl::InfinitePast();
  uint64_t expired_images_ ABSL_GUARDED_BY(mutex_) = 0;
  uint64_t evicted_images_ ABSL_GUARDED_BY(mutex_) = 0;
  uint64_t evicted_bytes_ ABSL_GUARDED_BY(mutex_) = 0;
  mutable absl::Mutex lru_mutex_ ABSL_ACQUIRED_AFTER(mutex_);
  mutable StoredImage* lru_oldest_ ABSL_GUARDED_BY(lru_mutex_) = nullptr;
  mutable StoredImage* lru_newest_ ABSL_GUARDED_BY(lru_mutex_) = nullptr;
  // The latest changes, oldest first from `event_head_`, in a ring of at
  // most StoreOptions::event_history entries whose strings are reused.
  // Their sequences grow along the ring, so a sequence's slot is found by
  // binary search. The ring holds every change after `history_after_`.
  std::vector<ImageEvent> events_ ABSL_GUARDED_BY(mutex_);
  uint64_t history_after_ ABSL_GUARDED_BY(mutex_);
  size_t event_head_ ABSL_GUARDED_BY(mutex_) = 0;
  size_t event_count_ ABSL_GUARDED_BY(mutex_) = 0;
  struct EventNotification {
    NotificationId id;
    std::string prefix;
    absl::AnyInvocable<void()> ready;
  };
  std::vector<EventNotification> notifications_ ABSL_GUARDED_BY(mutex_);
  NotificationId next_notification_ ABSL_GUARDED_BY(mutex_) = 1;
  // The pushes under way, watched for progress, with a lock of their own so
  // that watching costs the image map nothing. Never held with `mutex_`,
  // nor with a PushWatch's lock.
  struct WatchedPush {
    std::shared_ptr<PushWatch> watch;
    absl::Time next_check;  // its entry in `push_checks_`
  };
  absl::Mutex pushes_mutex_;
  std::unordered_map<uint64_t, WatchedPush> watched_pushes_
      ABSL_GUARDED_BY(pushes_mutex_);
  // When each watched push is next looked at, earliest first.
  std::set<std::pair<absl::Time, uint64_t>> push_checks_
      ABSL_GUARDED_BY(pushes_mutex_);
  uint64_t next_push_ ABSL_GUARDED_BY(pushes_mutex_) = 1;

  // Set under `mutex_`; read without it where a stale answer is harmless
  // (BeginPush: Install() looks again under the lock).
  std::atomic<bool> shutting_down_{false};

  // The reaper sleeps on a mutex of its own until the earliest expiry,
  // wait deadline or watched push's check (or until a retained buffer is
  // due to be freed, see MemoryBudget), and is woken only by something due
  // sooner (or by shutdown), so that publishes without a time to live
  // never wake it, and a push only if it is the first one due.
  void WakeReaperFor(absl::Time due);
  absl::Mutex reaper_mutex_;
  absl::CondVar reaper_wakeup_;
  absl::Time reaper_wakes_at_ ABSL_GUARDED_BY(reaper_mutex_) =
      absl::InfiniteFuture();
  uint64_t reaper_wakeups_ ABSL_GUARDED_BY(reaper_mutex_) = 0;
  bool reaper_stop_ ABSL_GUARDED_BY(reaper_mutex_) = false;
  std::thread reaper_;

  // Last, so that it goes first: its timer thread calls into the store.
  std::unique_ptr<StreamTable> streams_;
};

}  // namespace h5depot::server

#endif  // H5DEPOT_SERVER_IMAGE_STORE_H_
