// The three paths by which a client reaches a real h5depotd's images, for
// tests parameterised over them: the data lane over TCP, the data lane over
// a Unix socket, and gRPC alone (a server started without a lane).
//
// Example:
//   class MyTest : public ::testing::TestWithParam<ServerPath> { ... };
//   auto server = ServerProcess::Start(ServerOptionsFor(GetParam()));
//   auto client = Client::Connect(TargetFor(**server, GetParam()));
//   INSTANTIATE_TEST_SUITE_P(Paths, MyTest, AllServerPaths(), ServerPathName);
#ifndef H5DEPOT_TESTING_SERVER_PATHS_H_
#define H5DEPOT_TESTING_SERVER_PATHS_H_

#include <string>

#include "gtest/gtest.h"
#include "h5depot/testing/server_process.h"

namespace h5depot::testing {

enum class ServerPath { kLaneTcp, kLaneUnix, kGrpc };

// The test name suffix for `info`'s path.
inline std::string ServerPathName(
    const ::testing::TestParamInfo<ServerPath>& info) {
  switch (info.param) {
    case ServerPath::kLaneTcp:
      return "LaneTcp";
    case ServerPath::kLaneUnix:
      return "LaneUnix";
    case ServerPath::kGrpc:
      return "Grpc";
  }
  return "";
}

inline auto AllServerPaths() {
  return ::testing::Values(ServerPath::kLaneTcp, ServerPath::kLaneUnix,
                           ServerPath::kGrpc);
}

// Options for a server that clients reach by `path`: with a Unix socket
// for kLaneUnix, without a data lane for kGrpc.
inline ServerProcessOptions ServerOptionsFor(ServerPath path) {
  ServerProcessOptions options;
  options.unix_socket = path == ServerPath::kLaneUnix;
  if (path == ServerPath::kGrpc) options.extra_flags = {"--nodata-lane"};
  return options;
}

// The target by which a client reaches `server` by `path`.
inline std::string TargetFor(const ServerProcess& server, ServerPath path) {
  return path == ServerPath::kLaneUnix ? server.unix_target()
                                       : server.tcp_target();
}

}  // namespace h5depot::testing

#endif  // H5DEPOT_TESTING_SERVER_PATHS_H_
