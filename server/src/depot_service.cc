#include <algorithm>
#include <optional>
#include <string>
#include <utility>

#include "absl/strings/str_cat.h"
#include "depot_service_internal.h"
#include "grpc_status_internal.h"

namespace h5depot::server {
namespace {

using internal::ToGrpcStatus;

void FillImageInfo(const StoredImage& image, v1::ImageInfo* info) {
  info->set_image_id(image.image_id());
  info->set_size(image.size());
  info->set_generation(image.generation());
  info->set_checksum(image.checksum());
  info->set_created_unix_micros(absl::ToUnixMicros(image.created()));
  info->set_expires_unix_micros(image.expires() == absl::InfiniteFuture()
                                    ? 0
                                    : absl::ToUnixMicros(image.expires()));
}

// The image, waiting up to `wait_timeout_ms` for it to be pushed.
absl::StatusOr<ImageRef> GetOrWait(ImageStore& store,
                                   grpc::ServerContext* context,
                                   const std::string& image_id,
                                   uint64_t wait_timeout_ms) {
  if (wait_timeout_ms == 0) return store.Get(image_id);
  const absl::Time deadline =
      absl::Now() + absl::Milliseconds(
                        std::min<uint64_t>(wait_timeout_ms, uint64_t{1} << 40));
  return store.WaitFor(image_id, deadline,
                       [context] { return context->IsCancelled(); });
}

// Sends bytes [offset, offset + length) of `image` as chunk messages of at
// most `chunk_bytes`. The range must lie within the image.
template <typename Response, typename Writer>
absl::Status SendRange(const StoredImage& image, uint64_t offset,
                       uint64_t length, uint64_t chunk_bytes, Writer* writer) {
  Response response;
  const uint64_t end = offset + length;
  for (uint64_t at = offset; at < end; at += chunk_bytes) {
    const uint64_t n = std::min(chunk_bytes, end - at);
    response.set_chunk(image.data() + at, n);
    if (!writer->Write(response)) {
      return absl::CancelledError("the client went away during the transfer");
    }
  }
  return absl::OkStatus();
}

// The part of [offset, offset + length) that lies within `image`.
uint64_t ClampedLength(const StoredImage& image, uint64_t offset,
                       uint64_t length) {
  if (offset >= image.size()) return 0;
  return std::min(length, image.size() - offset);
}

std::optional<uint64_t> OptionalGeneration(bool has, uint64_t value) {
  return has ? std::optional<uint64_t>(value) : std::nullopt;
}

}  // namespace

DepotService::DepotService(ImageStore* store, uint64_t max_chunk_bytes,
                           uint64_t send_chunk_bytes)
    : store_(store),
      max_chunk_bytes_(max_chunk_bytes),
      send_chunk_bytes_(send_chunk_bytes) {}

grpc::Status DepotService::Push(grpc::ServerContext* context,
                                grpc::ServerReader<v1::PushRequest>* reader,
                                v1::PushResponse* response) {
  v1::PushRequest request;
  if (!reader->Read(&request) || !request.has_header()) {
    return ToGrpcStatus(
        absl::InvalidArgumentError("a push must start with a header message"));
  }
  const v1::PushHeader& header = request.header();
  PushRequest push;
  push.image_id = header.image_id();
  push.size = header.size();
  push.checksum = header.checksum();
  push.if_generation_match = OptionalGeneration(
      header.has_if_generation_match(), header.if_generation_match());
  push.ttl = absl::Milliseconds(
      std::min<uint64_t>(header.ttl_ms(), uint64_t{1} << 50));
  absl::StatusOr<std::unique_ptr<PendingImage>> pending =
      store_->BeginPush(std::move(push));
  if (!pending.ok()) return ToGrpcStatus(pending.status());

  // Tells a client waiting before it streams a large image to go ahead.
  reader->SendInitialMetadata();
  while (reader->Read(&request)) {
    if (!request.has_chunk()) {
      return ToGrpcStatus(absl::InvalidArgumentError(
          "a push sends one header, then only chunks"));
    }
    if (absl::Status status =
            (*pending)->Append(request.chunk().data(), request.chunk().size());
        !status.ok()) {
      return ToGrpcStatus(status);
    }
  }
  if (context->IsCancelled()) {
    return ToGrpcStatus(absl::CancelledError(
        "the push was cancelled before it completed; nothing was stored"));
  }
  absl::StatusOr<ImageRef> published = (*pending)->Publish();
  if (!published.ok()) return ToGrpcStatus(published.status());
  FillImageInfo(**published, response->mutable_info());
  return grpc::Status::OK;
}

grpc::Status DepotService::Fetch(
    grpc::ServerContext* context, const v1::FetchRequest* request,
    grpc::ServerWriter<v1::FetchResponse>* writer) {
  absl::StatusOr<ImageRef> image = GetOrWait(
      *store_, context, request->image_id(), request->wait_timeout_ms());
  if (!image.ok()) return ToGrpcStatus(image.status());
  v1::FetchResponse head;
  FillImageInfo(**image, head.mutable_info());
  if (!writer->Write(head)) return grpc::Status::CANCELLED;
  return ToGrpcStatus(SendRange<v1::FetchResponse>(**image, 0, (*image)->size(),
                                                   send_chunk_bytes_, writer));
}

grpc::Status DepotService::Read(grpc::ServerContext* /*context*/,
                                const v1::ReadRequest* request,
                                grpc::ServerWriter<v1::ReadResponse>* writer) {
  absl::StatusOr<ImageRef> image =
      store_->GetGeneration(request->image_id(), request->generation());
  if (!image.ok()) return ToGrpcStatus(image.status());
  v1::ReadResponse head;
  FillImageInfo(**image, head.mutable_info());
  if (!writer->Write(head)) return grpc::Status::CANCELLED;
  return ToGrpcStatus(SendRange<v1::ReadResponse>(
      **image, request->offset(),
      ClampedLength(**image, request->offset(), request->length()),
      send_chunk_bytes_, writer));
}

grpc::Status DepotService::OpenReader(
    grpc::ServerContext* /*context*/,
    grpc::ServerReaderWriter<v1::ReaderResponse, v1::ReaderRequest>* stream) {
  v1::ReaderRequest request;
  if (!stream->Read(&request) || !request.has_open()) {
    return ToGrpcStatus(
        absl::InvalidArgumentError("a reader must start with an open message"));
  }
  // Holding the reference pins this generation for the life of the stream.
  absl::StatusOr<ImageRef> image = store_->GetGeneration(
      request.open().image_id(), request.open().generation());
  if (!image.ok()) return ToGrpcStatus(image.status());
  v1::ReaderResponse head;
  FillImageInfo(**image, head.mutable_info());
  if (!stream->Write(head)) return grpc::Status::CANCELLED;
  while (stream->Read(&request)) {
    if (!request.has_range()) {
      return ToGrpcStatus(absl::InvalidArgumentError(
          "a reader sends one open message, then only ranges"));
    }
    const uint64_t offset = request.range().offset();
    if (absl::Status status = SendRange<v1::ReaderResponse>(
            **image, offset,
            ClampedLength(**image, offset, request.range().length()),
            send_chunk_bytes_, stream);
        !status.ok()) {
      return ToGrpcStatus(status);
    }
  }
  return grpc::Status::OK;
}

grpc::Status DepotService::Stat(grpc::ServerContext* context,
                                const v1::StatRequest* request,
                                v1::ImageInfo* response) {
  absl::StatusOr<ImageRef> image = GetOrWait(
      *store_, context, request->image_id(), request->wait_timeout_ms());
  if (!image.ok()) return ToGrpcStatus(image.status());
  FillImageInfo(**image, response);
  return grpc::Status::OK;
}

grpc::Status DepotService::List(grpc::ServerContext* /*context*/,
                                const v1::ListRequest* request,
                                v1::ListResponse* response) {
  ListResult result = store_->List(request->prefix(), request->page_size(),
                                   request->page_token());
  for (const ImageRef& image : result.images) {
    FillImageInfo(*image, response->add_images());
  }
  response->set_next_page_token(std::move(result.next_page_token));
  return grpc::Status::OK;
}

grpc::Status DepotService::Delete(grpc::ServerContext* /*context*/,
                                  const v1::DeleteRequest* request,
                                  v1::DeleteResponse* /*response*/) {
  return ToGrpcStatus(
      store_->Delete(request->image_id(),
                     OptionalGeneration(request->has_if_generation_match(),
                                        request->if_generation_match())));
}

grpc::Status DepotService::GetLimits(grpc::ServerContext* /*context*/,
                                     const v1::GetLimitsRequest* /*request*/,
                                     v1::ServerLimits* response) {
  response->set_max_image_bytes(store_->options().max_image_bytes);
  response->set_max_memory_bytes(store_->options().max_memory_bytes);
  response->set_max_chunk_bytes(max_chunk_bytes_);
  response->set_stored_bytes(store_->Stats().stored_bytes);
  return grpc::Status::OK;
}

}  // namespace h5depot::server
