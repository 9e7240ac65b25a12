#include <sched.h>
#include <sys/mman.h>
#include <sys/uio.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <new>
#include <optional>
#include <utility>

#include "absl/strings/str_cat.h"
#include "client/src/image_transport_internal.h"
#include "client/src/lane_client_internal.h"
#include "client/src/mapped_image_internal.h"
#include "client/src/server_target_internal.h"
#include "h5depot/internal/checksum.h"
#include "h5depot/internal/fork_generation.h"
#include "h5depot/internal/huge_pages.h"
#include "h5depot/internal/image_id.h"
#include "h5depot/internal/lane_protocol.h"
#include "h5depot/internal/memfd.h"

namespace h5depot::internal {
namespace {

using lane::LaneReader;
using lane::LaneSocket;

// Image bytes are checksummed and sent, or received and checksummed, this
// much at a time, so that the checksum reads them while they are in cache.
constexpr size_t kPieceBytes = size_t{256} << 10;

// An image id as a request header frames it; the id rules allow far less.
absl::Status CheckFramable(std::string_view image_id) {
  if (image_id.size() > UINT16_MAX) {
    return absl::InvalidArgumentError("image id too long");
  }
  return absl::OkStatus();
}

// A streamed fetch of a mapped image hands on this much at a time.
constexpr size_t kMappedWindowBytes = size_t{4} << 20;

// A connection idle for less than this is used without first checking that
// the server has not closed it.
constexpr std::chrono::milliseconds kTrustedIdle{50};

// Idle connections kept per lane; more are closed when given back.
constexpr size_t kMaxIdleConnections = 64;

ImageInfo ToImageInfo(const lane::Response& response,
                      std::string_view image_id) {
  return internal::ToImageInfo(image_id, response.size, response.generation,
                               response.checksum, response.created_unix_micros,
                               response.expires_unix_micros);
}

// A push's answer: the info of the image published under `image_id`, or,
// for a stream append, of the step the server named in `message`.
absl::StatusOr<ImageInfo> PublishedInfo(const lane::Response& response,
                                        std::string_view image_id,
                                        bool stream_append,
                                        std::string_view message) {
  if (!stream_append) return ToImageInfo(response, image_id);
  std::string_view stream;
  uint64_t step = 0;
  if (!ParseStreamStepId(message, &stream, &step) || stream != image_id) {
    return absl::InternalError(
        absl::StrCat("the data lane answered a stream append with '",
                     std::string(message), "', not a step of the stream"));
  }
  return ToImageInfo(response, message);
}

// The CPU the calling thread runs on, for a request on `connection` to
// say; none if the server did not agree to hear it.
std::optional<uint32_t> ClientCpu(const DataLane::Connection& connection) {
  if (!connection.says_cpu) return std::nullopt;
  const int cpu = sched_getcpu();
  if (cpu < 0) return std::nullopt;
  return static_cast<uint32_t>(cpu);
}

// A fetch with FetchOptions::only_if_mapped that cannot map.
absl::Status NotMappable(std::string_view image_id) {
  return absl::FailedPreconditionError(
      absl::StrCat("image '", std::string(image_id),
                   "' cannot be mapped from the server's memory here"));
}

bool StartsWith(std::string_view text, std::string_view prefix) {
  return text.substr(0, prefix.size()) == prefix;
}

}  // namespace

absl::StatusOr<lane::Response> DataLane::Connection::ReadResponse(
    absl::Time deadline, absl::Status* refusal, std::string* message_out) {
  uint8_t header[lane::kResponseHeaderBytes];
  if (absl::Status status = reader_.Read(header, sizeof(header), deadline);
      !status.ok()) {
    return status;
  }
  lane::Response response;
  if (absl::Status status = lane::DecodeResponse(header, &response);
      !status.ok()) {
    return absl::InternalError(std::string(status.message()));
  }
  std::string message(response.message_bytes, '\0');
  if (absl::Status status =
          reader_.Read(message.data(), message.size(), deadline);
      !status.ok()) {
    return status;
  }
  *refusal = absl::Status(response.code, message);
  if (message_out != nullptr) *message_out = std::move(message);
  return response;
}

std::shared_ptr<DataLane> DataLane::ForServer(std::string_view target,
                                              uint32_t tcp_port,
                                              std::string_view unix_path,
                                              LaneCredentials credentials) {
  for (std::string_view scheme : {"unix://", "unix:"}) {
    if (!StartsWith(target, scheme)) continue;
    if (unix_path.empty()) return nullptr;
    // A relative path means the server's working directory; the client
    // found the server's socket by its own path, and the lane is beside it.
    std::string path(unix_path);
    if (!StartsWith(path, "/")) {
      path = absl::StrCat(std::string(target.substr(scheme.size())), ".data");
    }
    std::shared_ptr<DataLane> lane(
        new DataLane("", 0, std::move(path), std::move(credentials)));
    lane->self_ = lane;
    return lane;
  }
  if (tcp_port == 0) return nullptr;
  std::string host = TargetHost(target);
  if (host.empty()) return nullptr;
  std::shared_ptr<DataLane> lane(new DataLane(
      std::move(host), static_cast<int>(tcp_port), "", std::move(credentials)));
  lane->self_ = lane;
  return lane;
}

DataLane::DataLane(std::string host, int port, std::string unix_path,
                   LaneCredentials credentials)
    : host_(std::move(host)),
      port_(port),
      unix_path_(std::move(unix_path)),
      address_(host_.empty() ? absl::StrCat("unix:", unix_path_)
                             : absl::StrCat(host_, ":", port_)),
      credentials_(std::move(credentials)) {}

DataLane::~DataLane() = default;

absl::StatusOr<std::unique_ptr<DataLane::Connection>> DataLane::Connect(
    absl::Time deadline) {
  while (true) {
    std::unique_ptr<Connection> connection;
    {
      MutexLock lock(&mutex_);
      if (idle_.empty()) break;
      connection = std::move(idle_.back());
      idle_.pop_back();
    }
    // One the server closed meanwhile (it restarted, it stopped idle
    // connections on shutdown, or the connection was idle longer than its
    // --lane-idle-timeout, minutes by default) is dropped, not used.
    // Back-to-back calls skip the check, a system call each: the server
    // closes a connection so soon after its last request only when it
    // stops, and a call that finds it closed is made again on a new one.
    // Checked and closed outside the lock.
    if (std::chrono::steady_clock::now() - connection->idle_since <
            kTrustedIdle ||
        !connection->socket().PeerHungUp()) {
      connection->reused = true;
      return connection;
    }
  }
  return ConnectNew(deadline);
}

absl::StatusOr<std::unique_ptr<DataLane::Connection>> DataLane::ConnectNew(
    absl::Time deadline, bool ask_identity) {
  absl::StatusOr<std::unique_ptr<Connection>> connection =
      Dial(deadline, ask_identity);
  if (!connection.ok()) return connection;
  if (absl::Status status = AwaitGreeting(**connection, deadline);
      !status.ok()) {
    return status;
  }
  return connection;
}

absl::StatusOr<std::unique_ptr<DataLane::Connection>> DataLane::Dial(
    absl::Time deadline, bool ask_identity) {
  absl::StatusOr<LaneSocket> socket =
      host_.empty() ? lane::ConnectUnix(unix_path_, deadline)
                    : lane::ConnectTcp(host_, port_, deadline);
  if (!socket.ok()) return absl::UnavailableError(socket.status().message());
  if (!host_.empty() && credentials_.tls != nullptr) {
    if (absl::Status status =
            socket->StartTls(*credentials_.tls, host_, deadline);
        !status.ok()) {
      return absl::UnavailableError(absl::StrCat(
          "data lane at ", address_, ": ", std::string(status.message())));
    }
  }
  auto connection = std::make_unique<Connection>(*std::move(socket));
  uint16_t offered = lane::kFeatureClientCpu | lane::kFeatureRead |
                     lane::kFeaturePin | lane::kFeatureStreams;
  if (ask_identity) offered |= lane::kFeatureIdentity;
  if (!credentials_.token.empty()) offered |= lane::kFeatureToken;
  // Descriptors pass only over a Unix socket; each is received straight
  // into this process's table, so it must accept them before the hello.
  if (host_.empty() && credentials_.share_memory) {
    offered |= lane::kFeatureDescriptors | lane::kFeatureStepBuffers;
    connection->socket().AcceptDescriptors();
  }
  connection->offered = offered;
  uint8_t hello[lane::kHelloBytes];
  lane::EncodeHello(hello, offered);
  if (absl::Status status =
          connection->socket().Send(hello, sizeof(hello), deadline);
      !status.ok()) {
    return absl::UnavailableError(absl::StrCat("data lane at ", address_, ": ",
                                               std::string(status.message())));
  }
  return connection;
}

absl::Status DataLane::AwaitGreeting(Connection& connection,
                                     absl::Time deadline) {
  uint8_t hello[lane::kHelloBytes];
  absl::Status status =
      connection.reader().Read(hello, sizeof(hello), deadline);
  uint16_t agreed = 0;
  if (status.ok()) status = lane::DecodeHello(hello, &agreed);
  // A server agrees to nothing it was not offered; a misbehaving one is
  // held to that all the same.
  agreed &= connection.offered;
  connection.says_cpu = (agreed & lane::kFeatureClientCpu) != 0;
  connection.reads = (agreed & lane::kFeatureRead) != 0;
  connection.pins = (agreed & lane::kFeaturePin) != 0;
  connection.streams = (agreed & lane::kFeatureStreams) != 0;
  connection.step_buffers = (agreed & lane::kFeatureStepBuffers) != 0;
  if ((agreed & lane::kFeatureDescriptors) != 0) {
    connection.shares_memory = true;
    connection.leases = std::make_shared<LeaseLedger>();
  }
  // A server that does not take the token up has no use for one.
  const std::string& token = credentials_.token;
  if (status.ok() && (agreed & lane::kFeatureToken) != 0) {
    uint8_t header[lane::kTokenHeaderBytes];
    lane::EncodeTokenHeader(static_cast<uint16_t>(token.size()), header);
    iovec parts[] = {{header, sizeof(header)},
                     {const_cast<char*>(token.data()), token.size()}};
    status = connection.socket().SendAll(parts, 2, deadline);
  }
  if (status.ok() && (agreed & lane::kFeatureIdentity) != 0) {
    uint8_t identity[lane::kIdentityBytes];
    status = connection.reader().Read(identity, sizeof(identity), deadline);
    if (status.ok()) {
      connection.identity.emplace();
      status = lane::DecodeIdentity(identity, &*connection.identity);
    }
  }
  if (!status.ok()) {
    return absl::UnavailableError(absl::StrCat("data lane at ", address_, ": ",
                                               std::string(status.message())));
  }
  return absl::OkStatus();
}

std::unique_ptr<DataLane::Connection> DataLane::DialForReads(
    absl::Time deadline) {
  if (!host_.empty() && credentials_.tls != nullptr) return nullptr;
  {
    MutexLock lock(&mutex_);
    if (!idle_.empty()) return nullptr;
  }
  absl::StatusOr<std::unique_ptr<Connection>> dialled =
      Dial(deadline, /*ask_identity=*/false);
  return dialled.ok() ? *std::move(dialled) : nullptr;
}

void DataLane::PoolDialled(std::unique_ptr<Connection> dialled,
                           absl::Time deadline) {
  if (dialled == nullptr || !AwaitGreeting(*dialled, deadline).ok()) return;
  dialled->idle_since = std::chrono::steady_clock::now();
  MutexLock lock(&mutex_);
  idle_.push_back(std::move(dialled));
}

void DataLane::GiveBack(std::unique_ptr<Connection> connection) {
  std::shared_ptr<LeaseLedger> leases = connection->leases;
  bool holds_leases = false;
  if (leases != nullptr) {
    if (!SendDueReleases(*connection)) return;  // broken: the leases end
    MutexLock lock(&leases->mutex);
    holds_leases = leases->held > 0;
  }
  connection->idle_since = std::chrono::steady_clock::now();
  {
    MutexLock lock(&mutex_);
    if (idle_.size() < kMaxIdleConnections || holds_leases) {
      idle_.push_back(std::move(connection));
    }
  }
  if (leases == nullptr) return;
  // A buffer unmapped while this call held the connection may have found
  // it out of the pool: its RELEASE is sent now.
  bool due = false;
  {
    MutexLock lock(&leases->mutex);
    due = !leases->due.empty();
  }
  if (due) FlushReleases(leases);
}

void DataLane::FlushReleases(const std::shared_ptr<LeaseLedger>& leases) {
  std::unique_ptr<Connection> connection;
  {
    MutexLock lock(&mutex_);
    for (auto it = idle_.begin(); it != idle_.end(); ++it) {
      if ((*it)->leases != leases) continue;
      connection = std::move(*it);
      idle_.erase(it);
      break;
    }
  }
  // Not idle: the call using it sends them as it gives it back.
  if (connection != nullptr) GiveBack(std::move(connection));
}

bool DataLane::SendDueReleases(Connection& connection) {
  std::vector<uint64_t> due;
  {
    MutexLock lock(&connection.leases->mutex);
    due.swap(connection.leases->due);
    connection.leases->held -= due.size();
  }
  if (due.empty()) return true;
  std::vector<uint8_t> messages(due.size() * lane::kRequestHeaderBytes);
  for (size_t i = 0; i < due.size(); ++i) {
    lane::RequestHeader release;
    release.op = lane::Op::kRelease;
    release.size = due[i];
    lane::EncodeRequestHeader(release,
                              messages.data() + i * lane::kRequestHeaderBytes);
  }
  // Small, into a socket the server reads: a stall means it is gone.
  return connection.socket()
      .Send(messages.data(), messages.size(), absl::Now() + absl::Seconds(5))
      .ok();
}

namespace {

// Whether a call that failed with `status` before any answer came is to be
// made again on a new connection: when its connection came from the pool
// and the server had closed it (it restarted, say). A server closes a
// connection with a request in it only after answering it, or when it dies
// with its store, so nothing can have been published.
bool RetryOnNewConnection(const absl::Status& status, bool unanswered,
                          bool reused) {
  return reused && unanswered && absl::IsUnavailable(status);
}

}  // namespace

absl::StatusOr<ImageInfo> DataLane::Push(std::unique_ptr<Connection> connection,
                                         std::string_view image_id,
                                         const uint8_t* data, size_t size,
                                         const PushOptions& options,
                                         absl::Time deadline,
                                         bool stream_append) {
  if (stream_append && !connection->streams) {
    GiveBack(std::move(connection));
    return absl::UnimplementedError(
        "the data lane's server does not take stream appends");
  }
  const bool reused = connection->reused;
  bool unanswered = false;
  absl::StatusOr<ImageInfo> pushed =
      PushOnce(std::move(connection), image_id, data, size, options, deadline,
               stream_append, &unanswered);
  if (pushed.ok() ||
      !RetryOnNewConnection(pushed.status(), unanswered, reused)) {
    return pushed;
  }
  absl::StatusOr<std::unique_ptr<Connection>> fresh = ConnectNew(deadline);
  if (!fresh.ok()) return pushed;
  if (stream_append && !(*fresh)->streams) return pushed;
  return PushOnce(*std::move(fresh), image_id, data, size, options, deadline,
                  stream_append, &unanswered);
}

absl::StatusOr<ImageInfo> DataLane::PushOnce(
    std::unique_ptr<Connection> connection, std::string_view image_id,
    const uint8_t* data, size_t size, const PushOptions& options,
    absl::Time deadline, bool stream_append, bool* unanswered) {
  *unanswered = false;
  if (absl::Status status = CheckFramable(image_id); !status.ok()) {
    return status;
  }
  lane::RequestHeader request;
  request.op = lane::Op::kPut;
  request.image_id_bytes = static_cast<uint16_t>(image_id.size());
  request.size = size;
  request.if_generation_match = options.if_generation_match;
  request.ttl_ms = ToMillis(options.ttl);
  request.replica_generation = options.replica_generation;
  request.stream_append = stream_append;
  request.client_cpu = ClientCpu(*connection);
  uint8_t header[lane::kRequestHeaderBytes];
  lane::EncodeRequestHeader(request, header);
  LaneSocket& socket = connection->socket();
  absl::Status refusal;

  if (size <= lane::kEagerPutBytes) {
    // Header, bytes and checksum leave in one system call.
    uint8_t trailer[8];
    lane::EncodeU64(Checksum(data, size), trailer);
    iovec iov[4] = {{header, sizeof(header)},
                    {const_cast<char*>(image_id.data()), image_id.size()},
                    {const_cast<uint8_t*>(data), size},
                    {trailer, sizeof(trailer)}};
    if (absl::Status status = socket.SendAll(iov, 4, deadline); !status.ok()) {
      *unanswered = true;
      return status;
    }
  } else {
    iovec iov[2] = {{header, sizeof(header)},
                    {const_cast<char*>(image_id.data()), image_id.size()}};
    if (absl::Status status = socket.SendAll(iov, 2, deadline); !status.ok()) {
      *unanswered = true;
      return status;
    }
    // The server refuses here, before any data, or says to go ahead.
    absl::StatusOr<lane::Response> go_ahead =
        connection->ReadResponse(deadline, &refusal);
    if (!go_ahead.ok()) {
      *unanswered = true;
      return go_ahead.status();
    }
    if (go_ahead->kind != lane::ResponseKind::kContinue) {
      if (refusal.ok()) return absl::InternalError("unexpected lane response");
      GiveBack(std::move(connection));
      return refusal;
    }
    StreamingChecksum checksum(size);
    for (size_t sent = 0; sent < size;) {
      const size_t n = std::min(kPieceBytes, size - sent);
      checksum.Update(data + sent, n);
      if (absl::Status status = socket.Send(data + sent, n, deadline);
          !status.ok()) {
        return status;
      }
      sent += n;
      if (options.progress) options.progress(sent, size);
    }
    uint8_t trailer[8];
    lane::EncodeU64(checksum.Digest(), trailer);
    if (absl::Status status = socket.Send(trailer, sizeof(trailer), deadline);
        !status.ok()) {
      return status;
    }
  }
  std::string message;
  absl::StatusOr<lane::Response> response =
      connection->ReadResponse(deadline, &refusal, &message);
  if (!response.ok()) {
    // Sent in one go, the push's first answer is its last. (A pushed image
    // is the same image pushed twice; an append would be two steps.)
    *unanswered = size <= lane::kEagerPutBytes && !stream_append;
    return response.status();
  }
  if (response->kind != lane::ResponseKind::kFinal) {
    return absl::InternalError("unexpected lane response");
  }
  GiveBack(std::move(connection));
  if (!refusal.ok()) return refusal;
  if (size <= lane::kEagerPutBytes) ReportSentInOne(options.progress, size);
  return PublishedInfo(*response, image_id, stream_append, message);
}

absl::StatusOr<FetchedImage> DataLane::Fetch(
    std::unique_ptr<Connection> connection, std::string_view image_id,
    const FetchOptions& options, const CallDeadline& deadline) {
  const bool reused = connection->reused;
  bool unanswered = false;
  bool take_bytes = false;
  absl::StatusOr<FetchedImage> fetched =
      FetchOnce(std::move(connection), image_id, options, deadline,
                /*accept_descriptor=*/true, &unanswered, &take_bytes);
  if (take_bytes && options.only_if_mapped) return NotMappable(image_id);
  if (take_bytes) {
    // The image came as a memfd this process could not use: the bytes.
    absl::StatusOr<std::unique_ptr<Connection>> again = Connect(deadline.reply);
    if (!again.ok()) return fetched;
    return FetchOnce(*std::move(again), image_id, options, deadline,
                     /*accept_descriptor=*/false, &unanswered, &take_bytes);
  }
  if (fetched.ok() ||
      !RetryOnNewConnection(fetched.status(), unanswered, reused)) {
    return fetched;
  }
  absl::StatusOr<std::unique_ptr<Connection>> fresh =
      ConnectNew(deadline.reply);
  if (!fresh.ok()) return fetched;
  return FetchOnce(*std::move(fresh), image_id, options, deadline,
                   /*accept_descriptor=*/true, &unanswered, &take_bytes);
}

absl::StatusOr<ImageInfo> DataLane::FetchTo(
    std::unique_ptr<Connection> connection, std::string_view image_id,
    const FetchOptions& options, const CallDeadline& deadline,
    const FetchSink& sink) {
  const bool reused = connection->reused;
  bool unanswered = false;
  bool take_bytes = false;
  absl::StatusOr<FetchedImage> fetched =
      FetchOnce(std::move(connection), image_id, options, deadline,
                /*accept_descriptor=*/true, &unanswered, &take_bytes, &sink);
  if (take_bytes) {
    // The image came as a memfd this process could not use (nothing went
    // to `sink`): the bytes.
    absl::StatusOr<std::unique_ptr<Connection>> again = Connect(deadline.reply);
    if (!again.ok()) return fetched.status();
    fetched =
        FetchOnce(*std::move(again), image_id, options, deadline,
                  /*accept_descriptor=*/false, &unanswered, &take_bytes, &sink);
  }
  // Nothing went to `sink` before an answer came.
  if (!fetched.ok() &&
      RetryOnNewConnection(fetched.status(), unanswered, reused)) {
    absl::StatusOr<std::unique_ptr<Connection>> fresh =
        ConnectNew(deadline.reply);
    if (fresh.ok()) {
      fetched = FetchOnce(*std::move(fresh), image_id, options, deadline,
                          /*accept_descriptor=*/false, &unanswered, &take_bytes,
                          &sink);
    }
  }
  if (!fetched.ok()) return fetched.status();
  return std::move(fetched->info);
}

absl::StatusOr<FetchedImage> DataLane::FetchOnce(
    std::unique_ptr<Connection> connection, std::string_view image_id,
    const FetchOptions& options, const CallDeadline& deadline,
    bool accept_descriptor, bool* unanswered, bool* take_bytes,
    const FetchSink* sink) {
  *unanswered = false;
  *take_bytes = false;
  if (absl::Status status = CheckFramable(image_id); !status.ok()) {
    return status;
  }
  lane::RequestHeader request;
  request.op = lane::Op::kGet;
  request.image_id_bytes = static_cast<uint16_t>(image_id.size());
  request.wait_ms = ToMillis(options.wait);
  request.newer_than = options.newer_than;
  request.client_cpu = ClientCpu(*connection);
  request.accepts_descriptor = accept_descriptor && connection->shares_memory;
  if (options.only_if_mapped && !request.accepts_descriptor) {
    GiveBack(std::move(connection));
    return NotMappable(image_id);
  }
  request.descriptor_only = options.only_if_mapped;
  uint8_t header[lane::kRequestHeaderBytes];
  lane::EncodeRequestHeader(request, header);
  iovec iov[2] = {{header, sizeof(header)},
                  {const_cast<char*>(image_id.data()), image_id.size()}};
  if (absl::Status status =
          connection->socket().SendAll(iov, 2, deadline.reply);
      !status.ok()) {
    *unanswered = true;
    return status;
  }
  absl::Status refusal;
  absl::StatusOr<lane::Response> response =
      connection->ReadResponse(deadline.reply, &refusal);
  if (!response.ok()) {
    *unanswered = true;  // a fetch changes nothing: asking again is safe
    return response.status();
  }
  if (response->kind != lane::ResponseKind::kFinal) {
    return absl::InternalError("unexpected lane response");
  }
  if (!refusal.ok()) {
    GiveBack(std::move(connection));
    return refusal;
  }
  if (response->with_descriptor) {
    if (!request.accepts_descriptor) {
      return absl::InternalError("a memfd the client did not ask for");
    }
    if (sink != nullptr) {
      return SinkMapped(std::move(connection), *response, image_id, options,
                        sink->write, take_bytes);
    }
    return ReceiveMapped(std::move(connection), *response, image_id, options,
                         take_bytes);
  }
  FetchedImage fetched;
  fetched.info = ToImageInfo(*response, image_id);
  if (sink != nullptr && sink->pipe >= 0 && connection->socket().can_splice()) {
    return SpliceToPipe(std::move(connection), std::move(fetched), options,
                        deadline, sink->pipe);
  }
  // The bytes go into a buffer of the image's size, or through one of a
  // piece's to `sink`. Without a buffer the bytes on their way cannot be
  // read past cheaply: the connection is dropped with them, as it is when
  // `sink` fails.
  std::unique_ptr<uint8_t[]> piece;
  uint8_t* out = nullptr;
  if (sink != nullptr) {
    piece.reset(new (std::nothrow) uint8_t[static_cast<size_t>(
        std::min<uint64_t>(kPieceBytes, fetched.info.size))]);
    if (piece == nullptr) {
      return absl::ResourceExhaustedError("no memory for a piece of the image");
    }
  } else {
    absl::StatusOr<ImageBuffer> buffer =
        ImageBuffer::Allocate(fetched.info.size);
    if (!buffer.ok()) return buffer.status();
    fetched.buffer = *std::move(buffer);
    AdviseHugePages(fetched.buffer.data(), fetched.buffer.size());
    out = static_cast<uint8_t*>(fetched.buffer.data());
  }
  const absl::Time bytes_deadline = deadline.Whole(fetched.info.size);
  StreamingChecksum checksum(fetched.info.size);
  for (uint64_t received = 0; received < fetched.info.size;) {
    const size_t n = static_cast<size_t>(
        std::min<uint64_t>(kPieceBytes, fetched.info.size - received));
    uint8_t* const at = sink != nullptr ? piece.get() : out + received;
    if (absl::Status status = connection->reader().Read(at, n, bytes_deadline);
        !status.ok()) {
      return status;
    }
    checksum.Update(at, n);
    if (sink != nullptr) {
      if (absl::Status taken = sink->write(at, n); !taken.ok()) return taken;
    }
    received += n;
    if (options.progress) options.progress(received, fetched.info.size);
  }
  GiveBack(std::move(connection));
  if (absl::Status intact =
          CheckReceivedChecksum(checksum.Digest(), fetched.info.checksum);
      !intact.ok()) {
    return intact;
  }
  return fetched;
}

absl::StatusOr<LeasedStep> DataLane::Next(
    std::unique_ptr<Connection> connection, std::string_view stream,
    std::string_view group, std::string_view consumer,
    const NextOptions& options, absl::Time deadline) {
  if (!connection->streams) {
    GiveBack(std::move(connection));
    return absl::UnimplementedError(
        "the data lane's server does not take NEXT requests");
  }
  if (absl::Status status = CheckFramable(stream); !status.ok()) {
    GiveBack(std::move(connection));
    return status;
  }
  lane::NextBody body;
  switch (options.start) {
    case NextOptions::Start::kOldest:
      body.start = lane::NextBody::Start::kOldest;
      break;
    case NextOptions::Start::kLatest:
      body.start = lane::NextBody::Start::kLatest;
      break;
    case NextOptions::Start::kStep:
      body.start = lane::NextBody::Start::kStep;
      break;
  }
  body.start_step = options.start_step;
  body.lease_ms = ToMillis(options.lease);
  body.ack_step = options.ack_step;
  body.group = std::string(group);
  body.consumer = std::string(consumer);
  if (body.group.empty() || body.group.size() > lane::kMaxStreamNameBytes ||
      body.consumer.empty() ||
      body.consumer.size() > lane::kMaxStreamNameBytes) {
    GiveBack(std::move(connection));
    return absl::InvalidArgumentError(
        absl::StrCat("group and consumer names must be 1 to ",
                     lane::kMaxStreamNameBytes, " bytes"));
  }
  const std::string encoded_body = lane::EncodeNextBody(body);
  lane::RequestHeader request;
  request.op = lane::Op::kNext;
  request.image_id_bytes = static_cast<uint16_t>(stream.size());
  request.size = encoded_body.size();
  request.wait_ms = ToMillis(options.wait);
  request.client_cpu = ClientCpu(*connection);
  uint8_t header[lane::kRequestHeaderBytes];
  lane::EncodeRequestHeader(request, header);
  iovec iov[3] = {
      {header, sizeof(header)},
      {const_cast<char*>(stream.data()), stream.size()},
      {const_cast<char*>(encoded_body.data()), encoded_body.size()}};
  if (absl::Status status = connection->socket().SendAll(iov, 3, deadline);
      !status.ok()) {
    return status;
  }
  absl::Status refusal;
  std::string step_id;
  absl::StatusOr<lane::Response> response =
      connection->ReadResponse(deadline, &refusal, &step_id);
  if (!response.ok()) return response.status();
  if (response->kind != lane::ResponseKind::kFinal ||
      response->with_descriptor) {
    return absl::InternalError("unexpected lane response");
  }
  if (!refusal.ok()) {
    GiveBack(std::move(connection));
    return refusal;
  }
  uint8_t raw_trailer[lane::kStepTrailerBytes];
  if (absl::Status status =
          connection->reader().Read(raw_trailer, sizeof(raw_trailer), deadline);
      !status.ok()) {
    return status;
  }
  lane::StepTrailer trailer;
  if (absl::Status status = lane::DecodeStepTrailer(raw_trailer, &trailer);
      !status.ok()) {
    return absl::InternalError(std::string(status.message()));
  }
  std::string_view named_stream;
  uint64_t named_step = 0;
  if (!ParseStreamStepId(step_id, &named_stream, &named_step) ||
      named_stream != stream || named_step != trailer.step) {
    return absl::InternalError(
        absl::StrCat("the data lane answered a NEXT with step ", trailer.step,
                     " as '", step_id, "'"));
  }
  LeasedStep leased;
  leased.step = trailer.step;
  leased.info = ToImageInfo(*response, step_id);
  for (uint32_t i = 0; i < trailer.lost_ranges; ++i) {
    uint8_t range[16];
    if (absl::Status status =
            connection->reader().Read(range, sizeof(range), deadline);
        !status.ok()) {
      return status;
    }
    leased.lost.push_back({lane::DecodeU64(range), lane::DecodeU64(range + 8)});
  }
  if (trailer.with_bytes) {
    absl::StatusOr<ImageBuffer> buffer =
        ImageBuffer::Allocate(leased.info.size);
    if (!buffer.ok()) return buffer.status();
    const absl::Time bytes_deadline =
        CallDeadline::At(deadline).Whole(leased.info.size);
    if (absl::Status status = connection->reader().Read(
            buffer->data(), buffer->size(), bytes_deadline);
        !status.ok()) {
      return status;
    }
    if (absl::Status intact = CheckReceivedChecksum(
            Checksum(buffer->data(), buffer->size()), leased.info.checksum);
        !intact.ok()) {
      GiveBack(std::move(connection));
      return intact;
    }
    leased.bytes = *std::move(buffer);
  }
  GiveBack(std::move(connection));
  return leased;
}

absl::StatusOr<Mapping> DataLane::MapLeased(
    std::unique_ptr<Connection>& connection, const lane::Response& response,
    Mapping::Access access, bool* take_bytes,
    std::shared_ptr<const Mapping>* step_buffer) {
  // The server holds a lease from here on, whatever this end makes of it.
  std::shared_ptr<LeaseLedger> leases = connection->leases;
  {
    MutexLock lock(&leases->mutex);
    ++leases->held;
  }
  UniqueFd memfd(connection->socket().TakeDescriptor());
  absl::Status unusable;
  absl::StatusOr<Mapping> mapping = absl::UnknownError("");
  if (!memfd) {
    unusable = connection->socket().TakeLostDescriptors()
                   ? absl::ResourceExhaustedError("out of descriptors")
                   : absl::InternalError("a memfd answer without its memfd");
  } else {
    // A writer's step buffer is not sealed against writes (its writer
    // fills it again once every holder let go): only read here.
    const bool writers = !IsWriteSealed(memfd.get());
    absl::StatusOr<uint64_t> length = CheckSealedImage(
        memfd.get(), writers ? kSealsOfStepBuffer : kSealsFromServer,
        response.size);
    if (!length.ok()) {
      unusable = length.status();
    } else if (writers && step_buffer != nullptr) {
      absl::StatusOr<std::shared_ptr<const Mapping>> kept =
          step_mappings_.Map(memfd.get(), *length);
      if (kept.ok()) {
        *step_buffer = *std::move(kept);
        mapping = Mapping();
      } else {
        unusable = kept.status();
      }
    } else {
      mapping = Mapping::Map(memfd.get(), response.size,
                             writers ? Mapping::Access::kReadOnly : access);
      if (!mapping.ok()) unusable = mapping.status();
    }
  }
  if (!unusable.ok()) {
    {
      MutexLock lock(&leases->mutex);
      leases->due.push_back(response.generation);
    }
    GiveBack(std::move(connection));
    *take_bytes = true;
    return absl::UnavailableError(absl::StrCat(
        "cannot map the image's memfd: ", std::string(unusable.message())));
  }
  return mapping;
}

absl::StatusOr<FetchedImage> DataLane::ReceiveMapped(
    std::unique_ptr<Connection> connection, const lane::Response& response,
    std::string_view image_id, const FetchOptions& options, bool* take_bytes) {
  // Copy-on-write: the buffer reads the server's pages, and a write makes a
  // private copy of the page it lands on. A writer's step buffer instead
  // maps read-only, that mapping kept for the buffer's next step.
  std::shared_ptr<const Mapping> step_buffer;
  absl::StatusOr<Mapping> mapping =
      MapLeased(connection, response, Mapping::Access::kCopyOnWrite, take_bytes,
                &step_buffer);
  if (!mapping.ok()) return mapping.status();
  std::shared_ptr<LeaseLedger> leases = connection->leases;
  const uint64_t generation = response.generation;
  FetchedImage fetched;
  fetched.info = ToImageInfo(response, image_id);
  auto release = [leases, lane = self_, generation,
                  forks = ForkGeneration()]() {
    // A forked child's copy of the buffer: the lease and the
    // connection are the parent's.
    if (ForkGeneration() != forks) return;
    {
      MutexLock lock(&leases->mutex);
      leases->due.push_back(generation);
    }
    if (std::shared_ptr<DataLane> alive = lane.lock()) {
      alive->FlushReleases(leases);
    }
  };
  fetched.buffer =
      step_buffer != nullptr
          ? MappedImage::WrapReadOnly(std::move(step_buffer), response.size,
                                      std::move(release))
          : MappedImage::Wrap(*std::move(mapping), response.size,
                              std::move(release));
  GiveBack(std::move(connection));
  ReportSentInOne(options.progress, response.size);
  return fetched;
}

absl::StatusOr<FetchedImage> DataLane::SpliceToPipe(
    std::unique_ptr<Connection> connection, FetchedImage fetched,
    const FetchOptions& options, const CallDeadline& deadline, int pipe) {
  const uint64_t size = fetched.info.size;
  StreamingChecksum checksum(size);
  uint64_t moved = 0;
  if (absl::Status status =
          connection->reader().MoveToPipe(pipe, size, deadline.Whole(size),
                                          [&](const uint8_t* data, size_t n) {
                                            checksum.Update(data, n);
                                            moved += n;
                                            if (options.progress)
                                              options.progress(moved, size);
                                          });
      !status.ok()) {
    return status;
  }
  GiveBack(std::move(connection));
  if (absl::Status intact =
          CheckReceivedChecksum(checksum.Digest(), fetched.info.checksum);
      !intact.ok()) {
    return intact;
  }
  return fetched;
}

absl::StatusOr<FetchedImage> DataLane::SinkMapped(
    std::unique_ptr<Connection> connection, const lane::Response& response,
    std::string_view image_id, const FetchOptions& options,
    const ImageSink& sink, bool* take_bytes) {
  absl::StatusOr<Mapping> mapping =
      MapLeased(connection, response, Mapping::Access::kReadOnly, take_bytes);
  if (!mapping.ok()) return mapping.status();
  // Handed on a window at a time, each let go of once handed on: the
  // process maps only the server's pages it is passing, whatever the size.
  auto* const data = static_cast<uint8_t*>(mapping->data());
  absl::Status status;
  for (uint64_t done = 0; done < response.size && status.ok();) {
    const size_t n = static_cast<size_t>(
        std::min<uint64_t>(kMappedWindowBytes, response.size - done));
    status = sink(data + done, n);
    madvise(data + done, n, MADV_DONTNEED);
    done += n;
    if (status.ok() && options.progress) options.progress(done, response.size);
  }
  *mapping = Mapping();  // unmapped: the lease can go
  {
    MutexLock lock(&connection->leases->mutex);
    connection->leases->due.push_back(response.generation);
  }
  GiveBack(std::move(connection));
  if (!status.ok()) return status;
  FetchedImage fetched;
  fetched.info = ToImageInfo(response, image_id);
  return fetched;
}

absl::StatusOr<ImageInfo> DataLane::PushSealed(
    std::unique_ptr<Connection> connection, std::string_view image_id,
    int memfd, uint64_t size, const PushOptions& options, absl::Time deadline,
    bool stream_append, int release_signal) {
  if (!connection->shares_memory) {
    GiveBack(std::move(connection));
    return absl::UnimplementedError(
        "the data lane connection does not take memfds");
  }
  if (stream_append && !connection->streams) {
    GiveBack(std::move(connection));
    return absl::UnimplementedError(
        "the data lane's server does not take stream appends");
  }
  const bool step_buffer = release_signal >= 0;
  if (step_buffer && (!stream_append || !connection->step_buffers)) {
    GiveBack(std::move(connection));
    return absl::UnimplementedError(
        "the data lane's server does not take step buffers");
  }
  if (absl::Status status = CheckFramable(image_id); !status.ok()) {
    return status;
  }
  lane::RequestHeader request;
  request.op = lane::Op::kPutSealed;
  request.image_id_bytes = static_cast<uint16_t>(image_id.size());
  request.size = size;
  request.if_generation_match = options.if_generation_match;
  request.ttl_ms = ToMillis(options.ttl);
  request.replica_generation = options.replica_generation;
  request.stream_append = stream_append;
  request.step_buffer = step_buffer;
  request.client_cpu = ClientCpu(*connection);
  uint8_t header[lane::kRequestHeaderBytes];
  lane::EncodeRequestHeader(request, header);
  iovec iov[2] = {{header, sizeof(header)},
                  {const_cast<char*>(image_id.data()), image_id.size()}};
  if (absl::Status status = connection->socket().SendAllWithDescriptors(
          iov, 2, memfd, release_signal, deadline);
      !status.ok()) {
    return status;
  }
  absl::Status refusal;
  std::string message;
  absl::StatusOr<lane::Response> response =
      connection->ReadResponse(deadline, &refusal, &message);
  if (!response.ok()) return response.status();
  if (response->kind != lane::ResponseKind::kFinal) {
    return absl::InternalError("unexpected lane response");
  }
  GiveBack(std::move(connection));
  if (!refusal.ok()) return refusal;
  ReportSentInOne(options.progress, size);
  return PublishedInfo(*response, image_id, stream_append, message);
}

absl::StatusOr<ReadResult> DataLane::Read(
    std::unique_ptr<Connection> connection, std::string_view image_id,
    uint64_t generation, uint64_t offset, void* out, size_t length,
    absl::Time deadline) {
  // The socket looks at the deadline only when it would block: a request
  // whose answer comes at once would be served past it.
  if (absl::Now() >= deadline) {
    GiveBack(std::move(connection));
    return absl::DeadlineExceededError("the read's deadline had passed");
  }
  const bool reused = connection->reused;
  bool unanswered = false;
  absl::StatusOr<ReadResult> read =
      ReadOnce(std::move(connection), image_id, generation, offset, out, length,
               deadline, &unanswered);
  if (read.ok() || !RetryOnNewConnection(read.status(), unanswered, reused)) {
    return read;
  }
  absl::StatusOr<std::unique_ptr<Connection>> fresh = ConnectNew(deadline);
  if (!fresh.ok() || !(*fresh)->reads) return read;
  return ReadOnce(*std::move(fresh), image_id, generation, offset, out, length,
                  deadline, &unanswered);
}

absl::StatusOr<ReadResult> DataLane::ReadOnce(
    std::unique_ptr<Connection> connection, std::string_view image_id,
    uint64_t generation, uint64_t offset, void* out, size_t length,
    absl::Time deadline, bool* unanswered) {
  *unanswered = false;
  if (absl::Status status = CheckFramable(image_id); !status.ok()) {
    return status;
  }
  lane::RequestHeader request;
  request.op = lane::Op::kRead;
  request.image_id_bytes = static_cast<uint16_t>(image_id.size());
  request.generation = generation;
  request.offset = offset;
  request.size = length;
  request.client_cpu = ClientCpu(*connection);
  uint8_t header[lane::kRequestHeaderBytes];
  lane::EncodeRequestHeader(request, header);
  iovec iov[2] = {{header, sizeof(header)},
                  {const_cast<char*>(image_id.data()), image_id.size()}};
  if (absl::Status status = connection->socket().SendAll(iov, 2, deadline);
      !status.ok()) {
    *unanswered = true;
    return status;
  }
  absl::Status refusal;
  absl::StatusOr<lane::Response> response =
      connection->ReadResponse(deadline, &refusal);
  if (!response.ok()) {
    *unanswered = true;  // a read changes nothing: asking again is safe
    return response.status();
  }
  if (response->kind != lane::ResponseKind::kFinal) {
    return absl::InternalError("unexpected lane response");
  }
  if (!refusal.ok()) {
    GiveBack(std::move(connection));
    return refusal;
  }
  ReadResult result;
  result.info = ToImageInfo(*response, image_id);
  if (generation != 0 && result.info.generation != generation) {
    return absl::InternalError(absl::StrCat("asked to read generation ",
                                            generation, ", got ",
                                            result.info.generation));
  }
  // What the server's clamp leaves, as the server computes it.
  result.bytes_read = offset >= result.info.size
                          ? 0
                          : static_cast<size_t>(std::min<uint64_t>(
                                length, result.info.size - offset));
  if (absl::Status status =
          connection->reader().Read(out, result.bytes_read, deadline);
      !status.ok()) {
    return status;
  }
  GiveBack(std::move(connection));
  return result;
}

std::shared_ptr<DataLane> DataLane::BesideTarget(std::string_view target,
                                                 LaneCredentials credentials) {
  absl::StatusOr<ServerTarget> parsed = ParseServerTarget(target);
  if (!parsed.ok()) return nullptr;
  if (parsed->kind == ServerTarget::Kind::kUnix) {
    // The same path the server derives (PATH.data), relative or not.
    return ForServer(target, 0, absl::StrCat(parsed->path, ".data"),
                     std::move(credentials));
  }
  if (parsed->kind != ServerTarget::Kind::kHost ||
      !TargetIsOnThisHost(target) || parsed->hosts.size() != 1) {
    return nullptr;
  }
  const uint16_t grpc_port = parsed->hosts.front().port;
  if (grpc_port == 0 || grpc_port == UINT16_MAX) return nullptr;
  return ForServer(target, uint32_t{grpc_port} + 1, "", std::move(credentials));
}

absl::Status DataLane::ConfirmServer(uint16_t grpc_port, absl::Time deadline) {
  absl::StatusOr<std::unique_ptr<Connection>> connection =
      ConnectNew(deadline, /*ask_identity=*/true);
  if (!connection.ok()) return connection.status();
  const std::optional<lane::Identity>& identity = (*connection)->identity;
  if (!identity.has_value()) {
    return absl::FailedPreconditionError(absl::StrCat(
        "the data lane at ", address_, " does not say whose it is"));
  }
  if (grpc_port != 0 && identity->grpc_port != grpc_port) {
    return absl::FailedPreconditionError(absl::StrCat(
        "the data lane at ", address_, " belongs to the server on port ",
        identity->grpc_port, ", not ", grpc_port));
  }
  if (!identity->admitted) {
    return absl::PermissionDeniedError(absl::StrCat(
        "the server at ", address_, " does not admit this client"));
  }
  GiveBack(*std::move(connection));
  return absl::OkStatus();
}

namespace {

// Sends a PIN or UNPIN (`op`) of `generation` of `image_id`, which the
// caller has checked is framable.
absl::Status SendPinRequest(DataLane::Connection& connection, lane::Op op,
                            std::string_view image_id, uint64_t generation,
                            absl::Time deadline) {
  lane::RequestHeader request;
  request.op = op;
  request.image_id_bytes = static_cast<uint16_t>(image_id.size());
  request.generation = generation;
  uint8_t header[lane::kRequestHeaderBytes];
  lane::EncodeRequestHeader(request, header);
  iovec iov[2] = {{header, sizeof(header)},
                  {const_cast<char*>(image_id.data()), image_id.size()}};
  return connection.socket().SendAll(iov, 2, deadline);
}

// A reader whose generation a PIN holds on a lane connection it keeps.
class LanePinnedReader final : public PinnedGenerationReader {
 public:
  LanePinnedReader(std::shared_ptr<DataLane> lane,
                   std::unique_ptr<DataLane::Connection> pin,
                   std::shared_ptr<ImageTransport> reads, ImageInfo info,
                   absl::Duration read_timeout)
      : PinnedGenerationReader(std::move(reads), std::move(info), read_timeout),
        lane_(std::move(lane)),
        pin_(std::move(pin)) {}

  ~LanePinnedReader() override {
    lane_->Unpin(std::move(pin_), info().image_id, info().generation);
  }

 private:
  const std::shared_ptr<DataLane> lane_;
  std::unique_ptr<DataLane::Connection> pin_;
};

}  // namespace

absl::StatusOr<std::unique_ptr<ImageReader>> DataLane::OpenReader(
    std::unique_ptr<Connection> connection, std::string_view image_id,
    uint64_t generation, absl::Time open_deadline, absl::Duration read_timeout,
    std::shared_ptr<ImageTransport> reads) {
  if (!connection->pins || !CheckFramable(image_id).ok()) {
    GiveBack(std::move(connection));
    return absl::UnimplementedError("the data lane does not pin");
  }
  // The reader keeps its connection for its life: one whose memfd leases
  // wait to be released would hold those back until then, so such a one
  // goes back and a new one pins.
  if (connection->leases != nullptr) {
    bool holds_leases = false;
    {
      MutexLock lock(&connection->leases->mutex);
      holds_leases = connection->leases->held > 0;
    }
    if (holds_leases) {
      GiveBack(std::move(connection));
      absl::StatusOr<std::unique_ptr<Connection>> fresh =
          ConnectNew(open_deadline);
      if (!fresh.ok()) return fresh.status();
      connection = *std::move(fresh);
    }
  }
  // The reads need a connection of their own: unless the pool has one,
  // the server answers its greeting while it answers the PIN.
  std::unique_ptr<Connection> for_reads = DialForReads(open_deadline);
  for (int attempt = 0;; ++attempt) {
    const bool reused = connection->reused;
    absl::Status refusal;
    absl::Status sent = SendPinRequest(*connection, lane::Op::kPin, image_id,
                                       generation, open_deadline);
    absl::StatusOr<lane::Response> response =
        sent.ok() ? connection->ReadResponse(open_deadline, &refusal) : sent;
    if (response.ok() && response->kind != lane::ResponseKind::kFinal) {
      return absl::InternalError("unexpected lane response");
    }
    if (response.ok() && !refusal.ok()) {
      GiveBack(std::move(connection));
      return refusal;
    }
    if (response.ok()) {
      PoolDialled(std::move(for_reads), open_deadline);
      return std::unique_ptr<ImageReader>(new LanePinnedReader(
          self_.lock(), std::move(connection), std::move(reads),
          ToImageInfo(*response, image_id), read_timeout));
    }
    // Nothing is pinned by a connection that broke: it ends its pins.
    if (attempt > 0 || !RetryOnNewConnection(response.status(), true, reused)) {
      return absl::UnavailableError(
          absl::StrCat("data lane at ", address_, ": ",
                       std::string(response.status().message())));
    }
    absl::StatusOr<std::unique_ptr<Connection>> fresh =
        ConnectNew(open_deadline);
    if (!fresh.ok()) return fresh.status();
    connection = *std::move(fresh);
  }
}

void DataLane::Unpin(std::unique_ptr<Connection> connection,
                     std::string_view image_id, uint64_t generation) {
  // A server that does not take it at once is stopped or gone: closing the
  // connection ends the pin as surely.
  if (SendPinRequest(*connection, lane::Op::kUnpin, image_id, generation,
                     absl::Now() + kUnpinTimeout)
          .ok()) {
    GiveBack(std::move(connection));
  }
}

}  // namespace h5depot::internal
