#include <arpa/inet.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstring>
#include <list>
#include <map>
#include <optional>
#include <thread>
#include <unordered_map>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "h5depot/internal/lane_protocol.h"
#include "h5depot/internal/lane_socket.h"
#include "server/src/client_cpu_internal.h"
#include "server/src/lane_server_internal.h"
#include "server/src/server_metrics_internal.h"
#include "server/src/tcp_listener_internal.h"

namespace h5depot::server {
namespace {

using internal::lane::LaneReader;
using internal::lane::LaneSocket;
namespace lane = internal::lane;

// The generations a connection's client was handed the memfd of, by
// generation: one lease per descriptor handed out.
using LaneLeases = std::unordered_multimap<uint64_t, ImageLease>;
// Generations a connection pinned (PIN), by generation.
using LanePins = std::unordered_multimap<uint64_t, ImageRef>;

const ImageRef& HeldImage(const ImageLease& lease) { return lease.image(); }
const ImageRef& HeldImage(const ImageRef& image) { return image; }

// Ends one of `held`'s holds on `generation` of `image_id`, if it has one.
// Generations of different images may be equal (a replica's is another
// server's number), so the id is compared too, unless none is given (a
// RELEASE names none: which of two such leases ends first does not matter,
// as the client releases each).
template <typename Holds>
void EndHold(Holds& held, uint64_t generation, std::string_view image_id) {
  auto [first, last] = held.equal_range(generation);
  for (; first != last; ++first) {
    if (image_id.empty() || HeldImage(first->second)->image_id() == image_id) {
      held.erase(first);
      return;
    }
  }
}

// Pushed bytes are received and checksummed this much at a time, so that
// the checksum reads them while they are still in the cache.
constexpr size_t kReceivePieceBytes = size_t{256} << 10;

// Requests moving at most this many image bytes are served on the CPU the
// client waits on, when it says which. Larger transfers are left to the
// scheduler: each end then keeps a CPU of its own busy copying.
constexpr uint64_t kNearClientBytes = uint64_t{64} << 10;

// When the process is out of descriptors (or the kernel out of memory for
// sockets) and a pending connection cannot even be shed, the acceptor
// leaves the listeners alone this long: polled again at once, they would
// report the same connection, and accept fail the same way, in a loop.
constexpr absl::Duration kAcceptBackoff = absl::Milliseconds(100);

// Who is at the other end of a connected socket, learnt once per
// connection: the address in gRPC's notation, and whether it is on this
// host (a Unix socket, or TCP from a loopback address).
struct Peer {
  Transport transport = Transport::kLaneTcp;
  std::string address;
  bool local = false;
  // Whose connections count together against the cap per peer: the IP
  // address (without the port), or on a Unix socket the user id.
  std::string counted_as;
  // On a Unix socket: whether UnixSocketAccess admits the peer.
  bool admitted = true;
};

Peer PeerOf(int fd, const UnixSocketAccess& unix_access) {
  Peer result;
  sockaddr_storage peer{};
  socklen_t peer_bytes = sizeof(peer);
  if (::getpeername(fd, reinterpret_cast<sockaddr*>(&peer), &peer_bytes) != 0) {
    return result;
  }
  char text[INET6_ADDRSTRLEN] = "";
  if (peer.ss_family == AF_UNIX) {
    result.transport = Transport::kLaneUnix;
    result.address = "unix:";
    result.local = true;
    ucred credentials{};
    socklen_t credentials_bytes = sizeof(credentials);
    ::getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &credentials, &credentials_bytes);
    result.counted_as = absl::StrCat("unix:uid=", credentials.uid);
    result.admitted = AdmitsPeer(fd, unix_access);
  } else if (peer.ss_family == AF_INET) {
    const auto* v4 = reinterpret_cast<const sockaddr_in*>(&peer);
    ::inet_ntop(AF_INET, &v4->sin_addr, text, sizeof(text));
    result.counted_as = absl::StrCat("ipv4:", text);
    result.address = absl::StrCat("ipv4:", text, ":", ntohs(v4->sin_port));
    result.local = (ntohl(v4->sin_addr.s_addr) >> 24) == 127;
  } else if (peer.ss_family == AF_INET6) {
    const auto* v6 = reinterpret_cast<const sockaddr_in6*>(&peer);
    ::inet_ntop(AF_INET6, &v6->sin6_addr, text, sizeof(text));
    result.counted_as = absl::StrCat("ipv6:[", text, "]");
    result.address = absl::StrCat("ipv6:[", text, "]:", ntohs(v6->sin6_port));
    result.local = IN6_IS_ADDR_LOOPBACK(&v6->sin6_addr) ||
                   (IN6_IS_ADDR_V4MAPPED(&v6->sin6_addr) &&
                    v6->sin6_addr.s6_addr[12] == 127);
  }
  return result;
}

absl::Status ErrnoError(std::string_view what) {
  return absl::UnavailableError(
      absl::StrCat(std::string(what), ": ", std::strerror(errno)));
}

absl::StatusOr<LaneSocket> ListenUnix(const std::string& path,
                                      const UnixSocketAccess& access) {
  sockaddr_un address{};
  address.sun_family = AF_UNIX;
  if (path.size() >= sizeof(address.sun_path)) {
    return absl::InvalidArgumentError(
        absl::StrCat("data lane: Unix socket path '", path, "' is too long"));
  }
  std::memcpy(address.sun_path, path.data(), path.size());
  LaneSocket listener(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
  if (!listener.is_open()) return ErrnoError("data lane: socket");
  ::unlink(path.c_str());  // a stale file from a server that died
  if (::bind(listener.fd(), reinterpret_cast<const sockaddr*>(&address),
             sizeof(address)) != 0) {
    return ErrnoError(absl::StrCat("data lane: cannot listen on ", path));
  }
  // Before listen(): no connection is ever taken under the looser mode.
  if (absl::Status applied = ApplySocketFileAccess(path, access);
      !applied.ok()) {
    ::unlink(path.c_str());
    return absl::Status(applied.code(),
                        absl::StrCat("data lane: ", applied.message()));
  }
  if (::listen(listener.fd(), 128) != 0) {
    return ErrnoError(absl::StrCat("data lane: cannot listen on ", path));
  }
  return listener;
}

// Before serving a request that moves `image_bytes`: onto the CPU the
// client waits on, if it said which (`follower` is null otherwise) and the
// request is small.
void MoveNearClient(ClientCpuFollower* follower,
                    const lane::RequestHeader& header, uint64_t image_bytes) {
  if (follower != nullptr && header.client_cpu.has_value() &&
      image_bytes <= kNearClientBytes) {
    follower->MoveTo(*header.client_cpu);
  }
}

// The image's info in a final response.
void EncodeInfo(const StoredImage& image, lane::Response* response,
                DepotOperations::ChecksumNeed checksum) {
  const ImageDescription description =
      DepotOperations::Describe(image, checksum);
  response->size = description.size;
  response->generation = description.generation;
  response->checksum = description.checksum;
  response->created_unix_micros = description.created_unix_micros;
  response->expires_unix_micros = description.expires_unix_micros;
}

// Sends the final response for `status`; with an image, its info, and with
// `send_bytes` its bytes too, straight from the stored buffer.
// How the request being served on this thread was answered, for the
// metrics: a connection is served by one thread, a request at a time, so
// the functions that send a request's final answer note it here, and
// HandleRequest clears it before each request and reports it after.
struct RequestOutcome {
  bool answered = false;
  absl::StatusCode code = absl::StatusCode::kOk;
  uint64_t image_bytes = 0;  // sent; a push's are counted by HandleRequest
};
thread_local RequestOutcome request_outcome;

void NoteAnswer(absl::StatusCode code, uint64_t image_bytes) {
  request_outcome.answered = true;
  request_outcome.code = code;
  request_outcome.image_bytes = image_bytes;
}

// The header of a final response with `status` and `image`'s info (none
// if null), into `header`; its message is status.message()'s first
// `*message_bytes`.
// The header of a final Response with `code` and a message of
// `message` (cut at kMaxMessageBytes: its length goes to
// `*message_bytes_out`), and `image`'s info if given.
void EncodeFinal(absl::StatusCode code, absl::string_view message,
                 const StoredImage* image, bool send_bytes,
                 uint8_t (&header)[lane::kResponseHeaderBytes],
                 size_t* message_bytes_out) {
  lane::Response response;
  response.kind = lane::ResponseKind::kFinal;
  response.code = code;
  const size_t message_bytes = std::min(message.size(), lane::kMaxMessageBytes);
  response.message_bytes = static_cast<uint16_t>(message_bytes);
  // Bytes that move are checked against the checksum; an answer without
  // them need not hash an image pushed as a memfd.
  if (image != nullptr) {
    EncodeInfo(*image, &response,
               send_bytes ? DepotOperations::ChecksumNeed::kCompute
                          : DepotOperations::ChecksumNeed::kOnlyIfKnown);
  }
  lane::EncodeResponse(response, header);
  *message_bytes_out = message_bytes;
}

absl::Status SendFinal(LaneSocket& socket, const absl::Status& status,
                       const StoredImage* image, bool send_bytes) {
  NoteAnswer(status.code(), send_bytes && image != nullptr ? image->size() : 0);
  uint8_t header[lane::kResponseHeaderBytes];
  size_t message_bytes = 0;
  EncodeFinal(status.code(), status.message(), image, send_bytes, header,
              &message_bytes);
  iovec iov[3] = {{header, sizeof(header)},
                  {const_cast<char*>(status.message().data()), message_bytes},
                  {nullptr, 0}};
  if (send_bytes && image != nullptr) {
    iov[2] = {const_cast<uint8_t*>(image->data()), image->size()};
  }
  return socket.SendAll(iov, 3);
}

// A push's answer: `published`'s info, sent once this hold on the image
// is dropped, so that a client told its push is done finds the image
// held by nobody it does not know of (an eviction may take it then). A
// stream append's success carries the id of the step it published as its
// message (lane::kFeatureStreams).
absl::Status SendPublished(LaneSocket& socket,
                           absl::StatusOr<ImageRef> published,
                           bool stream_append) {
  const absl::Status status = published.status();
  NoteAnswer(status.code(), 0);
  const std::string message =
      status.ok() ? (stream_append ? (*published)->image_id() : std::string())
                  : std::string(status.message());
  uint8_t header[lane::kResponseHeaderBytes];
  size_t message_bytes = 0;
  EncodeFinal(status.code(), message,
              published.ok() ? published->get() : nullptr, false, header,
              &message_bytes);
  published = status.ok() ? absl::CancelledError("answered") : status;
  iovec iov[2] = {{header, sizeof(header)},
                  {const_cast<char*>(message.data()), message_bytes}};
  return socket.SendAll(iov, 2);
}

// A push that broke off before its end (`status`): if the server cut it
// off, the client is told why, once its memory is released; either way
// the connection is closed, its stream out of step.
absl::Status EndBrokenPush(LaneSocket& socket,
                           std::unique_ptr<PendingImage> pending,
                           absl::Status status) {
  const absl::Status cut = pending->cut_status();
  pending.reset();
  if (cut.ok()) return status;
  SendFinal(socket, cut, nullptr, false).IgnoreError();
  return cut;
}

// Answers a GET with `image`'s memfd instead of its bytes, under a lease
// kept in `leases` until the client releases it or the connection ends.
absl::Status SendDescriptor(LaneSocket& socket, DepotOperations& operations,
                            const ImageRef& image, LaneLeases& leases) {
  lane::Response response;
  response.kind = lane::ResponseKind::kFinal;
  response.with_descriptor = true;
  EncodeInfo(*image, &response, DepotOperations::ChecksumNeed::kOnlyIfKnown);
  uint8_t header[lane::kResponseHeaderBytes];
  lane::EncodeResponse(response, header);
  // Leased before the descriptor leaves: from then on the client may map
  // it, and its memory must never be reused.
  ImageLease lease = operations.Lease(image);
  iovec iov{header, sizeof(header)};
  if (absl::Status status =
          socket.SendAllWithDescriptor(&iov, 1, image->memfd());
      !status.ok()) {
    return status;
  }
  leases.emplace(image->generation(), std::move(lease));
  NoteAnswer(absl::StatusCode::kOk, 0);  // no byte moved
  return absl::OkStatus();
}

absl::Status SendContinue(LaneSocket& socket) {
  lane::Response response;
  response.kind = lane::ResponseKind::kContinue;
  uint8_t header[lane::kResponseHeaderBytes];
  lane::EncodeResponse(response, header);
  return socket.Send(header, sizeof(header));
}

}  // namespace

struct DataLaneServer::Impl {
  struct Connection {
    LaneSocket socket;
    Peer peer;
    std::thread thread;
    // Set by the connection's thread while it serves a request, so that
    // Shutdown() lets that request finish. Atomic rather than guarded by
    // Impl::mutex: it changes twice per request on every connection.
    std::atomic<bool> busy{false};
    bool finished = false;  // guarded by Impl::mutex
  };

  DepotOperations* operations = nullptr;
  DataLaneOptions options;
  LaneSocket tcp_listener;
  LaneSocket unix_listener;
  int tcp_port = 0;
  std::string unix_path;
  std::atomic<uint16_t> grpc_port{0};  // set_grpc_port()
  int wake_fd = -1;                    // eventfd that ends the acceptor's poll
  // A descriptor held in reserve (on /dev/null) for the acceptor to give up
  // when the process runs out of them (ShedConnection). Acceptor only.
  int reserve_fd = -1;
  std::thread acceptor;

  absl::Mutex mutex;
  // Set once, under `mutex` (Accept() relies on that), read without it.
  std::atomic<bool> stopping{false};
  std::list<std::unique_ptr<Connection>> connections ABSL_GUARDED_BY(mutex);
  // Connections not finished, by Peer::counted_as; no zero entries.
  std::map<std::string, size_t> connections_per_peer ABSL_GUARDED_BY(mutex);

  ~Impl() {
    if (wake_fd >= 0) ::close(wake_fd);
    if (reserve_fd >= 0) ::close(reserve_fd);
  }

  void AcceptLoop();
  // Takes one pending connection from `listener`. False when the process
  // is out of descriptors or memory and nothing could be taken: the caller
  // then backs off.
  bool Accept(LaneSocket& listener);
  bool ShedConnection(LaneSocket& listener);
  void ReapFinished() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mutex);
  void Serve(Connection* connection);
  // Reads the token a client sends after the hellos (kFeatureToken) into
  // `token`, by `deadline`; an error ends the connection.
  static absl::Status ReadToken(LaneReader& reader, absl::Time deadline,
                                std::string* token);
  // Waits for the next request's first bytes. False when the connection is
  // to end: the client closed or broke it, or left it idle for the idle
  // timeout.
  // A connection holding leases or pins is never idle: its client maps or
  // reads those generations.
  bool AwaitRequest(LaneReader& reader, bool holds_leases);
  // What a connection agreed to and holds, beside its socket.
  struct Session {
    const Caller* caller = nullptr;
    // Null unless the client agreed to say its CPU.
    ClientCpuFollower* follower = nullptr;
    // kFeatureDescriptors agreed.
    bool shares_memory = false;
    LaneLeases leases;
    // kFeaturePin agreed.
    bool pins_agreed = false;
    LanePins pins;
    // kFeatureStreams agreed.
    bool streams_agreed = false;
    // The image bytes of the request being served, if a PUT.
    uint64_t last_put_bytes = 0;
  };
  // Each returns an error only when the connection is no longer usable;
  // refusals of a request are answered on the connection.
  // Serves one request (Dispatch), counting it in options.metrics if set.
  absl::Status HandleRequest(LaneSocket& socket, LaneReader& reader,
                             Session& session);
  // Reads one request and serves it; its operation goes to `op` (may be
  // null) once read.
  absl::Status Dispatch(LaneSocket& socket, LaneReader& reader,
                        Session& session, lane::Op* op = nullptr);
  absl::Status HandlePutSealed(LaneSocket& socket, const Caller& caller,
                               const lane::RequestHeader& header,
                               std::string image_id);
  absl::Status HandlePut(LaneSocket& socket, LaneReader& reader,
                         const Caller& caller,
                         const lane::RequestHeader& header,
                         std::string image_id, ClientCpuFollower* follower);
  absl::Status HandleGet(LaneSocket& socket, Session& session,
                         const lane::RequestHeader& header,
                         const std::string& image_id);
  absl::Status HandleRead(LaneSocket& socket, const Caller& caller,
                          const lane::RequestHeader& header,
                          const std::string& image_id,
                          ClientCpuFollower* follower);
  absl::Status HandlePin(LaneSocket& socket, Session& session,
                         const lane::RequestHeader& header,
                         const std::string& image_id);
  absl::Status HandleNext(LaneSocket& socket, LaneReader& reader,
                          Session& session, const lane::RequestHeader& header,
                          const std::string& stream);
  absl::StatusOr<ImageRef> WaitForImage(LaneSocket& socket,
                                        const Caller& caller,
                                        const std::string& image_id,
                                        ImageWait wait);
  // Starts a wait by `start(done)`, which returns its id (0: `done` has
  // run already), and blocks until `done` has run: ended by the wait
  // itself, or by `cancel(id)` once the client hangs up or the server
  // stops. Returns what `done` was given.
  template <typename Answer, typename WaitId>
  Answer AwaitAnswer(
      LaneSocket& socket,
      const std::function<WaitId(absl::AnyInvocable<void(Answer)>)>& start,
      const std::function<void(WaitId)>& cancel, absl::string_view what);
};

absl::StatusOr<std::unique_ptr<DataLaneServer>> DataLaneServer::Start(
    DepotOperations* operations, const DataLaneOptions& options) {
  auto impl = std::make_unique<Impl>();
  impl->operations = operations;
  impl->options = options;
  if (!options.tcp_host.empty()) {
    absl::StatusOr<internal::UniqueFd> listener = absl::UnavailableError("");
    if (options.tcp_port == 0 && options.preferred_tcp_port > 0) {
      listener = ListenTcp("data lane", options.tcp_host,
                           options.preferred_tcp_port, &impl->tcp_port);
    }
    if (!listener.ok()) {
      listener = ListenTcp("data lane", options.tcp_host, options.tcp_port,
                           &impl->tcp_port);
    }
    if (!listener.ok()) return listener.status();
    impl->tcp_listener = LaneSocket(listener->Release());
  }
  if (!options.unix_path.empty()) {
    absl::StatusOr<LaneSocket> listener =
        ListenUnix(options.unix_path, options.unix_access);
    if (!listener.ok()) return listener.status();
    impl->unix_listener = *std::move(listener);
    impl->unix_path = options.unix_path;
  }
  impl->wake_fd = ::eventfd(0, EFD_CLOEXEC);
  if (impl->wake_fd < 0) return ErrnoError("data lane: eventfd");
  impl->reserve_fd = ::open("/dev/null", O_RDONLY | O_CLOEXEC);
  if (impl->reserve_fd < 0) return ErrnoError("data lane: /dev/null");
  Impl* raw = impl.get();
  impl->acceptor = std::thread([raw] { raw->AcceptLoop(); });
  return std::unique_ptr<DataLaneServer>(new DataLaneServer(std::move(impl)));
}

DataLaneServer::DataLaneServer(std::unique_ptr<Impl> impl)
    : impl_(std::move(impl)) {}

DataLaneServer::~DataLaneServer() { Shutdown(absl::ZeroDuration()); }

int DataLaneServer::tcp_port() const { return impl_->tcp_port; }

void DataLaneServer::set_grpc_port(int port) {
  impl_->grpc_port.store(static_cast<uint16_t>(port),
                         std::memory_order_relaxed);
}

const std::string& DataLaneServer::unix_path() const {
  return impl_->unix_path;
}

void DataLaneServer::Impl::AcceptLoop() {
  absl::Time listen_again = absl::InfinitePast();
  while (true) {
    // While backing off, only a stop wakes the acceptor before its time.
    const absl::Duration backoff_left = listen_again - absl::Now();
    const bool backing_off = backoff_left > absl::ZeroDuration();
    pollfd entries[3] = {{wake_fd, POLLIN, 0},
                         {backing_off ? -1 : tcp_listener.fd(), POLLIN, 0},
                         {backing_off ? -1 : unix_listener.fd(), POLLIN, 0}};
    const int timeout_ms =
        backing_off ? static_cast<int>(absl::ToInt64Milliseconds(
                          absl::Ceil(backoff_left, absl::Milliseconds(1))))
                    : -1;
    // A negative descriptor (no such listener) is ignored by poll.
    if (::poll(entries, 3, timeout_ms) < 0) {
      if (errno == EINTR) continue;
      return;
    }
    if (entries[0].revents != 0) return;
    bool accepting = true;
    if (entries[1].revents != 0) accepting &= Accept(tcp_listener);
    if (entries[2].revents != 0) accepting &= Accept(unix_listener);
    if (!accepting) listen_again = absl::Now() + kAcceptBackoff;
  }
}

bool DataLaneServer::Impl::Accept(LaneSocket& listener) {
  {
    // Finished connections' descriptors are closed already; their threads
    // are joined here, before the cap below counts connections.
    absl::MutexLock lock(&mutex);
    ReapFinished();
  }
  LaneSocket socket(::accept4(listener.fd(), nullptr, nullptr, SOCK_CLOEXEC));
  if (!socket.is_open()) {
    if (errno == EMFILE || errno == ENFILE) return ShedConnection(listener);
    // Otherwise the client gave up (ECONNABORTED and the like), or the
    // kernel is short of memory, which waiting may cure.
    return errno != ENOBUFS && errno != ENOMEM;
  }
  Peer peer = PeerOf(socket.fd(), options.unix_access);
  // A peer the allow-list refuses is closed before it counts anywhere; its
  // client falls back to gRPC, which refuses it too.
  if (!peer.admitted) return true;
  absl::MutexLock lock(&mutex);
  // Connections beyond a cap are closed at once; their clients use gRPC.
  if (stopping || connections.size() >= options.max_connections) return true;
  auto held = connections_per_peer.find(peer.counted_as);
  if (held != connections_per_peer.end() &&
      held->second >= options.max_connections_per_peer) {
    return true;
  }
  if (held == connections_per_peer.end()) {
    held = connections_per_peer.emplace(peer.counted_as, 0).first;
  }
  ++held->second;
  lane::TuneSocket(socket.fd());
  socket.SetStallTimeout(options.stall_timeout).IgnoreError();
  auto connection = std::make_unique<Connection>();
  connection->socket = std::move(socket);
  connection->peer = std::move(peer);
  Connection* raw = connection.get();
  connections.push_back(std::move(connection));
  raw->thread = std::thread([this, raw] { Serve(raw); });
  return true;
}

// Out of descriptors with a connection pending: gives up the reserve,
// takes the connection and closes it at once (its client sees the end and
// uses gRPC), then reserves a descriptor again. Without this the pending
// connection would stay queued, and nobody learn that it is not served.
bool DataLaneServer::Impl::ShedConnection(LaneSocket& listener) {
  if (reserve_fd >= 0) ::close(reserve_fd);
  const int shed = ::accept4(listener.fd(), nullptr, nullptr, SOCK_CLOEXEC);
  if (shed >= 0) ::close(shed);
  // May fail while another thread holds the freed descriptor; tried again
  // at the next shortage.
  reserve_fd = ::open("/dev/null", O_RDONLY | O_CLOEXEC);
  return shed >= 0 && reserve_fd >= 0;
}

void DataLaneServer::Impl::ReapFinished() {
  for (auto it = connections.begin(); it != connections.end();) {
    if ((*it)->finished) {
      (*it)->thread.join();
      it = connections.erase(it);
    } else {
      ++it;
    }
  }
}

void DataLaneServer::Impl::Serve(Connection* connection) {
  // Named so that top -H, perf and tests can tell lane threads apart.
  pthread_setname_np(pthread_self(), "h5depot-lane");
  LaneSocket& socket = connection->socket;
  LaneReader reader(&socket);
  const Peer& peer = connection->peer;
  uint8_t hello[lane::kHelloBytes];
  // A client that connects and says nothing would hold a thread and a
  // buffer for as long as it likes.
  const absl::Time handshake_deadline = absl::Now() + options.handshake_timeout;
  bool good = true;
  if (options.tls != nullptr && peer.transport == Transport::kLaneTcp) {
    // A client that fails the handshake (plain, or without a certificate
    // the client CA signed) is dropped; it then tries gRPC, which refuses
    // it the same way, and says why.
    good =
        socket.StartTls(*options.tls->Current(), "", handshake_deadline).ok();
  }
  good = good && reader.Read(hello, sizeof(hello), handshake_deadline).ok();
  std::optional<ClientCpuFollower> follower;
  bool shares_memory = false;
  bool pins_agreed = false;
  bool streams_agreed = false;
  bool identify = false;
  std::string token;  // the connection's, for every request on it
  if (good) {
    uint16_t offered = 0;
    const absl::Status hello_status = lane::DecodeHello(hello, &offered);
    uint16_t agreed = offered & (lane::kFeatureToken | lane::kFeatureRead |
                                 lane::kFeatureIdentity | lane::kFeaturePin |
                                 lane::kFeatureStreams);
    if (hello_status.ok() && options.follow_client_cpu && peer.local) {
      agreed |= offered & lane::kFeatureClientCpu;
    }
    if (hello_status.ok() && options.share_memory &&
        peer.transport == Transport::kLaneUnix) {
      agreed |= offered & lane::kFeatureDescriptors;
    }
    if ((agreed & lane::kFeatureClientCpu) != 0) follower.emplace();
    if ((agreed & lane::kFeatureDescriptors) != 0) {
      socket.AcceptDescriptors();
      shares_memory = true;
      if ((agreed & lane::kFeatureStreams) != 0) {
        agreed |= offered & lane::kFeatureStepBuffers;
      }
    }
    // Our hello goes back either way, so that a client of another version
    // can tell why it is turned away.
    lane::EncodeHello(hello, agreed);
    good = socket.Send(hello, sizeof(hello)).ok() && hello_status.ok();
    pins_agreed = (agreed & lane::kFeaturePin) != 0;
    streams_agreed = (agreed & lane::kFeatureStreams) != 0;
    identify = (agreed & lane::kFeatureIdentity) != 0;
    if (good && (agreed & lane::kFeatureToken) != 0) {
      good = ReadToken(reader, handshake_deadline, &token).ok();
    }
  }
  const Caller caller =
      Caller::Known(peer.transport, peer.address, peer.local, token);
  if (good && identify) {
    // Whose lane this is, and whether the caller gets anything here: the
    // client's first contact, instead of a gRPC GetLimits.
    lane::Identity identity;
    identity.grpc_port = grpc_port.load(std::memory_order_relaxed);
    identity.admitted =
        operations->Authorize(caller, Operation::kGetLimits, {}).ok();
    uint8_t encoded[lane::kIdentityBytes];
    lane::EncodeIdentity(identity, encoded);
    good = socket.Send(encoded, sizeof(encoded)).ok();
  }
  // Counted once it is through its handshake, whatever ends it.
  const bool session_counted = good;
  if (session_counted && options.metrics != nullptr) {
    options.metrics->LaneConnectionOpened(peer.transport);
  }
  Session session;
  session.caller = &caller;
  session.follower = follower.has_value() ? &*follower : nullptr;
  session.shares_memory = shares_memory;
  session.pins_agreed = pins_agreed;
  session.streams_agreed = streams_agreed;
  while (good) {
    if (!AwaitRequest(reader,
                      !session.leases.empty() || !session.pins.empty())) {
      break;
    }
    // Sequentially consistent, against Shutdown()'s setting `stopping` and
    // then reading `busy`: either this thread sees `stopping`, or Shutdown()
    // sees the request in progress and leaves its socket alone.
    connection->busy.store(true);
    if (stopping.load()) break;
    good = HandleRequest(socket, reader, session).ok();
    connection->busy.store(false);
    if (stopping.load()) break;
  }
  if (session_counted && options.metrics != nullptr) {
    options.metrics->LaneConnectionClosed(peer.transport);
  }
  // The peer sees the end at once, and the descriptor is free for the next
  // connection now rather than when this one is reaped. Closed under the
  // lock, under which Shutdown() shuts sockets down.
  socket.Shutdown();
  absl::MutexLock lock(&mutex);
  socket.Close();
  connection->finished = true;
  if (auto held = connections_per_peer.find(peer.counted_as);
      --held->second == 0) {
    connections_per_peer.erase(held);
  }
}

absl::Status DataLaneServer::Impl::ReadToken(LaneReader& reader,
                                             absl::Time deadline,
                                             std::string* token) {
  uint8_t header[lane::kTokenHeaderBytes];
  if (absl::Status status = reader.Read(header, sizeof(header), deadline);
      !status.ok()) {
    return status;
  }
  uint16_t token_bytes = 0;
  if (absl::Status status = lane::DecodeTokenHeader(header, &token_bytes);
      !status.ok()) {
    return status;
  }
  token->resize(token_bytes);
  return reader.Read(token->data(), token_bytes, deadline);
}

bool DataLaneServer::Impl::AwaitRequest(LaneReader& reader, bool holds_leases) {
  const absl::Time drop_at = holds_leases ? absl::InfiniteFuture()
                                          : absl::Now() + options.idle_timeout;
  // First a blocking receive: the one system call a busy connection's next
  // request costs. It gives up after the stall timeout (the socket's
  // SO_RCVTIMEO); from then on, or at once if the idle timeout is the
  // shorter, the receive polls until `drop_at`.
  bool blocking = options.idle_timeout >= options.stall_timeout;
  while (reader.buffered() == 0) {
    const absl::Status status =
        reader.Fill(blocking ? absl::InfiniteFuture() : drop_at);
    if (status.ok()) continue;
    if (!absl::IsDeadlineExceeded(status) || absl::Now() >= drop_at) {
      return false;
    }
    blocking = false;
  }
  return true;
}

namespace {

// The operation a lane request is counted as; false for those that have no
// answer (RELEASE, UNPIN).
bool CountedAs(lane::Op op, Operation* counted) {
  switch (op) {
    case lane::Op::kPut:
    case lane::Op::kPutSealed:
      *counted = Operation::kPush;
      return true;
    case lane::Op::kGet:
    case lane::Op::kNext:
      *counted = Operation::kFetch;
      return true;
    case lane::Op::kRead:
    case lane::Op::kPin:
      *counted = Operation::kRead;
      return true;
    case lane::Op::kRelease:
    case lane::Op::kUnpin:
      return false;
  }
  return false;
}

}  // namespace

absl::Status DataLaneServer::Impl::HandleRequest(LaneSocket& socket,
                                                 LaneReader& reader,
                                                 Session& session) {
  if (options.metrics == nullptr) return Dispatch(socket, reader, session);
  const absl::Time start = absl::Now();
  request_outcome = RequestOutcome();
  lane::Op op = lane::Op::kRelease;
  const absl::Status status = Dispatch(socket, reader, session, &op);
  Operation counted;
  if (!request_outcome.answered || !CountedAs(op, &counted)) return status;
  uint64_t image_bytes = request_outcome.image_bytes;
  if (op == lane::Op::kPut && request_outcome.code == absl::StatusCode::kOk) {
    image_bytes = session.last_put_bytes;
  }
  // Answered OK, but the bytes did not all go out: the client left.
  const absl::StatusCode code =
      request_outcome.code == absl::StatusCode::kOk && !status.ok()
          ? absl::StatusCode::kCancelled
          : request_outcome.code;
  options.metrics->RecordCall(counted, session.caller->transport(), code,
                              code == absl::StatusCode::kOk ? image_bytes : 0,
                              absl::Now() - start);
  return status;
}

absl::Status DataLaneServer::Impl::Dispatch(LaneSocket& socket,
                                            LaneReader& reader,
                                            Session& session, lane::Op* op) {
  const Caller& caller = *session.caller;
  ClientCpuFollower* follower = session.follower;
  uint8_t raw[lane::kRequestHeaderBytes];
  if (absl::Status status = reader.Read(raw, sizeof(raw)); !status.ok()) {
    return status;
  }
  lane::RequestHeader header;
  if (absl::Status status = lane::DecodeRequestHeader(raw, &header);
      !status.ok()) {
    return status;
  }
  if (op != nullptr) *op = header.op;
  session.last_put_bytes = header.op == lane::Op::kPut ? header.size : 0;
  if (header.client_cpu.has_value() && follower == nullptr) {
    return absl::InvalidArgumentError("a CPU sent without agreeing to");
  }
  const bool about_descriptors = header.accepts_descriptor ||
                                 header.op == lane::Op::kPutSealed ||
                                 header.op == lane::Op::kRelease;
  if (about_descriptors && !session.shares_memory) {
    return absl::InvalidArgumentError(
        "a descriptor request without agreeing to");
  }
  const bool about_pins =
      header.op == lane::Op::kPin || header.op == lane::Op::kUnpin;
  if (about_pins && !session.pins_agreed) {
    return absl::InvalidArgumentError("a pin request without agreeing to");
  }
  if ((header.stream_append || header.op == lane::Op::kNext) &&
      !session.streams_agreed) {
    return absl::InvalidArgumentError("a stream request without agreeing to");
  }
  std::string image_id(header.image_id_bytes, '\0');
  if (absl::Status status = reader.Read(image_id.data(), image_id.size());
      !status.ok()) {
    return status;
  }
  switch (header.op) {
    case lane::Op::kPut:
      return HandlePut(socket, reader, caller, header, std::move(image_id),
                       follower);
    case lane::Op::kPutSealed:
      return HandlePutSealed(socket, caller, header, std::move(image_id));
    case lane::Op::kRelease:
      // One lease on that generation ends; a generation this connection
      // holds none of is ignored. No answer.
      EndHold(session.leases, header.size, image_id);
      return absl::OkStatus();
    case lane::Op::kRead:
      return HandleRead(socket, caller, header, image_id, follower);
    case lane::Op::kPin:
      return HandlePin(socket, session, header, image_id);
    case lane::Op::kUnpin:
      // One pin of that generation ends; a generation this connection did
      // not pin is ignored. No answer.
      EndHold(session.pins, header.generation, image_id);
      return absl::OkStatus();
    case lane::Op::kNext:
      return HandleNext(socket, reader, session, header, image_id);
    case lane::Op::kGet:
      break;
  }
  return HandleGet(socket, session, header, image_id);
}

absl::Status DataLaneServer::Impl::HandlePutSealed(
    LaneSocket& socket, const Caller& caller, const lane::RequestHeader& header,
    std::string image_id) {
  // The memfd rode with the request's first bytes, received by now; a
  // step buffer's release pipe right behind it.
  internal::UniqueFd memfd(socket.TakeDescriptor());
  internal::UniqueFd release_signal;
  if (header.step_buffer) release_signal.Reset(socket.TakeDescriptor());
  if (!memfd || (header.step_buffer && !release_signal)) {
    const bool lost = socket.TakeLostDescriptors();
    return SendFinal(
        socket,
        lost ? absl::ResourceExhaustedError(
                   "the server had no room for the pushed memfd (its "
                   "descriptor limit): push the bytes instead")
             : absl::InvalidArgumentError("a sealed push without its memfd"),
        nullptr, false);
  }
  PushParams params;
  params.image_id = std::move(image_id);
  params.size = header.size;
  params.if_generation_match = header.if_generation_match;
  params.ttl_ms = header.ttl_ms;
  params.replica_generation = header.replica_generation;
  params.stream_append = header.stream_append;
  return SendPublished(
      socket,
      operations->PublishSealed(caller, std::move(params), std::move(memfd),
                                std::move(release_signal)),
      header.stream_append);
}

absl::Status DataLaneServer::Impl::HandlePut(LaneSocket& socket,
                                             LaneReader& reader,
                                             const Caller& caller,
                                             const lane::RequestHeader& header,
                                             std::string image_id,
                                             ClientCpuFollower* follower) {
  MoveNearClient(follower, header, header.size);
  const bool eager = header.size <= lane::kEagerPutBytes;
  PushParams params;
  params.image_id = std::move(image_id);
  params.size = header.size;
  params.if_generation_match = header.if_generation_match;
  params.ttl_ms = header.ttl_ms;
  params.replica_generation = header.replica_generation;
  params.stream_append = header.stream_append;
  // The checksum follows the bytes (FinishPush below). A push cut off for
  // falling behind stops receiving: the blocked recv returns at once (and
  // the connection is closed after the answer, its stream out of step).
  absl::StatusOr<std::unique_ptr<PendingImage>> pending = operations->BeginPush(
      caller, std::move(params),
      [&socket](const absl::Status&) { ::shutdown(socket.fd(), SHUT_RD); });
  if (!pending.ok()) {
    // An eager push's bytes are on their way already: read past them.
    if (eager) {
      if (absl::Status status = reader.Skip(header.size + 8); !status.ok()) {
        return status;
      }
    }
    return SendFinal(socket, pending.status(), nullptr, false);
  }
  if (!eager) {
    if (absl::Status status = SendContinue(socket); !status.ok()) {
      return status;
    }
  }
  PendingImage& image = **pending;
  // On any failure below the pending image is dropped: nothing is stored
  // and its memory is released. Each piece is counted as it comes, however
  // small, so that the store sees a slow push's progress as it is made. (Only a
  // receiver waiting for its sender gets pieces smaller than
  // kReceivePieceBytes.)
  for (uint64_t left = header.size; left > 0;) {
    const size_t most =
        static_cast<size_t>(std::min<uint64_t>(left, kReceivePieceBytes));
    absl::StatusOr<size_t> n = reader.ReadSome(image.Unreceived(), most);
    absl::Status status = n.ok() ? image.CommitReceived(*n) : n.status();
    if (!status.ok()) {
      return EndBrokenPush(socket, *std::move(pending), std::move(status));
    }
    left -= *n;
  }
  uint8_t trailer[8];
  if (absl::Status status = reader.Read(trailer, sizeof(trailer));
      !status.ok()) {
    return EndBrokenPush(socket, *std::move(pending), std::move(status));
  }
  return SendPublished(socket,
                       operations->FinishPush(image, lane::DecodeU64(trailer)),
                       header.stream_append);
}

absl::Status DataLaneServer::Impl::HandleGet(LaneSocket& socket,
                                             Session& session,
                                             const lane::RequestHeader& header,
                                             const std::string& image_id) {
  const Caller& caller = *session.caller;
  absl::StatusOr<ImageRef> image =
      header.wait_ms == 0 && header.newer_than == 0
          ? operations->Fetch(caller, image_id)
          : WaitForImage(socket, caller, image_id,
                         ImageWait{header.newer_than, header.wait_ms});
  if (!image.ok()) return SendFinal(socket, image.status(), nullptr, false);
  if (header.accepts_descriptor && (*image)->memfd() >= 0) {
    return SendDescriptor(socket, *operations, *image, session.leases);
  }
  if (header.descriptor_only) {
    return SendFinal(socket,
                     absl::FailedPreconditionError(absl::StrCat(
                         "image '", image_id,
                         "' is not in memory the server can hand over")),
                     nullptr, false);
  }
  MoveNearClient(session.follower, header, (*image)->size());
  // The reference pins this generation until its last byte is sent.
  return SendFinal(socket, absl::OkStatus(), image->get(), true);
}

// A READ is answered as gRPC's Read is, by DepotOperations::Read (which
// authorises, finds the generation and clamps the range): a refusal leaves
// the connection in step; an answer is the generation's info and then the
// clamped range, in one sendmsg straight from the stored buffer.
absl::Status DataLaneServer::Impl::HandleRead(LaneSocket& socket,
                                              const Caller& caller,
                                              const lane::RequestHeader& header,
                                              const std::string& image_id,
                                              ClientCpuFollower* follower) {
  absl::StatusOr<ImageRange> read = operations->Read(
      caller, image_id, header.generation, header.offset, header.size);
  if (!read.ok()) return SendFinal(socket, read.status(), nullptr, false);
  MoveNearClient(follower, header, read->range.length);
  lane::Response response;
  response.kind = lane::ResponseKind::kFinal;
  response.code = absl::StatusCode::kOk;
  EncodeInfo(*read->image, &response,
             DepotOperations::ChecksumNeed::kOnlyIfKnown);
  uint8_t encoded[lane::kResponseHeaderBytes];
  lane::EncodeResponse(response, encoded);
  // The reference pins the generation until its last byte is sent.
  iovec iov[2] = {
      {encoded, sizeof(encoded)},
      {const_cast<uint8_t*>(read->image->data() + read->range.offset),
       static_cast<size_t>(read->range.length)}};
  NoteAnswer(absl::StatusCode::kOk, read->range.length);
  return socket.SendAll(iov, 2);
}

// A PIN is opened as gRPC's OpenReader is, by DepotOperations::OpenReader
// (which authorises and finds the generation); the session keeps the
// reference, which pins the generation, until UNPIN or the connection's end.
absl::Status DataLaneServer::Impl::HandlePin(LaneSocket& socket,
                                             Session& session,
                                             const lane::RequestHeader& header,
                                             const std::string& image_id) {
  if (session.pins.size() >= lane::kMaxPinsPerConnection) {
    return SendFinal(
        socket,
        absl::ResourceExhaustedError(absl::StrCat(
            "this connection holds ", session.pins.size(),
            " pinned generations already, the most it may; unpin one first")),
        nullptr, false);
  }
  absl::StatusOr<ImageRef> image =
      operations->OpenReader(*session.caller, image_id, header.generation);
  if (!image.ok()) return SendFinal(socket, image.status(), nullptr, false);
  const ImageRef& pinned =
      session.pins.emplace((*image)->generation(), *std::move(image))->second;
  return SendFinal(socket, absl::OkStatus(), pinned.get(), false);
}

// The connection has a thread of its own, so a wait blocks it: in one
// poll() until the wait ends (the publishing push, the store's reaper at
// the deadline, or the store's shutdown: the operation's callback signals
// `ended`), the client hangs up, or the server stops. Nothing wakes it
// meanwhile, so that waiting connections cost no CPU however many there
// are. CANCELLED when the client hung up or the server stops.
template <typename Answer, typename WaitId>
Answer DataLaneServer::Impl::AwaitAnswer(
    LaneSocket& socket,
    const std::function<WaitId(absl::AnyInvocable<void(Answer)>)>& start,
    const std::function<void(WaitId)>& cancel, absl::string_view what) {
  const int ended = ::eventfd(0, EFD_CLOEXEC);
  if (ended < 0) {
    return absl::ResourceExhaustedError(
        absl::StrCat("the server cannot wait for ", what,
                     " now: eventfd: ", std::strerror(errno)));
  }
  Answer result = absl::UnknownError("no answer");
  auto signal_ended = [&result, ended](Answer answer) {
    result = std::move(answer);
    // The last touch of this thread's frame: once `ended` is signalled
    // the waiting thread may return.
    const uint64_t one = 1;
    if (::write(ended, &one, sizeof(one)) < 0) {
      // Cannot fail: an eventfd counter far from overflow.
    }
  };
  const WaitId waiting = start(std::move(signal_ended));
  if (waiting != 0) {
    // POLLRDHUP only on the socket: bytes a client sends meanwhile (it
    // should not) must not wake the wait again and again. `wake_fd` stays
    // readable once the server stops.
    pollfd entries[3] = {
        {ended, POLLIN, 0}, {socket.fd(), POLLRDHUP, 0}, {wake_fd, POLLIN, 0}};
    int ready;
    do {
      ready = ::poll(entries, 3, -1);
    } while (ready < 0 && errno == EINTR);
    if (ready < 0 || entries[0].revents == 0) cancel(waiting);
  }
  // The callback has run, or is running on another thread (an answer that
  // won the race against the cancel): this blocks until it has signalled.
  uint64_t count = 0;
  while (::read(ended, &count, sizeof(count)) < 0 && errno == EINTR) {
  }
  ::close(ended);
  return result;
}

absl::StatusOr<ImageRef> DataLaneServer::Impl::WaitForImage(
    LaneSocket& socket, const Caller& caller, const std::string& image_id,
    ImageWait wait) {
  using Answer = absl::StatusOr<ImageRef>;
  return AwaitAnswer<Answer, ImageStore::WaitId>(
      socket,
      [&](absl::AnyInvocable<void(Answer)> done) {
        return operations->AwaitImage(caller, Operation::kFetch, image_id, wait,
                                      std::move(done));
      },
      [this](ImageStore::WaitId waiting) { operations->CancelWait(waiting); },
      absl::StrCat("image '", image_id, "'"));
}

// A NEXT is answered as gRPC's NextStep is, by DepotOperations (AckStep
// first if the body asks, then NextStep, waiting as a GET does): the
// step's info with its id as the message, a StepTrailer, the lost ranges,
// and the step's bytes unless the client may map them, which it then
// fetches by the id. A refusal leaves the connection in step.
absl::Status DataLaneServer::Impl::HandleNext(LaneSocket& socket,
                                              LaneReader& reader,
                                              Session& session,
                                              const lane::RequestHeader& header,
                                              const std::string& stream) {
  const Caller& caller = *session.caller;
  std::string raw_body(header.size, '\0');
  if (absl::Status status = reader.Read(raw_body.data(), raw_body.size());
      !status.ok()) {
    return status;
  }
  lane::NextBody body;
  if (absl::Status status = lane::DecodeNextBody(raw_body, &body);
      !status.ok()) {
    return status;
  }
  if (body.ack_step.has_value()) {
    absl::Status acked = operations->AckStep(caller, stream, body.group,
                                             body.consumer, *body.ack_step);
    if (!acked.ok()) return SendFinal(socket, acked, nullptr, false);
  }
  NextRequest next;
  next.stream = stream;
  next.group = std::move(body.group);
  next.consumer = std::move(body.consumer);
  switch (body.start) {
    case lane::NextBody::Start::kOldest:
      next.start.kind = StreamStart::Kind::kOldest;
      break;
    case lane::NextBody::Start::kLatest:
      next.start.kind = StreamStart::Kind::kLatest;
      break;
    case lane::NextBody::Start::kStep:
      next.start.kind = StreamStart::Kind::kStep;
      next.start.step = body.start_step;
      break;
  }
  if (body.lease_ms != 0) {
    next.lease = absl::Milliseconds(std::min<uint64_t>(
        body.lease_ms, absl::ToInt64Milliseconds(StreamTable::kMaxLease)));
  }
  using Answer = absl::StatusOr<TakenStep>;
  Answer taken = AwaitAnswer<Answer, StreamTable::WaitId>(
      socket,
      [&](absl::AnyInvocable<void(Answer)> done) {
        return operations->NextStep(caller, std::move(next), header.wait_ms,
                                    std::move(done));
      },
      [this](StreamTable::WaitId waiting) {
        operations->CancelStreamWait(waiting);
      },
      absl::StrCat("stream '", stream, "'"));
  if (!taken.ok()) return SendFinal(socket, taken.status(), nullptr, false);
  const StoredImage& image = *taken->image;
  // On this host a step the server can hand over is fetched by its id, as
  // its memfd; anywhere else its bytes come now.
  const bool with_bytes = !(session.shares_memory && image.memfd() >= 0);
  NoteAnswer(absl::StatusCode::kOk, with_bytes ? image.size() : 0);
  uint8_t encoded[lane::kResponseHeaderBytes];
  size_t message_bytes = 0;
  EncodeFinal(absl::StatusCode::kOk, image.image_id(), &image, with_bytes,
              encoded, &message_bytes);
  lane::StepTrailer trailer;
  trailer.step = taken->step;
  trailer.lost_ranges = static_cast<uint32_t>(
      std::min<size_t>(taken->lost.size(), lane::kMaxLostRanges));
  trailer.with_bytes = with_bytes;
  uint8_t encoded_trailer[lane::kStepTrailerBytes];
  lane::EncodeStepTrailer(trailer, encoded_trailer);
  std::vector<uint8_t> lost(16 * size_t{trailer.lost_ranges});
  for (uint32_t i = 0; i < trailer.lost_ranges; ++i) {
    lane::EncodeU64(taken->lost[i].first, lost.data() + 16 * i);
    lane::EncodeU64(taken->lost[i].last, lost.data() + 16 * i + 8);
  }
  // The reference pins the step until its last byte is sent.
  iovec iov[5] = {{encoded, sizeof(encoded)},
                  {const_cast<char*>(image.image_id().data()), message_bytes},
                  {encoded_trailer, sizeof(encoded_trailer)},
                  {lost.data(), lost.size()},
                  {with_bytes ? const_cast<uint8_t*>(image.data()) : nullptr,
                   with_bytes ? image.size() : 0}};
  return socket.SendAll(iov, 5);
}

void DataLaneServer::Shutdown(absl::Duration grace) {
  Impl& impl = *impl_;
  {
    absl::MutexLock lock(&impl.mutex);
    if (impl.stopping.exchange(true)) return;
  }
  const uint64_t one = 1;
  if (::write(impl.wake_fd, &one, sizeof(one)) < 0) {
    // The acceptor may already be gone; nothing to wake then.
  }
  if (impl.acceptor.joinable()) impl.acceptor.join();
  impl.tcp_listener.Close();
  impl.unix_listener.Close();
  if (!impl.unix_path.empty()) ::unlink(impl.unix_path.c_str());

  std::list<std::unique_ptr<Impl::Connection>> connections;
  {
    absl::MutexLock lock(&impl.mutex);
    for (auto& connection : impl.connections) {
      if (!connection->busy) connection->socket.Shutdown();
    }
    auto all_finished = [&impl]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(impl.mutex) {
      for (const auto& connection : impl.connections) {
        if (!connection->finished) return false;
      }
      return true;
    };
    impl.mutex.AwaitWithTimeout(absl::Condition(&all_finished), grace);
    for (auto& connection : impl.connections) connection->socket.Shutdown();
    connections = std::move(impl.connections);
    impl.connections.clear();
  }
  for (auto& connection : connections) connection->thread.join();
}

}  // namespace h5depot::server
