// Who may do what: the principals of h5depotd's --auth-file, each with the
// hash of its bearer token, a role and the image id prefixes it may touch.
// DepotOperations::Authorize applies them to every call, whichever
// transport it came through. Internal to the server.
//
// The file: one principal per line, fields separated by spaces or tabs;
// blank lines and lines starting with '#' are ignored.
//
//   NAME  ROLE  TOKEN-HASH  [PREFIX | LIMIT ...]
//
//   NAME        1 to 64 characters from A-Z a-z 0-9 . _ - @ (for messages
//               and logs; unique)
//   ROLE        read:  fetch, read, stat, list
//               write: also push and delete
//               admin: everything (also what later operations reserve
//                      to operators)
//   TOKEN-HASH  sha256:<64 hex digits>, the SHA-256 of the token
//               (`h5depot new-token` makes a token and its line); unique.
//               Or `public`: the principal of every caller that presents
//               no token (HTTP readers such as HDF5's ROS3 driver, which
//               cannot send one). At most one; its role must be read and
//               it must name its prefixes ("*" for every id).
//   PREFIX      the image ids the principal may touch start with one of
//               these; none, or "*", means every id
//   LIMIT       KEY=VALUE, this principal's own value of a per-principal
//               limit instead of h5depotd's --principal-* default:
//                 max-memory=SIZE          (e.g. 2G; at least 1 byte)
//                 max-pending-pushes=N     (at least 1)
//                 max-waits=N
//               each VALUE may also be "unlimited". No image id has an
//               '=' (image_id.h), so a limit is never taken for a prefix.
//
// The file holds no secret: a token cannot be recovered from its hash.
#ifndef H5DEPOT_SERVER_ACCESS_RULES_INTERNAL_H_
#define H5DEPOT_SERVER_ACCESS_RULES_INTERNAL_H_

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace h5depot::server {

enum class Role { kRead, kWrite, kAdmin };

// "read", "write", "admin".
std::string_view RoleName(Role role);

// What one principal may hold at once (docs/SECURITY.md, "Limits per
// principal"). kUnlimited: no limit of its own.
struct PrincipalLimits {
  static constexpr uint64_t kUnlimited = ~uint64_t{0};
  // Bytes of the images it pushed, until their buffers are freed, and of
  // its pushes under way.
  uint64_t max_memory_bytes = kUnlimited;
  uint64_t max_pending_pushes = 64;
  // Fetches and stats waiting for an image.
  uint64_t max_waits = 1000;
};

struct Principal {
  std::string name;
  Role role = Role::kRead;
  std::vector<std::string> prefixes;  // empty: every image id
  // The auth file's LIMIT fields; unset ones are the server's defaults.
  std::optional<uint64_t> max_memory_bytes;
  std::optional<uint64_t> max_pending_pushes;
  std::optional<uint64_t> max_waits;

  // This principal's limits: its own where it has them, `defaults` else.
  PrincipalLimits LimitsOver(const PrincipalLimits& defaults) const;

  // Whether `image_id` starts with one of the prefixes.
  bool MayTouch(std::string_view image_id) const;
};

class AccessRules {
 public:
  // Parses the text of an auth file; INVALID_ARGUMENT naming `source` and
  // the line for the first thing wrong. No principal at all is an error
  // too: such a file would lock everyone out.
  static absl::StatusOr<std::unique_ptr<AccessRules>> Parse(
      std::string_view text, std::string_view source);
  // Reads and parses the file at `path`.
  static absl::StatusOr<std::unique_ptr<AccessRules>> Load(
      const std::string& path);

  // The principal whose token `token` is; null if none is.
  const Principal* Find(std::string_view token) const;
  // The principal of callers without a token (TOKEN-HASH `public`); null
  // if the file has none.
  const Principal* FindPublic() const {
    return public_.has_value() ? &*public_ : nullptr;
  }

  // How many principals the file names, the public one included.
  size_t size() const {
    return by_token_hash_.size() + (public_.has_value() ? 1 : 0);
  }

  // The TOKEN-HASH field of the public principal.
  static constexpr std::string_view kPublicTokenHash = "public";

 private:
  AccessRules() = default;

  absl::flat_hash_map<std::string, Principal> by_token_hash_;
  std::optional<Principal> public_;
};

}  // namespace h5depot::server

#endif  // H5DEPOT_SERVER_ACCESS_RULES_INTERNAL_H_
