// Where a client's bearer token comes from. Internal to the client.
#ifndef H5DEPOT_CLIENT_TOKEN_SOURCE_INTERNAL_H_
#define H5DEPOT_CLIENT_TOKEN_SOURCE_INTERNAL_H_

#include <string>
#include <string_view>

#include "absl/status/statusor.h"

namespace h5depot::internal {

// The token a client sends: `given` if not empty, else the environment's
// H5DEPOT_TOKEN, else the first line of the file H5DEPOT_TOKEN_FILE names
// (its line end removed); empty if none of them is set. INVALID_ARGUMENT,
// saying where the token came from, if it is not a valid token
// (token.h); NOT_FOUND if the file cannot be read.
absl::StatusOr<std::string> ResolveToken(std::string_view given);

}  // namespace h5depot::internal

#endif  // H5DEPOT_CLIENT_TOKEN_SOURCE_INTERNAL_H_
