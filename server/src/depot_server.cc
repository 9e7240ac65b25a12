#include "h5depot/server/depot_server.h"

#include <grpcpp/ext/proto_server_reflection_plugin.h>
#include <grpcpp/health_check_service_interface.h>
#include <grpcpp/security/server_credentials.h>
#include <grpcpp/security/tls_certificate_provider.h>
#include <grpcpp/security/tls_credentials_options.h>
#include <grpcpp/server.h>
#include <grpcpp/server_builder.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "h5depot/internal/host_name.h"
#include "h5depot/internal/tls.h"
#include "h5depot/rpc/grpc_runtime.h"
#include "server/src/depot_operations_internal.h"
#include "server/src/depot_service_internal.h"
#include "server/src/lane_server_internal.h"

namespace h5depot::server {
namespace {

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
  if (options.insecure || options.listen_address.empty() ||
      internal::IsLoopbackHost(ListenHost(options.listen_address))) {
    return absl::OkStatus();
  }
  if (tls && !options.auth_file.empty()) return absl::OkStatus();
  return absl::FailedPreconditionError(absl::StrCat(
      "refusing to listen on ", options.listen_address, " without ",
      tls ? "" : "TLS", tls || !options.auth_file.empty() ? "" : " and ",
      options.auth_file.empty() ? "an auth file" : "",
      ": anyone who can reach it could read, replace and delete every "
      "image. Give --tls-cert-file, --tls-key-file and --auth-file "
      "(docs/SECURITY.md), listen on a loopback address (127.0.0.1) or a "
      "Unix socket, or pass --insecure on a network you trust"));
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

}  // namespace

struct DepotServer::Impl {
  // Destroyed in reverse: the transports before the operations they call
  // and the TLS context they use, the operations before the store.
  std::unique_ptr<internal::tls::ReloadingServerContext> lane_tls;  // or null
  std::unique_ptr<ImageStore> store;
  std::unique_ptr<DepotOperations> operations;
  std::unique_ptr<DataLaneServer> data_lane;  // null when turned off
  std::unique_ptr<DepotService> service;
  std::unique_ptr<grpc::Server> server;
  int port = 0;
  std::vector<std::string> targets;
  std::string unix_socket_path;  // removed from the file system on shutdown

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
  impl->store = std::make_unique<ImageStore>(options.store);
  PrincipalLimits principal_limits;
  principal_limits.max_memory_bytes = options.principal_max_memory_bytes == 0
                                          ? PrincipalLimits::kUnlimited
                                          : options.principal_max_memory_bytes;
  principal_limits.max_pending_pushes = options.principal_max_pending_pushes;
  principal_limits.max_waits = options.principal_max_waits;
  impl->operations =
      std::make_unique<DepotOperations>(impl->store.get(), options.max_waits,
                                        std::move(access), principal_limits);
  DataLaneAddresses lane_addresses;
  if (options.data_lane) {
    // Started first, so that GetLimits names it from the first call on.
    DataLaneOptions lane_options;
    lane_options.follow_client_cpu = options.data_lane_follow_client_cpu;
    lane_options.idle_timeout = options.data_lane_idle_timeout;
    lane_options.handshake_timeout = options.data_lane_handshake_timeout;
    lane_options.max_connections_per_peer =
        options.data_lane_max_connections_per_peer;
    lane_options.tls = impl->lane_tls.get();
    if (!options.listen_address.empty()) {
      lane_options.tcp_host =
          options.listen_address.substr(0, options.listen_address.rfind(':'));
      lane_options.tcp_port = options.data_lane_port;
    }
    // A socket path that just fits leaves no room for ".data": the server
    // still starts, and its Unix clients use gRPC.
    if (!options.unix_socket_path.empty() &&
        options.unix_socket_path.size() + 5 < sizeof(sockaddr_un::sun_path)) {
      lane_options.unix_path = options.unix_socket_path + ".data";
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
      lane_addresses);

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
  // Idle request threads poll this often; it bounds how long a shutdown
  // can linger after the last call (gRPC's default is 10 s).
  builder.SetSyncServerOption(
      grpc::ServerBuilder::SyncServerOption::CQ_TIMEOUT_MSEC, 250);
  builder.RegisterService(impl->service.get());
  if (!options.listen_address.empty()) {
    builder.AddListeningPort(options.listen_address, TcpCredentials(options),
                             &impl->port);
  }
  if (!options.unix_socket_path.empty()) {
    builder.AddListeningPort("unix:" + options.unix_socket_path,
                             grpc::InsecureServerCredentials());
  }
  impl->server = builder.BuildAndStart();
  if (impl->server == nullptr) {
    return absl::UnavailableError(absl::StrCat(
        "cannot listen on ",
        options.listen_address.empty() ? "" : options.listen_address,
        options.listen_address.empty() || options.unix_socket_path.empty()
            ? ""
            : " and ",
        options.unix_socket_path.empty() ? "" : "unix:",
        options.unix_socket_path,
        " (address in use, or a bad address or socket path?)"));
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
  if (!options.unix_socket_path.empty()) {
    impl->unix_socket_path = options.unix_socket_path;
    impl->targets.push_back("unix:" + options.unix_socket_path);
  }
  return std::unique_ptr<DepotServer>(new DepotServer(std::move(impl)));
}

DepotServer::DepotServer(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}

DepotServer::~DepotServer() { Shutdown(absl::Seconds(1)); }

int DepotServer::port() const { return impl_->port; }

int DepotServer::data_lane_port() const {
  return impl_->data_lane == nullptr ? 0 : impl_->data_lane->tcp_port();
}

const std::string& DepotServer::data_lane_unix_path() const {
  static const std::string* const kNone = new std::string();
  return impl_->data_lane == nullptr ? *kNone : impl_->data_lane->unix_path();
}

const std::vector<std::string>& DepotServer::targets() const {
  return impl_->targets;
}

ImageStore& DepotServer::store() { return *impl_->store; }

void DepotServer::Shutdown(absl::Duration grace) {
  {
    absl::MutexLock lock(&impl_->mutex);
    if (impl_->shut_down) return;
    impl_->shut_down = true;
  }
  // Waits end first, so that they do not hold the grace period hostage.
  impl_->store->Shutdown();
  const absl::Time deadline = absl::Now() + grace;
  impl_->service->Close();
  if (impl_->data_lane != nullptr) impl_->data_lane->Shutdown(grace);
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
  impl_->server->Shutdown(absl::ToChronoTime(
      std::min(deadline, absl::Now() + kLingerForLastBytes)));
  // A stopped server leaves no socket file behind for the next one to trip
  // over or for a client to mistake for a live server.
  if (!impl_->unix_socket_path.empty()) {
    unlink(impl_->unix_socket_path.c_str());
  }
}

void DepotServer::Wait() { impl_->server->Wait(); }

}  // namespace h5depot::server
