#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "server/src/http_gateway_internal.h"
#include "server/src/http_semantics_internal.h"

namespace h5depot::server {
namespace {

constexpr std::string_view kImagesPath = "/v1/images";
constexpr std::string_view kImagesPathSlash = "/v1/images/";

// What one request came to, for the metrics.
struct Outcome {
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

class Gateway {
 public:
  Gateway(DepotOperations* operations, ServerMetrics* metrics)
      : operations_(operations), metrics_(metrics) {}

  HttpAnswer Handle(const HttpRequest& request) {
    const absl::Time start = absl::Now();
    Outcome outcome;
    HttpAnswer answer = Dispatch(request, outcome);
    if (metrics_ != nullptr) {
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
    const std::string_view method = request.method();
    const bool head = method == "HEAD";
    if (method != "GET" && !head) {
      outcome.code = absl::StatusCode::kUnimplemented;
      HttpAnswer answer = JsonAnswer(
          405, http::ErrorJson(absl::UnimplementedError(absl::StrCat(
                   std::string(method),
                   " is not served: images are read with GET and HEAD"))));
      answer.headers.emplace_back("Allow", "GET, HEAD");
      return answer;
    }
    const std::optional<std::string_view> authorization =
        request.header("Authorization");
    const Caller caller = Caller::Known(
        Transport::kHttp, request.peer(), IsLocalPeer(request.peer()),
        http::BearerToken(authorization.value_or("")));
    if (listing) return ServeListing(request, caller, outcome);
    return ServeImage(request, caller,
                      std::string_view(*path).substr(kImagesPath.size() + 1),
                      head, outcome);
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
};

}  // namespace

absl::StatusOr<std::unique_ptr<HttpGateway>> HttpGateway::Start(
    DepotOperations* operations, const HttpGatewayOptions& options) {
  auto gateway = std::make_shared<Gateway>(operations, options.metrics);
  absl::StatusOr<std::unique_ptr<HttpServer>> server =
      HttpServer::Start(options.http, [gateway](const HttpRequest& request) {
        return gateway->Handle(request);
      });
  if (!server.ok()) return server.status();
  return std::unique_ptr<HttpGateway>(new HttpGateway(*std::move(server)));
}

HttpGateway::~HttpGateway() = default;

}  // namespace h5depot::server
