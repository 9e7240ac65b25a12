// Writing a file so that it appears whole or not at all.
#ifndef H5DEPOT_CLI_ATOMIC_FILE_H_
#define H5DEPOT_CLI_ATOMIC_FILE_H_

#include <cstddef>
#include <memory>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace h5depot::cli {

// Writes go to a hidden temporary file beside `path`; Commit() renames it
// over `path`. Until then nothing is visible at `path`, and a writer that is
// destroyed uncommitted -- or a process stopped by SIGINT, SIGTERM or SIGHUP
// meanwhile -- removes the temporary file. One AtomicFile per process at a
// time (the signal cleanup knows one path). Not thread-safe.
class AtomicFile {
 public:
  // Creates the temporary file, so an unwritable directory is reported
  // before any data is fetched. Errors carry errno's text.
  static absl::StatusOr<std::unique_ptr<AtomicFile>> Create(
      const std::string& path);

  ~AtomicFile();
  AtomicFile(const AtomicFile&) = delete;
  AtomicFile& operator=(const AtomicFile&) = delete;

  absl::Status Write(const void* data, size_t size);

  // Closes the file and renames it to the final path (replacing any file
  // there). The file gets the permissions a new file would (0666 & ~umask).
  absl::Status Commit();

 private:
  AtomicFile(std::string path, std::string temp_path, int fd);

  const std::string path_;
  const std::string temp_path_;
  int fd_;
  bool committed_ = false;
};

// Writes all of `data` to `fd`, retrying short writes and EINTR. An error's
// message is `what` followed by errno's text.
absl::Status WriteAll(int fd, const void* data, size_t size,
                      const std::string& what);

}  // namespace h5depot::cli

#endif  // H5DEPOT_CLI_ATOMIC_FILE_H_
