// h5depot::server::DepotServer: h5depotd's gRPC front end around an
// ImageStore, as a handle that tests and the daemon start alike.
//
// Example:
//   ServerOptions options;
//   options.listen_address = "127.0.0.1:0";  // any free port
//   auto server = DepotServer::Start(options);
//   if (!server.ok()) return server.status();
//   std::string target = (*server)->targets().front();  // "127.0.0.1:40123"
//   ...
//   (*server)->Shutdown(absl::Seconds(5));
#ifndef H5DEPOT_SERVER_DEPOT_SERVER_H_
#define H5DEPOT_SERVER_DEPOT_SERVER_H_

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "h5depot/server/image_store.h"

namespace h5depot::server {

struct ServerOptions {
  // "host:port" to listen on over TCP (port 0: pick a free one); empty for
  // no TCP listener.
  std::string listen_address = "127.0.0.1:7878";
  // Path of a Unix domain socket to listen on; empty for none.
  std::string unix_socket_path;
  // Largest chunk a client may send in one message; clients learn it from
  // GetLimits and size their chunks to fit.
  uint64_t max_chunk_bytes = uint64_t{4} << 20;
  // Size of the chunks the server sends.
  uint64_t send_chunk_bytes = uint64_t{1} << 20;
  // The data lane (docs/ARCHITECTURE.md): push and fetch on plain sockets
  // beside the gRPC listeners, much faster for image bytes; clients find it
  // through GetLimits (or, on this host, at these addresses without asking)
  // and fall back to gRPC without it. Over TCP on the listen address's host
  // at data_lane_port (0: the port after the listen address's if that is
  // given and free, else any free port), and at unix_socket_path + ".data"
  // beside a Unix socket (unless that path is too long for a socket
  // address; Unix clients then use gRPC).
  bool data_lane = true;
  int data_lane_port = 0;
  // Serve a data lane client on this host (Unix socket or TCP loopback) its
  // small pushes and fetches on the CPU it waits on, which spares a
  // cross-CPU wake-up each way (docs/PERFORMANCE.md).
  bool data_lane_follow_client_cpu = true;
  // Over the Unix socket's data lane, hand clients the sealed memfd of an
  // image instead of its bytes, and take their sealed memfds as pushes
  // (docs/ARCHITECTURE.md, "Same host: images as sealed memory").
  bool data_lane_share_memory = true;
  // A data lane connection is closed when its client has sent no request
  // for data_lane_idle_timeout (clients reconnect when they next need
  // one), or no hello within data_lane_handshake_timeout of connecting.
  // InfiniteDuration: never.
  absl::Duration data_lane_idle_timeout = absl::Minutes(5);
  absl::Duration data_lane_handshake_timeout = absl::Seconds(10);
  // Data lane connections one peer may hold at once (one IP address over
  // TCP, one user id over the Unix socket), of the 1,024 the lane serves;
  // beyond it they are closed at once and the client uses gRPC. At least 1.
  size_t data_lane_max_connections_per_peer = 256;
  // Fetches and stats that wait for an image, over gRPC and the lane
  // together, that may be under way at once; one more that would have to
  // wait is refused with RESOURCE_EXHAUSTED.
  size_t max_waits = 10000;
  // Who may do what: the path of an auth file (docs/SECURITY.md, "Tokens")
  // naming principals by the hash of their bearer tokens, with a role and
  // the image id prefixes each may touch. Every call on every transport is
  // then checked against it (UNAUTHENTICATED, PERMISSION_DENIED); the
  // health service stays open. Empty: every caller may do everything.
  std::string auth_file;
  // TLS (docs/SECURITY.md, "TLS"): the PEM files of the server's
  // certificate chain and private key. With both, every TCP connection,
  // gRPC and data lane alike, must be TLS 1.2 or later; Unix socket
  // connections stay plain (the socket file's permissions guard them).
  // Files replaced on disk serve the connections made from a second or
  // two later on; a replacement that does not load (a certificate without
  // its new key, say) leaves the last good pair in use. Empty: no TLS.
  std::string tls_cert_file;
  std::string tls_key_file;
  // Mutual TLS: TCP clients must present a certificate signed by a CA in
  // this PEM file (reloaded like the others). Needs tls_cert_file.
  std::string tls_client_ca_file;
  // Protected mode: Start refuses a TCP listen address that is not a
  // loopback one (127.0.0.0/8, ::1, localhost) unless TLS and an auth file
  // are both set, since anyone who can reach the port could otherwise read,
  // replace and delete every image. true: listen there regardless.
  bool insecure = false;
  // Limits per principal, with an auth file (docs/SECURITY.md, "Limits per
  // principal"); the file may give a principal its own. What a principal
  // may hold at once: bytes of the images it pushed, until their buffers
  // are freed, and of its pushes under way (0: no limit beyond the
  // store's max_memory_bytes); pushes under way (at least 1); fetches and
  // stats waiting for an image. Beyond any of them a call is refused with
  // RESOURCE_EXHAUSTED before anything moves. Without an auth file there
  // are no principals and only the server's limits hold.
  uint64_t principal_max_memory_bytes = 0;
  size_t principal_max_pending_pushes = 64;
  size_t principal_max_waits = 1000;
  // Who may reach the Unix sockets (unix_socket_path and the data lane's
  // beside it; docs/SECURITY.md, "Unix socket restricted to a group"):
  //   unix_socket_mode: permission bits of both socket files, set before
  //     they listen (connecting needs write permission); nullopt: as
  //     bind() leaves them, 0777 less the umask (0755 under umask 022:
  //     only the server's user and root may connect).
  //   unix_socket_group: a group name or numeric gid both files are given
  //     (INVALID_ARGUMENT if no such group, PERMISSION_DENIED if the
  //     server's user may not give it); empty: the server's group.
  //   unix_allow_uids, unix_allow_gids: a connection is admitted only if
  //     its peer's user id (SO_PEERCRED) is in the first list or its
  //     effective group id in the second; the server's own user is not
  //     admitted unless listed. A refused peer's calls are answered
  //     PERMISSION_DENIED (on the lane its connection is closed at once,
  //     and the client falls back to gRPC). Both empty: every peer that can
  //     open the socket file.
  std::optional<uint32_t> unix_socket_mode;
  std::string unix_socket_group;
  std::vector<uint32_t> unix_allow_uids;
  std::vector<uint32_t> unix_allow_gids;
  // Limits on each gRPC connection (docs/SECURITY.md, "Threat model").
  // grpc_max_concurrent_streams: the calls one connection
  // may have under way at once (HTTP/2's SETTINGS_MAX_CONCURRENT_STREAMS;
  // a client's further calls wait in its own queue until one ends). At
  // least 1. A remote driver file holds one call (its reader) for as long
  // as it is open. grpc_max_connection_age: past it (give or take gRPC's
  // 10% jitter) the server sends GOAWAY and the client makes its next
  // calls on a new connection, transparently; the calls under way then
  // have grpc_max_connection_age_grace to finish before the old connection
  // is closed under them (a finite grace cuts long waits and the readers
  // of files held open). InfiniteDuration: no limit. Both positive.
  int grpc_max_concurrent_streams = 1024;
  absl::Duration grpc_max_connection_age = absl::Minutes(30);
  absl::Duration grpc_max_connection_age_grace = absl::InfiniteDuration();
  // "HOST:PORT" (port 0: any free one) on which to serve metrics over
  // HTTP at /metrics, in the Prometheus text format (README.md,
  // "Metrics"): calls, bytes and latency by operation, transport and
  // status code, and the store's images, memory, waits and streams. They
  // name no image. Empty: none.
  std::string metrics_listen;
  // The metrics also have a series per stream and reader group, labelled
  // with their names (which are image ids, so this shows them to whoever
  // reaches the metrics).
  bool metrics_stream_names = false;
  // "HOST:PORT" (port 0: any free one) of the HTTP gateway (docs/HTTP.md):
  // images read with GET and HEAD, with byte ranges and ETags, and a JSON
  // listing, for programs that do not link h5depot (HDF5's ROS3 driver,
  // h5py, browsers, curl). HTTPS with the TLS files above (GnuTLS reads
  // the same PEM files; a client CA file is read once, at start), checked
  // against the auth file like every transport (Authorization: Bearer;
  // its public principal for requests without a token), and held to the
  // same protected mode as the TCP listen address. Empty: none.
  std::string http_listen;
  // The gateway's limits (docs/HTTP.md, "Limits"): connections open at
  // once (more are closed as they are accepted); how long a connection
  // may see nothing move (a request that stops arriving, an idle
  // keep-alive connection, a client that stops reading) before it is
  // closed, in whole seconds, at least one; the largest request head
  // (431 beyond).
  size_t http_max_connections = 1024;
  absl::Duration http_idle_timeout = absl::Seconds(30);
  size_t http_max_header_bytes = 16 << 10;
  // A directory of static files (the web console, console/dist) the
  // gateway serves at "/", read once at start (INVALID_ARGUMENT if it is
  // not a directory of at most 64 MiB of files). Empty: none.
  std::string http_console_dir;
  // "HOST:PORT" (port 0: any free one) of a plaintext gRPC listener that
  // serves only the standard health service (grpc.health.v1), for probes
  // that cannot speak TLS, such as Kubernetes' gRPC probes: SERVING while
  // the server runs, NOT_SERVING once it stops. No h5depot call is served
  // there. Empty: none.
  std::string health_listen;
  // Snapshots (README.md, "Snapshots"): a directory where the store's
  // images are written so that a restart brings them back with their ids,
  // generations, checksums and expiry. Start loads the last complete
  // snapshot there before it listens (an image that does not load is
  // logged and skipped; a damaged manifest fails Start with DATA_LOSS);
  // a snapshot is then taken every snapshot_interval (InfiniteDuration or
  // zero: never on a schedule), on WriteSnapshot(), and at Shutdown once
  // the calls under way have ended. Empty: no snapshots, images live in
  // RAM only.
  std::string snapshot_dir;
  absl::Duration snapshot_interval = absl::Minutes(5);
  // Where the server reports what happened without a caller to tell
  // (a snapshot written or failed, images restored or refused); one line
  // each, without a newline. Null: standard error.
  std::function<void(std::string_view)> log;
  StoreOptions store;
};

class DepotServer {
 public:
  // Binds every requested address and starts serving. UNAVAILABLE if an
  // address cannot be bound (in use, bad path); INVALID_ARGUMENT if no
  // address was requested, principal_max_pending_pushes is 0, or the auth
  // file or a TLS file is malformed, NOT_FOUND if one cannot be read;
  // FAILED_PRECONDITION, saying how to fix it, for a non-loopback address
  // without TLS and an auth file (ServerOptions::insecure).
  static absl::StatusOr<std::unique_ptr<DepotServer>> Start(
      const ServerOptions& options);

  // Shuts down (with a short grace period) if still running.
  ~DepotServer();
  DepotServer(const DepotServer&) = delete;
  DepotServer& operator=(const DepotServer&) = delete;

  // The TCP port actually bound (0 if none).
  int port() const;

  // The data lane's TCP port (0 if none) and Unix socket path (empty if
  // none).
  int data_lane_port() const;
  const std::string& data_lane_unix_path() const;
  // The port metrics are served on; 0 without metrics_listen.
  int metrics_port() const;
  // The HTTP gateway's port; 0 without http_listen.
  int http_port() const;
  // The port of the health listener; 0 without health_listen.
  int health_port() const;

  // Client targets for every listener: "127.0.0.1:40123", "unix:/path".
  const std::vector<std::string>& targets() const;

  ImageStore& store();

  // Reads ServerOptions::auth_file again and puts its rules in force on
  // every transport: calls that begin from now on are checked against
  // them, calls under way finish under the rules they began with. Returns
  // how many principals the file names. On error the rules in force stay:
  // FAILED_PRECONDITION if the server was started without an auth file,
  // NOT_FOUND if the file cannot be read, INVALID_ARGUMENT if it is
  // malformed (naming the line). Thread-safe; concurrent reloads are
  // applied one after the other.
  absl::StatusOr<size_t> ReloadAccessRules();

  // Writes a snapshot to ServerOptions::snapshot_dir now, reporting it
  // (or why it failed, leaving the previous one) through the log, and
  // returns how it went. FAILED_PRECONDITION without a snapshot_dir.
  // Thread-safe; snapshots are taken one at a time.
  absl::Status WriteSnapshot();

  // Stops: ends waits with UNAVAILABLE, answers new calls UNAVAILABLE
  // ("server is shutting down") and stops accepting lane connections, lets
  // the calls under way finish for up to `grace`, then cancels the rest and
  // closes every connection. Idle connections do not hold it up: with no
  // call under way it returns at once. With a snapshot_dir, a last
  // snapshot is then written. Idempotent.
  void Shutdown(absl::Duration grace);

  // Blocks until Shutdown() has completed.
  void Wait();

 private:
  struct Impl;
  explicit DepotServer(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace h5depot::server

#endif  // H5DEPOT_SERVER_DEPOT_SERVER_H_
