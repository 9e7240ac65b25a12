// Fuzzes image id validation (h5depot/internal/image_id.h), which the
// server applies to every id a client names. An input is the id. The
// verdict must be the one the documented rules give (checked here against
// a separate reading of them), a refusal must be INVALID_ARGUMENT with a
// message, and what is accepted must stay acceptable where the rules say it
// is: each segment alone, and the id nested under itself while it fits.
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "fuzz/fuzz_check.h"
#include "h5depot/internal/image_id.h"

namespace h5depot::internal {
namespace {

// The parts of `id` between slashes, empty ones included.
std::vector<std::string_view> Segments(std::string_view id) {
  std::vector<std::string_view> segments;
  for (size_t slash; (slash = id.find('/')) != std::string_view::npos;
       id.remove_prefix(slash + 1)) {
    segments.push_back(id.substr(0, slash));
  }
  segments.push_back(id);
  return segments;
}

// The rules of image_id.h, read independently of image_id.cc: 1 to 255
// characters from [A-Za-z0-9._-/], '/'-separated segments that are neither
// empty nor "." nor "..".
bool FollowsTheRules(std::string_view id) {
  if (id.empty() || id.size() > kMaxImageIdLength) return false;
  constexpr std::string_view kAllowed =
      "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._-/";
  if (id.find_first_not_of(kAllowed) != std::string_view::npos) return false;
  for (std::string_view segment : Segments(id)) {
    if (segment.empty() || segment == "." || segment == "..") return false;
  }
  return true;
}

void CheckStaysValid(std::string_view id) {
  for (std::string_view segment : Segments(id)) {
    FUZZ_CHECK(ValidateImageId(segment).ok());
  }
  const std::string nested = std::string(id) + "/" + std::string(id);
  if (nested.size() <= kMaxImageIdLength) {
    FUZZ_CHECK(ValidateImageId(nested).ok());
  }
  FUZZ_CHECK(!ValidateImageId(std::string(id) + "/").ok());
  FUZZ_CHECK(!ValidateImageId("/" + std::string(id)).ok());
}

}  // namespace
}  // namespace h5depot::internal

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  namespace internal = ::h5depot::internal;
  const std::string_view id(reinterpret_cast<const char*>(data), size);
  const absl::Status status = internal::ValidateImageId(id);
  FUZZ_CHECK(status.ok() == internal::FollowsTheRules(id));
  if (status.ok()) {
    internal::CheckStaysValid(id);
  } else {
    FUZZ_CHECK(status.code() == absl::StatusCode::kInvalidArgument);
    FUZZ_CHECK(!status.message().empty());
  }
  return 0;
}
