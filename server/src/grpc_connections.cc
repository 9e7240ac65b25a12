#include <grpc/grpc.h>
#include <grpc/support/alloc.h>
#include <sys/stat.h>

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "google/protobuf/struct.pb.h"
#include "google/protobuf/util/json_util.h"
#include "server/src/grpc_connections_internal.h"

namespace h5depot::server {
namespace {

// A page of channelz's answer, parsed; nullopt if there was none or it is
// not JSON. Channelz answers in the JSON form of its proto.
std::optional<google::protobuf::Struct> ParseChannelzPage(char* json) {
  if (json == nullptr) return std::nullopt;
  const std::unique_ptr<char, void (*)(void*)> owned(json, gpr_free);
  google::protobuf::Struct page;
  if (!google::protobuf::util::JsonStringToMessage(json, &page).ok()) {
    return std::nullopt;
  }
  return page;
}

// The int64 id a channelz reference holds under `key` (JSON carries int64
// as a string); 0 if missing.
intptr_t IdOf(const google::protobuf::Value& reference, const char* key) {
  if (!reference.has_struct_value()) return 0;
  const auto& fields = reference.struct_value().fields();
  const auto it = fields.find(key);
  if (it == fields.end()) return 0;
  if (it->second.has_string_value()) {
    return static_cast<intptr_t>(
        std::strtoll(it->second.string_value().c_str(), nullptr, 10));
  }
  return static_cast<intptr_t>(it->second.number_value());
}

// The list under `key` of a page; empty if missing.
const google::protobuf::ListValue& ListOf(const google::protobuf::Struct& page,
                                          const char* key) {
  static const google::protobuf::ListValue* const kEmpty =
      new google::protobuf::ListValue();
  const auto it = page.fields().find(key);
  if (it == page.fields().end() || !it->second.has_list_value()) {
    return *kEmpty;
  }
  return it->second.list_value();
}

bool IsLastPage(const google::protobuf::Struct& page) {
  const auto it = page.fields().find("end");
  return it == page.fields().end() || it->second.bool_value();
}

// Connections open on channelz's server `server_id`.
uint64_t ServerSockets(intptr_t server_id) {
  constexpr intptr_t kPageSize = 1000;
  uint64_t count = 0;
  intptr_t start = 0;
  while (true) {
    const std::optional<google::protobuf::Struct> page = ParseChannelzPage(
        grpc_channelz_get_server_sockets(server_id, start, kPageSize));
    if (!page.has_value()) return count;
    const google::protobuf::ListValue& sockets = ListOf(*page, "socketRef");
    intptr_t last = start;
    for (const google::protobuf::Value& socket : sockets.values()) {
      ++count;
      last = std::max(last, IdOf(socket, "socketId"));
    }
    if (IsLastPage(*page) || sockets.values().empty()) return count;
    start = last + 1;
  }
}

}  // namespace

std::vector<intptr_t> GrpcConnectionCensus::ServersNow() {
  std::vector<intptr_t> ids;
  intptr_t start = 0;
  while (true) {
    const std::optional<google::protobuf::Struct> page =
        ParseChannelzPage(grpc_channelz_get_servers(start));
    if (!page.has_value()) return ids;
    const google::protobuf::ListValue& servers = ListOf(*page, "server");
    intptr_t last = start;
    for (const google::protobuf::Value& server : servers.values()) {
      if (!server.has_struct_value()) continue;
      const auto& fields = server.struct_value().fields();
      const auto ref = fields.find("ref");
      if (ref == fields.end()) continue;
      const intptr_t id = IdOf(ref->second, "serverId");
      if (id == 0) continue;
      ids.push_back(id);
      last = std::max(last, id);
    }
    if (IsLastPage(*page) || servers.values().empty()) return ids;
    start = last + 1;
  }
}

bool GrpcConnectionCensus::FindServer(
    const std::vector<intptr_t>& servers_before) {
  intptr_t found = 0;
  int new_servers = 0;
  for (intptr_t id : ServersNow()) {
    if (std::find(servers_before.begin(), servers_before.end(), id) ==
        servers_before.end()) {
      found = id;
      ++new_servers;
    }
  }
  absl::MutexLock lock(&mutex_);
  server_id_ = new_servers == 1 ? found : 0;
  return server_id_ != 0;
}

void GrpcConnectionCensus::UnixConnectionAccepted(int fd) {
  struct stat status;
  if (::fstat(fd, &status) != 0) return;
  absl::MutexLock lock(&mutex_);
  unix_connections_.push_back({fd, status.st_ino});
  if (unix_connections_.size() >= prune_at_) {
    prune_at_ = std::max<size_t>(64, 2 * PruneClosedLocked());
  }
}

size_t GrpcConnectionCensus::PruneClosedLocked() {
  // A descriptor gRPC closed is either closed or reused for another file,
  // whose inode differs: socket inodes are not reused while the count of
  // them (a 32-bit one at least) has not wrapped.
  const auto closed = [](const UnixConnection& connection) {
    struct stat status;
    return ::fstat(connection.fd, &status) != 0 ||
           status.st_ino != connection.inode;
  };
  unix_connections_.erase(std::remove_if(unix_connections_.begin(),
                                         unix_connections_.end(), closed),
                          unix_connections_.end());
  return unix_connections_.size();
}

GrpcConnectionCensus::Counts GrpcConnectionCensus::Count() {
  intptr_t server_id;
  Counts counts;
  {
    absl::MutexLock lock(&mutex_);
    counts.unix_socket = PruneClosedLocked();
    server_id = server_id_;
  }
  if (server_id != 0) counts.tcp = ServerSockets(server_id);
  return counts;
}

}  // namespace h5depot::server
