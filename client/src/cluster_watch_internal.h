// A watch of a cluster target: one watch per member, merged into one
// (Client::Watch on a cluster; cluster_internal.h). Internal to the client.
//
// What it delivers:
// - Every change to an image under the prefix at least once, as long as
//   fewer than R members (the replication factor) are down at a time: each
//   image then has a copy on a watched member. Replicas report a change
//   each, under the same generation (PushOptions::replica_generation), so a
//   change is delivered once per (image id, generation, whether it was a
//   removal) among the latest kRememberedChanges; a copy a rebalance makes
//   of an older image may be reported again, as published with the
//   generation it had.
// - A removal (deleted, expired, evicted) only once no member that can be
//   asked still holds that generation: a rebalance removing a copy it moved
//   elsewhere, or one replica's expiry before another's, is no change to
//   the cluster. The last replica's removal is delivered.
// - Events carry the sequence of the member that reported them; members
//   number their changes each their own way, so a cluster watch cannot
//   start after a sequence (WatchOptions::after is INVALID_ARGUMENT): start
//   one, then List to catch up.
// - A member's kLost event is passed on (its numbers are that member's).
// - A member that goes down is watched again once it answers (every
//   second); once R members are down together the watch ends with
//   UNAVAILABLE, after the events already received.
// The events of different members come in the order they arrive.
#ifndef H5DEPOT_CLIENT_CLUSTER_WATCH_INTERNAL_H_
#define H5DEPOT_CLIENT_CLUSTER_WATCH_INTERNAL_H_

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "h5depot/client.h"

namespace h5depot::internal {

// How many changes a cluster watch remembers to deliver each once.
inline constexpr size_t kRememberedChanges = 65536;

struct WatchedMember {
  std::string target;              // for reconnecting, and messages
  uint64_t seed = 0;               // its rendezvous seed
  std::shared_ptr<Client> client;  // null: could not be reached
};

// Starts watching every member; UNAVAILABLE if R or more cannot be
// watched, INVALID_ARGUMENT for `options.after`.
absl::StatusOr<std::unique_ptr<ImageWatch>> WatchCluster(
    std::vector<WatchedMember> members, int replicas,
    const ClientOptions& client_options, const WatchOptions& options);

}  // namespace h5depot::internal

#endif  // H5DEPOT_CLIENT_CLUSTER_WATCH_INTERNAL_H_
