// HDF5 files over the network: push an open HDF5 file as an image, fetch an
// image and open it as an HDF5 file in one call, and the round trip that
// changes an image and pushes it back only if nobody else did meanwhile.
//
// These join h5depot::Client (client.h) and the file images of
// file_image.h. Bytes are copied as little as HDF5 allows: a push takes
// one copy of the file (H5Fget_file_image) and streams that; a fetched
// image is handed to HDF5 with H5LT_FILE_IMAGE_DONT_COPY and never copied
// after it arrives; the final image of a file opened read/write goes back
// to the server without another copy.
//
// Example (process A pushes, process B opens):
//   // A
//   hid_t file = H5Fcreate(...);  // core, sec2 or stdio driver
//   ... write datasets and attributes ...
//   absl::StatusOr<h5depot::ImageInfo> pushed =
//       h5depot::PushFileImage(*client, "run-42/packet", file);
//   // B
//   h5depot::FetchOptions wait;
//   wait.wait = absl::Seconds(30);
//   absl::StatusOr<h5depot::FetchedFile> fetched =
//       h5depot::FetchAndOpen(*client, "run-42/packet", 0, wait);
//   if (!fetched.ok()) return fetched.status();
//   ... read through fetched->file ...
//   H5Fclose(fetched->file);  // HDF5 frees the image
//
// Errors are those of Client (see client.h, which gives the one table of
// codes) and of file_image.h. Every
// function may be called from any number of threads at once.
#ifndef H5DEPOT_CLIENT_HDF5_TRANSFER_H_
#define H5DEPOT_CLIENT_HDF5_TRANSFER_H_

#include <cstddef>
#include <memory>
#include <optional>
#include <string_view>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "h5depot/client.h"
#include "h5depot/file_image.h"
#include "h5depot/image_buffer.h"
#include "hdf5.h"

namespace h5depot {

// The options of a push (client.h), plus a deeper check of the image on
// this side before anything is sent.
struct ImagePushOptions : PushOptions {
  // Before sending, open the image read-only and read the header of every
  // object reachable from the root group (ValidateImage). An image that
  // fails is INVALID_ARGUMENT saying why, and nothing is sent. The server
  // itself only checks for the HDF5 signature.
  bool validate = false;
};

// Pushes `size` bytes at `data` (borrowed for the call) as a new generation
// of `image_id`: Client::Push, with options.validate honoured. Returns the
// published generation's info.
absl::StatusOr<ImageInfo> PushImage(Client& client, std::string_view image_id,
                                    const void* data, size_t size,
                                    const ImagePushOptions& options = {});

// Pushes the image of `file_id`, an open HDF5 file of the core, sec2 or
// stdio driver, as a new generation of `image_id`. Flushes the file and
// takes its image in one copy (TakeFileImage: images of every superblock
// version open again), streams that copy and frees it. A file made by
// CreateMemoryFile (memory_file.h) is instead sealed as it is and pushed
// with Client::PushMemfd: to a server on this host over its Unix socket,
// nothing is copied. The file stays open and unchanged either way.
// Returns the published generation's info.
//
// Errors: INVALID_ARGUMENT for a malformed image id (checked before the
// image is taken), an id that is not an open file or a driver that cannot
// give an image, or an image that fails options.validate; otherwise those
// of TakeFileImage and Client::Push.
absl::StatusOr<ImageInfo> PushFileImage(Client& client,
                                        std::string_view image_id,
                                        hid_t file_id,
                                        const ImagePushOptions& options = {});

// Appends the image of `file_id` as the next step of `stream`
// (Client::Append), taken as PushFileImage takes it: a file made by
// CreateMemoryFile is sealed as it is and handed over with
// Client::AppendMemfd (to a server on this host over its Unix socket,
// nothing is copied); any other file's image is taken in one copy. The file
// stays open and unchanged either way.
//
// Errors: INVALID_ARGUMENT for a malformed stream name, an id that is not
// an open file or a driver that cannot give an image; otherwise those of
// TakeFileImage and Client::Append.
absl::StatusOr<AppendedStep> AppendFileImage(Client& client,
                                             std::string_view stream,
                                             hid_t file_id,
                                             const AppendOptions& options = {});

// AppendFileImage for a writer of large steps on the server's host: any
// file but CreateMemoryFile's has its image copied by HDF5 straight into
// one of `client`'s step buffers (Client::BeginStep), which CommitStep
// hands over: one copy, into memory the client reuses from step to step,
// where AppendFileImage copies into new memory and sends that. Elsewhere
// the buffer's bytes are sent, as CommitStep does. Waits for a step
// buffer as BeginStep does (options.wait_for_room).
//
// Errors: those of AppendFileImage, and of Client::BeginStep and
// Client::CommitStep.
absl::StatusOr<AppendedStep> AppendFileImageInStepBuffer(
    Client& client, std::string_view stream, hid_t file_id,
    const AppendOptions& options = {});

// The first half of AppendFileImageInStepBuffer, for callers that commit
// apart (a binding that holds a lock around HDF5 calls only): the image of
// `file_id`, flushed and taken as TakeFileImage takes it, written by HDF5
// into one of `client`'s step buffers for `stream`, ready for
// Client::CommitStep. Waits for a buffer as BeginStep does.
absl::StatusOr<StepBuffer> TakeFileImageInStepBuffer(
    Client& client, std::string_view stream, hid_t file_id,
    const AppendOptions& options = {});

// An image fetched and open as an HDF5 file.
struct FetchedFile {
  ImageInfo info;                // the generation that was fetched
  hid_t file = H5I_INVALID_HID;  // an HDF5 file id; see FetchAndOpen
};

// Fetches the current generation of `image_id` and opens it as an HDF5
// file in memory. The fetched buffer is handed to HDF5 with
// H5LT_FILE_IMAGE_DONT_COPY: it is never copied, and HDF5 frees it when the
// file closes. `flags` may be 0 or H5LT_FILE_IMAGE_OPEN_RW, with or without
// H5LT_FILE_IMAGE_DONT_COPY (implied anyway). With OPEN_RW the image may
// grow, and CloseFileImage(file) returns the final image, e.g. to push it
// back (ImageUpdate does all of that).
//
// Close the file with H5Fclose or CloseFileImage. The caller owns the file
// id; nothing else is left to free.
//
// Errors: INVALID_ARGUMENT for H5LT_FILE_IMAGE_DONT_RELEASE (the fetched
// buffer is always handed over: an application that keeps its buffer
// calls Client::Fetch and OpenFileImage) or unknown flags, checked before
// anything is fetched, and for a fetched image that HDF5 cannot open;
// otherwise those of Client::Fetch (NOT_FOUND, DEADLINE_EXCEEDED after
// options.wait, UNAVAILABLE, DATA_LOSS, ...).
absl::StatusOr<FetchedFile> FetchAndOpen(Client& client,
                                         std::string_view image_id,
                                         unsigned flags = 0,
                                         const FetchOptions& options = {});

// The round trip: fetch an image, change it through HDF5, and push the
// result back as the next generation, only if the generation fetched is
// still current when the push arrives. The image is opened read/write in
// the buffer it was fetched into, and its final buffer (after any growth)
// is pushed without another copy (WritableImage).
//
// Example:
//   for (;;) {
//     auto update = h5depot::ImageUpdate::Begin(*client, "run-42/packet");
//     if (!update.ok()) return update.status();
//     ... write through (*update)->file(), close what was opened ...
//     absl::StatusOr<h5depot::ImageInfo> pushed = (*update)->Commit();
//     if (pushed.ok()) break;
//     // Only a lost race is worth another round; anything else (objects
//     // left open: FAILED_PRECONDITION) would fail the same way again.
//     if (!absl::IsAborted(pushed.status())) return pushed.status();
//     // Somebody pushed meanwhile: start again from their generation.
//   }
//
// Not thread-safe: one thread at a time. The client must outlive the
// update.
class ImageUpdate {
 public:
  // Fetches the current generation of `image_id` (waiting for it as
  // options say) and opens it read/write. Errors: those of FetchAndOpen.
  static absl::StatusOr<std::unique_ptr<ImageUpdate>> Begin(
      Client& client, std::string_view image_id,
      const FetchOptions& options = {});

  // Closes the file if it is still open, and discards the changes.
  ~ImageUpdate();
  ImageUpdate(const ImageUpdate&) = delete;
  ImageUpdate& operator=(const ImageUpdate&) = delete;

  // The image open read/write, for the HDF5 API: H5I_INVALID_HID once
  // Commit() has closed it. Do not H5Fclose it.
  hid_t file() const { return image_->file(); }

  // The image id, and the generation that was fetched: Commit pushes only
  // if it is still current.
  const ImageInfo& base() const { return base_; }

  // Closes the file and pushes its final image as a new generation of
  // base().image_id, on condition that base().generation is still current.
  // Returns the new generation's info; the update is then done.
  //
  // options.if_generation_match must be unset (or base().generation):
  // anything else is INVALID_ARGUMENT. Its ttl, progress and validate
  // apply.
  //
  // Errors:
  //   ABORTED              another push or a delete changed the image since
  //                        it was fetched (a lost race): nothing was pushed,
  //                        and calling Commit again cannot succeed; Begin
  //                        again and redo the change.
  //   FAILED_PRECONDITION  the update's own state must be fixed first,
  //                        retrying as is cannot help: objects are still
  //                        open in the file, which then stays open (close
  //                        them and call Commit again); or this update was
  //                        already committed.
  //   others               of PushImage. The final image is kept, so after
  //                        UNAVAILABLE (say) Commit may simply be called
  //                        again.
  absl::StatusOr<ImageInfo> Commit(const ImagePushOptions& options = {});

 private:
  ImageUpdate(Client& client, ImageInfo base,
              std::unique_ptr<WritableImage> image);

  Client& client_;
  const ImageInfo base_;
  std::unique_ptr<WritableImage> image_;    // open until Commit closes it
  std::optional<ImageBuffer> final_image_;  // closed, not yet pushed
  bool committed_ = false;
};

}  // namespace h5depot

#endif  // H5DEPOT_CLIENT_HDF5_TRANSFER_H_
