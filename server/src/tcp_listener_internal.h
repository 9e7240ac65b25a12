// A listening TCP socket for the server's own listeners (the data lane,
// the HTTP endpoints), bound the way gRPC binds its: "HOST:PORT" with an
// IPv4 or bracketed IPv6 literal, a name, or an empty HOST for every
// address. Internal to the server.
#ifndef H5DEPOT_SERVER_TCP_LISTENER_INTERNAL_H_
#define H5DEPOT_SERVER_TCP_LISTENER_INTERNAL_H_

#include <string>
#include <string_view>

#include "absl/status/statusor.h"
#include "h5depot/internal/memfd.h"

namespace h5depot::server {

// A socket listening on `host`:`port` (port 0: any free one), close on
// exec, with SO_REUSEADDR; the port it got in `bound_port`. UNAVAILABLE,
// naming `what` ("data lane"), if the name does not resolve or no address
// of it can be bound.
absl::StatusOr<internal::UniqueFd> ListenTcp(std::string_view what,
                                             const std::string& host, int port,
                                             int* bound_port);

// The same for "HOST:PORT"; INVALID_ARGUMENT if it is not of that form.
absl::StatusOr<internal::UniqueFd> ListenTcp(std::string_view what,
                                             const std::string& host_and_port,
                                             int* bound_port);

}  // namespace h5depot::server

#endif  // H5DEPOT_SERVER_TCP_LISTENER_INTERNAL_H_
