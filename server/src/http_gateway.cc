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

class Gateway {
 public:
  Gateway(DepotOperations* operations, ServerMetrics* metrics,
          StaticFiles console)
      : operations_(operations),
        metrics_(metrics),
        console_(std::move(console)) {}

  HttpAnswer Handle(const HttpRequest& request) {
    const absl::Time start = absl::Now();
    Outcome outcome;
    HttpAnswer answer = Dispatch(request, outcome);
    if (metrics_ != nullptr && outcome.counted) {
      ServerMetrics* metrics = metrics_;
      answer.done = [metrics, outcome, start](bool sent) {
        // Answered OK, but the bytes did not all go out: the client left.
        const absl::StatusCode code =
            outcome.code == absl::StatusCode::kOk && !sent
                ? absl::StatusCode::kCancelled
                : outcome.code;
        metrics->RecordCall(
            outcome.counted_as, Transport::kHttp, code,
            code == absl::StatusCode::kOk ? outcome.image_bytes : 0,
            absl::Now() - start);
      };
    }
    return answer;
  }

 private:
  HttpAnswer Dispatch(const HttpRequest& request, Outcome& outcome) {
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
    if (std::optional<HttpAnswer> refused = OnlyReads(request, outcome)) {
      return *std::move(refused);
    }
    const bool head = request.method() == "HEAD";
    const Caller caller = CallerOf(request);
    if (listing) return ServeListing(request, caller, outcome);
    return ServeImage(request, caller,
                      std::string_view(*path).substr(kImagesPath.size() + 1),
                      head, outcome);
  }

  // The method check of what is only read: nullopt for GET and HEAD, the
  // 405 answer otherwise.
  static std::optional<HttpAnswer> OnlyReads(const HttpRequest& request,
                                             Outcome& outcome) {
    if (request.method() == "GET" || request.method() == "HEAD") {
      return std::nullopt;
    }
    outcome.code = absl::StatusCode::kUnimplemented;
    HttpAnswer answer =
        JsonAnswer(405, http::ErrorJson(absl::UnimplementedError(absl::StrCat(
                            std::string(request.method()),
                            " is not served: this is read with GET and "
                            "HEAD"))));
    answer.headers.emplace_back("Allow", "GET, HEAD");
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
