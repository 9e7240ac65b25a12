#include "h5depot/hdf5_transfer.h"

#include <optional>
#include <string>
#include <utility>

#include "H5LTpublic.h"
#include "absl/functional/function_ref.h"
#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "client/src/file_image_internal.h"
#include "client/src/memory_file_internal.h"
#include "h5depot/internal/image_id.h"
#include "h5depot/internal/memfd.h"

namespace h5depot {
namespace {

constexpr unsigned kFetchFlags =
    H5LT_FILE_IMAGE_OPEN_RW | H5LT_FILE_IMAGE_DONT_COPY;

std::string Quoted(std::string_view image_id) {
  return absl::StrCat("'", std::string(image_id), "'");
}

// Keeps the code, prefixes the message with what was being done.
absl::Status Annotate(const absl::Status& status, const std::string& what) {
  return absl::Status(status.code(),
                      absl::StrCat(what, ": ",
                                   std::string(status.message().data(),
                                               status.message().size())));
}

absl::Status CheckFetchFlags(unsigned flags) {
  if ((flags & H5LT_FILE_IMAGE_DONT_RELEASE) != 0) {
    return absl::InvalidArgumentError(
        "a fetched image is always handed over to HDF5: "
        "H5LT_FILE_IMAGE_DONT_RELEASE does not apply (to keep the buffer, "
        "fetch it and open it with OpenFileImage)");
  }
  if ((flags & ~kFetchFlags) != 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "unknown file image flags 0x", absl::Hex(flags & ~kFetchFlags),
        "; a fetched image opens with H5LT_FILE_IMAGE_OPEN_RW or without"));
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<ImageInfo> PushImage(Client& client, std::string_view image_id,
                                    const void* data, size_t size,
                                    const ImagePushOptions& options) {
  if (options.validate) {
    if (absl::Status valid = ValidateImage(data, size); !valid.ok()) {
      return Annotate(valid, absl::StrCat("push ", Quoted(image_id)));
    }
  }
  return client.Push(image_id, data, size, options);
}

absl::StatusOr<ImageInfo> PushFileImage(Client& client,
                                        std::string_view image_id,
                                        hid_t file_id,
                                        const ImagePushOptions& options) {
  const std::string what = absl::StrCat("push ", Quoted(image_id));
  // A bad id must not cost a copy of the file.
  if (absl::Status status = internal::ValidateImageId(image_id); !status.ok()) {
    return Annotate(status, what);
  }
  // A file made in a memfd (memory_file.h) is sealed and handed over as
  // it is: to a server on this host, nothing is copied at all.
  // (What is not an open file at all is refused by TakeFileImage below,
  // with the same message as ever.)
  absl::StatusOr<std::optional<internal::SealedFileImage>> sealed =
      internal::SealMemoryFile(file_id);
  if (sealed.ok() && sealed->has_value()) {
    const internal::SealedFileImage& image = **sealed;
    if (options.validate) {
      absl::StatusOr<internal::Mapping> mapping = internal::Mapping::Map(
          image.fd.get(), image.size, internal::Mapping::Access::kReadOnly);
      if (!mapping.ok()) return Annotate(mapping.status(), what);
      if (absl::Status valid = ValidateImage(mapping->data(), image.size);
          !valid.ok()) {
        return Annotate(valid, what);
      }
    }
    return client.PushMemfd(image_id, image.fd.get(), image.size, options);
  }
  absl::StatusOr<ImageBuffer> image = TakeFileImage(file_id);
  if (!image.ok()) return Annotate(image.status(), what);
  return PushImage(client, image_id, image->data(), image->size(), options);
}

namespace {

// The two appends of a file's image: a file made by CreateMemoryFile is
// sealed and handed over as its memfd; any other's image is taken by
// `append_copy`, which copies it once and appends it (its failures to take
// the image prefixed with the `what` it is given).
absl::StatusOr<AppendedStep> AppendFile(
    Client& client, std::string_view stream, hid_t file_id,
    const AppendOptions& options,
    absl::FunctionRef<absl::StatusOr<AppendedStep>(const std::string& what)>
        append_copy) {
  const std::string what = absl::StrCat("append to stream ", Quoted(stream));
  if (absl::Status status = internal::ValidateImageId(stream); !status.ok()) {
    return Annotate(status, what);
  }
  absl::StatusOr<std::optional<internal::SealedFileImage>> sealed =
      internal::SealMemoryFile(file_id);
  if (sealed.ok() && sealed->has_value()) {
    const internal::SealedFileImage& image = **sealed;
    return client.AppendMemfd(stream, image.fd.get(), image.size, options);
  }
  return append_copy(what);
}

}  // namespace

absl::StatusOr<AppendedStep> AppendFileImage(Client& client,
                                             std::string_view stream,
                                             hid_t file_id,
                                             const AppendOptions& options) {
  return AppendFile(
      client, stream, file_id, options,
      [&](const std::string& what) -> absl::StatusOr<AppendedStep> {
        absl::StatusOr<ImageBuffer> image = TakeFileImage(file_id);
        if (!image.ok()) return Annotate(image.status(), what);
        return client.Append(stream, image->data(), image->size(), options);
      });
}

absl::StatusOr<StepBuffer> TakeFileImageInStepBuffer(
    Client& client, std::string_view stream, hid_t file_id,
    const AppendOptions& options) {
  std::optional<StepBuffer> buffer;
  absl::StatusOr<size_t> taken = internal::CopyFlushedFileImage(
      file_id, [&](size_t size) -> absl::StatusOr<void*> {
        buffer.reset();  // one lent for a size that changed goes back
        absl::StatusOr<StepBuffer> lent =
            client.BeginStep(stream, size, options);
        if (!lent.ok()) return lent.status();
        buffer = *std::move(lent);
        return buffer->data();
      });
  if (!taken.ok()) return taken.status();
  return *std::move(buffer);
}

absl::StatusOr<AppendedStep> AppendFileImageInStepBuffer(
    Client& client, std::string_view stream, hid_t file_id,
    const AppendOptions& options) {
  return AppendFile(
      client, stream, file_id, options,
      [&](const std::string& what) -> absl::StatusOr<AppendedStep> {
        absl::StatusOr<StepBuffer> buffer =
            TakeFileImageInStepBuffer(client, stream, file_id, options);
        if (!buffer.ok()) return Annotate(buffer.status(), what);
        return client.CommitStep(*std::move(buffer), options);
      });
}

absl::StatusOr<FetchedFile> FetchAndOpen(Client& client,
                                         std::string_view image_id,
                                         unsigned flags,
                                         const FetchOptions& options) {
  if (absl::Status status = CheckFetchFlags(flags); !status.ok()) {
    return Annotate(status, absl::StrCat("open ", Quoted(image_id)));
  }
  absl::StatusOr<FetchedImage> fetched = client.Fetch(image_id, options);
  if (!fetched.ok()) return fetched.status();
  absl::StatusOr<hid_t> file = OpenFileImage(std::move(fetched->buffer), flags);
  if (!file.ok()) {
    return Annotate(file.status(),
                    absl::StrCat("open ", Quoted(image_id), " (generation ",
                                 fetched->info.generation, ")"));
  }
  FetchedFile result;
  result.info = std::move(fetched->info);
  result.file = *file;
  return result;
}

ImageUpdate::ImageUpdate(Client& client, ImageInfo base,
                         std::unique_ptr<WritableImage> image)
    : client_(client), base_(std::move(base)), image_(std::move(image)) {}

// WritableImage's destructor closes a file still open, discarding it.
ImageUpdate::~ImageUpdate() = default;

absl::StatusOr<std::unique_ptr<ImageUpdate>> ImageUpdate::Begin(
    Client& client, std::string_view image_id, const FetchOptions& options) {
  absl::StatusOr<FetchedImage> fetched = client.Fetch(image_id, options);
  if (!fetched.ok()) return fetched.status();
  absl::StatusOr<std::unique_ptr<WritableImage>> image =
      WritableImage::Open(std::move(fetched->buffer));
  if (!image.ok()) {
    return Annotate(image.status(),
                    absl::StrCat("open ", Quoted(image_id), " (generation ",
                                 fetched->info.generation, ")"));
  }
  return std::unique_ptr<ImageUpdate>(
      new ImageUpdate(client, std::move(fetched->info), *std::move(image)));
}

absl::StatusOr<ImageInfo> ImageUpdate::Commit(const ImagePushOptions& options) {
  const std::string what = absl::StrCat("push ", Quoted(base_.image_id));
  if (committed_) {
    return absl::FailedPreconditionError(
        absl::StrCat(what, ": this update was already pushed"));
  }
  if (options.if_generation_match.has_value() &&
      *options.if_generation_match != base_.generation) {
    return absl::InvalidArgumentError(absl::StrCat(
        what, ": an update pushes only over the generation it fetched (",
        base_.generation, "), not ", *options.if_generation_match));
  }
  if (!final_image_.has_value()) {
    absl::StatusOr<ImageBuffer> closed = image_->Close();
    if (!closed.ok()) return Annotate(closed.status(), what);
    final_image_ = *std::move(closed);
  }
  ImagePushOptions conditional = options;
  conditional.if_generation_match = base_.generation;
  absl::StatusOr<ImageInfo> pushed =
      PushImage(client_, base_.image_id, final_image_->data(),
                final_image_->size(), conditional);
  if (!pushed.ok()) return pushed.status();
  committed_ = true;
  final_image_.reset();
  return pushed;
}

}  // namespace h5depot
