// h5depot::server::ServerMetrics: what h5depotd counts, served to Prometheus
// in its text format over HTTP (--metrics-listen). Internal to the server.
//
// Every transport's codec reports each call it ends (RecordCall): its
// operation, transport and status code, the image bytes it moved and how
// long it took. Data lane connections are counted as they open and close.
// The store's state (images, memory, waits, leases, expiries) is read from
// ImageStore::Stats when scraped, and its streams' (queues, groups' lag)
// from its StreamTable, so they cost the hot path nothing.
//
// The series and the bucket bounds below are the contract a dashboard is
// built on; README.md ("Metrics") lists them.
//
// Cost: recording is a few relaxed atomic additions into counters that
// exist from the start (one per operation, transport and status code), no
// lock and no allocation, so that calls on many threads do not meet.
// Thread safety: every method may be called concurrently.
#ifndef H5DEPOT_SERVER_SERVER_METRICS_INTERNAL_H_
#define H5DEPOT_SERVER_SERVER_METRICS_INTERNAL_H_

#include <array>
#include <atomic>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "h5depot/server/image_store.h"
#include "prometheus/collectable.h"
#include "prometheus/metric_family.h"
#include "server/src/depot_operations_internal.h"
#include "server/src/grpc_connections_internal.h"
#include "server/src/http_server_internal.h"

namespace h5depot::server {

class ServerMetrics final : public prometheus::Collectable {
 public:
  // Reads the store's gauges from `store` when scraped; `store` must
  // outlive the metrics. With `name_streams`, each stream and reader
  // group has series of its own, labelled with its name; without, the
  // streams are counted together and no name is shown.
  explicit ServerMetrics(const ImageStore* store, bool name_streams = false);
  ~ServerMetrics() override;

  // One call of `op` over `transport` ended with `code` after `elapsed`,
  // having moved `image_bytes` bytes of image data (pushed, fetched or
  // read; 0 for calls that move none).
  void RecordCall(Operation op, Transport transport, absl::StatusCode code,
                  uint64_t image_bytes, absl::Duration elapsed);

  // Calls of `op` that succeeded so far, over every transport.
  uint64_t SucceededCalls(Operation op) const;

  // A data lane connection over `transport` was accepted, or closed.
  void LaneConnectionOpened(Transport transport);
  void LaneConnectionClosed(Transport transport);

  // The gRPC server's connections, counted when scraped: the server
  // building it finds it there and has its Unix socket's connections noted.
  GrpcConnectionCensus* grpc_connections() { return &grpc_connections_; }

  // prometheus::Collectable: every series, as of now.
  std::vector<prometheus::MetricFamily> Collect() const override;

  // Operation's values, each with its series (kAllOperations in
  // server_metrics.cc lists them, and is checked against this).
  static constexpr size_t kOperations = 8;
  // Transport's values (kAllTransports, likewise).
  static constexpr size_t kTransports = 4;

  // Upper bounds of the latency histogram's buckets, in seconds (the last,
  // +Inf, is implicit).
  static constexpr std::array<double, 14> kLatencyBucketsSeconds = {
      0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005,
      0.01,    0.025,  0.05,    0.1,    0.25,  1,      10};

 private:
  static constexpr size_t kCodes = 17;  // absl::StatusCode 0 to 16
  static constexpr size_t kBuckets = kLatencyBucketsSeconds.size() + 1;

  struct CallSeries {
    std::array<std::atomic<uint64_t>, kCodes> calls{};
    std::atomic<uint64_t> image_bytes{0};
    std::array<std::atomic<uint64_t>, kBuckets> latency_buckets{};
    std::atomic<uint64_t> latency_sum_nanos{0};
  };

  const ImageStore* const store_;
  const bool name_streams_;
  std::array<std::array<CallSeries, kTransports>, kOperations> series_;
  std::array<std::atomic<int64_t>, kTransports> lane_connections_{};
  std::array<std::atomic<uint64_t>, kTransports> lane_connections_total_{};
  mutable GrpcConnectionCensus grpc_connections_;  // Count() when scraped
};

// An HTTP listener serving `metrics` at /metrics (an HttpServer, as the
// gateway's, with one thread).
class MetricsEndpoint {
 public:
  // Listens on `listen` ("HOST:PORT"; port 0: any free one). UNAVAILABLE
  // if it cannot.
  static absl::StatusOr<std::unique_ptr<MetricsEndpoint>> Start(
      const std::string& listen, std::shared_ptr<ServerMetrics> metrics);
  ~MetricsEndpoint();

  // The port it listens on.
  int port() const { return server_->port(); }

 private:
  MetricsEndpoint(std::unique_ptr<HttpServer> server,
                  std::shared_ptr<ServerMetrics> metrics)
      : server_(std::move(server)), metrics_(std::move(metrics)) {}

  std::unique_ptr<HttpServer> server_;
  std::shared_ptr<ServerMetrics> metrics_;
};

}  // namespace h5depot::server

#endif  // H5DEPOT_SERVER_SERVER_METRICS_INTERNAL_H_
