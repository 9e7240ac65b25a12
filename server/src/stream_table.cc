#include <algorithm>
#include <utility>

#include "absl/strings/str_cat.h"
#include "h5depot/internal/byte_size.h"
#include "h5depot/internal/image_id.h"
#include "server/src/stream_table_internal.h"

namespace h5depot::server {
namespace {

// Debian's Abseil has a string_view of its own.
absl::string_view Sv(std::string_view text) {
  return absl::string_view(text.data(), text.size());
}

absl::Status ValidateMemberName(std::string_view what, std::string_view name) {
  if (name.empty() || name.size() > StreamTable::kMaxNameBytes) {
    return absl::InvalidArgumentError(
        absl::StrCat(Sv(what), " names are 1 to ", StreamTable::kMaxNameBytes,
                     " bytes; got ", name.size()));
  }
  return absl::OkStatus();
}

}  // namespace

std::string_view WhenFullName(StreamPolicy::WhenFull when_full) {
  switch (when_full) {
    case StreamPolicy::WhenFull::kBlock:
      return "block";
    case StreamPolicy::WhenFull::kDiscardOldest:
      return "discard-oldest";
    case StreamPolicy::WhenFull::kRefuse:
      return "refuse";
  }
  return "unknown";
}

StreamTable::StreamTable(std::function<absl::Time()> clock,
                         RemoveSteps remove_steps, bool start_timer)
    : clock_(std::move(clock)), remove_steps_(std::move(remove_steps)) {
  if (start_timer) timer_thread_ = std::thread([this] { TimerLoop(); });
}

StreamTable::~StreamTable() {
  Shutdown();
  if (timer_thread_.joinable()) timer_thread_.join();
}

StreamTable::Stream& StreamTable::Named(std::string_view name) {
  auto it = streams_.find(name);
  if (it == streams_.end()) {
    it = streams_.emplace(std::string(name), Stream{}).first;
    it->second.name = std::string(name);
    it->second.naming = namings_++;
  }
  return it->second;
}

absl::Status StreamTable::RoomForAStreamNamedByAReader() {
  if (streams_.size() < kMaxStreamsNamedByReaders) return absl::OkStatus();
  size_t named_only = 0;
  auto forgettable = streams_.end();
  for (auto it = streams_.begin(); it != streams_.end(); ++it) {
    const Stream& stream = it->second;
    // Not created means nothing appended, nothing kept, nothing admitted.
    if (stream.created) continue;
    ++named_only;
    // The stream's list of waits may still hold some that ended.
    bool waited_on = false;
    for (WaitId wait : stream.next_waits) {
      waited_on = waited_on || next_waits_.count(wait) != 0;
    }
    if (!waited_on && (forgettable == streams_.end() ||
                       stream.naming < forgettable->second.naming)) {
      forgettable = it;
    }
  }
  if (named_only < kMaxStreamsNamedByReaders) return absl::OkStatus();
  if (forgettable == streams_.end()) {
    return absl::ResourceExhaustedError(absl::StrCat(
        "the server holds ", named_only,
        " streams that only readers have named, each with a reader waiting "
        "on it: append to one, or wait for a reader to give up"));
  }
  streams_.erase(forgettable);  // no lease or wait: no timer finds it
  return absl::OkStatus();
}

StreamTable::Stream* StreamTable::Find(std::string_view name) {
  auto it = streams_.find(name);
  return it == streams_.end() ? nullptr : &it->second;
}

const StreamTable::Stream* StreamTable::Find(std::string_view name) const {
  auto it = streams_.find(name);
  return it == streams_.end() ? nullptr : &it->second;
}

uint64_t StreamTable::QueueStart(const Stream& stream) {
  if (stream.groups.empty()) {
    return stream.steps.empty() ? stream.appended : stream.steps.begin()->first;
  }
  uint64_t start = ~uint64_t{0};
  for (const auto& [name, group] : stream.groups) {
    start = std::min(start, group.acked_below);
  }
  return start;
}

void StreamTable::CountQueued(const Stream& stream, uint64_t* steps,
                              uint64_t* bytes) {
  // Steps below the queue's start are few (Trim keeps the reserve and
  // step 0 there), so counting them is cheap.
  const uint64_t start = QueueStart(stream);
  uint64_t done_steps = 0;
  uint64_t done_bytes = 0;
  for (auto it = stream.steps.begin();
       it != stream.steps.end() && it->first < start; ++it) {
    ++done_steps;
    done_bytes += it->second.size;
  }
  *steps = stream.steps.size() - done_steps + stream.pending_steps;
  *bytes = stream.kept_bytes - done_bytes + stream.pending_bytes;
}

bool StreamTable::HasRoom(const Stream& stream, uint64_t size) {
  uint64_t steps = 0;
  uint64_t bytes = 0;
  CountQueued(stream, &steps, &bytes);
  return steps < stream.policy.max_steps &&
         bytes <=
             stream.policy.max_bytes - std::min(size, stream.policy.max_bytes);
}

StreamState StreamTable::StateOf(const Stream& stream) const {
  StreamState state;
  state.name = stream.name;
  state.policy = stream.policy;
  state.created = stream.created;
  state.finished = stream.finished;
  state.appended_steps = stream.appended;
  CountQueued(stream, &state.queued_steps, &state.queued_bytes);
  state.queued_steps -= stream.pending_steps;
  state.queued_bytes -= stream.pending_bytes;
  state.kept_steps = stream.steps.size();
  state.kept_bytes = stream.kept_bytes;
  if (!stream.steps.empty()) {
    state.oldest_kept_step = stream.steps.begin()->first;
  }
  for (const auto& [name, group] : stream.groups) {
    StreamGroupState& out = state.groups.emplace_back();
    out.name = name;
    out.next_step = group.next_step;
    out.acked_below = group.acked_below;
    out.leased_steps = group.leased.size();
    out.waiting_steps = group.to_redeliver.size();
  }
  return state;
}

absl::StatusOr<StreamState> StreamTable::Create(std::string_view stream,
                                                const StreamPolicy& policy) {
  if (absl::Status valid = internal::ValidateImageId(stream); !valid.ok()) {
    return valid;
  }
  if (policy.max_steps == 0 || policy.max_bytes == 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "stream '", Sv(stream),
        "': a queue limit of 0 steps or 0 bytes could hold no step"));
  }
  absl::MutexLock lock(&mutex_);
  Stream& named = Named(stream);
  if (named.created) {
    if (named.policy == policy) return StateOf(named);
    return absl::AlreadyExistsError(absl::StrCat(
        "stream '", Sv(stream),
        "' exists with another policy (a stream's policy is set once, when it "
        "is created)"));
  }
  named.created = true;
  named.policy = policy;
  return StateOf(named);
}

absl::StatusOr<StreamState> StreamTable::Finish(std::string_view stream) {
  After after;
  StreamState state;
  {
    absl::MutexLock lock(&mutex_);
    Stream* found = Find(stream);
    if (found == nullptr || !found->created) {
      return absl::NotFoundError(absl::StrCat("no stream '", Sv(stream), "'"));
    }
    found->finished = true;
    Serve(*found, &after);
    state = StateOf(*found);
  }
  RunAfter(std::move(after), {});
  return state;
}

absl::Status StreamTable::Delete(std::string_view stream) {
  After after;
  std::vector<std::string> removed;
  {
    absl::MutexLock lock(&mutex_);
    auto found = streams_.find(stream);
    if (found == streams_.end()) {
      return absl::NotFoundError(absl::StrCat("no stream '", Sv(stream), "'"));
    }
    Stream& doomed = found->second;
    if (doomed.pending_steps > 0) {
      return absl::FailedPreconditionError(absl::StrCat(
          "stream '", Sv(stream), "' has ", doomed.pending_steps,
          " append(s) under way; nothing was deleted (finish the stream, "
          "then delete it)"));
    }
    EndWaits(doomed, "",
             absl::NotFoundError(
                 absl::StrCat("stream '", Sv(stream), "' was deleted")),
             &after);
    for (const auto& [number, step] : doomed.steps) {
      removed.push_back(internal::StreamStepId(doomed.name, number));
    }
    streams_.erase(found);  // its timers find nothing and pass
  }
  RunAfter(std::move(after), std::move(removed));
  return absl::OkStatus();
}

absl::Status StreamTable::DeleteGroup(std::string_view stream,
                                      std::string_view group) {
  After after;
  std::vector<std::string> removed;
  {
    absl::MutexLock lock(&mutex_);
    Stream* found = Find(stream);
    if (found == nullptr) {
      return absl::NotFoundError(absl::StrCat("no stream '", Sv(stream), "'"));
    }
    auto doomed = found->groups.find(group);
    if (doomed == found->groups.end()) {
      return absl::NotFoundError(absl::StrCat(
          "stream '", Sv(stream), "' has no reader group '", Sv(group), "'"));
    }
    EndWaits(*found, group,
             absl::NotFoundError(absl::StrCat("reader group '", Sv(group),
                                              "' of stream '", Sv(stream),
                                              "' was deleted")),
             &after);
    found->groups.erase(doomed);
    Trim(*found, &removed);
    Serve(*found, &after);  // writers waiting for room it held
  }
  RunAfter(std::move(after), std::move(removed));
  return absl::OkStatus();
}

void StreamTable::EndWaits(Stream& stream, std::string_view group,
                           const absl::Status& status, After* after) {
  for (auto it = stream.next_waits.begin(); it != stream.next_waits.end();) {
    auto wait = next_waits_.find(*it);
    if (wait != next_waits_.end() && !group.empty() &&
        wait->second.request.group != group) {
      ++it;
      continue;
    }
    if (wait != next_waits_.end()) {
      after->push_back([done = std::move(wait->second.done), status]() mutable {
        done(status);
      });
      next_waits_.erase(wait);
    }
    it = stream.next_waits.erase(it);
  }
  if (!group.empty()) return;
  for (WaitId id : stream.room_waits) {
    auto wait = room_waits_.find(id);
    if (wait == room_waits_.end()) continue;
    after->push_back([done = std::move(wait->second.done), status]() mutable {
      done(status, /*waited=*/true);
    });
    room_waits_.erase(wait);
  }
  stream.room_waits.clear();
}

absl::StatusOr<StreamState> StreamTable::Describe(
    std::string_view stream) const {
  absl::ReaderMutexLock lock(&mutex_);
  const Stream* found = Find(stream);
  if (found == nullptr) {
    return absl::NotFoundError(absl::StrCat("no stream '", Sv(stream), "'"));
  }
  return StateOf(*found);
}

std::vector<StreamState> StreamTable::DescribeAll() const {
  absl::ReaderMutexLock lock(&mutex_);
  std::vector<StreamState> states;
  states.reserve(streams_.size());
  for (const auto& [name, stream] : streams_) states.push_back(StateOf(stream));
  return states;
}

absl::Status StreamTable::CheckReplicaStep(const Stream& stream,
                                           uint64_t replica_step) {
  if (replica_step < stream.appended) {
    return absl::FailedPreconditionError(
        absl::StrCat("stream '", stream.name, "' has step ", replica_step,
                     " already (its next is ", stream.appended, ")"));
  }
  if (replica_step - stream.appended > kMaxReplicaStepLead) {
    return absl::InvalidArgumentError(absl::StrCat(
        "a copy of step ", replica_step, " of stream '", stream.name,
        "' is too far ahead of its next step, ", stream.appended));
  }
  return absl::OkStatus();
}

absl::Status StreamTable::AdmitAppend(std::string_view stream, uint64_t size,
                                      std::optional<uint64_t> replica_step) {
  absl::MutexLock lock(&mutex_);
  if (shutting_down_) return absl::UnavailableError("server is shutting down");
  if (replica_step.has_value()) {
    if (const Stream* found = Find(stream); found != nullptr) {
      if (absl::Status status = CheckReplicaStep(*found, *replica_step);
          !status.ok()) {
        return status;
      }
    }
  }
  Stream& named = Named(stream);
  named.created = true;  // with the default policy, if it was not
  if (named.finished) {
    return absl::FailedPreconditionError(absl::StrCat(
        "stream '", Sv(stream), "' is finished: it takes no more steps"));
  }
  const StreamPolicy& policy = named.policy;
  if (size > policy.max_bytes) {
    return absl::InvalidArgumentError(absl::StrCat(
        "a step of ", internal::HumanSize(size), " is larger than stream '",
        Sv(stream), "''s queue limit of ",
        internal::HumanSize(policy.max_bytes), "; nothing was appended"));
  }
  if (policy.when_full != StreamPolicy::WhenFull::kDiscardOldest &&
      !HasRoom(named, size)) {
    uint64_t steps = 0;
    uint64_t bytes = 0;
    CountQueued(named, &steps, &bytes);
    return absl::ResourceExhaustedError(absl::StrCat(
        "stream '", Sv(stream), "' is full: ", steps, " steps (",
        internal::HumanSize(bytes),
        ") are not yet acknowledged by every "
        "reader group, its limit is ",
        policy.max_steps, " steps (", internal::HumanSize(policy.max_bytes),
        "); its policy is to ", Sv(WhenFullName(policy.when_full))));
  }
  ++named.pending_steps;
  named.pending_bytes += size;
  return absl::OkStatus();
}

void StreamTable::AbandonAppend(std::string_view stream, uint64_t size) {
  After after;
  {
    absl::MutexLock lock(&mutex_);
    Stream* found = Find(stream);
    if (found == nullptr) return;
    --found->pending_steps;
    found->pending_bytes -= size;
    Serve(*found, &after);
  }
  RunAfter(std::move(after), {});
}

absl::StatusOr<uint64_t> StreamTable::ReserveStepNumber(
    std::string_view stream, std::optional<uint64_t> replica_step) {
  absl::MutexLock lock(&mutex_);
  Stream* found = Find(stream);
  if (found == nullptr || found->finished) {
    return absl::FailedPreconditionError(
        absl::StrCat("stream '", Sv(stream),
                     "' was finished while the append was under way; nothing "
                     "was appended"));
  }
  if (!replica_step.has_value()) return found->appended++;
  if (absl::Status status = CheckReplicaStep(*found, *replica_step);
      !status.ok()) {
    return status;
  }
  const uint64_t missed = found->appended;  // [missed, replica_step)
  if (missed < *replica_step) {
    for (auto& [name, group] : found->groups) {
      StepRange lost{missed, *replica_step - 1};
      if (!group.lost.empty() && group.lost.back().last + 1 == missed) {
        group.lost.back().last = lost.last;
      } else {
        group.lost.push_back(lost);
      }
      // Nothing at or past `missed` was acknowledged or handed out yet.
      if (group.acked_below >= missed) {
        group.acked_below = *replica_step;
      } else {
        for (uint64_t step = missed; step < *replica_step; ++step) {
          group.acked_above.insert(step);
        }
      }
    }
  }
  found->appended = *replica_step + 1;
  return *replica_step;
}

void StreamTable::AddStep(std::string_view stream, uint64_t step,
                          uint64_t admitted_size, ImageRef image,
                          std::vector<std::string>* discarded, After* after) {
  absl::MutexLock lock(&mutex_);
  Stream& named = Named(stream);
  --named.pending_steps;
  named.pending_bytes -= admitted_size;
  const uint64_t size = image->size();
  named.steps.emplace(step, Step{std::move(image), size});
  named.kept_bytes += size;
  if (named.policy.when_full == StreamPolicy::WhenFull::kDiscardOldest) {
    for (;;) {
      uint64_t steps = 0;
      uint64_t bytes = 0;
      CountQueued(named, &steps, &bytes);
      if (steps <= named.policy.max_steps && bytes <= named.policy.max_bytes) {
        break;
      }
      auto oldest = named.steps.lower_bound(QueueStart(named));
      if (oldest != named.steps.end() && oldest->first == 0 &&
          named.policy.keep_first_step) {
        ++oldest;
      }
      if (oldest == named.steps.end() || oldest->first == step) break;
      Discard(named, oldest->first, discarded);
    }
  }
  Trim(named, discarded);
  Serve(named, after);
}

void StreamTable::MarkAcked(Group& group, uint64_t step) {
  if (step < group.acked_below) return;
  group.acked_above.insert(step);
  while (!group.acked_above.empty() &&
         *group.acked_above.begin() == group.acked_below) {
    group.acked_above.erase(group.acked_above.begin());
    ++group.acked_below;
  }
}

void StreamTable::Discard(Stream& stream, uint64_t step,
                          std::vector<std::string>* removed) {
  LoseForGroups(stream, step);
  auto it = stream.steps.find(step);
  stream.kept_bytes -= it->second.size;
  stream.steps.erase(it);
  removed->push_back(internal::StreamStepId(stream.name, step));
}

void StreamTable::LoseForGroups(Stream& stream, uint64_t step) {
  for (auto& [name, group] : stream.groups) {
    if (step < group.acked_below || group.acked_above.count(step) != 0) {
      continue;
    }
    // A member holding it has its bytes (or can still fetch them while it
    // holds the image); its acknowledgement is taken.
    if (group.leased.count(step) == 0) {
      group.to_redeliver.erase(step);
      if (!group.lost.empty() && group.lost.back().last + 1 == step) {
        group.lost.back().last = step;
      } else {
        group.lost.push_back(StepRange{step, step});
      }
    }
    MarkAcked(group, step);
  }
}

void StreamTable::Trim(Stream& stream, std::vector<std::string>* removed) {
  const uint64_t start = QueueStart(stream);
  std::vector<uint64_t> done;
  for (auto it = stream.steps.begin();
       it != stream.steps.end() && it->first < start; ++it) {
    if (it->first == 0 && stream.policy.keep_first_step) continue;
    done.push_back(it->first);
  }
  const size_t reserve = static_cast<size_t>(
      std::min<uint64_t>(stream.policy.reserve_steps, done.size()));
  done.resize(done.size() - reserve);  // the newest are kept
  for (uint64_t step : done) {
    auto it = stream.steps.find(step);
    stream.kept_bytes -= it->second.size;
    stream.steps.erase(it);
    removed->push_back(internal::StreamStepId(stream.name, step));
  }
}

StreamTable::Group& StreamTable::JoinGroup(Stream& stream,
                                           const NextRequest& request) {
  auto it = stream.groups.find(request.group);
  if (it != stream.groups.end()) return it->second;
  Group& group = stream.groups[request.group];
  // The oldest step kept besides a kept step 0, which every new group
  // gets first (below): the steps between the two were freed before the
  // group existed, and are nothing it missed.
  auto first = stream.steps.begin();
  if (first != stream.steps.end() && first->first == 0 &&
      stream.policy.keep_first_step) {
    ++first;
  }
  const uint64_t oldest =
      first == stream.steps.end() ? stream.appended : first->first;
  uint64_t start = oldest;
  switch (request.start.kind) {
    case StreamStart::Kind::kOldest:
      break;
    case StreamStart::Kind::kLatest:
      start = stream.appended > 0 ? stream.appended - 1 : 0;
      break;
    case StreamStart::Kind::kStep:
      start = request.start.step;
      if (start < oldest && start < stream.appended) {
        group.lost.push_back(StepRange{start, oldest - 1});
        start = oldest;
      }
      break;
  }
  group.next_step = start;
  group.acked_below = start;
  if (start > 0 && stream.policy.keep_first_step &&
      stream.steps.count(0) != 0) {
    group.to_redeliver.insert(0);
  }
  return group;
}

std::optional<TakenStep> StreamTable::Take(Stream& stream, Group& group,
                                           const NextRequest& request) {
  uint64_t step = 0;
  if (!group.to_redeliver.empty()) {
    step = *group.to_redeliver.begin();
    group.to_redeliver.erase(group.to_redeliver.begin());
  } else {
    // Steps missing below the newest were freed before the group joined
    // or discarded (and recorded lost): skipped.
    // (A step numbered but not yet added is not skipped: it comes.)
    // Steps the group acknowledged elsewhere (AckCopy) are skipped too.
    auto next = stream.steps.lower_bound(group.next_step);
    while (next != stream.steps.end() &&
           (next->first < group.acked_below ||
            group.acked_above.count(next->first) != 0)) {
      ++next;
    }
    if (next == stream.steps.end()) return std::nullopt;
    step = next->first;
    group.next_step = step + 1;
  }
  const absl::Time until =
      clock_() +
      std::min(std::max(request.lease, absl::ZeroDuration()), kMaxLease);
  group.leased[step] = Lease{request.consumer, until};
  AddTimer(until, Timer{TimerKind::kLease, stream.name, request.group, step});
  TakenStep taken;
  taken.step = step;
  taken.image = stream.steps.at(step).image;
  taken.lost = std::move(group.lost);
  group.lost.clear();
  return taken;
}

bool StreamTable::GroupIsDone(const Stream& stream, const Group& group) {
  return stream.finished && group.to_redeliver.empty() &&
         group.leased.empty() &&
         stream.steps.lower_bound(group.next_step) == stream.steps.end() &&
         stream.pending_steps == 0;
}

namespace {

absl::Status FinishedError(std::string_view stream, uint64_t appended,
                           std::string_view group) {
  return absl::OutOfRangeError(
      absl::StrCat("stream '", Sv(stream), "' is finished: group '", Sv(group),
                   "' has had all of its ", appended, " steps"));
}

}  // namespace

void StreamTable::Serve(Stream& stream, After* after) {
  for (auto it = stream.next_waits.begin(); it != stream.next_waits.end();) {
    auto wait = next_waits_.find(*it);
    if (wait == next_waits_.end()) {  // ended meanwhile
      it = stream.next_waits.erase(it);
      continue;
    }
    NextWait& waiting = wait->second;
    Group& group = JoinGroup(stream, waiting.request);
    std::optional<TakenStep> taken = Take(stream, group, waiting.request);
    absl::StatusOr<TakenStep> result;
    if (taken.has_value()) {
      result = *std::move(taken);
    } else if (GroupIsDone(stream, group)) {
      result =
          FinishedError(stream.name, stream.appended, waiting.request.group);
    } else {
      ++it;
      continue;
    }
    after->push_back(
        [done = std::move(waiting.done), result = std::move(result)]() mutable {
          done(std::move(result));
        });
    next_waits_.erase(wait);
    it = stream.next_waits.erase(it);
  }
  for (auto it = stream.room_waits.begin(); it != stream.room_waits.end();) {
    auto wait = room_waits_.find(*it);
    if (wait == room_waits_.end()) {
      it = stream.room_waits.erase(it);
      continue;
    }
    absl::Status status;
    if (stream.finished) {
      status = absl::FailedPreconditionError(absl::StrCat(
          "stream '", stream.name, "' is finished: it takes no more steps"));
    } else if (!HasRoom(stream, wait->second.size)) {
      ++it;
      continue;
    }
    after->push_back([done = std::move(wait->second.done), status]() mutable {
      done(status, /*waited=*/true);
    });
    room_waits_.erase(wait);
    it = stream.room_waits.erase(it);
  }
}

StreamTable::WaitId StreamTable::Next(const NextRequest& request,
                                      absl::Time deadline, NextCallback done) {
  absl::Status invalid = internal::ValidateImageId(request.stream);
  // Group names are kept in snapshots, as image ids are: the same rules.
  if (invalid.ok() && !internal::ValidateImageId(request.group).ok()) {
    invalid = absl::InvalidArgumentError(
        absl::StrCat("reader group names follow the image id rules: ",
                     internal::ValidateImageId(request.group).message()));
  }
  if (invalid.ok()) invalid = ValidateMemberName("consumer", request.consumer);
  if (!invalid.ok()) {
    done(invalid);
    return 0;
  }
  absl::StatusOr<TakenStep> result;
  WaitId id = 0;
  {
    absl::MutexLock lock(&mutex_);
    if (shutting_down_) {
      result = absl::UnavailableError("server is shutting down");
    } else if (absl::Status room = Find(request.stream) != nullptr
                                       ? absl::OkStatus()
                                       : RoomForAStreamNamedByAReader();
               !room.ok()) {
      result = room;
    } else if (const Stream* named = Find(request.stream);
               named != nullptr &&
               named->groups.size() >= kMaxGroupsPerStream &&
               named->groups.count(request.group) == 0) {
      result = absl::ResourceExhaustedError(absl::StrCat(
          "stream '", request.stream, "' has ", named->groups.size(),
          " reader groups, the most a stream takes: delete one it no longer "
          "needs (h5depot stream delete STREAM --group GROUP)"));
    } else {
      Stream& stream = Named(request.stream);
      Group& group = JoinGroup(stream, request);
      if (std::optional<TakenStep> taken = Take(stream, group, request);
          taken.has_value()) {
        result = *std::move(taken);
      } else if (GroupIsDone(stream, group)) {
        result = FinishedError(stream.name, stream.appended, request.group);
      } else if (deadline <= clock_()) {
        result = absl::DeadlineExceededError(
            absl::StrCat("no step of stream '", request.stream,
                         "' came for group '", request.group, "' in time"));
      } else {
        id = next_wait_id_++;
        next_waits_.emplace(id, NextWait{request, deadline, std::move(done)});
        stream.next_waits.push_back(id);
        AddTimer(deadline, Timer{TimerKind::kWait, request.stream, "", 0, id});
      }
    }
  }
  if (id == 0) done(std::move(result));
  return id;
}

absl::StatusOr<TakenStep> StreamTable::NextFor(const NextRequest& request,
                                               absl::Time deadline) {
  absl::Mutex mutex;
  std::optional<absl::StatusOr<TakenStep>> result;
  Next(request, deadline, [&](absl::StatusOr<TakenStep> taken) {
    absl::MutexLock lock(&mutex);
    result = std::move(taken);
  });
  absl::MutexLock lock(&mutex);
  mutex.Await(absl::Condition(
      +[](std::optional<absl::StatusOr<TakenStep>>* r) {
        return r->has_value();
      },
      &result));
  return *std::move(result);
}

absl::Status StreamTable::Ack(std::string_view stream,
                              std::string_view group_name,
                              std::string_view consumer, uint64_t step) {
  After after;
  std::vector<std::string> removed;
  {
    absl::MutexLock lock(&mutex_);
    Stream* found = Find(stream);
    if (found == nullptr) {
      return absl::NotFoundError(absl::StrCat("no stream '", Sv(stream), "'"));
    }
    auto group_it = found->groups.find(group_name);
    if (group_it == found->groups.end()) {
      return absl::NotFoundError(absl::StrCat("stream '", Sv(stream),
                                              "' has no reader group '",
                                              Sv(group_name), "'"));
    }
    Group& group = group_it->second;
    auto lease = group.leased.find(step);
    if (lease == group.leased.end() || lease->second.consumer != consumer) {
      std::string why = "it does not hold it";
      if (lease != group.leased.end() || group.to_redeliver.count(step) != 0) {
        why = "its lease ran out and the step went back to the group";
      } else if (step < group.acked_below ||
                 group.acked_above.count(step) != 0) {
        why = "the group has acknowledged it already";
      }
      return absl::FailedPreconditionError(
          absl::StrCat("'", Sv(consumer), "' of group '", Sv(group_name),
                       "' cannot acknowledge step ", step, " of stream '",
                       Sv(stream), "': ", why));
    }
    group.leased.erase(lease);
    MarkAcked(group, step);
    Trim(*found, &removed);
    Serve(*found, &after);
  }
  RunAfter(std::move(after), std::move(removed));
  return absl::OkStatus();
}

absl::Status StreamTable::AckCopy(std::string_view stream,
                                  std::string_view group_name, uint64_t step) {
  absl::Status invalid = internal::ValidateImageId(group_name);
  if (!invalid.ok()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "reader group names follow the image id rules: ", invalid.message()));
  }
  After after;
  std::vector<std::string> removed;
  {
    absl::MutexLock lock(&mutex_);
    Stream* found = Find(stream);
    if (found == nullptr) {
      return absl::NotFoundError(absl::StrCat("no stream '", Sv(stream), "'"));
    }
    auto [it, made] = found->groups.try_emplace(std::string(group_name));
    Group& group = it->second;
    if (made) {
      // From this step on: what the group did before it is the primary's.
      group.next_step = step;
      group.acked_below = step;
    }
    group.leased.erase(step);  // its timer finds no lease and passes
    group.to_redeliver.erase(step);
    MarkAcked(group, step);
    Trim(*found, &removed);
    Serve(*found, &after);
  }
  RunAfter(std::move(after), std::move(removed));
  return absl::OkStatus();
}

StreamTable::WaitId StreamTable::AwaitRoom(std::string_view stream,
                                           uint64_t size, absl::Time deadline,
                                           RoomCallback done) {
  absl::Status status;
  WaitId id = 0;
  {
    absl::MutexLock lock(&mutex_);
    Stream* found = Find(stream);
    if (shutting_down_) {
      status = absl::UnavailableError("server is shutting down");
    } else if (found == nullptr || !found->created) {
      status = absl::OkStatus();  // its first append makes it, with room
    } else if (found->finished) {
      status = absl::FailedPreconditionError(absl::StrCat(
          "stream '", Sv(stream), "' is finished: it takes no more steps"));
    } else if (HasRoom(*found, size) || size > found->policy.max_bytes) {
      status = absl::OkStatus();  // the append says what is wrong
    } else if (found->policy.when_full != StreamPolicy::WhenFull::kBlock) {
      status = absl::ResourceExhaustedError(absl::StrCat(
          "stream '", Sv(stream), "' is full and its policy is to ",
          Sv(WhenFullName(found->policy.when_full))));
    } else if (deadline <= clock_()) {
      status = absl::DeadlineExceededError(absl::StrCat(
          "stream '", Sv(stream),
          "' had no room for the step in time: its reader groups did not "
          "acknowledge enough steps"));
    } else {
      id = next_wait_id_++;
      room_waits_.emplace(
          id, RoomWait{std::string(stream), size, deadline, std::move(done)});
      found->room_waits.push_back(id);
      AddTimer(deadline,
               Timer{TimerKind::kWait, std::string(stream), "", 0, id});
    }
  }
  if (id == 0) done(status, /*waited=*/false);
  return id;
}

bool StreamTable::CancelWait(WaitId wait, const absl::Status& status) {
  NextCallback next;
  RoomCallback room;
  {
    absl::MutexLock lock(&mutex_);
    if (auto it = next_waits_.find(wait); it != next_waits_.end()) {
      next = std::move(it->second.done);
      next_waits_.erase(it);
    } else if (auto room_it = room_waits_.find(wait);
               room_it != room_waits_.end()) {
      room = std::move(room_it->second.done);
      room_waits_.erase(room_it);
    } else {
      return false;
    }
  }
  // The stream's list forgets the id the next time it is served.
  if (next) next(status);
  if (room) room(status, /*waited=*/true);
  return true;
}

std::vector<StreamRecord> StreamTable::Capture() const {
  absl::ReaderMutexLock lock(&mutex_);
  std::vector<StreamRecord> records;
  for (const auto& [name, stream] : streams_) {
    if (!stream.created) continue;  // named by readers alone: nothing yet
    StreamRecord& record = records.emplace_back();
    record.name = name;
    record.policy = stream.policy;
    record.created = stream.created;
    record.finished = stream.finished;
    record.appended = stream.appended;
    for (const auto& [number, step] : stream.steps) {
      record.steps.emplace_back(number, step.image);
    }
    for (const auto& [group_name, group] : stream.groups) {
      StreamRecord::GroupRecord& out = record.groups.emplace_back();
      out.name = group_name;
      out.next_step = group.next_step;
      out.acked_below = group.acked_below;
      out.acked_above.assign(group.acked_above.begin(),
                             group.acked_above.end());
      out.hand_again.assign(group.to_redeliver.begin(),
                            group.to_redeliver.end());
      for (const auto& [step, lease] : group.leased) {
        out.hand_again.push_back(step);
      }
    }
  }
  return records;
}

void StreamTable::Restore(const StreamRecord& record) {
  absl::MutexLock lock(&mutex_);
  Stream& stream = Named(record.name);
  stream.policy = record.policy;
  stream.created = record.created;
  stream.finished = record.finished;
  stream.appended = record.appended;
  for (const StreamRecord::GroupRecord& in : record.groups) {
    Group& group = stream.groups[in.name];
    group.next_step = in.next_step;
    group.acked_below = in.acked_below;
    group.acked_above.insert(in.acked_above.begin(), in.acked_above.end());
    group.to_redeliver.insert(in.hand_again.begin(), in.hand_again.end());
  }
}

absl::Status StreamTable::AdmitRestoredStep(std::string_view stream,
                                            uint64_t size) {
  absl::MutexLock lock(&mutex_);
  Stream* found = Find(stream);
  if (found == nullptr) {
    return absl::NotFoundError(absl::StrCat("no stream '", Sv(stream), "'"));
  }
  ++found->pending_steps;
  found->pending_bytes += size;
  return absl::OkStatus();
}

void StreamTable::AddRestoredStep(std::string_view stream, uint64_t step,
                                  uint64_t admitted_size, ImageRef image) {
  absl::MutexLock lock(&mutex_);
  Stream& named = Named(stream);
  --named.pending_steps;
  named.pending_bytes -= admitted_size;
  const uint64_t size = image->size();
  named.steps.emplace(step, Step{std::move(image), size});
  named.kept_bytes += size;
}

void StreamTable::LoseSteps(std::string_view stream,
                            const std::vector<uint64_t>& steps) {
  absl::MutexLock lock(&mutex_);
  Stream* found = Find(stream);
  if (found == nullptr) return;
  for (uint64_t step : steps) LoseForGroups(*found, step);
}

void StreamTable::AddTimer(absl::Time due, Timer timer) {
  const bool earliest = timers_.empty() || due < timers_.begin()->first;
  timers_.emplace(due, std::move(timer));
  if (earliest) timer_changed_.Signal();
}

void StreamTable::TimerLoop() {
  for (;;) {
    After after;
    std::vector<std::string> removed;
    {
      absl::MutexLock lock(&mutex_);
      if (shutting_down_) return;
      if (timers_.empty()) {
        timer_changed_.Wait(&mutex_);
        continue;
      }
      const absl::Time now = clock_();
      const absl::Time due = timers_.begin()->first;
      if (due > now) {
        // Wakes at most every second, so a clock that is not absl::Now
        // (a test's) still moves it along.
        timer_changed_.WaitWithTimeout(&mutex_,
                                       std::min(due - now, absl::Seconds(1)));
        continue;
      }
      while (!timers_.empty() && timers_.begin()->first <= now) {
        const absl::Time fired = timers_.begin()->first;
        Timer timer = std::move(timers_.begin()->second);
        timers_.erase(timers_.begin());
        Stream* stream = Find(timer.stream);
        if (timer.kind == TimerKind::kWait) {
          if (auto it = next_waits_.find(timer.wait); it != next_waits_.end()) {
            after.push_back([done = std::move(it->second.done),
                             name = timer.stream,
                             group = it->second.request.group]() mutable {
              done(absl::DeadlineExceededError(
                  absl::StrCat("no step of stream '", name,
                               "' came for group '", Sv(group), "' in time")));
            });
            next_waits_.erase(it);
          } else if (auto room = room_waits_.find(timer.wait);
                     room != room_waits_.end()) {
            after.push_back([done = std::move(room->second.done),
                             name = timer.stream]() mutable {
              done(absl::DeadlineExceededError(
                       absl::StrCat("stream '", name,
                                    "' had no room for the step in time: its "
                                    "reader groups did "
                                    "not acknowledge enough steps")),
                   /*waited=*/true);
            });
            room_waits_.erase(room);
          }
          continue;
        }
        if (stream == nullptr) continue;
        auto group = stream->groups.find(timer.group);
        if (group == stream->groups.end()) continue;
        auto lease = group->second.leased.find(timer.step);
        // A lease acknowledged, or taken again, since this timer was set.
        if (lease == group->second.leased.end() ||
            lease->second.until != fired) {
          continue;
        }
        group->second.leased.erase(lease);
        if (stream->steps.count(timer.step) != 0) {
          group->second.to_redeliver.insert(timer.step);
        } else {
          MarkAcked(group->second, timer.step);  // discarded meanwhile
          Trim(*stream, &removed);
        }
        Serve(*stream, &after);
      }
    }
    RunAfter(std::move(after), std::move(removed));
  }
}

void StreamTable::RunAfter(After after, std::vector<std::string> removed) {
  if (!removed.empty()) remove_steps_(std::move(removed));
  for (auto& run : after) run();
}

void StreamTable::Shutdown() {
  After after;
  {
    absl::MutexLock lock(&mutex_);
    shutting_down_ = true;
    for (auto& [id, wait] : next_waits_) {
      after.push_back([done = std::move(wait.done)]() mutable {
        done(absl::UnavailableError("server is shutting down"));
      });
    }
    next_waits_.clear();
    for (auto& [id, wait] : room_waits_) {
      after.push_back([done = std::move(wait.done)]() mutable {
        done(absl::UnavailableError("server is shutting down"),
             /*waited=*/true);
      });
    }
    room_waits_.clear();
    timer_changed_.Signal();
  }
  for (auto& run : after) run();
}

}  // namespace h5depot::server
