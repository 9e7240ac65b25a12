// h5depot::server::HttpGateway: the HTTP(S) codec over DepotOperations
// (--http-listen), so that programs that do not link h5depot read its
// images: HDF5's read-only S3 driver (ROS3) and h5py with driver="ros3",
// browsers, curl. Internal to the server; docs/HTTP.md is its user's
// manual.
//
//   GET  /v1/images?prefix=P&page_token=T&page_size=N   a JSON listing
//   HEAD /v1/images/{id}[?generation=N]                 its headers
//   GET  /v1/images/{id}[?generation=N]                 its bytes
//   PUT  /v1/images/{id}[?ttl=DURATION]                 a push of the body
//   DELETE /v1/images/{id}                              a delete
//   GET  /v1/status                                     memory, images, calls
//   GET  /, /assets/...                                 the console's files
//
// An image's answer carries Content-Length, ETag (http_semantics_internal.h),
// Last-Modified, X-H5depot-Generation and Accept-Ranges; GET and HEAD honour
// one Range (206, 416), If-Range, If-Match and If-None-Match (304, 412),
// and ?generation=N pins a generation still held. The body is sent from
// the image's memory, not copied, while the answer holds the generation
// it began with: an image replaced mid-download finishes with the bytes
// and ETag it started with, and never mixes two generations.
//
// Every request is one DepotOperations call, so it is authorised,
// validated and limited as on gRPC and the data lane: the bearer token of
// an `Authorization: Bearer` header; a request without one is the auth
// file's public principal if it has one (public prefixes, read only).
// Errors are JSON (http::ErrorJson) with the HTTP status of their code.
//
// The HTTP itself is an HttpServer's (http_server_internal.h): parsing,
// keep-alive, limits, TLS, and a body sent from the image's memory.
#ifndef H5DEPOT_SERVER_HTTP_GATEWAY_INTERNAL_H_
#define H5DEPOT_SERVER_HTTP_GATEWAY_INTERNAL_H_

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "server/src/depot_operations_internal.h"
#include "server/src/http_server_internal.h"
#include "server/src/server_metrics_internal.h"

namespace h5depot::server {

struct HttpGatewayOptions {
  // Where and how it listens, and its limits (HttpServerOptions).
  HttpServerOptions http;
  // Counts each call (Transport::kHttp), and gives /v1/status its call
  // counts; null: not counted, and /v1/status says 0. Must outlive the
  // gateway.
  ServerMetrics* metrics = nullptr;
  // Static files served at "/" (the web console), read at Start; empty:
  // none.
  std::string console_dir;
};

class HttpGateway {
 public:
  // Listens on options.http.listen and serves `operations`, which must
  // outlive the gateway. HttpServer::Start's errors; INVALID_ARGUMENT if
  // console_dir is not a readable directory of at most kMaxConsoleBytes.
  static absl::StatusOr<std::unique_ptr<HttpGateway>> Start(
      DepotOperations* operations, const HttpGatewayOptions& options);

  static constexpr uint64_t kMaxConsoleBytes = uint64_t{64} << 20;

  // Stops serving: HttpServer's destructor.
  ~HttpGateway();
  HttpGateway(const HttpGateway&) = delete;
  HttpGateway& operator=(const HttpGateway&) = delete;

  int port() const { return server_->port(); }

 private:
  explicit HttpGateway(std::unique_ptr<HttpServer> server)
      : server_(std::move(server)) {}

  std::unique_ptr<HttpServer> server_;
};

}  // namespace h5depot::server

#endif  // H5DEPOT_SERVER_HTTP_GATEWAY_INTERNAL_H_
