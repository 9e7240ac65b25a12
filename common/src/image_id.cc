#include "h5depot/internal/image_id.h"

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

}  // namespace h5depot::internal
