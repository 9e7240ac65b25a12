#include <arpa/inet.h>
#include <microhttpd.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <thread>

#include "absl/strings/str_cat.h"
#include "server/src/http_server_internal.h"
#include "server/src/tcp_listener_internal.h"

namespace h5depot::server {
namespace {

// One request's state, from its first call to its completion.
struct Exchange {
  // The handler's answer is made on the second call (below).
  bool answered = false;
  std::function<void(bool sent)> done;
};

// What an answer's body needs kept until libmicrohttpd is done with it.
struct Body {
  std::string text;
  std::shared_ptr<const void> keep;
};

void FreeBody(void* body) { delete static_cast<Body*>(body); }

// Leaves %-escapes alone: paths and query values reach the handlers as
// sent, to be decoded once, strictly (libmicrohttpd's own decoding would
// turn a %00 into the end of the string).
size_t KeepEscapes(void* /*unused*/, MHD_Connection* /*unused*/, char* text) {
  return std::strlen(text);
}

std::string PeerOf(const sockaddr* address) {
  char text[INET6_ADDRSTRLEN] = "";
  if (address == nullptr) return "";
  if (address->sa_family == AF_INET) {
    const auto* v4 = reinterpret_cast<const sockaddr_in*>(address);
    inet_ntop(AF_INET, &v4->sin_addr, text, sizeof text);
    return absl::StrCat("ipv4:", text, ":", ntohs(v4->sin_port));
  }
  if (address->sa_family == AF_INET6) {
    const auto* v6 = reinterpret_cast<const sockaddr_in6*>(address);
    inet_ntop(AF_INET6, &v6->sin6_addr, text, sizeof text);
    return absl::StrCat("ipv6:[", text, "]:", ntohs(v6->sin6_port));
  }
  return "";
}

}  // namespace

std::optional<std::string_view> HttpRequest::raw_query(const char* name) const {
  const char* value =
      MHD_lookup_connection_value(connection_, MHD_GET_ARGUMENT_KIND, name);
  if (value == nullptr) return std::nullopt;
  return std::string_view(value);
}

std::optional<std::string_view> HttpRequest::header(const char* name) const {
  const char* value =
      MHD_lookup_connection_value(connection_, MHD_HEADER_KIND, name);
  if (value == nullptr) return std::nullopt;
  return std::string_view(value);
}

struct HttpServerCallbacks {
  static MHD_Result OnRequest(void* self, MHD_Connection* connection,
                              const char* url, const char* method,
                              const char* /*version*/,
                              const char* /*upload_data*/,
                              size_t* upload_data_size, void** state) {
    auto* exchange = static_cast<Exchange*>(*state);
    if (exchange == nullptr) {
      // The first call sees only the head. Answering on it would make
      // libmicrohttpd close the connection after the answer, in case a
      // body follows that nobody reads; the answer is made on the next.
      *state = new Exchange();
      return MHD_YES;
    }
    if (*upload_data_size != 0) {
      *upload_data_size = 0;  // no endpoint takes a body: dropped
      return MHD_YES;
    }
    if (exchange->answered) return MHD_YES;
    exchange->answered = true;
    const MHD_ConnectionInfo* info =
        MHD_get_connection_info(connection, MHD_CONNECTION_INFO_CLIENT_ADDRESS);
    const HttpRequest request(
        connection, method, url,
        PeerOf(info == nullptr ? nullptr : info->client_addr));
    HttpAnswer answer = static_cast<HttpServer*>(self)->handler_(request);
    exchange->done = std::move(answer.done);

    auto* body = new Body{std::move(answer.text), std::move(answer.keep)};
    const void* bytes = answer.bytes;
    size_t size = static_cast<size_t>(answer.size);
    if (bytes == nullptr) {
      bytes = body->text.data();
      size = body->text.size();
    }
    MHD_Response* response =
        MHD_create_response_from_buffer_with_free_callback_cls(
            size, const_cast<void*>(bytes), &FreeBody, body);
    if (response == nullptr) {
      FreeBody(body);
      return MHD_NO;  // closes the connection
    }
    for (const auto& [name, value] : answer.headers) {
      MHD_add_response_header(response, name.c_str(), value.c_str());
    }
    const MHD_Result queued = MHD_queue_response(
        connection, static_cast<unsigned>(answer.status), response);
    MHD_destroy_response(response);  // freed once sent
    return queued;
  }

  static void OnCompleted(void* /*self*/, MHD_Connection* /*connection*/,
                          void** state,
                          MHD_RequestTerminationCode termination) {
    auto* exchange = static_cast<Exchange*>(*state);
    if (exchange == nullptr) return;
    *state = nullptr;
    if (exchange->done) {
      exchange->done(termination == MHD_REQUEST_TERMINATED_COMPLETED_OK);
    }
    delete exchange;
  }
};

absl::StatusOr<std::unique_ptr<HttpServer>> HttpServer::Start(
    const HttpServerOptions& options, HttpHandler handler) {
  if (options.max_connections == 0 ||
      options.max_connections_per_address == 0 ||
      options.max_header_bytes < 1024 ||
      options.idle_timeout < absl::Seconds(1)) {
    return absl::InvalidArgumentError(
        "HTTP limits: connections must be positive, the header limit at "
        "least 1 KiB, the idle timeout at least a second");
  }
  // Bound here rather than by libmicrohttpd, so that addresses are read as
  // gRPC's and the lane's are, and the port is known.
  int port = 0;
  absl::StatusOr<internal::UniqueFd> listener =
      ListenTcp("HTTP", options.listen, &port);
  if (!listener.ok()) return listener.status();
  const unsigned threads =
      options.threads != 0 ? options.threads
                           : std::max(1u, std::thread::hardware_concurrency());
  auto server =
      std::unique_ptr<HttpServer>(new HttpServer(std::move(handler), port));
  const int listen_fd = listener->get();
  server->daemon_ = MHD_start_daemon(
      MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_EPOLL | MHD_USE_TURBO, 0,
      nullptr, nullptr, &HttpServerCallbacks::OnRequest, server.get(),
      MHD_OPTION_LISTEN_SOCKET, listen_fd, MHD_OPTION_THREAD_POOL_SIZE, threads,
      MHD_OPTION_CONNECTION_LIMIT,
      static_cast<unsigned>(options.max_connections),
      MHD_OPTION_PER_IP_CONNECTION_LIMIT,
      static_cast<unsigned>(options.max_connections_per_address),
      MHD_OPTION_CONNECTION_TIMEOUT,
      static_cast<unsigned>(absl::ToInt64Seconds(options.idle_timeout)),
      MHD_OPTION_CONNECTION_MEMORY_LIMIT, options.max_header_bytes,
      MHD_OPTION_UNESCAPE_CALLBACK, &KeepEscapes, nullptr,
      MHD_OPTION_NOTIFY_COMPLETED, &HttpServerCallbacks::OnCompleted,
      server.get(), MHD_OPTION_END);
  if (server->daemon_ == nullptr) {
    return absl::UnavailableError(
        absl::StrCat("cannot serve HTTP on ", options.listen));
  }
  listener->Release();  // libmicrohttpd's now: it closes it when it stops
  return server;
}

HttpServer::~HttpServer() { MHD_stop_daemon(daemon_); }

}  // namespace h5depot::server
