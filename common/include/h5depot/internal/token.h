// Bearer tokens: what one may look like, and the one hash a server's auth
// file keeps of it (so that the file holds no secret). Clients and server
// share these rules; the token travels in gRPC's "authorization" metadata
// ("Bearer <token>") and in the data lane's hello (lane_protocol.h).
#ifndef H5DEPOT_COMMON_TOKEN_H_
#define H5DEPOT_COMMON_TOKEN_H_

#include <cstddef>
#include <string>
#include <string_view>

#include "absl/status/status.h"

namespace h5depot::internal {

inline constexpr size_t kMaxTokenBytes = 1024;

// How a token's hash is written: this prefix, then 64 lowercase hex digits.
inline constexpr std::string_view kTokenHashPrefix = "sha256:";

// OK, or INVALID_ARGUMENT saying which rule `token` breaks: 1 to
// kMaxTokenBytes printable ASCII characters, none of them a space (so that
// it fits an HTTP header and a line of a file unchanged). Never quotes the
// token itself: the message may be logged.
absl::Status ValidateToken(std::string_view token);

// "sha256:" and the SHA-256 of `token`, in lowercase hex. Tokens are
// random strings of at least 128 bits, not passwords: one fast hash is
// what keeps them safe at rest, as for API keys.
std::string TokenHash(std::string_view token);

// A fresh token: 32 random bytes from the kernel, base64url without
// padding (43 characters).
std::string NewToken();

}  // namespace h5depot::internal

#endif  // H5DEPOT_COMMON_TOKEN_H_
