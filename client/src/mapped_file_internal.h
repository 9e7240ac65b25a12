// A read-only mapping of a whole file, for Client::PushFile to send
// without copying it. Internal to the client.
#ifndef H5DEPOT_CLIENT_MAPPED_FILE_INTERNAL_H_
#define H5DEPOT_CLIENT_MAPPED_FILE_INTERNAL_H_

#include <cstddef>
#include <string>

#include "absl/status/statusor.h"

namespace h5depot::internal {

// The whole file, mapped read-only, unmapped on destruction.
class MappedFile {
 public:
  // NOT_FOUND or PERMISSION_DENIED if the file cannot be opened,
  // INVALID_ARGUMENT if it is not a regular file.
  static absl::StatusOr<MappedFile> Open(const std::string& path);

  MappedFile() = default;
  MappedFile(MappedFile&& other) noexcept;
  MappedFile& operator=(MappedFile&&) = delete;
  ~MappedFile();

  const void* data() const { return data_; }
  size_t size() const { return size_; }

  // Drops this process's hold on the pages within [begin, end) (the page
  // cache keeps them), and on the page `begin` lies in: a reader that moves
  // through the file, releasing what it is done with, holds about a piece
  // of it, whatever the file's size. Harmless for bytes still to be read:
  // the mapping is never written, so a dropped page is read from the file
  // again if touched.
  void Release(size_t begin, size_t end);

 private:
  void* data_ = nullptr;
  size_t size_ = 0;
};

}  // namespace h5depot::internal

#endif  // H5DEPOT_CLIENT_MAPPED_FILE_INTERNAL_H_
