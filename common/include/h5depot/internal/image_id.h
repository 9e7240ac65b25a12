// What an image id may look like. The server enforces it; clients may check
// early to give the same message without a round trip.
#ifndef H5DEPOT_COMMON_IMAGE_ID_H_
#define H5DEPOT_COMMON_IMAGE_ID_H_

#include <cstddef>
#include <string_view>

#include "absl/status/status.h"

namespace h5depot::internal {

inline constexpr size_t kMaxImageIdLength = 255;

// OK, or INVALID_ARGUMENT saying which rule `image_id` breaks: 1 to 255
// characters from [A-Za-z0-9._-/], '/'-separated segments that are neither
// empty nor "." nor "..".
absl::Status ValidateImageId(std::string_view image_id);

}  // namespace h5depot::internal

#endif  // H5DEPOT_COMMON_IMAGE_ID_H_
