// Host names as client and server both judge them: which are address
// literals, and which name this machine's loopback interface.
#ifndef H5DEPOT_COMMON_HOST_NAME_H_
#define H5DEPOT_COMMON_HOST_NAME_H_

#include <string_view>

namespace h5depot::internal {

// Whether `host` is an IPv4 or IPv6 address literal (IPv6 without
// brackets), which a certificate must name as an IP address.
bool IsIpAddressLiteral(std::string_view host);

// Whether `host` reaches only this machine: "localhost", an address in
// 127.0.0.0/8, or ::1 (IPv6 with or without brackets).
bool IsLoopbackHost(std::string_view host);

}  // namespace h5depot::internal

#endif  // H5DEPOT_COMMON_HOST_NAME_H_
