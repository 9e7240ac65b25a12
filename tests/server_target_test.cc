// Server targets are parsed in one place (client/src/server_target.cc):
// every form gRPC can reach is accepted and taken apart, anything else is
// INVALID_ARGUMENT with a message saying what a target looks like, and
// Client::Connect and h5depot_connect refuse such a target before trying
// to reach anything. The data lane follows the host a target names.
#include <string>
#include <vector>

#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "client/src/server_target_internal.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "h5depot/client.h"
#include "h5depot/h5depot.h"

namespace h5depot::internal {
namespace {

using ::testing::HasSubstr;

struct Accepted {
  std::string target;
  ServerTarget::Kind kind;
  std::vector<std::string> hosts;  // with ports as "host|port"
  std::string path;
};

std::string Describe(const HostPort& host) {
  return host.host + "|" + std::to_string(host.port);
}

class AcceptedTargetTest : public ::testing::TestWithParam<Accepted> {};

TEST_P(AcceptedTargetTest, IsParsedIntoItsParts) {
  const Accepted& expected = GetParam();
  absl::StatusOr<ServerTarget> parsed = ParseServerTarget(expected.target);
  ASSERT_TRUE(parsed.ok()) << parsed.status();
  EXPECT_EQ(parsed->kind, expected.kind);
  std::vector<std::string> hosts;
  for (const HostPort& host : parsed->hosts) hosts.push_back(Describe(host));
  EXPECT_EQ(hosts, expected.hosts);
  EXPECT_EQ(parsed->path, expected.path);
  EXPECT_TRUE(ValidateServerTarget(expected.target).ok());
}

using Kind = ServerTarget::Kind;

INSTANTIATE_TEST_SUITE_P(
    EveryForm, AcceptedTargetTest,
    ::testing::Values(
        Accepted{"127.0.0.1:7878", Kind::kHost, {"127.0.0.1|7878"}, ""},
        Accepted{"localhost:1", Kind::kHost, {"localhost|1"}, ""},
        Accepted{"db-1.example.org:65535",
                 Kind::kHost,
                 {"db-1.example.org|65535"},
                 ""},
        Accepted{"example.org.:80", Kind::kHost, {"example.org.|80"}, ""},
        Accepted{"my_service:7878", Kind::kHost, {"my_service|7878"}, ""},
        Accepted{"localhost", Kind::kHost, {"localhost|0"}, ""},
        Accepted{"[::1]:7878", Kind::kHost, {"::1|7878"}, ""},
        Accepted{"[fe80::1%eth0]:7878", Kind::kHost, {"fe80::1%eth0|7878"}, ""},
        Accepted{"[::1]", Kind::kHost, {"::1|0"}, ""},
        Accepted{"::1", Kind::kHost, {"::1|0"}, ""},
        Accepted{"dns:localhost:7878", Kind::kHost, {"localhost|7878"}, ""},
        Accepted{"dns:///localhost:7878", Kind::kHost, {"localhost|7878"}, ""},
        Accepted{"dns:///[::1]:7878", Kind::kHost, {"::1|7878"}, ""},
        Accepted{"dns://8.8.8.8:53/example.org:7878",
                 Kind::kHost,
                 {"example.org|7878"},
                 ""},
        Accepted{"dns:localhost", Kind::kHost, {"localhost|0"}, ""},
        Accepted{
            "ipv4:127.0.0.1:7878", Kind::kAddresses, {"127.0.0.1|7878"}, ""},
        Accepted{"ipv4:10.0.0.1:1,10.0.0.2:2",
                 Kind::kAddresses,
                 {"10.0.0.1|1", "10.0.0.2|2"},
                 ""},
        Accepted{"ipv6:[::1]:7878", Kind::kAddresses, {"::1|7878"}, ""},
        Accepted{
            "ipv6:[::1]:1,[::2]:2", Kind::kAddresses, {"::1|1", "::2|2"}, ""},
        Accepted{"unix:/run/h5depot/h5depotd.sock",
                 Kind::kUnix,
                 {},
                 "/run/h5depot/h5depotd.sock"},
        Accepted{"unix:relative/h5depotd.sock",
                 Kind::kUnix,
                 {},
                 "relative/h5depotd.sock"},
        Accepted{
            "unix:///tmp/h5depotd.sock", Kind::kUnix, {}, "/tmp/h5depotd.sock"},
        Accepted{"unix:/tmp/with space/h5depotd.sock",
                 Kind::kUnix,
                 {},
                 "/tmp/with space/h5depotd.sock"},
        Accepted{"unix-abstract:h5depot", Kind::kUnixAbstract, {}, "h5depot"}));

struct Refused {
  std::string target;
  std::string why;  // part of the message
};

class RefusedTargetTest : public ::testing::TestWithParam<Refused> {};

TEST_P(RefusedTargetTest, IsInvalidArgumentSayingWhyAndWhatATargetIs) {
  const Refused& refused = GetParam();
  absl::StatusOr<ServerTarget> parsed = ParseServerTarget(refused.target);
  ASSERT_FALSE(parsed.ok());
  EXPECT_EQ(parsed.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(parsed.status().message(), HasSubstr(refused.why));
  EXPECT_THAT(parsed.status().message(),
              HasSubstr("expected HOST:PORT, [IPV6]:PORT or "
                        "unix:/PATH/TO/SOCKET"));
  // One printable line, whatever the target held.
  for (char c : parsed.status().message()) {
    EXPECT_GE(static_cast<unsigned char>(c), 0x20) << parsed.status();
  }
  EXPECT_EQ(TargetHost(refused.target), "");
}

INSTANTIATE_TEST_SUITE_P(
    Malformed, RefusedTargetTest,
    ::testing::Values(
        Refused{"", "no server given"},
        Refused{"not a target!!", "a space cannot be part of a host name"},
        Refused{" localhost:7878", "starts or ends with a space"},
        Refused{"localhost:7878 ", "starts or ends with a space"},
        Refused{"local\thost:7878", "control character"},
        Refused{"localhost:7878\n", "control character"},
        Refused{"unix:/tmp/a\nb", "control character"},
        Refused{"host!:7878", "'!' cannot be part of a host name"},
        Refused{"localhost:", "no port after ':'"},
        Refused{"localhost:0", "port 0 is not from 1 to 65535"},
        Refused{"localhost:65536", "port 65536 is not from 1 to 65535"},
        Refused{"localhost:123456", "not a number from 1 to 65535"},
        Refused{"localhost:http", "port 'http' is not a number"},
        Refused{"localhost:-1", "port '-1' is not a number"},
        Refused{":7878", "no host"}, Refused{"a..b:7878", "empty label"},
        Refused{"-a:7878", "cannot start or end with '-'"},
        Refused{"999.1.1.1:7878", "is not an IPv4 address"},
        Refused{"[::1:7878", "'[' without ']'"},
        Refused{"[::1]7878", "after ']'"},
        Refused{"[not-v6]:7878", "is not an IPv6 address"},
        Refused{"a:b:c", "neither HOST:PORT nor an IPv6 address"},
        Refused{"http://localhost:7878", "unknown scheme 'http:'"},
        Refused{"dns:", "no host"},
        Refused{"dns://8.8.8.8", "dns:// needs a '/'"},
        Refused{"dns:///bad host:1", "a space cannot be part of a host name"},
        Refused{"ipv4:127.0.0.1", "no port"},
        Refused{"ipv4:localhost:7878", "is not an IPv4 address"},
        Refused{"ipv4:127.0.0.1:1,", "no host"},
        Refused{"ipv6:::1", "ipv6: takes [ADDRESS]:PORT"},
        Refused{"unix:", "no socket path"},
        Refused{"unix://host/path", "unix:// takes an absolute path"},
        Refused{"unix:/" + std::string(200, 'x'), "socket path longer than"},
        Refused{"unix-abstract:", "no name"}));

TEST(TargetHostTest, IsTheOneHostATcpTargetNamesForTheDataLaneToFollow) {
  EXPECT_EQ(TargetHost("127.0.0.1:7878"), "127.0.0.1");
  EXPECT_EQ(TargetHost("localhost"), "localhost");
  EXPECT_EQ(TargetHost("[::1]:7878"), "::1");
  EXPECT_EQ(TargetHost("dns:///example.org:7878"), "example.org");
  EXPECT_EQ(TargetHost("dns://8.8.8.8/example.org:7878"), "example.org");
  EXPECT_EQ(TargetHost("ipv4:10.0.0.1:1"), "10.0.0.1");
  EXPECT_EQ(TargetHost("ipv6:[::1]:1"), "::1");
  // None to follow.
  EXPECT_EQ(TargetHost("ipv4:10.0.0.1:1,10.0.0.2:2"), "");
  EXPECT_EQ(TargetHost("unix:/tmp/h5depotd.sock"), "");
  EXPECT_EQ(TargetHost("unix-abstract:h5depot"), "");
  EXPECT_EQ(TargetHost("not a target"), "");
}

// Refused before anything is contacted: at once, whatever the timeouts.
TEST(ConnectTargetTest, ClientConnectRefusesAMalformedTargetAtOnce) {
  ClientOptions options;
  options.connect_timeout = absl::Seconds(30);
  const absl::Time start = absl::Now();
  auto client = Client::Connect("not a target!!", options);
  EXPECT_LT(absl::Now() - start, absl::Seconds(5));
  ASSERT_FALSE(client.ok());
  EXPECT_EQ(client.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(client.status().message(),
              HasSubstr("expected HOST:PORT, [IPV6]:PORT or "
                        "unix:/PATH/TO/SOCKET"));
}

TEST(ConnectTargetTest, CApiConnectRefusesAMalformedTarget) {
  EXPECT_EQ(h5depot_connect("not a target!!"), nullptr);
  EXPECT_EQ(h5depot_errcode(), H5DEPOT_INVALID_ARGUMENT);
  EXPECT_THAT(h5depot_errmsg(), HasSubstr("not a server target"));
  EXPECT_THAT(h5depot_errmsg(), HasSubstr("HOST:PORT"));
  EXPECT_EQ(h5depot_connect("localhost:99999"), nullptr);
  EXPECT_EQ(h5depot_errcode(), H5DEPOT_INVALID_ARGUMENT);
  EXPECT_EQ(h5depot_connect(""), nullptr);
  EXPECT_EQ(h5depot_errcode(), H5DEPOT_INVALID_ARGUMENT);
}

}  // namespace
}  // namespace h5depot::internal
