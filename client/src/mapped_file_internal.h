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

 private:
  void* data_ = nullptr;
  size_t size_ = 0;
};

}  // namespace h5depot::internal

#endif  // H5DEPOT_CLIENT_MAPPED_FILE_INTERNAL_H_
