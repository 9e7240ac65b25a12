// h5depot::server::HttpGateway: the HTTP(S) codec over DepotOperations
// (--http-listen), so that programs that do not link h5depot read its
// images: HDF5's read-only S3 driver (ROS3) and h5py with driver="ros3",
// browsers, curl. Internal to the server; docs/HTTP.md is its user's
// manual.
//
//   GET  /v1/images?prefix=P&page_token=T&page_size=N   a JSON listing
//   HEAD /v1/images/{id}[?generation=N]                 its headers
//   GET  /v1/images/{id}[?generation=N]                 its bytes
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
// The HTTP itself (parsing, keep-alive) is civetweb's, the library
// Prometheus's exposer (--metrics-listen) is served by too; each
// connection is served on one of civetweb's worker threads. Plain HTTP
// only: Debian's civetweb 1.15 looks up OpenSSL 1.1 functions that
// OpenSSL 3 no longer has, and crashes on a TLS connection
// (docs/HTTP.md, "HTTPS"), so the server keeps the gateway on a loopback
// address when it serves TLS elsewhere.
#ifndef H5DEPOT_SERVER_HTTP_GATEWAY_INTERNAL_H_
#define H5DEPOT_SERVER_HTTP_GATEWAY_INTERNAL_H_

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "server/src/depot_operations_internal.h"
#include "server/src/server_metrics_internal.h"

struct mg_context;  // civetweb's server

namespace h5depot::server {

struct HttpGatewayOptions {
  // "HOST:PORT" to listen on (port 0: any free one).
  std::string listen;
  // Connections served at once, one worker thread each; a further one
  // waits in the accept queue until a connection closes. An idle
  // keep-alive connection holds its thread until keep_alive_timeout.
  size_t max_connections = 128;
  // How long a request may take to arrive, headers and body, and how long
  // a send may make no progress (a client that stops reading): past it
  // the connection is closed, and the generation it was sent is let go.
  absl::Duration request_timeout = absl::Seconds(30);
  // How long an idle keep-alive connection is kept open.
  absl::Duration keep_alive_timeout = absl::Seconds(15);
  // Largest request head (request line and headers); a larger one is
  // answered 431 and the connection closed.
  size_t max_header_bytes = 16 << 10;
  // Counts each call (Transport::kHttp); null: not counted. Must outlive
  // the gateway.
  ServerMetrics* metrics = nullptr;
};

class HttpGateway {
 public:
  // Listens on options.listen and serves `operations`, which must outlive
  // the gateway. UNAVAILABLE if the address cannot be bound,
  // INVALID_ARGUMENT for a malformed address or limit.
  static absl::StatusOr<std::unique_ptr<HttpGateway>> Start(
      DepotOperations* operations, const HttpGatewayOptions& options);

  // Stops listening and waits for the requests under way to end (a send
  // to a client that does not read ends within request_timeout).
  ~HttpGateway();
  HttpGateway(const HttpGateway&) = delete;
  HttpGateway& operator=(const HttpGateway&) = delete;

  int port() const { return port_; }

  struct Impl;  // the handlers' state (http_gateway.cc)

 private:
  HttpGateway(std::unique_ptr<Impl> impl, mg_context* context, int port);

  std::unique_ptr<Impl> impl_;
  mg_context* context_;
  int port_;
};

}  // namespace h5depot::server

#endif  // H5DEPOT_SERVER_HTTP_GATEWAY_INTERNAL_H_
