// h5depot::testing::TempDir: a private directory that a test owns and that
// disappears with it, plus whole-file read/write helpers.
//
// Example:
//   auto dir = h5depot::testing::TempDir::Create();
//   ASSERT_TRUE(dir.ok()) << dir.status();
//   ASSERT_TRUE(WriteFile(dir->File("in.h5"), bytes).ok());
#ifndef H5DEPOT_TESTING_TEMP_DIR_H_
#define H5DEPOT_TESTING_TEMP_DIR_H_

#include <string>
#include <string_view>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace h5depot::testing {

class TempDir {
 public:
  // Creates a new empty directory (mode 0700) under `parent`; by default
  // under $TMPDIR, or /tmp when that is unset. Each call gets its own
  // directory, so tests running in parallel never share one.
  static absl::StatusOr<TempDir> Create(std::string parent = "");

  // Removes the directory and everything below it; errors are ignored.
  ~TempDir();
  TempDir(TempDir&& other) noexcept;
  TempDir& operator=(TempDir&& other) noexcept;
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;

  // Absolute path of the directory, without a trailing '/'.
  const std::string& path() const { return path_; }

  // path() + "/" + name. Creates nothing.
  std::string File(std::string_view name) const;

 private:
  explicit TempDir(std::string path) : path_(std::move(path)) {}

  std::string path_;  // empty once moved from
};

// Replaces the file at `path` with exactly `contents`.
absl::Status WriteFile(const std::string& path, std::string_view contents);

// The whole contents of the file at `path`; NOT_FOUND if it does not exist.
absl::StatusOr<std::string> ReadFile(const std::string& path);

// Whether anything (file, directory, socket, ...) exists at `path`.
bool PathExists(const std::string& path);

}  // namespace h5depot::testing

#endif  // H5DEPOT_TESTING_TEMP_DIR_H_
