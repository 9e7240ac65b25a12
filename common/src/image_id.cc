#include "h5depot/internal/image_id.h"

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"

namespace h5depot::internal {
namespace {

constexpr char kRules[] =
    "image ids are 1 to 255 characters from A-Z a-z 0-9 . _ - /, made of "
    "'/'-separated segments that are not empty, '.' or '..'";

bool IsAllowedCharacter(char c) {
  return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') ||
         (c >= '0' && c <= '9') || c == '.' || c == '_' || c == '-' || c == '/';
}

}  // namespace

absl::Status ValidateImageId(std::string_view image_id) {
  if (image_id.empty()) {
    return absl::InvalidArgumentError(
        absl::StrCat("image id is empty; ", kRules));
  }
  if (image_id.size() > kMaxImageIdLength) {
    return absl::InvalidArgumentError(absl::StrCat(
        "image id is ", image_id.size(), " characters long; ", kRules));
  }
  for (char c : image_id) {
    if (!IsAllowedCharacter(c)) {
      return absl::InvalidArgumentError(absl::StrCat(
          "image id contains the character ",
          (c >= 0x20 && c < 0x7f) ? absl::StrCat("'", std::string(1, c), "'")
                                  : absl::StrCat("0x", absl::Hex(c & 0xff)),
          "; ", kRules));
    }
  }
  size_t segment_start = 0;
  while (segment_start <= image_id.size()) {
    size_t segment_end = image_id.find('/', segment_start);
    if (segment_end == std::string_view::npos) segment_end = image_id.size();
    std::string_view segment =
        image_id.substr(segment_start, segment_end - segment_start);
    segment_start = segment_end + 1;
    if (segment.empty() || segment == "." || segment == "..") {
      return absl::InvalidArgumentError(
          absl::StrCat("image id '", std::string(image_id),
                       "' has an empty, '.' or '..' segment; ", kRules));
    }
  }
  return absl::OkStatus();
}

std::string StreamStepId(std::string_view stream, uint64_t step) {
  return absl::StrCat(std::string(stream), "@", step);
}

bool ParseStreamStepId(std::string_view image_id, std::string_view* stream,
                       uint64_t* step) {
  const size_t at = image_id.rfind('@');
  if (at == std::string_view::npos || at + 1 == image_id.size()) return false;
  const std::string_view digits = image_id.substr(at + 1);
  for (char c : digits) {
    if (c < '0' || c > '9') return false;
  }
  // One spelling per step: no leading zeros.
  if (digits.size() > 1 && digits[0] == '0') return false;
  uint64_t number = 0;
  if (!absl::SimpleAtoi(std::string(digits), &number)) return false;
  const std::string_view name = image_id.substr(0, at);
  if (!ValidateImageId(name).ok()) return false;
  *stream = name;
  *step = number;
  return true;
}

absl::Status ValidateReadableId(std::string_view image_id) {
  std::string_view stream;
  uint64_t step = 0;
  if (ParseStreamStepId(image_id, &stream, &step)) return absl::OkStatus();
  return ValidateImageId(image_id);
}

}  // namespace h5depot::internal
