// The policy choosing the transport of each push, fetch and ranged read:
// the server's data lane while it can be reached (for reads: and its
// server serves READ), gRPC otherwise. Internal to the client.
#ifndef H5DEPOT_CLIENT_LANE_FALLBACK_INTERNAL_H_
#define H5DEPOT_CLIENT_LANE_FALLBACK_INTERNAL_H_

#include <atomic>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "client/src/grpc_transport_internal.h"
#include "client/src/image_transport_internal.h"
#include "client/src/lane_client_internal.h"
#include "h5depot/internal/mutex.h"

namespace h5depot::internal {

// Push, Fetch and Read over the data lane when a connection to it can be
// had (and, for Read, its server agreed to READ), over gRPC when not. If the
// lane cannot be reached the server is asked where it is now (a restarted
// server has a new port), once; failing that, calls use gRPC for the next
// kLaneRetryInterval. Thread-safe.
//
// A call that chooses the lane takes no lock: the lane in use is an atomic
// pointer, and the lanes it ever pointed to live as long as this object
// (one more only when a restarted server's lane moved).
class LaneFallbackTransport final : public ImageTransport {
 public:
  static constexpr absl::Duration kLaneRetryInterval = absl::Seconds(30);

  // `lane` is the lane the server offered when the client connected; null
  // for none, or when the client is not to use one (then every call takes
  // gRPC). `target` is the server's gRPC target, which the lane follows;
  // `credentials` what the client presents on a lane found later.
  LaneFallbackTransport(std::string target, absl::Duration connect_timeout,
                        LaneCredentials credentials,
                        std::shared_ptr<GrpcTransport> grpc,
                        std::shared_ptr<DataLane> lane);
  ~LaneFallbackTransport() override;

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
  absl::StatusOr<LeasedStep> NextStep(std::string_view stream,
                                      std::string_view group,
                                      std::string_view consumer,
                                      const NextOptions& options,
                                      absl::Time deadline) override;
  absl::StatusOr<ImageInfo> PushSealed(std::string_view image_id, int memfd,
                                       uint64_t size,
                                       const PushOptions& options,
                                       absl::Time deadline, bool stream_append,
                                       int release_signal = -1) override;
  absl::StatusOr<ReadResult> Read(std::string_view image_id,
                                  uint64_t generation, uint64_t offset,
                                  void* out, size_t length,
                                  absl::Time deadline) override;

  // A reader whose pin is a PIN on the lane (DataLane::OpenReader).
  // UNIMPLEMENTED or UNAVAILABLE, with nothing pinned, when the lane cannot
  // pin (no lane, a server without PIN, a lane that failed): the caller
  // then pins over gRPC, which says what is wrong if the server cannot be
  // reached at all.
  absl::StatusOr<std::unique_ptr<ImageReader>> OpenPinnedReader(
      std::string_view image_id, uint64_t generation, absl::Time open_deadline,
      absl::Duration read_timeout,
      std::shared_ptr<ImageTransport> reads) override;

 private:
  // A lane connection for one call, and its lane; both null when the call
  // is to go over gRPC, or to fail at once with `unreachable` (not OK when
  // the server answered neither on its lane nor over gRPC).
  struct LaneCall {
    DataLane* lane = nullptr;
    std::unique_ptr<DataLane::Connection> connection;
    absl::Status unreachable;
  };
  LaneCall StartLaneCall(absl::Time deadline) ABSL_LOCKS_EXCLUDED(mutex_);

  // The slow path of StartLaneCall: the lane could not be reached.
  LaneCall RelocateLane(absl::Time connect_deadline)
      ABSL_LOCKS_EXCLUDED(mutex_);

  const std::string target_;
  const absl::Duration connect_timeout_;
  const LaneCredentials credentials_;
  const std::shared_ptr<GrpcTransport> grpc_;

  // The lane calls try; null: gRPC only. Points into lanes_.
  std::atomic<DataLane*> lane_{nullptr};
  // Steady-clock nanoseconds before which calls use gRPC; 0: none.
  std::atomic<int64_t> lane_retry_after_{0};

  Mutex mutex_;
  std::vector<std::shared_ptr<DataLane>> lanes_ ABSL_GUARDED_BY(mutex_);
};

}  // namespace h5depot::internal

#endif  // H5DEPOT_CLIENT_LANE_FALLBACK_INTERNAL_H_
