#include <algorithm>
#include <iterator>
#include <limits>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "prometheus/client_metric.h"
#include "prometheus/metric_type.h"
#include "prometheus/text_serializer.h"
#include "server/src/server_metrics_internal.h"
#include "server/src/stream_table_internal.h"

namespace h5depot::server {
namespace {

constexpr Operation kAllOperations[] = {
    Operation::kPush,      Operation::kFetch, Operation::kRead,
    Operation::kStat,      Operation::kList,  Operation::kDelete,
    Operation::kGetLimits, Operation::kWatch};
// Every Operation has its series: ServerMetrics sizes them by this count.
static_assert(std::size(kAllOperations) == ServerMetrics::kOperations);
constexpr Transport kAllTransports[] = {Transport::kGrpc, Transport::kLaneTcp,
                                        Transport::kLaneUnix, Transport::kHttp};
static_assert(std::size(kAllTransports) == ServerMetrics::kTransports);

// The label values, one place for each.
const char* OperationLabel(Operation op) {
  switch (op) {
    case Operation::kPush:
      return "push";
    case Operation::kFetch:
      return "fetch";
    case Operation::kRead:
      return "read";
    case Operation::kStat:
      return "stat";
    case Operation::kList:
      return "list";
    case Operation::kDelete:
      return "delete";
    case Operation::kGetLimits:
      return "get_limits";
    case Operation::kWatch:
      return "watch";
  }
  return "unknown";
}

const char* TransportLabel(Transport transport) {
  switch (transport) {
    case Transport::kGrpc:
      return "grpc";
    case Transport::kLaneTcp:
      return "lane_tcp";
    case Transport::kLaneUnix:
      return "lane_unix";
    case Transport::kHttp:
      return "http";
  }
  return "unknown";
}

bool MovesImageBytes(Operation op) {
  return op == Operation::kPush || op == Operation::kFetch ||
         op == Operation::kRead;
}

prometheus::MetricFamily Family(std::string name, std::string help,
                                prometheus::MetricType type) {
  prometheus::MetricFamily family;
  family.name = std::move(name);
  family.help = std::move(help);
  family.type = type;
  return family;
}

prometheus::ClientMetric Metric(
    std::vector<prometheus::ClientMetric::Label> labels) {
  prometheus::ClientMetric metric;
  metric.label = std::move(labels);
  return metric;
}

// One value with no labels.
prometheus::MetricFamily Single(std::string name, std::string help,
                                prometheus::MetricType type, double value) {
  prometheus::MetricFamily family =
      Family(std::move(name), std::move(help), type);
  prometheus::ClientMetric metric;
  if (type == prometheus::MetricType::Counter) {
    metric.counter.value = value;
  } else {
    metric.gauge.value = value;
  }
  family.metric.push_back(std::move(metric));
  return family;
}

// How many steps of `stream` `group` is behind: appended, from the first
// it has not acknowledged on.
uint64_t LagOf(const StreamState& stream, const StreamGroupState& group) {
  return stream.appended_steps -
         std::min(group.acked_below, stream.appended_steps);
}

// The streams' series (README.md, "Metrics"): totals over every stream,
// and with `name_streams`, one series per stream and per reader group.
void AddStreamFamilies(const std::vector<StreamState>& streams,
                       bool name_streams,
                       std::vector<prometheus::MetricFamily>* families) {
  using prometheus::MetricType;
  uint64_t groups = 0;
  uint64_t queued_steps_total = 0;
  uint64_t queued_bytes_total = 0;
  uint64_t kept_bytes_total = 0;
  uint64_t most_behind = 0;
  for (const StreamState& stream : streams) {
    queued_steps_total += stream.queued_steps;
    queued_bytes_total += stream.queued_bytes;
    kept_bytes_total += stream.kept_bytes;
    groups += stream.groups.size();
    for (const StreamGroupState& group : stream.groups) {
      most_behind = std::max(most_behind, LagOf(stream, group));
    }
  }
  const auto total = [&](const char* name, const char* help, uint64_t value) {
    families->push_back(
        Single(name, help, MetricType::Gauge, static_cast<double>(value)));
  };
  total("h5depot_streams", "Streams the server holds (docs/STREAMS.md).",
        streams.size());
  total("h5depot_stream_groups", "Reader groups of all streams.", groups);
  total("h5depot_streams_queued_steps",
        "Steps of all streams that some reader group has not acknowledged.",
        queued_steps_total);
  total("h5depot_streams_queued_bytes", "Bytes of those steps.",
        queued_bytes_total);
  total("h5depot_streams_kept_bytes",
        "Bytes of every step all streams hold: queued, reserved and step 0.",
        kept_bytes_total);
  total("h5depot_stream_groups_max_lag_steps",
        "The most steps any reader group is behind its stream's newest.",
        most_behind);
  if (!name_streams) return;

  prometheus::MetricFamily appended = Family(
      "h5depot_stream_appended_steps_total",
      "Steps appended to the stream since it was made.", MetricType::Counter);
  prometheus::MetricFamily queued_steps =
      Family("h5depot_stream_queued_steps",
             "Steps some reader group has not acknowledged (the queue's limit "
             "counts them).",
             MetricType::Gauge);
  prometheus::MetricFamily queued_bytes =
      Family("h5depot_stream_queued_bytes", "Bytes of the queued steps.",
             MetricType::Gauge);
  prometheus::MetricFamily kept_bytes = Family(
      "h5depot_stream_kept_bytes",
      "Bytes of every step the stream holds: queued, reserved and step 0.",
      MetricType::Gauge);
  prometheus::MetricFamily lag = Family(
      "h5depot_stream_group_lag_steps",
      "Steps appended that the reader group has not all acknowledged: from "
      "the first it has not, to the newest.",
      MetricType::Gauge);
  prometheus::MetricFamily leased =
      Family("h5depot_stream_group_leased_steps",
             "Steps handed to the group's members and not yet acknowledged.",
             MetricType::Gauge);
  for (const StreamState& stream : streams) {
    const std::vector<prometheus::ClientMetric::Label> labels = {
        {"stream", stream.name}};
    const auto add = [&](prometheus::MetricFamily& family, uint64_t value) {
      prometheus::ClientMetric metric = Metric(labels);
      if (family.type == MetricType::Counter) {
        metric.counter.value = static_cast<double>(value);
      } else {
        metric.gauge.value = static_cast<double>(value);
      }
      family.metric.push_back(std::move(metric));
    };
    add(appended, stream.appended_steps);
    add(queued_steps, stream.queued_steps);
    add(queued_bytes, stream.queued_bytes);
    add(kept_bytes, stream.kept_bytes);
    for (const StreamGroupState& group : stream.groups) {
      const std::vector<prometheus::ClientMetric::Label> group_labels = {
          {"stream", stream.name}, {"group", group.name}};
      prometheus::ClientMetric behind = Metric(group_labels);
      behind.gauge.value = static_cast<double>(LagOf(stream, group));
      lag.metric.push_back(std::move(behind));
      prometheus::ClientMetric held = Metric(group_labels);
      held.gauge.value = static_cast<double>(group.leased_steps);
      leased.metric.push_back(std::move(held));
    }
  }
  for (prometheus::MetricFamily* family :
       {&appended, &queued_steps, &queued_bytes, &kept_bytes, &lag, &leased}) {
    families->push_back(std::move(*family));
  }
}

}  // namespace

ServerMetrics::ServerMetrics(const ImageStore* store, bool name_streams)
    : store_(store), name_streams_(name_streams) {}

ServerMetrics::~ServerMetrics() = default;

void ServerMetrics::RecordCall(Operation op, Transport transport,
                               absl::StatusCode code, uint64_t image_bytes,
                               absl::Duration elapsed) {
  CallSeries& series =
      series_[static_cast<size_t>(op)][static_cast<size_t>(transport)];
  const size_t code_index =
      std::min(static_cast<size_t>(code), kCodes - 1);  // 16: UNAUTHENTICATED
  series.calls[code_index].fetch_add(1, std::memory_order_relaxed);
  if (image_bytes != 0) {
    series.image_bytes.fetch_add(image_bytes, std::memory_order_relaxed);
  }
  const double seconds = absl::ToDoubleSeconds(elapsed);
  // The first bucket whose bound is at least `seconds` ("le"), else +Inf.
  const size_t bucket = static_cast<size_t>(
      std::lower_bound(kLatencyBucketsSeconds.begin(),
                       kLatencyBucketsSeconds.end(), seconds) -
      kLatencyBucketsSeconds.begin());
  series.latency_buckets[bucket].fetch_add(1, std::memory_order_relaxed);
  series.latency_sum_nanos.fetch_add(static_cast<uint64_t>(std::max<int64_t>(
                                         0, absl::ToInt64Nanoseconds(elapsed))),
                                     std::memory_order_relaxed);
}

uint64_t ServerMetrics::SucceededCalls(Operation op) const {
  uint64_t calls = 0;
  for (const CallSeries& series : series_[static_cast<size_t>(op)]) {
    calls += series.calls[static_cast<size_t>(absl::StatusCode::kOk)].load(
        std::memory_order_relaxed);
  }
  return calls;
}

void ServerMetrics::LaneConnectionOpened(Transport transport) {
  lane_connections_[static_cast<size_t>(transport)].fetch_add(
      1, std::memory_order_relaxed);
  lane_connections_total_[static_cast<size_t>(transport)].fetch_add(
      1, std::memory_order_relaxed);
}

void ServerMetrics::LaneConnectionClosed(Transport transport) {
  lane_connections_[static_cast<size_t>(transport)].fetch_sub(
      1, std::memory_order_relaxed);
}

std::vector<prometheus::MetricFamily> ServerMetrics::Collect() const {
  using prometheus::MetricType;
  prometheus::MetricFamily calls =
      Family("h5depot_calls_total",
             "Calls ended, by operation, transport and status code.",
             MetricType::Counter);
  prometheus::MetricFamily bytes =
      Family("h5depot_image_bytes_total",
             "Bytes of image data pushed, fetched or read, by operation and "
             "transport.",
             MetricType::Counter);
  prometheus::MetricFamily latency =
      Family("h5depot_call_duration_seconds",
             "How long calls took, from their request to their end, by "
             "operation and transport.",
             MetricType::Histogram);
  for (Operation op : kAllOperations) {
    for (Transport transport : kAllTransports) {
      const CallSeries& series =
          series_[static_cast<size_t>(op)][static_cast<size_t>(transport)];
      uint64_t count = 0;
      for (size_t code = 0; code < kCodes; ++code) {
        const uint64_t n = series.calls[code].load(std::memory_order_relaxed);
        count += n;
        // Every OK series from the start, so that a rate over them begins
        // at 0; a failure's once it happened.
        if (n == 0 && code != 0) continue;
        prometheus::ClientMetric metric = Metric(
            {{"operation", OperationLabel(op)},
             {"transport", TransportLabel(transport)},
             {"code",
              absl::StatusCodeToString(static_cast<absl::StatusCode>(code))}});
        metric.counter.value = static_cast<double>(n);
        calls.metric.push_back(std::move(metric));
      }
      if (MovesImageBytes(op)) {
        prometheus::ClientMetric metric =
            Metric({{"operation", OperationLabel(op)},
                    {"transport", TransportLabel(transport)}});
        metric.counter.value = static_cast<double>(
            series.image_bytes.load(std::memory_order_relaxed));
        bytes.metric.push_back(std::move(metric));
      }
      prometheus::ClientMetric histogram =
          Metric({{"operation", OperationLabel(op)},
                  {"transport", TransportLabel(transport)}});
      uint64_t cumulative = 0;
      for (size_t bucket = 0; bucket < kBuckets; ++bucket) {
        cumulative +=
            series.latency_buckets[bucket].load(std::memory_order_relaxed);
        prometheus::ClientMetric::Bucket out;
        out.cumulative_count = cumulative;
        out.upper_bound = bucket < kLatencyBucketsSeconds.size()
                              ? kLatencyBucketsSeconds[bucket]
                              : std::numeric_limits<double>::infinity();
        histogram.histogram.bucket.push_back(out);
      }
      // The buckets are read after the codes: a call recorded meanwhile
      // may be in one and not the other until the next scrape.
      histogram.histogram.sample_count = cumulative;
      histogram.histogram.sample_sum =
          static_cast<double>(
              series.latency_sum_nanos.load(std::memory_order_relaxed)) *
          1e-9;
      if (count != 0 || cumulative != 0) {
        latency.metric.push_back(std::move(histogram));
      }
    }
  }

  prometheus::MetricFamily connections = Family(
      "h5depot_lane_connections",
      "Data lane connections open now, by transport.", MetricType::Gauge);
  prometheus::MetricFamily connections_total = Family(
      "h5depot_lane_connections_total",
      "Data lane connections accepted, by transport.", MetricType::Counter);
  for (Transport transport : {Transport::kLaneTcp, Transport::kLaneUnix}) {
    const size_t i = static_cast<size_t>(transport);
    prometheus::ClientMetric open =
        Metric({{"transport", TransportLabel(transport)}});
    open.gauge.value = static_cast<double>(
        lane_connections_[i].load(std::memory_order_relaxed));
    connections.metric.push_back(std::move(open));
    prometheus::ClientMetric accepted =
        Metric({{"transport", TransportLabel(transport)}});
    accepted.counter.value = static_cast<double>(
        lane_connections_total_[i].load(std::memory_order_relaxed));
    connections_total.metric.push_back(std::move(accepted));
  }

  prometheus::MetricFamily grpc_connections =
      Family("h5depot_grpc_connections",
             "gRPC connections open now, by socket (tcp: TCP or TLS; unix).",
             MetricType::Gauge);
  const GrpcConnectionCensus::Counts grpc_counts = grpc_connections_.Count();
  for (const auto& [socket, count] :
       {std::pair{"tcp", grpc_counts.tcp},
        std::pair{"unix", grpc_counts.unix_socket}}) {
    prometheus::ClientMetric open = Metric({{"socket", socket}});
    open.gauge.value = static_cast<double>(count);
    grpc_connections.metric.push_back(std::move(open));
  }

  std::vector<prometheus::MetricFamily> families;
  families.push_back(std::move(calls));
  families.push_back(std::move(bytes));
  families.push_back(std::move(latency));
  families.push_back(std::move(connections));
  families.push_back(std::move(connections_total));
  families.push_back(std::move(grpc_connections));

  const StoreStats stats = store_->Stats();
  const auto gauge = [&](const char* name, const char* help, uint64_t value) {
    families.push_back(
        Single(name, help, MetricType::Gauge, static_cast<double>(value)));
  };
  gauge("h5depot_images", "Images stored (their current generations).",
        stats.image_count);
  gauge("h5depot_stored_bytes", "Bytes of the images' current generations.",
        stats.stored_bytes);
  gauge("h5depot_reserved_bytes",
        "Bytes counted against --max-memory: current generations, pushes "
        "under way, and generations replaced or deleted that readers hold.",
        stats.reserved_bytes);
  gauge("h5depot_max_memory_bytes", "The --max-memory limit.",
        store_->options().max_memory_bytes);
  gauge("h5depot_retained_bytes",
        "Freed large buffers kept for the next push of about their size "
        "(not counted against --max-memory).",
        stats.retained_bytes);
  gauge("h5depot_pending_waits",
        "Fetches and stats waiting for an image or a newer generation.",
        stats.pending_waits);
  gauge("h5depot_leased_generations",
        "Generations whose memory clients on this host have mapped.",
        stats.leased_generations);
  gauge("h5depot_leased_bytes", "Bytes of the leased generations.",
        stats.leased_bytes);
  gauge("h5depot_leased_superseded_bytes",
        "Bytes of leased generations no longer current (replaced or "
        "deleted while mapped), still counted against --max-memory.",
        stats.leased_superseded_bytes);
  families.push_back(Single("h5depot_expired_images_total",
                            "Images deleted at the end of their time to live.",
                            MetricType::Counter,
                            static_cast<double>(stats.expired_images)));
  families.push_back(Single("h5depot_evicted_images_total",
                            "Images deleted to make room (--eviction=lru).",
                            MetricType::Counter,
                            static_cast<double>(stats.evicted_images)));
  families.push_back(Single("h5depot_evicted_bytes_total",
                            "Bytes of the images deleted to make room.",
                            MetricType::Counter,
                            static_cast<double>(stats.evicted_bytes)));
  AddStreamFamilies(store_->streams().DescribeAll(), name_streams_, &families);
  return families;
}

MetricsEndpoint::~MetricsEndpoint() = default;

absl::StatusOr<std::unique_ptr<MetricsEndpoint>> MetricsEndpoint::Start(
    const std::string& listen, std::shared_ptr<ServerMetrics> metrics) {
  HttpServerOptions options;
  options.listen = listen;
  options.threads = 1;  // a scrape is rare and quick
  options.max_connections = 64;
  absl::StatusOr<std::unique_ptr<HttpServer>> server =
      HttpServer::Start(options, [metrics](const HttpRequest& request) {
        HttpAnswer answer;
        if (request.raw_path() != "/metrics") {
          answer.status = 404;
          answer.text = "the metrics are at /metrics\n";
          return answer;
        }
        if (request.method() != "GET" && request.method() != "HEAD") {
          answer.status = 405;
          answer.headers = {{"Allow", "GET, HEAD"}};
          return answer;
        }
        answer.headers = {
            {"Content-Type", "text/plain; version=0.0.4; charset=utf-8"}};
        answer.text =
            prometheus::TextSerializer().Serialize(metrics->Collect());
        return answer;
      });
  if (!server.ok()) {
    return absl::UnavailableError(absl::StrCat(
        "cannot serve metrics on ", listen, ": ", server.status().message()));
  }
  return std::unique_ptr<MetricsEndpoint>(
      new MetricsEndpoint(*std::move(server), std::move(metrics)));
}

}  // namespace h5depot::server
