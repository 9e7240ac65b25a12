#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <fstream>

#include "absl/strings/str_cat.h"
#include "client/src/token_source_internal.h"
#include "h5depot/internal/token.h"

namespace h5depot::internal {
namespace {

absl::StatusOr<std::string> Checked(std::string token, std::string_view from) {
  if (absl::Status valid = ValidateToken(token); !valid.ok()) {
    return absl::InvalidArgumentError(
        absl::StrCat(std::string(from), ": ", std::string(valid.message())));
  }
  return token;
}

}  // namespace

absl::StatusOr<std::string> ResolveToken(std::string_view given) {
  if (!given.empty()) return Checked(std::string(given), "the given token");
  const char* value = std::getenv("H5DEPOT_TOKEN");
  if (value != nullptr && *value != '\0') {
    return Checked(value, "H5DEPOT_TOKEN");
  }
  const char* path = std::getenv("H5DEPOT_TOKEN_FILE");
  if (path == nullptr || *path == '\0') return std::string();
  std::ifstream file(path);
  std::string line;
  if (!file || !std::getline(file, line)) {
    return absl::NotFoundError(
        absl::StrCat("cannot read a token from H5DEPOT_TOKEN_FILE=", path, ": ",
                     std::strerror(errno)));
  }
  if (!line.empty() && line.back() == '\r') line.pop_back();
  return Checked(std::move(line),
                 absl::StrCat("the token in H5DEPOT_TOKEN_FILE=", path));
}

}  // namespace h5depot::internal
