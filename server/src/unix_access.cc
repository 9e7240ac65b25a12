#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <grpcpp/ext/health_check_service_server_builder_option.h>
#include <grpcpp/generic/async_generic_service.h>
#include <grpcpp/security/server_credentials.h>
#include <grpcpp/server.h>
#include <grpcpp/server_builder.h>
#include <grpcpp/server_posix.h>
#include <poll.h>
#include <pthread.h>
#include <pwd.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstring>
#include <thread>
#include <utility>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/time/time.h"
#include "server/src/grpc_connections_internal.h"
#include "server/src/unix_access_internal.h"

namespace h5depot::server {
namespace {

// Out of descriptors or socket memory, the acceptor leaves the socket
// alone this long: polled again at once, it would report the same pending
// connection and accept fail the same way, in a loop.
constexpr absl::Duration kAcceptBackoff = absl::Milliseconds(100);

// `what`, and the reason errno (read first) gives.
absl::Status ErrnoError(absl::StatusCode code, absl::string_view what) {
  const int error = errno;
  return absl::Status(code, absl::StrCat(what, ": ", std::strerror(error)));
}

// A refused peer's connection lives this long at most (then GOAWAY, and
// as long again for its calls): long enough to answer, too short to hoard.
constexpr int kRefusedConnectionMs = 1000;

constexpr char kRefusal[] =
    "this Unix socket does not admit your user or group (h5depotd "
    "--unix-allow-uids / --unix-allow-gids)";

// Answers every call PERMISSION_DENIED, so that a refused peer learns why
// rather than seeing its connection drop.
class RefusingService : public grpc::CallbackGenericService {
 public:
  grpc::ServerGenericBidiReactor* CreateReactor(
      grpc::GenericCallbackServerContext*) override {
    class Refusal : public grpc::ServerGenericBidiReactor {
     public:
      Refusal() {
        Finish(grpc::Status(grpc::StatusCode::PERMISSION_DENIED, kRefusal));
      }
      void OnDone() override { delete this; }
    };
    return new Refusal;
  }
};

// getpwnam_r / getgrnam_r want a buffer of a size sysconf may not know.
constexpr size_t kNameLookupBuffer = 16384;

std::optional<uid_t> LookUpUser(const std::string& name) {
  passwd entry{};
  passwd* found = nullptr;
  std::vector<char> buffer(kNameLookupBuffer);
  if (getpwnam_r(name.c_str(), &entry, buffer.data(), buffer.size(), &found) !=
          0 ||
      found == nullptr) {
    return std::nullopt;
  }
  return found->pw_uid;
}

std::optional<gid_t> LookUpGroup(const std::string& name) {
  group entry{};
  group* found = nullptr;
  std::vector<char> buffer(kNameLookupBuffer);
  if (getgrnam_r(name.c_str(), &entry, buffer.data(), buffer.size(), &found) !=
          0 ||
      found == nullptr) {
    return std::nullopt;
  }
  return found->gr_gid;
}

// A numeric id, or a name looked up by `look_up`.
template <typename Id, typename LookUp>
absl::StatusOr<Id> ResolveId(absl::string_view text, absl::string_view kind,
                             LookUp look_up) {
  uint32_t number = 0;
  if (!text.empty() && absl::SimpleAtoi(text, &number) &&
      text.find_first_not_of("0123456789") == absl::string_view::npos) {
    return static_cast<Id>(number);
  }
  const std::string name(text.data(), text.size());
  std::optional<Id> id = look_up(name);
  if (!id.has_value()) {
    return absl::InvalidArgumentError(
        absl::StrCat("no such ", kind, ": '", text, "'"));
  }
  return *id;
}

template <typename Id, typename LookUp>
absl::StatusOr<std::vector<Id>> ParseIdList(absl::string_view text,
                                            absl::string_view kind,
                                            LookUp look_up) {
  std::vector<Id> ids;
  if (text.empty()) return ids;
  for (absl::string_view item : absl::StrSplit(text, ',')) {
    absl::StatusOr<Id> id = ResolveId<Id>(item, kind, look_up);
    if (!id.ok()) return id.status();
    ids.push_back(*id);
  }
  return ids;
}

}  // namespace

bool UnixSocketAccess::Admits(uid_t uid, gid_t gid) const {
  if (!restricts_peers()) return true;
  return std::find(allow_uids.begin(), allow_uids.end(), uid) !=
             allow_uids.end() ||
         std::find(allow_gids.begin(), allow_gids.end(), gid) !=
             allow_gids.end();
}

absl::StatusOr<mode_t> ParseUnixMode(absl::string_view text) {
  absl::string_view digits = text;
  if (digits.substr(0, 2) == "0o") digits.remove_prefix(2);
  if (digits.empty() || digits.size() > 4 ||
      digits.find_first_not_of("01234567") != absl::string_view::npos) {
    return absl::InvalidArgumentError(
        absl::StrCat("'", text,
                     "' is not a mode: expected octal permission bits such as "
                     "0660"));
  }
  mode_t mode = 0;
  for (char digit : digits) mode = mode * 8 + static_cast<mode_t>(digit - '0');
  if (mode > 0777) {
    return absl::InvalidArgumentError(absl::StrCat(
        "'", text,
        "' is not a mode: only permission bits (at most 0777) apply to a "
        "socket"));
  }
  return mode;
}

absl::StatusOr<gid_t> ResolveGroup(absl::string_view name_or_gid) {
  return ResolveId<gid_t>(name_or_gid, "group", LookUpGroup);
}

absl::StatusOr<std::vector<uid_t>> ParseUserList(absl::string_view text) {
  return ParseIdList<uid_t>(text, "user", LookUpUser);
}

absl::StatusOr<std::vector<gid_t>> ParseGroupList(absl::string_view text) {
  return ParseIdList<gid_t>(text, "group", LookUpGroup);
}

absl::Status ApplySocketFileAccess(const std::string& path,
                                   const UnixSocketAccess& access) {
  if (access.group.has_value() &&
      ::chown(path.c_str(), static_cast<uid_t>(-1), *access.group) != 0) {
    const absl::StatusCode code = errno == EPERM
                                      ? absl::StatusCode::kPermissionDenied
                                      : absl::StatusCode::kUnavailable;
    return ErrnoError(
        code,
        absl::StrCat("cannot give socket ", path, " the group ", *access.group,
                     " (the server's user must be root or a member of it)"));
  }
  if (access.mode.has_value() && ::chmod(path.c_str(), *access.mode) != 0) {
    return ErrnoError(absl::StatusCode::kUnavailable,
                      absl::StrCat("cannot set the mode of socket ", path));
  }
  return absl::OkStatus();
}

bool AdmitsPeer(int fd, const UnixSocketAccess& access) {
  if (!access.restricts_peers()) return true;
  ucred credentials{};
  socklen_t credentials_bytes = sizeof(credentials);
  if (::getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &credentials,
                   &credentials_bytes) != 0) {
    return false;
  }
  return access.Admits(credentials.uid, credentials.gid);
}

struct UnixGrpcListener::Impl {
  std::string path;
  UnixSocketAccess access;
  int listener = -1;
  int wake_fd = -1;  // eventfd that ends the acceptor's poll
  grpc::Server* server = nullptr;
  GrpcConnectionCensus* census = nullptr;  // null: connections not counted
  // With an allow-list: a server of its own for refused connections, which
  // answers every call PERMISSION_DENIED and holds nothing of the depot.
  RefusingService refusing_service;
  std::unique_ptr<grpc::Server> refusing;
  std::thread acceptor;
  bool stopped = false;  // Stop() is called from one thread (Shutdown's)

  ~Impl() {
    if (listener >= 0) ::close(listener);
    if (wake_fd >= 0) ::close(wake_fd);
  }
  void AcceptLoop();
  // False when nothing could be taken for want of descriptors or memory.
  bool AcceptOne();
};

absl::StatusOr<std::unique_ptr<UnixGrpcListener>> UnixGrpcListener::Listen(
    const std::string& path, const UnixSocketAccess& access) {
  sockaddr_un address{};
  address.sun_family = AF_UNIX;
  if (path.size() >= sizeof(address.sun_path)) {
    return absl::UnavailableError(
        absl::StrCat("cannot listen on unix:", path, ": the path is too long"));
  }
  std::memcpy(address.sun_path, path.data(), path.size());
  auto impl = std::make_unique<Impl>();
  impl->path = path;
  impl->access = access;
  impl->listener = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (impl->listener < 0) {
    return ErrnoError(absl::StatusCode::kUnavailable, "socket");
  }
  // A socket file left by a server that died; never anything else.
  struct stat existing {};
  if (::lstat(path.c_str(), &existing) == 0 && S_ISSOCK(existing.st_mode)) {
    ::unlink(path.c_str());
  }
  if (::bind(impl->listener, reinterpret_cast<const sockaddr*>(&address),
             sizeof(address)) != 0) {
    return ErrnoError(absl::StatusCode::kUnavailable,
                      absl::StrCat("cannot listen on unix:", path));
  }
  // Before listen(): no connection is ever taken under the looser mode.
  absl::Status applied = ApplySocketFileAccess(path, access);
  if (!applied.ok()) {
    ::unlink(path.c_str());
    return applied;
  }
  if (::listen(impl->listener, SOMAXCONN) != 0) {
    ::unlink(path.c_str());
    return ErrnoError(absl::StatusCode::kUnavailable,
                      absl::StrCat("cannot listen on unix:", path));
  }
  impl->wake_fd = ::eventfd(0, EFD_CLOEXEC);
  if (impl->wake_fd < 0) {
    ::unlink(path.c_str());
    return ErrnoError(absl::StatusCode::kUnavailable, "eventfd");
  }
  if (access.restricts_peers()) {
    grpc::ServerBuilder builder;
    // No health service (the default one is process-wide): a refused peer
    // learns nothing but its refusal.
    builder.SetOption(
        std::make_unique<grpc::HealthCheckServiceServerBuilderOption>(nullptr));
    builder.RegisterCallbackGenericService(&impl->refusing_service);
    builder.AddChannelArgument(GRPC_ARG_MAX_CONCURRENT_STREAMS, 1);
    builder.AddChannelArgument(GRPC_ARG_MAX_CONNECTION_AGE_MS,
                               kRefusedConnectionMs);
    builder.AddChannelArgument(GRPC_ARG_MAX_CONNECTION_AGE_GRACE_MS,
                               kRefusedConnectionMs);
    impl->refusing = builder.BuildAndStart();
    if (impl->refusing == nullptr) {
      ::unlink(path.c_str());
      return absl::UnavailableError(
          "cannot start the gRPC server that refuses Unix socket peers");
    }
  }
  return std::unique_ptr<UnixGrpcListener>(
      new UnixGrpcListener(std::move(impl)));
}

UnixGrpcListener::UnixGrpcListener(std::unique_ptr<Impl> impl)
    : impl_(std::move(impl)) {}

UnixGrpcListener::~UnixGrpcListener() { Stop(); }

void UnixGrpcListener::Serve(grpc::Server* server,
                             GrpcConnectionCensus* census) {
  impl_->server = server;
  impl_->census = census;
  Impl* raw = impl_.get();
  impl_->acceptor = std::thread([raw] { raw->AcceptLoop(); });
}

void UnixGrpcListener::Stop() {
  if (impl_->stopped) return;
  impl_->stopped = true;
  const uint64_t one = 1;
  if (::write(impl_->wake_fd, &one, sizeof(one)) < 0) {
    // Cannot fail on an eventfd below its maximum; nothing to wake if so.
  }
  if (impl_->acceptor.joinable()) impl_->acceptor.join();
  ::close(impl_->listener);
  impl_->listener = -1;
  ::unlink(impl_->path.c_str());
  // Refusals are answered at once; nothing to wait for.
  if (impl_->refusing != nullptr) {
    impl_->refusing->Shutdown(std::chrono::system_clock::now());
  }
}

void UnixGrpcListener::Impl::AcceptLoop() {
  pthread_setname_np(pthread_self(), "h5depot-unix");
  absl::Time listen_again = absl::InfinitePast();
  while (true) {
    const absl::Duration backoff_left = listen_again - absl::Now();
    const bool backing_off = backoff_left > absl::ZeroDuration();
    pollfd entries[2] = {{wake_fd, POLLIN, 0},
                         {backing_off ? -1 : listener, POLLIN, 0}};
    const int timeout_ms =
        backing_off ? static_cast<int>(absl::ToInt64Milliseconds(
                          absl::Ceil(backoff_left, absl::Milliseconds(1))))
                    : -1;
    if (::poll(entries, 2, timeout_ms) < 0) {
      if (errno == EINTR) continue;
      return;
    }
    if (entries[0].revents != 0) return;
    if (entries[1].revents != 0 && !AcceptOne()) {
      listen_again = absl::Now() + kAcceptBackoff;
    }
  }
}

bool UnixGrpcListener::Impl::AcceptOne() {
  // gRPC's endpoints want non-blocking descriptors.
  const int fd =
      ::accept4(listener, nullptr, nullptr, SOCK_CLOEXEC | SOCK_NONBLOCK);
  if (fd < 0) {
    // The client gave up (ECONNABORTED and the like): nothing to wait for.
    return errno != EMFILE && errno != ENFILE && errno != ENOBUFS &&
           errno != ENOMEM;
  }
  if (!AdmitsPeer(fd, access)) {
    // Its calls are answered PERMISSION_DENIED by a server that can do
    // nothing else.
    grpc::AddInsecureChannelFromFd(refusing.get(), fd);
    return true;
  }
  if (census != nullptr) census->UnixConnectionAccepted(fd);
  grpc::AddInsecureChannelFromFd(server, fd);  // gRPC owns fd now
  return true;
}

}  // namespace h5depot::server
