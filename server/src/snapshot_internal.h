// h5depot::server::SnapshotDirectory: a store's images on disk, so that a
// restarted h5depotd brings them back (h5depotd --snapshot-dir). Internal
// to the server; gRPC-free.
//
// Layout of the directory:
//   MANIFEST          the last complete snapshot: what to load
//   images/G.img      the bytes of generation G, one file per image content
//
// A snapshot writes the file of every current generation that has none
// yet (a generation never changes, so a file written by an earlier
// snapshot is reused), each to a temporary name, fsynced, renamed, then
// fsyncs the images directory; then the manifest, the same way, renamed
// over MANIFEST, and fsyncs the directory; only then removes the files no
// manifest names any more. So MANIFEST is always a complete snapshot:
// the previous one until the new one is durable, whatever step a crash or
// an error (a full disk, an fsync that fails) cuts short; a failed
// snapshot is reported, not retried, and leaves the previous one.
//
// The manifest is text: a header line, one line per image (generation,
// size, XXH3-64 checksum, creation and expiry time, id) and an end line
// with the count and the XXH3-64 of everything before it. A manifest whose
// end line does not match is refused whole; an image file whose size or
// checksum does not match is refused alone, with a log line, and the rest
// loads.
//
// Thread safety: one snapshot at a time (Write serialises itself);
// Restore before anything else uses the directory.
#ifndef H5DEPOT_SERVER_SNAPSHOT_INTERNAL_H_
#define H5DEPOT_SERVER_SNAPSHOT_INTERNAL_H_

#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <string_view>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "h5depot/server/image_store.h"

namespace h5depot::server {

// What a snapshot wrote.
struct SnapshotReport {
  size_t images = 0;  // in the snapshot (streams' steps apart)
  size_t streams = 0;
  size_t steps = 0;          // kept by the streams
  uint64_t bytes = 0;        // their bytes
  size_t files_written = 0;  // image files written (the rest were kept)
  uint64_t bytes_written = 0;
  absl::Duration took;
};

// What a restore brought back.
struct RestoreReport {
  bool found = false;  // a snapshot was there
  size_t images = 0;
  size_t streams = 0;
  size_t steps = 0;
  uint64_t bytes = 0;
  size_t expired = 0;  // expired since the snapshot: not loaded
  size_t refused = 0;  // damaged or not admitted: logged, not loaded
  absl::Duration took;
};

class SnapshotDirectory {
 public:
  // Says one thing worth an operator's attention (an image refused).
  using Log = std::function<void(std::string_view)>;

  // The directory at `path`, created (with its images directory) if it
  // does not exist. INVALID_ARGUMENT for an empty path; the error of
  // mkdir naming the path otherwise.
  static absl::StatusOr<std::unique_ptr<SnapshotDirectory>> Open(
      std::string path, Log log);

  const std::string& path() const { return path_; }

  // Loads the last complete snapshot into `store`, which must not have
  // changed yet: every image with its id, generation, checksum, creation
  // time and expiry (an image expired meanwhile is not loaded). An image
  // whose file is missing, damaged or not admitted by the store is logged
  // and skipped. Then removes the files the snapshot does not name.
  // found = false without a MANIFEST. DATA_LOSS for a MANIFEST that is not
  // a complete snapshot (nothing is loaded or removed then).
  absl::StatusOr<RestoreReport> Restore(ImageStore& store);

  // Writes a snapshot of `store`'s current images, as the file comment
  // says. On an error (naming the file and the system's reason) the
  // previous snapshot stays.
  absl::StatusOr<SnapshotReport> Write(const ImageStore& store);

 private:
  SnapshotDirectory(std::string path, Log log)
      : path_(std::move(path)), log_(std::move(log)) {}

  // Removes what `referenced` (image file names) does not name from the
  // images directory, and temporary files.
  void RemoveUnreferenced(const std::vector<std::string>& referenced);

  const std::string path_;
  const Log log_;
  absl::Mutex mutex_;  // one snapshot at a time
  uint64_t snapshots_begun_ ABSL_GUARDED_BY(mutex_) = 0;
};

}  // namespace h5depot::server

#endif  // H5DEPOT_SERVER_SNAPSHOT_INTERNAL_H_
