// The server end of the data lane (h5depot/internal/lane_protocol.h):
// listeners beside the gRPC ones that serve PUT and GET on sockets (TLS
// over TCP when the server has a certificate, else plain),
// receiving pushed bytes straight into the pending image and sending
// fetched bytes straight from the stored one. A codec over DepotOperations,
// like the gRPC service: it parses the lane's messages, calls the
// operation and encodes its answer, and holds no rule of its own. Internal
// to the server.
//
// One thread per connection, blocking I/O: a connection carries one
// request at a time, and most of a large transfer's time is spent in the
// kernel's copy, which a thread of its own keeps busy without any handoff.
#ifndef H5DEPOT_SERVER_LANE_SERVER_INTERNAL_H_
#define H5DEPOT_SERVER_LANE_SERVER_INTERNAL_H_

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "h5depot/internal/tls.h"
#include "server/src/depot_operations_internal.h"
#include "server/src/unix_access_internal.h"

namespace h5depot::server {

class ServerMetrics;

struct DataLaneOptions {
  // TCP: the host to bind (a name or an address, as in the gRPC listen
  // address) and the port (0: any free one). Empty host: no TCP lane.
  std::string tcp_host;
  int tcp_port = 0;
  // With tcp_port 0, the port tried first; if it is taken, any free one.
  // (The server prefers the port after gRPC's, where clients on its host
  // look for the lane before asking: lane_protocol.h.)
  int preferred_tcp_port = 0;
  // Unix domain socket path; empty for none. Replaced if it exists.
  std::string unix_path;
  // The Unix socket file's mode and group, set before it listens, and the
  // peers it admits (others are closed at once; they then try gRPC).
  UnixSocketAccess unix_access;
  // A transfer under way is dropped after this long without progress.
  absl::Duration stall_timeout = absl::Seconds(60);
  // A connection is closed when its client has sent no request for this
  // long (clients retry a call on a new connection when the pooled one
  // they took turns out closed), or no hello this long after connecting.
  // InfiniteDuration: never.
  absl::Duration idle_timeout = absl::Minutes(5);
  absl::Duration handshake_timeout = absl::Seconds(10);
  // Connections beyond this are closed at once (clients then use gRPC).
  size_t max_connections = 1024;
  // The same, for the connections of one peer: one IP address over TCP,
  // one user id over the Unix socket. At least 1.
  size_t max_connections_per_peer = 256;
  // Serve a client on this host its small requests on the CPU it waits on
  // (lane_protocol.h, kFeatureClientCpu; client_cpu_internal.h).
  bool follow_client_cpu = true;
  // Over the Unix socket, hand clients that ask the memfd of an image
  // instead of its bytes, and take their sealed memfds as pushes
  // (lane_protocol.h, kFeatureDescriptors).
  bool share_memory = true;
  // TCP connections run TLS from this context, handshaking before the
  // hello and within the handshake timeout; Unix socket ones stay plain.
  // Null: no TLS. Must outlive the server.
  internal::tls::ReloadingServerContext* tls = nullptr;
  // Where each answered request and each connection is counted
  // (server_metrics_internal.h). Null: nowhere. Must outlive the server.
  ServerMetrics* metrics = nullptr;
};

class DataLaneServer {
 public:
  // Binds the listeners and starts accepting. UNAVAILABLE if one cannot be
  // bound. `operations` must outlive the server.
  static absl::StatusOr<std::unique_ptr<DataLaneServer>> Start(
      DepotOperations* operations, const DataLaneOptions& options);

  ~DataLaneServer();  // Shutdown(ZeroDuration()) if still running
  DataLaneServer(const DataLaneServer&) = delete;
  DataLaneServer& operator=(const DataLaneServer&) = delete;

  int tcp_port() const;                  // 0 without a TCP lane
  const std::string& unix_path() const;  // empty without a Unix lane

  // The port the server's gRPC listens on over TCP, which the lane names
  // to clients that ask whose lane it is (lane_protocol.h, Identity); 0
  // (the start) while unknown or none. Set once gRPC listens, before the
  // server says it is ready.
  void set_grpc_port(int port);

  // Stops accepting, closes idle connections, lets requests under way
  // finish for up to `grace`, then cuts the rest and waits for every
  // connection's thread. Removes the Unix socket file. Idempotent.
  void Shutdown(absl::Duration grace);

 private:
  struct Impl;
  explicit DataLaneServer(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace h5depot::server

#endif  // H5DEPOT_SERVER_LANE_SERVER_INTERNAL_H_
