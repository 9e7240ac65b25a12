// Cluster targets: several independent h5depotd behind one target, each
// image placed by the client on servers of its own. Internal to the client.
//
//   cluster:MEMBER,MEMBER,...[?replicas=R]
//   cluster+srv:[//DNS-IP:PORT/]SRV-NAME[?replicas=R&refresh=DURATION]
//
// Each MEMBER is a single-server target (server_target_internal.h) without
// commas or '?', written as the member's stable name (a StatefulSet's
// "h5depot-0.h5depot:7878"): placement hashes these strings, so the same
// list in any order places every image alike, and an address that changes
// with a restart must not be used. With cluster+srv: the members are the
// targets and ports of SRV-NAME's SRV records (looked up again every
// `refresh`, 30 s by default). A member may hold one range,
// "h5depot-{0..2}.h5depot:7878", standing for a member per number (at most
// 1024 members in all). R (default 1) is how many servers hold each image.
//
// Placement is rendezvous (highest random weight) hashing: for an image id
// every member has a score, XXH3-64 of the id seeded with the hash of the
// member's name, and the members in descending score order are the id's
// *placement order*. The first is its primary; the first R its replicas.
// Adding or removing a member moves only the ids whose first R change.
//
// What each operation does (docs/ARCHITECTURE.md, "Clusters", says why):
// - Push: to the first R members of the placement order that can be
//   reached, in parallel; it succeeds when R servers (all, if the cluster
//   has fewer) have published it, and returns the first one's info. A push
//   that some could not take returns UNAVAILABLE; those that published
//   keep the new generation, and pushing again restores R copies.
//   A refusal (not HDF5, too large, ...) is returned as it is.
//   The replicas publish under the first copy's generation
//   (PushOptions::replica_generation), so every copy has the same number,
//   and each server numbers its later changes after every generation it
//   holds (a Lamport clock): a consumer that holds generation G from any
//   replica gets a newer one from any other after a failover. A replica
//   that holds a newer generation already (a racing push) counts as placed.
// - Conditional push and delete (if_generation_match): decided by the
//   primary alone, which must be reachable (else UNAVAILABLE, nothing
//   changed), since a replica may lag it; once it has accepted, the other
//   replicas follow unconditionally.
// - Fetch, stat, read, readers (of the current or a given generation):
//   down the placement order, past servers that do not have the image or
//   cannot be reached, so an image is found after a membership change that
//   moved its placement. NOT_FOUND only when every member answered that;
//   UNAVAILABLE if one could not be asked. A wait, or "newer than", goes to
//   the first member of the order that answers (where pushes go first).
//   With R >= 2, a fetch or stat of the current generation does not stop
//   at a copy its server restored from a snapshot if another copy is newer
//   (pushed while that server was down): see NewerThanCopy.
// - Delete: on every member; UNAVAILABLE if one of the id's replicas could
//   not be reached (its copy remains: delete again once it is back).
// - List: every member's pages merged in id order, each id once; a member
//   that cannot be reached fails it with UNAVAILABLE unless fewer than R
//   members are unreachable (each image then has a copy listed).
// - Watch: every member's watch, merged: each change once (by id and
//   generation), a removal only once no replica holds the generation; it
//   cannot start after a sequence (cluster_watch_internal.h).
// - Streams: on the first R reachable members of the stream's order, the
//   first numbering the steps and the others copying them; see the
//   stream methods below and docs/STREAMS.md ("Through a cluster").
#ifndef H5DEPOT_CLIENT_CLUSTER_INTERNAL_H_
#define H5DEPOT_CLIENT_CLUSTER_INTERNAL_H_

#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/container/flat_hash_set.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "h5depot/client.h"

namespace h5depot::internal {

struct ClusterTarget {
  std::vector<std::string> members;  // single-server targets, as written
  int replicas = 1;
  // Members found in DNS instead (cluster+srv:): the SRV name, the DNS
  // server to ask ("HOST:PORT"; empty: the system's), and how often to
  // look again.
  std::string srv_name;
  std::string dns_server;
  absl::Duration refresh = absl::Seconds(30);
};

// Whether `target` is a cluster target (starts with "cluster:" or
// "cluster+srv:").
bool IsClusterTarget(std::string_view target);

// Parses a cluster target; INVALID_ARGUMENT saying what is wrong (no
// members, an empty or repeated member, a member that is not a target, a
// bad or unknown option).
absl::StatusOr<ClusterTarget> ParseClusterTarget(std::string_view target);

// The rendezvous seed of a member: XXH3-64 of its name.
uint64_t RendezvousSeed(std::string_view member);

// The placement order of `image_id` over members with `seeds`: their
// indices, highest score first (ties, which XXH3 makes vanishingly rare,
// by index).
std::vector<size_t> PlacementOrder(const std::vector<uint64_t>& seeds,
                                   std::string_view image_id);

// The operations of Client over a cluster, with Client's arguments and
// errors (messages not yet prefixed with the operation: Client adds it).
// Each member is a Client of its own, connected when first needed; one
// that cannot be reached, or answered a call UNAVAILABLE, is passed over
// for a second before it is tried again.
// Thread-safe.
class Cluster {
 public:
  struct Member;
  // Connects to every member at once; OK if at least one answers.
  // INVALID_ARGUMENT or FAILED_PRECONDITION as a member's Connect says
  // (the options are wrong for it); UNAVAILABLE, naming each member's
  // error, if none answers.
  static absl::StatusOr<std::unique_ptr<Cluster>> Connect(
      ClusterTarget target, const ClientOptions& options);
  ~Cluster();

  // Pushes to the replicas as above; `push_one` sends the image to one
  // member with the options given.
  using PushOne = std::function<absl::StatusOr<ImageInfo>(
      Client& member, const PushOptions& options)>;
  absl::StatusOr<ImageInfo> Push(std::string_view image_id,
                                 const PushOptions& options,
                                 const PushOne& push_one);

  absl::StatusOr<FetchedImage> Fetch(std::string_view image_id,
                                     const FetchOptions& options);
  absl::StatusOr<ImageInfo> FetchTo(std::string_view image_id,
                                    const ImageSink& sink,
                                    const FetchOptions& options);
  absl::StatusOr<ReadResult> Read(std::string_view image_id,
                                  uint64_t generation, uint64_t offset,
                                  void* out, size_t length);
  absl::StatusOr<std::unique_ptr<ImageReader>> OpenReader(
      std::string_view image_id, uint64_t generation);
  absl::StatusOr<ImageInfo> Stat(std::string_view image_id, absl::Duration wait,
                                 uint64_t newer_than);
  absl::StatusOr<ListPage> List(const ListOptions& options);
  absl::Status Delete(std::string_view image_id,
                      std::optional<uint64_t> if_generation_match);
  // The members' limits combined: the smallest per-image and per-chunk
  // limits, the sums of memory and usage; no data lane.
  absl::StatusOr<ServerLimits> GetLimits();
  // Client::Rebalance.
  absl::StatusOr<RebalanceReport> Rebalance(const RebalanceOptions& options);
  // A watch of every member merged into one (cluster_watch_internal.h).
  absl::StatusOr<std::unique_ptr<ImageWatch>> Watch(
      const WatchOptions& options);

  // Streams (docs/STREAMS.md, "Through a cluster"). A stream lives on its
  // *copies*: the first R members of its name's placement order that can
  // be reached, the first of them acting as its primary.
  //
  // An append goes to the acting primary, which numbers the step, then to
  // the other copies as a copy of that step (AppendOptions::replica_step),
  // each tried once: a copy that fails (unreachable, full) is skipped, and
  // that server's groups are told the steps it missed when they next read
  // there. The primary's answer is the append's. `append_one` makes the
  // append on one member with the options given.
  using AppendOne = std::function<absl::StatusOr<AppendedStep>(
      Client& member, const AppendOptions& options)>;
  absl::StatusOr<AppendedStep> StreamAppend(std::string_view stream,
                                            const AppendOptions& options,
                                            const AppendOne& append_one);
  // `call` on the acting primary, then, if it succeeded, on the other
  // copies: create and finish. The primary's answer; UNAVAILABLE if no
  // member can be reached. With `any_suffices` (delete) every reachable
  // member is called, whatever the first answered (a server that was a
  // copy while another was down may hold one), and OK if any said OK.
  absl::Status OnStreamCopies(std::string_view stream,
                              const std::function<absl::Status(Client&)>& call,
                              bool any_suffices = false);
  // `call` on the first member of the stream's order that answers other
  // than UNAVAILABLE: a stat.
  absl::StatusOr<StreamInfo> StreamStat(
      std::string_view stream,
      const std::function<absl::StatusOr<StreamInfo>(Client&)>& call);
  // The next step from the first copy that answers, so that readers go on
  // from a replica when the primary is lost (a step it had leased comes
  // again, at least once). An acknowledgement riding on the request goes
  // to the member that handed the step out, and as a copy to the other
  // copies.
  absl::StatusOr<StreamStep> StreamNext(std::string_view stream,
                                        std::string_view group,
                                        const NextOptions& options);
  // To the member that handed the step out (Client::Ack), and as a copy
  // to the other copies; if that member cannot be reached, as a copy to
  // every copy. UNAVAILABLE if none took it.
  absl::Status StreamAck(std::string_view stream, std::string_view group,
                         uint64_t step, std::string_view consumer);

 private:
  // The members at one time: each operation works on the membership it
  // started with, while a discovering cluster may replace it meanwhile.
  struct Membership {
    std::vector<std::shared_ptr<Member>> members;
    std::vector<uint64_t> seeds;  // RendezvousSeed of each member
    std::vector<size_t> Order(std::string_view image_id) const {
      return PlacementOrder(seeds, image_id);
    }
  };
  Cluster(ClusterTarget target, const ClientOptions& options);

  // The current members; looked up in DNS again first when due.
  std::shared_ptr<const Membership> Current();
  // A membership of `names`, keeping the members (and their connections)
  // of `previous` (may be null) that are still named.
  static std::shared_ptr<const Membership> MembershipOf(
      const std::vector<std::string>& names, const Membership* previous);

  // Member `index`'s client, connecting it if it is not yet.
  absl::StatusOr<std::shared_ptr<Client>> MemberClient(const Membership& m,
                                                       size_t index);
  // Notes member `index`'s answer to a call: after UNAVAILABLE it is left
  // alone, as if it could not be connected, for a second.
  static void Note(const Membership& m, size_t index,
                   const absl::Status& answer);
  // Calls `call` on the first member of `image_id`'s placement order that
  // can be reached, and on the next after an UNAVAILABLE answer (a server
  // that went down, even during a wait) unless `may_go_on` says it must
  // not; the first other answer, else UNAVAILABLE.
  template <typename T>
  absl::StatusOr<T> FirstAnswering(
      const Membership& m, std::string_view image_id,
      const std::function<absl::StatusOr<T>(Client&)>& call,
      const std::function<bool()>& may_go_on = nullptr);
  // Calls `call` on each member of `image_id`'s placement order until one
  // answers other than NOT_FOUND or UNAVAILABLE (or `may_go_on` says it
  // must not go on), and returns that answer; else NOT_FOUND, or
  // UNAVAILABLE naming the members that could not be asked.
  template <typename T>
  absl::StatusOr<T> DownTheOrder(
      const Membership& m, std::string_view image_id,
      const std::function<absl::StatusOr<T>(Client&)>& call,
      const std::function<bool()>& may_go_on = nullptr);

  // With R >= 2, a copy its server restored from a snapshot at its start
  // (created before ServerLimits::restored_at) may be older than the other
  // copies, pushed while that server was down. NewerThanCopy says whether
  // `held`, the current generation of `image_id` on member `holder`, is
  // such a copy: it returns the member among the first R + 1 of the order
  // that holds the newest generation, or nullopt to keep `held` (not
  // restored, none newer, or found current before: checked_current_, until
  // the server restores again or a push replaces it). A stale copy is
  // checked again at every read until a push, a rebalance or a Fetch
  // (RepairCopy) replaces it.
  // Fetch and Stat call it on the copy they read, at no cost when it was
  // not restored; NewerThanARestoredCopy is for a read that cannot take
  // back what it started (FetchTo): a Stat down the order first, made only
  // when a member among the id's first R restored anything.
  std::optional<size_t> NewerThanCopy(const Membership& m,
                                      std::string_view image_id, size_t holder,
                                      const ImageInfo& held);
  std::optional<size_t> NewerThanARestoredCopy(const Membership& m,
                                               std::string_view image_id);
  // `call` on the member NewerThanCopy names for `held`, read from the
  // member whose client is `answered`: its answer, or nullopt to keep
  // what was read (no newer copy, or it could not be read).
  template <typename T>
  std::optional<T> FromNewerCopy(
      const Membership& m, std::string_view image_id, const Client* answered,
      const ImageInfo& held,
      const std::function<absl::StatusOr<T>(Client&)>& call);
  // Replaces `held`, the stale restored copy of `image_id` on the member
  // whose client is `stale`, with `newest`, as a copy under its generation
  // (as a rebalance would), unless that copy changed meanwhile. Best
  // effort: a failure (a reader's token may not push) leaves it stale.
  void RepairCopy(const Membership& m, std::string_view image_id,
                  const Client* stale, const ImageInfo& held,
                  const FetchedImage& newest);
  // The member whose client is `client`, if any.
  static std::optional<size_t> IndexOf(const Membership& m,
                                       const Client* client);
  // Member `index`'s ServerLimits::restored_at, asked again once
  // kRestoredAtRefresh has passed or the member answered UNAVAILABLE (it
  // may have restarted); InfinitePast if it restored nothing or cannot say.
  absl::Time RestoredAt(const Membership& m, size_t index);

  // Up to `most` members of `stream`'s placement order that can be
  // reached, in order, with their indices; from position `from` of the
  // order on.
  std::vector<std::pair<size_t, std::shared_ptr<Client>>> ReachableCopies(
      const Membership& m, const std::vector<size_t>& order, size_t most,
      size_t from = 0);
  // The copy of `stream` to read from: the reachable one, of its first R,
  // that has appended the most steps (the first in order of those), so
  // that a primary that came back without the stream, or with less of it,
  // is not read from until it has caught up. Its target; empty if none
  // can be reached. Skips `failed`.
  std::string ChooseReadingCopy(const Membership& m, std::string_view stream,
                                std::string_view failed);
  // The step number the acting primary `target` must give the next
  // append, if it must be told (it came back without the stream, or with
  // less of it, than the other copies): the most any copy has appended.
  // Asked once per acting primary and stream, and again after a step
  // number went back.
  std::optional<uint64_t> PrimaryCatchUp(const Membership& m,
                                         std::string_view stream,
                                         std::string_view target);
  // Copies of the acknowledgement of `step` to the stream's copies other
  // than member `except` (its target; empty: none excepted); how many
  // took it.
  size_t CopyAck(const Membership& m, std::string_view stream,
                 std::string_view group, uint64_t step,
                 std::string_view except);

  const ClusterTarget target_;
  const ClientOptions options_;
  // Which member handed out each (stream, group)'s last step to this
  // client, by target: where its acknowledgement goes.
  absl::Mutex served_mutex_;
  absl::flat_hash_map<std::string, std::string> served_by_
      ABSL_GUARDED_BY(served_mutex_);
  // Each stream's acting primary as last checked (PrimaryCatchUp), and the
  // last step it numbered for this client.
  struct Appending {
    std::string primary;
    uint64_t last_step = 0;
  };
  absl::flat_hash_map<std::string, Appending> appending_
      ABSL_GUARDED_BY(served_mutex_);
  // Restored copies found current (NewerThanARestoredCopy), as
  // "TARGET\nGENERATION\nID"; forgotten all at once when too many.
  absl::Mutex checked_mutex_;
  absl::flat_hash_set<std::string> checked_current_
      ABSL_GUARDED_BY(checked_mutex_);
  // A list of members: fixed. Discovered ones: replaced on refresh.
  std::shared_ptr<const Membership> fixed_;
  absl::Mutex membership_mutex_;
  std::shared_ptr<const Membership> discovered_
      ABSL_GUARDED_BY(membership_mutex_);
  absl::Time next_lookup_ ABSL_GUARDED_BY(membership_mutex_);
  bool looking_up_ ABSL_GUARDED_BY(membership_mutex_) = false;
};

}  // namespace h5depot::internal

#endif  // H5DEPOT_CLIENT_CLUSTER_INTERNAL_H_
