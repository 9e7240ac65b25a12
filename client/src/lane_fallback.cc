#include <algorithm>
#include <chrono>
#include <utility>

#include "client/src/lane_fallback_internal.h"

namespace h5depot::internal {
namespace {

// The lane is beside a server that just answered over gRPC: it answers at
// once or not at all (a firewall dropping the port), and then the call
// should fall back to gRPC without waiting out connect_timeout.
constexpr absl::Duration kLaneConnectTimeout = absl::Seconds(2);

// The steady clock in nanoseconds: read at a fraction of absl::Now()'s
// cost, and only while a retry interval is running.
int64_t SteadyNanos() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(
             std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

}  // namespace

LaneFallbackTransport::LaneFallbackTransport(
    std::string target, absl::Duration connect_timeout,
    LaneCredentials credentials, std::shared_ptr<GrpcTransport> grpc,
    std::shared_ptr<DataLane> lane)
    : target_(std::move(target)),
      connect_timeout_(connect_timeout),
      credentials_(std::move(credentials)),
      grpc_(std::move(grpc)) {
  if (lane != nullptr) {
    MutexLock lock(&mutex_);
    lanes_.push_back(lane);
    lane_.store(lane.get(), std::memory_order_release);
  }
}

LaneFallbackTransport::~LaneFallbackTransport() = default;

LaneFallbackTransport::LaneCall LaneFallbackTransport::StartLaneCall(
    absl::Time deadline) {
  DataLane* const lane = lane_.load(std::memory_order_acquire);
  if (lane == nullptr) return {};
  const int64_t retry_after = lane_retry_after_.load(std::memory_order_relaxed);
  if (retry_after != 0 && SteadyNanos() < retry_after) return {};
  const absl::Time connect_deadline = std::min(
      deadline, absl::Now() + std::min(connect_timeout_, kLaneConnectTimeout));
  absl::StatusOr<std::unique_ptr<DataLane::Connection>> connection =
      lane->Connect(connect_deadline);
  if (connection.ok()) return {lane, *std::move(connection), {}};
  return RelocateLane(connect_deadline);
}

LaneFallbackTransport::LaneCall LaneFallbackTransport::RelocateLane(
    absl::Time connect_deadline) {
  // A restarted server may have its lane elsewhere: ask where, once.
  absl::StatusOr<ServerLimits> limits = grpc_->GetLimits(connect_deadline);
  if (!limits.ok()) {
    // Down altogether: asking again over gRPC would only say so again.
    LaneCall none;
    if (absl::IsUnavailable(limits.status()))
      none.unreachable = limits.status();
    return none;  // the gRPC call will say what is wrong
  }
  std::shared_ptr<DataLane> fresh = DataLane::ForServer(
      target_, static_cast<uint32_t>(limits->data_lane_port),
      limits->data_lane_unix_path, credentials_);
  absl::StatusOr<std::unique_ptr<DataLane::Connection>> connection =
      absl::UnavailableError("no data lane");
  if (fresh != nullptr) connection = fresh->Connect(connect_deadline);
  MutexLock lock(&mutex_);
  if (fresh != nullptr) lanes_.push_back(fresh);
  lane_.store(fresh.get(), std::memory_order_release);
  if (fresh != nullptr && connection.ok()) {
    return {fresh.get(), *std::move(connection), {}};
  }
  lane_retry_after_.store(
      SteadyNanos() + absl::ToInt64Nanoseconds(kLaneRetryInterval),
      std::memory_order_relaxed);
  return {};
}

absl::StatusOr<ImageInfo> LaneFallbackTransport::Push(
    std::string_view image_id, const PushBytes& bytes,
    const PushOptions& options, absl::Time deadline) {
  LaneCall call = StartLaneCall(deadline);
  if (call.connection != nullptr) {
    // The lane hashes the bytes as it sends them.
    absl::StatusOr<ImageInfo> pushed =
        call.lane->Push(std::move(call.connection), image_id, bytes.data,
                        bytes.size, options, deadline, bytes.stream_append);
    // A server whose lane takes no stream appends takes them over gRPC.
    if (!absl::IsUnimplemented(pushed.status())) return pushed;
  } else if (!call.unreachable.ok()) {
    return call.unreachable;
  }
  return grpc_->Push(image_id, bytes, options, deadline);
}

absl::StatusOr<FetchedImage> LaneFallbackTransport::Fetch(
    std::string_view image_id, const FetchOptions& options,
    const CallDeadline& deadline) {
  LaneCall call = StartLaneCall(deadline.reply);
  if (call.connection != nullptr) {
    return call.lane->Fetch(std::move(call.connection), image_id, options,
                            deadline);
  }
  if (!call.unreachable.ok()) return call.unreachable;
  if (options.only_if_mapped) {
    return absl::FailedPreconditionError(
        "no data lane to map the image's memory over");
  }
  return grpc_->Fetch(image_id, options, deadline);
}

absl::StatusOr<ImageInfo> LaneFallbackTransport::FetchTo(
    std::string_view image_id, const FetchOptions& options,
    const CallDeadline& deadline, const FetchSink& sink) {
  LaneCall call = StartLaneCall(deadline.reply);
  if (call.connection != nullptr) {
    return call.lane->FetchTo(std::move(call.connection), image_id, options,
                              deadline, sink);
  }
  if (!call.unreachable.ok()) return call.unreachable;
  return grpc_->FetchTo(image_id, options, deadline, sink);
}

absl::StatusOr<LeasedStep> LaneFallbackTransport::NextStep(
    std::string_view stream, std::string_view group, std::string_view consumer,
    const NextOptions& options, absl::Time deadline) {
  LaneCall call = StartLaneCall(deadline);
  if (call.connection != nullptr) {
    return call.lane->Next(std::move(call.connection), stream, group, consumer,
                           options, deadline);
  }
  if (!call.unreachable.ok()) return call.unreachable;
  return absl::UnimplementedError("no data lane to take the step over");
}

absl::StatusOr<ImageInfo> LaneFallbackTransport::PushSealed(
    std::string_view image_id, int memfd, uint64_t size,
    const PushOptions& options, absl::Time deadline, bool stream_append,
    int release_signal) {
  LaneCall call = StartLaneCall(deadline);
  if (call.connection != nullptr) {
    return call.lane->PushSealed(std::move(call.connection), image_id, memfd,
                                 size, options, deadline, stream_append,
                                 release_signal);
  }
  if (!call.unreachable.ok()) return call.unreachable;
  return absl::UnimplementedError("no data lane to pass the memfd over");
}

absl::StatusOr<std::unique_ptr<ImageReader>>
LaneFallbackTransport::OpenPinnedReader(std::string_view image_id,
                                        uint64_t generation,
                                        absl::Time open_deadline,
                                        absl::Duration read_timeout,
                                        std::shared_ptr<ImageTransport> reads) {
  LaneCall call = StartLaneCall(open_deadline);
  if (call.connection == nullptr) {
    return absl::UnimplementedError("no data lane to pin over");
  }
  return call.lane->OpenReader(std::move(call.connection), image_id, generation,
                               open_deadline, read_timeout, std::move(reads));
}

absl::StatusOr<ReadResult> LaneFallbackTransport::Read(
    std::string_view image_id, uint64_t generation, uint64_t offset, void* out,
    size_t length, absl::Time deadline) {
  LaneCall call = StartLaneCall(deadline);
  if (call.connection != nullptr) {
    if (call.connection->reads) {
      return call.lane->Read(std::move(call.connection), image_id, generation,
                             offset, out, length, deadline);
    }
    // A server from before READ: its lane carries whole images only.
    call.lane->GiveBack(std::move(call.connection));
  }
  if (!call.unreachable.ok()) return call.unreachable;
  return grpc_->Read(image_id, generation, offset, out, length, deadline);
}

}  // namespace h5depot::internal
