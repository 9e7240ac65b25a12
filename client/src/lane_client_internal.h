// The client end of the data lane (h5depot/internal/lane_protocol.h): push,
// fetch and ranged reads on a plain socket to h5depotd, sending straight
// from the caller's bytes and receiving straight into the fetched image's
// buffer or the reader's.
// Client uses it whenever the server offers a lane it can reach, and gRPC
// otherwise. Internal to the client.
#ifndef H5DEPOT_CLIENT_LANE_CLIENT_INTERNAL_H_
#define H5DEPOT_CLIENT_LANE_CLIENT_INTERNAL_H_

#include <chrono>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "client/src/image_transport_internal.h"
#include "client/src/step_buffers_internal.h"
#include "h5depot/client.h"
#include "h5depot/internal/lane_protocol.h"
#include "h5depot/internal/lane_socket.h"
#include "h5depot/internal/memfd.h"
#include "h5depot/internal/mutex.h"
#include "h5depot/internal/tls.h"

namespace h5depot::internal {

// What a client presents on each of its lane connections.
struct LaneCredentials {
  // Its bearer token, sent after the hello (kFeatureToken); empty: none.
  std::string token;
  // Over TCP, the TLS context it handshakes with before the hello,
  // verifying the server's certificate against the gRPC target's host;
  // null: plain. Unix socket connections are always plain.
  std::shared_ptr<const tls::Context> tls;
  // Over a Unix socket, offer to take images as memfds and to push sealed
  // ones (lane::kFeatureDescriptors).
  bool share_memory = true;
};

// The leases a connection holds on images the server handed it as memfds
// (lane_protocol.h, RELEASE), shared with the buffers that map them. A
// buffer, once unmapped, adds its generation to `due`; the connection sends
// those RELEASEs whenever it is out of the pool (DataLane::GiveBack), which
// DataLane::FlushReleases arranges for an idle one.
struct LeaseLedger {
  Mutex mutex;
  std::vector<uint64_t> due ABSL_GUARDED_BY(mutex);
  // Handed to this connection and not released yet: the connection is then
  // kept (never closed for being one too many in the pool), or the server
  // would forget the leases while the memory is still mapped.
  size_t held ABSL_GUARDED_BY(mutex) = 0;
};

// One server's data lane, with a pool of idle connections to it.
// Thread-safe; each call uses a connection of its own.
class DataLane : public std::enable_shared_from_this<DataLane> {
 public:
  // The lane of a server reached at gRPC `target`, given the port and Unix
  // path its GetLimits named; null when none applies (no lane offered, or a
  // target the lane cannot follow, such as an abstract socket). Each
  // connection presents `credentials`.
  static std::shared_ptr<DataLane> ForServer(std::string_view target,
                                             uint32_t tcp_port,
                                             std::string_view unix_path,
                                             LaneCredentials credentials = {});

  // The lane that the server at `target` has on this host where it is found
  // without asking (lane_protocol.h, "The lane's address"): beside a Unix
  // socket, or at the port after that of a TCP target on a loopback
  // address. Null for any other target. Nothing is connected yet: see
  // ConfirmServer.
  static std::shared_ptr<DataLane> BesideTarget(
      std::string_view target, LaneCredentials credentials = {});

  // Connects by `deadline` and checks that the server answering is the one
  // whose gRPC listens on TCP port `grpc_port` (0: any h5depotd, for the
  // lane beside a Unix socket), and that it admits this client's
  // credentials. The connection then goes to the pool. UNAVAILABLE if
  // nothing answers, FAILED_PRECONDITION if something else (another
  // server, another program) does, PERMISSION_DENIED if it does not admit
  // the client (gRPC then says why).
  absl::Status ConfirmServer(uint16_t grpc_port, absl::Time deadline);

  // "host:port" or "unix:/path", for messages.
  const std::string& address() const { return address_; }

  // A connection in step with the server: an idle one from the pool, or a
  // new one (connected and greeted by `deadline`). UNAVAILABLE if the lane
  // cannot be reached: the call may then go over gRPC, nothing was sent.
  class Connection {
   public:
    explicit Connection(lane::LaneSocket socket)
        : socket_(std::move(socket)), reader_(&socket_) {}

    lane::LaneSocket& socket() { return socket_; }
    lane::LaneReader& reader() { return reader_; }

    // Whether the server agreed that requests say the client's CPU
    // (lane::kFeatureClientCpu).
    bool says_cpu = false;

    // Whether the server serves READ requests (lane::kFeatureRead).
    bool reads = false;

    // Whether the server serves PIN and UNPIN (lane::kFeaturePin).
    bool pins = false;

    // Whether the server takes stream appends (lane::kFeatureStreams).
    bool streams = false;
    bool step_buffers = false;  // kFeatureStepBuffers agreed

    // Who answered, when the server said (lane::kFeatureIdentity).
    std::optional<lane::Identity> identity;

    // Taken from the pool rather than made for this call: the server may
    // have closed it since (Push and Fetch then retry on a new one).
    bool reused = false;

    // Whether the server agreed to hand over and take memfds
    // (lane::kFeatureDescriptors); then `leases` is set.
    bool shares_memory = false;
    std::shared_ptr<LeaseLedger> leases;

    // Reads a response header and its message into `*refusal` (OK for a
    // success), and the message, whatever the code, into `*message` if
    // given. Errors are transport or protocol failures, after which the
    // connection is unusable.
    absl::StatusOr<lane::Response> ReadResponse(absl::Time deadline,
                                                absl::Status* refusal,
                                                std::string* message = nullptr);

    // When it was last given back to the pool. (The steady clock is read
    // at a fraction of absl::Now()'s cost, twice per call.)
    std::chrono::steady_clock::time_point idle_since;

    // The features its hello offered (lane::EncodeHello), until the
    // server's answer is read.
    uint16_t offered = 0;

   private:
    lane::LaneSocket socket_;
    lane::LaneReader reader_;
  };
  absl::StatusOr<std::unique_ptr<Connection>> Connect(absl::Time deadline);

  // A new connection, never one from the pool; with `ask_identity`, one
  // whose `identity` the server said (if it could).
  absl::StatusOr<std::unique_ptr<Connection>> ConnectNew(
      absl::Time deadline, bool ask_identity = false);

  // The calls. Each takes a connection from Connect() and gives it back to
  // the pool when the exchange completed (refusals included); after a
  // transport failure the connection is dropped. A pooled connection that
  // turns out closed before the server could act on the request (it
  // restarted) is dropped and the call made again on a new one.
  // With `stream_append`, the image is the next step of the stream
  // `image_id` names, and the info returned is the step's (its id the
  // step's id); UNIMPLEMENTED, with the connection given back and nothing
  // sent, when the server does not take stream appends on the lane. An
  // append is made again only if it did not leave whole: one that did may
  // have been appended.
  absl::StatusOr<ImageInfo> Push(std::unique_ptr<Connection> connection,
                                 std::string_view image_id, const uint8_t* data,
                                 size_t size, const PushOptions& options,
                                 absl::Time deadline, bool stream_append);
  absl::StatusOr<FetchedImage> Fetch(std::unique_ptr<Connection> connection,
                                     std::string_view image_id,
                                     const FetchOptions& options,
                                     const CallDeadline& deadline);
  // Fetch as bytes handed to `sink` a piece at a time (ImageTransport's
  // FetchTo), never as a descriptor.
  absl::StatusOr<ImageInfo> FetchTo(std::unique_ptr<Connection> connection,
                                    std::string_view image_id,
                                    const FetchOptions& options,
                                    const CallDeadline& deadline,
                                    const FetchSink& sink);
  // Reads up to `length` bytes at `offset` of `generation` (0: current) of
  // `image_id` into `out`, clamped at the end of the image, by `deadline`.
  // Only on a connection whose server agreed to READ (`reads`). Refusals
  // carry the server's code (NOT_FOUND for a generation no longer held,
  // UNAUTHENTICATED, PERMISSION_DENIED, ...), as gRPC's Read does.
  // DEADLINE_EXCEEDED if `deadline` has passed, before anything is sent.
  absl::StatusOr<ReadResult> Read(std::unique_ptr<Connection> connection,
                                  std::string_view image_id,
                                  uint64_t generation, uint64_t offset,
                                  void* out, size_t length,
                                  absl::Time deadline);

  // A reader that pins `generation` (0: the current one) of `image_id` by
  // a PIN on `connection`, which it keeps until it is destroyed (it then
  // sends UNPIN and gives the connection back), opened by `open_deadline`.
  // Its reads are Read calls of `reads`, as a gRPC reader's are
  // (GrpcTransport::OpenReader), each ending by the deadline given or by
  // `read_timeout` (plus CallDeadline's transfer allowance). Refusals carry
  // the server's code (NOT_FOUND, PERMISSION_DENIED, ...).
  // UNIMPLEMENTED, with the connection given back and nothing sent, when
  // its server does not serve PIN; UNAVAILABLE when the lane failed before
  // anything was pinned: either way the caller may pin over gRPC instead.
  absl::StatusOr<std::unique_ptr<ImageReader>> OpenReader(
      std::unique_ptr<Connection> connection, std::string_view image_id,
      uint64_t generation, absl::Time open_deadline,
      absl::Duration read_timeout, std::shared_ptr<ImageTransport> reads);

  // Ends the pin of a reader from OpenReader: sends UNPIN on `connection`,
  // which held it, and gives the connection back (or closes it, which ends
  // the pin too, if the send does not go within kUnpinTimeout).
  static constexpr absl::Duration kUnpinTimeout = absl::Seconds(1);
  void Unpin(std::unique_ptr<Connection> connection, std::string_view image_id,
             uint64_t generation);

  // Leases the next step of `stream` to `consumer` of `group` (NEXT), as
  // ImageTransport::NextStep. The step's bytes come with the answer unless
  // the server would rather hand them over as a memfd (the caller then
  // fetches the step by its id). UNIMPLEMENTED, with the connection given
  // back and nothing sent, when its server takes no NEXT. Never made
  // again on another connection: the server may have leased the step.
  absl::StatusOr<LeasedStep> Next(std::unique_ptr<Connection> connection,
                                  std::string_view stream,
                                  std::string_view group,
                                  std::string_view consumer,
                                  const NextOptions& options,
                                  absl::Time deadline);

  // Puts a connection in step back into the pool, for a caller that took
  // one and then made no call on it.
  void GiveBack(std::unique_ptr<Connection> connection);

  // Pushes the image in the first `size` bytes of `memfd`, sealed against
  // every change (kSealsFromClient), by handing the server the descriptor:
  // no byte is sent. UNIMPLEMENTED, with nothing sent, when `connection`
  // cannot (not a Unix socket, or a server that does not take memfds, or,
  // with `stream_append` (as Push's), stream appends, or, with a
  // `release_signal`, step buffers: ImageTransport::PushSealed).
  absl::StatusOr<ImageInfo> PushSealed(std::unique_ptr<Connection> connection,
                                       std::string_view image_id, int memfd,
                                       uint64_t size,
                                       const PushOptions& options,
                                       absl::Time deadline, bool stream_append,
                                       int release_signal = -1);

  // Sends the RELEASEs due on the connection of `leases` now if it is idle
  // in the pool; otherwise the call using it sends them as it gives it back.
  void FlushReleases(const std::shared_ptr<LeaseLedger>& leases);

  ~DataLane();

 private:
  DataLane(std::string host, int port, std::string unix_path,
           LaneCredentials credentials);

  // ConnectNew in two halves, so that a caller can let the server answer
  // a new connection's greeting while it waits for another answer of its
  // own. Dial connects (with TLS if configured) and sends the hello;
  // AwaitGreeting reads the server's answer, sends the token if it asked
  // for one, and reads the identity if `connection` offered to take it.
  absl::StatusOr<std::unique_ptr<Connection>> Dial(absl::Time deadline,
                                                   bool ask_identity);
  absl::Status AwaitGreeting(Connection& connection, absl::Time deadline);

  // For a reader about to be opened, whose reads will need a connection of
  // their own: a connection dialled now, unless the pool has one (null
  // then, and also over TLS, whose handshake is round trips of its own, or
  // when dialling fails: the first read connects, and meets the failure).
  // The caller hands it to PoolDialled after its own round trip. No thread
  // is involved: a fork() never finds one half way through a connect.
  std::unique_ptr<Connection> DialForReads(absl::Time deadline);
  // Completes the greeting of what DialForReads made and pools it; a
  // failure drops it, for the first read to connect anew.
  void PoolDialled(std::unique_ptr<Connection> dialled, absl::Time deadline);

  // One attempt of Push and Fetch. `*unanswered` tells whether a failure
  // came before the server could have acted on the request: a push whose
  // request did not leave whole, a fetch that got no response header.
  absl::StatusOr<ImageInfo> PushOnce(std::unique_ptr<Connection> connection,
                                     std::string_view image_id,
                                     const uint8_t* data, size_t size,
                                     const PushOptions& options,
                                     absl::Time deadline, bool stream_append,
                                     bool* unanswered);
  // `*take_bytes`, if the answer came as a descriptor that could not be
  // used (lost for want of descriptors, say): ask again for the bytes.
  // With `sink`, the bytes go to it (FetchTo) and the result's buffer is
  // empty.
  absl::StatusOr<FetchedImage> FetchOnce(std::unique_ptr<Connection> connection,
                                         std::string_view image_id,
                                         const FetchOptions& options,
                                         const CallDeadline& deadline,
                                         bool accept_descriptor,
                                         bool* unanswered, bool* take_bytes,
                                         const FetchSink* sink = nullptr);
  // The descriptor that came with `response` on `connection`, checked and
  // mapped with `access`, under a lease the caller ends (LeaseLedger).
  // When it cannot be used the lease ends at once, the connection goes back
  // to the pool (`connection` is then null), `*take_bytes` is set and the
  // error is UNAVAILABLE. A writer's step buffer (sealed only against
  // resizing) is mapped read-only; with `step_buffer` given, through
  // step_mappings_ into `*step_buffer`, the Mapping returned then empty.
  absl::StatusOr<Mapping> MapLeased(
      std::unique_ptr<Connection>& connection, const lane::Response& response,
      Mapping::Access access, bool* take_bytes,
      std::shared_ptr<const Mapping>* step_buffer = nullptr);
  // A streamed fetch (FetchTo) answered with bytes on a plain socket, for a
  // sink with a pipe: the `fetched.info.size` bytes moved into `pipe` by
  // the kernel (LaneReader::MoveToPipe), verified as they pass.
  absl::StatusOr<FetchedImage> SpliceToPipe(
      std::unique_ptr<Connection> connection, FetchedImage fetched,
      const FetchOptions& options, const CallDeadline& deadline, int pipe);
  // A streamed fetch (FetchTo) answered with a descriptor: the mapping is
  // handed to `sink` a window at a time, each released once handed on,
  // then unmapped and its lease released; nothing is copied here.
  absl::StatusOr<FetchedImage> SinkMapped(
      std::unique_ptr<Connection> connection, const lane::Response& response,
      std::string_view image_id, const FetchOptions& options,
      const ImageSink& sink, bool* take_bytes);
  // The image of a GET answered with `response` and a descriptor: mapped,
  // under a lease that the buffer's end releases; its progress reported
  // once, whole.
  absl::StatusOr<FetchedImage> ReceiveMapped(
      std::unique_ptr<Connection> connection, const lane::Response& response,
      std::string_view image_id, const FetchOptions& options, bool* take_bytes);
  // Sends the RELEASEs due on `connection`; false if it broke.
  bool SendDueReleases(Connection& connection);

  absl::StatusOr<ReadResult> ReadOnce(std::unique_ptr<Connection> connection,
                                      std::string_view image_id,
                                      uint64_t generation, uint64_t offset,
                                      void* out, size_t length,
                                      absl::Time deadline, bool* unanswered);

  const std::string host_;  // TCP; empty for a Unix socket
  const int port_;
  const std::string unix_path_;
  const std::string address_;
  const LaneCredentials credentials_;
  // This lane, for the buffers it maps to find it (or learn it is gone).
  std::weak_ptr<DataLane> self_;
  // The step buffers this lane's fetches mapped, kept for their next steps.
  StepBufferMappings step_mappings_;

  // Taken twice per call: an internal::Mutex, as everywhere in the client
  // (h5depot/internal/mutex.h says why not absl::Mutex).
  Mutex mutex_;
  std::vector<std::unique_ptr<Connection>> idle_ ABSL_GUARDED_BY(mutex_);
};

}  // namespace h5depot::internal

#endif  // H5DEPOT_CLIENT_LANE_CLIENT_INTERNAL_H_
