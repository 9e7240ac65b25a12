#include <algorithm>
#include <string>

#include "client/src/image_transport_internal.h"

namespace h5depot::internal {

CallDeadline CallDeadline::Start(absl::Duration call_timeout,
                                 absl::Duration wait) {
  const absl::Time now = absl::Now();
  CallDeadline deadline;
  deadline.base = now + call_timeout + wait;  // Infinite stays infinite
  deadline.reply = wait > absl::ZeroDuration()
                       ? std::min(deadline.base, now + wait + kWaitMargin)
                       : deadline.base;
  return deadline;
}

absl::Time CallDeadline::Whole(uint64_t bytes) const {
  if (base == absl::InfiniteFuture()) return base;
  return std::max(reply, base + absl::Seconds(static_cast<double>(bytes) /
                                              kTransferBytesPerSecond));
}

uint64_t ToMillis(absl::Duration duration) {
  if (duration <= absl::ZeroDuration()) return 0;
  return std::max<int64_t>(
      1, absl::ToInt64Milliseconds(std::min(duration, absl::Hours(300000))));
}

ImageInfo ToImageInfo(std::string_view image_id, uint64_t size,
                      uint64_t generation, uint64_t checksum,
                      int64_t created_unix_micros,
                      int64_t expires_unix_micros) {
  ImageInfo info;
  info.image_id = std::string(image_id);
  info.size = size;
  info.generation = generation;
  info.checksum = checksum;
  info.created = absl::FromUnixMicros(created_unix_micros);
  info.expires = expires_unix_micros == 0
                     ? absl::InfiniteFuture()
                     : absl::FromUnixMicros(expires_unix_micros);
  return info;
}

absl::Status CheckReceivedChecksum(uint64_t digest, uint64_t announced) {
  if (digest == announced) return absl::OkStatus();
  return absl::DataLossError(
      "the received bytes do not match the image's checksum");
}

}  // namespace h5depot::internal
