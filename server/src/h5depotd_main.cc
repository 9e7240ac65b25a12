// h5depotd: holds HDF5 file images in RAM and serves them over gRPC, with
// the data lane beside it for image bytes.
//
// On start it prints one "h5depotd listening on <target>" line per address
// to stdout; SIGINT or SIGTERM stop it gracefully (exit status 0); SIGHUP
// reloads the --auth-file and prints one line saying how it went.

#include <signal.h>
#include <sys/resource.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <iostream>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "h5depot/internal/byte_size.h"
#include "h5depot/rpc/grpc_runtime.h"
#include "h5depot/server/depot_server.h"
#include "server/src/unix_access_internal.h"

namespace {

// A byte count flag value: "4G", "512M", "1048576".
struct ByteSizeFlag {
  uint64_t bytes = 0;
};

bool AbslParseFlag(absl::string_view text, ByteSizeFlag* flag,
                   std::string* error) {
  std::optional<uint64_t> bytes = h5depot::internal::ParseByteSize(
      std::string_view(text.data(), text.size()));
  if (!bytes.has_value()) {
    *error = "expected a byte count such as 1048576, 512M or 8G";
    return false;
  }
  flag->bytes = *bytes;
  return true;
}

std::string AbslUnparseFlag(ByteSizeFlag flag) {
  return std::to_string(flag.bytes);
}

// Flags are documented with dashes (--max-memory) as users expect; Abseil
// names them with underscores. Rewrites the names, never the values.
void AcceptDashedFlagNames(int argc, char** argv) {
  for (int i = 1; i < argc; ++i) {
    std::string_view arg = argv[i];
    if (arg == "--") break;
    if (arg.size() < 3 || arg.substr(0, 2) != "--") continue;
    for (char* c = argv[i] + 2; *c != '\0' && *c != '='; ++c) {
      if (*c == '-') *c = '_';
    }
  }
}

uint64_t HalfOfPhysicalMemory() {
  const long pages = sysconf(_SC_PHYS_PAGES);
  const long page_size = sysconf(_SC_PAGESIZE);
  if (pages <= 0 || page_size <= 0) return uint64_t{1} << 30;
  return static_cast<uint64_t>(pages) * static_cast<uint64_t>(page_size) / 2;
}

}  // namespace

ABSL_FLAG(std::string, listen, "127.0.0.1:7878",
          "TCP address to listen on, host:port (port 0 picks a free port); "
          "empty for none");
ABSL_FLAG(std::string, unix, "", "Unix domain socket path to listen on");
ABSL_FLAG(ByteSizeFlag, max_memory, ByteSizeFlag{},
          "memory for image data, e.g. 8G (default: half of physical RAM)");
ABSL_FLAG(ByteSizeFlag, max_image_size, ByteSizeFlag{},
          "largest single image, e.g. 2G (default: --max-memory)");
ABSL_FLAG(int, data_port, 0,
          "TCP port of the data lane, the fast path for image bytes beside "
          "gRPC, on the --listen host (0: the port after --listen's if it "
          "is free, where clients on this host look first; else any free "
          "port; clients learn it from the server)");
ABSL_FLAG(bool, data_lane, true,
          "serve the data lane (--nodata-lane: image bytes over gRPC only)");
ABSL_FLAG(bool, follow_client_cpu, true,
          "serve a data lane client on this host its small pushes and "
          "fetches on the CPU it waits on (--nofollow-client-cpu: leave "
          "that to the scheduler)");
ABSL_FLAG(bool, share_memory, true,
          "hand clients on this host (over --unix) the sealed memfd of an "
          "image instead of its bytes, and take their sealed memfds as "
          "pushes (--noshare-memory: bytes only)");
ABSL_FLAG(absl::Duration, lane_idle_timeout, absl::Minutes(5),
          "close a data lane connection whose client has sent no request "
          "for this long, e.g. 5m, 90s ('inf': never); clients reconnect "
          "when they next need one");
ABSL_FLAG(absl::Duration, lane_handshake_timeout, absl::Seconds(10),
          "close a data lane connection whose client has not said hello "
          "this long after connecting");
ABSL_FLAG(uint64_t, max_lane_connections_per_peer, 256,
          "data lane connections one client may hold at once (one IP "
          "address over TCP, one user over the Unix socket); beyond it "
          "they are closed at once and the client uses gRPC");
ABSL_FLAG(uint64_t, max_waits, 10000,
          "fetches and stats waiting for an image that may be under way at "
          "once, over gRPC and the data lane together; one more is refused "
          "with RESOURCE_EXHAUSTED");
ABSL_FLAG(std::string, snapshot_dir, "",
          "a directory to write the images to (every --snapshot-interval, "
          "on SIGUSR1 and when stopping) and to restore them from when "
          "starting; empty: images live in RAM only");
ABSL_FLAG(absl::Duration, snapshot_interval, absl::Minutes(5),
          "how often to write a snapshot to --snapshot-dir (0 or inf: only "
          "on SIGUSR1 and when stopping)");
ABSL_FLAG(std::string, eviction, "none",
          "what a push that does not fit in --max-memory does: none (it is "
          "refused) or lru (the least recently used images no reader holds "
          "are deleted to make room)");
ABSL_FLAG(uint64_t, watch_history, 65536,
          "how many of the latest changes (publishes, replaces, deletes, "
          "expiries) to keep for watchers; a watcher further behind is told "
          "which changes it lost");
ABSL_FLAG(std::string, metrics_listen, "",
          "HOST:PORT on which to serve metrics over HTTP at /metrics, in the "
          "Prometheus text format (calls, bytes and latency by operation, "
          "transport and status code; images, memory and waits); they name "
          "no image. Empty: no metrics");
ABSL_FLAG(bool, metrics_stream_names, false,
          "give each stream and reader group series of their own in the "
          "metrics, labelled with their names (stream names are image ids: "
          "whoever reaches the metrics sees them); without, streams are "
          "counted together");
ABSL_FLAG(std::string, http_listen, "",
          "HOST:PORT of the HTTP gateway (docs/HTTP.md): images read with "
          "GET and HEAD, byte ranges and ETags, a JSON listing at /v1/images, "
          "for HDF5's ROS3 driver, h5py, browsers and curl; HTTPS with the "
          "TLS files, checked against the auth file. Empty: none");
ABSL_FLAG(uint64_t, http_max_connections, 1024,
          "HTTP connections open at once; more are closed as they are "
          "accepted");
ABSL_FLAG(absl::Duration, http_idle_timeout, absl::Seconds(30),
          "how long an HTTP connection may see nothing move (a request that "
          "stops arriving, an idle keep-alive connection, a client that "
          "stops reading) before it is closed; whole seconds, at least 1s");
ABSL_FLAG(std::string, http_console_dir, "",
          "a directory of static files the HTTP gateway serves at / (the web "
          "console: console/dist, which deploy/build-console.sh builds); "
          "read once at start. Empty: none");
ABSL_FLAG(ByteSizeFlag, http_max_header_size, ByteSizeFlag{16 << 10},
          "largest HTTP request head (request line and headers); larger "
          "ones are answered 431");
ABSL_FLAG(std::string, health_listen, "",
          "HOST:PORT of a plaintext gRPC listener serving only the standard "
          "health service, for probes that cannot speak TLS (Kubernetes' "
          "gRPC probes). Empty: none");
ABSL_FLAG(std::string, auth_file, "",
          "serve only callers with a token this file names, each within its "
          "role and image id prefixes (docs/SECURITY.md); empty: everyone "
          "may do everything");
ABSL_FLAG(std::string, tls_cert_file, "",
          "PEM certificate chain of the server: with --tls-key-file, every "
          "TCP connection (gRPC and data lane) must use TLS; the files are "
          "read again when they change on disk");
ABSL_FLAG(std::string, tls_key_file, "",
          "PEM private key of --tls-cert-file's certificate");
ABSL_FLAG(std::string, tls_client_ca_file, "",
          "mutual TLS: require TCP clients to present a certificate signed "
          "by a CA in this PEM file");
ABSL_FLAG(bool, insecure, false,
          "listen on a TCP address other than loopback even without TLS "
          "and an auth file (only on a network you trust)");
ABSL_FLAG(ByteSizeFlag, principal_max_memory, ByteSizeFlag{},
          "with --auth-file, memory one principal's images and pushes under "
          "way may take, e.g. 2G (default, 0: only --max-memory); the auth "
          "file's max-memory= overrides it per principal");
ABSL_FLAG(uint64_t, principal_max_pending_pushes, 64,
          "with --auth-file, pushes one principal may have under way at "
          "once; the auth file's max-pending-pushes= overrides it");
ABSL_FLAG(uint64_t, principal_max_waits, 1000,
          "with --auth-file, fetches and stats one principal may have "
          "waiting for an image at once; the auth file's max-waits= "
          "overrides it");
ABSL_FLAG(std::string, unix_mode, "",
          "permission bits of the --unix socket files, in octal, e.g. 0660 "
          "(default: as bind() leaves them, 0777 less the umask)");
ABSL_FLAG(std::string, unix_group, "",
          "group (name or gid) of the --unix socket files (default: the "
          "server's)");
ABSL_FLAG(std::string, unix_allow_uids, "",
          "comma-separated users (names or uids) admitted on the --unix "
          "sockets; with --unix-allow-gids, a peer in either list is "
          "admitted, others are refused with PERMISSION_DENIED (default: "
          "both empty, anyone who can open the socket file)");
ABSL_FLAG(std::string, unix_allow_gids, "",
          "comma-separated groups (names or gids) whose members, by their "
          "effective group, are admitted on the --unix sockets");
ABSL_FLAG(uint64_t, max_concurrent_streams, 1024,
          "gRPC calls one connection may have under way at once; a "
          "client's further calls wait until one ends");
ABSL_FLAG(absl::Duration, max_connection_age, absl::Minutes(30),
          "send a gRPC connection GOAWAY once it is this old, e.g. 30m "
          "('inf': never); its client moves to a new one transparently");
ABSL_FLAG(absl::Duration, max_connection_age_grace, absl::InfiniteDuration(),
          "how long the calls under way on an aged connection may still "
          "run before it is closed under them (default 'inf': until they "
          "end)");
ABSL_FLAG(bool, allow_non_hdf5, false,
          "store any bytes, not only HDF5 file images");
ABSL_FLAG(absl::Duration, push_idle_timeout, absl::Seconds(30),
          "cancel a push that sends nothing for this long, or that has "
          "not averaged --push-min-rate once this long has passed, and "
          "release its memory (0: never cancel a push)");
ABSL_FLAG(ByteSizeFlag, push_min_rate, ByteSizeFlag{uint64_t{256} << 10},
          "bytes per second a push must average after --push-idle-timeout, "
          "e.g. 256K (0: only the idle rule)");

namespace {

// Says, in one line on stdout, what a SIGHUP's reload of the auth file
// did.
void ReportReload(const absl::StatusOr<size_t>& reloaded,
                  const std::string& auth_file) {
  if (reloaded.ok()) {
    std::cout << "h5depotd reloaded " << auth_file << ": " << *reloaded
              << (*reloaded == 1 ? " principal" : " principals") << std::endl;
  } else {
    std::cout << "h5depotd kept its access rules: "
              << reloaded.status().message() << std::endl;
  }
}

// The --unix-* flags into `options`; INVALID_ARGUMENT naming the flag.
absl::Status UnixAccessFromFlags(h5depot::server::ServerOptions& options) {
  using h5depot::server::ParseGroupList;
  using h5depot::server::ParseUnixMode;
  using h5depot::server::ParseUserList;
  const std::string mode = absl::GetFlag(FLAGS_unix_mode);
  if (!mode.empty()) {
    absl::StatusOr<mode_t> parsed = ParseUnixMode(mode);
    if (!parsed.ok()) {
      return absl::InvalidArgumentError(
          absl::StrCat("--unix-mode: ", parsed.status().message()));
    }
    options.unix_socket_mode = *parsed;
  }
  options.unix_socket_group = absl::GetFlag(FLAGS_unix_group);
  absl::StatusOr<std::vector<uid_t>> uids =
      ParseUserList(absl::GetFlag(FLAGS_unix_allow_uids));
  if (!uids.ok()) {
    return absl::InvalidArgumentError(
        absl::StrCat("--unix-allow-uids: ", uids.status().message()));
  }
  options.unix_allow_uids.assign(uids->begin(), uids->end());
  absl::StatusOr<std::vector<gid_t>> gids =
      ParseGroupList(absl::GetFlag(FLAGS_unix_allow_gids));
  if (!gids.ok()) {
    return absl::InvalidArgumentError(
        absl::StrCat("--unix-allow-gids: ", gids.status().message()));
  }
  options.unix_allow_gids.assign(gids->begin(), gids->end());
  const bool any = options.unix_socket_mode.has_value() ||
                   !options.unix_socket_group.empty() ||
                   !options.unix_allow_uids.empty() ||
                   !options.unix_allow_gids.empty();
  if (any && options.unix_socket_path.empty()) {
    return absl::InvalidArgumentError(
        "--unix-mode, --unix-group and --unix-allow-* need --unix=PATH");
  }
  return absl::OkStatus();
}

}  // namespace

int main(int argc, char** argv) {
  absl::SetProgramUsageMessage(
      "holds HDF5 file images in RAM and serves them over gRPC.\n"
      "usage: h5depotd [--listen=HOST:PORT] [--unix=PATH] "
      "[--max-memory=SIZE] [--max-image-size=SIZE] [--data-port=PORT]\n"
      "                [--nodata-lane] [--nofollow-client-cpu] "
      "[--noshare-memory]\n"
      "                "
      "[--lane-idle-timeout=DURATION]\n"
      "                [--lane-handshake-timeout=DURATION] "
      "[--max-lane-connections-per-peer=N]\n"
      "                [--max-waits=N] [--allow-non-hdf5] [--auth-file=PATH]\n"
      "                [--tls-cert-file=PATH --tls-key-file=PATH "
      "[--tls-client-ca-file=PATH]] [--insecure]\n"
      "                [--push-idle-timeout=DURATION] [--push-min-rate=SIZE]\n"
      "                [--principal-max-memory=SIZE] "
      "[--principal-max-pending-pushes=N]\n"
      "                [--principal-max-waits=N]\n"
      "                [--unix-mode=MODE] [--unix-group=GROUP] "
      "[--unix-allow-uids=LIST] [--unix-allow-gids=LIST]\n"
      "                [--max-concurrent-streams=N] "
      "[--max-connection-age=DURATION]\n"
      "                [--max-connection-age-grace=DURATION] "
      "[--metrics-listen=HOST:PORT [--metrics-stream-names]]\n"
      "                [--http-listen=HOST:PORT [--http-max-connections=N]\n"
      "                 [--http-idle-timeout=DURATION] "
      "[--http-max-header-size=SIZE]\n"
      "                 [--http-console-dir=DIR]]\n"
      "                [--health-listen=HOST:PORT] [--watch-history=N] "
      "[--eviction=none|lru]\n"
      "                [--snapshot-dir=DIR [--snapshot-interval=DURATION]]");
  AcceptDashedFlagNames(argc, argv);
  absl::ParseCommandLine(argc, argv);
  h5depot::internal::SilenceGrpcLogUnlessAsked();
  // Debian's Abseil checks every mutex acquisition for lock-order cycles,
  // gRPC's own locks included; a daemon does not want to pay for that
  // debugging aid on every call (about 5% of small-image throughput).
  absl::SetMutexDeadlockDetectionMode(absl::OnDeadlockCycle::kIgnore);

  // Signals are taken synchronously by this thread; block them before any
  // other thread exists so that they all inherit the mask. SIGINT and
  // SIGTERM stop the server, SIGHUP reloads its auth file, SIGUSR1 writes
  // a snapshot.
  sigset_t handled_signals;
  sigemptyset(&handled_signals);
  sigaddset(&handled_signals, SIGINT);
  sigaddset(&handled_signals, SIGTERM);
  sigaddset(&handled_signals, SIGHUP);
  sigaddset(&handled_signals, SIGUSR1);
  pthread_sigmask(SIG_BLOCK, &handled_signals, nullptr);
  signal(SIGPIPE, SIG_IGN);
  // Each large image holds a descriptor (its memfd) beside every
  // connection's: take all the descriptors the hard limit allows.
  if (rlimit files; getrlimit(RLIMIT_NOFILE, &files) == 0 &&
                    files.rlim_cur < files.rlim_max) {
    files.rlim_cur = files.rlim_max;
    setrlimit(RLIMIT_NOFILE, &files);
  }

  h5depot::server::ServerOptions options;
  options.listen_address = absl::GetFlag(FLAGS_listen);
  options.unix_socket_path = absl::GetFlag(FLAGS_unix);
  options.data_lane = absl::GetFlag(FLAGS_data_lane);
  options.data_lane_port = absl::GetFlag(FLAGS_data_port);
  options.data_lane_follow_client_cpu = absl::GetFlag(FLAGS_follow_client_cpu);
  options.data_lane_share_memory = absl::GetFlag(FLAGS_share_memory);
  options.max_waits = static_cast<size_t>(absl::GetFlag(FLAGS_max_waits));
  options.data_lane_idle_timeout = absl::GetFlag(FLAGS_lane_idle_timeout);
  options.data_lane_max_connections_per_peer =
      static_cast<size_t>(absl::GetFlag(FLAGS_max_lane_connections_per_peer));
  options.data_lane_handshake_timeout =
      absl::GetFlag(FLAGS_lane_handshake_timeout);
  uint64_t max_memory = absl::GetFlag(FLAGS_max_memory).bytes;
  if (max_memory == 0) max_memory = HalfOfPhysicalMemory();
  uint64_t max_image = absl::GetFlag(FLAGS_max_image_size).bytes;
  if (max_image == 0 || max_image > max_memory) max_image = max_memory;
  options.store.max_memory_bytes = max_memory;
  options.store.max_image_bytes = max_image;
  options.store.require_hdf5 = !absl::GetFlag(FLAGS_allow_non_hdf5);
  options.auth_file = absl::GetFlag(FLAGS_auth_file);
  options.tls_cert_file = absl::GetFlag(FLAGS_tls_cert_file);
  options.tls_key_file = absl::GetFlag(FLAGS_tls_key_file);
  options.tls_client_ca_file = absl::GetFlag(FLAGS_tls_client_ca_file);
  options.insecure = absl::GetFlag(FLAGS_insecure);
  if (const std::string eviction = absl::GetFlag(FLAGS_eviction);
      eviction == "lru") {
    options.store.eviction = h5depot::server::StoreOptions::Eviction::kLru;
  } else if (eviction != "none") {
    std::cerr << "h5depotd: --eviction must be none or lru, not '" << eviction
              << "'\n";
    return 1;
  }
  options.snapshot_dir = absl::GetFlag(FLAGS_snapshot_dir);
  options.snapshot_interval = absl::GetFlag(FLAGS_snapshot_interval);
  if (options.snapshot_interval < absl::ZeroDuration()) {
    std::cerr << "h5depotd: --snapshot-interval must not be negative\n";
    return 1;
  }
  // Reports go where the start-up lines go, a line at a time.
  options.log = [](std::string_view line) { std::cout << line << std::endl; };
  options.store.event_history =
      static_cast<size_t>(absl::GetFlag(FLAGS_watch_history));
  if (options.store.event_history == 0) {
    std::cerr << "h5depotd: --watch-history must be at least 1\n";
    return 1;
  }
  options.store.push_idle_timeout = absl::GetFlag(FLAGS_push_idle_timeout);
  if (options.store.push_idle_timeout < absl::ZeroDuration()) {
    std::cerr << "h5depotd: --push-idle-timeout must not be negative\n";
    return 1;
  }
  options.store.push_min_bytes_per_second =
      absl::GetFlag(FLAGS_push_min_rate).bytes;
  options.principal_max_memory_bytes =
      absl::GetFlag(FLAGS_principal_max_memory).bytes;
  options.principal_max_pending_pushes =
      static_cast<size_t>(absl::GetFlag(FLAGS_principal_max_pending_pushes));
  options.principal_max_waits =
      static_cast<size_t>(absl::GetFlag(FLAGS_principal_max_waits));
  if (options.principal_max_pending_pushes == 0) {
    std::cerr << "h5depotd: --principal-max-pending-pushes must be at least "
                 "1 (give a principal the role read to forbid its pushes)\n";
    return 1;
  }

  if (options.data_lane_idle_timeout <= absl::ZeroDuration() ||
      options.data_lane_handshake_timeout <= absl::ZeroDuration()) {
    std::cerr << "h5depotd: --lane-idle-timeout and --lane-handshake-timeout "
                 "must be positive\n";
    return 1;
  }
  if (options.data_lane_max_connections_per_peer == 0) {
    std::cerr << "h5depotd: --max-lane-connections-per-peer must be at least "
                 "1 (--nodata-lane turns the lane off)\n";
    return 1;
  }
  const uint64_t max_streams = absl::GetFlag(FLAGS_max_concurrent_streams);
  options.grpc_max_connection_age = absl::GetFlag(FLAGS_max_connection_age);
  options.grpc_max_connection_age_grace =
      absl::GetFlag(FLAGS_max_connection_age_grace);
  if (max_streams < 1 || max_streams > INT32_MAX ||
      options.grpc_max_connection_age <= absl::ZeroDuration() ||
      options.grpc_max_connection_age_grace <= absl::ZeroDuration()) {
    std::cerr << "h5depotd: --max-concurrent-streams (1 to 2147483647), "
                 "--max-connection-age and --max-connection-age-grace must "
                 "be positive\n";
    return 1;
  }
  options.grpc_max_concurrent_streams = static_cast<int>(max_streams);
  options.metrics_listen = absl::GetFlag(FLAGS_metrics_listen);
  options.metrics_stream_names = absl::GetFlag(FLAGS_metrics_stream_names);
  options.health_listen = absl::GetFlag(FLAGS_health_listen);
  options.http_listen = absl::GetFlag(FLAGS_http_listen);
  options.http_max_connections = absl::GetFlag(FLAGS_http_max_connections);
  options.http_idle_timeout = absl::GetFlag(FLAGS_http_idle_timeout);
  options.http_console_dir = absl::GetFlag(FLAGS_http_console_dir);
  const uint64_t header_bytes = absl::GetFlag(FLAGS_http_max_header_size).bytes;
  if (header_bytes < 1024 || header_bytes > (uint64_t{1} << 30) ||
      options.http_max_connections == 0 ||
      options.http_idle_timeout < absl::Seconds(1)) {
    std::cerr << "h5depotd: --http-max-connections must be positive, "
                 "--http-idle-timeout at least 1s, --http-max-header-size "
                 "1K to 1G\n";
    return 1;
  }
  options.http_max_header_bytes = static_cast<size_t>(header_bytes);
  if (absl::Status unix_access = UnixAccessFromFlags(options);
      !unix_access.ok()) {
    std::cerr << "h5depotd: " << unix_access.message() << "\n";
    return 1;
  }
  auto server = h5depot::server::DepotServer::Start(options);
  if (!server.ok()) {
    std::cerr << "h5depotd: " << server.status().message() << "\n";
    return 1;
  }
  for (const std::string& target : (*server)->targets()) {
    std::cout << "h5depotd listening on " << target << "\n";
  }
  if ((*server)->data_lane_port() != 0) {
    std::cout << "h5depotd data lane on port " << (*server)->data_lane_port()
              << "\n";
  }
  if (!(*server)->data_lane_unix_path().empty()) {
    std::cout << "h5depotd data lane on unix:"
              << (*server)->data_lane_unix_path() << "\n";
  }
  if ((*server)->metrics_port() != 0) {
    const std::string& listen = options.metrics_listen;
    std::cout << "h5depotd metrics on http://"
              << listen.substr(0, listen.rfind(':')) << ":"
              << (*server)->metrics_port() << "/metrics\n";
  }
  if ((*server)->http_port() != 0) {
    const std::string& listen = options.http_listen;
    std::cout << "h5depotd HTTP gateway on "
              << (options.tls_cert_file.empty() ? "http" : "https") << "://"
              << listen.substr(0, listen.rfind(':')) << ":"
              << (*server)->http_port() << "/v1/images\n";
  }
  if ((*server)->health_port() != 0) {
    const std::string& listen = options.health_listen;
    std::cout << "h5depotd health on " << listen.substr(0, listen.rfind(':'))
              << ":" << (*server)->health_port() << "\n";
  }
  if (!options.tls_cert_file.empty()) {
    std::cout << "h5depotd requires TLS on TCP"
              << (options.tls_client_ca_file.empty()
                      ? ""
                      : ", with a client certificate")
              << "\n";
  }
  std::cout << "h5depotd holds up to "
            << h5depot::internal::HumanSize(max_memory) << " of images ("
            << h5depot::internal::HumanSize(max_image) << " each)" << std::endl;

  int signal_number = 0;
  while (sigwait(&handled_signals, &signal_number) == 0 &&
         (signal_number == SIGHUP || signal_number == SIGUSR1)) {
    if (signal_number == SIGHUP) {
      ReportReload((*server)->ReloadAccessRules(), options.auth_file);
    } else if (options.snapshot_dir.empty()) {
      std::cout << "h5depotd: SIGUSR1 asks for a snapshot, but there is no "
                   "--snapshot-dir"
                << std::endl;
    } else {
      (*server)->WriteSnapshot().IgnoreError();  // reported through the log
    }
  }
  std::cerr << "h5depotd: " << strsignal(signal_number) << ", shutting down\n";
  (*server)->Shutdown(absl::Seconds(5));
  (*server)->Wait();
  return 0;
}
