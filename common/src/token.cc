#include "h5depot/internal/token.h"

#include <openssl/evp.h>
#include <sys/random.h>

#include <cerrno>
#include <cstdint>
#include <cstdlib>

#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"

namespace h5depot::internal {

absl::Status ValidateToken(std::string_view token) {
  if (token.empty()) return absl::InvalidArgumentError("the token is empty");
  if (token.size() > kMaxTokenBytes) {
    return absl::InvalidArgumentError(
        absl::StrCat("the token is ", token.size(), " bytes long; at most ",
                     kMaxTokenBytes, " are allowed"));
  }
  for (size_t i = 0; i < token.size(); ++i) {
    const unsigned char c = static_cast<unsigned char>(token[i]);
    if (c <= 0x20 || c >= 0x7f) {
      return absl::InvalidArgumentError(absl::StrCat(
          "the token has a space, control or non-ASCII character at byte ", i,
          " (a trailing newline from a file?); tokens are printable ASCII"));
    }
  }
  return absl::OkStatus();
}

std::string TokenHash(std::string_view token) {
  // Fetched once: EVP_sha256() makes every digest look the algorithm up in
  // OpenSSL's provider store, under a lock all threads share, which cost
  // a server with tokens about a tenth of its small-image throughput.
  static EVP_MD* const sha256 = EVP_MD_fetch(nullptr, "SHA2-256", nullptr);
  unsigned char digest[EVP_MAX_MD_SIZE];
  unsigned int digest_bytes = 0;
  // Cannot fail for SHA-256 short of memory exhaustion; a failure leaves
  // the digest unset, which no file's hash matches.
  if (sha256 == nullptr || EVP_Digest(token.data(), token.size(), digest,
                                      &digest_bytes, sha256, nullptr) != 1) {
    return std::string();
  }
  return std::string(kTokenHashPrefix) +
         absl::BytesToHexString(absl::string_view(
             reinterpret_cast<const char*>(digest), digest_bytes));
}

std::string NewToken() {
  uint8_t bytes[32];
  size_t filled = 0;
  while (filled < sizeof(bytes)) {
    const ssize_t got = getrandom(bytes + filled, sizeof(bytes) - filled, 0);
    if (got < 0 && errno == EINTR) continue;
    // Without randomness no token is better than a weak one.
    if (got < 0) std::abort();
    filled += static_cast<size_t>(got);
  }
  return absl::WebSafeBase64Escape(
      absl::string_view(reinterpret_cast<const char*>(bytes), sizeof(bytes)));
}

}  // namespace h5depot::internal
