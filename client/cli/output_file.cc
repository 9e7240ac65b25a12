#include "output_file.h"

#include <fcntl.h>
#include <limits.h>
#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdint>
#include <cstring>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"

namespace h5depot::cli {
namespace {

// As many symlinks as Linux follows in one path before it reports ELOOP.
constexpr int kMaxSymlinkHops = 40;

// The temporary file to remove if a signal stops the process; read by the
// signal handler, so a plain NUL-terminated buffer.
char g_cleanup_path[PATH_MAX] = {0};
constexpr int kCleanupSignals[] = {SIGINT, SIGTERM, SIGHUP};

extern "C" void RemoveTempFileAndDie(int sig) {
  if (g_cleanup_path[0] != '\0') unlink(g_cleanup_path);
  signal(sig, SIG_DFL);
  raise(sig);
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

// `path` up to and including its last '/'; empty for a bare file name.
std::string DirectoryPart(const std::string& path) {
  const size_t slash = path.rfind('/');
  return slash == std::string::npos ? "" : path.substr(0, slash + 1);
}

std::string BasePart(const std::string& path) {
  const size_t slash = path.rfind('/');
  return slash == std::string::npos ? path : path.substr(slash + 1);
}

bool SameFile(const struct stat& a, const struct stat& b) {
  return a.st_dev == b.st_dev && a.st_ino == b.st_ino;
}

// The path that `path` leads to once symlinks in its last component are
// followed, whether or not the file at the end exists. Symlinks among the
// directories on the way need no resolving: the temporary file is created
// and renamed through the same directory path.
absl::StatusOr<std::string> FollowSymlinks(std::string path) {
  for (int hop = 0; hop < kMaxSymlinkHops; ++hop) {
    char target[PATH_MAX];
    const ssize_t size = readlink(path.c_str(), target, sizeof(target));
    if (size < 0) {
      if (errno == EINVAL || errno == ENOENT) return path;  // not a link
      return ErrnoError(absl::StrCat("cannot write to ", path), errno);
    }
    if (static_cast<size_t>(size) == sizeof(target)) {
      return ErrnoError(absl::StrCat("cannot follow the link ", path),
                        ENAMETOOLONG);
    }
    std::string link(target, static_cast<size_t>(size));
    path = link.front() == '/' ? link : absl::StrCat(DirectoryPart(path), link);
  }
  return ErrnoError(absl::StrCat("cannot follow the link ", path), ELOOP);
}

// All or nothing: see OutputFile::Open.
class ReplacingFile : public OutputFile {
 public:
  // `path` is the file to replace (no symlink), existing or not.
  static absl::StatusOr<std::unique_ptr<OutputFile>> Create(
      const std::string& path, bool sync) {
    const std::string dir = DirectoryPart(path);
    const std::string base = BasePart(path);
    if (base.empty() || base == "." || base == "..") {
      return absl::InvalidArgumentError(
          absl::StrCat(path, " names a directory, not a file"));
    }
    std::string temp = absl::StrCat(dir, ".", base, ".h5depot-XXXXXX");
    if (temp.size() >= sizeof(g_cleanup_path)) {
      return ErrnoError(absl::StrCat("cannot write to ", path), ENAMETOOLONG);
    }
    // Signals wait until the cleanup knows the file's name, so that none
    // can leave it behind between its creation and the handlers' arming.
    sigset_t blocked;
    sigset_t previous;
    sigemptyset(&blocked);
    for (int sig : kCleanupSignals) sigaddset(&blocked, sig);
    pthread_sigmask(SIG_BLOCK, &blocked, &previous);
    std::vector<char> name(temp.begin(), temp.end());
    name.push_back('\0');
    const int fd = mkostemp(name.data(), O_CLOEXEC);
    const int error = errno;
    if (fd >= 0) {
      std::memcpy(g_cleanup_path, name.data(), name.size());
      for (int sig : kCleanupSignals) signal(sig, RemoveTempFileAndDie);
    }
    pthread_sigmask(SIG_SETMASK, &previous, nullptr);
    if (fd < 0) {
      return ErrnoError(
          absl::StrCat("cannot create a file in ", dir.empty() ? "." : dir),
          error);
    }
    temp.assign(name.data());
    // A rename over an existing file makes ext4 (auto_da_alloc) write the
    // new file back before the rename returns; a synced file is written
    // back anyway. Either way the writeback is better started as the bytes
    // arrive, beside the transfer, than all at once at the end.
    struct stat old;
    const bool write_back_early =
        sync || (lstat(path.c_str(), &old) == 0 && S_ISREG(old.st_mode));
    return std::unique_ptr<OutputFile>(new ReplacingFile(
        path, dir, std::move(temp), fd, sync, write_back_early));
  }

  ~ReplacingFile() override {
    if (fd_ >= 0) close(fd_);
    if (!committed_) unlink(temp_path_.c_str());
    DisarmCleanup();
  }

  absl::Status Write(const void* data, size_t size) override {
    absl::Status written =
        WriteAll(fd_, data, size, absl::StrCat("cannot write ", path_));
    if (!written.ok()) return written;
    written_ += size;
    if (write_back_early_ && written_ - started_ >= kWriteBackStep) {
      // Only starts the writeback; a failure of it shows where it would
      // have without this call (at fsync, if asked for).
      (void)sync_file_range(fd_, static_cast<off_t>(started_),
                            static_cast<off_t>(written_ - started_),
                            SYNC_FILE_RANGE_WRITE);
      started_ = written_;
    }
    return absl::OkStatus();
  }

  absl::Status Commit() override {
    if (absl::Status kept = TakeOverAttributes(); !kept.ok()) return kept;
    // Synced before the rename, so that after a crash the name holds either
    // the old file or the complete new one, never an empty or partial one.
    if (sync_ && fsync(fd_) != 0) {
      return ErrnoError(absl::StrCat("cannot write ", path_), errno);
    }
    const int fd = std::exchange(fd_, -1);
    if (close(fd) != 0) {
      return ErrnoError(absl::StrCat("cannot write ", path_), errno);
    }
    if (rename(temp_path_.c_str(), path_.c_str()) != 0) {
      return ErrnoError(absl::StrCat("cannot create ", path_), errno);
    }
    committed_ = true;
    return sync_ ? SyncDirectory() : absl::OkStatus();
  }

 private:
  // How much is written before its writeback is started, when it is
  // started early: large enough that the requests are large.
  static constexpr uint64_t kWriteBackStep = uint64_t{8} << 20;

  ReplacingFile(std::string path, std::string dir, std::string temp_path,
                int fd, bool sync, bool write_back_early)
      : path_(std::move(path)),
        dir_(dir.empty() ? "." : std::move(dir)),
        temp_path_(std::move(temp_path)),
        fd_(fd),
        sync_(sync),
        write_back_early_(write_back_early) {}

  // Gives the temporary file the mode, owner and group of the file it
  // replaces, or a new file's mode. Looked up now rather than at Create()
  // so that a change made during the fetch is kept too.
  absl::Status TakeOverAttributes() {
    struct stat old;
    if (lstat(path_.c_str(), &old) != 0) {
      if (errno != ENOENT) {
        return ErrnoError(absl::StrCat("cannot replace ", path_), errno);
      }
      if (fchmod(fd_, NewFileMode()) != 0) {
        return ErrnoError(absl::StrCat("cannot set the mode of ", path_),
                          errno);
      }
      return absl::OkStatus();
    }
    if (!S_ISREG(old.st_mode)) {
      return absl::FailedPreconditionError(absl::StrCat(
          path_, " is no longer a regular file; not replacing it"));
    }
    // Only root may give a file away, and only members may pass on a group:
    // keep what this process may keep.
    if (fchown(fd_, old.st_uid, old.st_gid) != 0) {
      if (errno != EPERM) {
        return ErrnoError(absl::StrCat("cannot set the owner of ", path_),
                          errno);
      }
      if (fchown(fd_, static_cast<uid_t>(-1), old.st_gid) != 0 &&
          errno != EPERM) {
        return ErrnoError(absl::StrCat("cannot set the group of ", path_),
                          errno);
      }
    }
    // After fchown, which clears the set-user-ID and set-group-ID bits.
    if (fchmod(fd_, old.st_mode & 07777) != 0) {
      return ErrnoError(absl::StrCat("cannot set the mode of ", path_), errno);
    }
    return absl::OkStatus();
  }

  // Makes the rename itself durable.
  absl::Status SyncDirectory() {
    const int dir_fd = open(dir_.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dir_fd < 0) {
      return ErrnoError(absl::StrCat("cannot sync ", dir_), errno);
    }
    // EINVAL: a file system that cannot sync directories has nothing to do.
    const int synced = fsync(dir_fd) == 0 || errno == EINVAL ? 0 : errno;
    close(dir_fd);
    if (synced != 0) {
      return ErrnoError(absl::StrCat("cannot sync ", dir_), synced);
    }
    return absl::OkStatus();
  }

  const std::string path_;
  const std::string dir_;
  const std::string temp_path_;
  int fd_;
  const bool sync_;
  const bool write_back_early_;
  uint64_t written_ = 0;  // bytes written so far
  uint64_t started_ = 0;  // of those, the bytes whose writeback was started
  bool committed_ = false;
};

// Into the existing object: see OutputFile::Open.
class WriteThroughFile : public OutputFile {
 public:
  // Opens `path`, which must exist; it is never created. `truncate` is for
  // a regular file, the only kind that has a length to cut.
  static absl::StatusOr<std::unique_ptr<OutputFile>> Open(
      const std::string& path, bool truncate, bool sync) {
    const int fd = open(path.c_str(), O_WRONLY | O_NOCTTY | O_CLOEXEC |
                                          (truncate ? O_TRUNC : 0));
    if (fd < 0) {
      return ErrnoError(absl::StrCat("cannot write to ", path), errno);
    }
    struct stat st;
    if (fstat(fd, &st) != 0) {
      const int error = errno;
      close(fd);
      return ErrnoError(absl::StrCat("cannot write to ", path), error);
    }
    if (S_ISREG(st.st_mode) && !truncate) {
      // It became a regular file since it was looked at; writing into it
      // untruncated could leave old bytes behind.
      close(fd);
      return absl::FailedPreconditionError(
          absl::StrCat(path, " changed while being opened; try again"));
    }
    // Only these keep written data in a cache that fsync() flushes; on
    // character devices and FIFOs it fails with EINVAL.
    return std::unique_ptr<OutputFile>(new WriteThroughFile(
        path, fd, sync && (S_ISREG(st.st_mode) || S_ISBLK(st.st_mode))));
  }

  ~WriteThroughFile() override {
    if (fd_ >= 0) close(fd_);
  }

  absl::Status Write(const void* data, size_t size) override {
    return WriteAll(fd_, data, size, absl::StrCat("cannot write ", path_));
  }

  absl::Status Commit() override {
    if (sync_ && fsync(fd_) != 0) {
      return ErrnoError(absl::StrCat("cannot write ", path_), errno);
    }
    if (close(std::exchange(fd_, -1)) != 0) {
      return ErrnoError(absl::StrCat("cannot write ", path_), errno);
    }
    return absl::OkStatus();
  }

 private:
  WriteThroughFile(std::string path, int fd, bool sync)
      : path_(std::move(path)), fd_(fd), sync_(sync) {}

  const std::string path_;
  int fd_;
  const bool sync_;
};

}  // namespace

absl::StatusOr<std::unique_ptr<OutputFile>> OutputFile::Open(
    const std::string& path, bool sync) {
  if (path.empty()) return absl::InvalidArgumentError("no output file named");
  struct stat st;
  const bool exists = stat(path.c_str(), &st) == 0;
  if (!exists && errno != ENOENT) {
    return ErrnoError(absl::StrCat("cannot write to ", path), errno);
  }
  if (exists && S_ISDIR(st.st_mode)) {
    return absl::InvalidArgumentError(
        absl::StrCat(path, " is a directory, not a file"));
  }
  if (exists && !S_ISREG(st.st_mode)) {
    return WriteThroughFile::Open(path, /*truncate=*/false, sync);
  }
  absl::StatusOr<std::string> resolved = FollowSymlinks(path);
  if (!resolved.ok()) return resolved.status();
  struct stat at_resolved;
  if (exists && (lstat(resolved->c_str(), &at_resolved) != 0 ||
                 !SameFile(st, at_resolved))) {
    // A link whose text does not name its file, such as /dev/stdout or
    // /proc/PID/fd/N for a file that was deleted or lives in another mount
    // namespace: the original path is the only way to it.
    return WriteThroughFile::Open(path, /*truncate=*/true, sync);
  }
  return ReplacingFile::Create(*resolved, sync);
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
