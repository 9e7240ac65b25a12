// Client: validation, the operation prefixes of error messages, deadlines,
// and dispatch to the transports (image_transport_internal.h). The bytes
// move in grpc_transport.cc and lane_client.cc; lane_fallback.cc chooses
// between them.
#include "h5depot/client.h"

#include <utility>

#include "absl/strings/str_cat.h"
#include "client/src/grpc_transport_internal.h"
#include "client/src/image_transport_internal.h"
#include "client/src/lane_client_internal.h"
#include "client/src/lane_fallback_internal.h"
#include "client/src/mapped_file_internal.h"
#include "client/src/server_target_internal.h"
#include "h5depot/internal/image_id.h"

namespace h5depot {
namespace {

// Prefixes a failed call's message with what was being done, keeping the
// code, so that errors read "fetch 'x': no image 'x'".
absl::Status Annotate(const absl::Status& status, std::string_view what) {
  if (status.ok()) return status;
  return absl::Status(
      status.code(),
      absl::StrCat(std::string(what), ": ", std::string(status.message())));
}

std::string Quoted(std::string_view image_id) {
  return absl::StrCat("'", std::string(image_id), "'");
}

// The same, for a StatusOr, leaving a value alone.
template <typename T>
absl::StatusOr<T> Annotated(absl::StatusOr<T> result, std::string_view verb,
                            std::string_view image_id) {
  if (result.ok()) return result;
  return Annotate(result.status(),
                  absl::StrCat(std::string(verb), " ", Quoted(image_id)));
}

}  // namespace

struct Client::Impl {
  std::string target;
  ClientOptions options;
  // Every call that is not a push or fetch.
  std::shared_ptr<internal::GrpcTransport> grpc;
  // Push and fetch: the data lane or gRPC, per call.
  std::unique_ptr<internal::ImageTransport> images;

  // The deadlines of a call starting now that waits up to `wait` for an
  // image to appear (client.h, "Deadlines").
  internal::CallDeadline Deadline(
      absl::Duration wait = absl::ZeroDuration()) const {
    return internal::CallDeadline::Start(options.call_timeout, wait);
  }
};

absl::StatusOr<std::unique_ptr<Client>> Client::Connect(
    std::string_view target, const ClientOptions& options) {
  if (absl::Status bad = internal::ValidateServerTarget(target); !bad.ok()) {
    return bad;
  }
  if (target.empty()) {
    return absl::InvalidArgumentError(
        "no server given: expected host:port or unix:/path/to/socket");
  }
  if (options.chunk_bytes == 0) {
    return absl::InvalidArgumentError("chunk size must be positive");
  }
  auto impl = std::make_unique<Impl>();
  impl->target = std::string(target);
  impl->options = options;
  absl::StatusOr<std::shared_ptr<internal::GrpcTransport>> grpc =
      internal::GrpcTransport::Connect(impl->target, options);
  if (!grpc.ok()) return grpc.status();
  impl->grpc = *std::move(grpc);
  std::shared_ptr<internal::DataLane> lane;
  if (options.use_data_lane) {
    const ServerLimits& limits = impl->grpc->limits_at_connect();
    lane = internal::DataLane::ForServer(
        impl->target, static_cast<uint32_t>(limits.data_lane_port),
        limits.data_lane_unix_path);
  }
  impl->images = std::make_unique<internal::LaneFallbackTransport>(
      impl->target, options.connect_timeout, impl->grpc, std::move(lane));
  return std::unique_ptr<Client>(new Client(std::move(impl)));
}

Client::Client(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}

Client::~Client() = default;

const std::string& Client::target() const { return impl_->target; }

absl::StatusOr<ImageInfo> Client::Push(std::string_view image_id,
                                       const void* data, size_t size,
                                       const PushOptions& options) {
  if (absl::Status status = internal::ValidateImageId(image_id); !status.ok()) {
    return Annotated<ImageInfo>(status, "push", image_id);
  }
  if (data == nullptr && size > 0) {
    return Annotated<ImageInfo>(absl::InvalidArgumentError("no data"), "push",
                                image_id);
  }
  return Annotated(
      impl_->images->Push(image_id, static_cast<const uint8_t*>(data), size,
                          options, impl_->Deadline().Whole(size)),
      "push", image_id);
}

absl::StatusOr<ImageInfo> Client::PushFile(std::string_view image_id,
                                           const std::string& path,
                                           const PushOptions& options) {
  absl::StatusOr<internal::MappedFile> file = internal::MappedFile::Open(path);
  if (!file.ok()) return Annotated<ImageInfo>(file.status(), "push", image_id);
  return Push(image_id, file->data(), file->size(), options);
}

absl::StatusOr<FetchedImage> Client::Fetch(std::string_view image_id,
                                           const FetchOptions& options) {
  // Checked here, not only by the server, so that both transports refuse a
  // bad id alike, and so that an id too long for the data lane's header is
  // never cut short into another image's id.
  if (absl::Status status = internal::ValidateImageId(image_id); !status.ok()) {
    return Annotated<FetchedImage>(status, "fetch", image_id);
  }
  return Annotated(
      impl_->images->Fetch(image_id, options, impl_->Deadline(options.wait)),
      "fetch", image_id);
}

absl::StatusOr<ReadResult> Client::Read(std::string_view image_id,
                                        uint64_t generation, uint64_t offset,
                                        void* out, size_t length) {
  return Annotated(impl_->images->Read(image_id, generation, offset, out,
                                       length, impl_->Deadline().Whole(length)),
                   "read", image_id);
}

absl::StatusOr<std::unique_ptr<ImageReader>> Client::OpenReader(
    std::string_view image_id, uint64_t generation) {
  return Annotated(
      impl_->grpc->OpenReader(image_id, generation, impl_->Deadline().reply,
                              impl_->options.call_timeout),
      "open reader on", image_id);
}

absl::StatusOr<ImageInfo> Client::Stat(std::string_view image_id,
                                       absl::Duration wait) {
  return Annotated(
      impl_->grpc->Stat(image_id, wait, impl_->Deadline(wait).reply), "stat",
      image_id);
}

absl::StatusOr<ListPage> Client::List(const ListOptions& options) {
  absl::StatusOr<ListPage> page =
      impl_->grpc->List(options, impl_->Deadline().reply);
  if (!page.ok()) return Annotate(page.status(), "list");
  return page;
}

absl::Status Client::Delete(std::string_view image_id,
                            std::optional<uint64_t> if_generation_match) {
  return Annotate(impl_->grpc->Delete(image_id, if_generation_match,
                                      impl_->Deadline().reply),
                  absl::StrCat("delete ", Quoted(image_id)));
}

absl::StatusOr<ServerLimits> Client::GetLimits() {
  absl::StatusOr<ServerLimits> limits =
      impl_->grpc->GetLimits(impl_->Deadline().reply);
  if (!limits.ok()) return Annotate(limits.status(), "get limits");
  return limits;
}

}  // namespace h5depot
