#include "h5depot/internal/memfd.h"

#include <errno.h>
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstring>
#include <string>

#include "absl/strings/str_cat.h"

namespace h5depot::internal {
namespace {

std::string SealNames(int seals) {
  std::string names;
  auto add = [&](int seal, const char* name) {
    if ((seals & seal) == 0) return;
    if (!names.empty()) names += "|";
    names += name;
  };
  add(F_SEAL_WRITE, "F_SEAL_WRITE");
  add(F_SEAL_FUTURE_WRITE, "F_SEAL_FUTURE_WRITE");
  add(F_SEAL_SHRINK, "F_SEAL_SHRINK");
  add(F_SEAL_GROW, "F_SEAL_GROW");
  add(F_SEAL_SEAL, "F_SEAL_SEAL");
  return names;
}

}  // namespace

void UniqueFd::Reset(int fd) {
  if (fd_ >= 0) close(fd_);
  fd_ = fd;
}

absl::StatusOr<UniqueFd> CreateMemfd(const char* name, uint64_t size) {
  UniqueFd fd(memfd_create(name, MFD_CLOEXEC | MFD_ALLOW_SEALING));
  if (!fd) {
    int error = errno;
    return absl::ResourceExhaustedError(
        absl::StrCat("memfd_create: ", std::strerror(error)));
  }
  if (ftruncate(fd.get(), static_cast<off_t>(size)) != 0) {
    int error = errno;
    return absl::ResourceExhaustedError(absl::StrCat(
        "cannot size a memfd to ", size, " bytes: ", std::strerror(error)));
  }
  return fd;
}

absl::Status AddSeals(int fd, int seals) {
  if (fcntl(fd, F_ADD_SEALS, seals) == 0) return absl::OkStatus();
  int error = errno;
  if (error == EBUSY) {
    return absl::FailedPreconditionError(
        "cannot seal the memfd against writes while it is mapped writable");
  }
  if (error == EPERM) {
    return absl::FailedPreconditionError("the memfd's seals are sealed");
  }
  return absl::InvalidArgumentError(
      absl::StrCat("cannot seal: ", std::strerror(error)));
}

bool IsWriteSealed(int fd) {
  const int present = fcntl(fd, F_GET_SEALS);
  return present >= 0 && (present & (F_SEAL_WRITE | F_SEAL_FUTURE_WRITE)) != 0;
}

absl::StatusOr<uint64_t> CheckSealedImage(int fd, int seals, uint64_t size) {
  int present = fcntl(fd, F_GET_SEALS);
  if (present < 0) {
    return absl::InvalidArgumentError("the descriptor is not a sealable memfd");
  }
  // No write at all is at least as strong as no new one.
  if ((present & F_SEAL_WRITE) != 0) present |= F_SEAL_FUTURE_WRITE;
  if ((present & seals) != seals) {
    return absl::InvalidArgumentError(
        absl::StrCat("the memfd lacks the seals ", SealNames(seals & ~present),
                     ": its owner could still change it"));
  }
  struct stat st;
  if (fstat(fd, &st) != 0 || st.st_size < 0) {
    return absl::InvalidArgumentError("cannot stat the memfd");
  }
  uint64_t length = static_cast<uint64_t>(st.st_size);
  if (length < size) {
    return absl::InvalidArgumentError(absl::StrCat("the memfd holds ", length,
                                                   " bytes, fewer than the ",
                                                   size, " announced"));
  }
  return length;
}

absl::StatusOr<Mapping> Mapping::Map(int fd, size_t length, Access access,
                                     Pages pages) {
  if (length == 0) return absl::InvalidArgumentError("cannot map 0 bytes");
  int prot = PROT_READ;
  int flags = MAP_SHARED;
  if (access == Access::kCopyOnWrite) {
    prot |= PROT_WRITE;
    flags = MAP_PRIVATE;
  } else if (access == Access::kReadWrite) {
    prot |= PROT_WRITE;
  }
  if (pages == Pages::kAtOnce) flags |= MAP_POPULATE;
  void* data = mmap(nullptr, length, prot, flags, fd, 0);
  if (data == MAP_FAILED) {
    int error = errno;
    std::string message =
        absl::StrCat("cannot map ", length, " bytes: ", std::strerror(error));
    if (error == ENOMEM) return absl::ResourceExhaustedError(message);
    return absl::InvalidArgumentError(message);
  }
  return Mapping(data, length);
}

Mapping::Mapping(Mapping&& other) noexcept
    : data_(other.data_), length_(other.length_) {
  other.data_ = nullptr;
  other.length_ = 0;
}

Mapping& Mapping::operator=(Mapping&& other) noexcept {
  if (this != &other) {
    Reset();
    data_ = other.data_;
    length_ = other.length_;
    other.data_ = nullptr;
    other.length_ = 0;
  }
  return *this;
}

void Mapping::Reset() {
  if (data_ != nullptr) munmap(data_, length_);
  data_ = nullptr;
  length_ = 0;
}

void* Mapping::Release() {
  void* data = data_;
  data_ = nullptr;
  length_ = 0;
  return data;
}

}  // namespace h5depot::internal
