#include <algorithm>
#include <cstring>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "civetweb.h"
#include "server/src/http_gateway_internal.h"
#include "server/src/http_semantics_internal.h"

namespace h5depot::server {
namespace {

constexpr char kImagesPath[] = "/v1/images";

// One request as the handlers see it: civetweb's connection and what was
// asked, the caller and what the answer came to (for the metrics).
struct Exchange {
  mg_connection* connection;
  const mg_request_info* request;
  Operation counted_as = Operation::kFetch;
  absl::StatusCode code = absl::StatusCode::kOk;
  uint64_t image_bytes = 0;

  std::string_view header(const char* name) const {
    const char* value = mg_get_header(connection, name);
    return value == nullptr ? std::string_view() : std::string_view(value);
  }
  bool has_header(const char* name) const {
    return mg_get_header(connection, name) != nullptr;
  }
  // The value of query parameter `name`, percent-decoded; nullopt if
  // absent (or longer than any value this gateway takes).
  std::optional<std::string> query(const char* name) const {
    if (request->query_string == nullptr) return std::nullopt;
    char value[512];
    const int length =
        mg_get_var(request->query_string, std::strlen(request->query_string),
                   name, value, sizeof value);
    if (length < 0) return std::nullopt;
    return std::string(value, static_cast<size_t>(length));
  }
};

// The peer in gRPC's notation, as Caller::peer() names every transport's.
std::string PeerOf(const mg_request_info& request) {
  const std::string address = request.remote_addr;
  if (address.find(':') != std::string::npos) {
    return absl::StrCat("ipv6:[", address, "]:", request.remote_port);
  }
  return absl::StrCat("ipv4:", address, ":", request.remote_port);
}

// Starts an answer of `status` with the headers every answer has.
void StartAnswer(Exchange& exchange, int status) {
  mg_response_header_start(exchange.connection, status);
  // The answers describe images that change: a cache must check the ETag
  // with the server before it reuses one.
  mg_response_header_add(exchange.connection, "Cache-Control", "no-cache", -1);
}

void AddHeader(Exchange& exchange, const char* name, std::string_view value) {
  mg_response_header_add(exchange.connection, name, value.data(),
                         static_cast<int>(value.size()));
}

// Sends `body` (JSON) whole with `status`, as the answer; returns status.
int AnswerJson(Exchange& exchange, int status, std::string_view body) {
  StartAnswer(exchange, status);
  AddHeader(exchange, "Content-Type", "application/json");
  AddHeader(exchange, "Content-Length", absl::StrCat(body.size()));
  if (status == 401) {
    AddHeader(exchange, "WWW-Authenticate", "Bearer realm=\"h5depot\"");
  }
  mg_response_header_send(exchange.connection);
  if (std::string_view(exchange.request->request_method) != "HEAD") {
    mg_write(exchange.connection, body.data(), body.size());
  }
  return status;
}

// Answers a failed call with its status and an error body.
int AnswerError(Exchange& exchange, const absl::Status& status) {
  exchange.code = status.code();
  return AnswerJson(exchange, http::StatusFor(status.code()),
                    http::ErrorJson(status));
}

// Answers a method this gateway does not serve.
int AnswerMethodNotAllowed(Exchange& exchange) {
  exchange.code = absl::StatusCode::kUnimplemented;
  const std::string body = http::ErrorJson(absl::UnimplementedError(
      absl::StrCat(exchange.request->request_method,
                   " is not served here: images are read with GET and HEAD")));
  StartAnswer(exchange, 405);
  AddHeader(exchange, "Allow", "GET, HEAD");
  AddHeader(exchange, "Content-Type", "application/json");
  AddHeader(exchange, "Content-Length", absl::StrCat(body.size()));
  mg_response_header_send(exchange.connection);
  mg_write(exchange.connection, body.data(), body.size());
  return 405;
}

// Writes `length` bytes from `data`, in pieces civetweb's int-sized
// writes take; false once the client stops taking them (it left, or
// made no progress for the request timeout).
bool WriteBody(mg_connection* connection, const uint8_t* data,
               uint64_t length) {
  constexpr uint64_t kPiece = uint64_t{256} << 20;
  while (length > 0) {
    const size_t piece = static_cast<size_t>(std::min(length, kPiece));
    const int written = mg_write(connection, data, piece);
    if (written <= 0 || static_cast<size_t>(written) != piece) return false;
    data += piece;
    length -= piece;
  }
  return true;
}

}  // namespace

struct HttpGateway::Impl {
  DepotOperations* operations;
  HttpGatewayOptions options;

  // civetweb's request handlers: `data` is the Impl.
  static int OnImages(mg_connection* connection, void* data);
  static int OnAnythingElse(mg_connection* connection, void* data);
  static int OnLogMessage(const mg_connection*, const char*) { return 1; }

  int Dispatch(Exchange& exchange);
  int ServeImage(Exchange& exchange, const Caller& caller,
                 std::string_view image_id, bool head);
  int ServeListing(Exchange& exchange, const Caller& caller);
};

int HttpGateway::Impl::OnImages(mg_connection* connection, void* data) {
  Impl& impl = *static_cast<Impl*>(data);
  Exchange exchange{connection, mg_get_request_info(connection)};
  const absl::Time start = absl::Now();
  const int status = impl.Dispatch(exchange);
  if (impl.options.metrics != nullptr) {
    impl.options.metrics->RecordCall(
        exchange.counted_as, Transport::kHttp, exchange.code,
        exchange.code == absl::StatusCode::kOk ? exchange.image_bytes : 0,
        absl::Now() - start);
  }
  return status;
}

int HttpGateway::Impl::OnAnythingElse(mg_connection* connection, void*) {
  Exchange exchange{connection, mg_get_request_info(connection)};
  return AnswerError(exchange,
                     absl::NotFoundError(absl::StrCat(
                         "no such resource: images are under ", kImagesPath)));
}

int HttpGateway::Impl::Dispatch(Exchange& exchange) {
  const std::string_view method = exchange.request->request_method;
  // civetweb leaves the path as sent (decode_url=no): decoded here,
  // strictly, so that an id is what the client wrote or a 400.
  const std::optional<std::string> decoded =
      http::DecodePath(exchange.request->local_uri_raw == nullptr
                           ? std::string_view()
                           : exchange.request->local_uri_raw);
  if (!decoded.has_value()) {
    return AnswerError(exchange, absl::InvalidArgumentError(
                                     "the request path has a malformed or "
                                     "control-character %-escape"));
  }
  const std::string_view path = *decoded;
  const std::string peer = PeerOf(*exchange.request);
  const Caller caller =
      Caller::Known(Transport::kHttp, peer, IsLocalPeer(peer),
                    http::BearerToken(exchange.header("Authorization")));
  const bool head = method == "HEAD";
  if (path == kImagesPath || path == std::string(kImagesPath) + "/") {
    exchange.counted_as = Operation::kList;
    if (method != "GET" && !head) return AnswerMethodNotAllowed(exchange);
    return ServeListing(exchange, caller);
  }
  // civetweb sends only /v1/images and what is below it here.
  const std::string_view image_id =
      path.substr(std::string_view(kImagesPath).size() + 1);
  if (method != "GET" && !head) return AnswerMethodNotAllowed(exchange);
  return ServeImage(exchange, caller, image_id, head);
}

int HttpGateway::Impl::ServeListing(Exchange& exchange, const Caller& caller) {
  uint32_t page_size = 0;
  if (std::optional<std::string> text = exchange.query("page_size")) {
    std::optional<uint64_t> parsed = http::ParseDecimal(*text);
    if (!parsed || *parsed > UINT32_MAX) {
      return AnswerError(
          exchange, absl::InvalidArgumentError(absl::StrCat(
                        "page_size=", *text, " is not a number of images")));
    }
    page_size = static_cast<uint32_t>(*parsed);
  }
  const std::string prefix = exchange.query("prefix").value_or("");
  const std::string page_token = exchange.query("page_token").value_or("");
  absl::StatusOr<ListResult> listed =
      operations->List(caller, prefix, page_size, page_token);
  if (!listed.ok()) return AnswerError(exchange, listed.status());
  std::vector<ImageDescription> descriptions;
  descriptions.reserve(listed->images.size());
  for (const ImageRef& image : listed->images) {
    descriptions.push_back(DepotOperations::Describe(*image));
  }
  return AnswerJson(exchange, 200,
                    http::ListingJson(descriptions, listed->next_page_token));
}

int HttpGateway::Impl::ServeImage(Exchange& exchange, const Caller& caller,
                                  std::string_view image_id, bool head) {
  std::optional<uint64_t> generation;
  if (std::optional<std::string> text = exchange.query("generation")) {
    generation = http::ParseDecimal(*text);
    if (!generation || *generation == 0) {
      return AnswerError(exchange, absl::InvalidArgumentError(absl::StrCat(
                                       "generation=", *text,
                                       " is not a generation (1 or more)")));
    }
  }
  // Held until the answer is sent: the generation whose bytes go out.
  absl::StatusOr<ImageRef> image;
  if (generation.has_value()) {
    exchange.counted_as = Operation::kRead;
    image = operations->OpenReader(caller, image_id, *generation);
  } else if (head) {
    exchange.counted_as = Operation::kStat;
    image = operations->Stat(caller, image_id);
  } else {
    exchange.counted_as = Operation::kFetch;
    image = operations->Fetch(caller, image_id);
  }
  if (!image.ok()) return AnswerError(exchange, image.status());
  const StoredImage& stored = **image;
  const ImageDescription description = DepotOperations::Describe(stored);
  const std::string tag = http::EntityTag(description);

  // RFC 9110 section 13.2.2's order: If-Match, If-None-Match, then Range
  // with If-Range.
  if (exchange.has_header("If-Match") &&
      !http::TagListMatches(exchange.header("If-Match"), tag,
                            http::Comparison::kStrong)) {
    return AnswerError(exchange,
                       absl::FailedPreconditionError(absl::StrCat(
                           "'", std::string(image_id), "' is at ", tag,
                           ", which the If-Match header does not name")));
  }
  if (exchange.has_header("If-None-Match") &&
      http::TagListMatches(exchange.header("If-None-Match"), tag,
                           http::Comparison::kWeak)) {
    StartAnswer(exchange, 304);
    AddHeader(exchange, "ETag", tag);
    mg_response_header_send(exchange.connection);
    return 304;
  }
  http::RangeSelection selection =
      http::SelectRange(exchange.header("Range"), description.size);
  if (selection.kind != http::RangeSelection::Kind::kWhole &&
      exchange.has_header("If-Range") && exchange.header("If-Range") != tag) {
    selection = http::RangeSelection();  // changed since: the whole of it
  }
  if (selection.kind == http::RangeSelection::Kind::kUnsatisfiable) {
    exchange.code = absl::StatusCode::kOutOfRange;
    StartAnswer(exchange, 416);
    AddHeader(exchange, "Content-Range",
              http::ContentRange(selection, description.size));
    AddHeader(exchange, "Content-Length", "0");
    mg_response_header_send(exchange.connection);
    return 416;
  }
  const bool partial = selection.kind == http::RangeSelection::Kind::kPartial;
  const ByteRange range =
      partial ? selection.range : ByteRange{0, description.size};
  const int status = partial ? 206 : 200;
  StartAnswer(exchange, status);
  AddHeader(exchange, "Content-Type", "application/x-hdf5");
  AddHeader(exchange, "Content-Length", absl::StrCat(range.length));
  AddHeader(exchange, "Accept-Ranges", "bytes");
  AddHeader(exchange, "ETag", tag);
  AddHeader(exchange, "Last-Modified",
            absl::FormatTime("%a, %d %b %Y %H:%M:%S GMT", stored.created(),
                             absl::UTCTimeZone()));
  AddHeader(exchange, "X-H5depot-Generation",
            absl::StrCat(description.generation));
  if (partial) {
    AddHeader(exchange, "Content-Range",
              http::ContentRange(selection, description.size));
  }
  mg_response_header_send(exchange.connection);
  if (head) return status;
  if (!WriteBody(exchange.connection, stored.data() + range.offset,
                 range.length)) {
    exchange.code = absl::StatusCode::kCancelled;  // the client left
    return status;
  }
  exchange.image_bytes = range.length;
  return status;
}

absl::StatusOr<std::unique_ptr<HttpGateway>> HttpGateway::Start(
    DepotOperations* operations, const HttpGatewayOptions& options) {
  const size_t colon = options.listen.rfind(':');
  if (colon == std::string::npos || colon == 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "the HTTP listen address '", options.listen, "' is not HOST:PORT"));
  }
  if (options.max_connections == 0 || options.max_header_bytes < 1024 ||
      options.request_timeout <= absl::ZeroDuration() ||
      options.keep_alive_timeout <= absl::ZeroDuration()) {
    return absl::InvalidArgumentError(
        "the HTTP limits must be positive (and headers at least 1 KiB)");
  }
  mg_init_library(0);
  auto impl = std::make_unique<Impl>();
  impl->operations = operations;
  impl->options = options;

  // civetweb's notation: "127.0.0.1:8080", "[::1]:8080".
  std::string host(options.listen.substr(0, colon));
  if (host == "localhost") host = "127.0.0.1";
  const std::string listening =
      absl::StrCat(host, ":", options.listen.substr(colon + 1));
  auto milliseconds = [](absl::Duration duration) {
    return absl::StrCat(std::max<int64_t>(
        1, std::min<int64_t>(absl::ToInt64Milliseconds(duration), INT32_MAX)));
  };
  const std::string threads = absl::StrCat(options.max_connections);
  const std::string request_timeout = milliseconds(options.request_timeout);
  const std::string keep_alive_timeout =
      milliseconds(options.keep_alive_timeout);
  const std::string header_bytes = absl::StrCat(options.max_header_bytes);
  std::vector<const char*> settings = {
      "listening_ports",
      listening.c_str(),
      "num_threads",
      threads.c_str(),
      "request_timeout_ms",
      request_timeout.c_str(),
      "keep_alive_timeout_ms",
      keep_alive_timeout.c_str(),
      "enable_keep_alive",
      "yes",
      "max_request_size",
      header_bytes.c_str(),
      "enable_directory_listing",
      "no",
      "decode_url",
      "no",
  };
  settings.push_back(nullptr);

  mg_callbacks callbacks{};
  callbacks.log_message = &Impl::OnLogMessage;
  mg_context* context = mg_start(&callbacks, impl.get(), settings.data());
  if (context == nullptr) {
    return absl::UnavailableError(
        absl::StrCat("cannot serve HTTP on ", options.listen,
                     " (address in use, or not an address of this machine?)"));
  }
  mg_server_port ports[4];
  const int port_count = mg_get_server_ports(context, 4, ports);
  const int port = port_count > 0 ? ports[0].port : 0;
  mg_set_request_handler(context, kImagesPath, &Impl::OnImages, impl.get());
  mg_set_request_handler(context, "/", &Impl::OnAnythingElse, impl.get());
  return std::unique_ptr<HttpGateway>(
      new HttpGateway(std::move(impl), context, port));
}

HttpGateway::HttpGateway(std::unique_ptr<Impl> impl, mg_context* context,
                         int port)
    : impl_(std::move(impl)), context_(context), port_(port) {}

HttpGateway::~HttpGateway() { mg_stop(context_); }

}  // namespace h5depot::server
