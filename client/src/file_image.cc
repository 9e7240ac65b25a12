#include "h5depot/file_image.h"

#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <cstring>
#include <optional>
#include <string>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "client/src/core_driver_internal.h"
#include "client/src/file_image_internal.h"
#include "client/src/hdf5_error_internal.h"
#include "client/src/image_share_internal.h"
#include "client/src/mapped_image_internal.h"
#include "client/src/superblock_internal.h"
#include "h5depot/internal/hdf5_signature.h"

namespace h5depot {
namespace {

using internal::BufferOwner;
using internal::Hdf5Failure;
using internal::ImageShare;
using internal::ImageShareRef;
using internal::QuietHdf5Errors;

constexpr unsigned kKnownFlags = H5LT_FILE_IMAGE_OPEN_RW |
                                 H5LT_FILE_IMAGE_DONT_COPY |
                                 H5LT_FILE_IMAGE_DONT_RELEASE;

// Closes a property list when it goes out of scope.
class PropertyList {
 public:
  explicit PropertyList(hid_t id) : id_(id) {}
  ~PropertyList() {
    if (id_ >= 0) H5Pclose(id_);
  }
  PropertyList(const PropertyList&) = delete;
  PropertyList& operator=(const PropertyList&) = delete;
  hid_t id() const { return id_; }

 private:
  hid_t id_;
};

// The smallest growth increment, that of every image up to 512 KiB.
constexpr size_t kMinGrowthIncrement = size_t{64} << 10;

// How many bytes the core driver adds to a writable image at a time. On
// every flush it also resizes its buffer to the end of the file rounded up
// to this increment, so a buffer the application keeps (which must not
// grow) needs 1: the buffer is then never asked to exceed the file.
size_t GrowthIncrement(size_t size, BufferOwner owner) {
  if (owner == BufferOwner::kApplication) return 1;
  return std::max<size_t>(kMinGrowthIncrement, size / 8);
}

// The file access property list every open starts from: the class's
// defaults with the core driver (kMinGrowthIncrement, no backing store).
// Copying it costs about half of building it with H5Pcreate and
// H5Pset_fapl_core, which counts when the whole open of a small image takes
// a few tens of microseconds (docs/PERFORMANCE.md).
//
// One per process, made on first use and never closed. Ids do not survive
// H5close, and once HDF5 starts again the template's id may name another
// property list, so the template carries kTemplateRefs application
// references, a count no list of the application's is expected to have;
// an id without it is replaced. The id is an atomic, not a mutex's: no lock
// is held across HDF5 calls, and a forked child uses its copy at once.
constexpr int kTemplateRefs = 23;
std::atomic<hid_t> g_core_fapl_template{H5I_INVALID_HID};

// Drops the references of a template that lost the race to be installed.
void DiscardTemplate(hid_t id) {
  for (int i = 0; i < kTemplateRefs; ++i) H5Idec_ref(id);
}

// The template, made if need be; negative if HDF5 refused.
hid_t CoreFaplTemplate() {
  hid_t known = g_core_fapl_template.load(std::memory_order_acquire);
  if (known >= 0 && H5Iget_ref(known) == kTemplateRefs) return known;
  const hid_t fresh = H5Pcreate(H5P_FILE_ACCESS);
  if (fresh < 0) return fresh;
  int refs = 1;
  if (H5Pset_fapl_core(fresh, kMinGrowthIncrement, /*backing_store=*/false) >=
      0) {
    while (refs < kTemplateRefs && H5Iinc_ref(fresh) >= 0) ++refs;
  }
  if (refs < kTemplateRefs) {
    while (refs-- > 0) H5Idec_ref(fresh);
    return H5I_INVALID_HID;
  }
  if (g_core_fapl_template.compare_exchange_strong(known, fresh,
                                                   std::memory_order_acq_rel)) {
    return fresh;
  }
  // Another thread installed one meanwhile (`known` is now that one).
  DiscardTemplate(fresh);
  return known;
}

// A new file access property list for the core driver with
// `growth_increment` and no backing store; negative if HDF5 refused.
hid_t CreateCoreFapl(size_t growth_increment) {
  const hid_t core_template = CoreFaplTemplate();
  if (core_template < 0) return core_template;
  const hid_t fapl = H5Pcopy(core_template);
  if (fapl < 0 || growth_increment == kMinGrowthIncrement) return fapl;
  if (H5Pset_fapl_core(fapl, growth_increment, /*backing_store=*/false) < 0) {
    H5Pclose(fapl);
    return H5I_INVALID_HID;
  }
  return fapl;
}

struct OpenedImage {
  hid_t file;
  ImageShareRef share;
};

absl::Status CheckFlags(void* buffer, size_t size, unsigned flags) {
  if ((flags & ~kKnownFlags) != 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "unknown file image flags 0x", absl::Hex(flags & ~kKnownFlags),
        "; the flags are H5LT_FILE_IMAGE_OPEN_RW, H5LT_FILE_IMAGE_DONT_COPY "
        "and H5LT_FILE_IMAGE_DONT_RELEASE"));
  }
  if ((flags & H5LT_FILE_IMAGE_DONT_RELEASE) != 0 &&
      (flags & H5LT_FILE_IMAGE_DONT_COPY) == 0) {
    return absl::InvalidArgumentError(
        "H5LT_FILE_IMAGE_DONT_RELEASE is only valid together with "
        "H5LT_FILE_IMAGE_DONT_COPY");
  }
  if (buffer == nullptr) {
    return absl::InvalidArgumentError("the file image buffer is NULL");
  }
  if (size == 0) {
    return absl::InvalidArgumentError("the file image is empty (0 bytes)");
  }
  if (!internal::FindSuperblock(buffer, size).has_value()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "not an HDF5 file image: none of its ", size,
        " bytes has the HDF5 signature at offset 0, 512, 1024, ..."));
  }
  return absl::OkStatus();
}

// Opens the share's buffer through the core driver. Call with HDF5's error
// printing quieted.
absl::StatusOr<OpenedImage> OpenShared(ImageShareRef share, void* buffer,
                                       size_t size, bool read_write) {
  PropertyList fapl(CreateCoreFapl(GrowthIncrement(size, share->owner())));
  if (fapl.id() < 0) {
    return Hdf5Failure(absl::StatusCode::kInternal,
                       "cannot create a file access property list");
  }
  H5FD_file_image_callbacks_t callbacks = share->callbacks();
  if (H5Pset_file_image_callbacks(fapl.id(), &callbacks) < 0 ||
      H5Pset_file_image(fapl.id(), buffer, size) < 0) {
    return Hdf5Failure(absl::StatusCode::kInternal,
                       "cannot set up the core driver for a file image");
  }
  const hid_t file =
      H5Fopen(share->file_name().c_str(),
              read_write ? H5F_ACC_RDWR : H5F_ACC_RDONLY, fapl.id());
  if (file < 0) {
    return Hdf5Failure(absl::StatusCode::kInvalidArgument,
                       "cannot open file image");
  }
  // HDF5 hands out an already open file of the same name rather than the
  // new one; only a caller opening a core file under h5depot's reserved
  // names could cause that.
  if (!share->driver_open()) {
    H5Fclose(file);
    return absl::InternalError(
        absl::StrCat("the file image's name ", share->file_name(),
                     " is taken by a file that is already open"));
  }
  // The application's buffer cannot grow: make HDF5 refuse to allocate
  // beyond it (see core_driver_internal.h for why refusing the realloc
  // alone is not enough).
  if (read_write && share->owner() == BufferOwner::kApplication) {
    absl::Status limited = internal::LimitCoreAddressSpace(file, buffer, size);
    if (!limited.ok()) {
      H5Fclose(file);
      return limited;
    }
  }
  return OpenedImage{file, std::move(share)};
}

// OpenFileImage, keeping the share for callers that need it.
absl::StatusOr<OpenedImage> OpenImage(void* buffer, size_t size,
                                      unsigned flags) {
  const bool handed_over = (flags & H5LT_FILE_IMAGE_DONT_COPY) != 0 &&
                           (flags & H5LT_FILE_IMAGE_DONT_RELEASE) == 0;
  if (absl::Status status = CheckFlags(buffer, size, flags); !status.ok()) {
    if (handed_over) std::free(buffer);
    return status;
  }
  void* initial = buffer;
  BufferOwner owner = BufferOwner::kHdf5;
  if ((flags & H5LT_FILE_IMAGE_DONT_COPY) == 0) {
    // The one copy: the core driver then uses it directly.
    initial = std::malloc(size);
    if (initial == nullptr) {
      return absl::ResourceExhaustedError(
          absl::StrCat("cannot allocate ", size, " bytes to copy the image"));
    }
    std::memcpy(initial, buffer, size);
  } else if ((flags & H5LT_FILE_IMAGE_DONT_RELEASE) != 0) {
    owner = BufferOwner::kApplication;
  }
  // From here the share owns `initial` when HDF5 is to free it.
  absl::StatusOr<ImageShareRef> share =
      ImageShare::Create(initial, size, owner);
  if (!share.ok()) return share.status();
  QuietHdf5Errors quiet;
  return OpenShared(*std::move(share), initial, size,
                    (flags & H5LT_FILE_IMAGE_OPEN_RW) != 0);
}

// Opens a mapped buffer in place, as DONT_COPY | DONT_RELEASE would, with
// the share keeping the mapping until HDF5 lets go of the file.
absl::StatusOr<OpenedImage> OpenMapped(ImageBuffer image, bool read_write) {
  const size_t size = image.size();
  void* data = image.data();
  if (absl::Status status = CheckFlags(data, size, H5LT_FILE_IMAGE_DONT_COPY);
      !status.ok()) {
    return status;
  }
  absl::StatusOr<ImageShareRef> share =
      ImageShare::CreateMapped(std::move(image));
  if (!share.ok()) return share.status();
  QuietHdf5Errors quiet;
  return OpenShared(*std::move(share), data, size, read_write);
}

// FAILED_PRECONDITION unless `file_id` is the only thing open in its file.
absl::Status CheckNothingElseOpen(hid_t file_id) {
  const ssize_t objects =
      H5Fget_obj_count(file_id, H5F_OBJ_DATASET | H5F_OBJ_GROUP |
                                    H5F_OBJ_DATATYPE | H5F_OBJ_ATTR);
  const ssize_t files = H5Fget_obj_count(file_id, H5F_OBJ_FILE);
  if (objects < 0 || files < 0) {
    return Hdf5Failure(absl::StatusCode::kInvalidArgument,
                       "cannot count the objects open in the file image");
  }
  if (objects > 0 || files > 1) {
    return absl::FailedPreconditionError(
        absl::StrCat("cannot close the file image and keep its buffer while ",
                     objects, " object(s) and ", files - 1,
                     " other file id(s) are open in it; close them first"));
  }
  return absl::OkStatus();
}

// Drops what lies past the end of the HDF5 data: the core driver grows its
// buffer in whole increments.
ImageBuffer TrimToImage(ImageBuffer image) {
  std::optional<internal::Superblock> sb =
      internal::ParseSuperblock(image.data(), image.size());
  if (!sb) return image;
  std::optional<uint64_t> end = sb->ImageDataEnd();
  if (!end || *end == 0 || *end >= image.size()) return image;
  if (image.is_mapped()) {
    internal::MappedImage::Shrink(image, *end);
    return image;
  }
  const size_t size = image.size();
  void* data = image.Release();
  void* trimmed = std::realloc(data, *end);
  if (trimmed == nullptr) return ImageBuffer::Adopt(data, size);
  return ImageBuffer::Adopt(trimmed, *end);
}

// Closes `file_id`, which passed CheckNothingElseOpen, keeping its image.
absl::StatusOr<ImageBuffer> CloseKeepingImage(hid_t file_id,
                                              ImageShare& share) {
  unsigned intent = 0;
  if (H5Fget_intent(file_id, &intent) < 0) {
    return Hdf5Failure(absl::StatusCode::kInvalidArgument,
                       "cannot query the file image");
  }
  share.KeepFinalImage();
  const herr_t closed = H5Fclose(file_id);
  std::optional<ImageBuffer> image = share.TakeFinalImage();
  if (closed < 0) {
    return Hdf5Failure(absl::StatusCode::kInternal,
                       "cannot close the file image");
  }
  if (!image) {
    if (share.driver_open()) {
      return absl::FailedPreconditionError(
          "the file id is closed, but objects opened meanwhile keep the "
          "file image open; it is freed when they close");
    }
    return absl::ResourceExhaustedError("cannot allocate the final file image");
  }
  if ((intent & H5F_ACC_RDWR) != 0) return TrimToImage(*std::move(image));
  return *std::move(image);
}

absl::Status CheckKeepable(const ImageShare& share) {
  if (share.owner() == BufferOwner::kApplication) {
    return absl::FailedPreconditionError(
        "the file image was opened with H5LT_FILE_IMAGE_DONT_RELEASE: its "
        "buffer belongs to the application; close the file with H5Fclose");
  }
  return absl::OkStatus();
}

herr_t VisitObject(hid_t /*object*/, const char* /*name*/,
                   const H5O_info_t* /*info*/, void* /*data*/) {
  return 0;
}

}  // namespace

namespace internal {

absl::StatusOr<size_t> CopyFileImage(hid_t file_id, void* buffer,
                                     size_t capacity) {
  const ssize_t needed = H5Fget_file_image(file_id, nullptr, 0);
  if (needed < 0) {
    return Hdf5Failure(absl::StatusCode::kInvalidArgument,
                       "cannot take an image of the file (images exist for "
                       "files of the core, sec2 and stdio drivers)");
  }
  if (static_cast<size_t>(needed) > capacity) {
    return absl::FailedPreconditionError(absl::StrCat(
        "a buffer of ", capacity, " bytes is too small for the file image of ",
        needed, " bytes"));
  }
  const ssize_t copied = H5Fget_file_image(file_id, buffer, capacity);
  if (copied < 0) {
    return Hdf5Failure(absl::StatusCode::kInternal,
                       "cannot copy the file image");
  }
  RepairSuperblockChecksum(buffer, static_cast<size_t>(copied));
  return static_cast<size_t>(copied);
}

absl::StatusOr<size_t> CopyFlushedFileImage(
    hid_t file_id, absl::FunctionRef<absl::StatusOr<void*>(size_t)> place) {
  QuietHdf5Errors quiet;
  if (H5Iget_type(file_id) != H5I_FILE) {
    return absl::InvalidArgumentError(absl::StrCat(
        "cannot take a file image: id ", file_id, " is not an open file"));
  }
  if (H5Fflush(file_id, H5F_SCOPE_LOCAL) < 0) {
    return Hdf5Failure(absl::StatusCode::kInternal,
                       "cannot flush the file to take its image");
  }
  // Another thread may write to the file between sizing and copying.
  for (int attempt = 0; attempt < 3; ++attempt) {
    const ssize_t size = H5Fget_file_image(file_id, nullptr, 0);
    if (size < 0) {
      return Hdf5Failure(absl::StatusCode::kInvalidArgument,
                         "cannot take an image of the file (images exist "
                         "for files of the core, sec2 and stdio drivers)");
    }
    absl::StatusOr<void*> buffer = place(static_cast<size_t>(size));
    if (!buffer.ok()) return buffer.status();
    absl::StatusOr<size_t> copied =
        CopyFileImage(file_id, *buffer, static_cast<size_t>(size));
    if (copied.ok() && *copied == static_cast<size_t>(size)) return *copied;
    if (!copied.ok() &&
        copied.status().code() != absl::StatusCode::kFailedPrecondition) {
      return copied.status();
    }
  }
  return absl::AbortedError(
      "the file kept changing size while its image was taken; try again");
}

}  // namespace internal

absl::StatusOr<ImageBuffer> TakeFileImage(hid_t file_id) {
  std::optional<ImageBuffer> image;
  absl::StatusOr<size_t> taken = internal::CopyFlushedFileImage(
      file_id, [&image](size_t size) -> absl::StatusOr<void*> {
        absl::StatusOr<ImageBuffer> allocated = ImageBuffer::Allocate(size);
        if (!allocated.ok()) return allocated.status();
        image = *std::move(allocated);
        return image->data();
      });
  if (!taken.ok()) return taken.status();
  return *std::move(image);
}

absl::StatusOr<hid_t> OpenFileImage(void* buffer, size_t size, unsigned flags) {
  absl::StatusOr<OpenedImage> opened = OpenImage(buffer, size, flags);
  if (!opened.ok()) return opened.status();
  return opened->file;
}

absl::StatusOr<hid_t> OpenFileImage(ImageBuffer image, unsigned flags) {
  if ((flags & H5LT_FILE_IMAGE_DONT_RELEASE) != 0) {
    return absl::InvalidArgumentError(
        "an ImageBuffer is always handed over to HDF5: "
        "H5LT_FILE_IMAGE_DONT_RELEASE does not apply");
  }
  const bool read_write = (flags & H5LT_FILE_IMAGE_OPEN_RW) != 0;
  // A read-only mapping opened read-write goes by a copy (Release() below).
  if (image.is_mapped() && !(read_write && image.is_read_only())) {
    absl::StatusOr<OpenedImage> opened =
        OpenMapped(std::move(image), read_write);
    if (!opened.ok()) return opened.status();
    return opened->file;
  }
  const size_t size = image.size();
  return OpenFileImage(image.Release(), size,
                       flags | H5LT_FILE_IMAGE_DONT_COPY);
}

absl::StatusOr<ImageBuffer> CloseFileImage(hid_t file_id) {
  QuietHdf5Errors quiet;
  if (H5Iget_type(file_id) != H5I_FILE) {
    return absl::InvalidArgumentError(absl::StrCat(
        "cannot close a file image: id ", file_id, " is not an open file"));
  }
  std::optional<ImageShareRef> share = ImageShare::Find(file_id);
  if (!share) {
    H5Eclear2(H5E_DEFAULT);
    return absl::InvalidArgumentError(absl::StrCat(
        "file id ", file_id, " is not a file image opened by OpenFileImage"));
  }
  if (absl::Status status = CheckKeepable(**share); !status.ok()) {
    return status;
  }
  if (absl::Status status = CheckNothingElseOpen(file_id); !status.ok()) {
    return status;
  }
  return CloseKeepingImage(file_id, **share);
}

absl::Status ValidateImage(const void* data, size_t size) {
  // Read-only and never resized: the buffer is only read.
  void* buffer = const_cast<void*>(data);
  if (absl::Status status = CheckFlags(buffer, size, 0); !status.ok()) {
    return status;
  }
  absl::StatusOr<ImageShareRef> share =
      ImageShare::Create(buffer, size, BufferOwner::kApplication);
  if (!share.ok()) return share.status();
  QuietHdf5Errors quiet;
  absl::StatusOr<OpenedImage> opened =
      OpenShared(*std::move(share), buffer, size, /*read_write=*/false);
  if (!opened.ok()) return opened.status();
  const herr_t visited = H5Ovisit2(opened->file, H5_INDEX_NAME, H5_ITER_NATIVE,
                                   VisitObject, nullptr, H5O_INFO_BASIC);
  absl::Status status;
  if (visited < 0) {
    status = Hdf5Failure(absl::StatusCode::kInvalidArgument,
                         "the file image opens but its objects cannot all "
                         "be read");
  }
  if (H5Fclose(opened->file) < 0 && status.ok()) {
    status = Hdf5Failure(absl::StatusCode::kInvalidArgument,
                         "cannot close the file image");
  }
  return status;
}

WritableImage::WritableImage(hid_t file,
                             std::unique_ptr<internal::ImageShareRef> share)
    : file_(file), share_(std::move(share)) {}

WritableImage::~WritableImage() {
  if (file_ >= 0) {
    QuietHdf5Errors quiet;
    H5Fclose(file_);
  }
}

absl::StatusOr<std::unique_ptr<WritableImage>> WritableImage::Open(
    ImageBuffer image) {
  const size_t size = image.size();
  absl::StatusOr<OpenedImage> opened =
      image.is_mapped() && !image.is_read_only()
          ? OpenMapped(std::move(image), /*read_write=*/true)
          : OpenImage(image.Release(), size,
                      H5LT_FILE_IMAGE_OPEN_RW | H5LT_FILE_IMAGE_DONT_COPY);
  if (!opened.ok()) return opened.status();
  auto share = std::make_unique<ImageShareRef>(std::move(opened->share));
  return std::unique_ptr<WritableImage>(
      new WritableImage(opened->file, std::move(share)));
}

absl::StatusOr<ImageBuffer> WritableImage::Close() {
  if (file_ < 0) {
    return absl::FailedPreconditionError("the writable image is closed");
  }
  QuietHdf5Errors quiet;
  if (absl::Status status = CheckNothingElseOpen(file_); !status.ok()) {
    return status;
  }
  return CloseKeepingImage(std::exchange(file_, H5I_INVALID_HID), **share_);
}

}  // namespace h5depot
