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
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "h5depot/internal/byte_size.h"
#include "h5depot/internal/checksum.h"
#include "h5depot/internal/image_id.h"
#include "server/src/snapshot_internal.h"
#include "server/src/stream_table_internal.h"

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

// A file written durably: created as path.tmp, written, then fsynced,
// closed and renamed into place by Finish (the caller fsyncs the
// directory). Destroyed unfinished, the temporary file is removed. Movable.
class DurableFile {
 public:
  static absl::StatusOr<DurableFile> Create(std::string path) {
    std::string temp = path + kTempSuffix;
    const int fd =
        ::open(temp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (fd < 0) return SystemError("cannot create", temp);
    return DurableFile(fd, std::move(path), std::move(temp));
  }

  DurableFile() = default;  // none
  DurableFile(DurableFile&& other) noexcept
      : fd_(std::exchange(other.fd_, -1)),
        path_(std::move(other.path_)),
        temp_(std::move(other.temp_)) {}
  DurableFile& operator=(DurableFile&& other) noexcept {
    if (this != &other) {
      Abandon();
      fd_ = std::exchange(other.fd_, -1);
      path_ = std::move(other.path_);
      temp_ = std::move(other.temp_);
    }
    return *this;
  }
  ~DurableFile() { Abandon(); }

  absl::Status Write(const uint8_t* data, uint64_t size) {
    return WriteAll(fd_, data, size, temp_);
  }

  // Starts writing the file's pages to the disk without waiting, so that
  // they go out while the next file is written, and Finish waits less.
  void StartWriteback() { sync_file_range(fd_, 0, 0, SYNC_FILE_RANGE_WRITE); }

  // An fsync error means the bytes may not be on disk, and the page cache
  // may already have dropped them: the snapshot fails, and is not retried
  // on the same file. On an error the temporary file is removed.
  absl::Status Finish() {
    absl::Status status;
    if (fsync(fd_) != 0) status = SystemError("cannot fsync", temp_);
    if (close(std::exchange(fd_, -1)) != 0 && status.ok()) {
      status = SystemError("cannot close", temp_);
    }
    if (status.ok() && rename(temp_.c_str(), path_.c_str()) != 0) {
      status = SystemError("cannot rename into place", temp_);
    }
    if (!status.ok()) unlink(temp_.c_str());
    return status;
  }

 private:
  DurableFile(int fd, std::string path, std::string temp)
      : fd_(fd), path_(std::move(path)), temp_(std::move(temp)) {}

  void Abandon() {
    if (fd_ >= 0) {
      close(std::exchange(fd_, -1));
      unlink(temp_.c_str());
    }
  }

  int fd_ = -1;
  std::string path_;
  std::string temp_;
};

// Writes `size` bytes at `data` to a new DurableFile at `path`, running
// `halfway` (a failpoint) once half of them are written.
absl::StatusOr<DurableFile> WriteDurableFile(
    const std::string& path, const uint8_t* data, uint64_t size,
    const std::function<void()>& halfway) {
  absl::StatusOr<DurableFile> file = DurableFile::Create(path);
  if (!file.ok()) return file.status();
  if (absl::Status written = file->Write(data, size / 2); !written.ok()) {
    return written;
  }
  if (halfway) halfway();
  if (absl::Status written = file->Write(data + size / 2, size - size / 2);
      !written.ok()) {
    return written;
  }
  return file;
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

// An image's file: named by its generation and a hash of its id, since
// two images may hold generations with one number (a replica's copy keeps
// its primary's). Each file is also checked against the manifest's size
// and checksum when restored.
std::string ImageFileName(uint64_t generation, std::string_view image_id) {
  return absl::StrCat(
      generation, "-",
      absl::Hex(internal::Checksum(image_id.data(), image_id.size()),
                absl::kZeroPad16),
      ".img");
}

// The name snapshots written before that had: the generation alone.
std::string LegacyImageFileName(uint64_t generation) {
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

// A stream as the manifest lists it: its record (no image references)
// and its steps, each an entry whose image_id is the stream's name.
struct StreamEntry {
  StreamRecord record;
  std::vector<std::pair<uint64_t, ManifestEntry>> steps;
};

// The manifest: the images, then the streams. The end line counts the
// images alone (as before streams were kept); its checksum covers all.
struct Manifest {
  std::vector<ManifestEntry> images;
  std::vector<StreamEntry> streams;
};

std::string StepList(const std::vector<uint64_t>& steps) {
  return steps.empty() ? "-" : absl::StrJoin(steps, ",");
}

bool ParseStepList(absl::string_view text, std::vector<uint64_t>* steps) {
  if (text == "-") return true;
  for (absl::string_view item : absl::StrSplit(text, ',')) {
    uint64_t step = 0;
    if (!absl::SimpleAtoi(item, &step)) return false;
    steps->push_back(step);
  }
  return true;
}

std::string ManifestText(const Manifest& manifest) {
  std::string text(kHeader.data(), kHeader.size());
  for (const ManifestEntry& entry : manifest.images) {
    absl::StrAppendFormat(&text, "image %d %d %016x %d %d %s\n",
                          entry.generation, entry.size, entry.checksum,
                          entry.created_micros, entry.expires_micros,
                          entry.image_id);
  }
  for (const StreamEntry& stream : manifest.streams) {
    const StreamRecord& record = stream.record;
    absl::StrAppendFormat(
        &text, "stream %s %d %d %d %d %d %d %d\n", record.name,
        record.finished ? 1 : 0, record.appended, record.policy.max_steps,
        record.policy.max_bytes, static_cast<int>(record.policy.when_full),
        record.policy.reserve_steps, record.policy.keep_first_step ? 1 : 0);
    for (const auto& [step, entry] : stream.steps) {
      absl::StrAppendFormat(&text, "step %s %d %d %d %016x %d\n", record.name,
                            step, entry.generation, entry.size, entry.checksum,
                            entry.created_micros);
    }
    for (const StreamRecord::GroupRecord& group : record.groups) {
      absl::StrAppendFormat(&text, "group %s %s %d %d %s %s\n", record.name,
                            group.name, group.next_step, group.acked_below,
                            StepList(group.acked_above),
                            StepList(group.hand_again));
    }
  }
  absl::StrAppendFormat(&text, "end %d %016x\n", manifest.images.size(),
                        internal::Checksum(text.data(), text.size()));
  return text;
}

// A manifest's "stream", "step" or "group" line into `streams` (a step or
// group line follows its stream's line); false if it is malformed.
bool ParseStreamLine(const std::vector<absl::string_view>& fields,
                     std::vector<StreamEntry>* streams) {
  if (fields[0] == "stream") {
    StreamEntry stream;
    StreamRecord& record = stream.record;
    int when_full = 0;
    int finished = 0;
    int keep_first = 0;
    if (fields.size() != 9 || !absl::SimpleAtoi(fields[2], &finished) ||
        !absl::SimpleAtoi(fields[3], &record.appended) ||
        !absl::SimpleAtoi(fields[4], &record.policy.max_steps) ||
        !absl::SimpleAtoi(fields[5], &record.policy.max_bytes) ||
        !absl::SimpleAtoi(fields[6], &when_full) || when_full < 0 ||
        when_full > 2 ||
        !absl::SimpleAtoi(fields[7], &record.policy.reserve_steps) ||
        !absl::SimpleAtoi(fields[8], &keep_first)) {
      return false;
    }
    record.name = std::string(fields[1]);
    record.created = true;
    record.finished = finished != 0;
    record.policy.when_full = static_cast<StreamPolicy::WhenFull>(when_full);
    record.policy.keep_first_step = keep_first != 0;
    streams->push_back(std::move(stream));
    return true;
  }
  if (streams->empty() || fields.size() < 2 ||
      fields[1] != streams->back().record.name) {
    return false;
  }
  StreamEntry& stream = streams->back();
  if (fields[0] == "step") {
    uint64_t step = 0;
    ManifestEntry entry;
    if (fields.size() != 7 || !absl::SimpleAtoi(fields[2], &step) ||
        !absl::SimpleAtoi(fields[3], &entry.generation) ||
        !absl::SimpleAtoi(fields[4], &entry.size) ||
        !absl::SimpleHexAtoi(fields[5], &entry.checksum) ||
        !absl::SimpleAtoi(fields[6], &entry.created_micros)) {
      return false;
    }
    entry.image_id = stream.record.name;
    stream.steps.emplace_back(step, std::move(entry));
    return true;
  }
  if (fields[0] == "group") {
    StreamRecord::GroupRecord group;
    if (fields.size() != 7 || !absl::SimpleAtoi(fields[3], &group.next_step) ||
        !absl::SimpleAtoi(fields[4], &group.acked_below) ||
        !ParseStepList(fields[5], &group.acked_above) ||
        !ParseStepList(fields[6], &group.hand_again)) {
      return false;
    }
    group.name = std::string(fields[2]);
    stream.record.groups.push_back(std::move(group));
    return true;
  }
  return false;
}

// The entries of a manifest; DATA_LOSS naming `path` unless it is whole.
absl::StatusOr<Manifest> ParseManifest(absl::string_view text,
                                       const std::string& path) {
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
  Manifest manifest;
  std::vector<ManifestEntry>& entries = manifest.images;
  for (absl::string_view line :
       absl::StrSplit(text.substr(kHeader.size(), end_line - kHeader.size()),
                      '\n', absl::SkipEmpty())) {
    std::vector<absl::string_view> fields = absl::StrSplit(line, ' ');
    if (!fields.empty() && fields[0] != "image") {
      if (!ParseStreamLine(fields, &manifest.streams)) {
        return damaged(absl::StrCat("a malformed line: ", std::string(line)));
      }
      continue;
    }
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
  return manifest;
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
// With `step`, the entry is that step of the stream entry.image_id names.
absl::Status RestoreImage(ImageStore& store, const ManifestEntry& entry,
                          const std::string& path,
                          std::optional<uint64_t> step = std::nullopt) {
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
  PushRequest::Restored restored;
  restored.generation = entry.generation;
  restored.created = absl::FromUnixMicros(entry.created_micros);
  if (entry.expires_micros != 0) {
    restored.expires = absl::FromUnixMicros(entry.expires_micros);
  }
  if (step.has_value()) {
    request.stream_append = true;
    restored.step = *step;
  }
  request.restored = restored;
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
  absl::StatusOr<Manifest> manifest = ParseManifest(*text, manifest_path);
  if (!manifest.ok()) return manifest.status();
  const absl::Time now = store.options().clock();
  std::vector<std::string> referenced;
  for (const ManifestEntry& entry : manifest->images) {
    std::string file = ImageFileName(entry.generation, entry.image_id);
    const std::string images_dir = absl::StrCat(path_, "/", kImagesDir, "/");
    if (access((images_dir + file).c_str(), F_OK) != 0 &&
        access((images_dir + LegacyImageFileName(entry.generation)).c_str(),
               F_OK) == 0) {
      file = LegacyImageFileName(entry.generation);
    }
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
  for (const StreamEntry& stream : manifest->streams) {
    store.streams().Restore(stream.record);
    std::vector<uint64_t> lost;
    for (const auto& [step, entry] : stream.steps) {
      const std::string file = ImageFileName(
          entry.generation, internal::StreamStepId(entry.image_id, step));
      referenced.push_back(file);
      const absl::Status restored = RestoreImage(
          store, entry, absl::StrCat(path_, "/", kImagesDir, "/", file), step);
      if (!restored.ok()) {
        ++report.refused;
        lost.push_back(step);
        log_(absl::StrCat("snapshot: step ", step, " of stream '",
                          entry.image_id,
                          "' not restored: ", restored.message()));
        continue;
      }
      ++report.steps;
      report.bytes += entry.size;
    }
    // Its groups are told, as of a discarded step.
    store.streams().LoseSteps(stream.record.name, lost);
    ++report.streams;
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
  // Files are written with their writeback started at once, and finished
  // (fsynced, renamed) in batches, most of their pages on the disk by
  // then: the disk writes while this thread copies, as with one large
  // file, and a batch's fsyncs find little left to wait for. A batch is
  // bounded in files (descriptors) and bytes (dirty pages).
  constexpr size_t kBatchFiles = 64;
  constexpr uint64_t kBatchBytes = uint64_t{2} << 30;
  std::vector<DurableFile> batch;
  uint64_t batch_bytes = 0;
  const auto finish_batch = [&batch, &batch_bytes]() -> absl::Status {
    for (DurableFile& file : batch) {
      if (absl::Status finished = file.Finish(); !finished.ok()) {
        return finished;  // the rest are removed with `batch`
      }
    }
    batch.clear();
    batch_bytes = 0;
    return absl::OkStatus();
  };
  // The streams at one instant, with the steps they keep (held, like the
  // images, until written); their steps are written from here, not from
  // the list of images, so that they match the streams' state.
  const std::vector<StreamRecord> streams = store.streams().Capture();
  std::vector<ImageRef> to_write;
  to_write.reserve(images.size());
  for (const ImageRef& image : images) {
    std::string_view stream;
    uint64_t step = 0;
    if (!internal::ParseStreamStepId(image->image_id(), &stream, &step)) {
      to_write.push_back(image);
    }
  }
  const size_t plain_images = to_write.size();
  for (const StreamRecord& record : streams) {
    for (const auto& [step, image] : record.steps) to_write.push_back(image);
  }
  for (const ImageRef& image : to_write) {
    const std::string file =
        ImageFileName(image->generation(), image->image_id());
    const std::string path = absl::StrCat(images_dir, "/", file);
    struct stat existing;
    // A file of this generation from an earlier snapshot is whole: it was
    // renamed into place only once fsynced.
    if (stat(path.c_str(), &existing) != 0 ||
        static_cast<uint64_t>(existing.st_size) != image->size()) {
      std::function<void()> halfway;
      if (report.files_written == 0) {
        halfway = [snapshot] { MaybeCrashAt(Step::kMidData, snapshot); };
      }
      absl::StatusOr<DurableFile> written =
          WriteDurableFile(path, image->data(), image->size(), halfway);
      if (!written.ok()) return written.status();
      written->StartWriteback();
      batch.push_back(*std::move(written));
      batch_bytes += image->size();
      if (batch.size() == kBatchFiles || batch_bytes >= kBatchBytes) {
        if (absl::Status finished = finish_batch(); !finished.ok()) {
          return finished;
        }
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
  report.images = plain_images;
  report.steps = entries.size() - plain_images;
  Manifest contents;
  contents.images.assign(entries.begin(), entries.begin() + plain_images);
  size_t next_step_entry = plain_images;
  for (const StreamRecord& record : streams) {
    StreamEntry& stream = contents.streams.emplace_back();
    stream.record = record;
    stream.record.steps.clear();
    for (const auto& [step, image] : record.steps) {
      stream.steps.emplace_back(step, entries[next_step_entry++]);
    }
  }
  report.streams = contents.streams.size();
  if (absl::Status finished = finish_batch(); !finished.ok()) {
    return finished;
  }
  if (absl::Status synced = FsyncDirectory(images_dir); !synced.ok()) {
    return synced;
  }
  const std::string text = ManifestText(contents);
  absl::StatusOr<DurableFile> manifest = WriteDurableFile(
      absl::StrCat(path_, "/", kManifest),
      reinterpret_cast<const uint8_t*>(text.data()), text.size(),
      [snapshot] { MaybeCrashAt(Step::kBeforeManifest, snapshot); });
  if (!manifest.ok()) return manifest.status();
  if (absl::Status finished = manifest->Finish(); !finished.ok()) {
    return finished;
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
