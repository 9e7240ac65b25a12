// h5depot::server::HttpServer: an HTTP/1.1 listener that hands each
// request to one handler and sends what it answers, with the bodies of
// large answers sent from memory the handler lends rather than copied.
// The server's HTTP endpoints (the gateway, http_gateway_internal.h; the
// metrics, server_metrics_internal.h) are each one of these. Internal to
// the server; the one place libmicrohttpd is spoken to.
//
// libmicrohttpd parses the requests, keeps connections alive and sends the
// answers on a few event threads (epoll): an idle or slow connection holds
// no thread, only its buffers, so the limits below bound what clients can
// hold. A handler runs on one of those threads and must not block.
#ifndef H5DEPOT_SERVER_HTTP_SERVER_INTERNAL_H_
#define H5DEPOT_SERVER_HTTP_SERVER_INTERNAL_H_

#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "h5depot/internal/tls.h"

struct MHD_Connection;  // libmicrohttpd's
struct MHD_Daemon;

namespace h5depot::server {

// One request, as its handler sees it; valid while the handler runs.
class HttpRequest {
 public:
  std::string_view method() const { return method_; }
  // The path as the client sent it, %-escapes and all (decoding is the
  // handler's: http::DecodePath).
  std::string_view raw_path() const { return raw_path_; }
  // Query parameter `name` as sent, %-escapes and all; nullopt if absent.
  std::optional<std::string_view> raw_query(const char* name) const;
  // Request header `name` (any case); nullopt if absent.
  std::optional<std::string_view> header(const char* name) const;
  // The client, in gRPC's notation ("ipv4:127.0.0.1:40123",
  // "ipv6:[::1]:40123"), as Caller::peer() names every transport's.
  const std::string& peer() const { return peer_; }

 private:
  friend struct HttpServerCallbacks;
  HttpRequest(MHD_Connection* connection, std::string_view method,
              std::string_view raw_path, std::string peer)
      : connection_(connection),
        method_(method),
        raw_path_(raw_path),
        peer_(std::move(peer)) {}

  MHD_Connection* connection_;
  std::string_view method_;
  std::string_view raw_path_;
  std::string peer_;
};

struct HttpAnswer;

// Where a request's body goes, for a handler that takes one (a PUT): fed
// the body as it arrives, in order, on a server thread, then asked for the
// answer. Destroyed unfinished if the client leaves (or stalls for the
// idle timeout) before the end, or once it answered early.
class HttpBodySink {
 public:
  virtual ~HttpBodySink() = default;
  // The next `size` bytes of the body. An answer ends the exchange there:
  // it is sent, the rest of the body is not read, and the connection is
  // closed after it.
  virtual std::optional<HttpAnswer> Append(const char* data, size_t size) = 0;
  // The whole body has arrived.
  virtual HttpAnswer Finish() = 0;
};

// What a handler answers.
struct HttpAnswer {
  int status = 200;
  // Besides the Content-Length (and Date, Connection) the server adds.
  std::vector<std::pair<std::string, std::string>> headers;
  // The body: `text`, unless `bytes` is set. A HEAD request's answer has
  // the same headers, Content-Length included, and no body.
  std::string text;
  // A body in memory the answer does not own, sent from there without a
  // copy; `keep` holds that memory until the answer has been sent or the
  // connection is gone.
  const uint8_t* bytes = nullptr;
  uint64_t size = 0;
  std::shared_ptr<const void> keep;
  // A 304 (Not Modified): the Content-Length the 200 answer would have
  // had, sent as this answer's, with no body (RFC 9110 section 8.6 lets a
  // 304 carry no other length: "0" would tell a cache the image is empty).
  std::optional<uint64_t> not_modified_length;
  // Called once when the exchange ends, on a server thread: whether the
  // whole answer went out (false: the client left, or stopped reading for
  // the idle timeout).
  std::function<void(bool sent)> done;
  // Set by a handler that takes the request's body: the answer is then its
  // sink's (HttpBodySink), and everything above is ignored. Without one, a
  // body is not read (and the connection is closed after the answer).
  std::unique_ptr<HttpBodySink> body_sink;
};

using HttpHandler = std::function<HttpAnswer(const HttpRequest&)>;

struct HttpServerOptions {
  // "HOST:PORT" (port 0: any free one); HOST an IPv4 or IPv6 address
  // ("[::1]") or "localhost".
  std::string listen;
  // Connections open at once, over all clients and from one address; a
  // connection beyond either is closed as it is accepted.
  size_t max_connections = 1024;
  size_t max_connections_per_address = 256;
  // A connection on which nothing moves for this long (a request that
  // stops arriving, an idle keep-alive connection, a client that stops
  // reading) is closed. Whole seconds, at least one.
  absl::Duration idle_timeout = absl::Seconds(30);
  // Memory for one request's head (request line and headers); a larger
  // head is refused (431) and the connection closed.
  size_t max_header_bytes = 16 << 10;
  // Event threads; 0: one per CPU.
  unsigned threads = 0;
  // HTTPS (TLS 1.2 or later) with the certificate chain and key of these
  // files, read again whenever `tls` is remade from them (when they
  // change on disk), and, if it names a client CA file, only for clients
  // with a certificate that CA signed (others are answered 403); the CA
  // file is read once, at Start. Null: plain HTTP. Must outlive the
  // server.
  internal::tls::ReloadingServerContext* tls = nullptr;
};

class HttpServer {
 public:
  // Listens and serves every request with `handler`. UNAVAILABLE if the
  // address cannot be bound, INVALID_ARGUMENT for a malformed address or
  // limit.
  static absl::StatusOr<std::unique_ptr<HttpServer>> Start(
      const HttpServerOptions& options, HttpHandler handler);

  // Stops listening, closes every connection (answers under way are cut
  // off, and what they hold let go) and returns once no handler runs.
  ~HttpServer();
  HttpServer(const HttpServer&) = delete;
  HttpServer& operator=(const HttpServer&) = delete;

  int port() const { return port_; }

  // The certificate an HTTPS server presents (http_server.cc).
  class TlsIdentity;

 private:
  friend struct HttpServerCallbacks;  // libmicrohttpd's (http_server.cc)
  HttpServer(HttpHandler handler, int port);

  const HttpHandler handler_;
  std::unique_ptr<TlsIdentity> tls_identity_;  // null: plain HTTP
  // The client CA file as read at start (PEM), only so that libmicrohttpd
  // asks for a client certificate; empty: none asked for. Which CAs an
  // acceptable one is signed by is tls_identity_'s current list.
  std::string tls_client_ca_;
  MHD_Daemon* daemon_ = nullptr;
  int port_;
};

}  // namespace h5depot::server

#endif  // H5DEPOT_SERVER_HTTP_SERVER_INTERNAL_H_
