#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/un.h>

#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "client/src/server_target_internal.h"
#include "h5depot/internal/host_name.h"

namespace h5depot::internal {
namespace {

constexpr char kExpected[] =
    "expected HOST:PORT, [IPV6]:PORT or unix:/PATH/TO/SOCKET (or a dns:, "
    "ipv4:, ipv6: or unix-abstract: target)";

// A socket address holds the path and its terminating NUL (or, abstract,
// a NUL and the name).
constexpr size_t kMaxSocketPath = sizeof(sockaddr_un::sun_path) - 1;

constexpr size_t kMaxHostName = 253;
constexpr size_t kMaxLabel = 63;

bool StartsWith(std::string_view text, std::string_view prefix) {
  return text.substr(0, prefix.size()) == prefix;
}

// `text` with control characters and quotes escaped, for a message that
// stays one printable line.
std::string Escaped(std::string_view text) {
  return absl::CHexEscape(absl::string_view(text.data(), text.size()));
}

// The pieces of `text` between `separator`s, empty ones included.
std::vector<std::string_view> Split(std::string_view text, char separator) {
  std::vector<std::string_view> pieces;
  while (true) {
    const size_t at = text.find(separator);
    pieces.push_back(text.substr(0, at));
    if (at == std::string_view::npos) return pieces;
    text.remove_prefix(at + 1);
  }
}

// A reason a target is refused, without the target (Refuse adds it).
using Reason = std::string;

absl::Status Refuse(std::string_view target, const Reason& reason) {
  return absl::InvalidArgumentError(absl::StrCat("not a server target: '",
                                                 Escaped(target), "' (", reason,
                                                 "); ", kExpected));
}

bool IsControl(char c) {
  const auto byte = static_cast<unsigned char>(c);
  return byte < 0x20 || byte == 0x7f;
}

bool IsDigit(char c) { return c >= '0' && c <= '9'; }

bool IsHostNameChar(char c) {
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || IsDigit(c) ||
         c == '-' || c == '_' || c == '.';
}

// How `c` reads in a message.
std::string Shown(char c) {
  if (c == ' ') return "a space";
  return absl::StrCat("'", Escaped(std::string_view(&c, 1)), "'");
}

std::optional<Reason> CheckPort(std::string_view text, uint16_t* port) {
  if (text.empty()) return "no port after ':'";
  bool digits = text.size() <= 5;
  for (char c : text) digits = digits && IsDigit(c);
  if (!digits) {
    return absl::StrCat("port '", Escaped(text),
                        "' is not a number from 1 to 65535");
  }
  uint32_t value = 0;
  for (char c : text) value = value * 10 + static_cast<uint32_t>(c - '0');
  if (value == 0 || value > 65535) {
    return absl::StrCat("port ", value, " is not from 1 to 65535");
  }
  *port = static_cast<uint16_t>(value);
  return std::nullopt;
}

// An IPv6 address, optionally with a zone ("fe80::1%eth0").
std::optional<Reason> CheckIpv6(std::string_view text) {
  std::string_view address = text;
  if (const size_t percent = text.find('%');
      percent != std::string_view::npos) {
    address = text.substr(0, percent);
    const std::string_view zone = text.substr(percent + 1);
    if (zone.empty()) return "no zone after '%'";
    for (char c : zone) {
      if (!IsHostNameChar(c)) {
        return absl::StrCat(Shown(c), " cannot be part of an IPv6 zone");
      }
    }
  }
  in6_addr parsed;
  if (inet_pton(AF_INET6, std::string(address).c_str(), &parsed) != 1) {
    return absl::StrCat("'", Escaped(text), "' is not an IPv6 address");
  }
  return std::nullopt;
}

std::optional<Reason> CheckIpv4(std::string_view text) {
  in_addr parsed;
  if (inet_pton(AF_INET, std::string(text).c_str(), &parsed) != 1) {
    return absl::StrCat("'", Escaped(text), "' is not an IPv4 address");
  }
  return std::nullopt;
}

// A host name ("db-1.example.org", "localhost", "my_service") or an IPv4
// address.
std::optional<Reason> CheckHostName(std::string_view host) {
  if (host.empty()) return "no host";
  for (char c : host) {
    if (!IsHostNameChar(c)) {
      return absl::StrCat(Shown(c), " cannot be part of a host name");
    }
  }
  bool numeric = true;
  for (char c : host) numeric = numeric && (IsDigit(c) || c == '.');
  if (numeric) return CheckIpv4(host);
  if (host.size() > kMaxHostName) {
    return absl::StrCat("host name longer than ", kMaxHostName, " characters");
  }
  std::string_view labels = host;
  if (labels.back() == '.') labels.remove_suffix(1);  // fully qualified
  for (std::string_view label : Split(labels, '.')) {
    if (label.empty()) return "empty label in the host name";
    if (label.size() > kMaxLabel) {
      return absl::StrCat("host name label longer than ", kMaxLabel,
                          " characters");
    }
    if (label.front() == '-' || label.back() == '-') {
      return "a host name label cannot start or end with '-'";
    }
  }
  return std::nullopt;
}

// HOST, HOST:PORT, [IPV6], [IPV6]:PORT or a bare IPV6 address.
std::optional<Reason> ParseHostPort(std::string_view text, bool port_required,
                                    HostPort* out) {
  if (text.empty()) return "no host";
  std::string_view port;
  bool has_port = false;
  if (text.front() == '[') {
    const size_t close = text.find(']');
    if (close == std::string_view::npos) return "'[' without ']'";
    const std::string_view address = text.substr(1, close - 1);
    if (std::optional<Reason> bad = CheckIpv6(address)) return bad;
    out->host = std::string(address);
    const std::string_view rest = text.substr(close + 1);
    if (!rest.empty()) {
      if (rest.front() != ':') {
        return absl::StrCat("'", Escaped(rest),
                            "' after ']', where a ':PORT' may be");
      }
      port = rest.substr(1);
      has_port = true;
    }
  } else {
    const size_t colon = text.find(':');
    if (colon != std::string_view::npos && text.rfind(':') != colon) {
      // Several colons: an IPv6 address, which takes no port unbracketed.
      if (CheckIpv6(text).has_value()) {
        return absl::StrCat(
            "'", Escaped(text),
            "' is neither HOST:PORT nor an IPv6 address (one with a port is "
            "written [ADDRESS]:PORT)");
      }
      out->host = std::string(text);
    } else {
      const std::string_view host = text.substr(0, colon);
      if (std::optional<Reason> bad = CheckHostName(host)) return bad;
      out->host = std::string(host);
      if (colon != std::string_view::npos) {
        port = text.substr(colon + 1);
        has_port = true;
      }
    }
  }
  if (has_port) return CheckPort(port, &out->port);
  if (port_required) return "no port";
  return std::nullopt;
}

std::optional<Reason> ParseUnix(std::string_view rest, ServerTarget* out) {
  out->kind = ServerTarget::Kind::kUnix;
  if (StartsWith(rest, "//")) {
    // unix://AUTHORITY/PATH is not supported; unix:///PATH is absolute.
    if (!StartsWith(rest, "///")) {
      return "unix:// takes an absolute path: unix:///PATH";
    }
    rest.remove_prefix(2);
  }
  if (rest.empty()) return "no socket path after unix:";
  if (rest.size() > kMaxSocketPath) {
    return absl::StrCat("socket path longer than ", kMaxSocketPath, " bytes");
  }
  out->path = std::string(rest);
  return std::nullopt;
}

std::optional<Reason> ParseUnixAbstract(std::string_view name,
                                        ServerTarget* out) {
  out->kind = ServerTarget::Kind::kUnixAbstract;
  if (name.empty()) return "no name after unix-abstract:";
  if (name.size() > kMaxSocketPath - 1) {
    return absl::StrCat("abstract socket name longer than ", kMaxSocketPath - 1,
                        " bytes");
  }
  out->path = std::string(name);
  return std::nullopt;
}

// dns:HOST[:PORT], dns:///HOST[:PORT], dns://DNS_SERVER/HOST[:PORT].
std::optional<Reason> ParseDns(std::string_view rest, ServerTarget* out) {
  out->kind = ServerTarget::Kind::kHost;
  if (StartsWith(rest, "//")) {
    rest.remove_prefix(2);
    const size_t slash = rest.find('/');
    if (slash == std::string_view::npos) {
      return "dns:// needs a '/' after the DNS server: dns:///HOST:PORT";
    }
    const std::string_view authority = rest.substr(0, slash);
    if (!authority.empty()) {
      HostPort dns_server;
      if (std::optional<Reason> bad =
              ParseHostPort(authority, /*port_required=*/false, &dns_server)) {
        return absl::StrCat("DNS server: ", *bad);
      }
    }
    rest.remove_prefix(slash + 1);
  }
  HostPort host;
  if (std::optional<Reason> bad =
          ParseHostPort(rest, /*port_required=*/false, &host)) {
    return bad;
  }
  out->hosts.push_back(std::move(host));
  return std::nullopt;
}

// ipv4:ADDRESS:PORT,... or ipv6:[ADDRESS]:PORT,...
std::optional<Reason> ParseAddresses(std::string_view rest, bool ipv6,
                                     ServerTarget* out) {
  out->kind = ServerTarget::Kind::kAddresses;
  for (std::string_view address : Split(rest, ',')) {
    HostPort parsed;
    if (ipv6 && !StartsWith(address, "[")) {
      return absl::StrCat("'", Escaped(address),
                          "': ipv6: takes [ADDRESS]:PORT");
    }
    if (std::optional<Reason> bad =
            ParseHostPort(address, /*port_required=*/true, &parsed)) {
      return bad;
    }
    if (!ipv6) {
      if (std::optional<Reason> bad = CheckIpv4(parsed.host)) return bad;
    }
    out->hosts.push_back(std::move(parsed));
  }
  return std::nullopt;
}

std::optional<Reason> Parse(std::string_view target, ServerTarget* out) {
  for (char c : target) {
    if (IsControl(c)) return "it contains a control character";
  }
  if (target.front() == ' ' || target.back() == ' ') {
    return "it starts or ends with a space";
  }
  // Unix socket paths are file names, which may hold any other character;
  // everything else is held to host name rules below.
  if (StartsWith(target, "unix:")) return ParseUnix(target.substr(5), out);
  if (StartsWith(target, "unix-abstract:")) {
    return ParseUnixAbstract(target.substr(14), out);
  }
  if (StartsWith(target, "dns:")) return ParseDns(target.substr(4), out);
  if (StartsWith(target, "ipv4:")) {
    return ParseAddresses(target.substr(5), /*ipv6=*/false, out);
  }
  if (StartsWith(target, "ipv6:")) {
    return ParseAddresses(target.substr(5), /*ipv6=*/true, out);
  }
  if (const size_t scheme_end = target.find("://");
      scheme_end != std::string_view::npos) {
    return absl::StrCat("unknown scheme '",
                        Escaped(target.substr(0, scheme_end)), ":'");
  }
  out->kind = ServerTarget::Kind::kHost;
  HostPort host;
  if (std::optional<Reason> bad =
          ParseHostPort(target, /*port_required=*/false, &host)) {
    return bad;
  }
  out->hosts.push_back(std::move(host));
  return std::nullopt;
}

}  // namespace

absl::StatusOr<ServerTarget> ParseServerTarget(std::string_view target) {
  if (target.empty()) {
    return absl::InvalidArgumentError(
        absl::StrCat("no server given; ", kExpected));
  }
  ServerTarget parsed;
  if (std::optional<Reason> bad = Parse(target, &parsed)) {
    return Refuse(target, *bad);
  }
  return parsed;
}

absl::Status ValidateServerTarget(std::string_view target) {
  return ParseServerTarget(target).status();
}

std::string TargetHost(std::string_view target) {
  absl::StatusOr<ServerTarget> parsed = ParseServerTarget(target);
  if (!parsed.ok() || parsed->hosts.size() != 1) return "";
  if (parsed->kind != ServerTarget::Kind::kHost &&
      parsed->kind != ServerTarget::Kind::kAddresses) {
    return "";
  }
  return parsed->hosts.front().host;
}

bool TargetIsOnThisHost(std::string_view target) {
  absl::StatusOr<ServerTarget> parsed = ParseServerTarget(target);
  if (!parsed.ok()) return false;
  if (parsed->kind == ServerTarget::Kind::kUnix ||
      parsed->kind == ServerTarget::Kind::kUnixAbstract) {
    return true;
  }
  for (const HostPort& host : parsed->hosts) {
    if (!IsLoopbackHost(host.host)) return false;
  }
  return !parsed->hosts.empty();
}

bool TargetIsUnixSocket(std::string_view target) {
  absl::StatusOr<ServerTarget> parsed = ParseServerTarget(target);
  return parsed.ok() && (parsed->kind == ServerTarget::Kind::kUnix ||
                         parsed->kind == ServerTarget::Kind::kUnixAbstract);
}

}  // namespace h5depot::internal
