#include <arpa/inet.h>
#include <arpa/nameser.h>
#include <netdb.h>
#include <netinet/in.h>
#include <resolv.h>

#include <algorithm>
#include <cstring>
#include <string>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "client/src/srv_lookup_internal.h"

namespace h5depot::internal {
namespace {

absl::StatusOr<sockaddr_in> DnsServerAddress(const std::string& dns_server) {
  const size_t colon = dns_server.rfind(':');
  int port = 0;
  sockaddr_in address{};
  address.sin_family = AF_INET;
  if (colon == std::string::npos ||
      !absl::SimpleAtoi(dns_server.substr(colon + 1), &port) || port <= 0 ||
      port > 65535 ||
      inet_pton(AF_INET, dns_server.substr(0, colon).c_str(),
                &address.sin_addr) != 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("DNS server '", dns_server, "' is not IPV4-ADDRESS:PORT"));
  }
  address.sin_port = htons(static_cast<uint16_t>(port));
  return address;
}

}  // namespace

absl::Status ValidateDnsServer(const std::string& dns_server) {
  return DnsServerAddress(dns_server).status();
}

absl::StatusOr<std::vector<std::string>> LookUpSrvMembers(
    const std::string& name, const std::string& dns_server) {
  struct __res_state state;
  std::memset(&state, 0, sizeof(state));
  if (res_ninit(&state) != 0) {
    return absl::UnavailableError("cannot read the resolver's configuration");
  }
  // res_nclose frees what res_ninit allocated, whatever happens below.
  struct Closer {
    struct __res_state* state;
    ~Closer() { res_nclose(state); }
  } closer{&state};
  if (!dns_server.empty()) {
    absl::StatusOr<sockaddr_in> address = DnsServerAddress(dns_server);
    if (!address.ok()) return address.status();
    state.nsaddr_list[0] = *address;
    state.nscount = 1;
  }
  unsigned char answer[65536];
  const int length = res_nsearch(&state, name.c_str(), ns_c_in, ns_t_srv,
                                 answer, sizeof(answer));
  if (length < 0) {
    return absl::UnavailableError(
        absl::StrCat("DNS has no SRV records for ", name, " (",
                     hstrerror(state.res_h_errno), ")"));
  }
  ns_msg message;
  if (ns_initparse(answer, length, &message) != 0) {
    return absl::UnavailableError(
        absl::StrCat("DNS answered ", name, " with a malformed message"));
  }
  std::vector<std::string> members;
  for (int i = 0; i < ns_msg_count(message, ns_s_an); ++i) {
    ns_rr record;
    if (ns_parserr(&message, ns_s_an, i, &record) != 0) continue;
    if (ns_rr_type(record) != ns_t_srv || ns_rr_rdlen(record) < 7) continue;
    const unsigned char* data = ns_rr_rdata(record);
    // Priority, weight and port (16 bits each), then the target's name.
    const int port = (data[4] << 8) | data[5];
    char host[NS_MAXDNAME];
    if (dn_expand(ns_msg_base(message), ns_msg_end(message), data + 6, host,
                  sizeof(host)) < 0 ||
        host[0] == '\0' || port == 0) {
      continue;
    }
    std::string target(host);
    if (target.back() == '.') target.pop_back();
    members.push_back(absl::StrCat(target, ":", port));
  }
  std::sort(members.begin(), members.end());
  members.erase(std::unique(members.begin(), members.end()), members.end());
  if (members.empty()) {
    return absl::UnavailableError(
        absl::StrCat("DNS has no SRV records for ", name));
  }
  return members;
}

}  // namespace h5depot::internal
