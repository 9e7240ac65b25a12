#include "atomic_file.h"

#include <fcntl.h>
#include <limits.h>
#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <vector>

#include "absl/strings/str_cat.h"

namespace h5depot::cli {
namespace {

// The temporary file to remove if a signal stops the process; read by the
// signal handler, so a plain NUL-terminated buffer.
char g_cleanup_path[PATH_MAX] = {0};
constexpr int kCleanupSignals[] = {SIGINT, SIGTERM, SIGHUP};

extern "C" void RemoveTempFileAndDie(int sig) {
  if (g_cleanup_path[0] != '\0') unlink(g_cleanup_path);
  signal(sig, SIG_DFL);
  raise(sig);
}

void ArmCleanup(const std::string& temp_path) {
  if (temp_path.size() >= sizeof(g_cleanup_path)) return;
  std::memcpy(g_cleanup_path, temp_path.c_str(), temp_path.size() + 1);
  for (int sig : kCleanupSignals) signal(sig, RemoveTempFileAndDie);
}

void DisarmCleanup() {
  for (int sig : kCleanupSignals) signal(sig, SIG_DFL);
  g_cleanup_path[0] = '\0';
}

absl::Status ErrnoError(const std::string& what, int error) {
  const std::string message = absl::StrCat(what, ": ", std::strerror(error));
  switch (error) {
    case ENOENT:
    case ENOTDIR:
      return absl::NotFoundError(message);
    case EACCES:
    case EPERM:
    case EROFS:
      return absl::PermissionDeniedError(message);
    case ENOSPC:
    case EDQUOT:
      return absl::ResourceExhaustedError(message);
    default:
      return absl::InternalError(message);
  }
}

mode_t NewFileMode() {
  const mode_t mask = umask(0);
  umask(mask);
  return 0666 & ~mask;
}

}  // namespace

absl::StatusOr<std::unique_ptr<AtomicFile>> AtomicFile::Create(
    const std::string& path) {
  const size_t slash = path.rfind('/');
  const std::string dir =
      slash == std::string::npos ? "." : path.substr(0, slash + 1);
  const std::string base =
      slash == std::string::npos ? path : path.substr(slash + 1);
  if (base.empty() || base == "." || base == "..") {
    return absl::InvalidArgumentError(
        absl::StrCat(path, " names a directory, not a file"));
  }
  std::string temp = absl::StrCat(slash == std::string::npos ? "" : dir, ".",
                                  base, ".h5depot-XXXXXX");
  std::vector<char> buffer(temp.begin(), temp.end());
  buffer.push_back('\0');
  const int fd = mkostemp(buffer.data(), O_CLOEXEC);
  if (fd < 0) {
    return ErrnoError(absl::StrCat("cannot create a file in ", dir), errno);
  }
  temp.assign(buffer.data());
  ArmCleanup(temp);
  return std::unique_ptr<AtomicFile>(new AtomicFile(path, temp, fd));
}

AtomicFile::AtomicFile(std::string path, std::string temp_path, int fd)
    : path_(std::move(path)), temp_path_(std::move(temp_path)), fd_(fd) {}

AtomicFile::~AtomicFile() {
  if (fd_ >= 0) close(fd_);
  if (!committed_) unlink(temp_path_.c_str());
  DisarmCleanup();
}

absl::Status AtomicFile::Write(const void* data, size_t size) {
  return WriteAll(fd_, data, size, absl::StrCat("cannot write ", path_));
}

absl::Status AtomicFile::Commit() {
  if (fchmod(fd_, NewFileMode()) != 0) {
    return ErrnoError(absl::StrCat("cannot set the mode of ", path_), errno);
  }
  const int fd = fd_;
  fd_ = -1;
  if (close(fd) != 0) {
    return ErrnoError(absl::StrCat("cannot write ", path_), errno);
  }
  if (rename(temp_path_.c_str(), path_.c_str()) != 0) {
    return ErrnoError(absl::StrCat("cannot create ", path_), errno);
  }
  committed_ = true;
  return absl::OkStatus();
}

absl::Status WriteAll(int fd, const void* data, size_t size,
                      const std::string& what) {
  const char* next = static_cast<const char*>(data);
  while (size > 0) {
    // Linux moves at most ~2 GiB per write(); larger calls just return short.
    const ssize_t written = write(fd, next, size);
    if (written < 0) {
      if (errno == EINTR) continue;
      return ErrnoError(what, errno);
    }
    next += written;
    size -= static_cast<size_t>(written);
  }
  return absl::OkStatus();
}

}  // namespace h5depot::cli
