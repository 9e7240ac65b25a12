// How Client moves image bytes: the interface its transports implement
// (gRPC, grpc_transport_internal.h; the data lane, lane_client_internal.h,
// chosen per call by lane_fallback_internal.h), and the conversions and
// checks both transports share, each written once. Internal to the client.
#ifndef H5DEPOT_CLIENT_IMAGE_TRANSPORT_INTERNAL_H_
#define H5DEPOT_CLIENT_IMAGE_TRANSPORT_INTERNAL_H_

#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "h5depot/client.h"

namespace h5depot::internal {

// Where a streamed fetch (Client::FetchTo, FetchToDescriptor) puts the
// image's bytes: each piece to `write`, in order. Where `pipe` is the write
// end of a pipe (else -1) and the bytes arrive on a plain data lane socket,
// the lane moves them into `pipe` itself instead, without passing them
// through `write` (LaneReader::MoveToPipe: one copy fewer).
struct FetchSink {
  ImageSink write;
  int pipe = -1;
};

// When a call must have ended, by the rules of client.h ("Deadlines"). The
// server's first answer (the image's info, a confirmation or a refusal) is
// due by `reply`; the whole call, once it is known to move `bytes` image
// bytes, by Whole(bytes). InfiniteFuture: no deadline.
struct CallDeadline {
  // Image bytes a call is allowed to move per second beyond its timeout:
  // 1 s per 32 MiB.
  static constexpr double kTransferBytesPerSecond = 32.0 * 1024 * 1024;
  // How long past its own timeout a wait may take when the server does not
  // answer: long enough for a server's late answer, short enough that the
  // caller's timeout means something.
  static constexpr absl::Duration kWaitMargin = absl::Seconds(1);

  // The deadlines of a call starting now with `call_timeout` (Infinite:
  // none) that waits up to `wait` for an image to appear.
  static CallDeadline Start(absl::Duration call_timeout,
                            absl::Duration wait = absl::ZeroDuration());
  // Deadlines that are already fixed (both `reply` and the whole call).
  static CallDeadline At(absl::Time deadline) { return {deadline, deadline}; }

  absl::Time Whole(uint64_t bytes) const;

  absl::Time reply = absl::InfiniteFuture();
  // The call's start plus its timeout plus its wait.
  absl::Time base = absl::InfiniteFuture();
};

// The bytes of a push: `size` at `data`, borrowed until the call returns.
// A transport that must know their checksum before it sends them (gRPC's
// push header carries it) asks Checksum(): `checksum` if set (a mapped file
// that lets go of its pages as it hashes them), else a hash of them.
struct PushBytes {
  const uint8_t* data = nullptr;
  size_t size = 0;
  std::function<uint64_t()> checksum;
  // The push appends a step to the stream named by the image id
  // (Client::Append); the info returned is the step's.
  bool stream_append = false;
  // With stream_append: a cluster's copy of this step, held by another
  // server (AppendOptions::replica_step). Only gRPC carries it.
  std::optional<uint64_t> replica_step;

  uint64_t Checksum() const;
};

// The step a NextStep call leased: its number, its image's info and the
// losses reported with it, and its bytes if they came with the answer.
struct LeasedStep {
  uint64_t step = 0;
  ImageInfo info;
  std::vector<StepRange> lost;
  // The step's bytes, checked against info.checksum, if they came with
  // the answer; else empty (fetch info.image_id).
  std::optional<ImageBuffer> bytes;
};

// Push, fetch and ranged reads, each ending by `deadline` (InfiniteFuture:
// none). Client has validated the image id and the arguments; errors carry
// the codes of client.h and no operation prefix (Client adds it).
// Implementations are thread-safe.
class ImageTransport {
 public:
  virtual ~ImageTransport() = default;

  // Sends `bytes`.
  virtual absl::StatusOr<ImageInfo> Push(std::string_view image_id,
                                         const PushBytes& bytes,
                                         const PushOptions& options,
                                         absl::Time deadline) = 0;

  // Receives the image into one new buffer, verified against its checksum:
  // its info by deadline.reply, its bytes by deadline.Whole(its size).
  virtual absl::StatusOr<FetchedImage> Fetch(std::string_view image_id,
                                             const FetchOptions& options,
                                             const CallDeadline& deadline) = 0;

  // Fetch, handing the bytes to `sink` as they arrive through a bounded
  // buffer (Client::FetchTo), verified as they pass: DATA_LOSS after the
  // last piece if they do not match. Not retried once a byte went to
  // `sink`; an error from `sink` ends the call and is returned.
  virtual absl::StatusOr<ImageInfo> FetchTo(std::string_view image_id,
                                            const FetchOptions& options,
                                            const CallDeadline& deadline,
                                            const FetchSink& sink) = 0;
  // Pushes the image in the first `size` bytes of `memfd`, sealed against
  // every change (kSealsFromClient), by handing the server the descriptor.
  // UNIMPLEMENTED, with nothing sent, where descriptors cannot pass (not
  // over the server's Unix socket, or a server that does not take them):
  // the caller then sends the bytes. With `stream_append`, as
  // PushBytes::stream_append. With a `release_signal` too (the write end
  // of a pipe), `memfd` is a step buffer the writer reuses, sealed only
  // against resizing (kSealsOfStepBuffer), and the pipe's end goes with it
  // (lane_protocol.h, PUT_SEALED); UNIMPLEMENTED where the server takes
  // no step buffers.
  virtual absl::StatusOr<ImageInfo> PushSealed(std::string_view image_id,
                                               int memfd, uint64_t size,
                                               const PushOptions& options,
                                               absl::Time deadline,
                                               bool stream_append,
                                               int release_signal = -1) {
    static_cast<void>(stream_append);
    static_cast<void>(release_signal);
    static_cast<void>(image_id);
    static_cast<void>(memfd);
    static_cast<void>(size);
    static_cast<void>(options);
    static_cast<void>(deadline);
    return absl::UnimplementedError("this transport cannot pass memfds");
  }

  // Leases the next step of `stream` to `consumer` of `group`
  // (Client::Next's one call to the server, acknowledging
  // options.ack_step first), its answer due by `deadline`. UNIMPLEMENTED,
  // with nothing sent, where this transport cannot (the default): the
  // caller then asks over gRPC.
  virtual absl::StatusOr<LeasedStep> NextStep(std::string_view stream,
                                              std::string_view group,
                                              std::string_view consumer,
                                              const NextOptions& options,
                                              absl::Time deadline) {
    static_cast<void>(stream);
    static_cast<void>(group);
    static_cast<void>(consumer);
    static_cast<void>(options);
    static_cast<void>(deadline);
    return absl::UnimplementedError("this transport cannot take steps");
  }

  // Reads up to `length` bytes at `offset` of `generation` (0: current)
  // into `out`, clamped at the end of the image.
  virtual absl::StatusOr<ReadResult> Read(std::string_view image_id,
                                          uint64_t generation, uint64_t offset,
                                          void* out, size_t length,
                                          absl::Time deadline) = 0;

  // A reader that pins `generation` (0: the current one) by this
  // transport's own means, opened by `open_deadline`, whose reads are Read
  // calls of `reads` (PinnedGenerationReader). UNIMPLEMENTED or UNAVAILABLE,
  // with nothing pinned, when it cannot (the default: it never can); the
  // caller then pins another way.
  virtual absl::StatusOr<std::unique_ptr<ImageReader>> OpenPinnedReader(
      std::string_view image_id, uint64_t generation, absl::Time open_deadline,
      absl::Duration read_timeout, std::shared_ptr<ImageTransport> reads);
};

// A reader of one generation that something else pins on the server (a
// gRPC OpenReader stream, a lane PIN: the subclass holds it, and drops it
// when destroyed). Its reads are calls of their own on that generation
// through `reads`, rather than requests on the pin: each then ends by its
// own deadline, one that times out or fails leaves the pin and the reader
// intact, and several threads may read at once.
class PinnedGenerationReader : public ImageReader {
 public:
  const ImageInfo& info() const final { return info_; }
  absl::StatusOr<size_t> Read(uint64_t offset, void* out, size_t length) final;
  absl::StatusOr<size_t> ReadWithDeadline(uint64_t offset, void* out,
                                          size_t length,
                                          absl::Time deadline) final;

 protected:
  // Each read ends by the deadline given, or by `read_timeout` (plus the
  // transfer allowance of CallDeadline) from its start.
  PinnedGenerationReader(std::shared_ptr<ImageTransport> reads, ImageInfo info,
                         absl::Duration read_timeout);

 private:
  const std::shared_ptr<ImageTransport> reads_;
  const ImageInfo info_;
  const absl::Duration read_timeout_;
};

// A duration as the wire's milliseconds: 0 for none, at least 1 for any
// positive one (a wait shorter than a millisecond still waits), an infinite
// one capped at about 35 years.
uint64_t ToMillis(absl::Duration duration);

// An image's info from the fields both wire formats carry; an expiry of 0
// means never.
ImageInfo ToImageInfo(std::string_view image_id, uint64_t size,
                      uint64_t generation, uint64_t checksum,
                      int64_t created_unix_micros, int64_t expires_unix_micros);

// A push that left in one message reports its progress once, complete,
// when the server confirmed it (a larger one reports piece by piece).
inline void ReportSentInOne(const ProgressCallback& progress, uint64_t size) {
  if (size > 0 && progress) progress(size, size);
}

// DATA_LOSS unless the digest of the received bytes is the one announced.
absl::Status CheckReceivedChecksum(uint64_t digest, uint64_t announced);

}  // namespace h5depot::internal

#endif  // H5DEPOT_CLIENT_IMAGE_TRANSPORT_INTERNAL_H_
