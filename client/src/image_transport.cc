#include <algorithm>
#include <string>
#include <utility>

#include "absl/strings/str_cat.h"
#include "client/src/image_transport_internal.h"
#include "h5depot/internal/checksum.h"

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

absl::StatusOr<std::unique_ptr<ImageReader>> ImageTransport::OpenPinnedReader(
    std::string_view image_id, uint64_t generation, absl::Time open_deadline,
    absl::Duration read_timeout, std::shared_ptr<ImageTransport> reads) {
  static_cast<void>(image_id);
  static_cast<void>(generation);
  static_cast<void>(open_deadline);
  static_cast<void>(read_timeout);
  static_cast<void>(reads);
  return absl::UnimplementedError("this transport pins no readers");
}

uint64_t PushBytes::Checksum() const {
  return checksum ? checksum() : internal::Checksum(data, size);
}

PinnedGenerationReader::PinnedGenerationReader(
    std::shared_ptr<ImageTransport> reads, ImageInfo info,
    absl::Duration read_timeout)
    : reads_(std::move(reads)),
      info_(std::move(info)),
      read_timeout_(read_timeout) {}

absl::StatusOr<size_t> PinnedGenerationReader::Read(uint64_t offset, void* out,
                                                    size_t length) {
  return ReadWithDeadline(offset, out, length,
                          CallDeadline::Start(read_timeout_).Whole(length));
}

absl::StatusOr<size_t> PinnedGenerationReader::ReadWithDeadline(
    uint64_t offset, void* out, size_t length, absl::Time deadline) {
  if (offset >= info_.size || length == 0) return 0;
  absl::StatusOr<ReadResult> read = reads_->Read(
      info_.image_id, info_.generation, offset, out, length, deadline);
  if (!read.ok()) {
    return absl::Status(
        read.status().code(),
        absl::StrCat("read '", info_.image_id, "': ", read.status().message()));
  }
  return read->bytes_read;
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
