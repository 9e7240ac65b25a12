// h5depot::server::StreamTable: the streams of one ImageStore
// (docs/STREAMS.md).
//
// A stream is a named, ordered sequence of images, its steps 0, 1, 2, ...
// Each step is an image of the store under the step id "STREAM@N"
// (image_id.h), published by a push that asks to append (PushRequest::
// stream_append) and removed by this table once no reader group needs it.
// The table holds what the store does not: each stream's policy, which
// steps it keeps, and each reader group's position, leases and losses.
//
// Readers form groups. Every group sees every step; within a group each
// step goes to one member at a time, leased to it until it acknowledges
// the step or the lease runs out, when the step goes to the next member
// that asks (at-least-once delivery). A step is freed once every group
// has acknowledged it, except the newest `reserve_steps` of those and,
// with keep_first_step, step 0.
//
// Lock order: the store's lock, then this table's. The store calls
// ReserveStepNumber and AddStep under its own lock (so that appends are
// numbered in the order they are published); nothing here calls into the
// store while holding this table's lock: freed steps go to the store
// through `remove_steps`, and waits end through their callbacks, both
// after the lock is released.
#ifndef H5DEPOT_SERVER_STREAM_TABLE_INTERNAL_H_
#define H5DEPOT_SERVER_STREAM_TABLE_INTERNAL_H_

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/functional/any_invocable.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "h5depot/server/image_store.h"

namespace h5depot::server {

// What a stream keeps and what a full queue does. A stream's policy is
// set when it is created and never changes.
struct StreamPolicy {
  enum class WhenFull {
    kBlock,          // the append waits for room, within its deadline
    kDiscardOldest,  // the oldest queued step is dropped to make room
    kRefuse,         // the append is refused (RESOURCE_EXHAUSTED)
  };
  // The queue: steps appended that some reader group has not yet
  // acknowledged, and appends under way. Bounded by default.
  uint64_t max_steps = 8;
  uint64_t max_bytes = uint64_t{256} << 20;
  WhenFull when_full = WhenFull::kBlock;
  // Steps every group acknowledged that are kept anyway, the newest ones,
  // for groups that join late; beyond the queue's limits.
  uint64_t reserve_steps = 0;
  // Step 0 is kept for the stream's life, and every group that joins
  // after it was appended gets it first.
  bool keep_first_step = false;

  bool operator==(const StreamPolicy& other) const {
    return max_steps == other.max_steps && max_bytes == other.max_bytes &&
           when_full == other.when_full &&
           reserve_steps == other.reserve_steps &&
           keep_first_step == other.keep_first_step;
  }
};

// The name of a WhenFull value as flags and messages spell it: "block",
// "discard-oldest", "refuse".
std::string_view WhenFullName(StreamPolicy::WhenFull when_full);

// Where a group that does not exist yet starts.
struct StreamStart {
  enum class Kind {
    kOldest,  // the oldest step the stream keeps (step 0 of a new stream)
    kLatest,  // the newest step appended, or the next one if none is
    kStep,    // `step`, or the oldest kept if that one is gone (reported lost)
  };
  Kind kind = Kind::kOldest;
  uint64_t step = 0;
};

// Steps first to last, both included.
struct StepRange {
  uint64_t first = 0;
  uint64_t last = 0;
};

// One step handed to a group member: its number, the image, and the
// steps the group lost (discard-oldest) since the member's group last
// heard of a loss.
struct TakenStep {
  uint64_t step = 0;
  ImageRef image;
  std::vector<StepRange> lost;
};

struct StreamGroupState {
  std::string name;
  uint64_t next_step = 0;      // the next step never handed to the group
  uint64_t acked_below = 0;    // every step below it acknowledged (or lost)
  uint64_t leased_steps = 0;   // handed out, not acknowledged
  uint64_t waiting_steps = 0;  // whose lease ran out, to be handed again
};

struct StreamState {
  std::string name;
  StreamPolicy policy;
  bool created = false;         // false: only readers have named it so far
  bool finished = false;        // no more appends
  uint64_t appended_steps = 0;  // the next append's step number
  uint64_t queued_steps = 0;    // counted against max_steps
  uint64_t queued_bytes = 0;    // counted against max_bytes
  uint64_t kept_steps = 0;      // every step still held, reserve included
  uint64_t kept_bytes = 0;
  std::optional<uint64_t> oldest_kept_step;
  std::vector<StreamGroupState> groups;  // by name
};

// A stream as a snapshot keeps it (Capture, Restore): its state and its
// kept steps. Leases do not survive: a leased step is handed out again.
struct StreamRecord {
  struct GroupRecord {
    std::string name;
    uint64_t next_step = 0;
    uint64_t acked_below = 0;
    std::vector<uint64_t> acked_above;
    std::vector<uint64_t> hand_again;  // leased, or waiting to be handed
  };
  std::string name;
  StreamPolicy policy;
  bool created = false;
  bool finished = false;
  uint64_t appended = 0;
  std::vector<std::pair<uint64_t, ImageRef>> steps;  // Capture only
  std::vector<GroupRecord> groups;
};

// A member of a group asking for the next step.
struct NextRequest {
  std::string stream;
  std::string group;
  std::string consumer;  // who holds the step; names the acknowledger
  StreamStart start;     // for a group that does not exist yet
  absl::Duration lease = absl::Seconds(60);
};

class StreamTable {
 public:
  // Lease lengths and waits are clamped to this.
  static constexpr absl::Duration kMaxLease = absl::Hours(24);
  // Names of groups and consumers: 1 to this many bytes.
  static constexpr size_t kMaxNameBytes = 255;
  // Streams that only readers have named (no append, no CreateStream yet)
  // held at once. A reader naming one more makes room by forgetting the
  // one named longest ago that no reader is waiting on (its groups'
  // positions, all at a stream's start); with every one waited on, it is
  // refused RESOURCE_EXHAUSTED.
  static constexpr size_t kMaxStreamsNamedByReaders = 4096;
  // Reader groups one stream holds. Each keeps its position, its leases
  // and every step it has not acknowledged, so a reader naming one more is
  // refused RESOURCE_EXHAUSTED until a group is deleted (DeleteGroup).
  static constexpr size_t kMaxGroupsPerStream = 1024;

  using RemoveSteps = std::function<void(std::vector<std::string> step_ids)>;
  using NextCallback = absl::AnyInvocable<void(absl::StatusOr<TakenStep>)>;
  // `waited`: false when the answer came at once, without waiting.
  using RoomCallback = absl::AnyInvocable<void(absl::Status, bool waited)>;
  using WaitId = uint64_t;  // 0: none pending

  // `remove_steps` takes the ids of freed steps out of the store; called
  // without this table's lock. With `start_timer`, a thread ends leases
  // and waits at their deadlines; without it they never end by time.
  StreamTable(std::function<absl::Time()> clock, RemoveSteps remove_steps,
              bool start_timer);
  // Ends every wait UNAVAILABLE (Shutdown) and stops the thread.
  ~StreamTable();
  StreamTable(const StreamTable&) = delete;
  StreamTable& operator=(const StreamTable&) = delete;

  // Creates `stream` with `policy`; OK again with the same policy,
  // ALREADY_EXISTS with another. INVALID_ARGUMENT for a policy that cannot
  // hold a step (a limit of 0).
  absl::StatusOr<StreamState> Create(std::string_view stream,
                                     const StreamPolicy& policy);
  // No more appends; readers get every step already appended, then
  // OUT_OF_RANGE. Appends under way are refused at publish. OK again for
  // a finished stream; NOT_FOUND for one never created.
  absl::StatusOr<StreamState> Finish(std::string_view stream);
  // NOT_FOUND for a stream nobody named.
  absl::StatusOr<StreamState> Describe(std::string_view stream) const;

  // Deletes `stream`: its kept steps are freed and its groups forgotten;
  // the waits on it (readers', and writers' waiting for room) end
  // NOT_FOUND. A later append or reader makes a new stream of that name,
  // from step 0. NOT_FOUND for a stream nobody named; FAILED_PRECONDITION,
  // deleting nothing, while an append to it is under way (finish it
  // first).
  absl::Status Delete(std::string_view stream);
  // Deletes reader group `group` of `stream`: its leases and position are
  // forgotten, its members' waits end NOT_FOUND, and the steps no other
  // group needs are freed (beyond the reserve). A member that asks again
  // makes a new group. NOT_FOUND for an unknown stream or group.
  absl::Status DeleteGroup(std::string_view stream, std::string_view group);

  // The append of `size` bytes to `stream` begins (ImageStore::Admit):
  // creates the stream with the default policy if it was not created, and
  // takes a place in its queue, or refuses: FAILED_PRECONDITION for a
  // finished stream, INVALID_ARGUMENT for a step larger than the queue's
  // byte limit, RESOURCE_EXHAUSTED for a full queue whose policy blocks or
  // refuses (AwaitRoom tells a blocking writer when to try again). A copy
  // of another server's step (`replica_step`) is refused early as
  // ReserveStepNumber would refuse it.
  absl::Status AdmitAppend(std::string_view stream, uint64_t size,
                           std::optional<uint64_t> replica_step = {});
  // The append admitted with `size` ends without a step.
  void AbandonAppend(std::string_view stream, uint64_t size);
  // Under the store's lock, when it publishes an admitted append: the
  // step's number, or FAILED_PRECONDITION if the stream was finished
  // meanwhile. Nothing can fail between this and AddStep.
  //
  // With `replica_step` N the append is a copy of another server's step N
  // (a cluster's): it is numbered N. FAILED_PRECONDITION if the stream has
  // step N or a later one already; INVALID_ARGUMENT if N is more than
  // kMaxReplicaStepLead steps ahead. The steps between the stream's last
  // and N, never copied here, are lost to its groups: each is told, as
  // of a discarded step, and none of them waits for them.
  absl::StatusOr<uint64_t> ReserveStepNumber(
      std::string_view stream, std::optional<uint64_t> replica_step = {});
  static constexpr uint64_t kMaxReplicaStepLead = uint64_t{1} << 20;
  // Under the store's lock, right after ReserveStepNumber: `image` (named
  // and numbered) is step `step`. The ids of steps dropped to make room
  // (discard-oldest) go to `*discarded`, for the store to remove under its
  // lock; what must run after the store's lock goes to `*after_unlock`.
  void AddStep(std::string_view stream, uint64_t step, uint64_t admitted_size,
               ImageRef image, std::vector<std::string>* discarded,
               std::vector<absl::AnyInvocable<void()>>* after_unlock);

  // The next step for a member of a group: at once if the group has one,
  // else at the first append or lease end that gives it one. `done` is
  // called once, outside the lock, maybe before Next returns: with the
  // step (leased to `consumer` for `lease`), OUT_OF_RANGE once the stream
  // is finished and the group has every step acknowledged, DEADLINE_
  // EXCEEDED at `deadline`, UNAVAILABLE at Shutdown, or the status given
  // to CancelWait. A group that does not exist is made, at `start`; a
  // stream that does not exist is named, and made by its first append
  // (RESOURCE_EXHAUSTED if kMaxStreamsNamedByReaders are waited on).
  WaitId Next(const NextRequest& request, absl::Time deadline,
              NextCallback done);
  // The blocking form, for callers with nothing else to wait for.
  absl::StatusOr<TakenStep> NextFor(const NextRequest& request,
                                    absl::Time deadline);

  // `consumer` of `group` is done with `step`: OK, and the step is freed if
  // no group needs it any more. FAILED_PRECONDITION if the consumer does
  // not hold it (never did, acknowledged it already, or its lease ran out
  // and the step went to another member); NOT_FOUND for an unknown stream
  // or group.
  absl::Status Ack(std::string_view stream, std::string_view group,
                   std::string_view consumer, uint64_t step);
  // A copy of an acknowledgement `group` made on another server (a
  // cluster's): `step` is marked acknowledged for the group, whoever here
  // holds it, and OK if it already was. A group that does not exist is
  // made, starting at `step`. NOT_FOUND for an unknown stream.
  absl::Status AckCopy(std::string_view stream, std::string_view group,
                       uint64_t step);

  // For a writer refused RESOURCE_EXHAUSTED by a blocking stream: `done`
  // is called with OK once the queue has room for `size` bytes (at once
  // if it has), DEADLINE_EXCEEDED at `deadline`, RESOURCE_EXHAUSTED at
  // once if the stream's policy is not to block, FAILED_PRECONDITION once
  // it is finished, UNAVAILABLE at Shutdown.
  WaitId AwaitRoom(std::string_view stream, uint64_t size, absl::Time deadline,
                   RoomCallback done);

  // Ends a pending Next or AwaitRoom with `status`; false if it had ended.
  bool CancelWait(WaitId wait, const absl::Status& status);

  // Every stream's state, by name (for metrics).
  std::vector<StreamState> DescribeAll() const;

  // Snapshots. Capture: every stream at one instant, with its kept
  // steps. Restore (into a table that has none of them): the stream and
  // its groups, no steps; then each step that loads comes through
  // AdmitRestoredStep and AddRestoredStep (ImageStore, for a restored
  // stream append), and LoseSteps names those that did not load, which
  // the groups that needed them are told they lost.
  std::vector<StreamRecord> Capture() const;
  void Restore(const StreamRecord& record);
  absl::Status AdmitRestoredStep(std::string_view stream, uint64_t size);
  void AddRestoredStep(std::string_view stream, uint64_t step,
                       uint64_t admitted_size, ImageRef image);
  void LoseSteps(std::string_view stream, const std::vector<uint64_t>& steps);

  // Ends every wait UNAVAILABLE; later ones end so at once.
  void Shutdown();

 private:
  struct Lease {
    std::string consumer;
    absl::Time until;
  };
  struct Group {
    uint64_t next_step = 0;
    uint64_t acked_below = 0;
    std::set<uint64_t> acked_above;    // acknowledged, >= acked_below
    std::set<uint64_t> to_redeliver;   // lease ran out, not acked
    std::map<uint64_t, Lease> leased;  // handed out, not acked
    std::vector<StepRange> lost;       // not yet reported
  };
  struct Step {
    ImageRef image;
    uint64_t size = 0;
  };
  struct NextWait {
    NextRequest request;
    absl::Time deadline;
    NextCallback done;
  };
  struct RoomWait {
    std::string stream;
    uint64_t size = 0;
    absl::Time deadline;
    RoomCallback done;
  };
  struct Stream {
    std::string name;
    uint64_t naming = 0;  // the order in which streams were named
    StreamPolicy policy;
    bool created = false;
    bool finished = false;
    uint64_t appended = 0;  // next step number
    std::map<uint64_t, Step> steps;
    uint64_t kept_bytes = 0;
    uint64_t pending_steps = 0;  // appends admitted, not yet steps
    uint64_t pending_bytes = 0;
    std::map<std::string, Group, std::less<>> groups;
    std::vector<WaitId> next_waits;  // in arrival order
    std::vector<WaitId> room_waits;
  };
  enum class TimerKind { kLease, kWait };
  struct Timer {
    TimerKind kind;
    std::string stream;
    std::string group;
    uint64_t step = 0;  // kLease
    WaitId wait = 0;    // kWait
  };
  using After = std::vector<absl::AnyInvocable<void()>>;

  Stream& Named(std::string_view name) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mutex_);
  // Before a reader names a stream that does not exist: OK if one more
  // named-only stream fits, after forgetting one if need be;
  // RESOURCE_EXHAUSTED if none can be forgotten.
  absl::Status RoomForAStreamNamedByAReader()
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mutex_);
  Stream* Find(std::string_view name) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mutex_);
  const Stream* Find(std::string_view name) const
      ABSL_SHARED_LOCKS_REQUIRED(mutex_);
  StreamState StateOf(const Stream& stream) const
      ABSL_SHARED_LOCKS_REQUIRED(mutex_);
  // The lowest step some group has not acknowledged (all of them if no
  // group exists): steps from it on are queued, steps below it are done.
  static uint64_t QueueStart(const Stream& stream);
  static void CountQueued(const Stream& stream, uint64_t* steps,
                          uint64_t* bytes);
  static bool HasRoom(const Stream& stream, uint64_t size);
  // Why a copy of step `replica_step` cannot be appended to `stream`; OK
  // if it can.
  static absl::Status CheckReplicaStep(const Stream& stream,
                                       uint64_t replica_step);
  Group& JoinGroup(Stream& stream, const NextRequest& request)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mutex_);
  // Hands the group's next step to the request's consumer, if it has one.
  std::optional<TakenStep> Take(Stream& stream, Group& group,
                                const NextRequest& request)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mutex_);
  static bool GroupIsDone(const Stream& stream, const Group& group);
  // The group part of losing `step`: a group that had not acknowledged it
  // records it lost, unless a member holds it, and counts it as done.
  static void LoseForGroups(Stream& stream, uint64_t step);
  static void MarkAcked(Group& group, uint64_t step);
  // Drops step `step` (discard-oldest): each group that had not
  // acknowledged it records it lost, unless a member holds it.
  void Discard(Stream& stream, uint64_t step, std::vector<std::string>* removed)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mutex_);
  // Frees the steps no group needs, beyond the reserve.
  void Trim(Stream& stream, std::vector<std::string>* removed)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mutex_);
  // Ends with `status` the waits on `stream` of group `group` (every
  // wait, readers' and writers', if `group` is empty); their callbacks go
  // to `after`.
  void EndWaits(Stream& stream, std::string_view group,
                const absl::Status& status, After* after)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mutex_);
  // Ends the waits the stream can now answer; their callbacks go to
  // `after`.
  void Serve(Stream& stream, After* after)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mutex_);
  void AddTimer(absl::Time due, Timer timer)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mutex_);
  void TimerLoop();
  void RunAfter(After after, std::vector<std::string> removed);

  const std::function<absl::Time()> clock_;
  const RemoveSteps remove_steps_;

  mutable absl::Mutex mutex_;
  absl::CondVar timer_changed_;
  std::map<std::string, Stream, std::less<>> streams_ ABSL_GUARDED_BY(mutex_);
  absl::flat_hash_map<WaitId, NextWait> next_waits_ ABSL_GUARDED_BY(mutex_);
  absl::flat_hash_map<WaitId, RoomWait> room_waits_ ABSL_GUARDED_BY(mutex_);
  WaitId next_wait_id_ ABSL_GUARDED_BY(mutex_) = 1;
  uint64_t namings_ ABSL_GUARDED_BY(mutex_) = 0;
  std::multimap<absl::Time, Timer> timers_ ABSL_GUARDED_BY(mutex_);
  bool shutting_down_ ABSL_GUARDED_BY(mutex_) = false;
  std::thread timer_thread_;
};

}  // namespace h5depot::server

#endif  // H5DEPOT_SERVER_STREAM_TABLE_INTERNAL_H_
