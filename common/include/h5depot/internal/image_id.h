// What an image id may look like. The server enforces it; clients may check
// early to give the same message without a round trip.
#ifndef H5DEPOT_COMMON_IMAGE_ID_H_
#define H5DEPOT_COMMON_IMAGE_ID_H_

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

#include "absl/status/status.h"

namespace h5depot::internal {

inline constexpr size_t kMaxImageIdLength = 255;

// OK, or INVALID_ARGUMENT saying which rule `image_id` breaks: 1 to 255
// characters from [A-Za-z0-9._-/], '/'-separated segments that are neither
// empty nor "." nor "..".
absl::Status ValidateImageId(std::string_view image_id);

// A stream's steps are images whose id is the stream's, an '@' and the
// step's number in decimal ("frames@12"): ids no push can make, since '@'
// is not an image id character. Only a stream append publishes one, only
// the stream frees one; anyone who may read the stream may fetch, read or
// stat it by that id.
std::string StreamStepId(std::string_view stream, uint64_t step);

// A step id's stream and number; false for anything that is not a step id
// of a valid stream name (a plain image id included).
bool ParseStreamStepId(std::string_view image_id, std::string_view* stream,
                       uint64_t* step);

// OK for a valid image id or a step id; otherwise ValidateImageId's error.
// For the calls that read (fetch, read, stat); pushes and deletes take
// image ids alone.
absl::Status ValidateReadableId(std::string_view image_id);

}  // namespace h5depot::internal

#endif  // H5DEPOT_COMMON_IMAGE_ID_H_
