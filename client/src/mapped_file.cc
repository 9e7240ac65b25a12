#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <utility>

#include "absl/strings/str_cat.h"
#include "client/src/mapped_file_internal.h"

namespace h5depot::internal {

absl::StatusOr<MappedFile> MappedFile::Open(const std::string& path) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    const int error = errno;
    return absl::Status(
        error == ENOENT   ? absl::StatusCode::kNotFound
        : error == EACCES ? absl::StatusCode::kPermissionDenied
                          : absl::StatusCode::kInvalidArgument,
        absl::StrCat("cannot open ", path, ": ", std::strerror(error)));
  }
  struct stat st;
  if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
    ::close(fd);
    return absl::InvalidArgumentError(
        absl::StrCat(path, " is not a regular file"));
  }
  MappedFile file;
  file.size_ = static_cast<size_t>(st.st_size);
  if (file.size_ > 0) {
    void* data = mmap(nullptr, file.size_, PROT_READ, MAP_PRIVATE, fd, 0);
    if (data == MAP_FAILED) {
      const int error = errno;
      ::close(fd);
      return absl::InternalError(
          absl::StrCat("cannot map ", path, ": ", std::strerror(error)));
    }
    madvise(data, file.size_, MADV_SEQUENTIAL);
    file.data_ = data;
  }
  ::close(fd);
  return file;
}

MappedFile::MappedFile(MappedFile&& other) noexcept
    : data_(std::exchange(other.data_, nullptr)),
      size_(std::exchange(other.size_, 0)) {}

void MappedFile::Release(size_t begin, size_t end) {
  static const size_t page = static_cast<size_t>(sysconf(_SC_PAGESIZE));
  // A page partly outside the range may be dropped too: if it is still
  // needed, it is read again.
  begin = begin / page * page;
  // The last page of the file is whole in the mapping.
  end = end >= size_ ? (size_ + page - 1) / page * page : end / page * page;
  if (data_ == nullptr || end <= begin) return;
  madvise(static_cast<char*>(data_) + begin, end - begin, MADV_DONTNEED);
}

MappedFile::~MappedFile() {
  if (data_ != nullptr) munmap(data_, size_);
}

}  // namespace h5depot::internal
