#include <netdb.h>
#include <netinet/in.h>
#include <sys/socket.h>

#include <cerrno>
#include <cstring>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "server/src/tcp_listener_internal.h"

namespace h5depot::server {

absl::StatusOr<internal::UniqueFd> ListenTcp(std::string_view what,
                                             const std::string& host, int port,
                                             int* bound_port) {
  const std::string name_of_listener(what);
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = AI_PASSIVE | AI_NUMERICSERV;
  addrinfo* addresses = nullptr;
  const std::string service = std::to_string(port);
  // gRPC's notation for "every address" and bracketed IPv6 literals.
  std::string name = host;
  if (name.size() >= 2 && name.front() == '[' && name.back() == ']') {
    name = name.substr(1, name.size() - 2);
  }
  if (const int error = ::getaddrinfo(name.empty() ? nullptr : name.c_str(),
                                      service.c_str(), &hints, &addresses);
      error != 0) {
    return absl::UnavailableError(absl::StrCat(name_of_listener,
                                               ": cannot resolve '", host,
                                               "': ", ::gai_strerror(error)));
  }
  absl::Status last = absl::UnavailableError(
      absl::StrCat(name_of_listener, ": no address for '", host, "'"));
  for (addrinfo* a = addresses; a != nullptr; a = a->ai_next) {
    internal::UniqueFd listener(
        ::socket(a->ai_family, a->ai_socktype | SOCK_CLOEXEC, 0));
    if (!listener) {
      last = absl::UnavailableError(
          absl::StrCat(name_of_listener, ": socket: ", std::strerror(errno)));
      continue;
    }
    int on = 1;
    ::setsockopt(listener.get(), SOL_SOCKET, SO_REUSEADDR, &on, sizeof(on));
    if (::bind(listener.get(), a->ai_addr, a->ai_addrlen) != 0 ||
        ::listen(listener.get(), 128) != 0) {
      last = absl::UnavailableError(
          absl::StrCat(name_of_listener, ": cannot listen on ", host, ":", port,
                       ": ", std::strerror(errno)));
      continue;
    }
    sockaddr_storage bound{};
    socklen_t bound_bytes = sizeof(bound);
    ::getsockname(listener.get(), reinterpret_cast<sockaddr*>(&bound),
                  &bound_bytes);
    *bound_port =
        bound.ss_family == AF_INET6
            ? ntohs(reinterpret_cast<sockaddr_in6*>(&bound)->sin6_port)
            : ntohs(reinterpret_cast<sockaddr_in*>(&bound)->sin_port);
    ::freeaddrinfo(addresses);
    return listener;
  }
  ::freeaddrinfo(addresses);
  return last;
}

absl::StatusOr<internal::UniqueFd> ListenTcp(std::string_view what,
                                             const std::string& host_and_port,
                                             int* bound_port) {
  const size_t colon = host_and_port.rfind(':');
  int port = -1;
  if (colon == std::string::npos ||
      !absl::SimpleAtoi(host_and_port.substr(colon + 1), &port) || port < 0 ||
      port > 65535) {
    return absl::InvalidArgumentError(absl::StrCat(
        std::string(what), ": '", host_and_port, "' is not HOST:PORT"));
  }
  return ListenTcp(what, host_and_port.substr(0, colon), port, bound_port);
}

}  // namespace h5depot::server
