#include <algorithm>
#include <deque>
#include <optional>
#include <string>
#include <thread>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "h5depot/rpc/chunk_codec.h"
#include "h5depot/rpc/grpc_status.h"
#include "server/src/depot_service_internal.h"
#include "server/src/server_metrics_internal.h"

namespace h5depot::server {
namespace {

using internal::ParseMessage;
using internal::SerializeMessage;
using internal::ToGrpcStatus;

// The one conversion of an image's description to the wire's ImageInfo.
void EncodeInfo(const StoredImage& image, v1::ImageInfo* info,
                DepotOperations::ChecksumNeed checksum =
                    DepotOperations::ChecksumNeed::kCompute) {
  const ImageDescription description =
      DepotOperations::Describe(image, checksum);
  info->set_image_id(std::string(description.image_id));
  info->set_size(description.size);
  info->set_generation(description.generation);
  info->set_checksum(description.checksum);
  info->set_created_unix_micros(description.created_unix_micros);
  info->set_expires_unix_micros(description.expires_unix_micros);
}

// The one conversion of a stream's policy from the wire (0: default).
StreamPolicy DecodePolicy(const v1::StreamPolicy& wire) {
  StreamPolicy policy;
  if (wire.max_steps() != 0) policy.max_steps = wire.max_steps();
  if (wire.max_bytes() != 0) policy.max_bytes = wire.max_bytes();
  switch (wire.when_full()) {
    case v1::StreamPolicy::DISCARD_OLDEST:
      policy.when_full = StreamPolicy::WhenFull::kDiscardOldest;
      break;
    case v1::StreamPolicy::REFUSE:
      policy.when_full = StreamPolicy::WhenFull::kRefuse;
      break;
    default:
      policy.when_full = StreamPolicy::WhenFull::kBlock;
      break;
  }
  policy.reserve_steps = wire.reserve_steps();
  policy.keep_first_step = wire.keep_first_step();
  return policy;
}

// And of a stream's state to the wire.
void EncodeStreamInfo(const StreamState& state, v1::StreamInfo* out) {
  out->set_stream(state.name);
  v1::StreamPolicy* policy = out->mutable_policy();
  policy->set_max_steps(state.policy.max_steps);
  policy->set_max_bytes(state.policy.max_bytes);
  switch (state.policy.when_full) {
    case StreamPolicy::WhenFull::kBlock:
      policy->set_when_full(v1::StreamPolicy::BLOCK);
      break;
    case StreamPolicy::WhenFull::kDiscardOldest:
      policy->set_when_full(v1::StreamPolicy::DISCARD_OLDEST);
      break;
    case StreamPolicy::WhenFull::kRefuse:
      policy->set_when_full(v1::StreamPolicy::REFUSE);
      break;
  }
  policy->set_reserve_steps(state.policy.reserve_steps);
  policy->set_keep_first_step(state.policy.keep_first_step);
  out->set_created(state.created);
  out->set_finished(state.finished);
  out->set_appended_steps(state.appended_steps);
  out->set_queued_steps(state.queued_steps);
  out->set_queued_bytes(state.queued_bytes);
  out->set_kept_steps(state.kept_steps);
  out->set_kept_bytes(state.kept_bytes);
  if (state.oldest_kept_step.has_value()) {
    out->set_oldest_kept_step(*state.oldest_kept_step);
  }
  for (const StreamGroupState& group : state.groups) {
    v1::StreamGroupInfo* info = out->add_groups();
    info->set_name(group.name);
    info->set_next_step(group.next_step);
    info->set_acked_below(group.acked_below);
    info->set_leased_steps(group.leased_steps);
    info->set_waiting_steps(group.waiting_steps);
  }
}

std::string PeerOfContext(const void* context) {
  return static_cast<const grpc::ServerContextBase*>(context)->peer();
}

// The bearer token of a call: its "authorization" metadata,
// "Bearer <token>" (empty if it has none of that form).
std::string_view TokenOfContext(const void* context) {
  const auto& metadata =
      static_cast<const grpc::ServerContextBase*>(context)->client_metadata();
  auto found = metadata.find("authorization");
  if (found == metadata.end()) return {};
  const std::string_view value(found->second.data(), found->second.size());
  constexpr std::string_view kScheme = "Bearer ";
  if (value.substr(0, kScheme.size()) != kScheme) return {};
  return value.substr(kScheme.size());
}

// The caller of a call, for the authorisation hook; its peer and token are
// looked up only if the hook asks.
Caller CallerOf(const grpc::ServerContextBase* context) {
  return Caller::Deferred(Transport::kGrpc, &PeerOfContext, &TokenOfContext,
                          context);
}

std::optional<uint64_t> OptionalGeneration(bool has, uint64_t value) {
  return has ? std::optional<uint64_t>(value) : std::nullopt;
}

// A response message of type Response carrying only `image`'s info.
template <typename Response>
grpc::ByteBuffer InfoMessage(const StoredImage& image) {
  Response response;
  EncodeInfo(image, response.mutable_info());
  return SerializeMessage(response);
}

// A call turned away because the server is stopping: answered at once,
// its pass held until gRPC is done with it. `Reactor` is the reactor type
// the method returns.
template <typename Reactor>
class RefusedReactor final : public Reactor {
 public:
  RefusedReactor(CallGate::Pass pass, CallRecord record)
      : pass_(std::move(pass)) {
    record.End(CallGate::RefusedStatus());
    this->Finish(CallGate::RefusedStatus());
  }

  void OnDone() override { delete this; }

 private:
  CallGate::Pass pass_;
};

// A unary call its method handler answers at once (the handler calls
// Answer before returning it).
class UnaryReactor final : public grpc::ServerUnaryReactor {
 public:
  UnaryReactor(CallGate::Pass pass, CallRecord record)
      : pass_(std::move(pass)), record_(record) {}

  void Answer(const grpc::Status& status) {
    record_.End(status);
    Finish(status);
  }

  void OnDone() override { delete this; }

 private:
  CallGate::Pass pass_;
  CallRecord record_;
};

// Receives one push: the header, then chunks straight into the
// PendingImage, then publishes.
//
// The PendingImage is used by one thread at a time: gRPC's (OnReadDone)
// or, for a large push, the worker, each borrowing it (Borrow, GiveBack)
// for as long as it appends or publishes; and the store's reaper, if the
// push falls behind and is cut off (CutOff). A cut-off that finds it lent
// leaves the borrower to end the call; either way the PendingImage is
// destroyed, releasing its memory, before the client is told why.
class PushReactor final : public grpc::ServerReadReactor<grpc::ByteBuffer> {
 public:
  PushReactor(CallGate::Pass pass, CallRecord record,
              DepotOperations* operations, grpc::CallbackServerContext* context,
              grpc::ByteBuffer* response)
      : pass_(std::move(pass)),
        record_(record),
        operations_(operations),
        context_(context),
        response_(response) {
    StartRead(&message_);
  }

  void OnReadDone(bool ok) override {
    if (worker_.joinable()) {
      Enqueue(ok);
      return;
    }
    if (!ok) {
      Complete();
      return;
    }
    if (!Borrow()) return;
    absl::Status status = pending_ == nullptr ? Begin() : Append(message_);
    message_.Clear();
    const bool large =
        status.ok() && pending_->declared_size() >= kWorkerMinBytes;
    if (!GiveBack(std::move(status))) return;
    if (large) worker_ = std::thread([this] { AppendLoop(); });
    StartRead(&message_);
  }

  void OnDone() override {
    if (worker_.joinable()) {
      // The worker may itself be running this, having finished the call.
      if (worker_.get_id() == std::this_thread::get_id()) {
        worker_.detach();
      } else {
        worker_.join();
      }
    }
    // Before any member a cut-off under way may still use goes.
    pending_.reset();
    delete this;
  }

 private:
  // Large pushes copy and hash their chunks on a thread of their own, so
  // that gRPC's threads go on receiving meanwhile instead of doing both in
  // turn. At most kMaxQueued chunks wait for it; beyond that reading pauses.
  static constexpr uint64_t kWorkerMinBytes = uint64_t{16} << 20;
  static constexpr size_t kMaxQueued = 4;

  // Runs in OnReadDone. StartRead is called outside the lock: gRPC may
  // run the next OnReadDone before StartRead returns.
  void Enqueue(bool ok) {
    bool read_more = false;
    {
      absl::MutexLock lock(&mutex_);
      if (ok) {
        grpc::ByteBuffer message;
        message.Swap(&message_);
        queue_.push_back(std::move(message));
        read_more = queue_.size() < kMaxQueued && !finished_;
        reading_ = read_more;
      } else {
        ended_ = true;
      }
    }
    queued_.Signal();
    if (read_more) StartRead(&message_);
  }

  void AppendLoop() {
    while (true) {
      grpc::ByteBuffer message;
      bool resume_reading = false;
      {
        absl::MutexLock lock(&mutex_);
        while (queue_.empty() && !ended_ && !finished_) queued_.Wait(&mutex_);
        if (finished_) return;      // cut off
        if (queue_.empty()) break;  // ended, and every chunk appended
        message.Swap(&queue_.front());
        queue_.pop_front();
        resume_reading = !reading_ && !ended_;
        if (resume_reading) reading_ = true;
      }
      if (resume_reading) StartRead(&message_);
      if (!Borrow()) return;
      if (!GiveBack(Append(message))) return;  // `this` may be gone
    }
    Complete();  // `this` may be gone afterwards
  }

  absl::Status Begin() {
    v1::PushRequest request;
    if (!ParseMessage(message_, &request) || !request.has_header()) {
      return absl::InvalidArgumentError(
          "a push must start with a header message");
    }
    const v1::PushHeader& header = request.header();
    PushParams params;
    params.image_id = header.image_id();
    params.size = header.size();
    params.checksum = header.checksum();
    params.if_generation_match = OptionalGeneration(
        header.has_if_generation_match(), header.if_generation_match());
    params.ttl_ms = header.ttl_ms();
    params.replica_generation = header.replica_generation();
    params.stream_append = header.stream_append();
    if (header.has_replica_step()) params.replica_step = header.replica_step();
    // The cut-off comes only while pending_ lives, and OnDone destroys it
    // before the reactor: `this` is alive whenever it runs.
    absl::StatusOr<std::unique_ptr<PendingImage>> pending =
        operations_->BeginPush(
            CallerOf(context_), std::move(params),
            [this](const absl::Status& why) { CutOff(why); });
    if (!pending.ok()) return pending.status();
    pending_ = *std::move(pending);
    // Tells a client waiting before it streams a large image to go ahead.
    StartSendInitialMetadata();
    return absl::OkStatus();
  }

  absl::Status Append(const grpc::ByteBuffer& message) {
    internal::ChunkPayload chunk;
    if (chunk.Parse(message)) {
      absl::Status status;
      chunk.ForEachPiece([&](const uint8_t* data, size_t size) {
        status = pending_->Append(data, size);
        return status.ok();
      });
      return status;
    }
    v1::PushRequest request;
    if (!ParseMessage(message, &request) || !request.has_chunk()) {
      return absl::InvalidArgumentError(
          "a push sends one header, then only chunks");
    }
    return pending_->Append(request.chunk().data(), request.chunk().size());
  }

  void Complete() {
    if (!Borrow()) return;
    absl::Status status;
    if (context_->IsCancelled()) {
      status = absl::CancelledError(
          "the push was cancelled before it completed; nothing was stored");
    } else if (pending_ == nullptr) {
      status =
          absl::InvalidArgumentError("a push must start with a header message");
    } else {
      absl::StatusOr<ImageRef> published =
          operations_->FinishPush(*pending_, std::nullopt);
      if (published.ok()) {
        v1::PushResponse response;
        EncodeInfo(**published, response.mutable_info());
        *response_ = SerializeMessage(response);
        record_.AddImageBytes((*published)->size());
      }
      status = published.status();
    }
    if (GiveBack(std::move(status))) FinishOnce(absl::OkStatus());
  }

  // Takes pending_ for this thread to use; false if the push was cut off
  // (the cut-off then ends the call).
  bool Borrow() {
    absl::MutexLock lock(&mutex_);
    if (finished_ || !cut_.ok()) return false;
    lent_ = true;
    return true;
  }

  // Hands pending_ back after a step that ended with `status`. True if the
  // push goes on; false if it failed or was cut off meanwhile: pending_ is
  // destroyed then, and the call finished with why. `this` may be gone
  // after false.
  bool GiveBack(absl::Status status) {
    std::unique_ptr<PendingImage> dropped;
    {
      absl::MutexLock lock(&mutex_);
      lent_ = false;
      if (!cut_.ok()) status = cut_;
      if (status.ok()) return true;
      finished_ = true;
      dropped = std::move(pending_);
    }
    EndCall(std::move(dropped), status);
    return false;
  }

  // The store's cut-off, on the reaper's thread: ends the call, unless a
  // borrower is under way, which then does (GiveBack).
  void CutOff(const absl::Status& why) {
    std::unique_ptr<PendingImage> dropped;
    {
      absl::MutexLock lock(&mutex_);
      if (finished_) return;
      cut_ = why;
      if (lent_) return;
      // Nobody else touches pending_ from here on: Borrow refuses.
      finished_ = true;
      dropped = std::move(pending_);
    }
    EndCall(std::move(dropped), why);  // `this` may be gone afterwards
  }

  // Finishes the call with `status` unless it has been finished already.
  void FinishOnce(const absl::Status& status) {
    {
      absl::MutexLock lock(&mutex_);
      if (finished_) return;
      finished_ = true;
    }
    const grpc::Status sent = ToGrpcStatus(status);
    record_.End(sent);
    Finish(sent);
  }

  // Ends the call with `status` by the thread that just set `finished_`:
  // the push's memory is released before the client can learn why, and a
  // waiting worker stops.
  void EndCall(std::unique_ptr<PendingImage> dropped,
               const absl::Status& status) {
    dropped.reset();
    queued_.Signal();
    const grpc::Status sent = ToGrpcStatus(status);
    record_.End(sent);
    Finish(sent);
  }

  CallGate::Pass pass_;
  CallRecord record_;  // ended by whichever thread finishes the call
  DepotOperations* const operations_;
  grpc::CallbackServerContext* const context_;
  grpc::ByteBuffer* const response_;
  grpc::ByteBuffer message_;  // the read under way
  // Used by whichever thread holds it (see the class comment): not
  // guarded by `mutex_`, but handed over under it.
  std::unique_ptr<PendingImage> pending_;
  std::thread worker_;
  absl::Mutex mutex_;
  absl::CondVar queued_;  // a chunk was queued, the client is done, or the
                          // call was finished
  std::deque<grpc::ByteBuffer> queue_ ABSL_GUARDED_BY(mutex_);
  bool reading_ ABSL_GUARDED_BY(mutex_) = true;    // a read is under way
  bool ended_ ABSL_GUARDED_BY(mutex_) = false;     // the client is done
  bool finished_ ABSL_GUARDED_BY(mutex_) = false;  // Finish was called
  bool lent_ ABSL_GUARDED_BY(mutex_) = false;      // pending_ is borrowed
  absl::Status cut_ ABSL_GUARDED_BY(mutex_);       // why it was cut off
};

// Sends an info message, then a byte range of an image as chunk messages
// built from slices of the stored buffer itself: each holds a reference to
// the image, so a generation replaced or deleted meanwhile stays intact
// until gRPC has sent the last byte of it.
class SendReactor final : public grpc::ServerWriteReactor<grpc::ByteBuffer> {
 public:
  SendReactor(CallGate::Pass pass, CallRecord record, uint64_t chunk_bytes)
      : pass_(std::move(pass)), record_(record), chunk_bytes_(chunk_bytes) {}

  // Sends `info`, then bytes [offset, offset + length) of `image` (which
  // must lie within it), then OK.
  void Send(ImageRef image, grpc::ByteBuffer info, uint64_t offset,
            uint64_t length) {
    image_ = std::move(image);
    next_ = offset;
    end_ = offset + length;
    message_ = std::move(info);
    record_.AddImageBytes(length);
    if (next_ == end_) {
      finishing_ = true;
      record_.End(grpc::Status::OK);
      StartWriteAndFinish(&message_, grpc::WriteOptions(), grpc::Status::OK);
    } else {
      StartWrite(&message_);
    }
  }

  void Fail(const absl::Status& status) {
    finishing_ = true;
    const grpc::Status sent = ToGrpcStatus(status);
    record_.End(sent);
    Finish(sent);
  }

  // Sends the whole image once `operations` finds `image_id` (a generation
  // newer than `wait.newer_than`), waiting up to `wait.wait_ms` for it to
  // be published with no thread held meanwhile, or
  // fails with the operation's error. Called from the method handler: a
  // cancellation (OnCancel) comes only once it has returned, so `wait_` is
  // set by then.
  void SendWholeImageWhenFound(DepotOperations* operations,
                               const Caller& caller, std::string_view image_id,
                               ImageWait wait) {
    operations_ = operations;
    // The wait ends exactly once, and the reactor is finished (and so
    // deleted) only through `SendWholeImage` or `Fail` called from it:
    // `this` is alive whenever it runs.
    wait_ = operations->AwaitImage(caller, Operation::kFetch, image_id, wait,
                                   [this](absl::StatusOr<ImageRef> image) {
                                     SendWholeImage(std::move(image));
                                   });
  }

  // Sends all of `image`, or fails with its error.
  void SendWholeImage(absl::StatusOr<ImageRef> image) {
    if (!image.ok()) {
      Fail(image.status());
      return;
    }
    grpc::ByteBuffer info = InfoMessage<v1::FetchResponse>(**image);
    const uint64_t size = (*image)->size();
    Send(*std::move(image), std::move(info), 0, size);
  }

  // A wait still pending ends with CANCELLED, failing the call; one that
  // has ended is under way or done, and finishes the call itself.
  void OnCancel() override {
    if (operations_ != nullptr) operations_->CancelWait(wait_);
  }

  void OnWriteDone(bool ok) override {
    if (finishing_) return;
    if (!ok) {
      Fail(absl::CancelledError("the client went away during the transfer"));
      return;
    }
    const uint64_t n = std::min(chunk_bytes_, end_ - next_);
    message_ =
        internal::ChunkMessageReferencing(image_->data() + next_, n, image_);
    next_ += n;
    if (next_ == end_) {
      finishing_ = true;
      record_.End(grpc::Status::OK);
      StartWriteAndFinish(&message_, grpc::WriteOptions(), grpc::Status::OK);
    } else {
      StartWrite(&message_);
    }
  }

  void OnDone() override { delete this; }

 private:
  CallGate::Pass pass_;
  CallRecord record_;
  const uint64_t chunk_bytes_;
  ImageRef image_;
  uint64_t next_ = 0;
  uint64_t end_ = 0;
  bool finishing_ = false;
  grpc::ByteBuffer message_;
  // A Fetch waiting for its image: the wait to cancel (0: none pending).
  DepotOperations* operations_ = nullptr;
  ImageStore::WaitId wait_ = 0;
};

// A Stat waiting for its image: finished by the wait's end, whoever ends
// it (a publish, the deadline, shutdown, or OnCancel).
class WaitingStatReactor final : public grpc::ServerUnaryReactor {
 public:
  WaitingStatReactor(CallGate::Pass pass, CallRecord record,
                     DepotOperations* operations, v1::ImageInfo* response)
      : pass_(std::move(pass)),
        record_(record),
        operations_(operations),
        response_(response) {}

  // Called from the method handler; see SendReactor's
  // SendWholeImageWhenFound for why `wait_` and `this` are safe.
  void Start(const Caller& caller, std::string_view image_id, ImageWait wait) {
    wait_ = operations_->AwaitImage(caller, Operation::kStat, image_id, wait,
                                    [this](absl::StatusOr<ImageRef> image) {
                                      if (image.ok())
                                        EncodeInfo(**image, response_);
                                      const grpc::Status sent =
                                          ToGrpcStatus(image.status());
                                      record_.End(sent);
                                      Finish(sent);
                                    });
  }

  void OnCancel() override { operations_->CancelWait(wait_); }
  void OnDone() override { delete this; }

 private:
  CallGate::Pass pass_;
  CallRecord record_;  // ended by the wait's end, on its thread
  DepotOperations* const operations_;
  v1::ImageInfo* const response_;
  ImageStore::WaitId wait_ = 0;
};

// The one conversion of a store change to the wire's WatchEvent.
void EncodeEvent(const ImageEvent& event, v1::WatchEvent* out) {
  switch (event.kind) {
    case ImageEvent::Kind::kPublished:
      out->set_kind(v1::WatchEvent::PUBLISHED);
      break;
    case ImageEvent::Kind::kReplaced:
      out->set_kind(v1::WatchEvent::REPLACED);
      break;
    case ImageEvent::Kind::kDeleted:
      out->set_kind(v1::WatchEvent::DELETED);
      break;
    case ImageEvent::Kind::kExpired:
      out->set_kind(v1::WatchEvent::EXPIRED);
      break;
    case ImageEvent::Kind::kEvicted:
      out->set_kind(v1::WatchEvent::EVICTED);
      break;
  }
  out->set_sequence(event.sequence);
  out->set_image_id(event.image_id);
  out->set_generation(event.generation);
  out->set_size(event.size);
  out->set_replaced_generation(event.replaced_generation);
  out->set_unix_micros(absl::ToUnixMicros(event.time));
}

// Serves one watch: the `started` message, then the feed's pages as they
// come, one write at a time, each followed by the next read of the feed.
// When the feed has nothing new the reactor asks the store to call it
// back and holds no thread. A slow client slows only its own reads of the
// store's history (the feed tells it what it lost if it falls too far
// behind); the server buffers one message for it.
//
// The watch is moved on by whichever thread comes: gRPC's (OnWriteDone,
// OnCancel) or the one that made a change (the store's notification).
// Each decides under the lock what to do and does it after releasing it
// (gRPC may run a reaction inline in StartWrite or Finish). At most one
// write is under way, and once `finished_` is set nothing else is done.
// The notification holds `shared_`, not the reactor, so one that comes
// after the call ended finds it gone.
class WatchReactor final : public grpc::ServerWriteReactor<v1::WatchResponse> {
 public:
  WatchReactor(CallGate::Pass pass, CallRecord record,
               absl::StatusOr<EventFeed> feed)
      : pass_(std::move(pass)),
        record_(record),
        shared_(std::make_shared<Shared>()) {
    shared_->reactor = this;
    if (!feed.ok()) {
      finished_ = true;
      status_ = ToGrpcStatus(feed.status());
      record_.End(status_);
      Finish(status_);
      return;
    }
    absl::MutexLock lock(&shared_->mutex);
    feed_.emplace(*std::move(feed));
    writing_ = true;
    message_.mutable_started()->set_after_sequence(feed_->position());
    StartWrite(&message_);  // no other thread knows of the reactor yet
  }

  void OnWriteDone(bool ok) override {
    Action action = Action::kNothing;
    {
      absl::MutexLock lock(&shared_->mutex);
      writing_ = false;
      if (!ok) {
        finished_ = true;
        status_ =
            grpc::Status(grpc::StatusCode::CANCELLED, "the watcher went away");
        action = Action::kFinish;
      } else {
        action = DecideLocked();
      }
    }
    Act(action);
  }

  void OnCancel() override {
    {
      absl::MutexLock lock(&shared_->mutex);
      // A write under way ends with OnWriteDone(false), which finishes.
      if (finished_ || writing_) return;
      if (notification_ != 0) feed_->CancelNotification(notification_);
      notification_ = 0;
      finished_ = true;
    }
    status_ =
        grpc::Status(grpc::StatusCode::CANCELLED, "the watch was cancelled");
    record_.End(status_);
    Finish(status_);
  }

  void OnDone() override {
    {
      absl::MutexLock lock(&shared_->mutex);
      shared_->reactor = nullptr;
    }
    delete this;
  }

 private:
  // Changes per message: a message stays small, and a slow watcher's
  // message in flight holds little memory.
  static constexpr size_t kMaxBatch = 512;

  struct Shared {
    absl::Mutex mutex;
    WatchReactor* reactor ABSL_GUARDED_BY(mutex);  // null once done
  };
  enum class Action { kNothing, kWrite, kFinish };

  // The store's notification: a change came, or the store is stopping.
  static void Notified(const std::shared_ptr<Shared>& shared) {
    WatchReactor* reactor;
    Action action = Action::kNothing;
    {
      absl::MutexLock lock(&shared->mutex);
      reactor = shared->reactor;
      if (reactor == nullptr) return;
      reactor->shared_->mutex.AssertHeld();
      reactor->notification_ = 0;
      action = reactor->DecideLocked();
    }
    // Alive: it is finished only by this Act, or after the write this
    // Act starts.
    reactor->Act(action);
  }

  // What to do next, with the lock held: write the next message, finish,
  // or nothing (a write is under way, the call is finished, or the feed
  // is waiting for a change).
  Action DecideLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(shared_->mutex) {
    if (finished_ || writing_ || notification_ != 0) return Action::kNothing;
    message_.Clear();
    if (pending_.has_value()) {
      message_.mutable_events()->Swap(&*pending_);
      pending_.reset();
      writing_ = true;
      return Action::kWrite;
    }
    while (true) {
      absl::StatusOr<EventPage> page = feed_->Next(kMaxBatch);
      if (!page.ok()) {
        finished_ = true;
        status_ = ToGrpcStatus(page.status());
        return Action::kFinish;
      }
      v1::WatchEventBatch batch;
      for (const ImageEvent& event : page->events) {
        EncodeEvent(event, batch.add_events());
      }
      if (page->lost_last != 0) {
        v1::EventsLost* lost = message_.mutable_lost();
        lost->set_first_sequence(page->lost_first);
        lost->set_last_sequence(page->lost_last);
        if (batch.events_size() > 0) pending_.emplace(std::move(batch));
        writing_ = true;
        return Action::kWrite;
      }
      if (batch.events_size() > 0) {
        message_.mutable_events()->Swap(&batch);
        writing_ = true;
        return Action::kWrite;
      }
      if (page->more) continue;
      notification_ =
          feed_->NotifyWhenMore([shared = shared_] { Notified(shared); });
      if (notification_ != 0) return Action::kNothing;
    }
  }

  void Act(Action action) {
    switch (action) {
      case Action::kNothing:
        return;
      case Action::kWrite:
        StartWrite(&message_);
        return;
      case Action::kFinish:
        record_.End(status_);
        Finish(status_);
        return;
    }
  }

  CallGate::Pass pass_;
  CallRecord record_;  // ended by the thread that finishes the call
  const std::shared_ptr<Shared> shared_;
  std::optional<EventFeed> feed_ ABSL_GUARDED_BY(shared_->mutex);
  // The message being written: set before a write starts, untouched until
  // it is done.
  v1::WatchResponse message_;
  // Events read together with a loss, sent after it.
  std::optional<v1::WatchEventBatch> pending_ ABSL_GUARDED_BY(shared_->mutex);
  grpc::Status status_;  // what Finish sends, set before it is called
  bool writing_ ABSL_GUARDED_BY(shared_->mutex) = false;
  bool finished_ ABSL_GUARDED_BY(shared_->mutex) = false;
  ImageStore::NotificationId notification_ ABSL_GUARDED_BY(shared_->mutex) = 0;
};

// Serves one reader: the open message pins a generation, and each range
// after it is answered with its bytes as chunk messages built from slices
// of the stored buffer. One operation at a time: the next request is read
// once the previous range is sent. The stream is a call under way (it
// holds a pass) only while it opens or sends a range: a reader that merely
// pins its generation does not hold up a stop.
class ReaderReactor final
    : public grpc::ServerBidiReactor<grpc::ByteBuffer, grpc::ByteBuffer> {
 public:
  ReaderReactor(CallGate::Pass pass, CallRecord record, CallGate* gate,
                DepotOperations* operations,
                grpc::CallbackServerContext* context, uint64_t chunk_bytes)
      : pass_(std::move(pass)),
        record_(record),
        gate_(gate),
        operations_(operations),
        context_(context),
        chunk_bytes_(chunk_bytes) {
    StartRead(&in_);
  }

  void OnReadDone(bool ok) override {
    if (!ok) {  // the client closed the reader
      End(grpc::Status::OK);
      return;
    }
    if (image_ != nullptr) {
      pass_ = gate_->Enter();
      if (!pass_.admitted()) {
        End(CallGate::RefusedStatus());
        return;
      }
    }
    v1::ReaderRequest request;
    const bool parsed = ParseMessage(in_, &request);
    in_.Clear();
    absl::Status status =
        image_ == nullptr ? Open(parsed, request) : StartRange(parsed, request);
    if (!status.ok()) End(ToGrpcStatus(status));
  }

  void OnWriteDone(bool ok) override {
    if (!ok) {
      End(ToGrpcStatus(
          absl::CancelledError("the client went away during the transfer")));
      return;
    }
    SendNextOrRead();
  }

  void OnDone() override { delete this; }

 private:
  // The whole stream is one read call in the metrics, ended here.
  void End(const grpc::Status& status) {
    record_.End(status);
    Finish(status);
  }

  absl::Status Open(bool parsed, const v1::ReaderRequest& request) {
    if (!parsed || !request.has_open()) {
      return absl::InvalidArgumentError(
          "a reader must start with an open message");
    }
    // Holding the reference pins this generation for the life of the call.
    absl::StatusOr<ImageRef> image =
        operations_->OpenReader(CallerOf(context_), request.open().image_id(),
                                request.open().generation());
    if (!image.ok()) return image.status();
    image_ = *std::move(image);
    out_ = InfoMessage<v1::ReaderResponse>(*image_);
    StartWrite(&out_);
    return absl::OkStatus();
  }

  absl::Status StartRange(bool parsed, const v1::ReaderRequest& request) {
    if (!parsed || !request.has_range()) {
      return absl::InvalidArgumentError(
          "a reader sends one open message, then only ranges");
    }
    const ByteRange range = DepotOperations::ClampRange(
        *image_, request.range().offset(), request.range().length());
    next_ = range.offset;
    end_ = range.offset + range.length;
    record_.AddImageBytes(range.length);
    SendNextOrRead();
    return absl::OkStatus();
  }

  void SendNextOrRead() {
    if (next_ == end_) {
      pass_.Leave();  // idle until the next request
      StartRead(&in_);
      return;
    }
    const uint64_t n = std::min(chunk_bytes_, end_ - next_);
    out_ = internal::ChunkMessageReferencing(image_->data() + next_, n, image_);
    next_ += n;
    StartWrite(&out_);
  }

  CallGate::Pass pass_;
  CallRecord record_;
  CallGate* const gate_;
  DepotOperations* const operations_;
  grpc::CallbackServerContext* const context_;
  const uint64_t chunk_bytes_;
  ImageRef image_;
  uint64_t next_ = 0;
  uint64_t end_ = 0;
  grpc::ByteBuffer in_;
  grpc::ByteBuffer out_;
};

}  // namespace

CallRecord::CallRecord(ServerMetrics* metrics, Operation op)
    : metrics_(metrics),
      op_(op),
      start_(metrics != nullptr ? absl::Now() : absl::InfinitePast()) {}

void CallRecord::End(const grpc::Status& status) {
  if (metrics_ == nullptr) return;
  const auto code = static_cast<absl::StatusCode>(status.error_code());
  std::exchange(metrics_, nullptr)
      ->RecordCall(op_, Transport::kGrpc, code,
                   code == absl::StatusCode::kOk ? image_bytes_ : 0,
                   absl::Now() - start_);
}

void CallGate::Pass::Leave() {
  if (gate_ != nullptr) std::exchange(gate_, nullptr)->Leave();
}

CallGate::Pass CallGate::Enter() {
  calls_.fetch_add(1);
  return Pass(this, !closed_.load());
}

void CallGate::Leave() {
  if (calls_.fetch_sub(1) == 1 && closed_.load()) {
    // Releasing the mutex re-evaluates AwaitNoCalls's condition.
    absl::MutexLock lock(&mutex_);
  }
}

void CallGate::Close() { closed_.store(true); }

bool CallGate::AwaitNoCalls(absl::Time deadline) {
  absl::MutexLock lock(&mutex_);
  return mutex_.AwaitWithDeadline(
      absl::Condition(
          +[](std::atomic<int64_t>* calls) { return calls->load() == 0; },
          &calls_),
      deadline);
}

grpc::Status CallGate::RefusedStatus() {
  return ToGrpcStatus(absl::UnavailableError("server is shutting down"));
}

DepotService::DepotService(DepotOperations* operations,
                           uint64_t max_chunk_bytes, uint64_t send_chunk_bytes,
                           DataLaneAddresses data_lane, ServerMetrics* metrics)
    : operations_(operations),
      metrics_(metrics),
      max_chunk_bytes_(max_chunk_bytes),
      send_chunk_bytes_(send_chunk_bytes),
      data_lane_(std::move(data_lane)) {}

grpc::ServerReadReactor<grpc::ByteBuffer>* DepotService::Push(
    grpc::CallbackServerContext* context, grpc::ByteBuffer* response) {
  CallGate::Pass pass = gate_.Enter();
  if (!pass.admitted()) {
    return new RefusedReactor<grpc::ServerReadReactor<grpc::ByteBuffer>>(
        std::move(pass), Record(Operation::kPush));
  }
  return new PushReactor(std::move(pass), Record(Operation::kPush), operations_,
                         context, response);
}

grpc::ServerWriteReactor<grpc::ByteBuffer>* DepotService::Fetch(
    grpc::CallbackServerContext* context, const grpc::ByteBuffer* request) {
  CallGate::Pass pass = gate_.Enter();
  if (!pass.admitted()) {
    return new RefusedReactor<grpc::ServerWriteReactor<grpc::ByteBuffer>>(
        std::move(pass), Record(Operation::kFetch));
  }
  auto* reactor = new SendReactor(std::move(pass), Record(Operation::kFetch),
                                  send_chunk_bytes_);
  v1::FetchRequest fetch;
  if (!ParseMessage(*request, &fetch)) {
    reactor->Fail(absl::InvalidArgumentError("malformed fetch request"));
    return reactor;
  }
  if (fetch.wait_timeout_ms() > 0 || fetch.newer_than_generation() > 0) {
    reactor->SendWholeImageWhenFound(
        operations_, CallerOf(context), fetch.image_id(),
        ImageWait{fetch.newer_than_generation(), fetch.wait_timeout_ms()});
    return reactor;
  }
  reactor->SendWholeImage(
      operations_->Fetch(CallerOf(context), fetch.image_id()));
  return reactor;
}

grpc::ServerWriteReactor<grpc::ByteBuffer>* DepotService::Read(
    grpc::CallbackServerContext* context, const grpc::ByteBuffer* request) {
  CallGate::Pass pass = gate_.Enter();
  if (!pass.admitted()) {
    return new RefusedReactor<grpc::ServerWriteReactor<grpc::ByteBuffer>>(
        std::move(pass), Record(Operation::kRead));
  }
  auto* reactor = new SendReactor(std::move(pass), Record(Operation::kRead),
                                  send_chunk_bytes_);
  v1::ReadRequest read;
  if (!ParseMessage(*request, &read)) {
    reactor->Fail(absl::InvalidArgumentError("malformed read request"));
    return reactor;
  }
  absl::StatusOr<ImageRange> range =
      operations_->Read(CallerOf(context), read.image_id(), read.generation(),
                        read.offset(), read.length());
  if (!range.ok()) {
    reactor->Fail(range.status());
  } else {
    grpc::ByteBuffer info = InfoMessage<v1::ReadResponse>(*range->image);
    reactor->Send(std::move(range->image), std::move(info), range->range.offset,
                  range->range.length);
  }
  return reactor;
}

grpc::ServerBidiReactor<grpc::ByteBuffer, grpc::ByteBuffer>*
DepotService::OpenReader(grpc::CallbackServerContext* context) {
  CallGate::Pass pass = gate_.Enter();
  if (!pass.admitted()) {
    return new RefusedReactor<
        grpc::ServerBidiReactor<grpc::ByteBuffer, grpc::ByteBuffer>>(
        std::move(pass), Record(Operation::kRead));
  }
  return new ReaderReactor(std::move(pass), Record(Operation::kRead), &gate_,
                           operations_, context, send_chunk_bytes_);
}

grpc::ServerUnaryReactor* DepotService::Stat(
    grpc::CallbackServerContext* context, const v1::StatRequest* request,
    v1::ImageInfo* response) {
  CallGate::Pass pass = gate_.Enter();
  if (!pass.admitted()) {
    return new RefusedReactor<grpc::ServerUnaryReactor>(
        std::move(pass), Record(Operation::kStat));
  }
  if (request->wait_timeout_ms() > 0 || request->newer_than_generation() > 0) {
    auto* reactor = new WaitingStatReactor(
        std::move(pass), Record(Operation::kStat), operations_, response);
    reactor->Start(CallerOf(context), request->image_id(),
                   ImageWait{request->newer_than_generation(),
                             request->wait_timeout_ms()});
    return reactor;
  }
  auto* reactor = new UnaryReactor(std::move(pass), Record(Operation::kStat));
  absl::StatusOr<ImageRef> image =
      operations_->Stat(CallerOf(context), request->image_id());
  if (image.ok()) EncodeInfo(**image, response);
  reactor->Answer(ToGrpcStatus(image.status()));
  return reactor;
}

grpc::ServerUnaryReactor* DepotService::List(
    grpc::CallbackServerContext* context, const v1::ListRequest* request,
    v1::ListResponse* response) {
  CallGate::Pass pass = gate_.Enter();
  if (!pass.admitted()) {
    return new RefusedReactor<grpc::ServerUnaryReactor>(
        std::move(pass), Record(Operation::kList));
  }
  auto* reactor = new UnaryReactor(std::move(pass), Record(Operation::kList));
  absl::StatusOr<ListResult> result =
      operations_->List(CallerOf(context), request->prefix(),
                        request->page_size(), request->page_token());
  if (!result.ok()) {
    reactor->Answer(ToGrpcStatus(result.status()));
    return reactor;
  }
  for (const ImageRef& image : result->images) {
    EncodeInfo(*image, response->add_images());
  }
  response->set_next_page_token(std::move(result->next_page_token));
  reactor->Answer(grpc::Status::OK);
  return reactor;
}

grpc::ServerUnaryReactor* DepotService::Delete(
    grpc::CallbackServerContext* context, const v1::DeleteRequest* request,
    v1::DeleteResponse* /*response*/) {
  CallGate::Pass pass = gate_.Enter();
  if (!pass.admitted()) {
    return new RefusedReactor<grpc::ServerUnaryReactor>(
        std::move(pass), Record(Operation::kDelete));
  }
  auto* reactor = new UnaryReactor(std::move(pass), Record(Operation::kDelete));
  reactor->Answer(ToGrpcStatus(
      operations_->Delete(CallerOf(context), request->image_id(),
                          OptionalGeneration(request->has_if_generation_match(),
                                             request->if_generation_match()))));
  return reactor;
}

grpc::ServerUnaryReactor* DepotService::GetLimits(
    grpc::CallbackServerContext* context,
    const v1::GetLimitsRequest* /*request*/, v1::ServerLimits* response) {
  CallGate::Pass pass = gate_.Enter();
  if (!pass.admitted()) {
    return new RefusedReactor<grpc::ServerUnaryReactor>(
        std::move(pass), Record(Operation::kGetLimits));
  }
  auto* reactor =
      new UnaryReactor(std::move(pass), Record(Operation::kGetLimits));
  absl::StatusOr<StoreLimits> limits = operations_->Limits(CallerOf(context));
  if (!limits.ok()) {
    reactor->Answer(ToGrpcStatus(limits.status()));
    return reactor;
  }
  response->set_max_image_bytes(limits->max_image_bytes);
  response->set_max_memory_bytes(limits->max_memory_bytes);
  response->set_stored_bytes(limits->stored_bytes);
  response->set_reserved_bytes(limits->reserved_bytes);
  response->set_leased_generations(limits->leased_generations);
  response->set_leased_bytes(limits->leased_bytes);
  response->set_leased_superseded_bytes(limits->leased_superseded_bytes);
  if (limits->restored_at != absl::InfinitePast()) {
    response->set_restored_at_unix_micros(
        absl::ToUnixMicros(limits->restored_at));
  }
  // This transport's own limit, and where the other one listens.
  response->set_max_chunk_bytes(max_chunk_bytes_);
  response->set_data_lane_port(static_cast<uint32_t>(data_lane_.tcp_port));
  response->set_data_lane_unix_path(data_lane_.unix_path);
  reactor->Answer(grpc::Status::OK);
  return reactor;
}

grpc::ServerWriteReactor<v1::WatchResponse>* DepotService::Watch(
    grpc::CallbackServerContext* context, const v1::WatchRequest* request) {
  CallGate::Pass pass = gate_.Enter();
  if (!pass.admitted()) {
    return new RefusedReactor<grpc::ServerWriteReactor<v1::WatchResponse>>(
        std::move(pass), Record(Operation::kWatch));
  }
  return new WatchReactor(
      std::move(pass), Record(Operation::kWatch),
      operations_->Watch(CallerOf(context), request->prefix(),
                         OptionalGeneration(request->has_after_sequence(),
                                            request->after_sequence())));
}

namespace {

// Steps up to this size come inside the NextStep answer (one round trip
// instead of a fetch after it).
constexpr uint64_t kInlineStepBytes = uint64_t{64} << 10;

// A NextStep or AwaitStreamRoom: finished by the wait's end, whoever ends
// it (a step or room, the deadline, shutdown, or OnCancel), as
// WaitingStatReactor is.
class StreamWaitReactor final : public grpc::ServerUnaryReactor {
 public:
  StreamWaitReactor(CallGate::Pass pass, CallRecord record,
                    DepotOperations* operations)
      : pass_(std::move(pass)), record_(record), operations_(operations) {}

  void StartNext(const Caller& caller, NextRequest request, uint64_t wait_ms,
                 v1::NextStepResponse* response) {
    wait_ = operations_->NextStep(
        caller, std::move(request), wait_ms,
        [this, response](absl::StatusOr<TakenStep> taken) {
          if (taken.ok()) {
            response->set_step(taken->step);
            // The bytes of a larger step come by a fetch, which says their
            // checksum if they move: hashing them here (a step handed over
            // as a memfd was never hashed) would only cost time.
            const bool inline_image = taken->image->size() <= kInlineStepBytes;
            EncodeInfo(*taken->image, response->mutable_info(),
                       inline_image
                           ? DepotOperations::ChecksumNeed::kCompute
                           : DepotOperations::ChecksumNeed::kOnlyIfKnown);
            if (inline_image) {
              response->set_inline_image(taken->image->data(),
                                         taken->image->size());
            }
            for (const StepRange& range : taken->lost) {
              v1::StepRange* lost = response->add_lost();
              lost->set_first(range.first);
              lost->set_last(range.last);
            }
          }
          End(taken.status());
        });
  }

  void StartRoom(const Caller& caller, std::string_view stream, uint64_t size,
                 uint64_t wait_ms, v1::AwaitStreamRoomResponse* response) {
    wait_ = operations_->AwaitStreamRoom(
        caller, stream, size, wait_ms,
        [this, response](const absl::Status& status, bool waited) {
          response->set_waited(waited);
          End(status);
        });
  }

  void OnCancel() override { operations_->CancelStreamWait(wait_); }
  void OnDone() override { delete this; }

 private:
  void End(const absl::Status& status) {
    const grpc::Status sent = ToGrpcStatus(status);
    record_.End(sent);
    Finish(sent);
  }

  CallGate::Pass pass_;
  CallRecord record_;  // ended by the wait's end, on its thread
  DepotOperations* const operations_;
  StreamTable::WaitId wait_ = 0;
};

StreamStart DecodeStart(const v1::NextStepRequest& request) {
  StreamStart start;
  switch (request.start()) {
    case v1::NextStepRequest::LATEST:
      start.kind = StreamStart::Kind::kLatest;
      break;
    case v1::NextStepRequest::AT_STEP:
      start.kind = StreamStart::Kind::kStep;
      start.step = request.start_step();
      break;
    default:
      start.kind = StreamStart::Kind::kOldest;
      break;
  }
  return start;
}

}  // namespace

grpc::ServerUnaryReactor* DepotService::CreateStream(
    grpc::CallbackServerContext* context,
    const v1::CreateStreamRequest* request, v1::StreamInfo* response) {
  CallGate::Pass pass = gate_.Enter();
  if (!pass.admitted()) {
    return new RefusedReactor<grpc::ServerUnaryReactor>(
        std::move(pass), Record(Operation::kPush));
  }
  auto* reactor = new UnaryReactor(std::move(pass), Record(Operation::kPush));
  absl::StatusOr<StreamState> state = operations_->CreateStream(
      CallerOf(context), request->stream(), DecodePolicy(request->policy()));
  if (state.ok()) EncodeStreamInfo(*state, response);
  reactor->Answer(ToGrpcStatus(state.status()));
  return reactor;
}

grpc::ServerUnaryReactor* DepotService::FinishStream(
    grpc::CallbackServerContext* context,
    const v1::FinishStreamRequest* request, v1::StreamInfo* response) {
  CallGate::Pass pass = gate_.Enter();
  if (!pass.admitted()) {
    return new RefusedReactor<grpc::ServerUnaryReactor>(
        std::move(pass), Record(Operation::kPush));
  }
  auto* reactor = new UnaryReactor(std::move(pass), Record(Operation::kPush));
  absl::StatusOr<StreamState> state =
      operations_->FinishStream(CallerOf(context), request->stream());
  if (state.ok()) EncodeStreamInfo(*state, response);
  reactor->Answer(ToGrpcStatus(state.status()));
  return reactor;
}

grpc::ServerUnaryReactor* DepotService::DeleteStream(
    grpc::CallbackServerContext* context,
    const v1::DeleteStreamRequest* request,
    v1::DeleteStreamResponse* /*response*/) {
  CallGate::Pass pass = gate_.Enter();
  if (!pass.admitted()) {
    return new RefusedReactor<grpc::ServerUnaryReactor>(
        std::move(pass), Record(Operation::kDelete));
  }
  auto* reactor = new UnaryReactor(std::move(pass), Record(Operation::kDelete));
  reactor->Answer(ToGrpcStatus(operations_->DeleteStream(
      CallerOf(context), request->stream(), request->group())));
  return reactor;
}

grpc::ServerUnaryReactor* DepotService::StatStream(
    grpc::CallbackServerContext* context, const v1::StatStreamRequest* request,
    v1::StreamInfo* response) {
  CallGate::Pass pass = gate_.Enter();
  if (!pass.admitted()) {
    return new RefusedReactor<grpc::ServerUnaryReactor>(
        std::move(pass), Record(Operation::kStat));
  }
  auto* reactor = new UnaryReactor(std::move(pass), Record(Operation::kStat));
  absl::StatusOr<StreamState> state =
      operations_->DescribeStream(CallerOf(context), request->stream());
  if (state.ok()) EncodeStreamInfo(*state, response);
  reactor->Answer(ToGrpcStatus(state.status()));
  return reactor;
}

grpc::ServerUnaryReactor* DepotService::NextStep(
    grpc::CallbackServerContext* context, const v1::NextStepRequest* request,
    v1::NextStepResponse* response) {
  CallGate::Pass pass = gate_.Enter();
  if (!pass.admitted()) {
    return new RefusedReactor<grpc::ServerUnaryReactor>(
        std::move(pass), Record(Operation::kFetch));
  }
  NextRequest next;
  next.stream = request->stream();
  next.group = request->group();
  next.consumer = request->consumer();
  next.start = DecodeStart(*request);
  if (request->lease_ms() != 0) {
    next.lease = absl::Milliseconds(
        std::min<uint64_t>(request->lease_ms(),
                           absl::ToInt64Milliseconds(StreamTable::kMaxLease)));
  }
  if (request->has_ack_step()) {
    absl::Status acked = operations_->AckStep(
        CallerOf(context), request->stream(), request->group(),
        request->consumer(), request->ack_step());
    if (!acked.ok()) {
      auto* refused =
          new UnaryReactor(std::move(pass), Record(Operation::kFetch));
      refused->Answer(ToGrpcStatus(acked));
      return refused;
    }
  }
  auto* reactor = new StreamWaitReactor(std::move(pass),
                                        Record(Operation::kFetch), operations_);
  reactor->StartNext(CallerOf(context), std::move(next),
                     request->wait_timeout_ms(), response);
  return reactor;
}

grpc::ServerUnaryReactor* DepotService::AckStep(
    grpc::CallbackServerContext* context, const v1::AckStepRequest* request,
    v1::AckStepResponse* /*response*/) {
  CallGate::Pass pass = gate_.Enter();
  if (!pass.admitted()) {
    return new RefusedReactor<grpc::ServerUnaryReactor>(
        std::move(pass), Record(Operation::kFetch));
  }
  auto* reactor = new UnaryReactor(std::move(pass), Record(Operation::kFetch));
  reactor->Answer(ToGrpcStatus(
      request->replica()
          ? operations_->AckStepCopy(CallerOf(context), request->stream(),
                                     request->group(), request->step())
          : operations_->AckStep(CallerOf(context), request->stream(),
                                 request->group(), request->consumer(),
                                 request->step())));
  return reactor;
}

grpc::ServerUnaryReactor* DepotService::AwaitStreamRoom(
    grpc::CallbackServerContext* context,
    const v1::AwaitStreamRoomRequest* request,
    v1::AwaitStreamRoomResponse* response) {
  CallGate::Pass pass = gate_.Enter();
  if (!pass.admitted()) {
    return new RefusedReactor<grpc::ServerUnaryReactor>(
        std::move(pass), Record(Operation::kPush));
  }
  auto* reactor = new StreamWaitReactor(std::move(pass),
                                        Record(Operation::kPush), operations_);
  reactor->StartRoom(CallerOf(context), request->stream(), request->size(),
                     request->wait_timeout_ms(), response);
  return reactor;
}

}  // namespace h5depot::server
