#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <new>
#include <string>
#include <unordered_map>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/strip.h"
#include "client/src/hdf5_error_internal.h"
#include "client/src/image_share_internal.h"
#include "client/src/mapped_image_internal.h"

namespace h5depot::internal {
namespace {

// Names of images: a prefix below /dev/null, then the share's serial.
constexpr char kNamePrefix[] = "/dev/null/h5depot-image-";

// Every live share by serial, so that a file id can be traced back to the
// share that OpenFileImage gave its core driver. Holds no references.
struct Registry {
  Mutex mu;
  uint64_t next_serial ABSL_GUARDED_BY(mu) = 1;
  std::unordered_map<uint64_t, ImageShare*> shares ABSL_GUARDED_BY(mu);
};

Registry& GetRegistry() {
  static Registry* registry = new Registry;
  return *registry;
}

}  // namespace

ImageShareRef& ImageShareRef::operator=(ImageShareRef&& other) noexcept {
  if (this != &other) {
    Reset();
    share_ = std::exchange(other.share_, nullptr);
  }
  return *this;
}

void ImageShareRef::Reset() {
  if (share_ != nullptr) std::exchange(share_, nullptr)->Unref();
}

ImageShare::ImageShare(void* buffer, size_t size, BufferOwner owner,
                       uint64_t serial)
    : serial_(serial),
      file_name_(absl::StrCat(kNamePrefix, serial)),
      owner_(owner),
      initial_size_(size),
      initial_(buffer) {}

ImageShare::~ImageShare() {
  // The driver holds a reference while it has the buffer, and every
  // property list that holds the initial buffer holds one too; so by now
  // nobody in HDF5 refers to either buffer.
  if (owner_ == BufferOwner::kHdf5) std::free(initial_);
  std::free(final_);
}

absl::StatusOr<ImageShareRef> ImageShare::Create(void* buffer, size_t size,
                                                 BufferOwner owner) {
  Registry& registry = GetRegistry();
  MutexLock lock(&registry.mu);
  const uint64_t serial = registry.next_serial++;
  auto* share = new (std::nothrow) ImageShare(buffer, size, owner, serial);
  if (share == nullptr) {
    if (owner == BufferOwner::kHdf5) std::free(buffer);
    return absl::ResourceExhaustedError("cannot allocate an image share");
  }
  registry.shares.emplace(serial, share);
  return ImageShareRef(share);
}

absl::StatusOr<ImageShareRef> ImageShare::CreateMapped(ImageBuffer mapped) {
  void* data = mapped.data();
  absl::StatusOr<ImageShareRef> share =
      Create(data, mapped.size(), BufferOwner::kMapping);
  if (!share.ok()) return share.status();
  MutexLock lock(&(*share)->mu_);
  (*share)->mapped_ = std::move(mapped);
  return share;
}

std::optional<ImageShareRef> ImageShare::Find(hid_t file_id) {
  char name[sizeof(kNamePrefix) + 24];
  const ssize_t length = H5Fget_name(file_id, name, sizeof(name));
  if (length <= 0 || static_cast<size_t>(length) >= sizeof(name)) {
    return std::nullopt;
  }
  absl::string_view view(name, static_cast<size_t>(length));
  uint64_t serial = 0;
  if (!absl::ConsumePrefix(&view, kNamePrefix) ||
      !absl::SimpleAtoi(view, &serial)) {
    return std::nullopt;
  }
  ImageShareRef share;
  {
    Registry& registry = GetRegistry();
    MutexLock lock(&registry.mu);
    auto it = registry.shares.find(serial);
    if (it == registry.shares.end() || !it->second->TryRef()) {
      return std::nullopt;
    }
    share = ImageShareRef(it->second);
  }
  // The name alone could be reused by a caller who opens a core file under
  // it; the share is this file's only if the driver reads its buffer.
  hid_t fapl = H5Fget_access_plist(file_id);
  if (fapl < 0) return std::nullopt;
  const hid_t driver = H5Pget_driver(fapl);
  H5Pclose(fapl);
  if (driver != H5FD_CORE) return std::nullopt;
  void* handle = nullptr;
  if (H5Fget_vfd_handle(file_id, H5P_DEFAULT, &handle) < 0 ||
      handle == nullptr) {
    return std::nullopt;
  }
  void* driver_memory = *static_cast<void**>(handle);
  {
    MutexLock lock(&share->mu_);
    if (!share->driver_open_ || share->driver_buffer_ != driver_memory) {
      return std::nullopt;
    }
  }
  return share;
}

size_t ImageShare::LiveCount() {
  Registry& registry = GetRegistry();
  MutexLock lock(&registry.mu);
  return registry.shares.size();
}

void ImageShare::Ref() { refs_.fetch_add(1, std::memory_order_relaxed); }

bool ImageShare::TryRef() {
  int refs = refs_.load(std::memory_order_relaxed);
  while (refs > 0) {
    if (refs_.compare_exchange_weak(refs, refs + 1,
                                    std::memory_order_relaxed)) {
      return true;
    }
  }
  return false;
}

void ImageShare::Unref() {
  if (refs_.fetch_sub(1, std::memory_order_acq_rel) != 1) return;
  // Find() only revives a share whose count is above zero, under the
  // registry lock; so once it is out of the registry nobody can reach it.
  {
    Registry& registry = GetRegistry();
    MutexLock lock(&registry.mu);
    registry.shares.erase(serial_);
  }
  delete this;
}

H5FD_file_image_callbacks_t ImageShare::callbacks() {
  H5FD_file_image_callbacks_t callbacks;
  callbacks.image_malloc = &ImageShare::ImageMalloc;
  callbacks.image_memcpy = &ImageShare::ImageMemcpy;
  callbacks.image_realloc = &ImageShare::ImageRealloc;
  callbacks.image_free = &ImageShare::ImageFree;
  callbacks.udata_copy = &ImageShare::UdataCopy;
  callbacks.udata_free = &ImageShare::UdataFree;
  callbacks.udata = this;
  return callbacks;
}

bool ImageShare::driver_open() const {
  MutexLock lock(&mu_);
  return driver_open_;
}

void ImageShare::KeepFinalImage() {
  MutexLock lock(&mu_);
  keep_final_ = true;
}

std::optional<ImageBuffer> ImageShare::TakeFinalImage() {
  MutexLock lock(&mu_);
  if (final_mapped_.has_value()) {
    ImageBuffer image = *std::move(final_mapped_);
    final_mapped_.reset();
    MappedImage::Shrink(image, std::exchange(final_size_, 0));
    return image;
  }
  if (final_ == nullptr) return std::nullopt;
  return ImageBuffer::Adopt(std::exchange(final_, nullptr),
                            std::exchange(final_size_, 0));
}

// The callbacks. HDF5 calls them with its global lock held and expects the
// semantics of malloc, memcpy, realloc and free; each failure is reported
// on the HDF5 error stack, after `mu_` is released.

void* ImageShare::ImageMalloc(size_t size, H5FD_file_image_op_t op,
                              void* udata) {
  auto* share = static_cast<ImageShare*>(udata);
  absl::Status error;
  void* result = nullptr;
  switch (op) {
    case H5FD_FILE_IMAGE_OP_PROPERTY_LIST_SET:
    case H5FD_FILE_IMAGE_OP_PROPERTY_LIST_COPY: {
      MutexLock lock(&share->mu_);
      if (share->initial_ != nullptr && size == share->initial_size_) {
        ++share->initial_refs_;
        result = share->initial_;
      } else {
        error = absl::InternalError(
            "a property list asked for an image that is not this one");
      }
      break;
    }
    case H5FD_FILE_IMAGE_OP_PROPERTY_LIST_GET:
      // H5Pget_file_image hands its copy to the application, which frees
      // it with free(): that one has to be a real copy.
      result = std::malloc(size);
      if (result == nullptr) {
        error = absl::ResourceExhaustedError(
            absl::StrCat("cannot allocate ", size, " bytes"));
      }
      break;
    case H5FD_FILE_IMAGE_OP_FILE_OPEN: {
      MutexLock lock(&share->mu_);
      if (share->driver_open_) {
        error = absl::InternalError("the image is already open");
      } else if (share->initial_ == nullptr || size != share->initial_size_) {
        error = absl::InternalError(
            "the core driver asked for an image that is not this one");
      } else {
        share->driver_open_ = true;
        share->driver_buffer_ = share->initial_;
        share->driver_size_ = size;
        ++share->initial_refs_;
        share->Ref();  // the driver's, released in ImageFree(FILE_CLOSE)
        result = share->initial_;
      }
      break;
    }
    default:
      error = absl::InternalError(
          absl::StrCat("unexpected image_malloc operation ", op));
      break;
  }
  if (result == nullptr) H5DEPOT_PUSH_HDF5_ERROR(kFileImage, error);
  return result;
}

void* ImageShare::ImageMemcpy(void* dest, const void* src, size_t size,
                              H5FD_file_image_op_t op, void* /*udata*/) {
  // Sharing: every "copy" HDF5 makes of the image is the image itself.
  if (dest == src) return dest;
  if (op == H5FD_FILE_IMAGE_OP_PROPERTY_LIST_GET) {
    std::memcpy(dest, src, size);
    return dest;
  }
  H5DEPOT_PUSH_HDF5_ERROR(
      kFileImage,
      absl::InternalError(absl::StrCat(
          "unexpected copy of ", size,
          " bytes between distinct image buffers (operation ", op, ")")));
  return nullptr;
}

void* ImageShare::ImageRealloc(void* ptr, size_t size, H5FD_file_image_op_t op,
                               void* udata) {
  if (op != H5FD_FILE_IMAGE_OP_FILE_RESIZE) {
    H5DEPOT_PUSH_HDF5_ERROR(kFileImage,
                            absl::InternalError(absl::StrCat(
                                "unexpected image_realloc operation ", op)));
    return nullptr;
  }
  return static_cast<ImageShare*>(udata)->Resize(ptr, size);
}

void* ImageShare::Resize(void* ptr, size_t size) {
  absl::Status error;
  void* result = nullptr;
  {
    MutexLock lock(&mu_);
    if (!driver_open_ || ptr != driver_buffer_) {
      error = absl::InternalError(
          "the core driver resized a buffer that is not its image");
    } else if (size == 0) {
      error = absl::InvalidArgumentError("cannot resize an image to 0 bytes");
    } else if (owner_ == BufferOwner::kMapping && driver_buffer_ == initial_ &&
               size <= initial_size_) {
      // Within the mapping: in place (its pages are copy-on-write).
      result = ptr;
    } else if (owner_ == BufferOwner::kMapping && driver_buffer_ == initial_) {
      // Past the end of the mapping: memory of the driver's own.
      result = std::malloc(size);
      if (result != nullptr) {
        std::memcpy(result, initial_, std::min(size, driver_size_));
        --initial_refs_;
      }
    } else if (owner_ == BufferOwner::kApplication) {
      // The application keeps the buffer and does not learn of a new
      // address: resizing is only pretended, within the buffer's size.
      if (size <= initial_size_) {
        result = ptr;
      } else {
        error = absl::FailedPreconditionError(absl::StrCat(
            "the image was opened with H5LT_FILE_IMAGE_DONT_RELEASE, so its "
            "buffer belongs to the application and cannot grow: the file "
            "needs ",
            size, " bytes, the buffer has ", initial_size_));
      }
    } else if (driver_buffer_ == initial_ && initial_refs_ == 1) {
      // Only the driver refers to the initial buffer: take it over.
      result = std::realloc(initial_, size);
      if (result != nullptr) {
        initial_ = nullptr;
        initial_refs_ = 0;
      }
    } else if (driver_buffer_ == initial_) {
      // Property lists still hold the initial buffer, which must stay put
      // for them: the driver moves to a buffer of its own.
      result = std::malloc(size);
      if (result != nullptr) {
        std::memcpy(result, initial_, std::min(size, driver_size_));
        --initial_refs_;
      }
    } else {
      result = std::realloc(driver_buffer_, size);
    }
    if (result != nullptr) {
      driver_buffer_ = result;
      driver_size_ = size;
    } else if (error.ok()) {
      error = absl::ResourceExhaustedError(
          absl::StrCat("cannot allocate ", size, " bytes for the image"));
    }
  }
  if (result == nullptr) H5DEPOT_PUSH_HDF5_ERROR(kFileImage, error);
  return result;
}

herr_t ImageShare::ImageFree(void* ptr, H5FD_file_image_op_t op, void* udata) {
  auto* share = static_cast<ImageShare*>(udata);
  absl::Status error;
  switch (op) {
    case H5FD_FILE_IMAGE_OP_PROPERTY_LIST_CLOSE: {
      MutexLock lock(&share->mu_);
      if (share->initial_ != nullptr && ptr == share->initial_ &&
          share->initial_refs_ > 0) {
        --share->initial_refs_;
      } else {
        error = absl::InternalError(
            "a property list released an image that is not this one");
      }
      break;
    }
    case H5FD_FILE_IMAGE_OP_FILE_CLOSE:
      if (!share->ReleaseDriverBuffer(ptr)) {
        error = absl::InternalError(
            "the core driver released a buffer that is not its image");
        break;
      }
      share->Unref();  // the driver's, taken in ImageMalloc(FILE_OPEN)
      return 0;
    default:
      error = absl::InternalError(
          absl::StrCat("unexpected image_free operation ", op));
      break;
  }
  if (!error.ok()) return H5DEPOT_PUSH_HDF5_ERROR(kFileImage, error);
  return 0;
}

bool ImageShare::ReleaseDriverBuffer(void* ptr) {
  void* unwanted = nullptr;
  {
    MutexLock lock(&mu_);
    if (!driver_open_ || ptr != driver_buffer_) return false;
    driver_open_ = false;
    const bool keep = keep_final_ && owner_ != BufferOwner::kApplication;
    if (driver_buffer_ == initial_) {
      --initial_refs_;
      if (keep && initial_refs_ == 0 && owner_ == BufferOwner::kMapping) {
        // The mapping itself is the final image.
        final_mapped_ = std::move(mapped_);
        mapped_.reset();
        initial_ = nullptr;
      } else if (keep && initial_refs_ == 0) {
        final_ = std::exchange(initial_, nullptr);
      } else if (keep) {
        // Property lists still hold the buffer: the application gets a
        // copy. (None does after OpenFileImage returns.)
        final_ = std::malloc(driver_size_);
        if (final_ != nullptr) std::memcpy(final_, initial_, driver_size_);
      }
    } else if (keep) {
      final_ = driver_buffer_;
    } else {
      unwanted = driver_buffer_;
    }
    final_size_ =
        final_ != nullptr || final_mapped_.has_value() ? driver_size_ : 0;
    driver_buffer_ = nullptr;
    driver_size_ = 0;
  }
  std::free(unwanted);
  return true;
}

void* ImageShare::UdataCopy(void* udata) {
  static_cast<ImageShare*>(udata)->Ref();
  return udata;
}

herr_t ImageShare::UdataFree(void* udata) {
  static_cast<ImageShare*>(udata)->Unref();
  return 0;
}

}  // namespace h5depot::internal
