#include <filesystem>
#include <fstream>
#include <optional>
#include <sstream>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "server/src/http_gateway_internal.h"
#include "server/src/http_semantics_internal.h"

namespace h5depot::server {
namespace {

constexpr std::string_view kImagesPath = "/v1/images";
constexpr std::string_view kImagesPathSlash = "/v1/images/";
constexpr std::string_view kStatusPath = "/v1/status";

// What one request came to, for the metrics.
struct Outcome {
  bool counted = true;  // false: no operation (the console's files)
  Operation counted_as = Operation::kFetch;
  absl::StatusCode code = absl::StatusCode::kOk;
  uint64_t image_bytes = 0;
};

// An answer of `status` with `body` (JSON).
HttpAnswer JsonAnswer(int status, std::string body) {
  HttpAnswer answer;
  answer.status = status;
  answer.headers = {{"Content-Type", "application/json"},
                    // What the answers describe changes: a cache must ask
                    // again before it reuses one.
                    {"Cache-Control", "no-cache"}};
  if (status == 401) {
    answer.headers.emplace_back("WWW-Authenticate", "Bearer realm=\"h5depot\"");
  }
  answer.text = std::move(body);
  return answer;
}

// The answer to a failed call: its status and an error body.
HttpAnswer ErrorAnswer(const absl::Status& status, Outcome& outcome) {
  outcome.code = status.code();
  return JsonAnswer(http::StatusFor(status.code()), http::ErrorJson(status));
}

// Query parameter `name` of `request`, decoded: nullopt if absent, an
// INVALID_ARGUMENT if malformed.
absl::StatusOr<std::optional<std::string>> Query(const HttpRequest& request,
                                                 const char* name) {
  const std::optional<std::string_view> raw = request.raw_query(name);
  if (!raw.has_value()) return std::optional<std::string>();
  std::optional<std::string> decoded = http::DecodeQueryValue(*raw);
  if (!decoded.has_value()) {
    return absl::InvalidArgumentError(
        absl::StrCat("the query parameter ", name,
                     " has a malformed or control-character %-escape"));
  }
  return decoded;
}

// One file of the console, held in memory.
struct StaticFile {
  std::string bytes;
  std::string content_type;
};
// By request path ("/index.html", "/assets/index-3f2a.js").
using StaticFiles =
    absl::flat_hash_map<std::string, std::shared_ptr<const StaticFile>>;

std::string ContentTypeOf(const std::filesystem::path& path) {
  static const auto* types = new absl::flat_hash_map<std::string, std::string>{
      {".html", "text/html; charset=utf-8"},
      {".js", "text/javascript; charset=utf-8"},
      {".mjs", "text/javascript; charset=utf-8"},
      {".css", "text/css; charset=utf-8"},
      {".json", "application/json"},
      {".map", "application/json"},
      {".wasm", "application/wasm"},
      {".svg", "image/svg+xml"},
      {".png", "image/png"},
      {".ico", "image/x-icon"},
      {".woff2", "font/woff2"},
      {".txt", "text/plain; charset=utf-8"}};
  auto found = types->find(path.extension().string());
  return found == types->end() ? "application/octet-stream" : found->second;
}

// Every file under `directory`, read now.
absl::StatusOr<StaticFiles> LoadStaticFiles(const std::string& directory) {
  namespace fs = std::filesystem;
  std::error_code error;
  if (!fs::is_directory(directory, error)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "the console directory ", directory, " is not a directory"));
  }
  StaticFiles files;
  uint64_t total = 0;
  for (auto entry = fs::recursive_directory_iterator(directory, error);
       !error && entry != fs::recursive_directory_iterator();
       entry.increment(error)) {
    if (!entry->is_regular_file(error)) continue;
    std::ifstream in(entry->path(), std::ios::binary);
    std::ostringstream bytes;
    bytes << in.rdbuf();
    if (!in) {
      return absl::InvalidArgumentError(
          absl::StrCat("cannot read ", entry->path().string()));
    }
    auto file = std::make_shared<StaticFile>();
    file->bytes = bytes.str();
    file->content_type = ContentTypeOf(entry->path());
    total += file->bytes.size();
    if (total > HttpGateway::kMaxConsoleBytes) {
      return absl::InvalidArgumentError(
          absl::StrCat("the console directory ", directory, " holds more than ",
                       HttpGateway::kMaxConsoleBytes >> 20, " MiB"));
    }
    files.emplace(
        "/" + fs::relative(entry->path(), directory, error).generic_string(),
        std::move(file));
  }
  if (error) {
    return absl::InvalidArgumentError(
        absl::StrCat("cannot read the console directory ", directory, ": ",
                     error.message()));
  }
  return files;
}

// The answer to a push: the new generation's description.
HttpAnswer PushedAnswer(const ImageRef& image, Outcome& outcome) {
  const ImageDescription description = DepotOperations::Describe(*image);
  HttpAnswer answer = JsonAnswer(200, http::ImageJson(description) + "\n");
  answer.headers.emplace_back("ETag", http::EntityTag(description));
  answer.headers.emplace_back("X-H5depot-Generation",
                              absl::StrCat(description.generation));
  outcome.image_bytes = description.size;
  return answer;
}

// A PUT's body, pushed as it arrives into the image the push reserved.
// Destroyed before the end (the client left or stalled), it drops the
// push: nothing is published and the memory is freed.
class PushSink final : public HttpBodySink {
 public:
  PushSink(DepotOperations* operations, std::unique_ptr<PendingImage> pending,
           std::optional<uint64_t> checksum, std::shared_ptr<Outcome> outcome)
      : operations_(operations),
        pending_(std::move(pending)),
        checksum_(checksum),
        outcome_(std::move(outcome)) {}

  std::optional<HttpAnswer> Append(const char* data, size_t size) override {
    const absl::Status appended = pending_->Append(data, size);
    if (appended.ok()) return std::nullopt;
    pending_.reset();  // its memory is free before the client hears why
    return ErrorAnswer(appended, *outcome_);
  }

  HttpAnswer Finish() override {
    // HTTP has no checksum of its own beyond TCP's: without the client's,
    // the image is published with that of the bytes received.
    const uint64_t checksum =
        checksum_.has_value() ? *checksum_ : pending_->received_checksum();
    absl::StatusOr<ImageRef> published =
        operations_->FinishPush(*pending_, checksum);
    pending_.reset();
    if (!published.ok()) return ErrorAnswer(published.status(), *outcome_);
    return PushedAnswer(*published, *outcome_);
  }

 private:
  DepotOperations* const operations_;
  std::unique_ptr<PendingImage> pending_;
  const std::optional<uint64_t> checksum_;
  const std::shared_ptr<Outcome> outcome_;
};

// Counts the call a sink's answer ends (as Gateway::Handle counts the
// others): `count` gives that answer its `done`.
class CountingSink final : public HttpBodySink {
 public:
  CountingSink(std::unique_ptr<HttpBodySink> inner,
               std::function<void(HttpAnswer&)> count)
      : inner_(std::move(inner)), count_(std::move(count)) {}

  std::optional<HttpAnswer> Append(const char* data, size_t size) override {
    std::optional<HttpAnswer> early = inner_->Append(data, size);
    if (early.has_value()) count_(*early);
    return early;
  }
  HttpAnswer Finish() override {
    HttpAnswer answer = inner_->Finish();
    count_(answer);
    return answer;
  }

 private:
  std::unique_ptr<HttpBodySink> inner_;
  std::function<void(HttpAnswer&)> count_;
};

class Gateway {
 public:
  Gateway(DepotOperations* operations, ServerMetrics* metrics,
          StaticFiles console)
      : operations_(operations),
        metrics_(metrics),
        console_(std::move(console)) {}

  HttpAnswer Handle(const HttpRequest& request) {
    const absl::Time start = absl::Now();
    // Shared with a body's sink, which learns the outcome of a push.
    auto outcome = std::make_shared<Outcome>();
    HttpAnswer answer = Dispatch(request, outcome);
    if (metrics_ == nullptr || !outcome->counted) return answer;
    ServerMetrics* metrics = metrics_;
    auto count = [metrics, outcome, start](HttpAnswer& final_answer) {
      final_answer.done = [metrics, outcome, start](bool sent) {
        // Answered OK, but the bytes did not all go out: the client left.
        const absl::StatusCode code =
            outcome->code == absl::StatusCode::kOk && !sent
                ? absl::StatusCode::kCancelled
                : outcome->code;
        metrics->RecordCall(
            outcome->counted_as, Transport::kHttp, code,
            code == absl::StatusCode::kOk ? outcome->image_bytes : 0,
            absl::Now() - start);
      };
    };
    if (answer.body_sink != nullptr) {
      answer.body_sink = std::make_unique<CountingSink>(
          std::move(answer.body_sink), std::move(count));
    } else {
      count(answer);
    }
    return answer;
  }

 private:
  HttpAnswer Dispatch(const HttpRequest& request,
                      const std::shared_ptr<Outcome>& shared_outcome) {
    Outcome& outcome = *shared_outcome;
    const std::optional<std::string> path =
        http::DecodePath(request.raw_path());
    if (!path.has_value()) {
      return ErrorAnswer(
          absl::InvalidArgumentError("the request path has a malformed or "
                                     "control-character %-escape"),
          outcome);
    }
    if (*path == kStatusPath) return ServeStatus(request, outcome);
    if (!console_.empty() && path->compare(0, 4, "/v1/") != 0) {
      return ServeConsole(request, *path, outcome);
    }
    const bool listing = *path == kImagesPath || *path == kImagesPathSlash;
    const bool image =
        !listing && path->size() > kImagesPath.size() + 1 &&
        path->compare(0, kImagesPath.size() + 1, kImagesPathSlash) == 0;
    if (!listing && !image) {
      return ErrorAnswer(absl::NotFoundError(
                             absl::StrCat("no such resource: images are under ",
                                          std::string(kImagesPathSlash))),
                         outcome);
    }
    const std::string_view image_id =
        listing ? std::string_view()
                : std::string_view(*path).substr(kImagesPath.size() + 1);
    if (image && request.method() == "PUT") {
      return ServePut(request, image_id, shared_outcome);
    }
    if (image && request.method() == "DELETE") {
      return ServeDelete(request, image_id, outcome);
    }
    if (std::optional<HttpAnswer> refused =
            OnlyReads(request, outcome, image ? kImageMethods : kReadMethods)) {
      return *std::move(refused);
    }
    const bool head = request.method() == "HEAD";
    const Caller caller = CallerOf(request);
    if (listing) return ServeListing(request, caller, outcome);
    return ServeImage(request, caller, image_id, head, outcome);
  }

  // PUT /v1/images/{id}: a push of the request's body, whose length the
  // Content-Length header gives (411 without one). If-None-Match: * makes
  // it create-only, If-Match: ETAG conditional on that generation;
  // ?ttl=DURATION gives it a time to live; X-H5depot-Checksum (16 hex
  // digits, XXH3-64) is checked if sent. Answered with the new
  // generation's description.
  HttpAnswer ServePut(const HttpRequest& request, std::string_view image_id,
                      const std::shared_ptr<Outcome>& shared_outcome) {
    Outcome& outcome = *shared_outcome;
    outcome.counted_as = Operation::kPush;
    PushParams params;
    params.image_id = std::string(image_id);
    const std::optional<std::string_view> length =
        request.header("Content-Length");
    const std::optional<uint64_t> size =
        length.has_value() ? http::ParseDecimal(*length) : std::nullopt;
    if (!size.has_value()) {
      outcome.code = absl::StatusCode::kInvalidArgument;
      return JsonAnswer(411, http::ErrorJson(absl::InvalidArgumentError(
                                 "a PUT needs a Content-Length: the image's "
                                 "size is reserved before its bytes come")));
    }
    params.size = *size;
    if (const std::optional<std::string_view> none =
            request.header("If-None-Match")) {
      if (*none != "*") {
        return ErrorAnswer(absl::InvalidArgumentError(
                               "a PUT's If-None-Match may only be '*' (create "
                               "the image only if it does not exist)"),
                           outcome);
      }
      params.if_generation_match = 0;
    }
    if (const std::optional<std::string_view> match =
            request.header("If-Match")) {
      params.if_generation_match = http::GenerationOfTag(*match);
      if (!params.if_generation_match.has_value()) {
        return ErrorAnswer(absl::InvalidArgumentError(absl::StrCat(
                               "a PUT's If-Match names one ETag of this "
                               "server, not '",
                               std::string(*match), "'")),
                           outcome);
      }
    }
    absl::StatusOr<std::optional<std::string>> ttl = Query(request, "ttl");
    if (!ttl.ok()) return ErrorAnswer(ttl.status(), outcome);
    if (ttl->has_value()) {
      absl::Duration duration;
      if (!absl::ParseDuration(**ttl, &duration) ||
          duration <= absl::ZeroDuration()) {
        return ErrorAnswer(absl::InvalidArgumentError(absl::StrCat(
                               "ttl=", **ttl,
                               " is not a positive duration such as 30s or "
                               "2h")),
                           outcome);
      }
      params.ttl_ms = static_cast<uint64_t>(
          std::max<int64_t>(1, absl::ToInt64Milliseconds(absl::Ceil(
                                   duration, absl::Milliseconds(1)))));
    }
    std::optional<uint64_t> checksum;
    if (const std::optional<std::string_view> sent =
            request.header("X-H5depot-Checksum")) {
      uint64_t value = 0;
      if (sent->size() != 16 ||
          !absl::SimpleHexAtoi(absl::string_view(sent->data(), sent->size()),
                               &value)) {
        return ErrorAnswer(absl::InvalidArgumentError(
                               "X-H5depot-Checksum is the XXH3-64 of the "
                               "image in 16 hex digits"),
                           outcome);
      }
      checksum = value;
    }
    // The push is reserved (and authorised, and its precondition checked)
    // before a byte of the body is read. A client that stalls is closed at
    // the idle timeout, which frees what was reserved; the store's cut-off
    // shows as the next bytes' refusal.
    absl::StatusOr<std::unique_ptr<PendingImage>> pending =
        operations_->BeginPush(CallerOf(request), std::move(params),
                               [](const absl::Status&) {});
    if (!pending.ok()) return ErrorAnswer(pending.status(), outcome);
    HttpAnswer answer;
    answer.body_sink = std::make_unique<PushSink>(
        operations_, *std::move(pending), checksum, shared_outcome);
    return answer;
  }

  // DELETE /v1/images/{id}; If-Match: ETAG deletes only that generation.
  // 204 when deleted.
  HttpAnswer ServeDelete(const HttpRequest& request, std::string_view image_id,
                         Outcome& outcome) {
    outcome.counted_as = Operation::kDelete;
    std::optional<uint64_t> generation;
    if (const std::optional<std::string_view> match =
            request.header("If-Match")) {
      generation = http::GenerationOfTag(*match);
      if (!generation.has_value()) {
        return ErrorAnswer(absl::InvalidArgumentError(absl::StrCat(
                               "a DELETE's If-Match names one ETag of this "
                               "server, not '",
                               std::string(*match), "'")),
                           outcome);
      }
    }
    const absl::Status deleted =
        operations_->Delete(CallerOf(request), image_id, generation);
    if (!deleted.ok()) return ErrorAnswer(deleted, outcome);
    HttpAnswer answer;
    answer.status = 204;
    return answer;
  }

  // The method check of what is only read: nullopt for GET and HEAD, the
  // 405 answer, naming `allowed`, otherwise.
  static constexpr char kReadMethods[] = "GET, HEAD";
  static constexpr char kImageMethods[] = "GET, HEAD, PUT, DELETE";
  static std::optional<HttpAnswer> OnlyReads(
      const HttpRequest& request, Outcome& outcome,
      const char* allowed = kReadMethods) {
    if (request.method() == "GET" || request.method() == "HEAD") {
      return std::nullopt;
    }
    outcome.code = absl::StatusCode::kUnimplemented;
    HttpAnswer answer =
        JsonAnswer(405, http::ErrorJson(absl::UnimplementedError(absl::StrCat(
                            std::string(request.method()),
                            " is not served here (", allowed, ")"))));
    answer.headers.emplace_back("Allow", allowed);
    return answer;
  }

  // The caller of `request`: its bearer token, if any.
  static Caller CallerOf(const HttpRequest& request) {
    const std::optional<std::string_view> authorization =
        request.header("Authorization");
    return Caller::Known(Transport::kHttp, request.peer(),
                         IsLocalPeer(request.peer()),
                         http::BearerToken(authorization.value_or("")));
  }

  HttpAnswer ServeStatus(const HttpRequest& request, Outcome& outcome) {
    outcome.counted_as = Operation::kGetLimits;
    if (std::optional<HttpAnswer> refused = OnlyReads(request, outcome)) {
      return *std::move(refused);
    }
    absl::StatusOr<StoreLimits> limits = operations_->Limits(CallerOf(request));
    if (!limits.ok()) return ErrorAnswer(limits.status(), outcome);
    const uint64_t pushes =
        metrics_ == nullptr ? 0 : metrics_->SucceededCalls(Operation::kPush);
    const uint64_t fetches =
        metrics_ == nullptr ? 0 : metrics_->SucceededCalls(Operation::kFetch);
    return JsonAnswer(200, http::StatusJson(*limits, pushes, fetches));
  }

  // The console's files. They hold no image, so they are served without a
  // token; the console asks its user for one and sends it with its calls.
  HttpAnswer ServeConsole(const HttpRequest& request, const std::string& path,
                          Outcome& outcome) {
    outcome.counted = false;
    if (std::optional<HttpAnswer> refused = OnlyReads(request, outcome)) {
      return *std::move(refused);
    }
    auto found = console_.find(path == "/" ? "/index.html" : path);
    if (found == console_.end()) {
      return ErrorAnswer(
          absl::NotFoundError(absl::StrCat("no such file: ", path)), outcome);
    }
    const std::shared_ptr<const StaticFile>& file = found->second;
    HttpAnswer answer;
    // Vite names the files under /assets/ by their hash: a new build has
    // new names, so they may be cached for good; index.html may not.
    const bool hashed = path.rfind("/assets/", 0) == 0;
    answer.headers = {
        {"Content-Type", file->content_type},
        {"Cache-Control",
         hashed ? "public, max-age=31536000, immutable" : "no-cache"}};
    answer.bytes = reinterpret_cast<const uint8_t*>(file->bytes.data());
    answer.size = file->bytes.size();
    answer.keep = file;
    return answer;
  }

  HttpAnswer ServeListing(const HttpRequest& request, const Caller& caller,
                          Outcome& outcome) {
    outcome.counted_as = Operation::kList;
    absl::StatusOr<std::optional<std::string>> prefix =
        Query(request, "prefix");
    absl::StatusOr<std::optional<std::string>> page_token =
        Query(request, "page_token");
    absl::StatusOr<std::optional<std::string>> page_size_text =
        Query(request, "page_size");
    for (const auto* parsed : {&prefix, &page_token, &page_size_text}) {
      if (!parsed->ok()) return ErrorAnswer(parsed->status(), outcome);
    }
    uint32_t page_size = 0;
    if (page_size_text->has_value()) {
      const std::optional<uint64_t> parsed =
          http::ParseDecimal(**page_size_text);
      if (!parsed || *parsed > UINT32_MAX) {
        return ErrorAnswer(
            absl::InvalidArgumentError(absl::StrCat(
                "page_size=", **page_size_text, " is not a number of images")),
            outcome);
      }
      page_size = static_cast<uint32_t>(*parsed);
    }
    absl::StatusOr<ListResult> listed = operations_->List(
        caller, prefix->value_or(""), page_size, page_token->value_or(""));
    if (!listed.ok()) return ErrorAnswer(listed.status(), outcome);
    std::vector<ImageDescription> descriptions;
    descriptions.reserve(listed->images.size());
    for (const ImageRef& image : listed->images) {
      descriptions.push_back(DepotOperations::Describe(*image));
    }
    return JsonAnswer(200,
                      http::ListingJson(descriptions, listed->next_page_token));
  }

  HttpAnswer ServeImage(const HttpRequest& request, const Caller& caller,
                        std::string_view image_id, bool head,
                        Outcome& outcome) {
    absl::StatusOr<std::optional<std::string>> generation_text =
        Query(request, "generation");
    if (!generation_text.ok()) {
      return ErrorAnswer(generation_text.status(), outcome);
    }
    std::optional<uint64_t> generation;
    if (generation_text->has_value()) {
      generation = http::ParseDecimal(**generation_text);
      if (!generation || *generation == 0) {
        return ErrorAnswer(absl::InvalidArgumentError(absl::StrCat(
                               "generation=", **generation_text,
                               " is not a generation (1 or more)")),
                           outcome);
      }
    }
    // Held by the answer until it is sent: the generation whose bytes go
    // out, whatever is pushed meanwhile.
    absl::StatusOr<ImageRef> image;
    if (generation.has_value()) {
      outcome.counted_as = Operation::kRead;
      image = operations_->OpenReader(caller, image_id, *generation);
    } else if (head) {
      outcome.counted_as = Operation::kStat;
      image = operations_->Stat(caller, image_id);
    } else {
      outcome.counted_as = Operation::kFetch;
      image = operations_->Fetch(caller, image_id);
    }
    if (!image.ok()) return ErrorAnswer(image.status(), outcome);
    const StoredImage& stored = **image;
    const ImageDescription description = DepotOperations::Describe(stored);
    const std::string tag = http::EntityTag(description);
    auto header = [&](const char* name) {
      return request.header(name).value_or("");
    };

    // RFC 9110 section 13.2.2's order: If-Match, If-None-Match, then
    // Range with If-Range.
    if (request.header("If-Match").has_value() &&
        !http::TagListMatches(header("If-Match"), tag,
                              http::Comparison::kStrong)) {
      return ErrorAnswer(absl::FailedPreconditionError(absl::StrCat(
                             "'", std::string(image_id), "' is at ", tag,
                             ", which the If-Match header does not name")),
                         outcome);
    }
    HttpAnswer answer;
    answer.headers = {{"ETag", tag}, {"Cache-Control", "no-cache"}};
    if (request.header("If-None-Match").has_value() &&
        http::TagListMatches(header("If-None-Match"), tag,
                             http::Comparison::kWeak)) {
      answer.status = 304;
      answer.not_modified_length = description.size;
      return answer;
    }
    http::RangeSelection selection =
        http::SelectRange(header("Range"), description.size);
    if (selection.kind != http::RangeSelection::Kind::kWhole &&
        request.header("If-Range").has_value() && header("If-Range") != tag) {
      selection = http::RangeSelection();  // changed since: all of it
    }
    if (selection.kind == http::RangeSelection::Kind::kUnsatisfiable) {
      outcome.code = absl::StatusCode::kOutOfRange;
      answer.status = 416;
      answer.headers.emplace_back(
          "Content-Range", http::ContentRange(selection, description.size));
      return answer;
    }
    const bool partial = selection.kind == http::RangeSelection::Kind::kPartial;
    const ByteRange range =
        partial ? selection.range : ByteRange{0, description.size};
    answer.status = partial ? 206 : 200;
    answer.headers.emplace_back("Content-Type", "application/x-hdf5");
    answer.headers.emplace_back("Accept-Ranges", "bytes");
    answer.headers.emplace_back(
        "Last-Modified",
        absl::FormatTime("%a, %d %b %Y %H:%M:%S GMT", stored.created(),
                         absl::UTCTimeZone()));
    answer.headers.emplace_back("X-H5depot-Generation",
                                absl::StrCat(description.generation));
    if (partial) {
      answer.headers.emplace_back(
          "Content-Range", http::ContentRange(selection, description.size));
    }
    answer.bytes = stored.data() + range.offset;
    answer.size = range.length;
    answer.keep = *std::move(image);
    if (!head) outcome.image_bytes = range.length;
    return answer;
  }

  DepotOperations* const operations_;
  ServerMetrics* const metrics_;
  const StaticFiles console_;  // empty: no console
};

}  // namespace

absl::StatusOr<std::unique_ptr<HttpGateway>> HttpGateway::Start(
    DepotOperations* operations, const HttpGatewayOptions& options) {
  StaticFiles console;
  if (!options.console_dir.empty()) {
    absl::StatusOr<StaticFiles> loaded = LoadStaticFiles(options.console_dir);
    if (!loaded.ok()) return loaded.status();
    console = *std::move(loaded);
  }
  auto gateway = std::make_shared<Gateway>(operations, options.metrics,
                                           std::move(console));
  absl::StatusOr<std::unique_ptr<HttpServer>> server =
      HttpServer::Start(options.http, [gateway](const HttpRequest& request) {
        return gateway->Handle(request);
      });
  if (!server.ok()) return server.status();
  return std::unique_ptr<HttpGateway>(new HttpGateway(*std::move(server)));
}

HttpGateway::~HttpGateway() = default;

}  // namespace h5depot::server
