// CreateMemoryFile and SealMemoryFile: HDF5's core driver with file image
// callbacks that keep its buffer in a memfd.
//
// What HDF5 1.10.8's core driver (H5FDcore.c) calls for a file created
// without a backing store, all under HDF5's global lock (pinned by
// tests/memory_file_test.cc):
//
//   H5Fcreate        image_realloc(NULL, n, FILE_RESIZE): the driver opens
//                    with no buffer, and the superblock's first write
//                    allocates one
//   write past eof   image_realloc(buf, n, FILE_RESIZE), n the end of the
//                    write rounded up to the increment
//   H5Fflush         image_realloc(buf, n, FILE_RESIZE) if the end of the
//                    allocated space, rounded up to the increment, is not
//                    the buffer's size: it may shrink the buffer
//   H5Fclose         image_free(buf, FILE_CLOSE) once the driver closes
//                    (no resize when closing without a backing store)
//
// image_malloc and image_memcpy are only called with an initial image
// (H5Fopen, H5Pset_file_image), which a memory file never has: they fail.
// The udata is copied (udata_copy) by H5Pset_file_image_callbacks and by
// every copy of that property list, and released with udata_free. The
// file keeps no property list with the callbacks (H5Fget_access_plist
// has none), and the driver keeps a plain copy of the pointer without
// udata_copy: the image counts the driver's reference itself, from the
// first buffer to image_free(FILE_CLOSE), and finds its file by the
// driver's buffer address.
#include "h5depot/memory_file.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <new>
#include <string>
#include <unordered_set>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "client/src/hdf5_error_internal.h"
#include "client/src/memory_file_internal.h"
#include "client/src/superblock_internal.h"
#include "h5depot/internal/mutex.h"

namespace h5depot {
namespace internal {
namespace {

// The driver grows its buffer to multiples of this. The memfd under it
// grows by half its size at a time, so growing costs few system calls;
// pages beyond what HDF5 touched cost no memory.
constexpr size_t kDriverIncrement = 64 * 1024;

// Names of memory files: unique in the process, below /dev/null so that
// they can never be a file on disk.
constexpr char kNamePrefix[] = "/dev/null/h5depot-memory-file-";
constexpr char kMemfdName[] = "h5depot-memory-file";

std::atomic<uint64_t> next_serial{1};
std::atomic<size_t> live_images{0};

size_t RoundUpToPages(size_t size) {
  static const size_t page = static_cast<size_t>(sysconf(_SC_PAGESIZE));
  return (size + page - 1) / page * page;
}

absl::Status Errno(absl::string_view what, int error) {
  std::string message = absl::StrCat(what, ": ", std::strerror(error));
  if (error == ENOMEM || error == ENOSPC || error == EMFILE ||
      error == ENFILE) {
    return absl::ResourceExhaustedError(message);
  }
  return absl::InternalError(message);
}

// Maps `length` bytes of `fd` read/write at `address` (nullptr: anywhere),
// shared or private (copy-on-write).
absl::StatusOr<void*> MapImage(int fd, size_t length, bool shared,
                               void* address) {
  const int flags =
      (shared ? MAP_SHARED : MAP_PRIVATE) | (address ? MAP_FIXED : 0);
  void* data = mmap(address, length, PROT_READ | PROT_WRITE, flags, fd, 0);
  if (data == MAP_FAILED) return Errno("cannot map the memory file", errno);
  return data;
}

// Writes `size` bytes at `data` to `fd` at `offset`.
absl::Status WriteAll(int fd, const void* data, size_t size,
                      uint64_t offset = 0) {
  const char* bytes = static_cast<const char*>(data);
  size_t done = 0;
  while (done < size) {
    ssize_t n = pwrite(fd, bytes + done, size - done,
                       static_cast<off_t>(offset + done));
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return Errno("cannot copy the image into a memfd", errno);
    done += static_cast<size_t>(n);
  }
  return absl::OkStatus();
}

// The superblock bytes a sealed image gets, with their offset: a version
// 2 or 3 superblock records in its status flags that the file is open for
// writing, and HDF5 refuses to open an image that says so ("file is
// already open for write"); the sealed image gets what a closed file would
// have, flags cleared and checksum recomputed. nullopt if nothing changes
// (versions 0 and 1 carry no such flags).
struct SuperblockPatch {
  uint64_t offset = 0;
  std::vector<unsigned char> bytes;     // for the sealed image
  std::vector<unsigned char> original;  // as the open file has them
};

std::optional<SuperblockPatch> SealedSuperblock(const void* image,
                                                size_t size) {
  std::optional<Superblock> sb = ParseSuperblock(image, size);
  if (!sb || sb->version < 2 || !sb->checksum_offset) return std::nullopt;
  const size_t length = sb->checksummed_size + 4;
  if (sb->offset + length > size) return std::nullopt;
  const auto* start = static_cast<const unsigned char*>(image) + sb->offset;
  constexpr size_t kStatusFlags = 11;
  if (start[kStatusFlags] == 0) return std::nullopt;
  SuperblockPatch patch;
  patch.offset = sb->offset;
  patch.original.assign(start, start + length);
  patch.bytes = patch.original;
  patch.bytes[kStatusFlags] = 0;
  RepairSuperblockChecksum(patch.bytes.data(), patch.bytes.size());
  return patch;
}

absl::Status PatchSuperblock(int memfd,
                             const std::optional<SuperblockPatch>& patch) {
  if (!patch) return absl::OkStatus();
  return WriteAll(memfd, patch->bytes.data(), patch->bytes.size(),
                  patch->offset);
}

class MemoryFileImage;

// Every live image, so that a file id leads to its image by the driver's
// buffer address (the core driver's handle; no other buffer can share the
// address of a live mapping). Images join when created and leave when
// destroyed, outside HDF5's callbacks, so no callback allocates here.
// Holds no references. Lock order: this, then an image's `mu_`.
struct ImageRegistry {
  Mutex mu;
  std::unordered_set<MemoryFileImage*> images ABSL_GUARDED_BY(mu);
};

ImageRegistry& Images() {
  static ImageRegistry* registry = new ImageRegistry;
  return *registry;
}

// The memfd under one memory file, and HDF5's file image callbacks over
// it; the callbacks' udata. Reference counted: see the file comment.
class MemoryFileImage {
 public:
  // A new image, with one reference for the caller; nullptr if out of
  // memory.
  static MemoryFileImage* Create() {
    static const bool fork_handlers = [] {
      return pthread_atfork(&PrepareFork, &ParentAfterFork, &ChildAfterFork) ==
             0;
    }();
    (void)fork_handlers;  // without them, a child could write to the file
    auto* image = new (std::nothrow) MemoryFileImage;
    if (image == nullptr) return nullptr;
    ImageRegistry& registry = Images();
    MutexLock lock(&registry.mu);
    try {
      registry.images.insert(image);
    } catch (const std::bad_alloc&) {
      delete image;
      return nullptr;
    }
    return image;
  }

  MemoryFileImage(const MemoryFileImage&) = delete;
  MemoryFileImage& operator=(const MemoryFileImage&) = delete;

  void Ref() { refs_.fetch_add(1, std::memory_order_relaxed); }
  void Unref() {
    if (refs_.fetch_sub(1, std::memory_order_acq_rel) == 1) delete this;
  }

  H5FD_file_image_callbacks_t callbacks() {
    H5FD_file_image_callbacks_t callbacks;
    callbacks.image_malloc = &ImageMalloc;
    callbacks.image_memcpy = &ImageMemcpy;
    callbacks.image_realloc = &ImageRealloc;
    callbacks.image_free = &ImageFree;
    callbacks.udata_copy = &UdataCopy;
    callbacks.udata_free = &UdataFree;
    callbacks.udata = this;
    return callbacks;
  }

  // The image whose driver buffer is `buffer`, with a reference for the
  // caller; nullptr if none.
  static MemoryFileImage* FindByBuffer(const void* buffer) {
    ImageRegistry& registry = Images();
    MutexLock lock(&registry.mu);
    for (MemoryFileImage* image : registry.images) {
      MutexLock image_lock(&image->mu_);
      if (image->driver_ == Driver::kOpen && image->base_ == buffer) {
        // Alive: the driver's reference goes only after kClosed.
        image->Ref();
        return image;
      }
    }
    return nullptr;
  }

  // Seals the first `size` bytes of the driver's buffer `driver_buffer`
  // (which must be this image's); see memory_file_internal.h. Only with
  // HDF5's global lock held, so that the driver neither writes nor
  // resizes meanwhile.
  absl::StatusOr<SealedFileImage> Seal(void* driver_buffer, uint64_t size);

 private:
  MemoryFileImage() { live_images.fetch_add(1, std::memory_order_relaxed); }
  ~MemoryFileImage() {
    // The driver's reference is gone, so it released its buffer.
    ImageRegistry& registry = Images();
    MutexLock lock(&registry.mu);
    registry.images.erase(this);
    live_images.fetch_sub(1, std::memory_order_relaxed);
  }

  // fork(): a child inherits the shared mapping, so its writes (HDF5
  // flushes every open file when the child exits) would land in the
  // parent's file. The child maps each memfd privately instead: it sees
  // the parent's file as it goes on, and writes only to its own pages.
  static void PrepareFork() ABSL_NO_THREAD_SAFETY_ANALYSIS;
  static void ParentAfterFork() ABSL_NO_THREAD_SAFETY_ANALYSIS;
  static void ChildAfterFork() ABSL_NO_THREAD_SAFETY_ANALYSIS;

  static void* ImageMalloc(size_t size, H5FD_file_image_op_t op, void* udata);
  static void* ImageMemcpy(void* dest, const void* src, size_t size,
                           H5FD_file_image_op_t op, void* udata);
  static void* ImageRealloc(void* ptr, size_t size, H5FD_file_image_op_t op,
                            void* udata);
  static herr_t ImageFree(void* ptr, H5FD_file_image_op_t op, void* udata);
  static void* UdataCopy(void* udata);
  static herr_t UdataFree(void* udata);

  absl::StatusOr<void*> Resize(void* ptr, size_t size);
  absl::StatusOr<void*> Allocate(size_t size)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  absl::StatusOr<void*> Grow(size_t size) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  absl::Status Release(void* ptr);
  // Maps `memfd` privately over the driver's buffer, at its address.
  absl::Status MapPrivately(int memfd) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  std::atomic<int> refs_{1};

  enum class Driver {
    kNoBuffer,  // created, nothing written yet
    kOpen,      // the driver holds `base_`
    kClosed,    // released at close; never again
  };

  Mutex mu_;
  Driver driver_ ABSL_GUARDED_BY(mu_) = Driver::kNoBuffer;
  // The memfd under the driver's buffer, mapped at `base_` over its whole
  // length `mapped_`: MAP_SHARED read/write while `private_` is false.
  // `private_`: the mapping is MAP_PRIVATE because `memfd_` is no longer
  // the file's to write: it is sealed, or, in a child of fork(), it is
  // the parent's.
  UniqueFd memfd_ ABSL_GUARDED_BY(mu_);
  void* base_ ABSL_GUARDED_BY(mu_) = nullptr;
  size_t mapped_ ABSL_GUARDED_BY(mu_) = 0;
  bool private_ ABSL_GUARDED_BY(mu_) = false;
  // The size the driver last asked for; its buffer, as far as it knows.
  size_t driver_size_ ABSL_GUARDED_BY(mu_) = 0;
};

void MemoryFileImage::PrepareFork() {
  ImageRegistry& registry = Images();
  registry.mu.Lock();
  for (MemoryFileImage* image : registry.images) image->mu_.Lock();
}

void MemoryFileImage::ParentAfterFork() {
  ImageRegistry& registry = Images();
  for (MemoryFileImage* image : registry.images) image->mu_.Unlock();
  registry.mu.Unlock();
}

void MemoryFileImage::ChildAfterFork() {
  ImageRegistry& registry = Images();
  for (MemoryFileImage* image : registry.images) {
    if (image->driver_ == Driver::kOpen && !image->private_) {
      if (!image->MapPrivately(image->memfd_.get()).ok()) {
        // The shared mapping is back: at least no write may go through it.
        mprotect(image->base_, image->mapped_, PROT_READ);
      }
      image->private_ = true;
    }
    image->mu_.Unlock();
  }
  registry.mu.Unlock();
}

// The callbacks. HDF5 calls them with its global lock held, from C: no
// exception may leave them. Each failure is reported on the HDF5 error
// stack; only out of memory for the message itself goes unreported.

void* MemoryFileImage::ImageMalloc(size_t /*size*/, H5FD_file_image_op_t op,
                                   void* /*udata*/) {
  try {
    H5DEPOT_PUSH_HDF5_ERROR(
        kFileImage,
        absl::FailedPreconditionError(absl::StrCat(
            "a memory file has no initial image to allocate (operation ", op,
            "): its file access property list only creates new files")));
  } catch (...) {
  }
  return nullptr;
}

void* MemoryFileImage::ImageMemcpy(void* /*dest*/, const void* /*src*/,
                                   size_t /*size*/, H5FD_file_image_op_t op,
                                   void* /*udata*/) {
  try {
    H5DEPOT_PUSH_HDF5_ERROR(
        kFileImage,
        absl::InternalError(absl::StrCat(
            "unexpected copy of a memory file's image (operation ", op, ")")));
  } catch (...) {
  }
  return nullptr;
}

void* MemoryFileImage::ImageRealloc(void* ptr, size_t size,
                                    H5FD_file_image_op_t op, void* udata) {
  try {
    absl::StatusOr<void*> result =
        op == H5FD_FILE_IMAGE_OP_FILE_RESIZE
            ? static_cast<MemoryFileImage*>(udata)->Resize(ptr, size)
            : absl::InternalError(
                  absl::StrCat("unexpected image_realloc operation ", op));
    if (result.ok()) return *result;
    H5DEPOT_PUSH_HDF5_ERROR(kFileImage, result.status());
  } catch (...) {
  }
  return nullptr;
}

herr_t MemoryFileImage::ImageFree(void* ptr, H5FD_file_image_op_t op,
                                  void* udata) {
  try {
    auto* image = static_cast<MemoryFileImage*>(udata);
    absl::Status status = op == H5FD_FILE_IMAGE_OP_FILE_CLOSE
                              ? image->Release(ptr)
                              : absl::InternalError(absl::StrCat(
                                    "unexpected image_free operation ", op));
    if (!status.ok()) return H5DEPOT_PUSH_HDF5_ERROR(kFileImage, status);
    image->Unref();  // the driver's, taken with its first buffer
    return 0;
  } catch (...) {
    return -1;
  }
}

void* MemoryFileImage::UdataCopy(void* udata) {
  static_cast<MemoryFileImage*>(udata)->Ref();
  return udata;
}

herr_t MemoryFileImage::UdataFree(void* udata) {
  static_cast<MemoryFileImage*>(udata)->Unref();
  return 0;
}

absl::StatusOr<void*> MemoryFileImage::Resize(void* ptr, size_t size) {
  if (size == 0) {
    return absl::InvalidArgumentError("cannot resize a memory file to 0 bytes");
  }
  MutexLock lock(&mu_);
  if (ptr == nullptr) {
    if (driver_ != Driver::kNoBuffer) {
      // The callbacks serve one file, which already had its first buffer.
      return absl::FailedPreconditionError(
          "these memory file callbacks already serve another file: create "
          "each memory file with h5depot::CreateMemoryFile");
    }
    return Allocate(size);
  }
  if (driver_ != Driver::kOpen || ptr != base_) {
    return absl::InternalError(
        "the core driver resized a buffer that is not its memory file's");
  }
  // Shrinking keeps the memfd and the mapping: the driver only ever asks
  // for a little less than it had (the end of the file rounded up), and
  // gets it back with its next write.
  if (size > mapped_) {
    absl::StatusOr<void*> grown = Grow(size);
    if (!grown.ok()) return grown.status();
  }
  driver_size_ = size;
  return base_;
}

absl::StatusOr<void*> MemoryFileImage::Allocate(size_t size) {
  const size_t length = RoundUpToPages(size);
  absl::StatusOr<UniqueFd> memfd = CreateMemfd(kMemfdName, length);
  if (!memfd.ok()) return memfd.status();
  absl::StatusOr<void*> base =
      MapImage(memfd->get(), length, /*shared=*/true, nullptr);
  if (!base.ok()) return base.status();
  memfd_ = *std::move(memfd);
  base_ = *base;
  mapped_ = length;
  private_ = false;
  driver_size_ = size;
  driver_ = Driver::kOpen;
  Ref();  // the driver's, released in ImageFree(FILE_CLOSE)
  return base_;
}

absl::StatusOr<void*> MemoryFileImage::Grow(size_t size) {
  const size_t length = RoundUpToPages(std::max(size, mapped_ + mapped_ / 2));
  if (!private_) {
    // The memfd is the driver's alone: extend it and its mapping, which
    // the kernel may move without copying a byte.
    if (ftruncate(memfd_.get(), static_cast<off_t>(length)) != 0) {
      return Errno(
          absl::StrCat("cannot grow a memory file to ", length, " bytes"),
          errno);
    }
    void* moved = mremap(base_, mapped_, length, MREMAP_MAYMOVE);
    if (moved == MAP_FAILED) return Errno("cannot remap a memory file", errno);
    base_ = moved;
    mapped_ = length;
    return base_;
  }
  // The memfd is no longer the file's to write (sealed, or the parent's
  // in a child of fork()): the file moves to a memfd of its own, with one
  // copy of what the driver holds.
  absl::StatusOr<UniqueFd> memfd = CreateMemfd(kMemfdName, length);
  if (!memfd.ok()) return memfd.status();
  absl::StatusOr<void*> base =
      MapImage(memfd->get(), length, /*shared=*/true, nullptr);
  if (!base.ok()) return base.status();
  std::memcpy(*base, base_, driver_size_);
  munmap(base_, mapped_);
  memfd_ = *std::move(memfd);
  base_ = *base;
  mapped_ = length;
  private_ = false;
  return base_;
}

absl::Status MemoryFileImage::Release(void* ptr) {
  MutexLock lock(&mu_);
  if (driver_ != Driver::kOpen || ptr != base_) {
    return absl::InternalError(
        "the core driver released a buffer that is not its memory file's");
  }
  munmap(base_, mapped_);
  memfd_.Reset();
  base_ = nullptr;
  mapped_ = 0;
  driver_size_ = 0;
  driver_ = Driver::kClosed;
  return absl::OkStatus();
}

absl::Status MemoryFileImage::MapPrivately(int memfd) {
  absl::StatusOr<void*> mapped =
      MapImage(memfd, mapped_, /*shared=*/false, base_);
  if (mapped.ok()) return absl::OkStatus();
  // A failed MAP_FIXED may have unmapped the driver's buffer, which HDF5
  // would then touch: put the previous mapping back, or stop here.
  if (!MapImage(memfd_.get(), mapped_, !private_, base_).ok()) {
    std::fprintf(stderr,
                 "h5depot: cannot restore a memory file's buffer after a "
                 "failed remap: %s\n",
                 mapped.status().ToString().c_str());
    std::abort();
  }
  return mapped.status();
}

absl::StatusOr<SealedFileImage> MemoryFileImage::Seal(void* driver_buffer,
                                                      uint64_t size) {
  MutexLock lock(&mu_);
  if (driver_ != Driver::kOpen || driver_buffer != base_) {
    return absl::FailedPreconditionError(
        "the memory file's driver does not use its memfd (nothing written "
        "yet?)");
  }
  if (size == 0 || size > driver_size_) {
    return absl::InternalError(absl::StrCat("the image's ", size,
                                            " bytes are not within the ",
                                            driver_size_, " of its buffer"));
  }
  const std::optional<SuperblockPatch> patch = SealedSuperblock(base_, size);
  if (!private_) {
    // No copy: the application's writes from now on go to private pages.
    absl::Status mapped = MapPrivately(memfd_.get());
    if (!mapped.ok()) return mapped;
    private_ = true;
    absl::Status sealed = PatchSuperblock(memfd_.get(), patch);
    if (sealed.ok()) sealed = AddSeals(memfd_.get(), kSealsFromClient);
    if (!sealed.ok()) {
      // Nothing wrote to the private mapping meanwhile (HDF5's lock is
      // held): mapping the memfd shared again loses nothing.
      if (MapImage(memfd_.get(), mapped_, /*shared=*/true, base_).ok()) {
        private_ = false;
      }
      return sealed;
    }
  } else {
    // The sealed memfd holds an earlier image, which must not change: one
    // copy into a fresh memfd, which becomes the file's in turn.
    absl::StatusOr<UniqueFd> memfd = CreateMemfd(kMemfdName, mapped_);
    if (!memfd.ok()) return memfd.status();
    absl::Status status = WriteAll(memfd->get(), base_, driver_size_);
    if (status.ok()) status = PatchSuperblock(memfd->get(), patch);
    if (status.ok()) status = AddSeals(memfd->get(), kSealsFromClient);
    if (status.ok()) status = MapPrivately(memfd->get());
    if (!status.ok()) return status;
    memfd_ = *std::move(memfd);
  }
  if (patch) {
    // The open file keeps its own superblock: writing it back into the
    // private mapping gives the file a private copy of that page.
    std::memcpy(static_cast<unsigned char*>(base_) + patch->offset,
                patch->original.data(), patch->original.size());
  }
  SealedFileImage image;
  image.fd = UniqueFd(fcntl(memfd_.get(), F_DUPFD_CLOEXEC, 0));
  if (!image.fd) return Errno("cannot duplicate the sealed memfd", errno);
  image.size = size;
  return image;
}

// Runs `work` while holding HDF5's global lock, so that no other thread's
// HDF5 call runs meanwhile (Debian's HDF5 is built thread-safe, and its
// lock is recursive: `work` may call HDF5). HDF5 has no call for that;
// H5Isearch holds the lock while it calls its callback, so this searches
// an identifier type of one identifier, made for the call (a type left
// registered would keep HDF5 from terminating cleanly at exit).
struct LockedCall {
  const std::function<void()>* work;
  bool ran = false;
  bool threw = false;
};

int RunSearchCallback(void* /*object*/, hid_t /*id*/, void* key) {
  auto* call = static_cast<LockedCall*>(key);
  call->ran = true;
  try {
    (*call->work)();
  } catch (...) {
    // Back into HDF5's C code: only out of memory gets here.
    call->threw = true;
  }
  return 1;  // found: stop
}

absl::Status RunUnderHdf5Lock(const std::function<void()>& work) {
  static char sentinel;
  const H5I_type_t type = H5Iregister_type(1, 0, nullptr);
  if (type == H5I_BADID) {
    return Hdf5Failure(absl::StatusCode::kInternal,
                       "cannot register an identifier type");
  }
  LockedCall call{&work};
  absl::Status status;
  if (H5Iregister(type, &sentinel) < 0) {
    status = Hdf5Failure(absl::StatusCode::kInternal,
                         "cannot register an identifier");
  } else {
    H5Isearch(type, &RunSearchCallback, &call);
    if (!call.ran) {
      status = Hdf5Failure(absl::StatusCode::kInternal,
                           "cannot run under HDF5's lock");
    } else if (call.threw) {
      status = absl::ResourceExhaustedError("out of memory");
    }
  }
  H5Idestroy_type(type);
  return status;
}

// The core driver's buffer under `file_id`, or nullptr if the file is of
// another driver. The core driver's handle is the address of its buffer
// pointer.
absl::StatusOr<void*> CoreDriverBuffer(hid_t file_id) {
  const hid_t fapl = H5Fget_access_plist(file_id);
  if (fapl < 0) {
    return Hdf5Failure(absl::StatusCode::kInvalidArgument,
                       "cannot get the file's access property list");
  }
  const hid_t driver = H5Pget_driver(fapl);
  H5Pclose(fapl);
  if (driver != H5FD_CORE) return nullptr;
  void* handle = nullptr;
  if (H5Fget_vfd_handle(file_id, H5P_DEFAULT, &handle) < 0 ||
      handle == nullptr) {
    return Hdf5Failure(absl::StatusCode::kInternal,
                       "cannot get the core driver's buffer");
  }
  return *static_cast<void**>(handle);
}

// SealMemoryFile with HDF5's lock held.
absl::StatusOr<std::optional<SealedFileImage>> SealLocked(hid_t file_id) {
  absl::StatusOr<void*> buffer = CoreDriverBuffer(file_id);
  if (!buffer.ok()) return buffer.status();
  MemoryFileImage* image = MemoryFileImage::FindByBuffer(*buffer);
  if (image == nullptr) return std::nullopt;
  struct Unref {
    MemoryFileImage* image;
    ~Unref() { image->Unref(); }
  } unref{image};

  if (H5Fflush(file_id, H5F_SCOPE_LOCAL) < 0) {
    return Hdf5Failure(absl::StatusCode::kInternal,
                       "cannot flush the memory file");
  }
  // The image HDF5 sizes starts at the superblock, after any user block.
  const ssize_t size = H5Fget_file_image(file_id, nullptr, 0);
  hsize_t user_block = 0;
  const hid_t fcpl = H5Fget_create_plist(file_id);
  const bool have_user_block =
      fcpl >= 0 && H5Pget_userblock(fcpl, &user_block) >= 0;
  if (fcpl >= 0) H5Pclose(fcpl);
  if (size <= 0 || !have_user_block) {
    return Hdf5Failure(absl::StatusCode::kInternal,
                       "cannot size the memory file's image");
  }
  // The flush may have resized the buffer.
  buffer = CoreDriverBuffer(file_id);
  if (!buffer.ok()) return buffer.status();
  absl::StatusOr<SealedFileImage> sealed =
      image->Seal(*buffer, static_cast<uint64_t>(size) + user_block);
  if (!sealed.ok()) return sealed.status();
  return std::optional<SealedFileImage>(*std::move(sealed));
}

}  // namespace

absl::StatusOr<std::optional<SealedFileImage>> SealMemoryFile(hid_t file_id) {
  QuietHdf5Errors quiet;
  if (H5Iget_type(file_id) != H5I_FILE) {
    H5Eclear2(H5E_DEFAULT);
    return absl::InvalidArgumentError("not an open HDF5 file");
  }
  absl::StatusOr<std::optional<SealedFileImage>> result = std::nullopt;
  absl::Status locked = RunUnderHdf5Lock([&] { result = SealLocked(file_id); });
  if (!locked.ok()) return locked;
  return result;
}

size_t LiveMemoryFiles() { return live_images.load(std::memory_order_relaxed); }

}  // namespace internal

absl::StatusOr<hid_t> CreateMemoryFile(hid_t fcpl, hid_t fapl) {
  internal::QuietHdf5Errors quiet;
  internal::MemoryFileImage* image = internal::MemoryFileImage::Create();
  if (image == nullptr) {
    return absl::ResourceExhaustedError("cannot allocate a memory file");
  }
  const hid_t access =
      fapl == H5P_DEFAULT ? H5Pcreate(H5P_FILE_ACCESS) : H5Pcopy(fapl);
  H5FD_file_image_callbacks_t callbacks = image->callbacks();
  absl::StatusOr<hid_t> file;
  if (access < 0) {
    file = internal::Hdf5Failure(absl::StatusCode::kInvalidArgument,
                                 "not a file access property list");
  } else if (H5Pset_fapl_core(access, internal::kDriverIncrement,
                              /*backing_store=*/0) < 0 ||
             H5Pset_file_image_callbacks(access, &callbacks) < 0) {
    file = internal::Hdf5Failure(
        absl::StatusCode::kInvalidArgument,
        "cannot set up the core driver with memory file callbacks");
  } else {
    const std::string name = absl::StrCat(
        internal::kNamePrefix,
        internal::next_serial.fetch_add(1, std::memory_order_relaxed));
    const hid_t created = H5Fcreate(name.c_str(), H5F_ACC_EXCL, fcpl, access);
    if (created < 0) {
      file = internal::Hdf5Failure(absl::StatusCode::kInvalidArgument,
                                   "cannot create a memory file");
    } else {
      file = created;
    }
  }
  if (access >= 0) H5Pclose(access);
  image->Unref();  // HDF5 holds its own references now
  return file;
}

}  // namespace h5depot
