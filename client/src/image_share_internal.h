// ImageShare: one file image buffer shared between h5depot and HDF5's core
// driver through the file image callbacks (H5Pset_file_image_callbacks),
// with the reference counts and realloc tracking of the HDF5 file image
// guide ("Sharing a File Image Buffer with the HDF5 Library", Example 10).
//
// HDF5 sees call-by-value semantics: each property list holding the image
// "allocates" and "copies" it, the core driver "allocates", "copies",
// "reallocates" and "frees" its own buffer. The callbacks keep that illusion
// while pointing everyone at the one buffer, so an image is never copied:
//
//   initial buffer  the image given to OpenFileImage. Property lists and,
//                   until it first resizes, the core driver share it;
//                   `initial_refs_` counts them.
//   driver buffer   what the core driver reads and writes. Starts as the
//                   initial buffer; a resize either reallocates it in
//                   place (nobody else refers to it) or moves the driver
//                   to a buffer of its own (property lists still hold the
//                   initial one).
//
// As in the guide's scheme, the illusion has one hole: until the driver
// moves, property lists holding the image see the driver's writes. h5depot
// closes its property list as soon as the file is open, so nobody looks.
//
// The ImageShare itself (HDF5's "udata") is reference counted: h5depot
// holds a reference while it uses one, every property list holding the
// callbacks holds one (udata_copy / udata_free), and the core driver holds
// one from the moment it takes the buffer until it releases it at close
// (the driver keeps a plain copy of the callbacks without calling
// udata_copy, so the share counts that reference itself). The last release
// frees the share and, if HDF5 owns it, the initial buffer.
//
// Thread safety: HDF5 (built thread-safe) serialises the callbacks, but
// h5depot code reads the share from other threads, so the buffer state is
// guarded by `mu_`. Lock order: HDF5's global lock, then the registry
// lock, then `mu_`; no HDF5 call is made while holding either lock.
#ifndef H5DEPOT_CLIENT_IMAGE_SHARE_INTERNAL_H_
#define H5DEPOT_CLIENT_IMAGE_SHARE_INTERNAL_H_

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "h5depot/image_buffer.h"
#include "h5depot/internal/mutex.h"
#include "hdf5.h"

namespace h5depot::internal {

// Who owns the initial buffer, and so whether it may move.
enum class BufferOwner {
  // HDF5 (through the share): free()d when the last reference goes; the
  // driver may grow it with realloc. DONT_COPY, and h5depot's own copy.
  kHdf5,
  // The application: never freed or moved. The driver may resize it in
  // place up to its original size; growing beyond fails with an error on
  // the HDF5 error stack. DONT_COPY | DONT_RELEASE.
  kApplication,
  // A mapped ImageBuffer (image_buffer.h, a fetch that mapped the server's
  // memory), kept by the share until its last reference goes: never
  // freed with free() nor moved. The driver resizes it in place within its
  // size (the mapping is copy-on-write, so writes stay private); growing
  // beyond moves the driver to memory of its own, copying once.
  kMapping,
};

class ImageShare;

// A counted reference to an ImageShare (like a std::shared_ptr whose count
// HDF5 also holds).
class ImageShareRef {
 public:
  ImageShareRef() = default;
  ~ImageShareRef() { Reset(); }
  ImageShareRef(ImageShareRef&& other) noexcept : share_(other.share_) {
    other.share_ = nullptr;
  }
  ImageShareRef& operator=(ImageShareRef&& other) noexcept;
  ImageShareRef(const ImageShareRef&) = delete;
  ImageShareRef& operator=(const ImageShareRef&) = delete;

  ImageShare* get() const { return share_; }
  ImageShare* operator->() const { return share_; }
  ImageShare& operator*() const { return *share_; }
  explicit operator bool() const { return share_ != nullptr; }
  void Reset();

 private:
  friend class ImageShare;
  explicit ImageShareRef(ImageShare* share) : share_(share) {}
  ImageShare* share_ = nullptr;
};

class ImageShare {
 public:
  // A share of `buffer` (`size` > 0 bytes) owned by `owner`. For kHdf5 the
  // share owns `buffer` from this call on, also when it fails
  // (RESOURCE_EXHAUSTED): the buffer is then freed.
  static absl::StatusOr<ImageShareRef> Create(void* buffer, size_t size,
                                              BufferOwner owner);
  // A share of `mapped` (is_mapped(), not empty), owner kMapping.
  static absl::StatusOr<ImageShareRef> CreateMapped(ImageBuffer mapped);

  // The share of the open file `file_id` if OpenFileImage opened it and
  // its core driver still uses the share's buffer; nullopt otherwise.
  static std::optional<ImageShareRef> Find(hid_t file_id);

  // Shares alive in this process; for tests that check nothing leaks.
  static size_t LiveCount();

  ImageShare(const ImageShare&) = delete;
  ImageShare& operator=(const ImageShare&) = delete;

  // The callbacks to give H5Pset_file_image_callbacks, with this share as
  // udata (H5Pset_file_image_callbacks takes its own reference).
  H5FD_file_image_callbacks_t callbacks();

  // The name to open the image under: unique in the process and below
  // /dev/null, a path that cannot be a directory, so no file on disk ever
  // has it (the core driver refuses an initial image whose name exists).
  const std::string& file_name() const { return file_name_; }

  BufferOwner owner() const { return owner_; }

  // Whether the core driver holds the buffer (opened and not yet closed).
  bool driver_open() const;

  // Asks that when the driver closes, its final buffer be kept for
  // TakeFinalImage rather than freed. Only for kHdf5 shares.
  void KeepFinalImage();

  // After the driver closed with KeepFinalImage set: the final buffer and
  // the size the driver last gave it (which may exceed the image). nullopt
  // if the driver has not closed, nothing was kept, or it was taken.
  std::optional<ImageBuffer> TakeFinalImage();

 private:
  ImageShare(void* buffer, size_t size, BufferOwner owner, uint64_t serial);
  ~ImageShare();

  void Ref();
  // Returns a reference only if the count has not already reached zero.
  bool TryRef();
  void Unref();

  // The file image callbacks (H5FD_file_image_callbacks_t).
  static void* ImageMalloc(size_t size, H5FD_file_image_op_t op, void* udata);
  static void* ImageMemcpy(void* dest, const void* src, size_t size,
                           H5FD_file_image_op_t op, void* udata);
  static void* ImageRealloc(void* ptr, size_t size, H5FD_file_image_op_t op,
                            void* udata);
  static herr_t ImageFree(void* ptr, H5FD_file_image_op_t op, void* udata);
  static void* UdataCopy(void* udata);
  static herr_t UdataFree(void* udata);

  void* Resize(void* ptr, size_t size);
  bool ReleaseDriverBuffer(void* ptr);

  const uint64_t serial_;
  const std::string file_name_;
  const BufferOwner owner_;
  const size_t initial_size_;
  std::atomic<int> refs_{1};

  mutable Mutex mu_;
  // Null once the driver has taken it over by reallocation, or it has been
  // handed on as the final image.
  void* initial_ ABSL_GUARDED_BY(mu_);
  int initial_refs_ ABSL_GUARDED_BY(mu_) = 0;
  bool driver_open_ ABSL_GUARDED_BY(mu_) = false;
  void* driver_buffer_ ABSL_GUARDED_BY(mu_) = nullptr;
  size_t driver_size_ ABSL_GUARDED_BY(mu_) = 0;
  bool keep_final_ ABSL_GUARDED_BY(mu_) = false;
  // kMapping: the mapped buffer behind initial_, until the share goes or
  // it is handed on as the final image (final_mapped_).
  std::optional<ImageBuffer> mapped_ ABSL_GUARDED_BY(mu_);
  std::optional<ImageBuffer> final_mapped_ ABSL_GUARDED_BY(mu_);
  void* final_ ABSL_GUARDED_BY(mu_) = nullptr;
  size_t final_size_ ABSL_GUARDED_BY(mu_) = 0;

  friend class ImageShareRef;
};

}  // namespace h5depot::internal

#endif  // H5DEPOT_CLIENT_IMAGE_SHARE_INTERNAL_H_
