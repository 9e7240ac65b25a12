#include <dirent.h>
#include <fcntl.h>
#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cinttypes>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <optional>
#include <string>
#include <unordered_set>
#include <utility>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_split.h"
#include "h5depot/internal/byte_size.h"
#include "h5depot/internal/checksum.h"
#include "server/src/snapshot_internal.h"

namespace h5depot::server {
namespace {

constexpr char kManifest[] = "MANIFEST";
constexpr char kImagesDir[] = "images";
constexpr char kTempSuffix[] = ".tmp";
constexpr absl::string_view kHeader = "h5depot-snapshot 1\n";

absl::Status SystemError(const char* what, const std::string& path) {
  return absl::InternalError(
      absl::StrCat(what, " ", path, ": ", std::strerror(errno)));
}

// The steps of a snapshot at which a test may make this process die as in
// a crash (SIGKILL): H5DEPOT_SNAPSHOT_FAILPOINT=STEP or STEP:N, for the
// Nth snapshot the process takes (1 if not given). For the crash tests of
// the snapshot's durability only; unset, nothing happens.
enum class Step { kBeforeData, kMidData, kBeforeManifest, kAfterManifest };

void MaybeCrashAt(Step step, uint64_t snapshot) {
  static const std::optional<std::pair<Step, uint64_t>> failpoint =
      []() -> std::optional<std::pair<Step, uint64_t>> {
    const char* text = std::getenv("H5DEPOT_SNAPSHOT_FAILPOINT");
    if (text == nullptr) return std::nullopt;
    std::vector<std::string> parts = absl::StrSplit(text, ':');
    uint64_t nth = 1;
    if (parts.size() == 2 && !absl::SimpleAtoi(parts[1], &nth)) {
      return std::nullopt;
    }
    static constexpr std::pair<absl::string_view, Step> kSteps[] = {
        {"before-data", Step::kBeforeData},
        {"mid-data", Step::kMidData},
        {"before-manifest", Step::kBeforeManifest},
        {"after-manifest", Step::kAfterManifest}};
    for (const auto& [name, value] : kSteps) {
      if (parts[0] == name) return std::make_pair(value, nth);
    }
    return std::nullopt;
  }();
  if (failpoint.has_value() && failpoint->first == step &&
      failpoint->second == snapshot) {
    raise(SIGKILL);
  }
}

absl::Status WriteAll(int fd, const uint8_t* data, uint64_t size,
                      const std::string& path) {
  uint64_t done = 0;
  while (done < size) {
    const size_t piece =
        static_cast<size_t>(std::min<uint64_t>(size - done, 64 << 20));
    const ssize_t wrote = write(fd, data + done, piece);
    if (wrote < 0) {
      if (errno == EINTR) continue;
      return SystemError("cannot write", path);
    }
    done += static_cast<uint64_t>(wrote);
  }
  return absl::OkStatus();
}

// Writes `size` bytes at `data` to `path` durably: to path.tmp, fsynced,
// closed, renamed. The caller fsyncs the directory. On an error the
// temporary file is removed. `halfway` runs once half the bytes are
// written (the mid-data failpoint).
absl::Status WriteFileDurably(const std::string& path, const uint8_t* data,
                              uint64_t size,
                              const std::function<void()>& halfway) {
  const std::string temp = path + kTempSuffix;
  const int fd =
      open(temp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
  if (fd < 0) return SystemError("cannot create", temp);
  absl::Status status = WriteAll(fd, data, size / 2, temp);
  if (status.ok() && halfway) halfway();
  if (status.ok()) {
    status = WriteAll(fd, data + size / 2, size - size / 2, temp);
  }
  // An fsync error means the bytes may not be on disk, and the page cache
  // may already have dropped them: that snapshot fails, and is not retried
  // on the same file.
  if (status.ok() && fsync(fd) != 0) status = SystemError("cannot fsync", temp);
  if (close(fd) != 0 && status.ok()) status = SystemError("cannot close", temp);
  if (status.ok() && rename(temp.c_str(), path.c_str()) != 0) {
    status = SystemError("cannot rename into place", temp);
  }
  if (!status.ok()) unlink(temp.c_str());
  return status;
}

// Makes the entries of directory `path` (renames, creations) durable.
absl::Status FsyncDirectory(const std::string& path) {
  const int fd = open(path.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) return SystemError("cannot open", path);
  absl::Status status;
  if (fsync(fd) != 0) status = SystemError("cannot fsync", path);
  close(fd);
  return status;
}

std::string ImageFileName(uint64_t generation) {
  return absl::StrCat(generation, ".img");
}

// One image as the manifest lists it.
struct ManifestEntry {
  uint64_t generation = 0;
  uint64_t size = 0;
  uint64_t checksum = 0;
  int64_t created_micros = 0;
  int64_t expires_micros = 0;  // 0: never
  std::string image_id;
};

std::string ManifestText(const std::vector<ManifestEntry>& entries) {
  std::string text(kHeader.data(), kHeader.size());
  for (const ManifestEntry& entry : entries) {
    absl::StrAppendFormat(&text, "image %d %d %016x %d %d %s\n",
                          entry.generation, entry.size, entry.checksum,
                          entry.created_micros, entry.expires_micros,
                          entry.image_id);
  }
  absl::StrAppendFormat(&text, "end %d %016x\n", entries.size(),
                        internal::Checksum(text.data(), text.size()));
  return text;
}

// The entries of a manifest; DATA_LOSS naming `path` unless it is whole.
absl::StatusOr<std::vector<ManifestEntry>> ParseManifest(
    absl::string_view text, const std::string& path) {
  const auto damaged = [&path](const std::string& why) {
    return absl::DataLossError(
        absl::StrCat(path, " is not a complete snapshot (", why,
                     "); move the directory away to start without it"));
  };
  if (text.substr(0, kHeader.size()) != kHeader) {
    return damaged("it does not begin as a snapshot manifest of this version");
  }
  const size_t end_line = text.rfind("end ");
  if (end_line == absl::string_view::npos || text.back() != '\n') {
    return damaged("its end line is missing");
  }
  std::vector<absl::string_view> end =
      absl::StrSplit(text.substr(end_line, text.size() - end_line - 1), ' ');
  uint64_t count = 0;
  uint64_t checksum = 0;
  if (end.size() != 3 || !absl::SimpleAtoi(end[1], &count) ||
      !absl::SimpleHexAtoi(end[2], &checksum) ||
      checksum != internal::Checksum(text.data(), end_line)) {
    return damaged("its checksum does not match");
  }
  std::vector<ManifestEntry> entries;
  for (absl::string_view line :
       absl::StrSplit(text.substr(kHeader.size(), end_line - kHeader.size()),
                      '\n', absl::SkipEmpty())) {
    std::vector<absl::string_view> fields = absl::StrSplit(line, ' ');
    ManifestEntry entry;
    if (fields.size() != 7 || fields[0] != "image" ||
        !absl::SimpleAtoi(fields[1], &entry.generation) ||
        !absl::SimpleAtoi(fields[2], &entry.size) ||
        !absl::SimpleHexAtoi(fields[3], &entry.checksum) ||
        !absl::SimpleAtoi(fields[4], &entry.created_micros) ||
        !absl::SimpleAtoi(fields[5], &entry.expires_micros)) {
      return damaged(absl::StrCat("a malformed line: ", std::string(line)));
    }
    entry.image_id = std::string(fields[6]);
    entries.push_back(std::move(entry));
  }
  if (entries.size() != count) return damaged("its count does not match");
  return entries;
}

absl::StatusOr<std::string> ReadWholeFile(const std::string& path) {
  const int fd = open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return SystemError("cannot open", path);
  std::string text;
  char buffer[1 << 16];
  while (true) {
    const ssize_t got = read(fd, buffer, sizeof(buffer));
    if (got < 0 && errno == EINTR) continue;
    if (got < 0) {
      const absl::Status error = SystemError("cannot read", path);
      close(fd);
      return error;
    }
    if (got == 0) break;
    text.append(buffer, static_cast<size_t>(got));
  }
  close(fd);
  return text;
}

// Loads the image of `entry` from `path` into `store` with its identity.
absl::Status RestoreImage(ImageStore& store, const ManifestEntry& entry,
                          const std::string& path) {
  const int fd = open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return SystemError("cannot open", path);
  struct stat info;
  if (fstat(fd, &info) != 0 ||
      static_cast<uint64_t>(info.st_size) != entry.size) {
    close(fd);
    return absl::DataLossError(absl::StrCat(
        path, " does not hold the ", entry.size, " bytes the manifest names"));
  }
  PushRequest request;
  request.image_id = entry.image_id;
  request.size = entry.size;
  request.checksum = entry.checksum;
  request.restored.emplace();
  request.restored->generation = entry.generation;
  request.restored->created = absl::FromUnixMicros(entry.created_micros);
  if (entry.expires_micros != 0) {
    request.restored->expires = absl::FromUnixMicros(entry.expires_micros);
  }
  absl::StatusOr<std::unique_ptr<PendingImage>> pending =
      store.BeginPush(std::move(request));
  if (!pending.ok()) {
    close(fd);
    return pending.status();
  }
  absl::Status status;
  while (status.ok() && (*pending)->received() < entry.size) {
    const uint64_t left = entry.size - (*pending)->received();
    const ssize_t got =
        read(fd, (*pending)->Unreceived(),
             static_cast<size_t>(std::min<uint64_t>(left, 64 << 20)));
    if (got < 0 && errno == EINTR) continue;
    if (got <= 0) {
      status = got < 0
                   ? SystemError("cannot read", path)
                   : absl::DataLossError(absl::StrCat(path, " ended early"));
      break;
    }
    status = (*pending)->CommitReceived(static_cast<size_t>(got));
  }
  close(fd);
  if (!status.ok()) return status;
  return (*pending)->Publish().status();
}

}  // namespace

absl::StatusOr<std::unique_ptr<SnapshotDirectory>> SnapshotDirectory::Open(
    std::string path, Log log) {
  if (path.empty()) {
    return absl::InvalidArgumentError("the snapshot directory is empty");
  }
  for (const std::string& dir : {path, path + "/" + kImagesDir}) {
    if (mkdir(dir.c_str(), 0700) != 0 && errno != EEXIST) {
      return SystemError("cannot create the snapshot directory", dir);
    }
  }
  return std::unique_ptr<SnapshotDirectory>(
      new SnapshotDirectory(std::move(path), std::move(log)));
}

absl::StatusOr<RestoreReport> SnapshotDirectory::Restore(ImageStore& store) {
  const absl::Time began = absl::Now();
  RestoreReport report;
  const std::string manifest_path = absl::StrCat(path_, "/", kManifest);
  if (access(manifest_path.c_str(), F_OK) != 0 && errno == ENOENT) {
    RemoveUnreferenced({});
    return report;  // no snapshot yet
  }
  absl::StatusOr<std::string> text = ReadWholeFile(manifest_path);
  if (!text.ok()) return text.status();
  report.found = true;
  absl::StatusOr<std::vector<ManifestEntry>> entries =
      ParseManifest(*text, manifest_path);
  if (!entries.ok()) return entries.status();
  const absl::Time now = store.options().clock();
  std::vector<std::string> referenced;
  for (const ManifestEntry& entry : *entries) {
    const std::string file = ImageFileName(entry.generation);
    referenced.push_back(file);
    if (entry.expires_micros != 0 &&
        absl::FromUnixMicros(entry.expires_micros) <= now) {
      ++report.expired;
      continue;
    }
    const absl::Status restored = RestoreImage(
        store, entry, absl::StrCat(path_, "/", kImagesDir, "/", file));
    if (!restored.ok()) {
      ++report.refused;
      log_(absl::StrCat("snapshot: image '", entry.image_id, "' (generation ",
                        entry.generation,
                        ") not restored: ", restored.message()));
      continue;
    }
    ++report.images;
    report.bytes += entry.size;
  }
  RemoveUnreferenced(referenced);
  report.took = absl::Now() - began;
  return report;
}

absl::StatusOr<SnapshotReport> SnapshotDirectory::Write(
    const ImageStore& store) {
  absl::MutexLock lock(&mutex_);
  const uint64_t snapshot = ++snapshots_begun_;
  const absl::Time began = absl::Now();
  SnapshotReport report;
  // Held until the snapshot is written: replaced or deleted meanwhile,
  // each stays readable.
  const std::vector<ImageRef> images =
      store.List("", std::numeric_limits<size_t>::max(), "").images;
  const std::string images_dir = absl::StrCat(path_, "/", kImagesDir);
  std::vector<ManifestEntry> entries;
  std::vector<std::string> referenced;
  entries.reserve(images.size());
  MaybeCrashAt(Step::kBeforeData, snapshot);
  bool first_written = true;
  for (const ImageRef& image : images) {
    const std::string file = ImageFileName(image->generation());
    const std::string path = absl::StrCat(images_dir, "/", file);
    struct stat existing;
    // A file of this generation from an earlier snapshot is whole: it was
    // renamed into place only once fsynced.
    if (stat(path.c_str(), &existing) != 0 ||
        static_cast<uint64_t>(existing.st_size) != image->size()) {
      const std::function<void()> halfway =
          first_written ? std::function<void()>([snapshot] {
            MaybeCrashAt(Step::kMidData, snapshot);
          })
                        : nullptr;
      first_written = false;
      if (absl::Status written =
              WriteFileDurably(path, image->data(), image->size(), halfway);
          !written.ok()) {
        return written;
      }
      ++report.files_written;
      report.bytes_written += image->size();
    }
    ManifestEntry entry;
    entry.generation = image->generation();
    entry.size = image->size();
    entry.checksum = image->checksum();
    entry.created_micros = absl::ToUnixMicros(image->created());
    entry.expires_micros = image->expires() == absl::InfiniteFuture()
                               ? 0
                               : absl::ToUnixMicros(image->expires());
    entry.image_id = image->image_id();
    entries.push_back(std::move(entry));
    referenced.push_back(file);
    report.bytes += image->size();
  }
  report.images = entries.size();
  if (absl::Status synced = FsyncDirectory(images_dir); !synced.ok()) {
    return synced;
  }
  const std::string text = ManifestText(entries);
  const std::string manifest_path = absl::StrCat(path_, "/", kManifest);
  if (absl::Status written = WriteFileDurably(
          manifest_path, reinterpret_cast<const uint8_t*>(text.data()),
          text.size(),
          [snapshot] { MaybeCrashAt(Step::kBeforeManifest, snapshot); });
      !written.ok()) {
    return written;
  }
  if (absl::Status synced = FsyncDirectory(path_); !synced.ok()) {
    return synced;
  }
  MaybeCrashAt(Step::kAfterManifest, snapshot);
  RemoveUnreferenced(referenced);
  report.took = absl::Now() - began;
  return report;
}

void SnapshotDirectory::RemoveUnreferenced(
    const std::vector<std::string>& referenced) {
  const std::unordered_set<std::string> keep(referenced.begin(),
                                             referenced.end());
  const std::string images_dir = absl::StrCat(path_, "/", kImagesDir);
  if (DIR* dir = opendir(images_dir.c_str()); dir != nullptr) {
    while (const dirent* entry = readdir(dir)) {
      const std::string name = entry->d_name;
      if (name == "." || name == ".." || keep.count(name) > 0) continue;
      unlink(absl::StrCat(images_dir, "/", name).c_str());
    }
    closedir(dir);
  }
  unlink(absl::StrCat(path_, "/", kManifest, kTempSuffix).c_str());
}

}  // namespace h5depot::server
