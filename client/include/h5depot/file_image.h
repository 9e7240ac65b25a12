// HDF5 file images in memory: taking the image of an open file, and opening
// an image as an HDF5 file with the ownership flags of H5LTopen_file_image,
// from any number of threads at once.
//
// The ownership flags are those of H5LTpublic.h, with the same values:
//
//   flags                        copied  HDF5 uses    HDF5 frees   may grow
//                                        the buffer   the buffer
//   0 / OPEN_RW                  yes     no (copy)    no           yes
//   DONT_COPY (| OPEN_RW)        no      yes          yes          yes
//   DONT_COPY | DONT_RELEASE     no      yes          no           no (*)
//     (| OPEN_RW)
//
// (*) With OPEN_RW, writes that fit in the buffer succeed (a buffer larger
// than the image leaves room to grow into); anything that needs more room
// fails in the HDF5 call that needs it (H5Dcreate, H5Dwrite, ...), with
// HDF5's "file allocation request failed" on the error stack, and the file
// still flushes and closes. Without OPEN_RW the buffer is only read.
//
// Ownership is decided by the flags when the call is made, whatever its
// outcome: with DONT_COPY and without DONT_RELEASE the buffer belongs to
// HDF5 from the call on and is freed by it, also when the call fails (so a
// caller never frees it); otherwise the caller keeps it.
//
// Unlike H5LTopen_file_image, each open gets a name of its own, so images
// never alias each other, and no file on disk can get in the way; nothing
// is left behind when the file closes. See docs/FILE_IMAGES.md.
//
// Example (process B of the file image guide's Example 11):
//   h5depot::ImageBuffer image = ...;  // e.g. fetched from h5depotd
//   absl::StatusOr<hid_t> file = h5depot::OpenFileImage(std::move(image));
//   if (!file.ok()) return file.status();
//   ... read with the HDF5 API ...
//   H5Fclose(*file);  // HDF5 frees the image
#ifndef H5DEPOT_CLIENT_FILE_IMAGE_H_
#define H5DEPOT_CLIENT_FILE_IMAGE_H_

#include <cstddef>
#include <memory>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "h5depot/image_buffer.h"
#include "hdf5.h"
// The H5LT_FILE_IMAGE_* flags; needs hdf5.h first.
#include "H5LTpublic.h"

namespace h5depot {

namespace internal {
class ImageShareRef;
}  // namespace internal

// The image of `file_id`, an open file of the core, sec2 or stdio driver:
// flushes the file, then copies it once into a buffer of exactly the
// image's size. The image opens again whatever the superblock version
// (HDF5 1.10.8 leaves a stale checksum in version 2 and 3 superblocks of
// the copy; it is recomputed). A user block is not part of the image.
//
// Errors: INVALID_ARGUMENT if `file_id` is not an open file or its driver
// cannot give an image; RESOURCE_EXHAUSTED if the buffer cannot be
// allocated; ABORTED if other threads kept growing the file meanwhile.
absl::StatusOr<ImageBuffer> TakeFileImage(hid_t file_id);

// Opens `size` bytes at `buffer` as an HDF5 file in memory, the drop-in
// replacement of H5LTopen_file_image(buffer, size, flags): the same flags
// (H5LT_FILE_IMAGE_OPEN_RW, _DONT_COPY, _DONT_RELEASE) with the ownership
// of the table above. Returns the file id; close it with H5Fclose, or with
// CloseFileImage to keep the final image.
//
// With DONT_COPY the buffer must come from malloc (HDF5 may realloc and
// free it). With DONT_RELEASE the application keeps the buffer, and must
// keep it until HDF5 has closed the file: until the file id and every
// object opened in the file are closed.
//
// Errors: INVALID_ARGUMENT if `buffer` is null, `size` is 0, the flags are
// unknown or DONT_RELEASE lacks DONT_COPY, or the bytes are not an HDF5
// file image that opens ("cannot open file image: <HDF5's reason>");
// RESOURCE_EXHAUSTED if a copy cannot be allocated; UNIMPLEMENTED for
// DONT_COPY | DONT_RELEASE | OPEN_RW if this HDF5's core driver cannot be
// kept within the buffer (see docs/FILE_IMAGES.md).
absl::StatusOr<hid_t> OpenFileImage(void* buffer, size_t size, unsigned flags);

// Opens `image` in place: OpenFileImage with DONT_COPY. `flags` may add
// H5LT_FILE_IMAGE_OPEN_RW; DONT_RELEASE is INVALID_ARGUMENT (the image
// is always handed over, also on failure).
absl::StatusOr<hid_t> OpenFileImage(ImageBuffer image, unsigned flags = 0);

// Closes `file_id`, a file that OpenFileImage opened without DONT_RELEASE,
// and returns its final image instead of letting HDF5 free it: the buffer
// HDF5 wrote to, after any growth, trimmed to the image's size. Nothing is
// copied. The image of a file opened read-only is returned byte for byte.
//
// Errors: INVALID_ARGUMENT if `file_id` is not such a file;
// FAILED_PRECONDITION if it was opened with DONT_RELEASE (the buffer is
// the application's: use H5Fclose), or if objects (datasets, groups,
// attributes, named datatypes, other file ids) are still open in the file;
// the file then stays open, and the call may be retried once they are
// closed.
absl::StatusOr<ImageBuffer> CloseFileImage(hid_t file_id);

// Whether `size` bytes at `data` are an HDF5 file image that opens: opens
// it read-only without copying and reads the header of every object
// reachable from the root group, then closes it. Does not modify `data`.
//
// Errors: INVALID_ARGUMENT saying what is wrong.
absl::Status ValidateImage(const void* data, size_t size);

// A file image open read/write whose final image the application gets
// back, for example to push it again: the pattern of the file image
// guide's Examples 6 and 10 behind a small class.
//
// Example:
//   auto image = h5depot::WritableImage::Open(std::move(buffer));
//   if (!image.ok()) return image.status();
//   ... write through (*image)->file() ...
//   absl::StatusOr<h5depot::ImageBuffer> result = (*image)->Close();
//
// Not thread-safe: one thread at a time (HDF5 calls on file() may come
// from any thread, as HDF5 allows).
class WritableImage {
 public:
  // Opens `image` read/write without copying it; the image may grow.
  // INVALID_ARGUMENT for an empty buffer or bytes that are not an HDF5
  // file image (the buffer is then freed).
  static absl::StatusOr<std::unique_ptr<WritableImage>> Open(ImageBuffer image);

  // Closes the file if Close() did not, discarding the image.
  ~WritableImage();
  WritableImage(const WritableImage&) = delete;
  WritableImage& operator=(const WritableImage&) = delete;

  // The open file, for the HDF5 API; H5I_INVALID_HID after Close(). Do not
  // H5Fclose it: call Close().
  hid_t file() const { return file_; }

  // Closes the file and returns the final image (see CloseFileImage).
  // FAILED_PRECONDITION if objects are still open in the file (it stays
  // open: close them and call again) or if already closed.
  absl::StatusOr<ImageBuffer> Close();

 private:
  WritableImage(hid_t file, std::unique_ptr<internal::ImageShareRef> share);

  hid_t file_;
  std::unique_ptr<internal::ImageShareRef> share_;
};

}  // namespace h5depot

#endif  // H5DEPOT_CLIENT_FILE_IMAGE_H_
