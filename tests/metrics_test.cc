// h5depotd --metrics-listen: a real server's /metrics, scraped over HTTP as
// Prometheus would, while real clients push, fetch and stat over the data
// lane (TCP and Unix socket) and gRPC.
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/string_view.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "gtest/gtest.h"
#include "h5depot/client.h"
#include "h5depot/testing/hdf5_images.h"
#include "h5depot/testing/server_process.h"

namespace h5depot {
namespace {

using ::h5depot::testing::MakeHdf5Image;
using ::h5depot::testing::ServerProcess;
using ::h5depot::testing::ServerProcessOptions;

// The body of an HTTP/1.0 GET of `path` from 127.0.0.1:`port`.
absl::StatusOr<std::string> HttpGet(int port, const std::string& path) {
  const int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return absl::InternalError("socket");
  sockaddr_in address{};
  address.sin_family = AF_INET;
  address.sin_port = htons(static_cast<uint16_t>(port));
  address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (connect(fd, reinterpret_cast<const sockaddr*>(&address),
              sizeof(address)) != 0) {
    close(fd);
    return absl::UnavailableError(absl::StrCat("connect to port ", port));
  }
  const std::string request =
      absl::StrCat("GET ", path, " HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n");
  if (send(fd, request.data(), request.size(), MSG_NOSIGNAL) !=
      static_cast<ssize_t>(request.size())) {
    close(fd);
    return absl::UnavailableError("send");
  }
  std::string response;
  char buffer[65536];
  ssize_t got;
  while ((got = recv(fd, buffer, sizeof(buffer), 0)) > 0) {
    response.append(buffer, static_cast<size_t>(got));
  }
  close(fd);
  const size_t body = response.find("\r\n\r\n");
  if (response.rfind("HTTP/1.", 0) != 0 || body == std::string::npos) {
    return absl::DataLossError(absl::StrCat("not an HTTP answer: ", response));
  }
  if (response.find(" 200 ") > response.find("\r\n")) {
    return absl::NotFoundError(response.substr(0, response.find("\r\n")));
  }
  return response.substr(body + 4);
}

// The samples of a scrape in the text format, by series as written
// ("name{label="value",...}"), labels in the order the server writes them.
std::map<std::string, double> Samples(const std::string& text) {
  std::map<std::string, double> samples;
  for (absl::string_view line : absl::StrSplit(text, '\n')) {
    if (line.empty() || line[0] == '#') continue;
    const size_t space = line.rfind(' ');
    double value = 0;
    if (space == absl::string_view::npos ||
        !absl::SimpleAtod(line.substr(space + 1), &value)) {
      continue;
    }
    samples[std::string(line.substr(0, space))] = value;
  }
  return samples;
}

std::string Calls(const std::string& operation, const std::string& transport,
                  const std::string& code) {
  return absl::StrCat("h5depot_calls_total{operation=\"", operation,
                      "\",transport=\"", transport, "\",code=\"", code, "\"}");
}

std::string PerTransport(const std::string& name, const std::string& operation,
                         const std::string& transport) {
  return absl::StrCat(name, "{operation=\"", operation, "\",transport=\"",
                      transport, "\"}");
}

class MetricsTest : public ::testing::Test {
 protected:
  void SetUp() override { Restart({}); }

  // A new server, with metrics and `flags`.
  void Restart(const std::vector<std::string>& flags) {
    server_.reset();
    ServerProcessOptions options;
    options.unix_socket = true;
    options.extra_flags = {"--metrics-listen=127.0.0.1:0"};
    options.extra_flags.insert(options.extra_flags.end(), flags.begin(),
                               flags.end());
    auto server = ServerProcess::Start(options);
    ASSERT_TRUE(server.ok()) << server.status();
    server_ = *std::move(server);
    port_ = server_->ReportedPort("h5depotd metrics on http://");
    ASSERT_NE(port_, 0) << server_->startup_output();
  }

  std::map<std::string, double> Scrape() {
    absl::StatusOr<std::string> body = HttpGet(port_, "/metrics");
    EXPECT_TRUE(body.ok()) << body.status();
    return body.ok() ? Samples(*body) : std::map<std::string, double>();
  }

  // A scrape once every series in `expected` has reached at least its
  // value, or the last one after 60 s: the server counts a call as the call
  // ends, which can be just after its answer reached the client.
  std::map<std::string, double> ScrapeWhenCounted(
      const std::map<std::string, double>& expected) {
    const absl::Time deadline = absl::Now() + absl::Seconds(60);
    for (;;) {
      std::map<std::string, double> scraped = Scrape();
      bool counted = true;
      for (const auto& [series, value] : expected) {
        if (scraped[series] < value) counted = false;
      }
      if (counted || absl::Now() >= deadline) return scraped;
    }
  }

  std::unique_ptr<Client> Connect(const std::string& target,
                                  bool use_data_lane = true) {
    ClientOptions options;
    options.use_data_lane = use_data_lane;
    auto client = Client::Connect(target, options);
    EXPECT_TRUE(client.ok()) << client.status();
    return client.ok() ? *std::move(client) : nullptr;
  }

  std::unique_ptr<ServerProcess> server_;
  int port_ = 0;
};

TEST_F(MetricsTest, CountsMoveWithRealCallsOnEveryTransport) {
  std::map<std::string, double> before = Scrape();
  // Every OK series is there from the start, at 0.
  ASSERT_EQ(before.count(Calls("push", "lane_tcp", "OK")), 1u);
  EXPECT_EQ(before[Calls("push", "lane_tcp", "OK")], 0);
  EXPECT_EQ(before["h5depot_images"], 0);

  const std::string image = MakeHdf5Image(256 << 10, 1);
  std::unique_ptr<Client> tcp = Connect(server_->tcp_target());
  std::unique_ptr<Client> unix_socket = Connect(server_->unix_target());
  std::unique_ptr<Client> grpc_only =
      Connect(server_->tcp_target(), /*use_data_lane=*/false);
  ASSERT_TRUE(tcp && unix_socket && grpc_only);
  for (int i = 0; i < 3; ++i) {
    ASSERT_TRUE(tcp->Push("m/a", image.data(), image.size()).ok());
  }
  ASSERT_TRUE(tcp->Fetch("m/a").ok());
  ASSERT_TRUE(tcp->Fetch("m/a").ok());
  EXPECT_EQ(tcp->Fetch("m/absent").status().code(),
            absl::StatusCode::kNotFound);
  ASSERT_TRUE(unix_socket->Fetch("m/a").ok());
  ASSERT_TRUE(grpc_only->Push("m/b", image.data(), image.size()).ok());
  ASSERT_TRUE(grpc_only->Fetch("m/b").ok());
  ASSERT_TRUE(tcp->Stat("m/a").ok());  // Stat is gRPC's on every client

  std::map<std::string, double> after = ScrapeWhenCounted({
      {Calls("push", "lane_tcp", "OK"), 3},
      {Calls("fetch", "lane_tcp", "OK"), 2},
      {Calls("fetch", "lane_tcp", "NOT_FOUND"), 1},
      {Calls("fetch", "lane_unix", "OK"), 1},
      {Calls("push", "grpc", "OK"), 1},
      {Calls("fetch", "grpc", "OK"), 1},
      {Calls("stat", "grpc", "OK"), 1},
  });
  EXPECT_EQ(after[Calls("push", "lane_tcp", "OK")], 3);
  EXPECT_EQ(after[Calls("fetch", "lane_tcp", "OK")], 2);
  EXPECT_EQ(after[Calls("fetch", "lane_tcp", "NOT_FOUND")], 1);
  EXPECT_EQ(after[Calls("fetch", "lane_unix", "OK")], 1);
  EXPECT_EQ(after[Calls("push", "grpc", "OK")], 1);
  EXPECT_EQ(after[Calls("fetch", "grpc", "OK")], 1);
  EXPECT_GE(after[Calls("stat", "grpc", "OK")], 1);

  // Image bytes: exactly the pushes' and fetches' over the lane's TCP; at
  // least the image over gRPC, whose chunk messages carry a little framing.
  EXPECT_EQ(
      after[PerTransport("h5depot_image_bytes_total", "push", "lane_tcp")],
      3.0 * image.size());
  EXPECT_EQ(
      after[PerTransport("h5depot_image_bytes_total", "fetch", "lane_tcp")],
      2.0 * image.size());
  EXPECT_GE(after[PerTransport("h5depot_image_bytes_total", "push", "grpc")],
            1.0 * image.size());
  EXPECT_GE(after[PerTransport("h5depot_image_bytes_total", "fetch", "grpc")],
            1.0 * image.size());

  // Latency: every call in the histogram, each in some bucket.
  EXPECT_EQ(after[PerTransport("h5depot_call_duration_seconds_count", "push",
                               "lane_tcp")],
            3);
  EXPECT_EQ(after[absl::StrCat("h5depot_call_duration_seconds_bucket{"
                               "operation=\"push\",transport=\"lane_tcp\","
                               "le=\"+Inf\"}")],
            3);
  EXPECT_GT(after[PerTransport("h5depot_call_duration_seconds_sum", "push",
                               "lane_tcp")],
            0);

  // The store, read when scraped.
  EXPECT_EQ(after["h5depot_images"], 2);
  EXPECT_EQ(after["h5depot_stored_bytes"], 2.0 * image.size());
  EXPECT_GE(after["h5depot_reserved_bytes"], 2.0 * image.size());
  EXPECT_GT(after["h5depot_max_memory_bytes"], 0);
  EXPECT_GE(after["h5depot_lane_connections{transport=\"lane_tcp\"}"], 1);
  EXPECT_GE(after["h5depot_lane_connections{transport=\"lane_unix\"}"], 1);
}

TEST_F(MetricsTest, RefusalsAreCountedByTheirCode) {
  std::unique_ptr<Client> tcp = Connect(server_->tcp_target());
  ASSERT_TRUE(tcp);
  const std::string not_hdf5(4096, 'x');
  EXPECT_EQ(
      tcp->Push("m/bad", not_hdf5.data(), not_hdf5.size()).status().code(),
      absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(tcp->Delete("m/absent").code(), absl::StatusCode::kNotFound);
  std::map<std::string, double> after = ScrapeWhenCounted({
      {Calls("push", "lane_tcp", "INVALID_ARGUMENT"), 1},
      {Calls("delete", "grpc", "NOT_FOUND"), 1},
  });
  EXPECT_EQ(after[Calls("push", "lane_tcp", "INVALID_ARGUMENT")], 1);
  EXPECT_EQ(after[Calls("delete", "grpc", "NOT_FOUND")], 1);
  // A refused push stored nothing and moved no counted byte.
  EXPECT_EQ(
      after[PerTransport("h5depot_image_bytes_total", "push", "lane_tcp")], 0);
  EXPECT_EQ(after["h5depot_images"], 0);
}

// Every operation has its series from the start, watch included, and a
// watch that ends is counted (a wait on the scrapes: the server counts
// the call when it sends the watch's final status, after the client has
// gone).
TEST_F(MetricsTest, WatchesAreCounted) {
  std::map<std::string, double> before = Scrape();
  ASSERT_EQ(before.count(Calls("watch", "grpc", "OK")), 1u);
  std::unique_ptr<Client> tcp = Connect(server_->tcp_target());
  ASSERT_TRUE(tcp);
  WatchOptions options;
  options.prefix = "w/";
  absl::StatusOr<std::unique_ptr<ImageWatch>> watch = tcp->Watch(options);
  ASSERT_TRUE(watch.ok()) << watch.status();
  const std::string image = MakeHdf5Image(4096, 1);
  ASSERT_TRUE(tcp->Push("w/a", image.data(), image.size()).ok());
  ASSERT_TRUE((*watch)->Next(absl::Now() + absl::Seconds(60)).ok());
  (*watch)->Cancel();
  watch->reset();
  EXPECT_EQ(ScrapeWhenCounted({{Calls("watch", "grpc", "CANCELLED"),
                                1}})[Calls("watch", "grpc", "CANCELLED")],
            1);
}

// A stream's queue and each reader group's lag show in the metrics as
// they are: steps appended, queued and held, and how far behind a group
// is; a deleted stream's series go away.
// Without --metrics-stream-names only the totals show, naming nothing.
TEST_F(MetricsTest, StreamsShowTheirQueuesAndTheirGroupsLag) {
  ASSERT_NO_FATAL_FAILURE(Restart({"--metrics-stream-names"}));
  std::unique_ptr<Client> client = Connect(server_->unix_target());
  ASSERT_TRUE(client);
  ASSERT_EQ(Scrape()["h5depot_streams"], 0);
  const std::string stream = "metrics/stream";
  NextOptions at_once;
  for (const char* group : {"fast", "slow"}) {
    ASSERT_TRUE(absl::IsDeadlineExceeded(
        client->Next(stream, group, at_once).status()));
  }
  const std::string image = MakeHdf5Image(4096, 2);
  for (int i = 0; i < 3; ++i) {
    ASSERT_TRUE(client->Append(stream, image.data(), image.size()).ok());
  }
  for (int i = 0; i < 3; ++i) {
    absl::StatusOr<StreamStep> step = client->Next(stream, "fast", at_once);
    ASSERT_TRUE(step.ok()) << step.status();
    if (i < 2) {
      ASSERT_TRUE(client->Ack(stream, "fast", step->step, step->consumer).ok());
    }
  }
  std::map<std::string, double> scraped = Scrape();
  const std::string of_stream = "{stream=\"metrics/stream\"}";
  const auto of_group = [](const char* group) {
    return absl::StrCat("{stream=\"metrics/stream\",group=\"", group, "\"}");
  };
  EXPECT_EQ(scraped["h5depot_streams"], 1);
  EXPECT_EQ(scraped["h5depot_stream_appended_steps_total" + of_stream], 3);
  EXPECT_EQ(scraped["h5depot_stream_queued_steps" + of_stream], 3);
  EXPECT_EQ(scraped["h5depot_stream_queued_bytes" + of_stream],
            3.0 * image.size());
  EXPECT_EQ(scraped["h5depot_stream_kept_bytes" + of_stream],
            3.0 * image.size());
  EXPECT_EQ(scraped["h5depot_stream_group_lag_steps" + of_group("fast")], 1);
  EXPECT_EQ(scraped["h5depot_stream_group_leased_steps" + of_group("fast")], 1);
  EXPECT_EQ(scraped["h5depot_stream_group_lag_steps" + of_group("slow")], 3);
  EXPECT_EQ(scraped["h5depot_stream_group_leased_steps" + of_group("slow")], 0);

  EXPECT_EQ(scraped["h5depot_stream_groups"], 2);
  EXPECT_EQ(scraped["h5depot_streams_queued_steps"], 3);
  EXPECT_EQ(scraped["h5depot_stream_groups_max_lag_steps"], 3);

  ASSERT_TRUE(client->DeleteStream(stream).ok());
  scraped = Scrape();
  EXPECT_EQ(scraped["h5depot_streams"], 0);
  EXPECT_EQ(scraped["h5depot_streams_kept_bytes"], 0);
  EXPECT_EQ(scraped.count("h5depot_stream_queued_steps" + of_stream), 0u);
}

TEST_F(MetricsTest, StreamsAreCountedTogetherUnlessNamesAreAsked) {
  std::unique_ptr<Client> client = Connect(server_->tcp_target());
  ASSERT_TRUE(client);
  const std::string image = MakeHdf5Image(4096, 3);
  for (const char* stream : {"private/a", "private/b"}) {
    ASSERT_TRUE(client->Append(stream, image.data(), image.size()).ok());
  }
  absl::StatusOr<std::string> body = HttpGet(port_, "/metrics");
  ASSERT_TRUE(body.ok()) << body.status();
  EXPECT_EQ(body->find("private/"), std::string::npos) << *body;
  const std::map<std::string, double> scraped = Samples(*body);
  EXPECT_EQ(scraped.at("h5depot_streams"), 2);
  EXPECT_EQ(scraped.at("h5depot_streams_queued_bytes"), 2.0 * image.size());
}

// gRPC connections are counted by socket while open, and no longer once
// their clients have gone (a wait on the scrapes: the server notices a
// closed connection when it reads its end).
TEST_F(MetricsTest, GrpcConnectionsAreCountedWhileOpen) {
  const std::string kTcp = "h5depot_grpc_connections{socket=\"tcp\"}";
  const std::string kUnix = "h5depot_grpc_connections{socket=\"unix\"}";
  std::vector<std::unique_ptr<Client>> clients;
  clients.push_back(Connect(server_->tcp_target(), /*use_data_lane=*/false));
  clients.push_back(Connect(server_->tcp_target(), /*use_data_lane=*/false));
  clients.push_back(Connect(server_->unix_target(), /*use_data_lane=*/false));
  for (const std::unique_ptr<Client>& client : clients) {
    ASSERT_TRUE(client);
    EXPECT_EQ(client->Stat("m/absent").status().code(),
              absl::StatusCode::kNotFound);
  }
  std::map<std::string, double> open = Scrape();
  ASSERT_EQ(open.count(kTcp), 1u);
  EXPECT_GE(open[kTcp], 2);
  EXPECT_GE(open[kUnix], 1);

  clients.clear();
  const absl::Time deadline = absl::Now() + absl::Seconds(60);
  std::map<std::string, double> closed = Scrape();
  while ((closed[kTcp] != 0 || closed[kUnix] != 0) && absl::Now() < deadline) {
    closed = Scrape();
  }
  EXPECT_EQ(closed[kTcp], 0);
  EXPECT_EQ(closed[kUnix], 0);
}

TEST(MetricsEndpointTest, OffByDefault) {
  auto server = ServerProcess::Start();
  ASSERT_TRUE(server.ok()) << server.status();
  EXPECT_EQ((*server)->ReportedPort("h5depotd metrics on http://"), 0)
      << (*server)->startup_output();
}

TEST(MetricsEndpointTest, AnAddressInUseFailsTheStart) {
  // A port held by a listener of this test.
  const int held = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  ASSERT_GE(held, 0);
  sockaddr_in address{};
  address.sin_family = AF_INET;
  address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  ASSERT_EQ(
      bind(held, reinterpret_cast<const sockaddr*>(&address), sizeof(address)),
      0);
  ASSERT_EQ(listen(held, 1), 0);
  socklen_t length = sizeof(address);
  ASSERT_EQ(getsockname(held, reinterpret_cast<sockaddr*>(&address), &length),
            0);
  ServerProcessOptions options;
  options.extra_flags = {
      absl::StrCat("--metrics-listen=127.0.0.1:", ntohs(address.sin_port))};
  auto server = ServerProcess::Start(options);
  EXPECT_FALSE(server.ok());
  close(held);
}

}  // namespace
}  // namespace h5depot
