#include "h5depot/server/depot_server.h"

#include <grpcpp/ext/proto_server_reflection_plugin.h>
#include <grpcpp/generic/async_generic_service.h>
#include <grpcpp/health_check_service_interface.h>
#include <grpcpp/security/server_credentials.h>
#include <grpcpp/security/tls_certificate_provider.h>
#include <grpcpp/security/tls_credentials_options.h>
#include <grpcpp/server.h>
#include <grpcpp/server_builder.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <climits>
#include <cstdio>
#include <functional>
#include <memory>
#include <string_view>
#include <thread>
#include <utility>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "h5depot/internal/byte_size.h"
#include "h5depot/internal/host_name.h"
#include "h5depot/internal/tls.h"
#include "h5depot/rpc/grpc_runtime.h"
#include "server/src/depot_operations_internal.h"
#include "server/src/depot_service_internal.h"
#include "server/src/http_gateway_internal.h"
#include "server/src/lane_server_internal.h"
#include "server/src/server_metrics_internal.h"
#include "server/src/snapshot_internal.h"
#include "server/src/unix_access_internal.h"

namespace h5depot::server {
namespace {

// The line that says what a start found in its snapshot directory.
std::string RestoreLine(const RestoreReport& report, const std::string& dir) {
  if (!report.found) {
    return absl::StrCat("h5depotd snapshot: none in ", dir, " yet");
  }
  return absl::StrCat(
      "h5depotd restored ", report.images, " images",
      report.streams > 0 ? absl::StrCat(" and ", report.streams, " streams (",
                                        report.steps, " steps)")
                         : "",
      " (", internal::HumanSize(report.bytes), ") from ", dir, " in ",
      absl::FormatDuration(absl::Trunc(report.took, absl::Milliseconds(1))),
      report.expired > 0 ? absl::StrCat(", ", report.expired, " expired since")
                         : "",
      report.refused > 0
          ? absl::StrCat(", ", report.refused, " refused (see above)")
          : "");
}

// The port after the one `listen_address` ("host:port") names, where the
// data lane listens unless told otherwise and clients on this host look
// for it first (lane_protocol.h); 0 for a port chosen by the system
// (":0"), the last port, or an address without one.
int LaneBesidePort(const std::string& listen_address) {
  const size_t colon = listen_address.rfind(':');
  int port = 0;
  if (colon == std::string::npos ||
      !absl::SimpleAtoi(listen_address.substr(colon + 1), &port) || port <= 0 ||
      port >= 65535) {
    return 0;
  }
  return port + 1;
}

// How long a stopping server keeps its gRPC connections open once its
// calls are done, for clients still reading the last bytes of a call: the
// socket buffers and flow-control window behind a finished call, a few
// MiB, read at once by a client that is not starved of CPU. An idle
// client holds the stop this long at most.
constexpr absl::Duration kLingerForLastBytes = absl::Milliseconds(500);

// How often gRPC reads the TLS files again, in seconds; the data lane
// looks as often (tls::ReloadingServerContext::kRecheckInterval).
constexpr unsigned int kTlsRecheckSeconds = 1;

// The host part of a listen address: "0.0.0.0" of "0.0.0.0:7878", "::1"
// of "[::1]:7878".
std::string_view ListenHost(std::string_view address) {
  const size_t colon = address.rfind(':');
  std::string_view host =
      colon == std::string_view::npos ? address : address.substr(0, colon);
  if (host.size() >= 2 && host.front() == '[' && host.back() == ']') {
    host = host.substr(1, host.size() - 2);
  }
  return host;
}

// OK unless `options` would serve the network at large unprotected
// (ServerOptions::insecure), or name TLS files that do not go together.
absl::Status CheckProtection(const ServerOptions& options) {
  const bool tls = !options.tls_cert_file.empty();
  if (tls != !options.tls_key_file.empty()) {
    return absl::InvalidArgumentError(
        "TLS needs both a certificate file and a private key file");
  }
  if (!tls && !options.tls_client_ca_file.empty()) {
    return absl::InvalidArgumentError(
        "a client CA file (mutual TLS) needs the server's own certificate "
        "and key files too");
  }
  if (options.insecure || (tls && !options.auth_file.empty())) {
    return absl::OkStatus();
  }
  for (const std::string& listen :
       {options.listen_address, options.http_listen}) {
    if (listen.empty() || internal::IsLoopbackHost(ListenHost(listen))) {
      continue;
    }
    return absl::FailedPreconditionError(absl::StrCat(
        "refusing to listen on ", listen, " without ", tls ? "" : "TLS",
        tls || !options.auth_file.empty() ? "" : " and ",
        options.auth_file.empty() ? "an auth file" : "",
        ": anyone who can reach it could read, replace and delete every "
        "image. Give --tls-cert-file, --tls-key-file and --auth-file "
        "(docs/SECURITY.md), listen on a loopback address (127.0.0.1) or a "
        "Unix socket, or pass --insecure on a network you trust"));
  }
  return absl::OkStatus();
}

// The TCP listener's credentials: TLS from the options' files, which gRPC
// reads again every kTlsRecheckSeconds, or none.
std::shared_ptr<grpc::ServerCredentials> TcpCredentials(
    const ServerOptions& options) {
  if (options.tls_cert_file.empty()) return grpc::InsecureServerCredentials();
  auto files =
      std::make_shared<grpc::experimental::FileWatcherCertificateProvider>(
          options.tls_key_file, options.tls_cert_file,
          options.tls_client_ca_file, kTlsRecheckSeconds);
  grpc::experimental::TlsServerCredentialsOptions tls(files);
  tls.watch_identity_key_cert_pairs();
  if (options.tls_client_ca_file.empty()) {
    tls.set_cert_request_type(GRPC_SSL_DONT_REQUEST_CLIENT_CERTIFICATE);
  } else {
    tls.watch_root_certs();
    tls.set_cert_request_type(
        GRPC_SSL_REQUEST_AND_REQUIRE_CLIENT_CERTIFICATE_AND_VERIFY);
  }
  return grpc::experimental::TlsServerCredentials(tls);
}

// A duration as gRPC's millisecond channel arguments take it: INT_MAX is
// their "infinite", so every longer duration is that.
int GrpcMilliseconds(absl::Duration duration) {
  const int64_t ms =
      absl::ToInt64Milliseconds(absl::Ceil(duration, absl::Milliseconds(1)));
  return static_cast<int>(std::min<int64_t>(ms, INT_MAX));
}

}  // namespace

struct DepotServer::Impl {
  // Destroyed in reverse: the transports before the operations they call
  // and the TLS context they use, the operations before the store.
  std::unique_ptr<internal::tls::ReloadingServerContext> lane_tls;  // or null
  std::unique_ptr<ImageStore> store;
  std::unique_ptr<DepotOperations> operations;
  // Counted into by the transports, so destroyed after them; null without
  // metrics_listen and http_listen, its endpoint without metrics_listen.
  std::shared_ptr<ServerMetrics> metrics;
  std::unique_ptr<MetricsEndpoint> metrics_endpoint;
  std::unique_ptr<DataLaneServer> data_lane;  // null when turned off
  std::unique_ptr<HttpGateway> http_gateway;  // null without http_listen
  std::unique_ptr<DepotService> service;
  std::unique_ptr<grpc::Server> server;
  // Accepts the Unix socket's connections for `server` (null without one);
  // destroyed, so stopped, before it.
  std::unique_ptr<UnixGrpcListener> unix_listener;
  // The plaintext health-only listener (null without health_listen), and
  // the service that answers any other call on it UNIMPLEMENTED.
  grpc::CallbackGenericService health_only;
  std::unique_ptr<grpc::Server> health_server;
  int health_port = 0;
  int port = 0;
  std::vector<std::string> targets;
  std::string auth_file;  // empty: no access rules
  std::function<void(std::string_view)> log;
  // Snapshots (null without snapshot_dir), taken every snapshot_interval
  // by `snapshotter` until `stop_snapshots`.
  std::unique_ptr<SnapshotDirectory> snapshots;
  std::thread snapshotter;
  absl::Mutex snapshot_mutex;
  absl::CondVar snapshot_wakeup;
  bool stop_snapshots ABSL_GUARDED_BY(snapshot_mutex) = false;

  // Held by a reload from reading the file to putting its rules in force,
  // so that the last file read is the one in force.
  absl::Mutex reload_mutex;

  absl::Mutex mutex;
  bool shut_down ABSL_GUARDED_BY(mutex) = false;
};

absl::StatusOr<std::unique_ptr<DepotServer>> DepotServer::Start(
    const ServerOptions& options) {
  if (options.listen_address.empty() && options.unix_socket_path.empty()) {
    return absl::InvalidArgumentError(
        "nothing to listen on: give a TCP address or a Unix socket path");
  }
  if (options.max_chunk_bytes == 0 || options.send_chunk_bytes == 0) {
    return absl::InvalidArgumentError("chunk sizes must be positive");
  }
  if (options.principal_max_pending_pushes == 0) {
    return absl::InvalidArgumentError(
        "principal_max_pending_pushes must be at least 1");
  }
  if (absl::Status status = CheckProtection(options); !status.ok()) {
    return status;
  }
  // First: a server process starts gRPC without fork support.
  internal::DisableGrpcInForkedChildren(
      "the parent runs an h5depot server, whose threads are inside gRPC at "
      "any time");
  std::unique_ptr<AccessRules> access;
  if (!options.auth_file.empty()) {
    absl::StatusOr<std::unique_ptr<AccessRules>> loaded =
        AccessRules::Load(options.auth_file);
    if (!loaded.ok()) return loaded.status();
    access = *std::move(loaded);
  }
  if (options.grpc_max_concurrent_streams < 1 ||
      options.grpc_max_connection_age <= absl::ZeroDuration() ||
      options.grpc_max_connection_age_grace <= absl::ZeroDuration()) {
    return absl::InvalidArgumentError(
        "the gRPC connection limits (concurrent streams, age and its grace) "
        "must be positive");
  }
  UnixSocketAccess unix_access;
  if (options.unix_socket_mode.has_value()) {
    if (*options.unix_socket_mode > 0777) {
      return absl::InvalidArgumentError(
          "the Unix socket mode may hold only permission bits (at most 0777)");
    }
    unix_access.mode = static_cast<mode_t>(*options.unix_socket_mode);
  }
  if (!options.unix_socket_group.empty()) {
    absl::StatusOr<gid_t> group = ResolveGroup(options.unix_socket_group);
    if (!group.ok()) {
      return absl::InvalidArgumentError(
          absl::StrCat("Unix socket group: ", group.status().message()));
    }
    unix_access.group = *group;
  }
  unix_access.allow_uids.assign(options.unix_allow_uids.begin(),
                                options.unix_allow_uids.end());
  unix_access.allow_gids.assign(options.unix_allow_gids.begin(),
                                options.unix_allow_gids.end());
  internal::KeepGrpcRuntimeAlive();
  auto impl = std::make_unique<Impl>();
  if (!options.tls_cert_file.empty()) {
    // Loaded here also to refuse bad files at start, with errors naming
    // them: gRPC would only log them, and fail each connection.
    absl::StatusOr<std::unique_ptr<internal::tls::ReloadingServerContext>> tls =
        internal::tls::ReloadingServerContext::Load(
            {options.tls_cert_file, options.tls_key_file,
             options.tls_client_ca_file});
    if (!tls.ok()) return tls.status();
    impl->lane_tls = *std::move(tls);
  }
  impl->auth_file = options.auth_file;
  impl->log = options.log ? options.log : [](std::string_view line) {
    std::fprintf(stderr, "%.*s\n", static_cast<int>(line.size()), line.data());
  };
  impl->store = std::make_unique<ImageStore>(options.store);
  if (!options.snapshot_dir.empty()) {
    // Loaded before anything listens: no client sees a partial store.
    absl::StatusOr<std::unique_ptr<SnapshotDirectory>> snapshots =
        SnapshotDirectory::Open(options.snapshot_dir, impl->log);
    if (!snapshots.ok()) return snapshots.status();
    impl->snapshots = *std::move(snapshots);
    absl::StatusOr<RestoreReport> restored =
        impl->snapshots->Restore(*impl->store);
    if (!restored.ok()) return restored.status();
    impl->log(RestoreLine(*restored, options.snapshot_dir));
  }
  PrincipalLimits principal_limits;
  principal_limits.max_memory_bytes = options.principal_max_memory_bytes == 0
                                          ? PrincipalLimits::kUnlimited
                                          : options.principal_max_memory_bytes;
  principal_limits.max_pending_pushes = options.principal_max_pending_pushes;
  principal_limits.max_waits = options.principal_max_waits;
  impl->operations =
      std::make_unique<DepotOperations>(impl->store.get(), options.max_waits,
                                        std::move(access), principal_limits);
  // The gateway's status (and its console) shows the calls' rates too.
  if (!options.metrics_listen.empty() || !options.http_listen.empty()) {
    impl->metrics = std::make_shared<ServerMetrics>(
        impl->store.get(), options.metrics_stream_names);
  }
  if (!options.metrics_listen.empty()) {
    absl::StatusOr<std::unique_ptr<MetricsEndpoint>> endpoint =
        MetricsEndpoint::Start(options.metrics_listen, impl->metrics);
    if (!endpoint.ok()) return endpoint.status();
    impl->metrics_endpoint = *std::move(endpoint);
  }
  if (!options.http_listen.empty()) {
    HttpGatewayOptions http;
    http.http.listen = options.http_listen;
    http.http.max_connections = options.http_max_connections;
    http.http.idle_timeout = options.http_idle_timeout;
    http.http.max_header_bytes = options.http_max_header_bytes;
    http.http.tls = impl->lane_tls.get();  // HTTPS with the TLS files
    http.console_dir = options.http_console_dir;
    http.metrics = impl->metrics.get();
    absl::StatusOr<std::unique_ptr<HttpGateway>> gateway =
        HttpGateway::Start(impl->operations.get(), http);
    if (!gateway.ok()) return gateway.status();
    impl->http_gateway = *std::move(gateway);
  }
  DataLaneAddresses lane_addresses;
  if (options.data_lane) {
    // Started first, so that GetLimits names it from the first call on.
    DataLaneOptions lane_options;
    lane_options.follow_client_cpu = options.data_lane_follow_client_cpu;
    lane_options.share_memory = options.data_lane_share_memory;
    lane_options.idle_timeout = options.data_lane_idle_timeout;
    lane_options.handshake_timeout = options.data_lane_handshake_timeout;
    lane_options.max_connections_per_peer =
        options.data_lane_max_connections_per_peer;
    lane_options.tls = impl->lane_tls.get();
    lane_options.metrics = impl->metrics.get();
    if (!options.listen_address.empty()) {
      lane_options.tcp_host =
          options.listen_address.substr(0, options.listen_address.rfind(':'));
      lane_options.tcp_port = options.data_lane_port;
      lane_options.preferred_tcp_port = LaneBesidePort(options.listen_address);
    }
    // A socket path that just fits leaves no room for ".data": the server
    // still starts, and its Unix clients use gRPC.
    if (!options.unix_socket_path.empty() &&
        options.unix_socket_path.size() + 5 < sizeof(sockaddr_un::sun_path)) {
      lane_options.unix_path = options.unix_socket_path + ".data";
      lane_options.unix_access = unix_access;
    }
    absl::StatusOr<std::unique_ptr<DataLaneServer>> lane =
        DataLaneServer::Start(impl->operations.get(), lane_options);
    if (!lane.ok()) return lane.status();
    impl->data_lane = *std::move(lane);
    lane_addresses.tcp_port = impl->data_lane->tcp_port();
    lane_addresses.unix_path = impl->data_lane->unix_path();
  }
  impl->service = std::make_unique<DepotService>(
      impl->operations.get(), options.max_chunk_bytes, options.send_chunk_bytes,
      lane_addresses, impl->metrics.get());

  grpc::EnableDefaultHealthCheckService(true);
  grpc::reflection::InitProtoReflectionServerBuilderPlugin();
  grpc::ServerBuilder builder;
  // A chunk plus its framing must fit in one message; anything larger is
  // refused by gRPC with RESOURCE_EXHAUSTED before it reaches the service.
  builder.SetMaxReceiveMessageSize(static_cast<int>(
      std::min<uint64_t>(options.max_chunk_bytes + 4096, INT32_MAX)));
  builder.SetMaxSendMessageSize(-1);
  // Clients ping idle connections every 20 s to notice a vanished server;
  // allow that rather than answering with GOAWAY.
  builder.AddChannelArgument(
      GRPC_ARG_HTTP2_MIN_RECV_PING_INTERVAL_WITHOUT_DATA_MS, 10000);
  // Without this gRPC sets SO_REUSEPORT, and a second server on the same
  // port would silently share the traffic instead of failing to start.
  builder.AddChannelArgument(GRPC_ARG_ALLOW_REUSEPORT, 0);
  // One connection cannot hold the server's threads and memory with calls
  // without bound, nor live for ever: an aged connection is replaced
  // under its client (GOAWAY), which also spreads clients anew over
  // servers behind a balancer.
  builder.AddChannelArgument(GRPC_ARG_MAX_CONCURRENT_STREAMS,
                             options.grpc_max_concurrent_streams);
  if (options.grpc_max_connection_age != absl::InfiniteDuration()) {
    builder.AddChannelArgument(
        GRPC_ARG_MAX_CONNECTION_AGE_MS,
        GrpcMilliseconds(options.grpc_max_connection_age));
    builder.AddChannelArgument(
        GRPC_ARG_MAX_CONNECTION_AGE_GRACE_MS,
        GrpcMilliseconds(options.grpc_max_connection_age_grace));
  }
  // Idle request threads poll this often; it bounds how long a shutdown
  // can linger after the last call (gRPC's default is 10 s).
  builder.SetSyncServerOption(
      grpc::ServerBuilder::SyncServerOption::CQ_TIMEOUT_MSEC, 250);
  builder.RegisterService(impl->service.get());
  if (!options.listen_address.empty()) {
    builder.AddListeningPort(options.listen_address, TcpCredentials(options),
                             &impl->port);
  }
  // The Unix socket is accepted here rather than by gRPC, so that its
  // file's mode and group are set before it listens and each peer's
  // credentials are checked before gRPC sees the connection.
  if (!options.unix_socket_path.empty()) {
    absl::StatusOr<std::unique_ptr<UnixGrpcListener>> listener =
        UnixGrpcListener::Listen(options.unix_socket_path, unix_access);
    if (!listener.ok()) return listener.status();
    impl->unix_listener = *std::move(listener);
  }
  const std::vector<intptr_t> grpc_servers_before =
      impl->metrics != nullptr ? GrpcConnectionCensus::ServersNow()
                               : std::vector<intptr_t>();
  impl->server = builder.BuildAndStart();
  if (impl->server == nullptr) {
    return absl::UnavailableError(
        absl::StrCat("cannot listen on ", options.listen_address,
                     " (address in use, or a bad address?)"));
  }
  if (!options.listen_address.empty()) {
    if (impl->port == 0) {
      return absl::UnavailableError(absl::StrCat(
          "cannot listen on ", options.listen_address,
          " (address in use, or not an address of this machine?)"));
    }
    const size_t colon = options.listen_address.rfind(':');
    impl->targets.push_back(
        absl::StrCat(options.listen_address.substr(0, colon), ":", impl->port));
  }
  if (impl->data_lane != nullptr) impl->data_lane->set_grpc_port(impl->port);
  GrpcConnectionCensus* census = nullptr;
  if (impl->metrics != nullptr) {
    census = impl->metrics->grpc_connections();
    if (!census->FindServer(grpc_servers_before)) {
      impl->log(
          "metrics: another gRPC server was built at the same time; "
          "gRPC connections over TCP are not counted");
    }
  }
  if (impl->unix_listener != nullptr) {
    impl->unix_listener->Serve(impl->server.get(), census);
    impl->targets.push_back("unix:" + options.unix_socket_path);
  }
  if (!options.health_listen.empty()) {
    grpc::ServerBuilder health;
    health.RegisterCallbackGenericService(&impl->health_only);
    health.AddChannelArgument(GRPC_ARG_ALLOW_REUSEPORT, 0);
    health.AddListeningPort(options.health_listen,
                            grpc::InsecureServerCredentials(),
                            &impl->health_port);
    impl->health_server = health.BuildAndStart();
    if (impl->health_server == nullptr || impl->health_port == 0) {
      return absl::UnavailableError(
          absl::StrCat("cannot serve health on ", options.health_listen,
                       " (address in use, or a bad address?)"));
    }
  }
  auto server = std::unique_ptr<DepotServer>(new DepotServer(std::move(impl)));
  const absl::Duration interval = options.snapshot_interval;
  if (server->impl_->snapshots != nullptr && interval > absl::ZeroDuration() &&
      interval != absl::InfiniteDuration()) {
    DepotServer* const self = server.get();
    server->impl_->snapshotter = std::thread([self, interval] {
      Impl& state = *self->impl_;
      absl::Time next = absl::Now() + interval;
      while (true) {
        {
          absl::MutexLock lock(&state.snapshot_mutex);
          while (!state.stop_snapshots &&
                 !state.snapshot_wakeup.WaitWithDeadline(&state.snapshot_mutex,
                                                         next)) {
          }
          if (state.stop_snapshots) return;
        }
        self->WriteSnapshot().IgnoreError();  // reported through the log
        next = absl::Now() + interval;
      }
    });
  }
  return server;
}

DepotServer::DepotServer(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}

DepotServer::~DepotServer() {
  Shutdown(absl::Seconds(1));
  if (impl_->snapshotter.joinable()) impl_->snapshotter.join();
}

absl::Status DepotServer::WriteSnapshot() {
  if (impl_->snapshots == nullptr) {
    return absl::FailedPreconditionError(
        "no snapshot directory: the server was started without one "
        "(--snapshot-dir)");
  }
  absl::StatusOr<SnapshotReport> written =
      impl_->snapshots->Write(*impl_->store);
  if (!written.ok()) {
    impl_->log(
        absl::StrCat("h5depotd snapshot failed, the previous one "
                     "stays: ",
                     written.status().message()));
    return written.status();
  }
  impl_->log(absl::StrCat(
      "h5depotd snapshot: ", written->images, " images",
      written->streams > 0
          ? absl::StrCat(" and ", written->streams, " streams (",
                         written->steps, " steps)")
          : "",
      " (", internal::HumanSize(written->bytes), ") in ",
      impl_->snapshots->path(), ", ", written->files_written,
      " files written (", internal::HumanSize(written->bytes_written), ") in ",
      absl::FormatDuration(absl::Trunc(written->took, absl::Milliseconds(1)))));
  return absl::OkStatus();
}

int DepotServer::port() const { return impl_->port; }

int DepotServer::data_lane_port() const {
  return impl_->data_lane == nullptr ? 0 : impl_->data_lane->tcp_port();
}

int DepotServer::health_port() const { return impl_->health_port; }

int DepotServer::http_port() const {
  return impl_->http_gateway == nullptr ? 0 : impl_->http_gateway->port();
}

int DepotServer::metrics_port() const {
  return impl_->metrics_endpoint == nullptr ? 0
                                            : impl_->metrics_endpoint->port();
}

const std::string& DepotServer::data_lane_unix_path() const {
  static const std::string* const kNone = new std::string();
  return impl_->data_lane == nullptr ? *kNone : impl_->data_lane->unix_path();
}

const std::vector<std::string>& DepotServer::targets() const {
  return impl_->targets;
}

ImageStore& DepotServer::store() { return *impl_->store; }

absl::StatusOr<size_t> DepotServer::ReloadAccessRules() {
  if (impl_->auth_file.empty()) {
    return absl::FailedPreconditionError(
        "no auth file to reload: the server was started without one "
        "(--auth-file)");
  }
  absl::MutexLock lock(&impl_->reload_mutex);
  absl::StatusOr<std::unique_ptr<AccessRules>> loaded =
      AccessRules::Load(impl_->auth_file);
  if (!loaded.ok()) return loaded.status();
  const size_t principals = (*loaded)->size();
  if (absl::Status replaced =
          impl_->operations->ReplaceAccessRules(*std::move(loaded));
      !replaced.ok()) {
    return replaced;
  }
  return principals;
}

void DepotServer::Shutdown(absl::Duration grace) {
  {
    absl::MutexLock lock(&impl_->mutex);
    if (impl_->shut_down) return;
    impl_->shut_down = true;
  }
  // Probes learn first that the server is going.
  if (impl_->health_server != nullptr) {
    impl_->health_server->GetHealthCheckService()->SetServingStatus(false);
  }
  // Waits end first, so that they do not hold the grace period hostage.
  impl_->store->Shutdown();
  const absl::Time deadline = absl::Now() + grace;
  impl_->service->Close();
  if (impl_->data_lane != nullptr) impl_->data_lane->Shutdown(grace);
  // Stops it: its connections are closed, and answers under way let go
  // of the generations they held.
  impl_->http_gateway.reset();
  // gRPC's Shutdown(deadline) would wait, after the last call, for every
  // idle connection's client to acknowledge the GOAWAY, and a client that
  // is idle does not read its socket until it next polls (gRPC's backup
  // poller: every 5 s), so an idle client held the stop for seconds. The
  // service counts its calls instead, and once they are done (or the grace
  // is over) gRPC gets only a short linger before it cancels what is left
  // and closes every connection: a call is done once its last bytes are in
  // the connection's buffers, and a client still reading them (which then
  // acknowledges the GOAWAY behind them at once) must get them before the
  // connection is closed under it.
  impl_->service->AwaitCalls(deadline);
  // No connection is handed to gRPC once it shuts down. A stopped server
  // leaves no socket file behind for the next one to trip over or for a
  // client to mistake for a live server.
  if (impl_->unix_listener != nullptr) impl_->unix_listener->Stop();
  impl_->server->Shutdown(absl::ToChronoTime(
      std::min(deadline, absl::Now() + kLingerForLastBytes)));
  if (impl_->snapshots != nullptr) {
    {
      absl::MutexLock lock(&impl_->snapshot_mutex);
      impl_->stop_snapshots = true;
      impl_->snapshot_wakeup.Signal();
    }
    if (impl_->snapshotter.joinable()) impl_->snapshotter.join();
    // Every call has ended: the store is as its clients left it.
    WriteSnapshot().IgnoreError();  // reported through the log
  }
  if (impl_->health_server != nullptr) {
    impl_->health_server->Shutdown(std::chrono::system_clock::now());
  }
}

void DepotServer::Wait() { impl_->server->Wait(); }

}  // namespace h5depot::server
