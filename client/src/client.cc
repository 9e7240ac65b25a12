#include "h5depot/client.h"

#include <fcntl.h>
#include <grpcpp/generic/generic_stub.h>
#include <grpcpp/grpcpp.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <mutex>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/notification.h"
#include "client/src/lane_client_internal.h"
#include "h5depot/internal/checksum.h"
#include "h5depot/internal/huge_pages.h"
#include "h5depot/internal/image_id.h"
#include "h5depot/rpc/chunk_codec.h"
#include "h5depot/rpc/grpc_runtime.h"
#include "h5depot/rpc/grpc_status.h"
#include "h5depot/v1/depot.grpc.pb.h"

namespace h5depot {
namespace {

using internal::FromGrpcStatus;
using internal::ParseMessage;
using internal::SerializeMessage;

ImageInfo ToImageInfo(const v1::ImageInfo& info) {
  ImageInfo result;
  result.image_id = info.image_id();
  result.size = info.size();
  result.generation = info.generation();
  result.checksum = info.checksum();
  result.created = absl::FromUnixMicros(info.created_unix_micros());
  result.expires = info.expires_unix_micros() == 0
                       ? absl::InfiniteFuture()
                       : absl::FromUnixMicros(info.expires_unix_micros());
  return result;
}

uint64_t ToMillis(absl::Duration duration) {
  if (duration <= absl::ZeroDuration()) return 0;
  // A wait shorter than a millisecond still waits; an infinite one is capped
  // at about 35 years.
  return std::max<int64_t>(
      1, absl::ToInt64Milliseconds(std::min(duration, absl::Hours(300000))));
}

// Prefixes a failed call's message with what was being done, keeping the
// code, so that errors read "fetch 'x': no image 'x'".
absl::Status Annotate(const absl::Status& status, std::string_view what) {
  if (status.ok()) return status;
  return absl::Status(status.code(),
                      absl::StrCat(std::string(what), ": ",
                                   std::string(status.message().data(),
                                               status.message().size())));
}

std::string Quoted(std::string_view image_id) {
  return absl::StrCat("'", std::string(image_id), "'");
}

// One call through the generic stub, driven synchronously on a completion
// queue of its own (the model of gRPC's sync API), so that messages arrive
// as raw byte buffers: chunk payloads are then copied once, from the
// received slices straight to their destination. Each method waits for its
// operation to complete and returns whether the stream is still good.
//
// The call's initial metadata is corked: it leaves with the first message,
// which must therefore be written before anything is read.
class RawCall {
 public:
  // `context` must be fresh and outlive the call.
  RawCall(grpc::GenericStub* stub, grpc::ClientContext* context,
          const char* method)
      : context_(context) {
    context->set_initial_metadata_corked(true);
    stream_ = stub->PrepareCall(context, method, &queue_);
    // Corked, the start completes nothing: it joins the first write.
    stream_->StartCall(this);
  }

  ~RawCall() {
    stream_.reset();
    queue_.Shutdown();
    void* tag;
    bool ok;
    while (queue_.Next(&tag, &ok)) {
    }
  }
  RawCall(const RawCall&) = delete;
  RawCall& operator=(const RawCall&) = delete;

  bool Write(const grpc::ByteBuffer& message,
             grpc::WriteOptions options = grpc::WriteOptions()) {
    if (good_) {
      stream_->Write(message, options, this);
      good_ = Await();
    }
    return good_;
  }

  // Writes `message` and half-closes the stream in one go.
  bool WriteLast(const grpc::ByteBuffer& message) {
    if (good_) {
      stream_->WriteLast(message, grpc::WriteOptions(), this);
      good_ = Await();
    }
    return good_;
  }

  bool WritesDone() {
    if (good_) {
      stream_->WritesDone(this);
      good_ = Await();
    }
    return good_;
  }

  bool ReadInitialMetadata() {
    if (good_) {
      stream_->ReadInitialMetadata(this);
      good_ = Await();
    }
    return good_;
  }

  // False at the end of the stream or when it broke; Finish() says which.
  bool Read(grpc::ByteBuffer* message) {
    if (!good_) return false;
    stream_->Read(message, this);
    return Await();
  }

  // Ends the call early; Finish() then reports CANCELLED (or the error
  // that came first).
  void Cancel() { context_->TryCancel(); }

  absl::Status Finish() {
    grpc::Status status;
    stream_->Finish(&status, this);
    Await();
    return FromGrpcStatus(status);
  }

 private:
  bool Await() {
    void* tag = nullptr;
    bool ok = false;
    return queue_.Next(&tag, &ok) && ok;
  }

  grpc::ClientContext* const context_;
  grpc::CompletionQueue queue_;
  std::unique_ptr<grpc::GenericClientAsyncReaderWriter> stream_;
  bool good_ = true;
};

// Receives `expected` bytes of chunk messages (of type Response) from
// `call` into `out`.
template <typename Response>
absl::Status ReceiveRawChunks(RawCall* call, uint8_t* out, uint64_t expected,
                              const ProgressCallback& progress,
                              internal::StreamingChecksum* checksum) {
  uint64_t received = 0;
  grpc::ByteBuffer message;
  internal::ChunkPayload chunk;
  while (received < expected) {
    if (!call->Read(&message)) {
      return absl::UnavailableError(absl::StrCat(
          "the stream ended after ", received, " of ", expected, " bytes"));
    }
    const uint64_t left = expected - received;
    auto take = [&](const uint8_t* data, size_t size) {
      std::memcpy(out + received, data, size);
      if (checksum != nullptr) checksum->Update(out + received, size);
      received += size;
    };
    if (chunk.Parse(message)) {
      if (chunk.size() > left) {
        return absl::InternalError("the server sent more bytes than announced");
      }
      chunk.ForEachPiece([&](const uint8_t* data, size_t size) {
        take(data, size);
        return true;
      });
    } else {
      Response response;
      if (!ParseMessage(message, &response) || !response.has_chunk() ||
          response.chunk().size() > left) {
        return absl::InternalError("the server sent an unexpected message");
      }
      take(reinterpret_cast<const uint8_t*>(response.chunk().data()),
           response.chunk().size());
    }
    if (progress) progress(received, expected);
  }
  return absl::OkStatus();
}

// Reads the first message of a streamed response, which must carry the
// image's info.
template <typename Response>
absl::StatusOr<ImageInfo> ReceiveInfo(RawCall* call) {
  grpc::ByteBuffer message;
  Response response;
  if (!call->Read(&message)) {
    absl::Status status = call->Finish();
    if (status.ok()) status = absl::InternalError("no image info received");
    return status;
  }
  if (!ParseMessage(message, &response) || !response.has_info()) {
    call->Cancel();
    call->Finish().IgnoreError();
    return absl::InternalError("no image info received");
  }
  return ToImageInfo(response.info());
}

// A read-only mapping of a whole file, unmapped on destruction.
class MappedFile {
 public:
  static absl::StatusOr<MappedFile> Open(const std::string& path) {
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

  MappedFile() = default;
  MappedFile(MappedFile&& other) noexcept
      : data_(std::exchange(other.data_, nullptr)),
        size_(std::exchange(other.size_, 0)) {}
  MappedFile& operator=(MappedFile&&) = delete;
  ~MappedFile() {
    if (data_ != nullptr) munmap(data_, size_);
  }

  const void* data() const { return data_; }
  size_t size() const { return size_; }

 private:
  void* data_ = nullptr;
  size_t size_ = 0;
};

}  // namespace

struct Client::Impl {
  std::string target;
  ClientOptions options;
  std::shared_ptr<grpc::Channel> channel;
  std::unique_ptr<v1::Depot::Stub> stub;
  // Push, Fetch and Read, which move image bytes, go through this one.
  std::unique_ptr<grpc::GenericStub> generic_stub;
  uint64_t chunk_bytes = 0;

  // The server's data lane, if it offers one and options allow. A
  // std::mutex for the reason given at DataLane's.
  std::mutex lane_mutex;
  std::shared_ptr<internal::DataLane> lane;  // guarded by lane_mutex
  // After the lane could not be reached, calls use gRPC until then.
  absl::Time lane_retry_after = absl::InfinitePast();  // guarded, as lane

  // A data lane connection for one call, and its lane; both null when the
  // call is to go over gRPC.
  struct LaneCall {
    std::shared_ptr<internal::DataLane> lane;
    std::unique_ptr<internal::DataLane::Connection> connection;
  };
  LaneCall StartLaneCall(absl::Time deadline);

  // The deadline of a call starting now: the call timeout plus `extra`.
  absl::Time Deadline(absl::Duration extra = absl::ZeroDuration()) const {
    if (options.call_timeout == absl::InfiniteDuration()) {
      return absl::InfiniteFuture();
    }
    return absl::Now() + options.call_timeout + extra;
  }

  // Push with `bytes` borrowed until every copy of `lease` is gone.
  absl::StatusOr<ImageInfo> PushBorrowed(std::string_view image_id,
                                         const uint8_t* bytes, size_t size,
                                         const PushOptions& push_options,
                                         std::shared_ptr<const void> lease,
                                         absl::Time deadline);

  // A context ending at `deadline`, from Deadline(). Push and Fetch use it
  // so that time spent trying the data lane counts against the call's.
  static void SetDeadline(grpc::ClientContext* context, absl::Time deadline) {
    if (deadline != absl::InfiniteFuture()) {
      context->set_deadline(absl::ToChronoTime(deadline));
    }
  }

  // A context carrying the call timeout, if any, plus `extra` (for waits).
  void PrepareContext(grpc::ClientContext* context,
                      absl::Duration extra = absl::ZeroDuration()) const {
    if (options.call_timeout != absl::InfiniteDuration()) {
      context->set_deadline(
          absl::ToChronoTime(absl::Now() + options.call_timeout + extra));
    }
  }
};

Client::Impl::LaneCall Client::Impl::StartLaneCall(absl::Time deadline) {
  // How long calls use gRPC after the lane could not be reached.
  constexpr absl::Duration kLaneRetryInterval = absl::Seconds(30);
  // The lane is beside a server that just answered over gRPC: it answers
  // at once or not at all (a firewall dropping the port), and then the
  // call should fall back to gRPC without waiting out connect_timeout.
  constexpr absl::Duration kLaneConnectTimeout = absl::Seconds(2);
  std::shared_ptr<internal::DataLane> current;
  {
    std::lock_guard<std::mutex> lock(lane_mutex);
    if (lane == nullptr || absl::Now() < lane_retry_after) return {};
    current = lane;
  }
  const absl::Time connect_deadline = std::min(
      deadline,
      absl::Now() + std::min(options.connect_timeout, kLaneConnectTimeout));
  auto connection = current->Connect(connect_deadline);
  if (connection.ok()) return {current, *std::move(connection)};
  // A restarted server may have its lane elsewhere: ask where, once.
  grpc::ClientContext context;
  context.set_deadline(absl::ToChronoTime(connect_deadline));
  v1::ServerLimits limits;
  if (!stub->GetLimits(&context, v1::GetLimitsRequest(), &limits).ok()) {
    return {};  // the gRPC call will say what is wrong
  }
  std::shared_ptr<internal::DataLane> fresh = internal::DataLane::ForServer(
      target, limits.data_lane_port(), limits.data_lane_unix_path());
  if (fresh != nullptr) connection = fresh->Connect(connect_deadline);
  std::lock_guard<std::mutex> lock(lane_mutex);
  lane = fresh;
  if (fresh != nullptr && connection.ok()) {
    return {fresh, *std::move(connection)};
  }
  lane_retry_after = absl::Now() + kLaneRetryInterval;
  return {};
}

class GrpcImageReader final : public ImageReader {
 public:
  GrpcImageReader(std::unique_ptr<grpc::ClientContext> context,
                  std::unique_ptr<RawCall> call, ImageInfo info)
      : context_(std::move(context)),
        call_(std::move(call)),
        info_(std::move(info)) {}

  // Cancels rather than closing politely: a polite close waits for the
  // server's answer, which a stopped or unreachable server never gives.
  // Either way the server drops its pin on the generation.
  ~GrpcImageReader() override {
    context_->TryCancel();
    if (!broken_) call_->Finish().IgnoreError();  // else finished already
    call_.reset();                                // before the context it uses
  }

  const ImageInfo& info() const override { return info_; }

  absl::StatusOr<size_t> Read(uint64_t offset, void* out,
                              size_t length) override {
    if (broken_) {
      return absl::UnavailableError(
          absl::StrCat("reader of ", Quoted(info_.image_id),
                       " is unusable after an earlier failure"));
    }
    const uint64_t expected =
        offset >= info_.size ? 0
                             : std::min<uint64_t>(length, info_.size - offset);
    if (expected == 0) return 0;
    v1::ReaderRequest request;
    request.mutable_range()->set_offset(offset);
    request.mutable_range()->set_length(expected);
    absl::Status status;
    if (!call_->Write(SerializeMessage(request))) {
      status = absl::UnavailableError("the server closed the reader");
    } else {
      status = ReceiveRawChunks<v1::ReaderResponse>(
          call_.get(), static_cast<uint8_t*>(out), expected, nullptr, nullptr);
    }
    if (!status.ok()) {
      broken_ = true;
      context_->TryCancel();
      absl::Status final_status = call_->Finish();
      if (!final_status.ok() &&
          final_status.code() != absl::StatusCode::kCancelled) {
        status = final_status;
      }
      return Annotate(status, absl::StrCat("read ", Quoted(info_.image_id)));
    }
    return expected;
  }

 private:
  std::unique_ptr<grpc::ClientContext> context_;
  std::unique_ptr<RawCall> call_;
  const ImageInfo info_;
  bool broken_ = false;
};

absl::StatusOr<std::unique_ptr<Client>> Client::Connect(
    std::string_view target, const ClientOptions& options) {
  if (target.empty()) {
    return absl::InvalidArgumentError(
        "no server given: expected host:port or unix:/path/to/socket");
  }
  if (options.chunk_bytes == 0) {
    return absl::InvalidArgumentError("chunk size must be positive");
  }
  internal::KeepGrpcRuntimeAlive();
  auto impl = std::make_unique<Impl>();
  impl->target = std::string(target);
  impl->options = options;
  grpc::ChannelArguments arguments;
  arguments.SetMaxReceiveMessageSize(-1);
  arguments.SetMaxSendMessageSize(-1);
  // Pings on an idle connection notice a server that vanished without
  // closing it (a dead host, a cut cable), so no read waits forever.
  arguments.SetInt(GRPC_ARG_KEEPALIVE_TIME_MS, 20000);
  arguments.SetInt(GRPC_ARG_KEEPALIVE_TIMEOUT_MS, 10000);
  // A connection of its own: gRPC would otherwise share one connection
  // among all clients of a process that name the same server, and one
  // connection is handled by one thread at a time on each end (about a
  // third more small-image operations per second with 16 clients).
  arguments.SetInt(GRPC_ARG_USE_LOCAL_SUBCHANNEL_POOL, 1);
  impl->channel = grpc::CreateCustomChannel(
      impl->target, grpc::InsecureChannelCredentials(), arguments);
  if (impl->channel == nullptr) {
    return absl::InvalidArgumentError(
        absl::StrCat("cannot use '", impl->target, "' as a server address"));
  }
  impl->stub = v1::Depot::NewStub(impl->channel);
  impl->generic_stub = std::make_unique<grpc::GenericStub>(impl->channel);

  // Asking for the limits proves the server is there and speaks h5depot.
  grpc::ClientContext context;
  context.set_deadline(
      absl::ToChronoTime(absl::Now() + options.connect_timeout));
  v1::ServerLimits limits;
  grpc::Status status =
      impl->stub->GetLimits(&context, v1::GetLimitsRequest(), &limits);
  if (!status.ok()) {
    if (status.error_code() == grpc::StatusCode::DEADLINE_EXCEEDED ||
        status.error_code() == grpc::StatusCode::UNAVAILABLE) {
      return absl::UnavailableError(
          absl::StrCat("cannot reach h5depotd at ", impl->target,
                       " (is it running, and is this the right address?): ",
                       status.error_message()));
    }
    return Annotate(FromGrpcStatus(status),
                    absl::StrCat("connect to ", impl->target));
  }
  impl->chunk_bytes = std::max<uint64_t>(
      1, std::min<uint64_t>(options.chunk_bytes, limits.max_chunk_bytes()));
  if (options.use_data_lane) {
    std::lock_guard<std::mutex> lock(impl->lane_mutex);
    impl->lane = internal::DataLane::ForServer(
        impl->target, limits.data_lane_port(), limits.data_lane_unix_path());
  }
  return std::unique_ptr<Client>(new Client(std::move(impl)));
}

Client::Client(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}

Client::~Client() = default;

const std::string& Client::target() const { return impl_->target; }

absl::StatusOr<ImageInfo> Client::Push(std::string_view image_id,
                                       const void* data, size_t size,
                                       const PushOptions& options) {
  // Prefixes an error with what was being done; built only on failure.
  auto failed = [&](const absl::Status& status) {
    return Annotate(status, absl::StrCat("push ", Quoted(image_id)));
  };
  if (absl::Status status = internal::ValidateImageId(image_id); !status.ok()) {
    return failed(status);
  }
  if (data == nullptr && size > 0) {
    return failed(absl::InvalidArgumentError("no data"));
  }
  const auto* bytes = static_cast<const uint8_t*>(data);
  const absl::Time deadline = impl_->Deadline();
  if (Impl::LaneCall lane = impl_->StartLaneCall(deadline);
      lane.connection != nullptr) {
    absl::StatusOr<ImageInfo> result = lane.lane->Push(
        std::move(lane.connection), image_id, bytes, size, options, deadline);
    if (!result.ok()) return failed(result.status());
    return result;
  }
  // Chunks are sent from slices that reference the caller's bytes. Those
  // are only borrowed for this call, so it returns only once gRPC has let
  // go of every such slice: each holds a copy of `lease`, and the last one
  // released signals `released`. gRPC releases them when it has written
  // them or when the call is over, whichever comes first.
  absl::Notification released;
  absl::StatusOr<ImageInfo> result;
  {
    std::shared_ptr<const void> lease(
        data != nullptr ? data : &released,
        [&released](const void*) { released.Notify(); });
    result =
        impl_->PushBorrowed(image_id, bytes, size, options, lease, deadline);
  }
  released.WaitForNotification();
  if (!result.ok()) return failed(result.status());
  return result;
}

absl::StatusOr<ImageInfo> Client::Impl::PushBorrowed(
    std::string_view image_id, const uint8_t* bytes, size_t size,
    const PushOptions& push_options, std::shared_ptr<const void> lease,
    absl::Time deadline) {
  grpc::ClientContext context;
  SetDeadline(&context, deadline);
  RawCall call(generic_stub.get(), &context, "/h5depot.v1.Depot/Push");

  v1::PushRequest request;
  v1::PushHeader* header = request.mutable_header();
  header->set_image_id(std::string(image_id));
  header->set_size(size);
  header->set_checksum(internal::Checksum(bytes, size));
  if (push_options.if_generation_match.has_value()) {
    header->set_if_generation_match(*push_options.if_generation_match);
  }
  header->set_ttl_ms(ToMillis(push_options.ttl));
  auto chunk = [&](size_t offset, size_t n) {
    return internal::ChunkMessageReferencing(bytes + offset, n, lease);
  };
  if (size <= chunk_bytes) {
    // Header, data and end of stream leave together.
    if (size == 0) {
      if (call.Write(SerializeMessage(request))) call.WritesDone();
    } else if (call.Write(SerializeMessage(request),
                          grpc::WriteOptions().set_buffer_hint())) {
      call.WriteLast(chunk(0, size));
    }
  } else {
    // Before streaming more than one chunk, wait for the server to accept
    // the header, so that a refused push (too large, out of memory,
    // generation mismatch) costs one round trip and no data.
    bool good =
        call.Write(SerializeMessage(request)) && call.ReadInitialMetadata();
    for (size_t sent = 0; good && sent < size;) {
      const size_t n = std::min<size_t>(chunk_bytes, size - sent);
      grpc::ByteBuffer message = chunk(sent, n);
      sent += n;
      good = sent < size ? call.Write(message) : call.WriteLast(message);
      if (good && push_options.progress) push_options.progress(sent, size);
    }
  }
  lease.reset();
  grpc::ByteBuffer reply;
  const bool replied = call.Read(&reply);
  absl::Status status = call.Finish();
  v1::PushResponse response;
  if (status.ok() && (!replied || !ParseMessage(reply, &response))) {
    status = absl::InternalError("the server did not confirm the push");
  }
  if (!status.ok()) return status;
  if (size <= chunk_bytes && size > 0 && push_options.progress) {
    push_options.progress(size, size);
  }
  return ToImageInfo(response.info());
}

absl::StatusOr<ImageInfo> Client::PushFile(std::string_view image_id,
                                           const std::string& path,
                                           const PushOptions& options) {
  absl::StatusOr<MappedFile> file = MappedFile::Open(path);
  if (!file.ok()) {
    return Annotate(file.status(), absl::StrCat("push ", Quoted(image_id)));
  }
  return Push(image_id, file->data(), file->size(), options);
}

absl::StatusOr<FetchedImage> Client::Fetch(std::string_view image_id,
                                           const FetchOptions& options) {
  // Prefixes an error with what was being done; built only on failure.
  auto failed = [&](const absl::Status& status) {
    return Annotate(status, absl::StrCat("fetch ", Quoted(image_id)));
  };
  // Checked here, not only by the server, so that both transports refuse a
  // bad id alike, and so that an id too long for the data lane's header is
  // never cut short into another image's id.
  if (absl::Status status = internal::ValidateImageId(image_id); !status.ok()) {
    return failed(status);
  }
  const absl::Time deadline = impl_->Deadline(options.wait);
  if (Impl::LaneCall lane = impl_->StartLaneCall(deadline);
      lane.connection != nullptr) {
    absl::StatusOr<FetchedImage> result = lane.lane->Fetch(
        std::move(lane.connection), image_id, options, deadline);
    if (!result.ok()) return failed(result.status());
    return result;
  }
  grpc::ClientContext context;
  Impl::SetDeadline(&context, deadline);
  RawCall call(impl_->generic_stub.get(), &context, "/h5depot.v1.Depot/Fetch");
  v1::FetchRequest request;
  request.set_image_id(std::string(image_id));
  request.set_wait_timeout_ms(ToMillis(options.wait));
  call.WriteLast(SerializeMessage(request));

  absl::StatusOr<ImageInfo> info = ReceiveInfo<v1::FetchResponse>(&call);
  if (!info.ok()) return failed(info.status());
  FetchedImage fetched;
  fetched.info = *std::move(info);
  absl::StatusOr<ImageBuffer> buffer = ImageBuffer::Allocate(fetched.info.size);
  if (!buffer.ok()) {
    context.TryCancel();
    call.Finish().IgnoreError();
    return failed(buffer.status());
  }
  fetched.buffer = *std::move(buffer);
  internal::AdviseHugePages(fetched.buffer.data(), fetched.buffer.size());
  internal::StreamingChecksum checksum(fetched.info.size);
  absl::Status status = ReceiveRawChunks<v1::FetchResponse>(
      &call, static_cast<uint8_t*>(fetched.buffer.data()), fetched.info.size,
      options.progress, &checksum);
  if (!status.ok()) context.TryCancel();
  absl::Status final_status = call.Finish();
  if (!final_status.ok() &&
      (status.ok() || final_status.code() != absl::StatusCode::kCancelled)) {
    status = final_status;
  }
  if (!status.ok()) return failed(status);
  if (checksum.Digest() != fetched.info.checksum) {
    return failed(absl::DataLossError(
        "the received bytes do not match the image's checksum"));
  }
  return fetched;
}

absl::StatusOr<ReadResult> Client::Read(std::string_view image_id,
                                        uint64_t generation, uint64_t offset,
                                        void* out, size_t length) {
  const std::string what = absl::StrCat("read ", Quoted(image_id));
  grpc::ClientContext context;
  impl_->PrepareContext(&context);
  RawCall call(impl_->generic_stub.get(), &context, "/h5depot.v1.Depot/Read");
  v1::ReadRequest request;
  request.set_image_id(std::string(image_id));
  request.set_generation(generation);
  request.set_offset(offset);
  request.set_length(length);
  call.WriteLast(SerializeMessage(request));
  absl::StatusOr<ImageInfo> info = ReceiveInfo<v1::ReadResponse>(&call);
  if (!info.ok()) return Annotate(info.status(), what);
  ReadResult result;
  result.info = *std::move(info);
  result.bytes_read =
      offset >= result.info.size
          ? 0
          : std::min<uint64_t>(length, result.info.size - offset);
  absl::Status status = ReceiveRawChunks<v1::ReadResponse>(
      &call, static_cast<uint8_t*>(out), result.bytes_read, nullptr, nullptr);
  if (!status.ok()) context.TryCancel();
  absl::Status final_status = call.Finish();
  if (!final_status.ok() &&
      (status.ok() || final_status.code() != absl::StatusCode::kCancelled)) {
    status = final_status;
  }
  if (!status.ok()) return Annotate(status, what);
  return result;
}

absl::StatusOr<std::unique_ptr<ImageReader>> Client::OpenReader(
    std::string_view image_id, uint64_t generation) {
  const std::string what = absl::StrCat("open reader on ", Quoted(image_id));
  auto context = std::make_unique<grpc::ClientContext>();
  auto call = std::make_unique<RawCall>(
      impl_->generic_stub.get(), context.get(), "/h5depot.v1.Depot/OpenReader");
  v1::ReaderRequest request;
  request.mutable_open()->set_image_id(std::string(image_id));
  request.mutable_open()->set_generation(generation);
  call->Write(SerializeMessage(request));
  absl::StatusOr<ImageInfo> info = ReceiveInfo<v1::ReaderResponse>(call.get());
  if (!info.ok()) {
    call.reset();
    return Annotate(info.status(), what);
  }
  return std::unique_ptr<ImageReader>(new GrpcImageReader(
      std::move(context), std::move(call), *std::move(info)));
}

absl::StatusOr<ImageInfo> Client::Stat(std::string_view image_id,
                                       absl::Duration wait) {
  grpc::ClientContext context;
  impl_->PrepareContext(&context, wait);
  v1::StatRequest request;
  request.set_image_id(std::string(image_id));
  request.set_wait_timeout_ms(ToMillis(wait));
  v1::ImageInfo info;
  absl::Status status =
      FromGrpcStatus(impl_->stub->Stat(&context, request, &info));
  if (!status.ok()) {
    return Annotate(status, absl::StrCat("stat ", Quoted(image_id)));
  }
  return ToImageInfo(info);
}

absl::StatusOr<ListPage> Client::List(const ListOptions& options) {
  grpc::ClientContext context;
  impl_->PrepareContext(&context);
  v1::ListRequest request;
  request.set_prefix(options.prefix);
  request.set_page_size(options.page_size);
  request.set_page_token(options.page_token);
  v1::ListResponse response;
  absl::Status status =
      FromGrpcStatus(impl_->stub->List(&context, request, &response));
  if (!status.ok()) return Annotate(status, "list");
  ListPage page;
  page.images.reserve(response.images_size());
  for (const v1::ImageInfo& info : response.images()) {
    page.images.push_back(ToImageInfo(info));
  }
  page.next_page_token = response.next_page_token();
  return page;
}

absl::Status Client::Delete(std::string_view image_id,
                            std::optional<uint64_t> if_generation_match) {
  grpc::ClientContext context;
  impl_->PrepareContext(&context);
  v1::DeleteRequest request;
  request.set_image_id(std::string(image_id));
  if (if_generation_match.has_value()) {
    request.set_if_generation_match(*if_generation_match);
  }
  v1::DeleteResponse response;
  return Annotate(
      FromGrpcStatus(impl_->stub->Delete(&context, request, &response)),
      absl::StrCat("delete ", Quoted(image_id)));
}

absl::StatusOr<ServerLimits> Client::GetLimits() {
  grpc::ClientContext context;
  impl_->PrepareContext(&context);
  v1::ServerLimits limits;
  absl::Status status = FromGrpcStatus(
      impl_->stub->GetLimits(&context, v1::GetLimitsRequest(), &limits));
  if (!status.ok()) return Annotate(status, "get limits");
  ServerLimits result;
  result.max_image_bytes = limits.max_image_bytes();
  result.max_memory_bytes = limits.max_memory_bytes();
  result.max_chunk_bytes = limits.max_chunk_bytes();
  result.stored_bytes = limits.stored_bytes();
  result.data_lane_port = static_cast<int>(limits.data_lane_port());
  result.data_lane_unix_path = limits.data_lane_unix_path();
  return result;
}

}  // namespace h5depot
