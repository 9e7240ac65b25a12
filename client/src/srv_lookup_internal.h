// DNS SRV lookups, for cluster targets that find their members in DNS
// (cluster+srv:), as a Kubernetes headless Service publishes a
// StatefulSet's pods: _grpc._tcp.h5depot.NAMESPACE.svc.cluster.local names
// h5depot-0.h5depot.NAMESPACE.svc.cluster.local:7878 and the others, each
// pod by its stable name. Internal to the client.
#ifndef H5DEPOT_CLIENT_SRV_LOOKUP_INTERNAL_H_
#define H5DEPOT_CLIENT_SRV_LOOKUP_INTERNAL_H_

#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace h5depot::internal {

// The SRV records of `name` as "host:port" targets, sorted, each once (the
// records' priorities and weights do not matter: every member is a
// server). A name without dots is looked up in the system's search
// domains, as resolv.conf says. `dns_server` ("HOST:PORT", an IPv4
// address) is asked instead of the system's servers if not empty.
// UNAVAILABLE if DNS cannot answer or the name has no SRV records;
// INVALID_ARGUMENT for a malformed dns_server.
absl::StatusOr<std::vector<std::string>> LookUpSrvMembers(
    const std::string& name, const std::string& dns_server);

// OK if `dns_server` is "IPV4-ADDRESS:PORT"; INVALID_ARGUMENT otherwise.
absl::Status ValidateDnsServer(const std::string& dns_server);

}  // namespace h5depot::internal

#endif  // H5DEPOT_CLIENT_SRV_LOOKUP_INTERNAL_H_
