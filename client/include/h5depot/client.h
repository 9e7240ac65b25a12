// h5depot::Client: push, fetch and manage HDF5 file images held by h5depotd.
//
// The client speaks gRPC underneath, and moves image bytes over the
// server's data lane when it can (ClientOptions::use_data_lane); nothing of
// either appears here. Every call returns an absl::Status whose code says
// what to do next, the same on either transport (the project's one error
// table, docs/ARCHITECTURE.md "Errors"):
//
//   INVALID_ARGUMENT     malformed image id (on every call), malformed
//                        request, not an HDF5 image: fix the request
//   NOT_FOUND            no such image (or no longer that generation)
//   ALREADY_EXISTS       if_generation_match was 0 and the image exists:
//                        choose another id, or fetch it
//   ABORTED              if_generation_match was N and generation N is not
//                        current (somebody else pushed or deleted it): a
//                        lost race; re-read and redo the read-modify-write
//   FAILED_PRECONDITION  the caller's own state must be fixed first;
//                        retrying as is cannot help
//   DATA_LOSS            the bytes did not match their checksum: resend
//   RESOURCE_EXHAUSTED   over the server's memory or image size limits, or a
//                        wait when the server has all the waits it allows
//   DEADLINE_EXCEEDED    a wait or call deadline passed
//   CANCELLED            the caller cancelled
//   UNAVAILABLE          the server cannot be reached or is shutting down;
//                        retry later, or elsewhere
//
// Deadlines: no call blocks past its deadline, whatever the server does
// (stopped, overloaded, unreachable, restarting):
//   - Every call ends within ClientOptions::call_timeout (default 30 s)
//     after it starts, plus, for a call that moves image bytes (Push,
//     Fetch, Read), one second per 32 MiB moved, plus its wait if it has
//     one. Past that it fails with DEADLINE_EXCEEDED.
//   - A wait (FetchOptions::wait, Stat's `wait`) has its answer, the image
//     or DEADLINE_EXCEEDED, within the wait plus one second (at most the
//     call timeout) even when the server does not answer at all.
//   - A server that is down (its connections refused) makes calls fail
//     with UNAVAILABLE within about a quarter of a second. Once it is back,
//     the next call on an existing Client reconnects and succeeds, however
//     long the outage was.
//
// Messages start with the operation and the image id ("fetch 'x': ...").
// A push that fails with DEADLINE_EXCEEDED or UNAVAILABLE may still have
// been published (its bytes had reached the server); Stat tells, and
// if_generation_match makes a retry safe.
//
// Example:
//   auto client = h5depot::Client::Connect("unix:/run/h5depot.sock");
//   if (!client.ok()) return client.status();
//   auto info = (*client)->Push("run-42/packet", bytes.data(), bytes.size());
//   auto image = (*client)->Fetch("run-42/packet");
//
// A Client is thread-safe: any number of threads may call it at once.
//
// fork(): a Client survives it on both sides. The parent goes on using it,
// calls under way at the fork included. In a child, the first call makes
// the child's own connections (the parent's are never read, written nor
// closed there), and destroying the Client frees only what the child made,
// at once; a child may also Connect new Clients. One case is refused: a
// child forked while another thread of the parent was in a call that uses
// gRPC (anything but a push or fetch over the data lane) cannot use gRPC,
// and each of its calls, Connect included, fails at once with
// FAILED_PRECONDITION ("gRPC cannot be used in this child of fork(): ...").
// Readers read only in the process that opened them. docs/ARCHITECTURE.md,
// "fork()", has the rest.
#ifndef H5DEPOT_CLIENT_CLIENT_H_
#define H5DEPOT_CLIENT_CLIENT_H_

#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "h5depot/image_buffer.h"

namespace h5depot {

namespace internal {
struct FetchSink;
struct PushBytes;
class Cluster;
struct StepBufferSlot;
}  // namespace internal

// What the server knows about one stored generation of an image.
struct ImageInfo {
  std::string image_id;
  uint64_t size = 0;
  uint64_t generation = 0;
  uint64_t checksum = 0;  // XXH3-64 of the whole image
  absl::Time created = absl::InfinitePast();
  absl::Time expires = absl::InfiniteFuture();  // InfiniteFuture: never
};

// Called as bytes move: `done` of `total` so far. Called from the calling
// thread, in order, at most once per chunk.
using ProgressCallback = std::function<void(uint64_t done, uint64_t total)>;

struct ClientOptions {
  // Size of the chunks a push sends; the server's limit caps it.
  size_t chunk_bytes = size_t{1} << 20;
  // How long Connect waits for the server to answer before UNAVAILABLE.
  absl::Duration connect_timeout = absl::Seconds(10);
  // How long any call may take, besides its wait and the time its image
  // bytes are allowed (see "Deadlines" above); InfiniteDuration for none.
  absl::Duration call_timeout = absl::Seconds(30);
  // Move the bytes of Push and Fetch over the server's data lane, a plain
  // socket beside gRPC, when the server offers one and it can be reached
  // (else they go over gRPC, as everything else does). Same results either
  // way; the lane is several times faster. false: gRPC only.
  bool use_data_lane = true;
  // Over a server's Unix socket, take fetched images as mappings of the
  // server's memory and push sealed memfds as descriptors (ImageBuffer,
  // PushMemfd): nothing copied. false: bytes only, as over TCP.
  bool share_memory = true;
  // The bearer token of this client's principal, for a server started with
  // an auth file (docs/SECURITY.md); sent with every call. Empty: the
  // token in the environment, H5DEPOT_TOKEN, or else the first line of
  // the file H5DEPOT_TOKEN_FILE names; no token if neither is set. It is
  // only ever sent encrypted (use_tls) or to a server on this host (a Unix
  // socket or a loopback address): Connect refuses any other target with
  // FAILED_PRECONDITION.
  std::string token;
  // TLS (docs/SECURITY.md, "TLS"), for a server started with a
  // certificate: every TCP connection to it, gRPC and data lane alike, is
  // encrypted, and the server's certificate must be signed by a CA in
  // tls_ca_file (PEM; empty: the system's trusted CAs) and name the host of
  // the target. tls_cert_file and tls_key_file (PEM, both or neither) are
  // this client's certificate, for a server that requires one (mutual
  // TLS). On when use_tls is true or any file is given; when none of the
  // four is set, from the environment: H5DEPOT_TLS_CA_FILE,
  // H5DEPOT_TLS_CERT_FILE and H5DEPOT_TLS_KEY_FILE, or H5DEPOT_TLS=1 for
  // the system's CAs. A Unix socket target is never encrypted (its file's
  // permissions guard it) and ignores these.
  bool use_tls = false;
  std::string tls_ca_file;
  std::string tls_cert_file;
  std::string tls_key_file;
};

struct PushOptions {
  // Absent: push unconditionally. 0: only if the image does not exist yet
  // (else ALREADY_EXISTS). N: only if generation N is current (else
  // ABORTED, also when the image was deleted).
  std::optional<uint64_t> if_generation_match;
  // The image is deleted this long after it was published; zero: never.
  absl::Duration ttl = absl::ZeroDuration();
  ProgressCallback progress;
  // For replication (a cluster target sets it on its replicas): not 0, the
  // image is a copy of generation N held by another server, and is
  // published under N instead of a new generation, so that every copy of
  // it has the same number. The server's later generations then number
  // after N. FAILED_PRECONDITION if the server holds generation N of the
  // image or a newer one. Servers from before it publish a new generation
  // of their own instead (the answer's generation says which).
  uint64_t replica_generation = 0;
};

struct FetchOptions {
  // Zero: NOT_FOUND at once when the image does not exist. Otherwise wait
  // up to this long for another client to push it (DEADLINE_EXCEEDED).
  absl::Duration wait = absl::ZeroDuration();
  // Not 0: only a generation newer than this one will do, so that a
  // consumer passing the generation it last received gets the next one:
  // the current generation if it is newer, else the first published within
  // `wait` (DEADLINE_EXCEEDED if none is; with no wait, FAILED_PRECONDITION
  // at once). Generations only grow: no publish is missed, and if several
  // came meanwhile this is the newest (compare the numbers to tell).
  uint64_t newer_than = 0;
  ProgressCallback progress;
  // Only as a mapping of the server's memory (ImageBuffer::is_mapped()),
  // for callers that would rather read ranges than move the whole image:
  // FAILED_PRECONDITION, with no byte moved, when the image cannot come
  // that way (another host, a small image, a server that does not share).
  bool only_if_mapped = false;
};

// Receives a streamed image's bytes (Client::FetchTo) in order, a piece at
// a time; `data` is valid only during the call. An error ends the fetch,
// which returns it.
using ImageSink = std::function<absl::Status(const void* data, size_t size)>;

// A fetched image: its bytes in one malloc'ed buffer (which may be handed to
// HDF5 with H5LT_FILE_IMAGE_DONT_COPY via buffer.Release()) and its info.
struct FetchedImage {
  ImageInfo info;
  ImageBuffer buffer;
};

struct ReadResult {
  ImageInfo info;         // of the generation that was read
  size_t bytes_read = 0;  // less than asked only at the end of the image
};

struct ListOptions {
  std::string prefix;      // only ids that start with this
  uint32_t page_size = 0;  // 0: the server's default
  std::string page_token;  // from the previous page; empty for the first
};

struct ListPage {
  std::vector<ImageInfo> images;  // sorted by image id
  std::string next_page_token;    // empty after the last page
};

struct ServerLimits {
  uint64_t max_image_bytes = 0;
  uint64_t max_memory_bytes = 0;
  uint64_t max_chunk_bytes = 0;
  uint64_t stored_bytes = 0;
  // Everything counted against max_memory_bytes: current generations,
  // pushes under way, and generations replaced or deleted but still held.
  uint64_t reserved_bytes = 0;
  // Generations that clients on the server's host map (fetched over its
  // Unix socket), their bytes, and the bytes of those no longer current.
  uint64_t leased_generations = 0;
  uint64_t leased_bytes = 0;
  uint64_t leased_superseded_bytes = 0;
  // Where the server offers its data lane (the fast path Push and Fetch use
  // for image bytes): a TCP port on the server's host, 0 for none, and a
  // Unix socket path on the server's machine, empty for none.
  int data_lane_port = 0;
  std::string data_lane_unix_path;
  // When the server restored images from a snapshot at its start;
  // InfinitePast if it restored none. An image created before it came
  // from the snapshot.
  absl::Time restored_at = absl::InfinitePast();
};

// A read-only view of one generation of an image. The server keeps that
// generation readable for as long as the reader lives, even if the image is
// replaced or deleted meanwhile; its memory still counts against the
// server's limit. Destroying the reader cancels its stream without waiting
// for the server, which releases the generation as soon as it sees that.
//
// Readers from Client::OpenReader are thread-safe: each read is a call of
// its own, so several threads may read at once, and a read that fails or
// times out leaves the reader usable. Other implementations say what they
// allow.
class ImageReader {
 public:
  virtual ~ImageReader() = default;

  // The generation this reader sees, fixed for its whole life.
  virtual const ImageInfo& info() const = 0;

  // Reads up to `length` bytes at `offset` into `out`; returns how many were
  // read, fewer only at the end of the image. A reader from
  // Client::OpenReader gives each read ClientOptions::call_timeout plus the
  // transfer allowance of "Deadlines".
  // UNAVAILABLE if the server went away, NOT_FOUND if it no longer holds
  // the generation (it restarted).
  virtual absl::StatusOr<size_t> Read(uint64_t offset, void* out,
                                      size_t length) = 0;

  // Read, ending by `deadline` (DEADLINE_EXCEEDED) instead of after the
  // call timeout; InfiniteFuture for none. The default, for readers without
  // deadlines (in memory, say), ignores it and calls Read.
  virtual absl::StatusOr<size_t> ReadWithDeadline(uint64_t offset, void* out,
                                                  size_t length,
                                                  absl::Time deadline) {
    static_cast<void>(deadline);
    return Read(offset, out, length);
  }
};

// A change to the images a watch follows (Client::Watch). Every change to
// a server's store takes the next number of one counter, its sequence: a
// publish's sequence is the generation it made, a delete's, an expiry's or
// an eviction's a number no generation gets. A watch's events only grow in
// sequence, and a consumer holding generation G of an image can ask for
// every change after G (WatchOptions::after). The numbers have gaps only
// where a replica's copy (PushOptions::replica_generation) moved the
// counter on; such a copy's sequence is at least its generation.
//
// A watch of a cluster target merges its servers' watches: each change
// once (replicas report it under one generation), each event with the
// sequence of the server that reported it; it cannot start after a
// sequence (README.md, "Watching a cluster").
struct ImageEvent {
  enum class Kind {
    kPublished,  // the first generation under its id (or the first after a
                 // delete or an expiry)
    kReplaced,   // a new generation replacing the current one
    kDeleted,    // removed by a delete
    kExpired,    // removed at the end of its time to live
    kEvicted,    // removed to make room (h5depotd --eviction=lru)
    // Not a change: changes first_lost_sequence through sequence were not
    // delivered, because the server no longer kept them when the watch came
    // to read them (a watcher far behind, or asking from before the
    // server started). Look again (List, Stat) and go on: the events after
    // this one follow as usual.
    kLost,
  };
  Kind kind = Kind::kPublished;
  uint64_t sequence = 0;
  std::string image_id;  // empty for kLost
  // Published, replaced: the new generation (= sequence) and its size.
  // Deleted, expired, evicted: the generation removed and its size.
  uint64_t generation = 0;
  uint64_t size = 0;
  uint64_t replaced_generation = 0;        // kReplaced: the generation replaced
  absl::Time time = absl::InfinitePast();  // when it took effect
  uint64_t first_lost_sequence = 0;        // kLost only
};

// "published", "replaced", "deleted", "expired", "evicted", "lost".
const char* ImageEventKindName(ImageEvent::Kind kind);

struct WatchOptions {
  // Only changes to ids that start with this; empty: every change.
  std::string prefix;
  // Absent: changes from the moment the watch starts. N: every change
  // after sequence N that the server still keeps (a kLost event first for
  // those it does not).
  std::optional<uint64_t> after;
};

// A watch of the changes under a prefix, in the order they took effect,
// each once (Client::Watch). The server holds nothing for a slow watcher
// but a history of its latest changes (h5depotd --watch-history): one that
// falls further behind gets a kLost event. Destroying the watch ends it.
// Next() is for one thread at a time; Cancel() may be called from any.
class ImageWatch {
 public:
  virtual ~ImageWatch() = default;

  // Events follow with sequences after this one.
  virtual uint64_t started_after() const = 0;

  // The next event, waiting until `deadline` for one: DEADLINE_EXCEEDED
  // then, and the watch goes on. UNAVAILABLE once the server stops or the
  // connection breaks, CANCELLED after Cancel(); the watch is over then,
  // and every later call says the same.
  virtual absl::StatusOr<ImageEvent> Next(
      absl::Time deadline = absl::InfiniteFuture()) = 0;

  // Ends the watch: a Next() waiting on another thread returns CANCELLED.
  virtual void Cancel() = 0;
};

// What Client::Rebalance moves.
struct RebalanceOptions {
  std::string prefix;  // only the images whose ids start with this
  // Servers leaving the cluster (single-server targets, not members of
  // it): every image they hold is placed on the cluster, then deleted
  // from them, so that they can be stopped without losing an image.
  std::vector<std::string> drain;
};

// What a rebalance did, in copies of images (one server's copy each).
struct RebalanceReport {
  uint64_t images = 0;           // ids looked at
  uint64_t copies_made = 0;      // placed where a replica was missing
  uint64_t copies_replaced = 0;  // older copies replaced by the newest
  uint64_t copies_removed = 0;   // deleted where placement puts none
  // Ids a client changed while they were being moved (a push or delete
  // meanwhile): what the client did stands; the next run places them.
  uint64_t changed = 0;
  uint64_t failed = 0;      // ids that could not be placed: nothing removed
  std::string first_error;  // of the first failure, if any
};

// Streams (docs/STREAMS.md): a named, ordered sequence of HDF5 images,
// its steps 0, 1, 2, ..., read by reader groups. Every group gets every
// step; within a group each step goes to one member at a time, leased to
// it until it acknowledges it (Client::Ack) or the lease runs out, when
// it goes to the next member that asks: delivery is at least once.
struct StreamPolicy {
  enum class WhenFull {
    kBlock,          // Append waits for room (AppendOptions::wait_for_room)
    kDiscardOldest,  // the oldest queued step is dropped; readers are told
    kRefuse,         // Append fails RESOURCE_EXHAUSTED
  };
  // The queue: steps not yet acknowledged by every reader group, and
  // appends under way. 0: the server's default (8 steps, 256 MiB).
  uint64_t max_steps = 0;
  uint64_t max_bytes = 0;
  WhenFull when_full = WhenFull::kBlock;
  // Steps every group acknowledged that are kept anyway (the newest), for
  // groups that join late.
  uint64_t reserve_steps = 0;
  // Step 0 is kept for the stream's life and given first to every group
  // that joins after it was appended.
  bool keep_first_step = false;
};

struct StreamGroupInfo {
  std::string name;
  uint64_t next_step = 0;      // the next step never handed to the group
  uint64_t acked_below = 0;    // every step below it acknowledged or lost
  uint64_t leased_steps = 0;   // handed to members, not acknowledged
  uint64_t waiting_steps = 0;  // whose lease ran out, to be handed again
};

struct StreamInfo {
  std::string stream;
  StreamPolicy policy;          // as the server applies it
  bool created = false;         // false: only readers named it so far
  bool finished = false;        // FinishStream was called
  uint64_t appended_steps = 0;  // the next append's step number
  uint64_t queued_steps = 0;    // counted against policy.max_steps
  uint64_t queued_bytes = 0;    // counted against policy.max_bytes
  uint64_t kept_steps = 0;      // held in memory, the reserve included
  uint64_t kept_bytes = 0;
  std::optional<uint64_t> oldest_kept_step;
  std::vector<StreamGroupInfo> groups;
};

struct AppendOptions {
  // How long an append to a full stream whose policy is to block waits
  // for readers to make room, beyond ClientOptions::call_timeout for
  // the transfer itself. DEADLINE_EXCEEDED after it.
  absl::Duration wait_for_room = absl::Seconds(30);
  // A copy of step N of the stream that another server holds (a cluster
  // client sets it for a stream's replicas), appended as step N: sent
  // over gRPC and tried once, never waiting for room (a full stream
  // refuses it). FAILED_PRECONDITION where the server has step N or a
  // later one already.
  std::optional<uint64_t> replica_step;
};

struct AppendedStep {
  uint64_t step = 0;
  ImageInfo info;  // info.image_id is the step's id, "STREAM@N"
};

// A buffer to build a stream's next step in, lent by Client::BeginStep and
// appended by Client::CommitStep (docs/STREAMS.md, "Step buffers"). Its
// bytes are uninitialised (an earlier step's, typically). Destroyed
// uncommitted, it goes back to the Client unused. Move-only.
class StepBuffer {
 public:
  StepBuffer();
  ~StepBuffer();
  StepBuffer(StepBuffer&& other) noexcept;
  StepBuffer& operator=(StepBuffer&& other) noexcept;
  StepBuffer(const StepBuffer&) = delete;
  StepBuffer& operator=(const StepBuffer&) = delete;

  // Where to write the step: size() bytes, all of which become the step.
  void* data() const;
  size_t size() const { return size_; }
  const std::string& stream() const { return stream_; }

 private:
  friend class Client;
  std::string stream_;
  size_t size_ = 0;
  std::shared_ptr<internal::StepBufferSlot> slot_;
  const void* lender_ = nullptr;  // the Client's, which alone commits it
};

// Steps first to last, both included.
struct StepRange {
  uint64_t first = 0;
  uint64_t last = 0;
};

struct NextOptions {
  // Where the group starts if this call makes it: the oldest step the
  // stream keeps, the newest one appended, or `start_step`.
  enum class Start { kOldest, kLatest, kStep };
  Start start = Start::kOldest;
  uint64_t start_step = 0;
  // How long to wait for a step (zero: answer at once).
  absl::Duration wait = absl::ZeroDuration();
  // How long the step stays leased to this member (zero: the server's
  // default, 60 s).
  absl::Duration lease = absl::ZeroDuration();
  // Who takes the step, and must be the one to acknowledge it. Empty: a
  // name of this Client in this process.
  std::string consumer;
  // Acknowledges this step (one this consumer holds) first, in the same
  // round trip: Ack's errors, and then no step is taken.
  std::optional<uint64_t> ack_step;
};

struct StreamStep {
  uint64_t step = 0;
  FetchedImage image;           // opened as a fetch is (same host: mapped)
  std::vector<StepRange> lost;  // discarded before the group got them
  std::string consumer;         // who holds it (NextOptions::consumer)
};

class Client {
 public:
  // Connects to h5depotd at `target`: "host:port", "unix:/path/to/socket"
  // or any gRPC target; or to several servers as one with a cluster
  // target, "cluster:MEMBER,MEMBER,...[?replicas=R]" (README.md, "Several
  // servers as one", says how calls behave there). Each Client has a connection
  // of its own. UNAVAILABLE if the server does not answer within
  // options.connect_timeout; INVALID_ARGUMENT for a malformed target;
  // FAILED_PRECONDITION in a child of fork() that cannot use gRPC (above).
  static absl::StatusOr<std::unique_ptr<Client>> Connect(
      std::string_view target, const ClientOptions& options = {});

  ~Client();
  Client(const Client&) = delete;
  Client& operator=(const Client&) = delete;

  // The target this client was connected to.
  const std::string& target() const;

  // Pushes `size` bytes at `data` (borrowed for the duration of the call) as
  // a new generation of `image_id`. The image is visible to others only
  // once all of it arrived intact. Returns the published generation's info.
  absl::StatusOr<ImageInfo> Push(std::string_view image_id, const void* data,
                                 size_t size, const PushOptions& options = {});

  // Pushes the contents of the file at `path` (memory-mapped, not copied).
  // NOT_FOUND or PERMISSION_DENIED if the file cannot be read.
  absl::StatusOr<ImageInfo> PushFile(std::string_view image_id,
                                     const std::string& path,
                                     const PushOptions& options = {});

  // Pushes the image held in the first `size` bytes of `memfd`, a memfd
  // (memfd_create) sealed against any change: F_SEAL_WRITE, F_SEAL_SHRINK
  // and F_SEAL_GROW. To a server on this host over its Unix socket the
  // descriptor itself is handed over: nothing is copied, and the server
  // keeps that memory (still charged to this process's memory cgroup) as
  // the image. Anywhere else the bytes are sent as by Push. The caller
  // keeps `memfd`. memory_file.h makes HDF5 files in such memfds.
  //
  // Errors: INVALID_ARGUMENT if `memfd` is not a memfd so sealed holding
  // `size` bytes; otherwise those of Push.
  absl::StatusOr<ImageInfo> PushMemfd(std::string_view image_id, int memfd,
                                      uint64_t size,
                                      const PushOptions& options = {});

  // Fetches the current generation of `image_id` into one new buffer. The
  // bytes are verified against the checksum before this returns. From a
  // server on this host over its Unix socket the buffer maps the server's
  // memory instead (ImageBuffer::is_mapped(): nothing copied, nothing to
  // verify, and info.checksum 0 unless the server knew it already).
  absl::StatusOr<FetchedImage> Fetch(std::string_view image_id,
                                     const FetchOptions& options = {});

  // Fetches the current generation of `image_id` as Fetch does, but hands
  // its bytes to `sink` in order as they arrive, through a buffer of at
  // most a few MiB rather than one of the image's size: for images larger
  // than memory, or bytes on their way to a file or a pipe. They are
  // verified as they pass, so a corrupt image is known only once its last
  // piece went to `sink`: DATA_LOSS then (a caller writing a file discards
  // it; a stream cannot be taken back, as with curl). A transfer that
  // breaks after some bytes went to `sink` is not retried. Returns the
  // image's info. INVALID_ARGUMENT with options.only_if_mapped.
  absl::StatusOr<ImageInfo> FetchTo(std::string_view image_id,
                                    const ImageSink& sink,
                                    const FetchOptions& options = {});
  // FetchTo with the bytes written to the descriptor `fd` (a file, a pipe,
  // a socket; left open, written from where it stands). A write that fails
  // ends the fetch with an error saying so. Into a pipe, bytes that arrive
  // on a plain TCP connection move by reference (splice), read once here
  // only to be verified: the fastest way to stream an image to another
  // program.
  absl::StatusOr<ImageInfo> FetchToDescriptor(std::string_view image_id, int fd,
                                              const FetchOptions& options = {});

  // Reads up to `length` bytes at `offset` of `generation` (0: current)
  // into `out`. A range past the end is clamped; an offset past the end
  // reads nothing. NOT_FOUND if that generation is no longer stored.
  absl::StatusOr<ReadResult> Read(std::string_view image_id,
                                  uint64_t generation, uint64_t offset,
                                  void* out, size_t length);

  // Opens a reader pinned to `generation` of `image_id` (0: the current
  // one). A refused open carries the server's code: NOT_FOUND if the image
  // or that generation is not stored, INVALID_ARGUMENT for a malformed id.
  // The reader may outlive the Client. It reads in this process only: in a
  // child of fork() its reads fail with FAILED_PRECONDITION (open another
  // one there), and destroying it there leaves the parent's stream alone.
  absl::StatusOr<std::unique_ptr<ImageReader>> OpenReader(
      std::string_view image_id, uint64_t generation = 0);

  // The current generation's info. With `wait` > 0, waits up to that long
  // for the image to be pushed (DEADLINE_EXCEEDED if it is not); with
  // `newer_than`, for a generation newer than that, as FetchOptions says.
  absl::StatusOr<ImageInfo> Stat(std::string_view image_id,
                                 absl::Duration wait = absl::ZeroDuration(),
                                 uint64_t newer_than = 0);

  // One page of the images whose ids start with options.prefix.
  absl::StatusOr<ListPage> List(const ListOptions& options = {});

  // Deletes `image_id`; with if_generation_match, only if that generation
  // is current (else ABORTED). NOT_FOUND if absent.
  absl::Status Delete(std::string_view image_id,
                      std::optional<uint64_t> if_generation_match = {});

  absl::StatusOr<ServerLimits> GetLimits();

  // For a cluster target: puts every copy where placement now says
  // (README.md, "Rebalancing"): each image's newest copy (by creation
  // time) is copied to each of its replicas that lacks it or holds an
  // older one, and then, once all of them have it, removed from servers
  // that are not its replicas (and from options.drain). Safe while clients
  // work: a copy is placed only where the image is absent or unchanged
  // since it was listed, and removed only if unchanged. FAILED_PRECONDITION
  // for a single server's target; UNAVAILABLE, with nothing moved, if a
  // member or a drained server cannot be reached.
  absl::StatusOr<RebalanceReport> Rebalance(
      const RebalanceOptions& options = {});

  // Starts a watch of the changes under options.prefix; it has started on
  // the server when this returns, so no change made afterwards is missed.
  // With an access-rules server, a principal sees only the ids under its
  // prefixes. The watch may outlive the Client.
  absl::StatusOr<std::unique_ptr<ImageWatch>> Watch(
      const WatchOptions& options = {});

  // Streams (docs/STREAMS.md). A stream's name is an image id. Through a
  // cluster target a stream lives on its name's primary, without
  // replicas: UNAVAILABLE while that server is down.
  //
  // Creates `stream` with `policy`: OK again with the same policy,
  // ALREADY_EXISTS with another. Optional: a first Append creates the
  // stream with the default policy.
  absl::StatusOr<StreamInfo> CreateStream(std::string_view stream,
                                          const StreamPolicy& policy = {});
  // Appends one HDF5 image as the stream's next step, validated as a push
  // is; no partial step is ever visible. FAILED_PRECONDITION for a
  // finished stream, INVALID_ARGUMENT for a step larger than the queue's
  // byte limit or not HDF5, RESOURCE_EXHAUSTED for a full queue whose
  // policy refuses, DEADLINE_EXCEEDED for one that blocks past
  // options.wait_for_room.
  absl::StatusOr<AppendedStep> Append(std::string_view stream, const void* data,
                                      size_t size,
                                      const AppendOptions& options = {});
  // The same, the step's bytes read from the file at `path`.
  absl::StatusOr<AppendedStep> AppendFile(std::string_view stream,
                                          const std::string& path,
                                          const AppendOptions& options = {});
  // The same, the step being the first `size` bytes of `memfd`, sealed as
  // PushMemfd's: to a server on this host over its Unix socket the
  // descriptor itself is handed over, nothing copied; elsewhere the bytes
  // are sent. The caller keeps `memfd`.
  absl::StatusOr<AppendedStep> AppendMemfd(std::string_view stream, int memfd,
                                           uint64_t size,
                                           const AppendOptions& options = {});
  // Builds a step in place (docs/STREAMS.md, "Step buffers"): a buffer of
  // `size` (> 0) bytes for `stream`'s next step, to fill and hand to
  // CommitStep. On the server's host over its Unix socket, the buffer is
  // one of at most 16 memfds this Client keeps mapped and fills step after
  // step: CommitStep hands it to the server and to readers on this host
  // with nothing copied and no fresh memory met, and it is lent again only
  // once the server and every reader it handed the step to let go of it.
  // Anywhere else CommitStep sends its bytes, as Append does. Waits up to
  // options.wait_for_room for a buffer to come back (DEADLINE_EXCEEDED
  // after it); RESOURCE_EXHAUSTED if all 16 are lent to steps being built.
  absl::StatusOr<StepBuffer> BeginStep(std::string_view stream, size_t size,
                                       const AppendOptions& options = {});
  // Appends the buffer's bytes as the stream's next step, as Append does
  // (the same errors, and the same waiting for room). The buffer goes back
  // to this Client whatever happens; its bytes must not be written again.
  // INVALID_ARGUMENT for a buffer another Client lent, or none (moved
  // from).
  absl::StatusOr<AppendedStep> CommitStep(StepBuffer buffer,
                                          const AppendOptions& options = {});
  // Ends the stream: readers get every step appended, then OUT_OF_RANGE.
  // The step buffers no one holds any longer are freed.
  absl::StatusOr<StreamInfo> FinishStream(std::string_view stream);
  absl::StatusOr<StreamInfo> StatStream(std::string_view stream);
  // Deletes the stream: its steps are freed and its groups forgotten;
  // readers and writers waiting on it get NOT_FOUND, and a later append
  // or reader starts a new stream of that name at step 0. NOT_FOUND if the
  // server has no such stream; FAILED_PRECONDITION, deleting nothing,
  // while an append to it is under way (finish the stream first). Needs
  // the role that deletes images of the stream's name.
  absl::Status DeleteStream(std::string_view stream);
  // Deletes reader group `group` of the stream: its position and leases
  // are forgotten, its members' waits get NOT_FOUND, and the steps no
  // other group needs are freed. A member that asks again starts a new
  // group. NOT_FOUND for an unknown stream or group.
  absl::Status DeleteStreamGroup(std::string_view stream,
                                 std::string_view group);
  // The next step for this member of reader group `group`, leased to it:
  // DEADLINE_EXCEEDED if none comes within options.wait, OUT_OF_RANGE
  // once the stream is finished and the group has had every step.
  absl::StatusOr<StreamStep> Next(std::string_view stream,
                                  std::string_view group,
                                  const NextOptions& options = {});
  // The member is done with `step` (`consumer` as Next named it; empty:
  // this Client's name). FAILED_PRECONDITION if it does not hold it (its
  // lease ran out and it went to another member, or it acknowledged it).
  absl::Status Ack(std::string_view stream, std::string_view group,
                   uint64_t step, std::string_view consumer = {});

 private:
  struct Impl;
  explicit Client(std::unique_ptr<Impl> impl);
  // FetchTo and FetchToDescriptor, once they know where the bytes go.
  absl::StatusOr<ImageInfo> FetchToSink(std::string_view image_id,
                                        const internal::FetchSink& sink,
                                        const FetchOptions& options);
  // Push and PushFile, once they know their bytes.
  absl::StatusOr<ImageInfo> PushBytesAs(std::string_view image_id,
                                        const internal::PushBytes& bytes,
                                        const PushOptions& options);
  absl::StatusOr<AppendedStep> AppendBytes(std::string_view stream,
                                           internal::PushBytes bytes,
                                           const AppendOptions& options);
  // Append's one loop: `push_once` sends the step once (the info it
  // returns is the step's); a full stream that blocks is waited on and
  // the step sent again, until options.wait_for_room runs out.
  absl::StatusOr<AppendedStep> AppendWithRoom(
      std::string_view stream, uint64_t size, const AppendOptions& options,
      const std::function<absl::StatusOr<ImageInfo>()>& push_once);
  friend class internal::Cluster;
  // A cluster's copy of an acknowledgement `group` made of `step` on
  // another server (AckStepRequest::replica).
  absl::Status AckCopy(std::string_view stream, std::string_view group,
                       uint64_t step);
  // DeleteStream (`group` empty) and DeleteStreamGroup.
  absl::Status DeleteStreamOrGroup(std::string_view stream,
                                   std::string_view group);
  // `asked`, or this Client's own consumer name in this process.
  std::string ConsumerName(std::string_view asked) const;
  std::unique_ptr<Impl> impl_;
};

}  // namespace h5depot

#endif  // H5DEPOT_CLIENT_CLIENT_H_
