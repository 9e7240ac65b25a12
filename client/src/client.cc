// Client: validation, the operation prefixes of error messages, deadlines,
// and dispatch to the calling process's transports
// (image_transport_internal.h, process_transports_internal.h). The bytes
// move in grpc_transport.cc and lane_client.cc; lane_fallback.cc chooses
// between them.
#include "h5depot/client.h"

#include <poll.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <functional>
#include <memory>
#include <optional>
#include <utility>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "client/src/cluster_internal.h"
#include "client/src/grpc_transport_internal.h"
#include "client/src/image_transport_internal.h"
#include "client/src/lane_client_internal.h"
#include "client/src/lane_fallback_internal.h"
#include "client/src/mapped_file_internal.h"
#include "client/src/process_transports_internal.h"
#include "client/src/server_target_internal.h"
#include "client/src/step_buffers_internal.h"
#include "client/src/tls_source_internal.h"
#include "client/src/token_source_internal.h"
#include "h5depot/internal/checksum.h"
#include "h5depot/internal/image_id.h"
#include "h5depot/internal/memfd.h"
#include "h5depot/rpc/grpc_runtime.h"

namespace h5depot {
namespace {

// Writes all of `data` to `fd` where it stands, waiting for room if `fd`
// is non-blocking.
absl::Status WriteToDescriptor(int fd, const void* data, size_t size) {
  const char* next = static_cast<const char*>(data);
  while (size > 0) {
    const ssize_t written = write(fd, next, size);
    if (written >= 0) {
      next += written;
      size -= static_cast<size_t>(written);
      continue;
    }
    if (errno == EINTR) continue;
    if (errno == EAGAIN) {
      pollfd entry{fd, POLLOUT, 0};
      if (poll(&entry, 1, -1) >= 0 || errno == EINTR) continue;
    }
    return absl::UnavailableError(
        absl::StrCat("cannot write the image to descriptor ", fd, ": ",
                     std::strerror(errno)));
  }
  return absl::OkStatus();
}

// Prefixes a failed call's message with what was being done, keeping the
// code, so that errors read "fetch 'x': no image 'x'"; once only (a
// cluster passes on its members' messages, which have it).
absl::Status Annotate(const absl::Status& status, std::string_view what) {
  if (status.ok()) return status;
  const std::string prefix = absl::StrCat(std::string(what), ": ");
  if (absl::StartsWith(status.message(), prefix)) return status;
  return absl::Status(
      status.code(),
      absl::StrCat(std::string(what), ": ", std::string(status.message())));
}

std::string Quoted(std::string_view image_id) {
  return absl::StrCat("'", std::string(image_id), "'");
}

// The same, for a StatusOr, leaving a value alone.
template <typename T>
absl::StatusOr<T> Annotated(absl::StatusOr<T> result, std::string_view verb,
                            std::string_view image_id) {
  if (result.ok()) return result;
  return Annotate(result.status(),
                  absl::StrCat(std::string(verb), " ", Quoted(image_id)));
}

// `info`'s status for a call that asked for a generation newer than
// `newer_than`: a server from before such waits ignores the ask and
// answers with the current generation, which must not pass for the next.
absl::Status CheckNewerThan(const ImageInfo& info, uint64_t newer_than) {
  if (newer_than == 0 || info.generation > newer_than) return absl::OkStatus();
  return absl::UnimplementedError(absl::StrCat(
      "the server answered with generation ", info.generation,
      ", not one newer than ", newer_than,
      ": it cannot wait for a newer generation (upgrade h5depotd)"));
}

// How long a client on the server's host waits for the lane it looks for
// beside the target to answer before it asks gRPC instead. A lane on this
// host answers at once, or nothing listens there and the connection is
// refused at once; only another program listening there and saying nothing
// makes this wait.
constexpr absl::Duration kLaneLookTimeout = absl::Milliseconds(500);

// The TCP port of a `target` naming one host with a port; 0 otherwise (a
// Unix socket, whose lane need not name a port).
uint16_t GrpcPortOf(const std::string& target) {
  absl::StatusOr<internal::ServerTarget> parsed =
      internal::ParseServerTarget(target);
  if (!parsed.ok() || parsed->kind != internal::ServerTarget::Kind::kHost ||
      parsed->hosts.size() != 1) {
    return 0;
  }
  return parsed->hosts.front().port;
}

// How much of a pushed file is hashed before its pages are let go.
constexpr size_t kFileHashPieceBytes = size_t{4} << 20;

// AppendMemfd sends the bytes of a smaller step rather than its memfd
// (docs/PERFORMANCE.md, "Streams").
constexpr uint64_t kSmallestHandedOverStep = uint64_t{256} << 10;

// Connects one process to the server at `target`.
absl::StatusOr<std::unique_ptr<internal::Transports>> ConnectTransports(
    const std::string& target, const ClientOptions& options) {
  if (absl::Status usable = internal::CheckGrpcUsable(); !usable.ok()) {
    return Annotate(usable, absl::StrCat("connect to ", target));
  }
  // The TLS files are checked here first, with errors that name them.
  internal::LaneCredentials credentials{options.token, nullptr,
                                        options.share_memory};
  if (options.use_tls) {
    absl::StatusOr<std::shared_ptr<const internal::tls::Context>> tls =
        internal::tls::Context::ForClient(internal::TlsFilesOf(options));
    if (!tls.ok()) {
      return Annotate(tls.status(), absl::StrCat("connect to ", target));
    }
    credentials.tls = *std::move(tls);
  }
  auto made = std::make_unique<internal::Transports>();
  // On this host the lane is first looked for where the server puts it,
  // without a gRPC call: a lane that confirms it is this server's proves
  // the server is there, and the first push, fetch or read needs no gRPC
  // at all. Anywhere else, or if it does not confirm, gRPC is asked.
  std::shared_ptr<internal::DataLane> lane;
  if (options.use_data_lane) {
    lane = internal::DataLane::BesideTarget(target, credentials);
    const absl::Time deadline =
        absl::Now() + std::min(options.connect_timeout, kLaneLookTimeout);
    if (lane != nullptr &&
        !lane->ConfirmServer(GrpcPortOf(target), deadline).ok()) {
      lane = nullptr;
    }
  }
  absl::StatusOr<std::shared_ptr<internal::GrpcTransport>> grpc =
      lane != nullptr ? internal::GrpcTransport::Open(target, options)
                      : internal::GrpcTransport::Connect(target, options);
  if (!grpc.ok()) return grpc.status();
  made->grpc = *std::move(grpc);
  if (options.use_data_lane && lane == nullptr) {
    const ServerLimits& limits = made->grpc->limits_at_connect();
    lane = internal::DataLane::ForServer(
        target, static_cast<uint32_t>(limits.data_lane_port),
        limits.data_lane_unix_path, credentials);
  }
  made->images = std::make_unique<internal::LaneFallbackTransport>(
      target, options.connect_timeout, std::move(credentials), made->grpc,
      std::move(lane));
  return made;
}

}  // namespace

struct Client::Impl {
  Impl(std::string target_in, const ClientOptions& options_in,
       std::unique_ptr<internal::Transports> made)
      : target(std::move(target_in)), options(options_in) {
    per_process.emplace(std::move(made),
                        [this] { return ConnectTransports(target, options); });
  }
  Impl(std::string target_in, const ClientOptions& options_in,
       std::unique_ptr<internal::Cluster> cluster_in)
      : target(std::move(target_in)),
        options(options_in),
        cluster(std::move(cluster_in)) {}

  // The calling process's transports (in a child of fork(), its own).
  // Not for a cluster, whose members are Clients of their own.
  absl::StatusOr<internal::Transports*> transports() {
    return per_process->ForThisProcess();
  }

  const std::string target;
  const ClientOptions options;
  // One server's transports, or else the cluster.
  std::optional<internal::PerProcessTransports> per_process;
  std::unique_ptr<internal::Cluster> cluster;
  // The buffers BeginStep lends (Lend and Trim are thread-safe).
  internal::StepBufferPool step_buffers;

  // The deadlines of a call starting now that waits up to `wait` for an
  // image to appear (client.h, "Deadlines").
  internal::CallDeadline Deadline(
      absl::Duration wait = absl::ZeroDuration()) const {
    return internal::CallDeadline::Start(options.call_timeout, wait);
  }
};

absl::StatusOr<std::unique_ptr<Client>> Client::Connect(
    std::string_view target, const ClientOptions& options) {
  if (internal::IsClusterTarget(target)) {
    absl::StatusOr<internal::ClusterTarget> members =
        internal::ParseClusterTarget(target);
    if (!members.ok()) return members.status();
    absl::StatusOr<std::unique_ptr<internal::Cluster>> cluster =
        internal::Cluster::Connect(*std::move(members), options);
    if (!cluster.ok()) {
      return Annotate(cluster.status(),
                      absl::StrCat("connect to ", std::string(target)));
    }
    return std::unique_ptr<Client>(new Client(std::make_unique<Impl>(
        std::string(target), options, *std::move(cluster))));
  }
  if (absl::Status bad = internal::ValidateServerTarget(target); !bad.ok()) {
    return bad;
  }
  if (target.empty()) {
    return absl::InvalidArgumentError(
        "no server given: expected host:port or unix:/path/to/socket");
  }
  if (options.chunk_bytes == 0) {
    return absl::InvalidArgumentError("chunk size must be positive");
  }
  std::string target_copy(target);
  ClientOptions resolved = options;
  absl::StatusOr<std::string> token = internal::ResolveToken(options.token);
  if (!token.ok()) return token.status();
  resolved.token = *std::move(token);
  if (absl::Status tls = internal::ResolveTls(&resolved); !tls.ok()) {
    return Annotate(tls, absl::StrCat("connect to ", target_copy));
  }
  if (internal::TargetIsUnixSocket(target_copy)) resolved.use_tls = false;
  if (!resolved.token.empty() && !resolved.use_tls &&
      !internal::TargetIsOnThisHost(target_copy)) {
    return absl::FailedPreconditionError(absl::StrCat(
        "connect to ", target_copy,
        ": a token is only sent encrypted (TLS: ClientOptions::use_tls, "
        "H5DEPOT_TLS_CA_FILE) or to a server on this host (a Unix socket "
        "or a loopback address); this target may be elsewhere"));
  }
  absl::StatusOr<std::unique_ptr<internal::Transports>> made =
      ConnectTransports(target_copy, resolved);
  if (!made.ok()) return made.status();
  return std::unique_ptr<Client>(new Client(std::make_unique<Impl>(
      std::move(target_copy), resolved, *std::move(made))));
}

Client::Client(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}

Client::~Client() = default;

const std::string& Client::target() const { return impl_->target; }

absl::StatusOr<ImageInfo> Client::Push(std::string_view image_id,
                                       const void* data, size_t size,
                                       const PushOptions& options) {
  internal::PushBytes bytes;
  bytes.data = static_cast<const uint8_t*>(data);
  bytes.size = size;
  return PushBytesAs(image_id, bytes, options);
}

absl::StatusOr<ImageInfo> Client::PushFile(std::string_view image_id,
                                           const std::string& path,
                                           const PushOptions& options) {
  absl::StatusOr<internal::MappedFile> file = internal::MappedFile::Open(path);
  if (!file.ok()) return Annotated<ImageInfo>(file.status(), "push", image_id);
  // What has been hashed or sent is not needed again (until a retry reads
  // it from the file anew): the process holds about a piece of the file at
  // a time, however large it is.
  internal::PushBytes bytes;
  bytes.data = static_cast<const uint8_t*>(file->data());
  bytes.size = file->size();
  bytes.checksum = [&file] {
    internal::StreamingChecksum checksum(file->size());
    const auto* data = static_cast<const uint8_t*>(file->data());
    for (size_t done = 0; done < file->size();) {
      const size_t n = std::min(kFileHashPieceBytes, file->size() - done);
      checksum.Update(data + done, n);
      file->Release(done, done + n);
      done += n;
    }
    return checksum.Digest();
  };
  PushOptions releasing = options;
  size_t released = 0;
  releasing.progress = [&](uint64_t sent, uint64_t total) {
    file->Release(released, static_cast<size_t>(sent));
    released = static_cast<size_t>(sent);
    if (options.progress) options.progress(sent, total);
  };
  return PushBytesAs(image_id, bytes, releasing);
}

absl::StatusOr<ImageInfo> Client::PushBytesAs(std::string_view image_id,
                                              const internal::PushBytes& bytes,
                                              const PushOptions& options) {
  if (absl::Status status = internal::ValidateImageId(image_id); !status.ok()) {
    return Annotated<ImageInfo>(status, "push", image_id);
  }
  if (bytes.data == nullptr && bytes.size > 0) {
    return Annotated<ImageInfo>(absl::InvalidArgumentError("no data"), "push",
                                image_id);
  }
  if (impl_->cluster != nullptr) {
    return Annotated(
        impl_->cluster->Push(
            image_id, options,
            [&](Client& member, const PushOptions& member_options) {
              return member.Push(image_id, bytes.data, bytes.size,
                                 member_options);
            }),
        "push", image_id);
  }
  absl::StatusOr<internal::Transports*> transports = impl_->transports();
  if (!transports.ok()) {
    return Annotated<ImageInfo>(transports.status(), "push", image_id);
  }
  return Annotated((*transports)
                       ->images->Push(image_id, bytes, options,
                                      impl_->Deadline().Whole(bytes.size)),
                   "push", image_id);
}

absl::StatusOr<ImageInfo> Client::PushMemfd(std::string_view image_id,
                                            int memfd, uint64_t size,
                                            const PushOptions& options) {
  if (absl::Status status = internal::ValidateImageId(image_id); !status.ok()) {
    return Annotated<ImageInfo>(status, "push", image_id);
  }
  if (absl::StatusOr<uint64_t> length =
          internal::CheckSealedImage(memfd, internal::kSealsFromClient, size);
      !length.ok()) {
    return Annotated<ImageInfo>(length.status(), "push", image_id);
  }
  if (impl_->cluster != nullptr) {
    return Annotated(
        impl_->cluster->Push(
            image_id, options,
            [&](Client& member, const PushOptions& member_options) {
              return member.PushMemfd(image_id, memfd, size, member_options);
            }),
        "push", image_id);
  }
  absl::StatusOr<internal::Transports*> transports = impl_->transports();
  if (!transports.ok()) {
    return Annotated<ImageInfo>(transports.status(), "push", image_id);
  }
  absl::StatusOr<ImageInfo> pushed =
      (*transports)
          ->images->PushSealed(image_id, memfd, size, options,
                               impl_->Deadline().Whole(0),
                               /*stream_append=*/false);
  if (!absl::IsUnimplemented(pushed.status())) {
    return Annotated(std::move(pushed), "push", image_id);
  }
  // No descriptor can pass: the bytes, straight from a mapping.
  if (size == 0) return Push(image_id, nullptr, 0, options);
  absl::StatusOr<internal::Mapping> mapping =
      internal::Mapping::Map(memfd, size, internal::Mapping::Access::kReadOnly);
  if (!mapping.ok()) {
    return Annotated<ImageInfo>(mapping.status(), "push", image_id);
  }
  return Push(image_id, mapping->data(), size, options);
}

absl::StatusOr<ImageInfo> Client::FetchTo(std::string_view image_id,
                                          const ImageSink& sink,
                                          const FetchOptions& options) {
  return FetchToSink(image_id, internal::FetchSink{sink}, options);
}

absl::StatusOr<ImageInfo> Client::FetchToDescriptor(
    std::string_view image_id, int fd, const FetchOptions& options) {
  struct stat st;
  const bool is_pipe = fstat(fd, &st) == 0 && S_ISFIFO(st.st_mode);
  const internal::FetchSink sink{[fd](const void* data, size_t size) {
                                   return WriteToDescriptor(fd, data, size);
                                 },
                                 is_pipe ? fd : -1};
  return FetchToSink(image_id, sink, options);
}

absl::StatusOr<ImageInfo> Client::FetchToSink(std::string_view image_id,
                                              const internal::FetchSink& sink,
                                              const FetchOptions& options) {
  if (absl::Status status = internal::ValidateReadableId(image_id);
      !status.ok()) {
    return Annotated<ImageInfo>(status, "fetch", image_id);
  }
  if (options.only_if_mapped) {
    return Annotated<ImageInfo>(
        absl::InvalidArgumentError(
            "a streamed fetch hands over bytes, never a mapping"),
        "fetch", image_id);
  }
  absl::StatusOr<ImageInfo> info;
  if (impl_->cluster != nullptr) {
    info = impl_->cluster->FetchTo(image_id, sink.write, options);
  } else {
    absl::StatusOr<internal::Transports*> transports = impl_->transports();
    if (!transports.ok()) {
      return Annotated<ImageInfo>(transports.status(), "fetch", image_id);
    }
    info = (*transports)
               ->images->FetchTo(image_id, options,
                                 impl_->Deadline(options.wait), sink);
  }
  if (info.ok()) {
    if (absl::Status newer = CheckNewerThan(*info, options.newer_than);
        !newer.ok()) {
      info = newer;
    }
  }
  return Annotated(std::move(info), "fetch", image_id);
}

absl::StatusOr<FetchedImage> Client::Fetch(std::string_view image_id,
                                           const FetchOptions& options) {
  // Checked here, not only by the server, so that both transports refuse a
  // bad id alike, and so that an id too long for the data lane's header is
  // never cut short into another image's id.
  if (absl::Status status = internal::ValidateReadableId(image_id);
      !status.ok()) {
    return Annotated<FetchedImage>(status, "fetch", image_id);
  }
  absl::StatusOr<FetchedImage> fetched;
  if (impl_->cluster != nullptr) {
    fetched = impl_->cluster->Fetch(image_id, options);
  } else {
    absl::StatusOr<internal::Transports*> transports = impl_->transports();
    if (!transports.ok()) {
      return Annotated<FetchedImage>(transports.status(), "fetch", image_id);
    }
    fetched =
        (*transports)
            ->images->Fetch(image_id, options, impl_->Deadline(options.wait));
  }
  if (fetched.ok()) {
    if (absl::Status newer = CheckNewerThan(fetched->info, options.newer_than);
        !newer.ok()) {
      fetched = newer;
    }
  }
  return Annotated(std::move(fetched), "fetch", image_id);
}

absl::StatusOr<ReadResult> Client::Read(std::string_view image_id,
                                        uint64_t generation, uint64_t offset,
                                        void* out, size_t length) {
  if (impl_->cluster != nullptr) {
    return Annotated(
        impl_->cluster->Read(image_id, generation, offset, out, length), "read",
        image_id);
  }
  absl::StatusOr<internal::Transports*> transports = impl_->transports();
  if (!transports.ok()) {
    return Annotated<ReadResult>(transports.status(), "read", image_id);
  }
  return Annotated((*transports)
                       ->images->Read(image_id, generation, offset, out, length,
                                      impl_->Deadline().Whole(length)),
                   "read", image_id);
}

absl::StatusOr<std::unique_ptr<ImageReader>> Client::OpenReader(
    std::string_view image_id, uint64_t generation) {
  if (impl_->cluster != nullptr) {
    return Annotated(impl_->cluster->OpenReader(image_id, generation),
                     "open reader on", image_id);
  }
  absl::StatusOr<internal::Transports*> transports = impl_->transports();
  if (!transports.ok()) {
    return Annotate(transports.status(),
                    absl::StrCat("open reader on ", Quoted(image_id)));
  }
  internal::Transports& made = **transports;
  const absl::Time open_deadline = impl_->Deadline().reply;
  // Pinned on the lane if it can, where the reads go too: one connection,
  // no gRPC call.
  absl::StatusOr<std::unique_ptr<ImageReader>> reader =
      made.images->OpenPinnedReader(image_id, generation, open_deadline,
                                    impl_->options.call_timeout, made.images);
  if (absl::IsUnimplemented(reader.status()) ||
      absl::IsUnavailable(reader.status())) {
    // Over gRPC (the lane is absent, down, or does not pin).
    reader = made.grpc->OpenReader(image_id, generation, open_deadline,
                                   impl_->options.call_timeout, made.images);
  }
  if (!reader.ok())
    return Annotated(std::move(reader), "open reader on", image_id);
  return internal::BindReaderToThisProcess(*std::move(reader));
}

absl::StatusOr<ImageInfo> Client::Stat(std::string_view image_id,
                                       absl::Duration wait,
                                       uint64_t newer_than) {
  absl::StatusOr<ImageInfo> info;
  if (impl_->cluster != nullptr) {
    info = impl_->cluster->Stat(image_id, wait, newer_than);
  } else {
    absl::StatusOr<internal::Transports*> transports = impl_->transports();
    if (!transports.ok()) {
      return Annotated<ImageInfo>(transports.status(), "stat", image_id);
    }
    info = (*transports)
               ->grpc->Stat(image_id, wait, newer_than,
                            impl_->Deadline(wait).reply);
  }
  if (info.ok()) {
    if (absl::Status newer = CheckNewerThan(*info, newer_than); !newer.ok()) {
      info = newer;
    }
  }
  return Annotated(std::move(info), "stat", image_id);
}

absl::StatusOr<ListPage> Client::List(const ListOptions& options) {
  if (impl_->cluster != nullptr) {
    absl::StatusOr<ListPage> page = impl_->cluster->List(options);
    if (!page.ok()) return Annotate(page.status(), "list");
    return page;
  }
  absl::StatusOr<internal::Transports*> transports = impl_->transports();
  if (!transports.ok()) return Annotate(transports.status(), "list");
  absl::StatusOr<ListPage> page =
      (*transports)->grpc->List(options, impl_->Deadline().reply);
  if (!page.ok()) return Annotate(page.status(), "list");
  return page;
}

absl::Status Client::Delete(std::string_view image_id,
                            std::optional<uint64_t> if_generation_match) {
  if (impl_->cluster != nullptr) {
    return Annotate(impl_->cluster->Delete(image_id, if_generation_match),
                    absl::StrCat("delete ", Quoted(image_id)));
  }
  absl::StatusOr<internal::Transports*> transports = impl_->transports();
  return Annotate(transports.ok()
                      ? (*transports)
                            ->grpc->Delete(image_id, if_generation_match,
                                           impl_->Deadline().reply)
                      : transports.status(),
                  absl::StrCat("delete ", Quoted(image_id)));
}

absl::StatusOr<RebalanceReport> Client::Rebalance(
    const RebalanceOptions& options) {
  if (impl_->cluster == nullptr) {
    return absl::FailedPreconditionError(
        absl::StrCat("rebalance: ", impl_->target,
                     " is one server; rebalancing is for a cluster target"));
  }
  absl::StatusOr<RebalanceReport> report = impl_->cluster->Rebalance(options);
  if (!report.ok()) return Annotate(report.status(), "rebalance");
  return report;
}

const char* ImageEventKindName(ImageEvent::Kind kind) {
  switch (kind) {
    case ImageEvent::Kind::kPublished:
      return "published";
    case ImageEvent::Kind::kReplaced:
      return "replaced";
    case ImageEvent::Kind::kDeleted:
      return "deleted";
    case ImageEvent::Kind::kExpired:
      return "expired";
    case ImageEvent::Kind::kEvicted:
      return "evicted";
    case ImageEvent::Kind::kLost:
      return "lost";
  }
  return "unknown";
}

absl::StatusOr<std::unique_ptr<ImageWatch>> Client::Watch(
    const WatchOptions& options) {
  const std::string what = absl::StrCat("watch ", Quoted(options.prefix));
  if (impl_->cluster != nullptr) {
    absl::StatusOr<std::unique_ptr<ImageWatch>> watch =
        impl_->cluster->Watch(options);
    if (!watch.ok()) return Annotate(watch.status(), what);
    return watch;
  }
  absl::StatusOr<internal::Transports*> transports = impl_->transports();
  if (!transports.ok()) return Annotate(transports.status(), what);
  absl::StatusOr<std::unique_ptr<ImageWatch>> watch =
      (*transports)->grpc->Watch(options, impl_->Deadline().reply);
  if (!watch.ok()) return Annotate(watch.status(), what);
  return watch;
}

absl::StatusOr<ServerLimits> Client::GetLimits() {
  if (impl_->cluster != nullptr) {
    absl::StatusOr<ServerLimits> limits = impl_->cluster->GetLimits();
    if (!limits.ok()) return Annotate(limits.status(), "get limits");
    return limits;
  }
  absl::StatusOr<internal::Transports*> transports = impl_->transports();
  if (!transports.ok()) return Annotate(transports.status(), "get limits");
  absl::StatusOr<ServerLimits> limits =
      (*transports)->grpc->GetLimits(impl_->Deadline().reply);
  if (!limits.ok()) return Annotate(limits.status(), "get limits");
  return limits;
}

namespace {}  // namespace

std::string Client::ConsumerName(std::string_view asked) const {
  if (!asked.empty()) return std::string(asked);
  // Unique per Client and per process: a child of fork() is a member of
  // its own.
  char host[256] = {};
  if (gethostname(host, sizeof(host) - 1) != 0) host[0] = '\0';
  return absl::StrCat(host, "-", getpid(), "-",
                      absl::Hex(reinterpret_cast<uintptr_t>(impl_.get())));
}

absl::StatusOr<StreamInfo> Client::CreateStream(std::string_view stream,
                                                const StreamPolicy& policy) {
  const std::string what = absl::StrCat("create stream ", Quoted(stream));
  if (impl_->cluster != nullptr) {
    std::optional<StreamInfo> info;  // the acting primary's
    const absl::Status created =
        impl_->cluster->OnStreamCopies(stream, [&](Client& member) {
          absl::StatusOr<StreamInfo> answer =
              member.CreateStream(stream, policy);
          if (answer.ok() && !info.has_value()) info = *answer;
          return answer.status();
        });
    if (!created.ok()) return Annotate(created, what);
    return *std::move(info);
  }
  if (absl::Status status = internal::ValidateImageId(stream); !status.ok()) {
    return Annotate(status, what);
  }
  absl::StatusOr<internal::Transports*> transports = impl_->transports();
  if (!transports.ok()) return Annotate(transports.status(), what);
  absl::StatusOr<StreamInfo> info =
      (*transports)
          ->grpc->CreateStream(stream, policy, impl_->Deadline().reply);
  if (!info.ok()) return Annotate(info.status(), what);
  return info;
}

absl::StatusOr<AppendedStep> Client::Append(std::string_view stream,
                                            const void* data, size_t size,
                                            const AppendOptions& options) {
  internal::PushBytes bytes;
  bytes.data = static_cast<const uint8_t*>(data);
  bytes.size = size;
  return AppendBytes(stream, bytes, options);
}

absl::StatusOr<AppendedStep> Client::AppendFile(std::string_view stream,
                                                const std::string& path,
                                                const AppendOptions& options) {
  absl::StatusOr<internal::MappedFile> file = internal::MappedFile::Open(path);
  if (!file.ok()) {
    return Annotate(file.status(),
                    absl::StrCat("append to stream ", Quoted(stream)));
  }
  internal::PushBytes bytes;
  bytes.data = static_cast<const uint8_t*>(file->data());
  bytes.size = file->size();
  return AppendBytes(stream, bytes, options);
}

absl::StatusOr<AppendedStep> Client::AppendMemfd(std::string_view stream,
                                                 int memfd, uint64_t size,
                                                 const AppendOptions& options) {
  const std::string what = absl::StrCat("append to stream ", Quoted(stream));
  if (impl_->cluster != nullptr) {
    absl::StatusOr<AppendedStep> appended = impl_->cluster->StreamAppend(
        stream, options,
        [&](Client& member, const AppendOptions& member_options) {
          return member.AppendMemfd(stream, memfd, size, member_options);
        });
    if (!appended.ok()) return Annotate(appended.status(), what);
    return appended;
  }
  if (absl::Status status = internal::ValidateImageId(stream); !status.ok()) {
    return Annotate(status, what);
  }
  if (absl::StatusOr<uint64_t> length =
          internal::CheckSealedImage(memfd, internal::kSealsFromClient, size);
      !length.ok()) {
    return Annotate(length.status(), what);
  }
  absl::StatusOr<internal::Transports*> transports = impl_->transports();
  if (!transports.ok()) return Annotate(transports.status(), what);
  internal::ImageTransport& images = *(*transports)->images;
  // A small step is cheaper to send than to hand over: mapping a memfd,
  // and unmapping it once read, costs the server more than the copy.
  absl::StatusOr<ImageInfo> handed =
      size < kSmallestHandedOverStep || options.replica_step.has_value()
          ? absl::UnimplementedError("sent as bytes")
          : images.PushSealed(stream, memfd, size, PushOptions{},
                              impl_->Deadline().Whole(0),
                              /*stream_append=*/true);
  if (absl::IsUnimplemented(handed.status())) {
    // No descriptor can pass, or none is worth it: the bytes, straight
    // from a mapping.
    absl::StatusOr<internal::Mapping> mapping = internal::Mapping::Map(
        memfd, size, internal::Mapping::Access::kReadOnly);
    if (!mapping.ok()) return Annotate(mapping.status(), what);
    internal::PushBytes bytes;
    bytes.data = static_cast<const uint8_t*>(mapping->data());
    bytes.size = size;
    return AppendBytes(stream, bytes, options);
  }
  bool first = true;
  return AppendWithRoom(stream, size, options, [&]() {
    if (std::exchange(first, false)) return handed;
    return images.PushSealed(stream, memfd, size, PushOptions{},
                             impl_->Deadline().Whole(0),
                             /*stream_append=*/true);
  });
}

absl::StatusOr<AppendedStep> Client::AppendBytes(std::string_view stream,
                                                 internal::PushBytes bytes,
                                                 const AppendOptions& options) {
  const std::string what = absl::StrCat("append to stream ", Quoted(stream));
  if (impl_->cluster != nullptr) {
    absl::StatusOr<AppendedStep> appended = impl_->cluster->StreamAppend(
        stream, options,
        [&](Client& member, const AppendOptions& member_options) {
          return member.AppendBytes(stream, bytes, member_options);
        });
    if (!appended.ok()) return Annotate(appended.status(), what);
    return appended;
  }
  if (absl::Status status = internal::ValidateImageId(stream); !status.ok()) {
    return Annotate(status, what);
  }
  if (bytes.data == nullptr && bytes.size > 0) {
    return Annotate(absl::InvalidArgumentError("no data"), what);
  }
  absl::StatusOr<internal::Transports*> transports = impl_->transports();
  if (!transports.ok()) return Annotate(transports.status(), what);
  internal::ImageTransport& images = *(*transports)->images;
  bytes.stream_append = true;
  // Hashed at most once, for every attempt, and only if a transport asks
  // (the data lane hashes as it sends).
  auto checksum = std::make_shared<std::optional<uint64_t>>();
  bytes.checksum = [checksum, unhashed = bytes] {
    if (!checksum->has_value()) *checksum = unhashed.Checksum();
    return **checksum;
  };
  if (options.replica_step.has_value()) {
    bytes.replica_step = options.replica_step;
    absl::StatusOr<ImageInfo> copied =
        (*transports)
            ->grpc->Push(stream, bytes, PushOptions{},
                         impl_->Deadline().Whole(bytes.size));
    if (!copied.ok()) return Annotate(copied.status(), what);
    return AppendedStep{*options.replica_step, *std::move(copied)};
  }
  return AppendWithRoom(stream, bytes.size, options, [&]() {
    return images.Push(stream, bytes, PushOptions{},
                       impl_->Deadline().Whole(bytes.size));
  });
}

absl::StatusOr<AppendedStep> Client::AppendWithRoom(
    std::string_view stream, uint64_t size, const AppendOptions& options,
    const std::function<absl::StatusOr<ImageInfo>()>& push_once) {
  const std::string what = absl::StrCat("append to stream ", Quoted(stream));
  absl::StatusOr<internal::Transports*> transports = impl_->transports();
  if (!transports.ok()) return Annotate(transports.status(), what);
  internal::GrpcTransport& grpc = *(*transports)->grpc;
  const absl::Time room_deadline = absl::Now() + options.wait_for_room;
  // A full stream whose policy is to block refuses the append before any
  // data moves; the writer then waits for room and tries again. Room
  // found at once, again and again, means the refusal was not the
  // queue's (the server's memory, the principal's quota): that is the
  // answer. (Once may be readers freeing room in between.)
  constexpr int kMaxRetriesWithRoom = 3;
  int retries_with_room = 0;
  for (;;) {
    absl::StatusOr<ImageInfo> pushed = push_once();
    if (pushed.ok()) {
      AppendedStep appended;
      std::string_view name;
      if (!internal::ParseStreamStepId(pushed->image_id, &name,
                                       &appended.step)) {
        return Annotate(
            absl::InternalError(absl::StrCat(
                "the server answered with ", Quoted(pushed->image_id),
                ", not a step id: it does not know streams")),
            what);
      }
      appended.info = *std::move(pushed);
      return appended;
    }
    if (!absl::IsResourceExhausted(pushed.status())) {
      return Annotate(pushed.status(), what);
    }
    const absl::Duration wait =
        std::max(room_deadline - absl::Now(), absl::ZeroDuration());
    bool waited = false;
    absl::Status room = grpc.AwaitStreamRoom(
        stream, size, wait, impl_->Deadline(wait).reply, &waited);
    retries_with_room = room.ok() && !waited ? retries_with_room + 1 : 0;
    if (absl::IsResourceExhausted(room) ||
        retries_with_room > kMaxRetriesWithRoom) {
      return Annotate(pushed.status(), what);
    }
    if (!room.ok()) return Annotate(room, what);
  }
}

StepBuffer::StepBuffer() = default;

StepBuffer::~StepBuffer() {
  if (slot_ != nullptr) slot_->lent.store(false);
}

StepBuffer::StepBuffer(StepBuffer&& other) noexcept
    : stream_(std::move(other.stream_)),
      size_(std::exchange(other.size_, 0)),
      slot_(std::move(other.slot_)),
      lender_(std::exchange(other.lender_, nullptr)) {}

StepBuffer& StepBuffer::operator=(StepBuffer&& other) noexcept {
  if (this != &other) {
    if (slot_ != nullptr) slot_->lent.store(false);
    stream_ = std::move(other.stream_);
    size_ = std::exchange(other.size_, 0);
    slot_ = std::move(other.slot_);
    lender_ = std::exchange(other.lender_, nullptr);
  }
  return *this;
}

void* StepBuffer::data() const {
  return slot_ == nullptr ? nullptr : slot_->mapping.data();
}

absl::StatusOr<StepBuffer> Client::BeginStep(std::string_view stream,
                                             size_t size,
                                             const AppendOptions& options) {
  const std::string what =
      absl::StrCat("begin a step of stream ", Quoted(stream));
  if (absl::Status status = internal::ValidateImageId(stream); !status.ok()) {
    return Annotate(status, what);
  }
  if (size == 0) {
    return Annotate(absl::InvalidArgumentError("a step of 0 bytes"), what);
  }
  absl::StatusOr<std::shared_ptr<internal::StepBufferSlot>> slot =
      impl_->step_buffers.Lend(size, absl::Now() + options.wait_for_room);
  if (!slot.ok()) return Annotate(slot.status(), what);
  StepBuffer buffer;
  buffer.stream_ = std::string(stream);
  buffer.size_ = size;
  buffer.slot_ = *std::move(slot);
  buffer.lender_ = impl_.get();
  return buffer;
}

absl::StatusOr<AppendedStep> Client::CommitStep(StepBuffer buffer,
                                                const AppendOptions& options) {
  const std::string what =
      absl::StrCat("commit a step to stream ", Quoted(buffer.stream_));
  if (buffer.slot_ == nullptr) {
    return Annotate(absl::InvalidArgumentError(
                        "an empty step buffer (moved from, or never lent)"),
                    what);
  }
  if (buffer.lender_ != impl_.get()) {
    return Annotate(absl::InvalidArgumentError(
                        "a step buffer another Client lent: commit it there"),
                    what);
  }
  // `buffer` goes back to the pool as this call returns; the pool lends it
  // again only once every holder of the step closed its release pipe.
  internal::StepBufferSlot& slot = *buffer.slot_;
  const std::string& stream = buffer.stream_;
  internal::PushBytes bytes;
  bytes.data = static_cast<const uint8_t*>(slot.mapping.data());
  bytes.size = buffer.size_;
  // A small step is cheaper to send than to hand over (as AppendMemfd's);
  // a cluster's and a replica's steps go as bytes.
  if (impl_->cluster != nullptr || bytes.size < kSmallestHandedOverStep ||
      options.replica_step.has_value()) {
    return AppendBytes(stream, bytes, options);
  }
  absl::StatusOr<internal::Transports*> transports = impl_->transports();
  if (!transports.ok()) return Annotate(transports.status(), what);
  internal::ImageTransport& images = *(*transports)->images;
  auto hand_over = [&]() -> absl::StatusOr<ImageInfo> {
    // A pipe of its own for each attempt: a refused one is closed by the
    // server at once, so only the taken one keeps the buffer held.
    absl::StatusOr<internal::UniqueFd> release_signal =
        impl_->step_buffers.NewHolder(slot);
    if (!release_signal.ok()) return release_signal.status();
    return images.PushSealed(stream, slot.memfd.get(), bytes.size,
                             PushOptions{}, impl_->Deadline().Whole(0),
                             /*stream_append=*/true, release_signal->get());
  };
  absl::StatusOr<ImageInfo> handed = hand_over();
  if (absl::IsUnimplemented(handed.status())) {
    // No descriptor can pass (another host, TLS, a server without step
    // buffers): the bytes, as Append sends them.
    return AppendBytes(stream, bytes, options);
  }
  bool first = true;
  return AppendWithRoom(stream, bytes.size, options, [&]() {
    if (std::exchange(first, false)) return handed;
    return hand_over();
  });
}

absl::StatusOr<StreamInfo> Client::FinishStream(std::string_view stream) {
  const std::string what = absl::StrCat("finish stream ", Quoted(stream));
  impl_->step_buffers.Trim();
  if (impl_->cluster != nullptr) {
    std::optional<StreamInfo> info;  // the acting primary's
    const absl::Status finished =
        impl_->cluster->OnStreamCopies(stream, [&](Client& member) {
          absl::StatusOr<StreamInfo> answer = member.FinishStream(stream);
          if (answer.ok() && !info.has_value()) info = *answer;
          return answer.status();
        });
    if (!finished.ok()) return Annotate(finished, what);
    return *std::move(info);
  }
  absl::StatusOr<internal::Transports*> transports = impl_->transports();
  if (!transports.ok()) return Annotate(transports.status(), what);
  absl::StatusOr<StreamInfo> info =
      (*transports)->grpc->FinishStream(stream, impl_->Deadline().reply);
  if (!info.ok()) return Annotate(info.status(), what);
  return info;
}

absl::StatusOr<StreamInfo> Client::StatStream(std::string_view stream) {
  const std::string what = absl::StrCat("stat stream ", Quoted(stream));
  if (impl_->cluster != nullptr) {
    absl::StatusOr<StreamInfo> info = impl_->cluster->StreamStat(
        stream, [&](Client& member) { return member.StatStream(stream); });
    if (!info.ok()) return Annotate(info.status(), what);
    return info;
  }
  absl::StatusOr<internal::Transports*> transports = impl_->transports();
  if (!transports.ok()) return Annotate(transports.status(), what);
  absl::StatusOr<StreamInfo> info =
      (*transports)->grpc->StatStream(stream, impl_->Deadline().reply);
  if (!info.ok()) return Annotate(info.status(), what);
  return info;
}

absl::Status Client::DeleteStream(std::string_view stream) {
  return DeleteStreamOrGroup(stream, "");
}

absl::Status Client::DeleteStreamGroup(std::string_view stream,
                                       std::string_view group) {
  if (group.empty()) {
    return absl::InvalidArgumentError(
        absl::StrCat("delete a reader group of stream ", Quoted(stream),
                     ": the group's name is empty"));
  }
  return DeleteStreamOrGroup(stream, group);
}

absl::Status Client::DeleteStreamOrGroup(std::string_view stream,
                                         std::string_view group) {
  const std::string what =
      group.empty() ? absl::StrCat("delete stream ", Quoted(stream))
                    : absl::StrCat("delete reader group ", Quoted(group),
                                   " of stream ", Quoted(stream));
  if (impl_->cluster != nullptr) {
    return Annotate(impl_->cluster->OnStreamCopies(
                        stream,
                        [&](Client& member) {
                          return member.DeleteStreamOrGroup(stream, group);
                        },
                        /*any_suffices=*/true),
                    what);
  }
  absl::StatusOr<internal::Transports*> transports = impl_->transports();
  if (!transports.ok()) return Annotate(transports.status(), what);
  absl::Status deleted =
      (*transports)->grpc->DeleteStream(stream, group, impl_->Deadline().reply);
  if (!deleted.ok()) return Annotate(deleted, what);
  return absl::OkStatus();
}

absl::StatusOr<StreamStep> Client::Next(std::string_view stream,
                                        std::string_view group,
                                        const NextOptions& options) {
  const std::string what = absl::StrCat("next step of stream ", Quoted(stream),
                                        " for group ", Quoted(group));
  if (impl_->cluster != nullptr) {
    // The member's own consumer name, which its Ack uses alike.
    absl::StatusOr<StreamStep> step =
        impl_->cluster->StreamNext(stream, group, options);
    if (!step.ok()) return Annotate(step.status(), what);
    return step;
  }
  if (absl::Status status = internal::ValidateImageId(stream); !status.ok()) {
    return Annotate(status, what);
  }
  absl::StatusOr<internal::Transports*> transports = impl_->transports();
  if (!transports.ok()) return Annotate(transports.status(), what);
  const std::string consumer = ConsumerName(options.consumer);
  const internal::CallDeadline deadline = impl_->Deadline(options.wait);
  const absl::Time wait_until = absl::Now() + options.wait;
  std::vector<StepRange> lost;
  NextOptions asked = options;
  for (;;) {
    asked.wait = std::max(wait_until - absl::Now(), absl::ZeroDuration());
    // On the data lane where its server takes NEXT, else over gRPC.
    absl::StatusOr<internal::LeasedStep> leased =
        (*transports)
            ->images->NextStep(stream, group, consumer, asked, deadline.reply);
    if (absl::IsUnimplemented(leased.status())) {
      leased =
          (*transports)
              ->grpc->NextStep(stream, group, consumer, asked, deadline.reply);
    }
    if (!leased.ok()) return Annotate(leased.status(), what);
    lost.insert(lost.end(), leased->lost.begin(), leased->lost.end());
    asked.ack_step.reset();  // acknowledged once, even if this one is lost
    // A small step came with the answer; a larger one comes as a fetch
    // does (mapped on the server's host).
    absl::StatusOr<FetchedImage> fetched;
    if (leased->bytes.has_value()) {
      fetched = FetchedImage{leased->info, *std::move(leased->bytes)};
    } else {
      fetched = (*transports)
                    ->images->Fetch(leased->info.image_id, FetchOptions{},
                                    impl_->Deadline());
    }
    if (fetched.ok()) {
      StreamStep step;
      step.step = leased->step;
      step.image = *std::move(fetched);
      step.lost = std::move(lost);
      step.consumer = consumer;
      return step;
    }
    if (!absl::IsNotFound(fetched.status())) {
      return Annotate(fetched.status(), what);
    }
    // Discarded (discard-oldest) between the lease and the fetch: lost to
    // this member, which lets go of it and takes the next.
    (*transports)
        ->grpc
        ->AckStep(stream, group, consumer, leased->step,
                  impl_->Deadline().reply)
        .IgnoreError();
    if (!lost.empty() && lost.back().last + 1 == leased->step) {
      lost.back().last = leased->step;
    } else {
      lost.push_back(StepRange{leased->step, leased->step});
    }
  }
}

absl::Status Client::Ack(std::string_view stream, std::string_view group,
                         uint64_t step, std::string_view consumer) {
  const std::string what =
      absl::StrCat("acknowledge step ", step, " of stream ", Quoted(stream));
  if (impl_->cluster != nullptr) {
    return Annotate(impl_->cluster->StreamAck(stream, group, step, consumer),
                    what);
  }
  absl::StatusOr<internal::Transports*> transports = impl_->transports();
  if (!transports.ok()) return Annotate(transports.status(), what);
  return Annotate((*transports)
                      ->grpc->AckStep(stream, group, ConsumerName(consumer),
                                      step, impl_->Deadline().reply),
                  what);
}

absl::Status Client::AckCopy(std::string_view stream, std::string_view group,
                             uint64_t step) {
  absl::StatusOr<internal::Transports*> transports = impl_->transports();
  if (!transports.ok()) return transports.status();
  return (*transports)
      ->grpc->AckStep(stream, group, "", step, impl_->Deadline().reply,
                      /*copy=*/true);
}

}  // namespace h5depot
