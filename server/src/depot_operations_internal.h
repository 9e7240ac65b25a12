// h5depot::server::DepotOperations: the server's operations, written once,
// between the ImageStore and the transports that carry them. Internal to
// the server; no gRPC or lane type appears here.
//
// Each transport is a codec over this layer: it parses its wire format,
// calls one operation, and encodes the answer. The gRPC service
// (depot_service.cc) and the data lane (lane_server.cc) are the two today;
// a third transport is one more codec. Everything that is a rule of the
// service rather than of a wire format lives here and only here:
//
//   - authorisation: every operation starts with Authorize(), the one
//     place that decides whether a caller may do it, whichever transport
//     the call came through (the --auth-file's tokens, roles and prefixes:
//     access_rules_internal.h);
//   - validation: image ids (checked by the store, INVALID_ARGUMENT), the
//     request's fields;
//   - clamps: a push's time to live (kMaxTtl), a wait's length (kMaxWait),
//     a read's range (ClampRange); caps: how many waits may be under way
//     (max_waits);
//   - limits per principal, with access rules: each principal's memory
//     quota and pushes under way (a Quota the store charges) and its
//     waits, kept by principal name (PrincipalLimits; without access
//     rules there are no principals, and only the server's limits hold);
//   - the description of an image (Describe), which each codec only copies
//     into its wire struct;
//   - a push's progress deadline: a push that falls behind is cut off by
//     the store's watch (StoreOptions::push_idle_timeout, the rule itself,
//     kept with the memory it protects); each codec only says, at
//     BeginPush, how its transport stops the push and tells the client.
//
// Errors follow the error contract in proto/h5depot/v1/depot.proto.
//
// Thread safety: all methods may be called concurrently. Cost: on the
// paths that move images (push, fetch, read) the layer adds no allocation,
// lock or copy to what the store does, but with access rules one short
// lock per push or wait as it begins (the principal's state; its end is
// an atomic decrement).
#ifndef H5DEPOT_SERVER_DEPOT_OPERATIONS_INTERNAL_H_
#define H5DEPOT_SERVER_DEPOT_OPERATIONS_INTERNAL_H_

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "h5depot/server/image_store.h"
#include "server/src/access_rules_internal.h"
#include "server/src/stream_table_internal.h"

namespace h5depot::server {

// The transport a call came through.
enum class Transport { kGrpc, kLaneTcp, kLaneUnix, kHttp };

// Whether a peer named in gRPC's notation (Caller::peer) is on this host.
// "fd:N" is a Unix socket connection the server accepted itself
// (unix_access_internal.h).
bool IsLocalPeer(std::string_view peer);

// What a caller asks to do, as Authorize() sees it.
enum class Operation {
  kPush,
  kFetch,
  kRead,  // Read and OpenReader
  kStat,
  kList,  // the image id is the listed prefix
  kDelete,
  kGetLimits,  // no image id
  kWatch,      // the image id is the watched prefix
};

// Who is calling: the transport, the peer and the bearer token the call
// carries. Made for every call, so it is cheap to make: the peer's address
// and the token are looked up only if asked for (from gRPC's context the
// address costs an allocation), or were learnt once per connection (the
// lane). Valid for the duration of the call it was made for.
class Caller {
 public:
  // Returns the address of the peer of `context`.
  using PeerLookup = std::string (*)(const void* context);
  // Returns the bearer token of the call of `context` (empty if none),
  // valid as long as the call.
  using TokenLookup = std::string_view (*)(const void* context);

  // A caller whose peer and token are known already: both outlive the
  // Caller.
  static Caller Known(Transport transport, std::string_view peer, bool local,
                      std::string_view token = {}) {
    return Caller(transport, peer, local, token, nullptr, nullptr, nullptr);
  }
  // A caller whose peer `lookup(context)` and token
  // `token_lookup(context)` find when asked.
  static Caller Deferred(Transport transport, PeerLookup lookup,
                         TokenLookup token_lookup, const void* context) {
    return Caller(transport, {}, false, {}, lookup, token_lookup, context);
  }

  Transport transport() const { return transport_; }
  // In gRPC's notation: "ipv4:127.0.0.1:40123", "ipv6:[::1]:40123",
  // "unix:/path" ("unix:" alone for a client socket with no name, as the
  // lane sees them; "fd:N" for a gRPC connection on the Unix socket, which
  // the server accepts itself: unix_access_internal.h; empty if unknown).
  std::string peer() const;
  // Whether the peer is on this host: a Unix socket, or a loopback address.
  bool local() const;
  // The bearer token the caller presented; empty if none.
  std::string_view token() const {
    return token_lookup_ == nullptr ? token_ : token_lookup_(context_);
  }

 private:
  Caller(Transport transport, std::string_view peer, bool local,
         std::string_view token, PeerLookup lookup, TokenLookup token_lookup,
         const void* context)
      : transport_(transport),
        peer_(peer),
        local_(local),
        token_(token),
        lookup_(lookup),
        token_lookup_(token_lookup),
        context_(context) {}

  Transport transport_;
  std::string_view peer_;
  bool local_;
  std::string_view token_;
  PeerLookup lookup_;         // null: peer_ and local_ are known
  TokenLookup token_lookup_;  // null: token_ is known
  const void* context_;

  // What DepotOperations::Admit last found the token to name, and in which
  // rules: a data lane connection's Caller serves all its requests, whose
  // token is hashed once rather than per request. A Caller is used by one
  // thread at a time.
  friend class DepotOperations;
  mutable const AccessRules* rules_seen_ = nullptr;
  mutable const Principal* principal_seen_ = nullptr;
};

// One image's description, the same for every transport: each codec
// copies these fields into its wire struct (ImageInfo, the lane's final
// response) and computes nothing itself. Refers to the image's id: valid
// while the image is held.
struct ImageDescription {
  std::string_view image_id;
  uint64_t size = 0;
  uint64_t generation = 0;
  uint64_t checksum = 0;  // XXH3-64 of the whole image
  int64_t created_unix_micros = 0;
  int64_t expires_unix_micros = 0;  // 0: never expires
};

// What a push declares before its bytes, as it arrives on any transport.
struct PushParams {
  std::string image_id;
  uint64_t size = 0;
  uint64_t checksum = 0;  // ignored when the checksum follows the bytes
  std::optional<uint64_t> if_generation_match;  // 0: only if absent
  uint64_t ttl_ms = 0;                          // 0: never expires
  uint64_t replica_generation = 0;  // 0: a new generation (PushRequest)
  bool stream_append = false;       // image_id names a stream (PushRequest)
  std::optional<uint64_t> replica_step;  // with stream_append (PushRequest)
};

// What a fetch or stat waits for, as it arrives on any transport: a
// generation newer than `newer_than` (0: any generation), for up to
// `wait_ms` (0: answer with what is there now).
struct ImageWait {
  uint64_t newer_than = 0;
  uint64_t wait_ms = 0;
};

// Bytes [offset, offset + length) of an image.
struct ByteRange {
  uint64_t offset = 0;
  uint64_t length = 0;
};

// A byte range of one held generation, within the image.
struct ImageRange {
  ImageRef image;
  ByteRange range;
};

// The limits a client may ask for (the codecs add their own transport's).
struct StoreLimits {
  uint64_t image_count = 0;
  uint64_t max_image_bytes = 0;
  uint64_t max_memory_bytes = 0;
  uint64_t stored_bytes = 0;
  uint64_t reserved_bytes = 0;
  uint64_t leased_generations = 0;
  uint64_t leased_bytes = 0;
  uint64_t leased_superseded_bytes = 0;
  // ImageStore::restored_at().
  absl::Time restored_at = absl::InfinitePast();
};

// One caller's watch of the store's changes under a prefix
// (DepotOperations::Watch): where it has read up to, and what the caller
// may see (the ids its principal may touch; with access rules a watch's
// prefix only narrows what it shows, as a list's does). Used by one thread
// at a time; its notifications come on other threads.
class EventFeed {
 public:
  // Every change up to this sequence has been read (or was lost).
  uint64_t position() const { return position_; }

  // The next changes after position(), at most `max_events` of them, as
  // ImageStore::ReadEvents finds them; moves position() past everything
  // looked at. UNAVAILABLE once the store is shutting down.
  absl::StatusOr<EventPage> Next(size_t max_events);

  // Calls `ready` once when Next would find something new (or the store
  // shuts down), as ImageStore::NotifyOnEvent does: 0, without calling
  // it, if that is so already.
  ImageStore::NotificationId NotifyWhenMore(absl::AnyInvocable<void()> ready) {
    return store_->NotifyOnEvent(prefix_, position_, std::move(ready));
  }
  bool CancelNotification(ImageStore::NotificationId id) {
    return store_->CancelEventNotification(id);
  }

 private:
  friend class DepotOperations;
  EventFeed(ImageStore* store, std::string prefix, const Principal* principal,
            uint64_t position)
      : store_(store),
        prefix_(std::move(prefix)),
        principal_(principal),
        position_(position) {}

  ImageStore* store_;
  std::string prefix_;
  const Principal* principal_;  // null: the caller sees everything
  uint64_t position_;
};

class DepotOperations {
 public:
  // A time to live beyond this (some 35,000 years) is taken as this, so
  // that the expiry time cannot overflow.
  static constexpr uint64_t kMaxTtlMs = uint64_t{1} << 50;
  // A wait beyond this (some 35 years) is taken as this, for the same
  // reason.
  static constexpr uint64_t kMaxWaitMs = uint64_t{1} << 40;

  // Waits under way at once, by default: each holds a little memory in the
  // store and its transport (a gRPC call, a lane connection) until it ends.
  static constexpr size_t kDefaultMaxWaits = 10000;

  // `store` must outlive the operations. At most `max_waits` fetches and
  // stats may wait at once, over every transport together. `access`: who
  // may do what (the --auth-file); null lets every caller do everything.
  // `principal_limits`: each principal's limits, unless the access rules
  // give it its own (unused without access rules).
  explicit DepotOperations(ImageStore* store,
                           size_t max_waits = kDefaultMaxWaits,
                           std::unique_ptr<const AccessRules> access = nullptr,
                           PrincipalLimits principal_limits = {});
  ~DepotOperations();
  DepotOperations(const DepotOperations&) = delete;
  DepotOperations& operator=(const DepotOperations&) = delete;

  // Whether `caller` may do `op` on `image_id` (empty for GetLimits; the
  // prefix for List, whose answer is then cut to what the caller may see).
  // Every operation below calls it first, so that every transport is
  // checked in this one place, and its refusal is what the caller gets:
  // UNAUTHENTICATED without a token the access rules know,
  // PERMISSION_DENIED for an operation its role does not allow or an image
  // outside its prefixes. A refusal depends only on the caller, the
  // operation and the id, never on what is stored, so it reveals nothing
  // about images the caller may not touch. Cheap: without access rules a
  // test of one pointer; with them, one SHA-256 of the token and one hash
  // table lookup.
  absl::Status Authorize(const Caller& caller, Operation op,
                         std::string_view image_id) const {
    if (!checks_access_) return absl::OkStatus();
    return Admit(caller, op, image_id).status();
  }

  // Puts `access` in force for the calls that begin from now on; calls
  // under way finish under the rules they began with. FAILED_PRECONDITION,
  // changing nothing, if these operations were made without rules or
  // `access` is null: a server checks its callers for its whole life, or
  // never.
  absl::Status ReplaceAccessRules(std::unique_ptr<const AccessRules> access);

  // The description of `image`.
  // With `checksum` kOnlyIfKnown, an image pushed as a sealed memfd whose
  // checksum nobody asked for yet is described with checksum 0 rather than
  // hashed: for answers that move no bytes (a sealed push, a descriptor
  // handed over), where nothing needs checking.
  enum class ChecksumNeed { kCompute, kOnlyIfKnown };
  static ImageDescription Describe(
      const StoredImage& image, ChecksumNeed checksum = ChecksumNeed::kCompute);

  // The part of [offset, offset + length) that lies within `image`: a read
  // past the end is clamped, one past the end is empty.
  static ByteRange ClampRange(const StoredImage& image, uint64_t offset,
                              uint64_t length);

  // Push. Begins one: validates `params`, reserves the memory and checks
  // the generation precondition, so that a push bound to fail is refused
  // before its data moves (ImageStore::BeginPush's errors; with access
  // rules the push is charged to the caller's principal, whose memory
  // quota or cap on pushes under way may refuse it, RESOURCE_EXHAUSTED). The
  // codec then feeds the PendingImage its bytes and calls FinishPush, with the
  // checksum if it came after the bytes rather than in `params`.
  //
  // A push whose bytes do not keep up is cut off: `cut_off` is called
  // (once, on another thread, as ImageStore::BeginPush says) with
  // DEADLINE_EXCEEDED and the message for the client; the codec makes its
  // transport stop waiting for the bytes, destroys the PendingImage, which
  // releases the memory, and only then answers the client with that
  // status (also PendingImage::cut_status()), so that a client told of the
  // cut finds the memory free.
  absl::StatusOr<std::unique_ptr<PendingImage>> BeginPush(const Caller& caller,
                                                          PushParams params,
                                                          PushCutOff cut_off);
  absl::StatusOr<ImageRef> FinishPush(
      PendingImage& pending, std::optional<uint64_t> trailing_checksum);

  // A push from a client on this host whose image is in `memfd`, sealed
  // against every change (ImageStore::PublishSealed): authorised and
  // charged like BeginPush, published without copying (params.checksum is
  // not used).
  // With `release_signal`, `memfd` is a stream writer's step buffer
  // (ImageStore::PublishSealed says how it differs).
  absl::StatusOr<ImageRef> PublishSealed(
      const Caller& caller, PushParams params, internal::UniqueFd memfd,
      internal::UniqueFd release_signal = internal::UniqueFd());

  // A lease on `image` for a client on this host about to be handed its
  // memfd (ImageStore::Lease).
  ImageLease Lease(ImageRef image) { return store_->Lease(std::move(image)); }

  // Fetch and Stat without waiting: the current generation of `image_id`,
  // NOT_FOUND if there is none. (Fetch sends its bytes, Stat only its
  // description; the codec does either.)
  absl::StatusOr<ImageRef> Fetch(const Caller& caller,
                                 std::string_view image_id) {
    return Find(caller, Operation::kFetch, image_id);
  }
  absl::StatusOr<ImageRef> Stat(const Caller& caller,
                                std::string_view image_id) {
    return Find(caller, Operation::kStat, image_id);
  }

  // Fetch or Stat (`op`) waiting up to `wait.wait_ms` (clamped to
  // kMaxWaitMs) for a generation of `image_id` newer than `wait.newer_than`
  // to be published, holding no thread while it waits. Without a wait, the
  // current generation if it is newer; NOT_FOUND if there is none,
  // FAILED_PRECONDITION if it is not newer. Otherwise `done` is called exactly
  // once, as by ImageStore::Await (at once on this thread if the answer is
  // known, later on the publishing, reaper or cancelling thread otherwise),
  // with DEADLINE_EXCEEDED when the wait passes, UNAVAILABLE at shutdown,
  // CANCELLED through CancelWait(). With `max_waits` waits under way, or
  // the caller's principal at its own max_waits, one more is
  // RESOURCE_EXHAUSTED at once, unless the image is there (a wait that
  // need not wait is still answered). Returns the wait to cancel (0
  // if `done` has run already).
  //
  // A transport that serves a connection on a thread of its own blocks
  // that thread on `done` and the connection's events, not on a timer
  // (the lane: lane_server.cc).
  ImageStore::WaitId AwaitImage(const Caller& caller, Operation op,
                                std::string_view image_id, ImageWait wait,
                                ImageStore::WaitCallback done);
  // Ends `wait` with CANCELLED if it has not ended yet (its `done` runs on
  // this thread then); harmless for a wait that has ended (or 0).
  void CancelWait(ImageStore::WaitId wait);

  // Read and OpenReader: generation `generation` (0: the current one) of
  // `image_id`, if it is current or still held by a reader; NOT_FOUND
  // otherwise. Holding the result pins that generation.
  absl::StatusOr<ImageRef> OpenReader(const Caller& caller,
                                      std::string_view image_id,
                                      uint64_t generation);
  // Read: that generation's bytes [offset, offset + length), clamped.
  absl::StatusOr<ImageRange> Read(const Caller& caller,
                                  std::string_view image_id,
                                  uint64_t generation, uint64_t offset,
                                  uint64_t length);

  // Images whose ids start with `prefix`, a page at a time (page_size 0:
  // the store's default).
  absl::StatusOr<ListResult> List(const Caller& caller, std::string_view prefix,
                                  uint32_t page_size,
                                  std::string_view page_token);

  // Removes `image_id`: NOT_FOUND if absent, ABORTED if
  // `if_generation_match` is not its current generation.
  absl::Status Delete(const Caller& caller, std::string_view image_id,
                      std::optional<uint64_t> if_generation_match);

  absl::StatusOr<StoreLimits> Limits(const Caller& caller);

  // A feed of the changes (published, replaced, deleted, expired) to the
  // ids under `prefix` that `caller` may see, after sequence `after`
  // (ImageEvent: a generation is a sequence), or from now if absent.
  // Changes the store no longer keeps, or never knew, come out of the
  // feed as lost (EventPage::lost_first, lost_last).
  absl::StatusOr<EventFeed> Watch(const Caller& caller, std::string_view prefix,
                                  std::optional<uint64_t> after);

  // Streams (StreamTable; docs/STREAMS.md). A stream's name is authorised
  // as an image id: creating and finishing it as a push, deleting it as a
  // delete, reading it (NextStep, AckStep, describing it) as a fetch.
  absl::StatusOr<StreamState> CreateStream(const Caller& caller,
                                           std::string_view stream,
                                           const StreamPolicy& policy);
  absl::StatusOr<StreamState> FinishStream(const Caller& caller,
                                           std::string_view stream);
  absl::StatusOr<StreamState> DescribeStream(const Caller& caller,
                                             std::string_view stream);
  // Deletes `stream`, or only its reader group `group` if that is not
  // empty (StreamTable::Delete, DeleteGroup); authorised as deleting an
  // image of the stream's name.
  absl::Status DeleteStream(const Caller& caller, std::string_view stream,
                            std::string_view group);
  // StreamTable::Next, waiting up to `wait_ms` (clamped as image waits).
  // Returns the wait for CancelStreamWait (0 if `done` has run).
  StreamTable::WaitId NextStep(const Caller& caller, NextRequest request,
                               uint64_t wait_ms,
                               StreamTable::NextCallback done);
  absl::Status AckStep(const Caller& caller, std::string_view stream,
                       std::string_view group, std::string_view consumer,
                       uint64_t step);
  // StreamTable::AckCopy, authorised as AckStep.
  absl::Status AckStepCopy(const Caller& caller, std::string_view stream,
                           std::string_view group, uint64_t step);
  // StreamTable::AwaitRoom for a writer (authorised as a push).
  StreamTable::WaitId AwaitStreamRoom(const Caller& caller,
                                      std::string_view stream, uint64_t size,
                                      uint64_t wait_ms,
                                      StreamTable::RoomCallback done);
  // Ends a stream wait with CANCELLED; harmless once it has ended (or 0).
  void CancelStreamWait(StreamTable::WaitId wait);

 private:
  // Authorize's checks with access rules: the caller's principal, valid
  // as long as these operations (rules replaced are kept, below).
  absl::StatusOr<const Principal*> Admit(const Caller& caller, Operation op,
                                         std::string_view image_id) const;
  absl::StatusOr<ImageRef> Find(const Caller& caller, Operation op,
                                std::string_view image_id);
  // The store's request for a push of `params` by `caller`: authorised,
  // charged to its principal's quota, TTL clamped.
  absl::StatusOr<PushRequest> PushRequestFor(const Caller& caller,
                                             PushParams params);
  // Now plus `wait_ms`, clamped.
  static absl::Time WaitDeadline(uint64_t wait_ms);

  // What one principal holds and may hold. Kept by principal name, not
  // with the access rules, so that it outlives a change of the rules:
  // what a principal pushed stays charged to it.
  struct PrincipalState {
    explicit PrincipalState(const std::string& name);
    // Its memory quota and pushes under way, charged by the store.
    const std::shared_ptr<Quota> quota;
    // Waits registered and not ended (or about to be registered).
    std::atomic<uint64_t> waits{0};
    std::atomic<uint64_t> max_waits{PrincipalLimits::kUnlimited};
  };
  // The state of `principal`, made on its first push or wait, with its
  // limits as the access rules say now. One shared lock and one hash
  // lookup (an exclusive lock the first time).
  std::shared_ptr<PrincipalState> StateOf(const Principal& principal);
  static void ApplyLimits(PrincipalState& state, const PrincipalLimits& limits);

  ImageStore* const store_;
  const size_t max_waits_;
  const bool checks_access_;  // made with rules
  // The rules in force (null without): read once per call with one
  // acquire load, and replaced whole, so that a call holds the rules it
  // began with and a reload never waits for calls. Every set of rules
  // ever in force is kept until these operations end (reloads are rare,
  // a set is small), so that no call needs a reference count: a shared
  // pointer read atomically takes a lock libstdc++ shares among all its
  // callers, which cost about a tenth of small-image throughput with 16
  // clients.
  std::atomic<const AccessRules*> access_{nullptr};
  absl::Mutex all_access_mutex_;
  std::vector<std::unique_ptr<const AccessRules>> all_access_
      ABSL_GUARDED_BY(all_access_mutex_);
  const PrincipalLimits principal_limits_;
  // Waits registered and not ended (or about to be registered).
  std::atomic<size_t> waits_{0};

  absl::Mutex principals_mutex_;
  absl::flat_hash_map<std::string, std::shared_ptr<PrincipalState>> principals_
      ABSL_GUARDED_BY(principals_mutex_);
  // The map's size at which idle states are next swept out.
  size_t next_sweep_ ABSL_GUARDED_BY(principals_mutex_) = 64;
};

}  // namespace h5depot::server

#endif  // H5DEPOT_SERVER_DEPOT_OPERATIONS_INTERNAL_H_
