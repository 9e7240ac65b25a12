#include <grpcpp/security/credentials.h>
#include <grpcpp/support/client_interceptor.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <deque>
#include <fstream>
#include <iterator>
#include <thread>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "client/src/grpc_transport_internal.h"
#include "h5depot/internal/checksum.h"
#include "h5depot/internal/huge_pages.h"
#include "h5depot/rpc/chunk_codec.h"
#include "h5depot/rpc/grpc_runtime.h"
#include "h5depot/rpc/grpc_status.h"

namespace h5depot::internal {
namespace {

ImageInfo ToImageInfo(const v1::ImageInfo& info) {
  return internal::ToImageInfo(info.image_id(), info.size(), info.generation(),
                               info.checksum(), info.created_unix_micros(),
                               info.expires_unix_micros());
}

// Puts the client's bearer token into every call's metadata, as
// "authorization: Bearer <token>", the one place it is added for every
// stub and stream of the channel.
class BearerTokenInterceptor final : public grpc::experimental::Interceptor {
 public:
  explicit BearerTokenInterceptor(const std::string* header)
      : header_(header) {}

  void Intercept(
      grpc::experimental::InterceptorBatchMethods* methods) override {
    if (methods->QueryInterceptionHookPoint(
            grpc::experimental::InterceptionHookPoints::
                PRE_SEND_INITIAL_METADATA)) {
      methods->GetSendInitialMetadata()->emplace("authorization", *header_);
    }
    methods->Proceed();
  }

 private:
  const std::string* header_;  // the factory's
};

class BearerTokenInterceptorFactory final
    : public grpc::experimental::ClientInterceptorFactoryInterface {
 public:
  explicit BearerTokenInterceptorFactory(std::string_view token)
      : header_(absl::StrCat("Bearer ", std::string(token))) {}

  grpc::experimental::Interceptor* CreateClientInterceptor(
      grpc::experimental::ClientRpcInfo* /*info*/) override {
    return new BearerTokenInterceptor(&header_);
  }

 private:
  const std::string header_;
};

// The longest a channel waits between attempts to reach a server that is
// down: the longest a restarted server can go unnoticed.
constexpr int kMaxReconnectBackoffMs = 500;

// How long a call finding its channel failed gives a new connection
// attempt before it goes ahead (and fails at once if that did not
// connect): a round trip or two, even across a network.
constexpr absl::Duration kReconnectProbe = absl::Milliseconds(250);

// For the unary calls, whose deadlines gRPC keeps.
void SetDeadline(grpc::ClientContext* context, absl::Time deadline) {
  if (deadline != absl::InfiniteFuture()) {
    context->set_deadline(absl::ToChronoTime(deadline));
  }
}

// How long an operation cut short by its call's deadline gets to complete
// once the call is cancelled before it is left to a reaper (below):
// cancelled operations normally complete at once.
constexpr absl::Duration kCancelledOperationGrace = absl::Milliseconds(50);

// One call through the generic stub, driven synchronously on a completion
// queue of its own (the model of gRPC's sync API), so that messages arrive
// as raw byte buffers: chunk payloads are then copied once, from the
// received slices straight to their destination. Each method waits for its
// operation to complete and returns whether the stream is still good.
//
// The call's initial metadata is corked: it leaves with the first message,
// which must therefore be written before anything is read.
//
// The call keeps its own deadline rather than the context's, because a
// fetch learns how long its bytes may take only once the image's info has
// arrived, and a reader's stream must outlive its opening's deadline. An
// operation still pending at the deadline cancels the call: it and every
// later one fail, and Finish() reports DEADLINE_EXCEEDED.
//
// A cancelled operation does not always complete at once: a write whose
// bytes are already in the connection's socket completes only when the
// kernel gives up on the connection (gRPC sets TCP_USER_TIMEOUT to the
// keepalive timeout). So everything an operation under way can touch (the
// context, the queue, the stream, the message being read, the final
// status) lives in a State the call owns, and a call that still has an
// operation pending when it is destroyed hands its State to a thread of
// its own that waits for the operation and then frees it. The caller
// returns by the deadline; messages written must therefore not borrow the
// caller's memory (ChunkMessageCopying, not ChunkMessageReferencing).
class RawCall {
 public:
  RawCall(grpc::GenericStub* stub, const char* method)
      : state_(std::make_unique<State>()) {
    state_->context.set_initial_metadata_corked(true);
    state_->stream =
        stub->PrepareCall(&state_->context, method, &state_->queue);
    // Corked, the start completes nothing: it joins the first write.
    state_->stream->StartCall(state_.get());
  }

  ~RawCall() {
    if (!state_->operation_pending) {
      Drain(state_.get());
      return;
    }
    std::thread([state = std::move(state_)] {
      const GrpcUse grpc_use;
      Drain(state.get());
    }).detach();
  }
  RawCall(const RawCall&) = delete;
  RawCall& operator=(const RawCall&) = delete;

  // When the operations from now on must complete; InfiniteFuture: never.
  void set_deadline(absl::Time deadline) { deadline_ = deadline; }

  bool Write(const grpc::ByteBuffer& message,
             grpc::WriteOptions options = grpc::WriteOptions()) {
    if (good_ && Usable()) {
      state_->stream->Write(message, options, state_.get());
      good_ = Await();
    }
    return good_;
  }

  // Writes `message` and half-closes the stream in one go.
  bool WriteLast(const grpc::ByteBuffer& message) {
    if (good_ && Usable()) {
      state_->stream->WriteLast(message, grpc::WriteOptions(), state_.get());
      good_ = Await();
    }
    return good_;
  }

  bool WritesDone() {
    if (good_ && Usable()) {
      state_->stream->WritesDone(state_.get());
      good_ = Await();
    }
    return good_;
  }

  bool ReadInitialMetadata() {
    if (good_ && Usable()) {
      state_->stream->ReadInitialMetadata(state_.get());
      good_ = Await();
    }
    return good_;
  }

  // False at the end of the stream or when it broke; Finish() says which.
  // Reading does not depend on the writes having gone well: a server that
  // refused the call may have answered before a write completed.
  bool Read(grpc::ByteBuffer* message) {
    if (!Usable()) return false;
    state_->stream->Read(&state_->inbox, state_.get());
    if (!Await()) return false;
    message->Swap(&state_->inbox);
    return true;
  }

  // Ends the call early; Finish() then reports CANCELLED (or the error
  // that came first).
  void Cancel() { state_->context.TryCancel(); }

  absl::Status Finish() {
    if (Usable()) {
      state_->stream->Finish(&state_->status, state_.get());
      Await();
    }
    if (expired_) {
      return absl::DeadlineExceededError(
          "the server did not answer before the call's deadline");
    }
    return FromGrpcStatus(state_->status);
  }

 private:
  struct State {
    grpc::ClientContext context;
    grpc::CompletionQueue queue;
    std::unique_ptr<grpc::GenericClientAsyncReaderWriter> stream;
    grpc::ByteBuffer inbox;
    grpc::Status status;
    bool operation_pending = false;
  };

  // Waits for every operation on `state` to complete, then frees the
  // stream (the context, destroyed after it, releases the call).
  static void Drain(State* state) {
    state->queue.Shutdown();
    void* tag;
    bool ok;
    while (state->queue.Next(&tag, &ok)) {
    }
    state->stream.reset();
  }

  // Whether a new operation may start: not while one cut short by the
  // deadline is still pending (gRPC allows one of each kind at a time).
  bool Usable() const { return !state_->operation_pending; }

  // Waits for the one pending operation; whether it succeeded.
  bool Await() {
    void* tag = nullptr;
    bool ok = false;
    grpc::CompletionQueue& queue = state_->queue;
    if (deadline_ != absl::InfiniteFuture()) {
      // A deadline that passed fails the call even if the operation could
      // complete: what happens past it must not depend on timing.
      const bool passed =
          absl::Now() >= deadline_ ||
          queue.AsyncNext(&tag, &ok, absl::ToChronoTime(deadline_)) ==
              grpc::CompletionQueue::TIMEOUT;
      if (!passed) return ok;
      expired_ = true;
      state_->context.TryCancel();
      if (queue.AsyncNext(
              &tag, &ok,
              absl::ToChronoTime(absl::Now() + kCancelledOperationGrace)) ==
          grpc::CompletionQueue::TIMEOUT) {
        state_->operation_pending = true;
      }
      return false;
    }
    return queue.Next(&tag, &ok) && ok;
  }

  std::unique_ptr<State> state_;
  bool good_ = true;
  absl::Time deadline_ = absl::InfiniteFuture();
  bool expired_ = false;  // an operation was cut short by the deadline
};

// Receives `expected` bytes of chunk messages (of type Response) from
// `call`, handing each piece to `take` in order (straight from gRPC's
// slices); an error from `take` stops it and is returned.
template <typename Response, typename Take>
absl::Status ReceiveRawChunks(RawCall* call, uint64_t expected,
                              const ProgressCallback& progress, Take take) {
  uint64_t received = 0;
  grpc::ByteBuffer message;
  ChunkPayload chunk;
  while (received < expected) {
    if (!call->Read(&message)) {
      return absl::UnavailableError(absl::StrCat(
          "the stream ended after ", received, " of ", expected, " bytes"));
    }
    const uint64_t left = expected - received;
    absl::Status taken;
    auto take_piece = [&](const uint8_t* data, size_t size) {
      taken = take(data, size);
      received += size;
      return taken.ok();
    };
    if (chunk.Parse(message)) {
      if (chunk.size() > left) {
        return absl::InternalError("the server sent more bytes than announced");
      }
      chunk.ForEachPiece(take_piece);
    } else {
      Response response;
      if (!ParseMessage(message, &response) || !response.has_chunk() ||
          response.chunk().size() > left) {
        return absl::InternalError("the server sent an unexpected message");
      }
      take_piece(reinterpret_cast<const uint8_t*>(response.chunk().data()),
                 response.chunk().size());
    }
    if (!taken.ok()) return taken;
    if (progress) progress(received, expected);
  }
  return absl::OkStatus();
}

// ReceiveRawChunks into `out`, checksumming as it goes if `checksum` is
// given.
template <typename Response>
absl::Status ReceiveRawChunksInto(RawCall* call, uint8_t* out,
                                  uint64_t expected,
                                  const ProgressCallback& progress,
                                  StreamingChecksum* checksum) {
  return ReceiveRawChunks<Response>(call, expected, progress,
                                    [&](const uint8_t* data, size_t size) {
                                      std::memcpy(out, data, size);
                                      if (checksum != nullptr)
                                        checksum->Update(out, size);
                                      out += size;
                                      return absl::OkStatus();
                                    });
}

// Reads the first message of a streamed response, which must carry the
// image's info. A refusal is the call's final status.
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

// Ends a call whose bytes were being received: `received` is how that
// went. The call's own failure says more than the CANCELLED of a call
// cut short here.
absl::Status FinishReceiving(RawCall* call, absl::Status received) {
  if (!received.ok()) call->Cancel();
  absl::Status final_status = call->Finish();
  if (!final_status.ok() &&
      (received.ok() || final_status.code() != absl::StatusCode::kCancelled)) {
    return final_status;
  }
  return received;
}

// A reader pinning one generation through an OpenReader stream, which
// holds it on the server for as long as the stream lives.
// The one conversion of the wire's WatchEvent to the client's.
ImageEvent ToImageEvent(const v1::WatchEvent& event) {
  ImageEvent out;
  switch (event.kind()) {
    case v1::WatchEvent::REPLACED:
      out.kind = ImageEvent::Kind::kReplaced;
      break;
    case v1::WatchEvent::DELETED:
      out.kind = ImageEvent::Kind::kDeleted;
      break;
    case v1::WatchEvent::EXPIRED:
      out.kind = ImageEvent::Kind::kExpired;
      break;
    case v1::WatchEvent::EVICTED:
      out.kind = ImageEvent::Kind::kEvicted;
      break;
    default:
      out.kind = ImageEvent::Kind::kPublished;
      break;
  }
  out.sequence = event.sequence();
  out.image_id = event.image_id();
  out.generation = event.generation();
  out.size = event.size();
  out.replaced_generation = event.replaced_generation();
  out.time = absl::FromUnixMicros(event.unix_micros());
  return out;
}

// A Watch call, driven on a completion queue of its own so that Next can
// give up at its deadline while the read stays pending for the next Next.
// Messages are taken apart into `ready_` as they arrive.
class GrpcImageWatch final : public ImageWatch {
 public:
  explicit GrpcImageWatch(std::shared_ptr<GrpcTransport> transport)
      : transport_(std::move(transport)) {}

  ~GrpcImageWatch() override {
    const GrpcUse grpc_use;
    context_.TryCancel();
    queue_.Shutdown();
    void* tag;
    bool ok;
    while (queue_.Next(&tag, &ok)) {
    }
    reader_.reset();
  }

  // Starts the call and waits for its `started` message.
  absl::Status Start(v1::Depot::Stub* stub, const WatchOptions& options,
                     absl::Time deadline) {
    v1::WatchRequest request;
    request.set_prefix(options.prefix);
    if (options.after.has_value()) request.set_after_sequence(*options.after);
    reader_ = stub->PrepareAsyncWatch(&context_, request, &queue_);
    reader_->StartCall(&started_tag_);
    pending_ = 1;
    absl::StatusOr<bool> started = AwaitMessage(deadline);
    if (!started.ok()) {
      Cancel();
      return started.status();
    }
    if (!*started || !inbox_.has_started()) {
      return ended_.ok() ? absl::InternalError(
                               "the server did not start the watch as asked")
                         : ended_;
    }
    started_after_ = inbox_.started().after_sequence();
    return absl::OkStatus();
  }

  uint64_t started_after() const override { return started_after_; }

  absl::StatusOr<ImageEvent> Next(absl::Time deadline) override {
    const GrpcUse grpc_use;
    while (ready_.empty()) {
      if (!ended_.ok()) return ended_;
      absl::StatusOr<bool> got = AwaitMessage(deadline);
      if (!got.ok()) return got.status();
      if (!*got) return ended_;
      if (inbox_.has_lost()) {
        ImageEvent lost;
        lost.kind = ImageEvent::Kind::kLost;
        lost.first_lost_sequence = inbox_.lost().first_sequence();
        lost.sequence = inbox_.lost().last_sequence();
        ready_.push_back(std::move(lost));
      }
      for (const v1::WatchEvent& event : inbox_.events().events()) {
        ready_.push_back(ToImageEvent(event));
      }
    }
    ImageEvent event = std::move(ready_.front());
    ready_.pop_front();
    return event;
  }

  void Cancel() override { context_.TryCancel(); }

 private:
  // Waits until `deadline` for the next message (in `inbox_`): true when
  // one came, false when the call ended (`ended_` says how),
  // DEADLINE_EXCEEDED if none came in time (the read stays pending).
  absl::StatusOr<bool> AwaitMessage(absl::Time deadline) {
    if (pending_ == 0) {
      reader_->Read(&inbox_, &read_tag_);
      pending_ = 1;
    }
    while (pending_ > 0) {
      void* tag = nullptr;
      bool ok = false;
      const grpc::CompletionQueue::NextStatus next =
          deadline == absl::InfiniteFuture()
              ? (queue_.Next(&tag, &ok) ? grpc::CompletionQueue::GOT_EVENT
                                        : grpc::CompletionQueue::SHUTDOWN)
              : queue_.AsyncNext(&tag, &ok, absl::ToChronoTime(deadline));
      if (next == grpc::CompletionQueue::TIMEOUT) {
        return absl::DeadlineExceededError("no change came in time");
      }
      if (next != grpc::CompletionQueue::GOT_EVENT) {
        ended_ = absl::CancelledError("the watch was closed");
        return false;
      }
      pending_ = 0;
      if (!ok && tag != &finish_tag_) {
        // The stream ended: its status says why.
        reader_->Finish(&status_, &finish_tag_);
        pending_ = 1;
        continue;
      }
      if (tag == &finish_tag_) {
        ended_ = status_.ok()
                     ? absl::UnavailableError("the server ended the watch")
                     : FromGrpcStatus(status_);
        return false;
      }
      if (tag == &started_tag_) {
        reader_->Read(&inbox_, &read_tag_);
        pending_ = 1;
        continue;
      }
      return true;  // read_tag_
    }
    return false;
  }

  const std::shared_ptr<GrpcTransport> transport_;  // the channel's
  grpc::ClientContext context_;
  grpc::CompletionQueue queue_;
  std::unique_ptr<grpc::ClientAsyncReader<v1::WatchResponse>> reader_;
  v1::WatchResponse inbox_;
  grpc::Status status_;
  // Tags: only their addresses matter.
  char started_tag_ = 0;
  char read_tag_ = 0;
  char finish_tag_ = 0;
  int pending_ = 0;     // operations started and not completed (0 or 1)
  absl::Status ended_;  // not OK once the call is over
  uint64_t started_after_ = 0;
  std::deque<ImageEvent> ready_;
};

class GrpcImageReader final : public PinnedGenerationReader {
 public:
  GrpcImageReader(std::shared_ptr<GrpcTransport> transport,
                  std::shared_ptr<ImageTransport> reads,
                  std::unique_ptr<RawCall> pin, ImageInfo info,
                  absl::Duration read_timeout)
      : PinnedGenerationReader(std::move(reads), std::move(info), read_timeout),
        transport_(std::move(transport)),
        pin_(std::move(pin)) {}

  // Cancels rather than closing politely: a polite close waits for the
  // server's answer, which a stopped or unreachable server never gives.
  // Either way the server drops its pin on the generation.
  ~GrpcImageReader() override {
    pin_->Cancel();
    pin_->Finish().IgnoreError();
  }

 private:
  const std::shared_ptr<GrpcTransport> transport_;  // the pin's
  const std::unique_ptr<RawCall> pin_;
};

// The whole of the PEM file at `path`, which is `what`; NOT_FOUND naming
// both if it cannot be read.
absl::StatusOr<std::string> ReadPemFile(const std::string& path,
                                        const char* what) {
  std::ifstream file(path, std::ios::binary);
  std::string text((std::istreambuf_iterator<char>(file)),
                   std::istreambuf_iterator<char>());
  if (!file.good() && !file.eof()) {
    return absl::NotFoundError(absl::StrCat("cannot read the ", what, " '",
                                            path, "': ", std::strerror(errno)));
  }
  return text;
}

// The channel's credentials: TLS from resolved `options` (tls_source
// sets use_tls), or none. The files were checked by the lane's TLS
// context already (tls.h), so a bad one fails with a clear message there.
absl::StatusOr<std::shared_ptr<grpc::ChannelCredentials>> ChannelCredentials(
    const ClientOptions& options) {
  if (!options.use_tls) return grpc::InsecureChannelCredentials();
  grpc::SslCredentialsOptions tls;  // empty roots: the system's
  const std::pair<const std::string*, std::string*> files[] = {
      {&options.tls_ca_file, &tls.pem_root_certs},
      {&options.tls_cert_file, &tls.pem_cert_chain},
      {&options.tls_key_file, &tls.pem_private_key}};
  const char* const what[] = {"CA certificate file", "certificate",
                              "private key"};
  for (size_t i = 0; i < 3; ++i) {
    if (files[i].first->empty()) continue;
    absl::StatusOr<std::string> pem = ReadPemFile(*files[i].first, what[i]);
    if (!pem.ok()) return pem.status();
    *files[i].second = *std::move(pem);
  }
  return grpc::SslCredentials(tls);
}

// What a failure to connect, `status`, says about TLS, in words for the
// user; empty when it says nothing. gRPC names only the symptom.
std::string TlsHint(const absl::Status& status, bool use_tls) {
  const std::string_view message(status.message().data(),
                                 status.message().size());
  auto says = [&](std::string_view text) {
    return message.find(text) != std::string_view::npos;
  };
  if (!use_tls) {
    return says("Socket closed")
               ? " (it closed the connection at once: if it requires TLS, "
                 "connect with TLS, e.g. --tls-ca-file, "
                 "ClientOptions::tls_ca_file or H5DEPOT_TLS_CA_FILE)"
               : "";
  }
  if (says("wrong version number")) {
    return " (the TLS handshake failed: the server does not use TLS, so "
           "connect without it)";
  }
  if (says("certificate verify failed")) {
    return " (the TLS handshake failed: the server's certificate is not "
           "signed by a CA this client trusts, has expired, or does not name "
           "this host)";
  }
  if (says("andshake") || says("Socket closed")) {
    return " (the TLS handshake failed: if the server requires a client "
           "certificate, give one signed by a CA it trusts, e.g. "
           "--tls-cert-file and --tls-key-file)";
  }
  return "";
}

// gRPC's channel to `target` for a client with `options`: created, not
// connected. INVALID_ARGUMENT for a target gRPC cannot use.
absl::StatusOr<std::shared_ptr<grpc::Channel>> MakeChannel(
    const std::string& target, const ClientOptions& options) {
  const GrpcUse grpc_use;  // a fork() meanwhile leaves gRPC alone
  grpc::ChannelArguments arguments;
  arguments.SetMaxReceiveMessageSize(-1);
  arguments.SetMaxSendMessageSize(-1);
  // Pings on an idle connection notice a server that vanished without
  // closing it (a dead host, a cut cable), so no read waits forever.
  arguments.SetInt(GRPC_ARG_KEEPALIVE_TIME_MS, 20000);
  arguments.SetInt(GRPC_ARG_KEEPALIVE_TIMEOUT_MS, 10000);
  // After a failed connection attempt gRPC waits before the next one (1 s,
  // growing to 2 minutes) and fails calls at once meanwhile, so a handle
  // would stay useless long after a restarted server is back. A server
  // that is down is retried every half second at most instead (a refused
  // connection on one host, one SYN across a network), and each call
  // finding the channel failed retries at once (ReconnectIfDown).
  arguments.SetInt(GRPC_ARG_INITIAL_RECONNECT_BACKOFF_MS, 100);
  arguments.SetInt(GRPC_ARG_MAX_RECONNECT_BACKOFF_MS, kMaxReconnectBackoffMs);
  // A connection of its own: gRPC would otherwise share one connection
  // among all clients of a process that name the same server, and one
  // connection is handled by one thread at a time on each end (about a
  // third more small-image operations per second with 16 clients).
  arguments.SetInt(GRPC_ARG_USE_LOCAL_SUBCHANNEL_POOL, 1);
  absl::StatusOr<std::shared_ptr<grpc::ChannelCredentials>> credentials =
      ChannelCredentials(options);
  if (!credentials.ok()) return credentials.status();
  std::shared_ptr<grpc::Channel> channel;
  if (options.token.empty()) {
    channel = grpc::CreateCustomChannel(target, *credentials, arguments);
  } else {
    // The channel keeps the factories, and so the header, for its life.
    std::vector<
        std::unique_ptr<grpc::experimental::ClientInterceptorFactoryInterface>>
        interceptors;
    interceptors.push_back(
        std::make_unique<BearerTokenInterceptorFactory>(options.token));
    channel = grpc::experimental::CreateCustomChannelWithInterceptors(
        target, *credentials, arguments, std::move(interceptors));
  }
  if (channel == nullptr) {
    return absl::InvalidArgumentError(
        absl::StrCat("cannot use '", target, "' as a server address"));
  }
  return channel;
}

}  // namespace

absl::StatusOr<std::shared_ptr<GrpcTransport>> GrpcTransport::Connect(
    const std::string& target, const ClientOptions& options) {
  absl::StatusOr<std::shared_ptr<GrpcTransport>> transport =
      Open(target, options);
  if (!transport.ok()) return transport;
  const GrpcUse grpc_use;
  // Asking for the limits proves the server is there and speaks h5depot.
  absl::StatusOr<ServerLimits> limits =
      (*transport)->GetLimits(absl::Now() + options.connect_timeout);
  if (!limits.ok()) {
    if (absl::IsDeadlineExceeded(limits.status()) ||
        absl::IsUnavailable(limits.status())) {
      const std::string hint = TlsHint(limits.status(), options.use_tls);
      return absl::UnavailableError(absl::StrCat(
          "cannot reach h5depotd at ", target,
          hint.empty() ? " (is it running, and is this the right address?)"
                       : hint,
          ": ", limits.status().message()));
    }
    return absl::Status(
        limits.status().code(),
        absl::StrCat("connect to ", target, ": ", limits.status().message()));
  }
  (*transport)->KnowLimits(*limits);
  (*transport)->limits_at_connect_ = *std::move(limits);
  return transport;
}

absl::StatusOr<std::shared_ptr<GrpcTransport>> GrpcTransport::Open(
    const std::string& target, const ClientOptions& options) {
  WatchForksForGrpc();  // gRPC itself starts with the first call
  return std::shared_ptr<GrpcTransport>(new GrpcTransport(target, options));
}

absl::StatusOr<const GrpcTransport::Stubs*> GrpcTransport::ChannelFor(
    absl::Time deadline) {
  absl::call_once(stubs_made_, [this] {
    // gRPC's runtime too is started by the first call that needs it: its
    // threads cost a short-lived process (the CLI) more than its whole
    // exchange with the lane.
    KeepGrpcRuntimeAlive();
    absl::StatusOr<std::shared_ptr<grpc::Channel>> channel =
        MakeChannel(target_, options_);
    if (!channel.ok()) {
      channel_error_ = channel.status();
      return;
    }
    stubs_.channel = *std::move(channel);
    stubs_.stub = v1::Depot::NewStub(stubs_.channel);
    stubs_.generic = std::make_unique<grpc::GenericStub>(stubs_.channel);
  });
  if (!channel_error_.ok()) return channel_error_;
  ReconnectIfDown(*stubs_.channel, deadline);
  return &stubs_;
}

void GrpcTransport::KnowLimits(const ServerLimits& limits) {
  chunk_bytes_.store(
      std::max<uint64_t>(1, std::min<uint64_t>(requested_chunk_bytes_,
                                               limits.max_chunk_bytes)),
      std::memory_order_relaxed);
}

absl::StatusOr<uint64_t> GrpcTransport::ChunkBytes(absl::Time deadline) {
  if (const uint64_t known = chunk_bytes_.load(std::memory_order_relaxed);
      known != 0) {
    return known;
  }
  absl::StatusOr<ServerLimits> limits = GetLimits(deadline);
  if (!limits.ok()) return limits.status();
  KnowLimits(*limits);
  return chunk_bytes_.load(std::memory_order_relaxed);
}

GrpcTransport::GrpcTransport(std::string target, const ClientOptions& options)
    : target_(std::move(target)),
      options_(options),
      requested_chunk_bytes_(options.chunk_bytes) {}

GrpcTransport::~GrpcTransport() = default;

void GrpcTransport::ReconnectIfDown(grpc::Channel& channel,
                                    absl::Time deadline) {
  // A channel whose last connection attempt failed stays failed, failing
  // calls at once, until an attempt succeeds; and an attempt gRPC starts
  // by itself, after its backoff, is driven only by threads that poll (in
  // a process whose calls all fail at once, gRPC's backup poller, every
  // 5 s). So start one now and poll it here, briefly.
  if (channel.GetState(false) != GRPC_CHANNEL_TRANSIENT_FAILURE) return;
  grpc::experimental::ChannelResetConnectionBackoff(&channel);
  channel.WaitForStateChange(
      GRPC_CHANNEL_TRANSIENT_FAILURE,
      absl::ToChronoTime(std::min(deadline, absl::Now() + kReconnectProbe)));
}

absl::StatusOr<ImageInfo> GrpcTransport::Push(std::string_view image_id,
                                              const PushBytes& bytes,
                                              const PushOptions& options,
                                              absl::Time deadline) {
  const uint8_t* const data = bytes.data;
  const size_t size = bytes.size;
  const GrpcUse grpc_use;
  // Chunks are copies in gRPC's own slices, not references to the caller's
  // bytes: a call cut short by its deadline may still have a write of them
  // under way (RawCall), and the caller may free them as soon as Push
  // returns. (The data lane, the usual path, sends from the caller's bytes:
  // its sends end at the deadline.)
  absl::StatusOr<const Stubs*> stubs = ChannelFor(deadline);
  if (!stubs.ok()) return stubs.status();
  absl::StatusOr<uint64_t> chunk_bytes = ChunkBytes(deadline);
  if (!chunk_bytes.ok()) return chunk_bytes.status();
  RawCall call((*stubs)->generic.get(), "/h5depot.v1.Depot/Push");
  call.set_deadline(deadline);

  v1::PushRequest request;
  v1::PushHeader* header = request.mutable_header();
  header->set_image_id(std::string(image_id));
  header->set_size(size);
  header->set_checksum(bytes.Checksum());
  if (options.if_generation_match.has_value()) {
    header->set_if_generation_match(*options.if_generation_match);
  }
  header->set_ttl_ms(ToMillis(options.ttl));
  header->set_replica_generation(options.replica_generation);
  header->set_stream_append(bytes.stream_append);
  if (bytes.replica_step.has_value()) {
    header->set_replica_step(*bytes.replica_step);
  }
  auto chunk = [&](size_t offset, size_t n) {
    return ChunkMessageCopying(data + offset, n);
  };
  if (size <= *chunk_bytes) {
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
      const size_t n = std::min<size_t>(*chunk_bytes, size - sent);
      grpc::ByteBuffer message = chunk(sent, n);
      sent += n;
      good = sent < size ? call.Write(message) : call.WriteLast(message);
      if (good && options.progress) options.progress(sent, size);
    }
  }
  grpc::ByteBuffer reply;
  const bool replied = call.Read(&reply);
  absl::Status status = call.Finish();
  v1::PushResponse response;
  if (status.ok() && (!replied || !ParseMessage(reply, &response))) {
    status = absl::InternalError("the server did not confirm the push");
  }
  if (!status.ok()) return status;
  if (size <= *chunk_bytes) ReportSentInOne(options.progress, size);
  return ToImageInfo(response.info());
}

namespace {

// Sends a Fetch request on `call` and receives the image's info (a
// refusal: the call's status), moving the call's deadline to cover the
// image's bytes.
absl::StatusOr<ImageInfo> StartFetch(RawCall& call, std::string_view image_id,
                                     const FetchOptions& options,
                                     const CallDeadline& deadline) {
  call.set_deadline(deadline.reply);
  v1::FetchRequest request;
  request.set_image_id(std::string(image_id));
  request.set_wait_timeout_ms(ToMillis(options.wait));
  request.set_newer_than_generation(options.newer_than);
  call.WriteLast(SerializeMessage(request));
  absl::StatusOr<ImageInfo> info = ReceiveInfo<v1::FetchResponse>(&call);
  if (info.ok()) call.set_deadline(deadline.Whole(info->size));
  return info;
}

}  // namespace

absl::StatusOr<ImageInfo> GrpcTransport::FetchTo(std::string_view image_id,
                                                 const FetchOptions& options,
                                                 const CallDeadline& deadline,
                                                 const FetchSink& sink) {
  const GrpcUse grpc_use;
  absl::StatusOr<const Stubs*> stubs = ChannelFor(deadline.reply);
  if (!stubs.ok()) return stubs.status();
  RawCall call((*stubs)->generic.get(), "/h5depot.v1.Depot/Fetch");
  absl::StatusOr<ImageInfo> info =
      StartFetch(call, image_id, options, deadline);
  if (!info.ok()) return info.status();
  StreamingChecksum checksum(info->size);
  absl::Status status =
      FinishReceiving(&call, ReceiveRawChunks<v1::FetchResponse>(
                                 &call, info->size, options.progress,
                                 [&](const uint8_t* data, size_t size) {
                                   checksum.Update(data, size);
                                   return sink.write(data, size);
                                 }));
  if (!status.ok()) return status;
  if (absl::Status intact =
          CheckReceivedChecksum(checksum.Digest(), info->checksum);
      !intact.ok()) {
    return intact;
  }
  return info;
}

absl::StatusOr<FetchedImage> GrpcTransport::Fetch(
    std::string_view image_id, const FetchOptions& options,
    const CallDeadline& deadline) {
  const GrpcUse grpc_use;
  absl::StatusOr<const Stubs*> stubs = ChannelFor(deadline.reply);
  if (!stubs.ok()) return stubs.status();
  RawCall call((*stubs)->generic.get(), "/h5depot.v1.Depot/Fetch");
  absl::StatusOr<ImageInfo> info =
      StartFetch(call, image_id, options, deadline);
  if (!info.ok()) return info.status();
  FetchedImage fetched;
  fetched.info = *std::move(info);
  absl::StatusOr<ImageBuffer> buffer = ImageBuffer::Allocate(fetched.info.size);
  if (!buffer.ok()) {
    call.Cancel();
    call.Finish().IgnoreError();
    return buffer.status();
  }
  fetched.buffer = *std::move(buffer);
  AdviseHugePages(fetched.buffer.data(), fetched.buffer.size());
  StreamingChecksum checksum(fetched.info.size);
  absl::Status status = FinishReceiving(
      &call, ReceiveRawChunksInto<v1::FetchResponse>(
                 &call, static_cast<uint8_t*>(fetched.buffer.data()),
                 fetched.info.size, options.progress, &checksum));
  if (!status.ok()) return status;
  if (absl::Status intact =
          CheckReceivedChecksum(checksum.Digest(), fetched.info.checksum);
      !intact.ok()) {
    return intact;
  }
  return fetched;
}

absl::StatusOr<ReadResult> GrpcTransport::Read(std::string_view image_id,
                                               uint64_t generation,
                                               uint64_t offset, void* out,
                                               size_t length,
                                               absl::Time deadline) {
  const GrpcUse grpc_use;
  absl::StatusOr<const Stubs*> stubs = ChannelFor(deadline);
  if (!stubs.ok()) return stubs.status();
  RawCall call((*stubs)->generic.get(), "/h5depot.v1.Depot/Read");
  call.set_deadline(deadline);
  v1::ReadRequest request;
  request.set_image_id(std::string(image_id));
  request.set_generation(generation);
  request.set_offset(offset);
  request.set_length(length);
  call.WriteLast(SerializeMessage(request));
  absl::StatusOr<ImageInfo> info = ReceiveInfo<v1::ReadResponse>(&call);
  if (!info.ok()) return info.status();
  ReadResult result;
  result.info = *std::move(info);
  result.bytes_read =
      offset >= result.info.size
          ? 0
          : std::min<uint64_t>(length, result.info.size - offset);
  absl::Status status =
      FinishReceiving(&call, ReceiveRawChunksInto<v1::ReadResponse>(
                                 &call, static_cast<uint8_t*>(out),
                                 result.bytes_read, nullptr, nullptr));
  if (!status.ok()) return status;
  return result;
}

absl::StatusOr<std::unique_ptr<ImageReader>> GrpcTransport::OpenReader(
    std::string_view image_id, uint64_t generation, absl::Time open_deadline,
    absl::Duration read_timeout, std::shared_ptr<ImageTransport> reads) {
  const GrpcUse grpc_use;
  absl::StatusOr<const Stubs*> stubs = ChannelFor(open_deadline);
  if (!stubs.ok()) return stubs.status();
  auto call = std::make_unique<RawCall>((*stubs)->generic.get(),
                                        "/h5depot.v1.Depot/OpenReader");
  call->set_deadline(open_deadline);
  v1::ReaderRequest request;
  request.mutable_open()->set_image_id(std::string(image_id));
  request.mutable_open()->set_generation(generation);
  call->Write(SerializeMessage(request));
  absl::StatusOr<ImageInfo> info = ReceiveInfo<v1::ReaderResponse>(call.get());
  if (!info.ok()) return info.status();
  // The pin lives as long as the reader; only its closing is left, which
  // cancels rather than waits.
  call->set_deadline(absl::InfiniteFuture());
  std::shared_ptr<GrpcTransport> self = shared_from_this();
  if (reads == nullptr) reads = self;
  return std::unique_ptr<ImageReader>(
      new GrpcImageReader(std::move(self), std::move(reads), std::move(call),
                          *std::move(info), read_timeout));
}

absl::StatusOr<ImageInfo> GrpcTransport::Stat(std::string_view image_id,
                                              absl::Duration wait,
                                              uint64_t newer_than,
                                              absl::Time deadline) {
  const GrpcUse grpc_use;
  absl::StatusOr<const Stubs*> stubs = ChannelFor(deadline);
  if (!stubs.ok()) return stubs.status();
  grpc::ClientContext context;
  SetDeadline(&context, deadline);
  v1::StatRequest request;
  request.set_image_id(std::string(image_id));
  request.set_wait_timeout_ms(ToMillis(wait));
  request.set_newer_than_generation(newer_than);
  v1::ImageInfo info;
  absl::Status status =
      FromGrpcStatus((*stubs)->stub->Stat(&context, request, &info));
  if (!status.ok()) return status;
  return ToImageInfo(info);
}

absl::StatusOr<ListPage> GrpcTransport::List(const ListOptions& options,
                                             absl::Time deadline) {
  const GrpcUse grpc_use;
  absl::StatusOr<const Stubs*> stubs = ChannelFor(deadline);
  if (!stubs.ok()) return stubs.status();
  grpc::ClientContext context;
  SetDeadline(&context, deadline);
  v1::ListRequest request;
  request.set_prefix(options.prefix);
  request.set_page_size(options.page_size);
  request.set_page_token(options.page_token);
  v1::ListResponse response;
  absl::Status status =
      FromGrpcStatus((*stubs)->stub->List(&context, request, &response));
  if (!status.ok()) return status;
  ListPage page;
  page.images.reserve(response.images_size());
  for (const v1::ImageInfo& info : response.images()) {
    page.images.push_back(ToImageInfo(info));
  }
  page.next_page_token = response.next_page_token();
  return page;
}

absl::Status GrpcTransport::Delete(std::string_view image_id,
                                   std::optional<uint64_t> if_generation_match,
                                   absl::Time deadline) {
  const GrpcUse grpc_use;
  absl::StatusOr<const Stubs*> stubs = ChannelFor(deadline);
  if (!stubs.ok()) return stubs.status();
  grpc::ClientContext context;
  SetDeadline(&context, deadline);
  v1::DeleteRequest request;
  request.set_image_id(std::string(image_id));
  if (if_generation_match.has_value()) {
    request.set_if_generation_match(*if_generation_match);
  }
  v1::DeleteResponse response;
  return FromGrpcStatus((*stubs)->stub->Delete(&context, request, &response));
}

namespace {

// The one conversion of a stream's policy to the wire (0: the server's
// default) and of its state from it.
void EncodePolicy(const StreamPolicy& policy, v1::StreamPolicy* out) {
  out->set_max_steps(policy.max_steps);
  out->set_max_bytes(policy.max_bytes);
  switch (policy.when_full) {
    case StreamPolicy::WhenFull::kBlock:
      out->set_when_full(v1::StreamPolicy::BLOCK);
      break;
    case StreamPolicy::WhenFull::kDiscardOldest:
      out->set_when_full(v1::StreamPolicy::DISCARD_OLDEST);
      break;
    case StreamPolicy::WhenFull::kRefuse:
      out->set_when_full(v1::StreamPolicy::REFUSE);
      break;
  }
  out->set_reserve_steps(policy.reserve_steps);
  out->set_keep_first_step(policy.keep_first_step);
}

StreamInfo ToStreamInfo(const v1::StreamInfo& info) {
  StreamInfo out;
  out.stream = info.stream();
  out.policy.max_steps = info.policy().max_steps();
  out.policy.max_bytes = info.policy().max_bytes();
  switch (info.policy().when_full()) {
    case v1::StreamPolicy::DISCARD_OLDEST:
      out.policy.when_full = StreamPolicy::WhenFull::kDiscardOldest;
      break;
    case v1::StreamPolicy::REFUSE:
      out.policy.when_full = StreamPolicy::WhenFull::kRefuse;
      break;
    default:
      out.policy.when_full = StreamPolicy::WhenFull::kBlock;
      break;
  }
  out.policy.reserve_steps = info.policy().reserve_steps();
  out.policy.keep_first_step = info.policy().keep_first_step();
  out.created = info.created();
  out.finished = info.finished();
  out.appended_steps = info.appended_steps();
  out.queued_steps = info.queued_steps();
  out.queued_bytes = info.queued_bytes();
  out.kept_steps = info.kept_steps();
  out.kept_bytes = info.kept_bytes();
  if (info.has_oldest_kept_step()) {
    out.oldest_kept_step = info.oldest_kept_step();
  }
  for (const v1::StreamGroupInfo& group : info.groups()) {
    StreamGroupInfo& g = out.groups.emplace_back();
    g.name = group.name();
    g.next_step = group.next_step();
    g.acked_below = group.acked_below();
    g.leased_steps = group.leased_steps();
    g.waiting_steps = group.waiting_steps();
  }
  return out;
}

}  // namespace

absl::StatusOr<StreamInfo> GrpcTransport::CreateStream(
    std::string_view stream, const StreamPolicy& policy, absl::Time deadline) {
  const GrpcUse grpc_use;
  absl::StatusOr<const Stubs*> stubs = ChannelFor(deadline);
  if (!stubs.ok()) return stubs.status();
  grpc::ClientContext context;
  SetDeadline(&context, deadline);
  v1::CreateStreamRequest request;
  request.set_stream(std::string(stream));
  EncodePolicy(policy, request.mutable_policy());
  v1::StreamInfo info;
  absl::Status status =
      FromGrpcStatus((*stubs)->stub->CreateStream(&context, request, &info));
  if (!status.ok()) return status;
  return ToStreamInfo(info);
}

absl::StatusOr<StreamInfo> GrpcTransport::FinishStream(std::string_view stream,
                                                       absl::Time deadline) {
  const GrpcUse grpc_use;
  absl::StatusOr<const Stubs*> stubs = ChannelFor(deadline);
  if (!stubs.ok()) return stubs.status();
  grpc::ClientContext context;
  SetDeadline(&context, deadline);
  v1::FinishStreamRequest request;
  request.set_stream(std::string(stream));
  v1::StreamInfo info;
  absl::Status status =
      FromGrpcStatus((*stubs)->stub->FinishStream(&context, request, &info));
  if (!status.ok()) return status;
  return ToStreamInfo(info);
}

absl::Status GrpcTransport::DeleteStream(std::string_view stream,
                                         std::string_view group,
                                         absl::Time deadline) {
  const GrpcUse grpc_use;
  absl::StatusOr<const Stubs*> stubs = ChannelFor(deadline);
  if (!stubs.ok()) return stubs.status();
  grpc::ClientContext context;
  SetDeadline(&context, deadline);
  v1::DeleteStreamRequest request;
  request.set_stream(std::string(stream));
  request.set_group(std::string(group));
  v1::DeleteStreamResponse response;
  return FromGrpcStatus(
      (*stubs)->stub->DeleteStream(&context, request, &response));
}

absl::StatusOr<StreamInfo> GrpcTransport::StatStream(std::string_view stream,
                                                     absl::Time deadline) {
  const GrpcUse grpc_use;
  absl::StatusOr<const Stubs*> stubs = ChannelFor(deadline);
  if (!stubs.ok()) return stubs.status();
  grpc::ClientContext context;
  SetDeadline(&context, deadline);
  v1::StatStreamRequest request;
  request.set_stream(std::string(stream));
  v1::StreamInfo info;
  absl::Status status =
      FromGrpcStatus((*stubs)->stub->StatStream(&context, request, &info));
  if (!status.ok()) return status;
  return ToStreamInfo(info);
}

absl::StatusOr<LeasedStep> GrpcTransport::NextStep(std::string_view stream,
                                                   std::string_view group,
                                                   std::string_view consumer,
                                                   const NextOptions& options,
                                                   absl::Time deadline) {
  const GrpcUse grpc_use;
  absl::StatusOr<const Stubs*> stubs = ChannelFor(deadline);
  if (!stubs.ok()) return stubs.status();
  grpc::ClientContext context;
  SetDeadline(&context, deadline);
  v1::NextStepRequest request;
  request.set_stream(std::string(stream));
  request.set_group(std::string(group));
  request.set_consumer(std::string(consumer));
  switch (options.start) {
    case NextOptions::Start::kOldest:
      request.set_start(v1::NextStepRequest::OLDEST);
      break;
    case NextOptions::Start::kLatest:
      request.set_start(v1::NextStepRequest::LATEST);
      break;
    case NextOptions::Start::kStep:
      request.set_start(v1::NextStepRequest::AT_STEP);
      request.set_start_step(options.start_step);
      break;
  }
  request.set_lease_ms(ToMillis(options.lease));
  request.set_wait_timeout_ms(ToMillis(options.wait));
  if (options.ack_step.has_value()) request.set_ack_step(*options.ack_step);
  v1::NextStepResponse response;
  absl::Status status =
      FromGrpcStatus((*stubs)->stub->NextStep(&context, request, &response));
  if (!status.ok()) return status;
  LeasedStep leased;
  leased.step = response.step();
  leased.info = ToImageInfo(response.info());
  for (const v1::StepRange& range : response.lost()) {
    leased.lost.push_back(StepRange{range.first(), range.last()});
  }
  if (!response.inline_image().empty()) {
    const std::string& bytes = response.inline_image();
    if (bytes.size() != leased.info.size ||
        internal::Checksum(bytes.data(), bytes.size()) !=
            leased.info.checksum) {
      return absl::DataLossError(absl::StrCat(
          "step ", leased.step, " of stream '", std::string(stream),
          "' arrived with bytes that do not match its checksum"));
    }
    absl::StatusOr<ImageBuffer> buffer = ImageBuffer::Allocate(bytes.size());
    if (!buffer.ok()) return buffer.status();
    std::memcpy(buffer->data(), bytes.data(), bytes.size());
    leased.bytes = *std::move(buffer);
  }
  return leased;
}

absl::Status GrpcTransport::AckStep(std::string_view stream,
                                    std::string_view group,
                                    std::string_view consumer, uint64_t step,
                                    absl::Time deadline, bool copy) {
  const GrpcUse grpc_use;
  absl::StatusOr<const Stubs*> stubs = ChannelFor(deadline);
  if (!stubs.ok()) return stubs.status();
  grpc::ClientContext context;
  SetDeadline(&context, deadline);
  v1::AckStepRequest request;
  request.set_stream(std::string(stream));
  request.set_group(std::string(group));
  request.set_consumer(std::string(consumer));
  request.set_step(step);
  request.set_replica(copy);
  v1::AckStepResponse response;
  return FromGrpcStatus((*stubs)->stub->AckStep(&context, request, &response));
}

absl::Status GrpcTransport::AwaitStreamRoom(std::string_view stream,
                                            uint64_t size, absl::Duration wait,
                                            absl::Time deadline, bool* waited) {
  const GrpcUse grpc_use;
  absl::StatusOr<const Stubs*> stubs = ChannelFor(deadline);
  if (!stubs.ok()) return stubs.status();
  grpc::ClientContext context;
  SetDeadline(&context, deadline);
  v1::AwaitStreamRoomRequest request;
  request.set_stream(std::string(stream));
  request.set_size(size);
  request.set_wait_timeout_ms(ToMillis(wait));
  v1::AwaitStreamRoomResponse response;
  absl::Status status = FromGrpcStatus(
      (*stubs)->stub->AwaitStreamRoom(&context, request, &response));
  *waited = response.waited();
  return status;
}

absl::StatusOr<ServerLimits> GrpcTransport::GetLimits(absl::Time deadline) {
  const GrpcUse grpc_use;
  absl::StatusOr<const Stubs*> stubs = ChannelFor(deadline);
  if (!stubs.ok()) return stubs.status();
  grpc::ClientContext context;
  SetDeadline(&context, deadline);
  v1::ServerLimits limits;
  absl::Status status = FromGrpcStatus(
      (*stubs)->stub->GetLimits(&context, v1::GetLimitsRequest(), &limits));
  if (!status.ok()) return status;
  ServerLimits result;
  result.max_image_bytes = limits.max_image_bytes();
  result.max_memory_bytes = limits.max_memory_bytes();
  result.max_chunk_bytes = limits.max_chunk_bytes();
  result.stored_bytes = limits.stored_bytes();
  result.reserved_bytes = limits.reserved_bytes();
  result.leased_generations = limits.leased_generations();
  result.leased_bytes = limits.leased_bytes();
  result.leased_superseded_bytes = limits.leased_superseded_bytes();
  result.data_lane_port = static_cast<int>(limits.data_lane_port());
  result.data_lane_unix_path = limits.data_lane_unix_path();
  if (limits.restored_at_unix_micros() != 0) {
    result.restored_at = absl::FromUnixMicros(limits.restored_at_unix_micros());
  }
  return result;
}

absl::StatusOr<std::unique_ptr<ImageWatch>> GrpcTransport::Watch(
    const WatchOptions& options, absl::Time start_deadline) {
  const GrpcUse grpc_use;
  absl::StatusOr<const Stubs*> stubs = ChannelFor(start_deadline);
  if (!stubs.ok()) return stubs.status();
  auto watch = std::make_unique<GrpcImageWatch>(shared_from_this());
  if (absl::Status started =
          watch->Start((*stubs)->stub.get(), options, start_deadline);
      !started.ok()) {
    return started;
  }
  return std::unique_ptr<ImageWatch>(std::move(watch));
}

}  // namespace h5depot::internal
