// Server targets: the one parser of what names an h5depotd, the strings
// Client::Connect, the C API, the CLI's --server and the remote driver
// take. They are gRPC targets; what is accepted is what gRPC can reach:
//
//   host:port, host, [ipv6]:port, [ipv6], ipv6
//                                 a name or address, resolved by DNS (a
//                                 missing port is gRPC's default, 443)
//   dns:[//authority/]host[:port] the same, optionally naming the DNS
//                                 server to ask
//   ipv4:addr:port[,addr:port...] literal addresses, no lookup
//   ipv6:[addr]:port[,...]
//   unix:path, unix:///abs/path   a Unix domain socket (path relative to the
//                                 working directory, or absolute)
//   unix-abstract:name            a socket in Linux's abstract namespace
//
// Anything else (empty, spaces, control characters, an unknown scheme, a
// port that is not 1 to 65535, a path too long for a socket address) is
// INVALID_ARGUMENT, with a message saying what is wrong and what a target
// looks like, before any connection is tried: a typo reads as a typo, not
// as a server that cannot be reached. Internal to the client.
#ifndef H5DEPOT_CLIENT_SERVER_TARGET_INTERNAL_H_
#define H5DEPOT_CLIENT_SERVER_TARGET_INTERNAL_H_

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace h5depot::internal {

// A host and port as a target names them.
struct HostPort {
  std::string host;   // a name or an address; IPv6 without brackets
  uint16_t port = 0;  // 0: none given
};

// A parsed server target.
struct ServerTarget {
  enum class Kind {
    kHost,          // one host, by name or address (host:port, dns:...)
    kAddresses,     // literal addresses (ipv4:, ipv6:), port required
    kUnix,          // a Unix socket's path (unix:)
    kUnixAbstract,  // a name in the abstract namespace (unix-abstract:)
  };
  Kind kind = Kind::kHost;
  // kHost: one; kAddresses: one or more, in the order given.
  std::vector<HostPort> hosts;
  // kUnix: the path as given (relative or absolute); kUnixAbstract: the
  // name.
  std::string path;
};

// Parses `target`; INVALID_ARGUMENT (the message names the target, what is
// wrong with it and what a target looks like) if it is not one.
absl::StatusOr<ServerTarget> ParseServerTarget(std::string_view target);

// OK, or ParseServerTarget's error.
absl::Status ValidateServerTarget(std::string_view target);

// The one host a TCP target names, IPv6 without brackets, for a connection
// beside gRPC's (the data lane) to the same machine; empty if the target
// names none to follow: a Unix socket, several addresses, or no valid
// target at all.
std::string TargetHost(std::string_view target);

// Whether every address `target` names is on this host: a Unix socket, or
// only loopback addresses ("localhost", 127.0.0.0/8, ::1). A name that
// only DNS could tell is not.
bool TargetIsOnThisHost(std::string_view target);

// Whether `target` names a Unix domain socket (a path or an abstract name).
bool TargetIsUnixSocket(std::string_view target);

}  // namespace h5depot::internal

#endif  // H5DEPOT_CLIENT_SERVER_TARGET_INTERNAL_H_
