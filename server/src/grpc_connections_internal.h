// How many connections the gRPC server has open, by kind of socket, for
// the metrics (--metrics-listen). Internal to the server.
//
// gRPC 1.51 tells a service nothing when a connection opens or closes, so
// the two kinds are counted where each can be seen:
// - TCP (and TLS) connections through channelz, gRPC's own registry of
//   servers and their sockets, which it keeps unless a server turns it off:
//   the server is found as the one channelz did not know before it was
//   built, and its sockets are listed when the metrics are scraped.
// - Unix socket connections, which the server accepts itself and hands to
//   gRPC (UnixGrpcListener) and which channelz does not list: each is noted
//   at hand-over by descriptor and inode, and counted as open while that
//   descriptor still names that socket.
// Nothing is done per call; the cost is paid when the metrics are scraped.
#ifndef H5DEPOT_SERVER_GRPC_CONNECTIONS_INTERNAL_H_
#define H5DEPOT_SERVER_GRPC_CONNECTIONS_INTERNAL_H_

#include <sys/types.h>

#include <cstddef>
#include <cstdint>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"

namespace h5depot::server {

class GrpcConnectionCensus {
 public:
  // The ids channelz has for the gRPC servers of this process now.
  static std::vector<intptr_t> ServersNow();

  // The server built since `servers_before` (ServersNow() taken just
  // before building it) is the one to count. If none or several appeared
  // (another server built at the same time), TCP connections are not
  // counted, and false is returned.
  bool FindServer(const std::vector<intptr_t>& servers_before);

  // An admitted Unix socket connection, `fd`, handed to the gRPC server.
  void UnixConnectionAccepted(int fd);

  struct Counts {
    uint64_t tcp = 0;          // open now (0 if the server is unknown)
    uint64_t unix_socket = 0;  // open now
  };
  Counts Count();

 private:
  // Forgets the Unix connections closed since; returns how many are open.
  size_t PruneClosedLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mutex_);

  struct UnixConnection {
    int fd;
    ino_t inode;
  };

  absl::Mutex mutex_;
  intptr_t server_id_ ABSL_GUARDED_BY(mutex_) = 0;  // 0: not known
  std::vector<UnixConnection> unix_connections_ ABSL_GUARDED_BY(mutex_);
  // Pruned when the list reaches this size, so that it stays within twice
  // the connections open even if nobody scrapes.
  size_t prune_at_ ABSL_GUARDED_BY(mutex_) = 64;
};

}  // namespace h5depot::server

#endif  // H5DEPOT_SERVER_GRPC_CONNECTIONS_INTERNAL_H_
