// Who may reach the server's Unix sockets (the gRPC socket and the data
// lane's socket beside it): the socket files' mode and group, applied
// between bind() and listen() so that no connection is ever accepted under
// looser rules, and an allow-list of peer user and group ids checked with
// SO_PEERCRED on every accepted connection. Internal to the server.
//
// UnixGrpcListener accepts the gRPC socket's connections itself, checks
// each peer and hands the admitted ones to the gRPC server
// (grpc::AddInsecureChannelFromFd): gRPC 1.51 tells a service nothing of a
// Unix peer's credentials, so the check cannot be made inside a call.
// Refused ones go to a server that only says PERMISSION_DENIED.
#ifndef H5DEPOT_SERVER_UNIX_ACCESS_INTERNAL_H_
#define H5DEPOT_SERVER_UNIX_ACCESS_INTERNAL_H_

#include <sys/types.h>

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace grpc {
class Server;
}

namespace h5depot::server {

class GrpcConnectionCensus;

struct UnixSocketAccess {
  // Permission bits of the socket files (chmod); nullopt: as bind() leaves
  // them, 0777 less the process's umask.
  std::optional<mode_t> mode;
  // Group of the socket files (chown); nullopt: the server's group.
  std::optional<gid_t> group;
  // A peer is admitted if its user id is in allow_uids or its group id
  // (SO_PEERCRED's: the effective group, not supplementary groups) is in
  // allow_gids. Both empty: every peer that can open the socket file.
  std::vector<uid_t> allow_uids;
  std::vector<gid_t> allow_gids;

  bool restricts_peers() const {
    return !allow_uids.empty() || !allow_gids.empty();
  }
  // Whether the peer with `uid` and `gid` may connect.
  bool Admits(uid_t uid, gid_t gid) const;
};

// "0660", "660", "0o660": octal permission bits, at most 0777.
// INVALID_ARGUMENT otherwise.
absl::StatusOr<mode_t> ParseUnixMode(absl::string_view text);
// A group name or a numeric gid; INVALID_ARGUMENT naming it if no such
// group exists (a number is taken as a gid as it is).
absl::StatusOr<gid_t> ResolveGroup(absl::string_view name_or_gid);
// Comma-separated user (group) names or numeric ids; empty text: none.
// INVALID_ARGUMENT naming the first unknown name.
absl::StatusOr<std::vector<uid_t>> ParseUserList(absl::string_view text);
absl::StatusOr<std::vector<gid_t>> ParseGroupList(absl::string_view text);

// Applies `access`'s mode and group to the socket file at `path`;
// PERMISSION_DENIED (or the errno's error) naming the path and the cause.
absl::Status ApplySocketFileAccess(const std::string& path,
                                   const UnixSocketAccess& access);

// Whether the peer of the connected Unix socket `fd` is admitted; false
// also if its credentials cannot be read.
bool AdmitsPeer(int fd, const UnixSocketAccess& access);

// The gRPC server's Unix socket, accepted here rather than by gRPC.
class UnixGrpcListener {
 public:
  // Binds `path` (replacing a stale socket file, never another kind of
  // file), applies `access` to it and listens. UNAVAILABLE if it cannot be
  // bound; ApplySocketFileAccess's errors.
  static absl::StatusOr<std::unique_ptr<UnixGrpcListener>> Listen(
      const std::string& path, const UnixSocketAccess& access);

  ~UnixGrpcListener();  // Stop()
  UnixGrpcListener(const UnixGrpcListener&) = delete;
  UnixGrpcListener& operator=(const UnixGrpcListener&) = delete;

  // Starts accepting on a thread of its own: admitted connections go to
  // `server` (which must outlive Stop()); refused ones to a server of the
  // listener's own that answers every call PERMISSION_DENIED and closes
  // the connection within about two seconds. Admitted connections are
  // noted in `census` (null: not counted), which must outlive Stop().
  // Called once.
  void Serve(grpc::Server* server, GrpcConnectionCensus* census);

  // Stops accepting, waits for the accepting thread, closes the socket and
  // removes its file. Connections handed to gRPC stay gRPC's. Idempotent.
  void Stop();

 private:
  struct Impl;
  explicit UnixGrpcListener(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace h5depot::server

#endif  // H5DEPOT_SERVER_UNIX_ACCESS_INTERNAL_H_
