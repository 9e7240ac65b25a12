// The client's gRPC transport: push, fetch and ranged reads on gRPC's raw
// byte buffers (chunks copied once, from the received slices straight to
// their destination), readers, and the calls that only gRPC carries (stat,
// list, delete, limits). Internal to the client.
#ifndef H5DEPOT_CLIENT_GRPC_TRANSPORT_INTERNAL_H_
#define H5DEPOT_CLIENT_GRPC_TRANSPORT_INTERNAL_H_

#include <grpcpp/generic/generic_stub.h>
#include <grpcpp/grpcpp.h>

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>

#include "absl/base/call_once.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "client/src/image_transport_internal.h"
#include "h5depot/client.h"
#include "h5depot/v1/depot.grpc.pb.h"

namespace h5depot::internal {

// One gRPC channel to one server. Thread-safe. Errors carry the server's
// codes (client.h) without an operation prefix, which Client adds. Each
// call holds a GrpcUse (h5depot/rpc/grpc_runtime.h) while it is in gRPC;
// whoever destroys a transport or a reader holds one too.
class GrpcTransport final : public ImageTransport,
                            public std::enable_shared_from_this<GrpcTransport> {
 public:
  // Opens a channel of its own to `target` and asks the server's limits,
  // which proves that h5depotd answers there: UNAVAILABLE if it does not
  // within options.connect_timeout, INVALID_ARGUMENT for a target gRPC
  // cannot use. The message names the target.
  static absl::StatusOr<std::shared_ptr<GrpcTransport>> Connect(
      const std::string& target, const ClientOptions& options);
  // The same channel without asking anything yet, for a client that knows
  // the server answers (its data lane said so): the first call that needs
  // the server's limits (a push over gRPC) asks for them.
  // limits_at_connect() is empty. INVALID_ARGUMENT for a target gRPC
  // cannot use.
  static absl::StatusOr<std::shared_ptr<GrpcTransport>> Open(
      const std::string& target, const ClientOptions& options);

  ~GrpcTransport() override;
  GrpcTransport(const GrpcTransport&) = delete;
  GrpcTransport& operator=(const GrpcTransport&) = delete;

  // The limits the server gave when Connect asked (empty after Open).
  const ServerLimits& limits_at_connect() const { return limits_at_connect_; }

  absl::StatusOr<ImageInfo> Push(std::string_view image_id,
                                 const PushBytes& bytes,
                                 const PushOptions& options,
                                 absl::Time deadline) override;
  absl::StatusOr<FetchedImage> Fetch(std::string_view image_id,
                                     const FetchOptions& options,
                                     const CallDeadline& deadline) override;
  absl::StatusOr<ImageInfo> FetchTo(std::string_view image_id,
                                    const FetchOptions& options,
                                    const CallDeadline& deadline,
                                    const FetchSink& sink) override;
  absl::StatusOr<ReadResult> Read(std::string_view image_id,
                                  uint64_t generation, uint64_t offset,
                                  void* out, size_t length,
                                  absl::Time deadline) override;

  // A reader pinning `generation` (0: current) for as long as it lives,
  // opened by `open_deadline` (DEADLINE_EXCEEDED). The pin is a stream of
  // this transport; the reads are Read calls of `reads` (null: this
  // transport), which the reader keeps alive with this one, each ending by
  // the deadline given, or by `read_timeout` (plus the transfer allowance
  // of CallDeadline) from its start. Refused opens carry the server's code
  // (NOT_FOUND, INVALID_ARGUMENT, ...).
  absl::StatusOr<std::unique_ptr<ImageReader>> OpenReader(
      std::string_view image_id, uint64_t generation, absl::Time open_deadline,
      absl::Duration read_timeout,
      std::shared_ptr<ImageTransport> reads = nullptr);

  // The calls only gRPC carries.
  absl::StatusOr<ImageInfo> Stat(std::string_view image_id, absl::Duration wait,
                                 uint64_t newer_than, absl::Time deadline);
  absl::StatusOr<ListPage> List(const ListOptions& options,
                                absl::Time deadline);
  absl::Status Delete(std::string_view image_id,
                      std::optional<uint64_t> if_generation_match,
                      absl::Time deadline);
  absl::StatusOr<ServerLimits> GetLimits(absl::Time deadline);
  // Streams (Client::CreateStream and the rest; appends are Push with
  // PushBytes::stream_append).
  absl::StatusOr<StreamInfo> CreateStream(std::string_view stream,
                                          const StreamPolicy& policy,
                                          absl::Time deadline);
  absl::StatusOr<StreamInfo> FinishStream(std::string_view stream,
                                          absl::Time deadline);
  absl::StatusOr<StreamInfo> StatStream(std::string_view stream,
                                        absl::Time deadline);
  // `group` empty: the whole stream.
  absl::Status DeleteStream(std::string_view stream, std::string_view group,
                            absl::Time deadline);
  // ImageTransport's: over gRPC, a step of at most 64 KiB comes with its
  // bytes; a larger one is to be fetched by its id.
  absl::StatusOr<LeasedStep> NextStep(std::string_view stream,
                                      std::string_view group,
                                      std::string_view consumer,
                                      const NextOptions& options,
                                      absl::Time deadline) override;
  // `copy`: a cluster's copy of an acknowledgement made on another
  // server (AckStepRequest::replica; `consumer` is not used).
  absl::Status AckStep(std::string_view stream, std::string_view group,
                       std::string_view consumer, uint64_t step,
                       absl::Time deadline, bool copy = false);
  // OK once the stream's queue has room for `size` bytes; `*waited` says
  // whether the server had to wait for it.
  absl::Status AwaitStreamRoom(std::string_view stream, uint64_t size,
                               absl::Duration wait, absl::Time deadline,
                               bool* waited);
  // A watch, started (its first message received) by `start_deadline`.
  absl::StatusOr<std::unique_ptr<ImageWatch>> Watch(const WatchOptions& options,
                                                    absl::Time start_deadline);

 private:
  GrpcTransport(std::string target, const ClientOptions& options);

  // The channel and its stubs.
  struct Stubs {
    std::shared_ptr<grpc::Channel> channel;
    std::unique_ptr<v1::Depot::Stub> stub;
    // Push, Fetch, Read and OpenReader, which move image bytes, go through
    // this one, so that messages arrive as raw byte buffers.
    std::unique_ptr<grpc::GenericStub> generic;
  };
  // Before each call: the channel, made by the first call (making one, and
  // starting gRPC's runtime, costs more than a lane's whole first contact,
  // so a client whose calls all take the lane never pays it), and
  // ReconnectIfDown'd.
  // INVALID_ARGUMENT if gRPC cannot use the target.
  absl::StatusOr<const Stubs*> ChannelFor(absl::Time deadline);

  // If the channel failed to connect, tries again at once and waits
  // briefly (not past `deadline`) for it to connect, so that a server that
  // is back is used at once however long it was away.
  static void ReconnectIfDown(grpc::Channel& channel, absl::Time deadline);

  const std::string target_;
  const ClientOptions options_;
  absl::once_flag stubs_made_;
  Stubs stubs_;                 // set once, under stubs_made_
  absl::Status channel_error_;  // the same
  // What a push sends per message: what the client asked, at most what
  // the server takes, once `limits` are known (Connect, or the first push).
  void KnowLimits(const ServerLimits& limits);
  absl::StatusOr<uint64_t> ChunkBytes(absl::Time deadline);
  const uint64_t requested_chunk_bytes_;
  std::atomic<uint64_t> chunk_bytes_{0};  // 0: not known yet
  ServerLimits limits_at_connect_;
};

}  // namespace h5depot::internal

#endif  // H5DEPOT_CLIENT_GRPC_TRANSPORT_INTERNAL_H_
