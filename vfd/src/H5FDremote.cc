// The remote virtual file driver: HDF5 files whose bytes are images held by
// h5depotd. See H5FDremote.h for the contract.
//
// Layers, outermost first:
//   - the C entry points and the H5FD_class_t callbacks, which only convert
//     between HDF5's calling conventions and RemoteFile (no exception and no
//     absl::Status crosses them: Guarded() and H5DEPOT_VFD_FAIL see to it);
//   - RemoteFile, one per H5FD_t: the image id, the generation the file is
//     bound to, the client connection and the commit protocol;
//   - PagedImage (paged_image.h): the bytes, cached and overlaid with local
//     writes.
#include "H5FDremote.h"

#include <algorithm>
#include <atomic>
#include <cstddef>
#include <cstdlib>
#include <cstring>
#include <map>
#include <memory>
#include <new>
#include <string>
#include <string_view>
#include <system_error>
#include <thread>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "absl/time/time.h"
#include "client/src/hdf5_error_internal.h"
#include "h5depot/client.h"
#include "h5depot/internal/hdf5_signature.h"
#include "h5depot/internal/image_id.h"
#include "h5depot/internal/mutex.h"
#include "h5depot/internal/token.h"
#include "vfd/src/paged_image.h"

// Reports `status` from the current function on the HDF5 error stack as the
// remote driver's; evaluates to -1.
#define H5DEPOT_VFD_FAIL(status) \
  H5DEPOT_PUSH_HDF5_ERROR(kRemoteDriver, (status))

namespace {

using h5depot::Client;
using h5depot::ImageReader;
using h5depot::internal::Mutex;
using h5depot::internal::MutexLock;
using h5depot::vfd::PagedImage;
using h5depot::vfd::PagedImageOptions;

// The largest address the driver hands out: what fits a signed 64-bit
// offset, as for the sec2 driver.
constexpr haddr_t kMaxAddress = (haddr_t{1} << 63) - 1;

// What H5Pset_fapl_remote stores on a file access property list. Flat and
// zero-padded, so that HDF5 may copy and compare it byte by byte: the
// token and the TLS paths are held inline, and config's pointers are
// always null here.
struct RemoteFapl {
  char target[H5FD_REMOTE_MAX_TARGET_LEN + 1];
  H5FD_remote_config_t config;
  char token[H5FD_REMOTE_MAX_TOKEN_LEN + 1];  // empty: the environment's
  char tls_ca_file[H5FD_REMOTE_MAX_PATH_LEN + 1];
  char tls_cert_file[H5FD_REMOTE_MAX_PATH_LEN + 1];
  char tls_key_file[H5FD_REMOTE_MAX_PATH_LEN + 1];
};

static_assert(H5FD_REMOTE_MAX_TOKEN_LEN == h5depot::internal::kMaxTokenBytes,
              "the driver takes every token a client takes");

// A version 1 H5FD_remote_config_t: the fields before `token`.
constexpr size_t kConfigV1Bytes = offsetof(H5FD_remote_config_t, token);

const H5FD_remote_config_t kDefaultConfig = H5FD_REMOTE_CONFIG_INIT;

// The caller's `config` as this version's struct: a version 1 struct is
// read only as far as its fields go, and has no token.
absl::StatusOr<H5FD_remote_config_t> ReadConfig(
    const H5FD_remote_config_t& config) {
  if (config.version == 1) {
    H5FD_remote_config_t upgraded = kDefaultConfig;
    std::memcpy(&upgraded, &config, kConfigV1Bytes);
    upgraded.version = H5FD_REMOTE_CONFIG_VERSION;
    upgraded.token = nullptr;
    upgraded.use_tls = 0;
    upgraded.tls_ca_file = nullptr;
    upgraded.tls_cert_file = nullptr;
    upgraded.tls_key_file = nullptr;
    return upgraded;
  }
  if (config.version != H5FD_REMOTE_CONFIG_VERSION) {
    return absl::InvalidArgumentError(absl::StrCat(
        "H5FD_remote_config_t.version is ", config.version,
        "; this library understands versions 1 to ", H5FD_REMOTE_CONFIG_VERSION,
        " (initialise the struct with H5FD_REMOTE_CONFIG_INIT)"));
  }
  return config;
}

absl::Status ValidateConfig(const H5FD_remote_config_t& config) {
  if (config.version != H5FD_REMOTE_CONFIG_VERSION) {
    return absl::InvalidArgumentError(absl::StrCat(
        "H5FD_remote_config_t.version is ", config.version,
        "; this library understands version ", H5FD_REMOTE_CONFIG_VERSION,
        " (initialise the struct with H5FD_REMOTE_CONFIG_INIT)"));
  }
  const size_t page = config.page_size;
  if (page < (size_t{4} << 10) || page > (size_t{16} << 20) ||
      (page & (page - 1)) != 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "page_size ", page, " must be a power of two from 4096 to 16777216"));
  }
  if (config.cache_size < page) {
    return absl::InvalidArgumentError(
        absl::StrCat("cache_size ", config.cache_size,
                     " must hold at least one page of ", page, " bytes"));
  }
  if (config.readahead > config.cache_size) {
    return absl::InvalidArgumentError(
        absl::StrCat("readahead ", config.readahead,
                     " must not exceed cache_size ", config.cache_size));
  }
  if (config.connect_timeout_ms == 0 || config.call_timeout_ms == 0) {
    return absl::InvalidArgumentError(
        "connect_timeout_ms and call_timeout_ms must be positive: a zero "
        "timeout would let a call to an unresponsive server hang forever");
  }
  return absl::OkStatus();
}

// One Client per (target, timeouts, token) for the life of the process,
// shared by every file that uses it: connecting costs about as much as
// opening a file and reading a dataset, so it is paid once. (The
// connection re-establishes itself if the server restarts.) Files with
// different tokens never share a Client: each presents its own.
absl::StatusOr<std::shared_ptr<Client>> SharedClient(const RemoteFapl& fapl) {
  static Mutex mu;
  // Leaked on purpose: files may still be closed by HDF5's exit handler
  // after static destructors ran.
  static auto* clients = new std::map<std::string, std::shared_ptr<Client>>;

  const std::string target = fapl.target;
  // What the fapl leaves to the environment is part of the key too, so
  // that a client made under other settings is not reused.
  std::string environment;
  for (const char* name : {"H5DEPOT_TOKEN", "H5DEPOT_TOKEN_FILE", "H5DEPOT_TLS",
                           "H5DEPOT_TLS_CA_FILE", "H5DEPOT_TLS_CERT_FILE",
                           "H5DEPOT_TLS_KEY_FILE"}) {
    const char* value = std::getenv(name);
    absl::StrAppend(&environment, "\n", value == nullptr ? "" : value);
  }
  const std::string key =
      absl::StrCat(target, "\n", fapl.config.connect_timeout_ms, "\n",
                   fapl.config.call_timeout_ms, "\n", fapl.token, "\n",
                   fapl.config.use_tls, "\n", fapl.tls_ca_file, "\n",
                   fapl.tls_cert_file, "\n", fapl.tls_key_file, environment);
  MutexLock lock(&mu);
  if (auto it = clients->find(key); it != clients->end()) return it->second;

  h5depot::ClientOptions options;
  options.connect_timeout = absl::Milliseconds(fapl.config.connect_timeout_ms);
  options.call_timeout = absl::Milliseconds(fapl.config.call_timeout_ms);
  options.token = fapl.token;                  // empty: the environment's
  options.use_tls = fapl.config.use_tls != 0;  // none: the environment's
  options.tls_ca_file = fapl.tls_ca_file;
  options.tls_cert_file = fapl.tls_cert_file;
  options.tls_key_file = fapl.tls_key_file;
  absl::StatusOr<std::unique_ptr<Client>> connected =
      Client::Connect(target, options);
  if (!connected.ok()) {
    return absl::Status(connected.status().code(),
                        absl::StrCat("cannot reach h5depotd at '", target,
                                     "': ", connected.status().message()));
  }
  std::shared_ptr<Client> client = std::move(*connected);
  clients->emplace(key, client);
  return client;
}

// Prefixes `status` with what was being done, keeping its code.
absl::Status Annotate(const absl::Status& status, const std::string& what) {
  return absl::Status(status.code(),
                      absl::StrCat(what, ": ", status.message()));
}

// One generation of an image as the file's base. `pin`, a reader from
// Client::OpenReader, keeps that generation stored on the server for the
// file's whole life and reads its byte ranges, each request ending by the
// deadline of the pin's reads (the client's call timeout, plus its allowance
// for the bytes asked).
//
// Large reads are split: into pieces of at most kMaxPiece, so that the
// deadline bounds each piece rather than a whole huge read, and over up to
// kStreams concurrent requests (the pin's reads may run at once), since one
// request's stream is limited by the one thread that copies its chunks.
class PinnedGeneration final : public ImageReader {
 public:
  static constexpr size_t kMaxPiece = size_t{64} << 20;
  static constexpr size_t kMinParallelPiece = size_t{8} << 20;
  // Measured on two cores, where the server competes for them: two streams
  // beat one by about 10%, four were slower than two.
  static constexpr size_t kStreams = 2;

  // Counts the requests it sends into `*calls`, which must outlive it.
  PinnedGeneration(std::unique_ptr<ImageReader> pin,
                   std::atomic<uint64_t>* calls)
      : pin_(std::move(pin)), calls_(calls) {}

  const h5depot::ImageInfo& info() const override { return pin_->info(); }

  absl::StatusOr<size_t> Read(uint64_t offset, void* out,
                              size_t length) override {
    const uint64_t size = pin_->info().size;
    if (offset >= size) return 0;
    length = std::min<uint64_t>(length, size - offset);
    char* const bytes = static_cast<char*>(out);
    const size_t streams =
        std::min(kStreams, std::max<size_t>(1, length / kMinParallelPiece));
    if (streams == 1) {
      absl::Status status = ReadRange(offset, bytes, length);
      if (!status.ok()) return status;
      return length;
    }
    // Equal shares, on page-friendly 1 MiB boundaries.
    const size_t share =
        ((length / streams) + (size_t{1} << 20) - 1) & ~((size_t{1} << 20) - 1);
    std::vector<absl::Status> results(streams);
    std::vector<std::thread> threads;
    threads.reserve(streams);
    for (size_t i = 1; i < streams; ++i) {
      const size_t from = std::min(length, i * share);
      const size_t to = std::min(length, (i + 1) * share);
      auto read_share = [&, i, from, to] {
        results[i] = ReadRange(offset + from, bytes + from, to - from);
      };
      try {
        threads.emplace_back(read_share);
      } catch (const std::system_error&) {
        read_share();  // no thread to be had: read it here instead
      }
    }
    results[0] = ReadRange(offset, bytes, std::min(length, share));
    for (std::thread& thread : threads) thread.join();
    for (const absl::Status& status : results) {
      if (!status.ok()) return status;
    }
    return length;
  }

 private:
  // Reads exactly [offset, offset + length), which lies within the image.
  absl::Status ReadRange(uint64_t offset, char* out, size_t length) {
    for (size_t done = 0; done < length;) {
      const size_t piece = std::min(length - done, kMaxPiece);
      calls_->fetch_add(1, std::memory_order_relaxed);
      absl::StatusOr<size_t> read =
          pin_->Read(offset + done, out + done, piece);
      if (!read.ok()) return read.status();
      if (*read != piece) {
        return absl::DataLossError(
            absl::StrCat("the server returned ", *read, " of ", piece,
                         " bytes at offset ", offset + done));
      }
      done += piece;
    }
    return absl::OkStatus();
  }

  const std::unique_ptr<ImageReader> pin_;
  std::atomic<uint64_t>* const calls_;
};

// The current generation of an image as the file's base, mapped from the
// server's memory: a server on this host, reached over its Unix socket,
// hands over the image's memfd (docs/ARCHITECTURE.md, "Same host: images as
// sealed memory"). The mapping's lease pins the generation for the file's
// life, and a read is a memcpy.
class MappedGeneration final : public ImageReader {
 public:
  explicit MappedGeneration(h5depot::FetchedImage image)
      : image_(std::move(image)) {}

  const h5depot::ImageInfo& info() const override { return image_.info; }

  absl::StatusOr<size_t> Read(uint64_t offset, void* out,
                              size_t length) override {
    const uint64_t size = image_.buffer.size();
    if (offset >= size) return 0;
    length = static_cast<size_t>(std::min<uint64_t>(length, size - offset));
    std::memcpy(out, static_cast<const char*>(image_.buffer.data()) + offset,
                length);
    return length;
  }

 private:
  const h5depot::FetchedImage image_;
};

bool IsUnixTarget(const std::string& target) {
  return target.rfind("unix:", 0) == 0;
}

// One open file: an image id on one server, bound to one generation.
class RemoteFile {
 public:
  // Opens `image_id` as HDF5's open callback asks (`flags` are H5F_ACC_*).
  // Read-only and read-write opens pin the current generation; H5F_ACC_CREAT
  // starts from an empty image, conditional on the image not existing
  // (H5F_ACC_EXCL) or on its current generation (H5F_ACC_TRUNC).
  static absl::StatusOr<std::unique_ptr<RemoteFile>> Open(
      const std::string& image_id, unsigned flags, const RemoteFapl& fapl);

  absl::Status Read(haddr_t addr, size_t size, void* buf);
  absl::Status Write(haddr_t addr, size_t size, const void* buf);

  haddr_t eoa() const {
    MutexLock lock(&mu_);
    return eoa_;
  }
  void set_eoa(haddr_t eoa) {
    MutexLock lock(&mu_);
    eoa_ = eoa;
  }
  haddr_t eof() const {
    MutexLock lock(&mu_);
    return image_->size();
  }
  uint64_t generation() const {
    MutexLock lock(&mu_);
    return generation_;
  }
  const RemoteFapl& fapl() const { return fapl_; }
  const std::string& image_id() const { return image_id_; }

  // Sets the image size to the end of the allocated address space, as the
  // sec2 driver sets the file size.
  absl::Status Truncate();

  // Publishes the local writes, if any, as a new generation, conditional on
  // the current one; `closing` skips re-pinning the new generation. After
  // a failure while closing, later calls do nothing.
  absl::Status Commit(bool closing);

  H5FD_remote_file_info_t Info() const;

 private:
  RemoteFile(const std::string& image_id, const RemoteFapl& fapl, bool writable,
             std::shared_ptr<Client> client, uint64_t generation)
      : fapl_(fapl),
        image_id_(image_id),
        writable_(writable),
        client_(std::move(client)),
        generation_(generation) {}

  absl::Status CommitLocked(bool closing) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  // Opens a reader pinning `generation` (0: the current one) as a base.
  absl::StatusOr<std::unique_ptr<ImageReader>> PinGeneration(
      uint64_t generation) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  std::string Describe() const {
    return absl::StrCat("image '", image_id_, "' on ", fapl_.target);
  }

  const RemoteFapl fapl_;
  const std::string image_id_;
  const bool writable_;
  const std::shared_ptr<Client> client_;

  // HDF5 serialises its calls into the driver; the lock is for
  // H5FD_remote_get_file_info, which may run on another thread meanwhile.
  mutable Mutex mu_;
  // The generation reads come from and the next commit is conditional on
  // (0 for a created image that must not exist yet).
  uint64_t generation_ ABSL_GUARDED_BY(mu_);
  haddr_t eoa_ ABSL_GUARDED_BY(mu_) = 0;
  std::unique_ptr<PagedImage> image_ ABSL_GUARDED_BY(mu_);
  // Set when a commit lost a race; later commits repeat it without asking
  // the server again, since the loss is permanent for this file.
  absl::Status conflict_ ABSL_GUARDED_BY(mu_);
  bool abandoned_ ABSL_GUARDED_BY(mu_) = false;
  uint64_t round_trips_ ABSL_GUARDED_BY(mu_) = 0;  // opens, stats, pushes
  std::atomic<uint64_t> read_calls_{0};            // by the base readers
  uint64_t reads_ ABSL_GUARDED_BY(mu_) = 0;
  uint64_t bytes_pushed_ ABSL_GUARDED_BY(mu_) = 0;
  uint64_t commits_ ABSL_GUARDED_BY(mu_) = 0;
};

PagedImageOptions ImageOptions(const H5FD_remote_config_t& config) {
  PagedImageOptions options;
  options.page_size = config.page_size;
  options.cache_bytes = config.cache_size;
  options.readahead_bytes = config.readahead;
  return options;
}

absl::StatusOr<std::unique_ptr<RemoteFile>> RemoteFile::Open(
    const std::string& image_id, unsigned flags, const RemoteFapl& fapl) {
  if (absl::Status valid = h5depot::internal::ValidateImageId(image_id);
      !valid.ok()) {
    return Annotate(valid,
                    absl::StrCat("'", image_id, "' is not a valid image id"));
  }
  absl::StatusOr<std::shared_ptr<Client>> client = SharedClient(fapl);
  if (!client.ok()) return client.status();
  const bool writable = (flags & H5F_ACC_RDWR) != 0;

  if ((flags & H5F_ACC_CREAT) != 0) {
    uint64_t generation = 0;
    absl::StatusOr<h5depot::ImageInfo> existing = (*client)->Stat(image_id);
    if (existing.ok()) {
      if ((flags & H5F_ACC_TRUNC) == 0) {
        return absl::AlreadyExistsError(absl::StrCat(
            "image '", image_id, "' on ", fapl.target,
            " already exists (generation ", existing->generation,
            "); open it, or create it with H5F_ACC_TRUNC to replace it"));
      }
      generation = existing->generation;
    } else if (existing.status().code() != absl::StatusCode::kNotFound) {
      return Annotate(
          existing.status(),
          absl::StrCat("looking up image '", image_id, "' on ", fapl.target));
    }
    std::unique_ptr<RemoteFile> file(new RemoteFile(
        image_id, fapl, writable, std::move(*client), generation));
    MutexLock lock(&file->mu_);
    file->round_trips_ = 1;
    file->image_ = PagedImage::CreateEmpty(ImageOptions(fapl.config));
    return file;
  }

  std::unique_ptr<RemoteFile> file(new RemoteFile(
      image_id, fapl, writable, std::move(*client), /*generation=*/0));
  MutexLock lock(&file->mu_);

  absl::StatusOr<std::unique_ptr<ImageReader>> base = file->PinGeneration(0);
  if (!base.ok()) {
    return Annotate(base.status(), absl::StrCat("opening ", file->Describe()));
  }
  file->generation_ = (*base)->info().generation;
  file->image_ = PagedImage::Open(std::move(*base), ImageOptions(fapl.config));
  return file;
}

absl::StatusOr<std::unique_ptr<ImageReader>> RemoteFile::PinGeneration(
    uint64_t generation) {
  ++round_trips_;
  if (generation == 0 && IsUnixTarget(fapl_.target)) {
    // On this host the current generation maps in one request. When it
    // cannot (a small image, a server that does not share) nothing moved,
    // and it is pinned and read in ranges as elsewhere.
    h5depot::FetchOptions mapped;
    mapped.only_if_mapped = true;
    absl::StatusOr<h5depot::FetchedImage> fetched =
        client_->Fetch(image_id_, mapped);
    if (fetched.ok()) {
      return std::unique_ptr<ImageReader>(
          new MappedGeneration(*std::move(fetched)));
    }
  }
  absl::StatusOr<std::unique_ptr<ImageReader>> pin =
      client_->OpenReader(image_id_, generation);
  if (!pin.ok()) return pin.status();
  return std::unique_ptr<ImageReader>(
      new PinnedGeneration(std::move(*pin), &read_calls_));
}

absl::Status RemoteFile::Read(haddr_t addr, size_t size, void* buf) {
  MutexLock lock(&mu_);
  if (addr == HADDR_UNDEF || addr > kMaxAddress || size > kMaxAddress - addr ||
      addr + size > eoa_) {
    return absl::OutOfRangeError(absl::StrCat(
        "read of ", size, " bytes at address ", addr, " of ", Describe(),
        " goes past the end of the allocated space (", eoa_, ")"));
  }
  ++reads_;
  absl::Status status = image_->Read(addr, buf, size);
  if (!status.ok()) {
    return Annotate(status, absl::StrCat(Describe(), " generation ",
                                         image_->base_generation()));
  }
  return absl::OkStatus();
}

absl::Status RemoteFile::Write(haddr_t addr, size_t size, const void* buf) {
  MutexLock lock(&mu_);
  if (!writable_) {
    return absl::PermissionDeniedError(
        absl::StrCat(Describe(), " was opened read-only"));
  }
  if (addr == HADDR_UNDEF || addr > kMaxAddress || size > kMaxAddress - addr ||
      addr + size > eoa_) {
    return absl::OutOfRangeError(absl::StrCat(
        "write of ", size, " bytes at address ", addr, " of ", Describe(),
        " goes past the end of the allocated space (", eoa_, ")"));
  }
  image_->Write(addr, buf, size);  // local: the server is not asked
  return absl::OkStatus();
}

absl::Status RemoteFile::Truncate() {
  MutexLock lock(&mu_);
  if (writable_) image_->Resize(eoa_);
  return absl::OkStatus();
}

absl::Status RemoteFile::Commit(bool closing) {
  MutexLock lock(&mu_);
  if (!writable_ || !image_->modified() || abandoned_) return absl::OkStatus();
  absl::Status status = CommitLocked(closing);
  // A failure while closing has been reported; the rest of the close must
  // not repeat the attempt (and its wait, if the server is gone).
  if (!status.ok() && closing) abandoned_ = true;
  return status;
}

absl::Status RemoteFile::CommitLocked(bool closing) {
  if (!conflict_.ok()) return conflict_;

  absl::StatusOr<h5depot::ImageBuffer> image = image_->Assemble();
  if (!image.ok()) {
    return Annotate(image.status(),
                    absl::StrCat("assembling ", Describe(), " to commit it"));
  }
  if (!h5depot::internal::FindSuperblock(image->data(), image->size())) {
    // Only an HDF5 call that failed half-way leaves a file without a
    // superblock; publishing it would hand readers a broken image.
    return absl::FailedPreconditionError(absl::StrCat(
        "not committing ", Describe(),
        ": it holds no HDF5 superblock, so it was never completely written"));
  }

  h5depot::PushOptions options;
  options.if_generation_match = generation_;
  ++round_trips_;
  absl::StatusOr<h5depot::ImageInfo> pushed =
      client_->Push(image_id_, image->data(), image->size(), options);
  if (!pushed.ok()) {
    const absl::StatusCode code = pushed.status().code();
    if (code == absl::StatusCode::kAlreadyExists ||
        code == absl::StatusCode::kAborted) {
      // A lost race, ABORTED as the server says for a generation (and for
      // a created image that exists now): the whole open-modify-commit has
      // to be redone.
      conflict_ = absl::AbortedError(absl::StrCat(
          "commit of ", Describe(), " rejected: ",
          generation_ == 0
              ? std::string("another client created the image after this "
                            "file was created")
              : absl::StrCat("another client published a new generation "
                             "after generation ",
                             generation_, ", which this file is based on"),
          "; nothing was published (", pushed.status().message(), ")"));
      return conflict_;
    }
    return Annotate(pushed.status(),
                    absl::StrCat("committing ", image->size(), " bytes of ",
                                 Describe(), "; nothing was published"));
  }
  bytes_pushed_ += image->size();
  ++commits_;
  generation_ = pushed->generation;
  image = h5depot::ImageBuffer();  // before the next step may need memory

  // Later reads come from the committed generation, so that local pages can
  // be dropped; if it cannot be pinned (deleted already?), the old base plus
  // local pages still hold exactly what was committed.
  std::unique_ptr<ImageReader> committed;
  if (!closing) {
    absl::StatusOr<std::unique_ptr<ImageReader>> reader =
        PinGeneration(generation_);
    if (reader.ok()) committed = std::move(*reader);
  }
  image_->Rebase(std::move(committed));
  return absl::OkStatus();
}

H5FD_remote_file_info_t RemoteFile::Info() const {
  MutexLock lock(&mu_);
  H5FD_remote_file_info_t info{};
  info.generation = generation_;
  info.round_trips = round_trips_ + read_calls_.load();
  info.bytes_fetched = image_->stats().bytes_fetched;
  info.bytes_pushed = bytes_pushed_;
  info.reads = reads_;
  info.page_hits = image_->stats().page_hits;
  info.page_misses = image_->stats().page_misses;
  info.commits = commits_;
  return info;
}

// What HDF5 holds: its public part first, as the VFL requires, and our file.
struct H5FD_remote_t {  // NOLINT(readability-identifier-naming): as HDF5
  H5FD_t pub;
  RemoteFile* file;
};

RemoteFile& FileOf(const H5FD_t* file) {
  return *reinterpret_cast<const H5FD_remote_t*>(file)->file;
}

// Runs `body` (returning absl::Status) so that no exception escapes into
// HDF5; a failure goes on the error stack as raised in `function`.
template <typename Body>
herr_t Guarded(const char* function, unsigned line, Body&& body) noexcept {
  absl::Status status;
  try {
    status = body();
  } catch (const std::bad_alloc&) {
    status = absl::ResourceExhaustedError(
        "out of memory in the h5depot remote driver");
  } catch (const std::exception& e) {
    status = absl::InternalError(
        absl::StrCat("unexpected exception in the remote driver: ", e.what()));
  } catch (...) {
    status = absl::InternalError("unexpected exception in the remote driver");
  }
  if (status.ok()) return 0;
  return h5depot::internal::PushHdf5Error(
      h5depot::internal::Hdf5ErrorSource::kRemoteDriver, __FILE__, function,
      line, status);
}

// ---- The callbacks. ----

herr_t RemoteTerminate() {
  return 0;  // H5FD_remote_init notices by itself that the id went away
}

void* RemoteFaplCopy(const void* fapl) {
  void* copy = std::malloc(sizeof(RemoteFapl));
  if (copy != nullptr) std::memcpy(copy, fapl, sizeof(RemoteFapl));
  return copy;
}

herr_t RemoteFaplFree(void* fapl) {
  std::free(fapl);
  return 0;
}

void* RemoteFaplGet(H5FD_t* file) {
  return RemoteFaplCopy(&FileOf(file).fapl());
}

H5FD_t* RemoteOpen(const char* name, unsigned flags, hid_t fapl_id,
                   haddr_t maxaddr) {
  H5FD_t* result = nullptr;
  Guarded(__func__, __LINE__, [&]() -> absl::Status {
    if (name == nullptr || *name == '\0') {
      return absl::InvalidArgumentError(
          "the file name must be an image id; it is empty");
    }
    if (maxaddr == 0 || maxaddr == HADDR_UNDEF) {
      return absl::InvalidArgumentError("bogus maximum address");
    }
    const auto* fapl =
        static_cast<const RemoteFapl*>(H5Pget_driver_info(fapl_id));
    if (fapl == nullptr) {
      return absl::InvalidArgumentError(
          "the file access property list names no server; call "
          "H5Pset_fapl_remote on it");
    }
    absl::StatusOr<std::unique_ptr<RemoteFile>> file =
        RemoteFile::Open(name, flags, *fapl);
    if (!file.ok()) return file.status();
    auto* handle = new H5FD_remote_t{};  // HDF5 expects pub zeroed
    handle->file = file->release();
    result = &handle->pub;
    return absl::OkStatus();
  });
  return result;
}

// HDF5 1.10 cannot survive a failing file close: H5F__dest frees the file
// whatever happens, but the file id stays registered when the close fails,
// and H5close (at exit, at the latest) then closes it again -- a crash. So a
// commit that fails while closing is reported on the error stack (and to
// the automatic error handler) without failing the close; H5Fflush is where
// a commit can fail safely.
herr_t ReportWhileClosing(const char* function, unsigned line,
                          const absl::Status& status) {
  if (!status.ok()) {
    h5depot::internal::ReportHdf5ErrorWithoutFailing(
        h5depot::internal::Hdf5ErrorSource::kRemoteDriver, __FILE__, function,
        line, status);
  }
  return 0;
}

herr_t RemoteClose(H5FD_t* file) {
  auto* handle = reinterpret_cast<H5FD_remote_t*>(file);
  std::unique_ptr<RemoteFile> owned(handle->file);
  delete handle;
  absl::Status status;
  Guarded(__func__, __LINE__, [&] {
    status = owned->Commit(/*closing=*/true);
    return absl::OkStatus();
  });
  return ReportWhileClosing(__func__, __LINE__, status);
}

int RemoteCmp(const H5FD_t* f1, const H5FD_t* f2) {
  const RemoteFile& a = FileOf(f1);
  const RemoteFile& b = FileOf(f2);
  if (int c = std::strcmp(a.fapl().target, b.fapl().target); c != 0) {
    return c < 0 ? -1 : 1;
  }
  // Not one file for HDF5 to share between opens with different tokens:
  // an open must never ride on another principal's grant.
  if (int c = std::strcmp(a.fapl().token, b.fapl().token); c != 0) {
    return c < 0 ? -1 : 1;
  }
  if (int c = a.image_id().compare(b.image_id()); c != 0) {
    return c < 0 ? -1 : 1;
  }
  const uint64_t ga = a.generation();
  const uint64_t gb = b.generation();
  return ga < gb ? -1 : (ga > gb ? 1 : 0);
}

// NOLINTNEXTLINE(google-runtime-int): HDF5's signature
herr_t RemoteQuery(const H5FD_t*, unsigned long* flags) {
  if (flags != nullptr) {
    // Allocation aggregation, as sec2 and core: it only decides where new
    // objects go. Not the data sieve nor the metadata accumulator: HDF5
    // moves either buffer to the new address before the driver has filled
    // it, and keeps it there when the read fails (H5D__contig_readvv_sieve_cb,
    // H5F__accum_read), so that after an UNAVAILABLE or DEADLINE_EXCEEDED
    // the next nearby read would "succeed" with bytes the driver never
    // delivered. The driver's own page cache (paged_image.h) does what they
    // would, and keeps only pages that arrived whole. The images are
    // ordinary HDF5 files, readable by any other driver.
    *flags = H5FD_FEAT_AGGREGATE_METADATA | H5FD_FEAT_AGGREGATE_SMALLDATA |
             H5FD_FEAT_DEFAULT_VFD_COMPATIBLE;
  }
  return 0;
}

haddr_t RemoteGetEoa(const H5FD_t* file, H5FD_mem_t) {
  return FileOf(file).eoa();
}

herr_t RemoteSetEoa(H5FD_t* file, H5FD_mem_t, haddr_t addr) {
  if (addr > kMaxAddress) {
    return H5DEPOT_VFD_FAIL(absl::OutOfRangeError(
        absl::StrCat("address ", addr, " is beyond the driver's maximum")));
  }
  FileOf(file).set_eoa(addr);
  return 0;
}

haddr_t RemoteGetEof(const H5FD_t* file, H5FD_mem_t) {
  return FileOf(file).eof();
}

herr_t RemoteGetHandle(H5FD_t* file, hid_t, void** file_handle) {
  if (file_handle == nullptr) {
    return H5DEPOT_VFD_FAIL(absl::InvalidArgumentError("null file handle"));
  }
  *file_handle = file;  // opaque; H5FD_remote_get_file_info uses it
  return 0;
}

herr_t RemoteRead(H5FD_t* file, H5FD_mem_t, hid_t, haddr_t addr, size_t size,
                  void* buf) {
  return Guarded(__func__, __LINE__,
                 [&] { return FileOf(file).Read(addr, size, buf); });
}

herr_t RemoteWrite(H5FD_t* file, H5FD_mem_t, hid_t, haddr_t addr, size_t size,
                   const void* buf) {
  return Guarded(__func__, __LINE__,
                 [&] { return FileOf(file).Write(addr, size, buf); });
}

herr_t RemoteFlush(H5FD_t* file, hid_t, hbool_t closing) {
  if (!closing) {
    return Guarded(__func__, __LINE__,
                   [&] { return FileOf(file).Commit(/*closing=*/false); });
  }
  absl::Status status;
  Guarded(__func__, __LINE__, [&] {
    status = FileOf(file).Commit(/*closing=*/true);
    return absl::OkStatus();
  });
  return ReportWhileClosing(__func__, __LINE__, status);
}

herr_t RemoteTruncate(H5FD_t* file, hid_t, hbool_t) {
  return Guarded(__func__, __LINE__, [&] { return FileOf(file).Truncate(); });
}

const H5FD_class_t kRemoteClass = {
    "remote",              // name
    kMaxAddress,           // maxaddr
    H5F_CLOSE_WEAK,        // fc_degree: as sec2
    RemoteTerminate,       // terminate
    nullptr,               // sb_size: no driver info stored
    nullptr,               // sb_encode   in the superblock, so
    nullptr,               // sb_decode   images stay portable
    sizeof(RemoteFapl),    // fapl_size
    RemoteFaplGet,         // fapl_get: a malloc'ed copy
    RemoteFaplCopy,        // fapl_copy
    RemoteFaplFree,        // fapl_free
    0,                     // dxpl_size: no transfer settings
    nullptr,               // dxpl_copy
    nullptr,               // dxpl_free
    RemoteOpen,            // open: pin or create the image
    RemoteClose,           // close: commit if still modified, free
    RemoteCmp,             // cmp: target, image id, generation
    RemoteQuery,           // query: feature flags
    nullptr,               // get_type_map: default
    nullptr,               // alloc: library allocates at EOA
    nullptr,               // free: library keeps free lists
    RemoteGetEoa,          // get_eoa
    RemoteSetEoa,          // set_eoa
    RemoteGetEof,          // get_eof: logical image size
    RemoteGetHandle,       // get_handle: the H5FD_t itself
    RemoteRead,            // read: cache, then the server
    RemoteWrite,           // write: local pages only
    RemoteFlush,           // flush: commit a new generation
    RemoteTruncate,        // truncate: image size := EOA
    nullptr,               // lock: no locks (and no superblock
    nullptr,               // unlock   status flags written)
    H5FD_FLMAP_DICHOTOMY,  // fl_map: as sec2
};

std::atomic<hid_t> g_driver_id{H5I_INVALID_HID};

}  // namespace

extern "C" {

hid_t H5FD_remote_init(void) {
  static Mutex mu;
  MutexLock lock(&mu);
  const hid_t known = g_driver_id.load();
  if (known >= 0 && H5Iget_type(known) == H5I_VFL) return known;
  if (h5depot::internal::RegisterHdf5ErrorClass() < 0) return H5I_INVALID_HID;
  const hid_t id = H5FDregister(&kRemoteClass);
  g_driver_id.store(id);
  return id;
}

herr_t H5Pset_fapl_remote(hid_t fapl_id, const char* target,
                          const H5FD_remote_config_t* config) {
  const hid_t driver = H5FD_remote_init();
  if (driver < 0) return -1;
  if (target == nullptr || *target == '\0') {
    return H5DEPOT_VFD_FAIL(absl::InvalidArgumentError(
        "the server target is empty; give \"host:port\" or "
        "\"unix:/path/to/socket\""));
  }
  const size_t length = std::strlen(target);
  if (length > H5FD_REMOTE_MAX_TARGET_LEN) {
    return H5DEPOT_VFD_FAIL(absl::InvalidArgumentError(absl::StrCat(
        "the server target is ", length, " characters long; at most ",
        H5FD_REMOTE_MAX_TARGET_LEN, " are allowed")));
  }
  RemoteFapl fapl;
  std::memset(&fapl, 0, sizeof(fapl));
  std::memcpy(fapl.target, target, length);
  fapl.config = kDefaultConfig;
  if (config != nullptr) {
    absl::StatusOr<H5FD_remote_config_t> read = ReadConfig(*config);
    if (!read.ok()) return H5DEPOT_VFD_FAIL(read.status());
    fapl.config = *read;
  }
  if (absl::Status valid = ValidateConfig(fapl.config); !valid.ok()) {
    return H5DEPOT_VFD_FAIL(valid);
  }
  if (fapl.config.token != nullptr && *fapl.config.token != '\0') {
    const std::string_view token = fapl.config.token;
    if (token.size() > H5FD_REMOTE_MAX_TOKEN_LEN) {
      return H5DEPOT_VFD_FAIL(absl::InvalidArgumentError(
          absl::StrCat("the token is longer than ", H5FD_REMOTE_MAX_TOKEN_LEN,
                       " characters")));
    }
    if (absl::Status valid = h5depot::internal::ValidateToken(token);
        !valid.ok()) {
      return H5DEPOT_VFD_FAIL(valid);
    }
    std::memcpy(fapl.token, token.data(), token.size());
  }
  const std::pair<const char*, char*> paths[] = {
      {fapl.config.tls_ca_file, fapl.tls_ca_file},
      {fapl.config.tls_cert_file, fapl.tls_cert_file},
      {fapl.config.tls_key_file, fapl.tls_key_file}};
  for (const auto& [given, inline_copy] : paths) {
    if (given == nullptr) continue;
    const size_t path_length = std::strlen(given);
    if (path_length > H5FD_REMOTE_MAX_PATH_LEN) {
      return H5DEPOT_VFD_FAIL(absl::InvalidArgumentError(absl::StrCat(
          "a TLS file path is ", path_length, " characters long; at most ",
          H5FD_REMOTE_MAX_PATH_LEN, " are allowed")));
    }
    std::memcpy(inline_copy, given, path_length);
  }
  // The copy on the property list points nowhere: its strings are inline.
  fapl.config.token = nullptr;
  fapl.config.tls_ca_file = nullptr;
  fapl.config.tls_cert_file = nullptr;
  fapl.config.tls_key_file = nullptr;
  return H5Pset_driver(fapl_id, driver, &fapl);
}

herr_t H5Pget_fapl_remote(hid_t fapl_id, char* target_out, size_t target_size,
                          H5FD_remote_config_t* config_out) {
  const hid_t driver = H5FD_remote_init();
  if (driver < 0) return -1;
  if (H5Pget_driver(fapl_id) != driver) {
    return H5DEPOT_VFD_FAIL(absl::InvalidArgumentError(
        "the property list does not use the remote driver"));
  }
  const auto* fapl =
      static_cast<const RemoteFapl*>(H5Pget_driver_info(fapl_id));
  if (fapl == nullptr) {
    return H5DEPOT_VFD_FAIL(absl::InvalidArgumentError(
        "the property list names no server; call H5Pset_fapl_remote"));
  }
  if (target_out != nullptr) {
    const size_t length = std::strlen(fapl->target);
    if (target_size <= length) {
      return H5DEPOT_VFD_FAIL(absl::InvalidArgumentError(
          absl::StrCat("target_size ", target_size, " cannot hold the ", length,
                       "-character target and its NUL")));
    }
    std::memcpy(target_out, fapl->target, length + 1);
  }
  if (config_out != nullptr) {
    // A version 1 caller's struct has no room for more; the token is
    // never handed out (fapl->config.token is null).
    const bool version_1 = config_out->version == 1;
    std::memcpy(config_out, &fapl->config,
                version_1 ? kConfigV1Bytes : sizeof(H5FD_remote_config_t));
    if (version_1) config_out->version = 1;
  }
  return 0;
}

herr_t H5FD_remote_get_file_info(hid_t file_id, H5FD_remote_file_info_t* info) {
  const hid_t driver = H5FD_remote_init();
  if (driver < 0) return -1;
  if (info == nullptr) {
    return H5DEPOT_VFD_FAIL(absl::InvalidArgumentError("info is null"));
  }
  const hid_t fapl = H5Fget_access_plist(file_id);
  if (fapl < 0) return -1;
  const hid_t file_driver = H5Pget_driver(fapl);
  H5Pclose(fapl);
  if (file_driver != driver) {
    return H5DEPOT_VFD_FAIL(absl::InvalidArgumentError(
        "the file was not opened with the remote driver"));
  }
  void* handle = nullptr;
  if (H5Fget_vfd_handle(file_id, H5P_DEFAULT, &handle) < 0) return -1;
  *info = FileOf(static_cast<H5FD_t*>(handle)).Info();
  return 0;
}

}  // extern "C"
