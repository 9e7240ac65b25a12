// A cluster's watch: a thread per member reads its watch, drops the
// changes another replica reported already, and queues the rest for Next()
// (cluster_watch_internal.h says what is delivered).
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <deque>
#include <memory>
#include <string>
#include <thread>
#include <unordered_set>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "client/src/cluster_internal.h"
#include "client/src/cluster_watch_internal.h"
#include "h5depot/client.h"
#include "h5depot/internal/mutex.h"

namespace h5depot::internal {
namespace {

// How many received events wait for Next() before the members' readers
// stop reading (the servers then keep them, in their histories).
constexpr size_t kMaxQueued = 4096;
// How often a member that went down is asked to watch again.
constexpr absl::Duration kRewatchInterval = absl::Seconds(1);

bool IsRemoval(ImageEvent::Kind kind) {
  return kind == ImageEvent::Kind::kDeleted ||
         kind == ImageEvent::Kind::kExpired ||
         kind == ImageEvent::Kind::kEvicted;
}

// What makes two members' reports the same change.
std::string ChangeKey(const ImageEvent& event) {
  return absl::StrCat(IsRemoval(event.kind) ? "-" : "+", event.generation, " ",
                      event.image_id);
}

class ClusterWatch final : public ImageWatch {
 public:
  ClusterWatch(std::vector<WatchedMember> members, int replicas,
               const ClientOptions& client_options, WatchOptions options)
      : replicas_(replicas),
        client_options_(client_options),
        options_(std::move(options)) {
    for (WatchedMember& member : members) {
      targets_.push_back(std::move(member.target));
      seeds_.push_back(member.seed);
      clients_.push_back(std::move(member.client));
    }
    watches_.resize(targets_.size());
    down_members_.assign(targets_.size(), false);
  }

  ~ClusterWatch() override {
    Cancel();
    for (std::thread& reader : readers_) reader.join();
  }

  // Starts each member's watch; UNAVAILABLE if R or more cannot be.
  absl::Status Start() {
    std::vector<std::string> errors;
    for (size_t index = 0; index < targets_.size(); ++index) {
      if (absl::Status started = StartMember(index); !started.ok()) {
        errors.emplace_back(started.message());
        MutexLock lock(&mutex_);
        down_members_[index] = true;
        ++down_;
      }
    }
    if (errors.size() >= static_cast<size_t>(replicas_)) {
      return absl::UnavailableError(absl::StrCat(
          errors.size(), " of the cluster's servers cannot be watched, and ",
          "images have ", replicas_, " copies: ", absl::StrJoin(errors, "; ")));
    }
    for (size_t index = 0; index < targets_.size(); ++index) {
      readers_.emplace_back([this, index] { ReadMember(index); });
    }
    return absl::OkStatus();
  }

  // Members number their changes each their own way: nothing comes after
  // a number of the cluster's.
  uint64_t started_after() const override { return 0; }

  absl::StatusOr<ImageEvent> Next(absl::Time deadline) override {
    MutexLock lock(&mutex_);
    while (queue_.empty()) {
      if (!ended_.ok()) return ended_;
      if (deadline == absl::InfiniteFuture()) {
        changed_.Wait(&mutex_);
      } else if (!changed_.WaitUntil(&mutex_, absl::ToChronoTime(deadline)) &&
                 queue_.empty() && ended_.ok()) {
        return absl::DeadlineExceededError("no change came in time");
      }
    }
    ImageEvent event = std::move(queue_.front());
    queue_.pop_front();
    changed_.SignalAll();  // room for the readers
    return event;
  }

  void Cancel() override {
    std::vector<std::shared_ptr<ImageWatch>> watches;
    {
      MutexLock lock(&mutex_);
      if (ended_.ok()) ended_ = absl::CancelledError("the watch was cancelled");
      cancelled_ = true;
      for (const std::shared_ptr<ImageWatch>& watch : watches_) {
        if (watch != nullptr) watches.push_back(watch);
      }
      changed_.SignalAll();
    }
    for (const std::shared_ptr<ImageWatch>& watch : watches) watch->Cancel();
  }

 private:
  // Connects member `index` if it is not, and starts its watch.
  absl::Status StartMember(size_t index) {
    std::shared_ptr<Client> client = ClientOf(index);
    if (client == nullptr) {
      absl::StatusOr<std::unique_ptr<Client>> connected =
          Client::Connect(targets_[index], client_options_);
      if (!connected.ok()) {
        return absl::Status(connected.status().code(),
                            absl::StrCat("server ", targets_[index], ": ",
                                         connected.status().message()));
      }
      client = *std::move(connected);
      MutexLock lock(&clients_mutex_);
      clients_[index] = client;
    }
    absl::StatusOr<std::unique_ptr<ImageWatch>> watch = client->Watch(options_);
    if (!watch.ok()) {
      return absl::Status(watch.status().code(),
                          absl::StrCat("server ", targets_[index], ": ",
                                       watch.status().message()));
    }
    MutexLock lock(&mutex_);
    if (cancelled_) {
      (*watch)->Cancel();
      return absl::CancelledError("the watch was cancelled");
    }
    watches_[index] = *std::move(watch);
    return absl::OkStatus();
  }

  // The reader of member `index`: until the watch ends, takes its events,
  // and watches the member again after it went down.
  void ReadMember(size_t index) {
    while (true) {
      std::shared_ptr<ImageWatch> watch;
      {
        MutexLock lock(&mutex_);
        if (cancelled_ || !ended_.ok()) return;
        watch = watches_[index];
      }
      if (watch == nullptr) {
        if (!WaitUnlessOver(kRewatchInterval)) return;
        if (StartMember(index).ok()) {
          MutexLock lock(&mutex_);
          down_members_[index] = false;
          --down_;
        }
        continue;
      }
      absl::StatusOr<ImageEvent> event = watch->Next();
      if (!event.ok()) {
        MemberWentDown(index, event.status());
        continue;
      }
      if (IsRemoval(event->kind) && StillHeld(*event)) continue;
      Enqueue(*std::move(event));
    }
  }

  // Whether a member that can be asked holds the generation `removal`
  // removed: then it is no change to the cluster.
  bool StillHeld(const ImageEvent& removal) {
    for (size_t index : PlacementOrder(seeds_, removal.image_id)) {
      {
        MutexLock lock(&mutex_);
        if (cancelled_) return true;
        if (down_members_[index]) continue;
      }
      std::shared_ptr<Client> client = ClientOf(index);
      if (client == nullptr) continue;
      absl::StatusOr<ImageInfo> info = client->Stat(removal.image_id);
      if (info.ok() && info->generation == removal.generation) return true;
    }
    return false;
  }

  std::shared_ptr<Client> ClientOf(size_t index) {
    MutexLock lock(&clients_mutex_);
    return clients_[index];
  }

  void MemberWentDown(size_t index, const absl::Status& why) {
    MutexLock lock(&mutex_);
    watches_[index].reset();
    if (cancelled_ || !ended_.ok()) return;
    if (!down_members_[index]) {
      down_members_[index] = true;
      ++down_;
    }
    if (down_ >= static_cast<size_t>(replicas_)) {
      ended_ = absl::UnavailableError(absl::StrCat(
          down_,
          " of the cluster's servers stopped answering, and images "
          "have ",
          replicas_, " copies; the last, ", targets_[index], ": ",
          why.message()));
      changed_.SignalAll();
    }
  }

  void Enqueue(ImageEvent event) {
    MutexLock lock(&mutex_);
    while (queue_.size() >= kMaxQueued && !cancelled_) changed_.Wait(&mutex_);
    if (cancelled_) return;
    if (event.kind != ImageEvent::Kind::kLost) {
      std::string key = ChangeKey(event);
      if (!seen_.insert(key).second) return;  // another replica's report
      seen_order_.push_back(std::move(key));
      if (seen_order_.size() > kRememberedChanges) {
        seen_.erase(seen_order_.front());
        seen_order_.pop_front();
      }
    }
    queue_.push_back(std::move(event));
    changed_.SignalAll();
  }

  // Waits `interval`; false if the watch is over (ended or cancelled).
  bool WaitUnlessOver(absl::Duration interval) {
    const auto until = absl::ToChronoTime(absl::Now() + interval);
    MutexLock lock(&mutex_);
    while (!cancelled_ && ended_.ok()) {
      if (!changed_.WaitUntil(&mutex_, until)) break;
    }
    return !cancelled_ && ended_.ok();
  }

  const int replicas_;
  const ClientOptions client_options_;
  const WatchOptions options_;
  // Of each member, by index; fixed.
  std::vector<std::string> targets_;
  std::vector<uint64_t> seeds_;
  std::vector<std::thread> readers_;

  Mutex clients_mutex_;
  std::vector<std::shared_ptr<Client>> clients_ ABSL_GUARDED_BY(clients_mutex_);

  Mutex mutex_;
  CondVar changed_;  // an event queued or taken, the end, a cancel
  std::vector<std::shared_ptr<ImageWatch>> watches_ ABSL_GUARDED_BY(mutex_);
  std::vector<bool> down_members_ ABSL_GUARDED_BY(mutex_);
  size_t down_ ABSL_GUARDED_BY(mutex_) = 0;
  std::deque<ImageEvent> queue_ ABSL_GUARDED_BY(mutex_);
  std::unordered_set<std::string> seen_ ABSL_GUARDED_BY(mutex_);
  std::deque<std::string> seen_order_ ABSL_GUARDED_BY(mutex_);
  bool cancelled_ ABSL_GUARDED_BY(mutex_) = false;
  // Not OK once the watch is over: Next() returns it after the queue.
  absl::Status ended_ ABSL_GUARDED_BY(mutex_);
};

}  // namespace

absl::StatusOr<std::unique_ptr<ImageWatch>> WatchCluster(
    std::vector<WatchedMember> members, int replicas,
    const ClientOptions& client_options, const WatchOptions& options) {
  if (options.after.has_value()) {
    return absl::InvalidArgumentError(
        "a cluster's servers number their changes each their own way, so a "
        "watch of a cluster cannot start after a sequence: start one from "
        "now, then list the images to catch up");
  }
  auto watch = std::make_unique<ClusterWatch>(std::move(members), replicas,
                                              client_options, options);
  if (absl::Status started = watch->Start(); !started.ok()) return started;
  return watch;
}

}  // namespace h5depot::internal
