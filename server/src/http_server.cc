#include <arpa/inet.h>
#include <gnutls/abstract.h>
#include <gnutls/gnutls.h>
#include <gnutls/x509.h>
#include <microhttpd.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <fstream>
#include <sstream>
#include <thread>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "server/src/http_server_internal.h"
#include "server/src/tcp_listener_internal.h"

namespace h5depot::server {
namespace {

// One request's state, from its first call to its completion.
struct Exchange {
  // The handler runs on the second call (below).
  bool started = false;
  bool answered = false;
  // Where the body goes, while it arrives (null: nowhere).
  std::unique_ptr<HttpBodySink> sink;
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

// The certificate chain and key an HTTPS server presents, and the client
// CAs it trusts, as GnuTLS takes them: loaded from the PEM files of the
// ReloadingServerContext the other transports use, and loaded again
// whenever that context is remade (its files changed and load), so that a
// renewed certificate or a rotated client CA holds here when it holds on
// the lane and gRPC. Every version loaded is kept until the server stops,
// since a handshake or a check under way may still use an older one; a
// version is a few kilobytes, and certificates change rarely.
class HttpServer::TlsIdentity {
 public:
  explicit TlsIdentity(internal::tls::ReloadingServerContext* files)
      : files_(files) {}

  ~TlsIdentity() {
    for (Version& version : versions_) {
      for (gnutls_pcert_st& certificate : version.chain) {
        gnutls_pcert_deinit(&certificate);
      }
      gnutls_privkey_deinit(version.key);
      if (version.client_cas != nullptr) {
        gnutls_x509_trust_list_deinit(version.client_cas, 1);
      }
    }
  }

  // Loads the files once: their errors are the server's start-up errors.
  absl::Status Load() {
    absl::MutexLock lock(&mutex_);
    return LoadLocked(files_->Current().get());
  }

  // The chain and key for a handshake now: 0, or a GnuTLS error.
  int Current(gnutls_pcert_st** chain, unsigned* length,
              gnutls_privkey_t* key) {
    absl::MutexLock lock(&mutex_);
    RefreshLocked();
    if (versions_.empty()) return GNUTLS_E_CERTIFICATE_ERROR;
    Version& version = versions_.back();
    *chain = version.chain.data();
    *length = static_cast<unsigned>(version.chain.size());
    *key = version.key;
    return 0;
  }

  // Whether the client of `session` presented a certificate chain that
  // the current client CAs sign, for TLS client use. False without a
  // client CA file.
  bool TrustsClientOf(gnutls_session_t session) {
    gnutls_x509_trust_list_t client_cas = nullptr;
    {
      absl::MutexLock lock(&mutex_);
      RefreshLocked();
      if (versions_.empty()) return false;
      client_cas = versions_.back().client_cas;  // lives until the server
    }
    if (client_cas == nullptr) return false;
    unsigned count = 0;
    const gnutls_datum_t* sent = gnutls_certificate_get_peers(session, &count);
    if (sent == nullptr || count == 0) return false;
    std::vector<gnutls_x509_crt_t> chain;
    bool imported = true;
    for (unsigned i = 0; i < count && imported; ++i) {
      gnutls_x509_crt_t certificate = nullptr;
      imported = gnutls_x509_crt_init(&certificate) >= 0;
      if (!imported) break;
      chain.push_back(certificate);
      imported = gnutls_x509_crt_import(certificate, &sent[i],
                                        GNUTLS_X509_FMT_DER) >= 0;
    }
    unsigned problems = 1;
    if (imported) {
      gnutls_typed_vdata_st purpose{};
      purpose.type = GNUTLS_DT_KEY_PURPOSE_OID;
      purpose.data = reinterpret_cast<unsigned char*>(
          const_cast<char*>(GNUTLS_KP_TLS_WWW_CLIENT));
      if (gnutls_x509_trust_list_verify_crt2(
              client_cas, chain.data(), static_cast<unsigned>(chain.size()),
              &purpose, 1, 0, &problems, nullptr) < 0) {
        problems = 1;
      }
    }
    for (gnutls_x509_crt_t certificate : chain) {
      gnutls_x509_crt_deinit(certificate);
    }
    return problems == 0;
  }

 private:
  struct Version {
    std::vector<gnutls_pcert_st> chain;
    gnutls_privkey_t key = nullptr;
    gnutls_x509_trust_list_t client_cas = nullptr;  // null: none asked for
  };

  // Loads the files again if the context they make was remade. A failure
  // leaves the last version in use, as on the other transports.
  void RefreshLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mutex_) {
    const std::shared_ptr<const internal::tls::Context> context =
        files_->Current();
    if (context.get() != loaded_from_) LoadLocked(context.get()).IgnoreError();
  }

  static absl::StatusOr<std::string> ReadPem(const std::string& path) {
    std::ifstream file(path, std::ios::binary);
    if (!file) return absl::NotFoundError(absl::StrCat("cannot read ", path));
    std::ostringstream text;
    text << file.rdbuf();
    return text.str();
  }

  absl::Status LoadLocked(const void* context)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mutex_) {
    loaded_from_ = context;
    const internal::tls::ServerFiles& files = files_->files();
    absl::StatusOr<std::string> chain_pem = ReadPem(files.cert_file);
    if (!chain_pem.ok()) return chain_pem.status();
    absl::StatusOr<std::string> key_pem = ReadPem(files.key_file);
    if (!key_pem.ok()) return key_pem.status();
    Version version;
    version.chain.resize(kMaxChain);
    unsigned count = kMaxChain;
    gnutls_datum_t chain_datum{
        reinterpret_cast<unsigned char*>(chain_pem->data()),
        static_cast<unsigned>(chain_pem->size())};
    int error = gnutls_pcert_list_import_x509_raw(
        version.chain.data(), &count, &chain_datum, GNUTLS_X509_FMT_PEM, 0);
    if (error < 0) {
      return absl::InvalidArgumentError(
          absl::StrCat(files.cert_file, ": no certificate chain for HTTPS (",
                       gnutls_strerror(error), ")"));
    }
    version.chain.resize(count);
    gnutls_datum_t key_datum{reinterpret_cast<unsigned char*>(key_pem->data()),
                             static_cast<unsigned>(key_pem->size())};
    error = gnutls_privkey_init(&version.key);
    if (error >= 0) {
      error = gnutls_privkey_import_x509_raw(version.key, &key_datum,
                                             GNUTLS_X509_FMT_PEM, nullptr, 0);
    }
    if (error < 0) {
      for (gnutls_pcert_st& certificate : version.chain) {
        gnutls_pcert_deinit(&certificate);
      }
      if (version.key != nullptr) gnutls_privkey_deinit(version.key);
      return absl::InvalidArgumentError(
          absl::StrCat(files.key_file, ": no private key for HTTPS (",
                       gnutls_strerror(error), ")"));
    }
    if (!files.client_ca_file.empty()) {
      absl::StatusOr<std::string> cas_pem = ReadPem(files.client_ca_file);
      gnutls_datum_t cas_datum{};
      if (cas_pem.ok()) {
        cas_datum = {reinterpret_cast<unsigned char*>(cas_pem->data()),
                     static_cast<unsigned>(cas_pem->size())};
      }
      if (!cas_pem.ok() ||
          gnutls_x509_trust_list_init(&version.client_cas, 0) < 0 ||
          gnutls_x509_trust_list_add_trust_mem(version.client_cas, &cas_datum,
                                               nullptr, GNUTLS_X509_FMT_PEM, 0,
                                               0) <= 0) {
        for (gnutls_pcert_st& certificate : version.chain) {
          gnutls_pcert_deinit(&certificate);
        }
        gnutls_privkey_deinit(version.key);
        if (version.client_cas != nullptr) {
          gnutls_x509_trust_list_deinit(version.client_cas, 1);
        }
        return absl::InvalidArgumentError(
            absl::StrCat(files.client_ca_file, ": no client CA for HTTPS"));
      }
    }
    versions_.push_back(std::move(version));
    return absl::OkStatus();
  }

  static constexpr unsigned kMaxChain = 16;
  internal::tls::ReloadingServerContext* const files_;
  absl::Mutex mutex_;
  const void* loaded_from_ ABSL_GUARDED_BY(mutex_) = nullptr;
  std::vector<Version> versions_ ABSL_GUARDED_BY(mutex_);
};

namespace {

// TLS 1.2 or later, as on the other transports.
constexpr char kTlsPriorities[] = "NORMAL:-VERS-ALL:+VERS-TLS1.3:+VERS-TLS1.2";

// GnuTLS's certificate callback has no argument of its own, so each HTTPS
// server is found by the local port of the connection being handshaken.
absl::Mutex https_servers_mutex(absl::kConstInit);
absl::flat_hash_map<int, HttpServer::TlsIdentity*>& HttpsServers()
    ABSL_EXCLUSIVE_LOCKS_REQUIRED(https_servers_mutex) {
  static auto* servers = new absl::flat_hash_map<int, HttpServer::TlsIdentity*>;
  return *servers;
}

int LocalPort(int fd) {
  sockaddr_storage local{};
  socklen_t size = sizeof local;
  if (getsockname(fd, reinterpret_cast<sockaddr*>(&local), &size) != 0) {
    return -1;
  }
  return ntohs(local.ss_family == AF_INET6
                   ? reinterpret_cast<sockaddr_in6*>(&local)->sin6_port
                   : reinterpret_cast<sockaddr_in*>(&local)->sin_port);
}

int PresentCertificate(gnutls_session_t session,
                       const gnutls_datum_t* /*acceptable_cas*/,
                       int /*ca_count*/,
                       const gnutls_pk_algorithm_t* /*algorithms*/,
                       int /*algorithm_count*/, gnutls_pcert_st** chain,
                       unsigned int* length, gnutls_privkey_t* key) {
  const int port = LocalPort(gnutls_transport_get_int(session));
  HttpServer::TlsIdentity* identity = nullptr;
  {
    absl::MutexLock lock(&https_servers_mutex);
    auto found = HttpsServers().find(port);
    if (found != HttpsServers().end()) identity = found->second;
  }
  if (identity == nullptr) return GNUTLS_E_CERTIFICATE_ERROR;
  return identity->Current(chain, length, key);
}

// Whether the client of `connection` presented a certificate the current
// client CAs sign.
bool HasTrustedClientCertificate(MHD_Connection* connection,
                                 HttpServer::TlsIdentity& identity) {
  const MHD_ConnectionInfo* info =
      MHD_get_connection_info(connection, MHD_CONNECTION_INFO_GNUTLS_SESSION);
  if (info == nullptr || info->tls_session == nullptr) return false;
  return identity.TrustsClientOf(
      static_cast<gnutls_session_t>(info->tls_session));
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
                              const char* /*version*/, const char* upload_data,
                              size_t* upload_data_size, void** state) {
    auto* exchange = static_cast<Exchange*>(*state);
    if (exchange == nullptr) {
      // The first call sees only the head. Answering on it would make
      // libmicrohttpd close the connection after the answer, in case a
      // body follows that nobody reads; the answer is made on the next,
      // unless a body is coming: the handler then takes it or refuses it
      // now, before the client is told to send it (100 Continue).
      *state = exchange = new Exchange();
      if (MHD_lookup_connection_value(connection, MHD_HEADER_KIND,
                                      MHD_HTTP_HEADER_CONTENT_LENGTH) ==
              nullptr &&
          MHD_lookup_connection_value(connection, MHD_HEADER_KIND,
                                      MHD_HTTP_HEADER_TRANSFER_ENCODING) ==
              nullptr) {
        return MHD_YES;
      }
    }
    if (!exchange->started) {
      exchange->started = true;
      auto* server = static_cast<HttpServer*>(self);
      if (!server->tls_client_ca_.empty() &&
          !HasTrustedClientCertificate(connection, *server->tls_identity_)) {
        HttpAnswer refusal;
        refusal.status = 403;
        refusal.text =
            "a client certificate signed by the server's client CA is "
            "required\n";
        return Queue(connection, std::move(refusal), *exchange);
      }
      const MHD_ConnectionInfo* info = MHD_get_connection_info(
          connection, MHD_CONNECTION_INFO_CLIENT_ADDRESS);
      const HttpRequest request(
          connection, method, url,
          PeerOf(info == nullptr ? nullptr : info->client_addr));
      HttpAnswer answer = server->handler_(request);
      if (answer.body_sink == nullptr) {
        // Answered before any body is read: a body that follows is not
        // (libmicrohttpd then closes the connection after the answer).
        return Queue(connection, std::move(answer), *exchange);
      }
      exchange->sink = std::move(answer.body_sink);
      // The body comes on the calls after this one.
      if (*upload_data_size == 0) return MHD_YES;
    }
    if (*upload_data_size != 0) {
      const size_t size = *upload_data_size;
      *upload_data_size = 0;  // consumed, or dropped
      if (exchange->sink == nullptr) return MHD_YES;
      std::optional<HttpAnswer> early =
          exchange->sink->Append(upload_data, size);
      if (!early.has_value()) return MHD_YES;
      exchange->sink.reset();
      return Queue(connection, *std::move(early), *exchange);
    }
    if (exchange->answered || exchange->sink == nullptr) return MHD_YES;
    HttpAnswer answer = exchange->sink->Finish();
    exchange->sink.reset();
    return Queue(connection, std::move(answer), *exchange);
  }

  // Sends `answer` on `connection`.
  static MHD_Result Queue(MHD_Connection* connection, HttpAnswer answer,
                          Exchange& exchange) {
    exchange.answered = true;
    exchange.done = std::move(answer.done);

    auto* body = new Body{std::move(answer.text), std::move(answer.keep)};
    const void* bytes = answer.bytes;
    size_t size = static_cast<size_t>(answer.size);
    if (bytes == nullptr) {
      bytes = body->text.data();
      size = body->text.size();
    }
    // A 304 is a response whose body is never sent (libmicrohttpd sends
    // none for that status), of the 200's length, which libmicrohttpd then
    // gives as its one Content-Length; a buffer's would say 0.
    MHD_Response* response =
        answer.not_modified_length.has_value()
            ? MHD_create_response_from_callback(
                  *answer.not_modified_length, 4096,
                  [](void*, uint64_t, char*, size_t) -> ssize_t {
                    return MHD_CONTENT_READER_END_OF_STREAM;
                  },
                  body, &FreeBody)
            : MHD_create_response_from_buffer_with_free_callback_cls(
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

HttpServer::HttpServer(HttpHandler handler, int port)
    : handler_(std::move(handler)), port_(port) {}

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
  unsigned flags = MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_EPOLL;
  std::vector<MHD_OptionItem> settings = {
      {MHD_OPTION_LISTEN_SOCKET, listener->get(), nullptr},
      {MHD_OPTION_THREAD_POOL_SIZE, threads, nullptr},
      {MHD_OPTION_CONNECTION_LIMIT,
       static_cast<intptr_t>(options.max_connections), nullptr},
      {MHD_OPTION_PER_IP_CONNECTION_LIMIT,
       static_cast<intptr_t>(options.max_connections_per_address), nullptr},
      {MHD_OPTION_CONNECTION_TIMEOUT,
       static_cast<intptr_t>(absl::ToInt64Seconds(options.idle_timeout)),
       nullptr},
      {MHD_OPTION_CONNECTION_MEMORY_LIMIT,
       static_cast<intptr_t>(options.max_header_bytes), nullptr},
      // Two-argument options: the function as the value, its argument as
      // the pointer.
      {MHD_OPTION_UNESCAPE_CALLBACK, reinterpret_cast<intptr_t>(&KeepEscapes),
       nullptr},
      {MHD_OPTION_NOTIFY_COMPLETED,
       reinterpret_cast<intptr_t>(&HttpServerCallbacks::OnCompleted),
       server.get()},
  };
  if (options.tls != nullptr) {
    flags |= MHD_USE_TLS;
    server->tls_identity_ = std::make_unique<TlsIdentity>(options.tls);
    if (absl::Status loaded = server->tls_identity_->Load(); !loaded.ok()) {
      return loaded;
    }
    const std::string& client_ca_file = options.tls->files().client_ca_file;
    if (!client_ca_file.empty()) {
      std::ifstream file(client_ca_file, std::ios::binary);
      std::ostringstream text;
      text << file.rdbuf();
      server->tls_client_ca_ = text.str();
      if (!file || server->tls_client_ca_.empty()) {
        return absl::NotFoundError(
            absl::StrCat("cannot read the client CA file ", client_ca_file));
      }
      settings.push_back(
          {MHD_OPTION_HTTPS_MEM_TRUST, 0, server->tls_client_ca_.data()});
    }
    settings.push_back({MHD_OPTION_HTTPS_CERT_CALLBACK, 0,
                        reinterpret_cast<void*>(&PresentCertificate)});
    settings.push_back(
        {MHD_OPTION_HTTPS_PRIORITIES, 0, const_cast<char*>(kTlsPriorities)});
    absl::MutexLock lock(&https_servers_mutex);
    HttpsServers()[port] = server->tls_identity_.get();
  }
  settings.push_back({MHD_OPTION_END, 0, nullptr});
  server->daemon_ = MHD_start_daemon(
      flags, 0, nullptr, nullptr, &HttpServerCallbacks::OnRequest, server.get(),
      MHD_OPTION_ARRAY, settings.data(), MHD_OPTION_END);
  if (server->daemon_ == nullptr) {
    return absl::UnavailableError(
        absl::StrCat("cannot serve HTTP on ", options.listen));
  }
  listener->Release();  // libmicrohttpd's now: it closes it when it stops
  return server;
}

HttpServer::~HttpServer() {
  if (daemon_ != nullptr) MHD_stop_daemon(daemon_);
  if (tls_identity_ != nullptr) {
    absl::MutexLock lock(&https_servers_mutex);
    auto found = HttpsServers().find(port_);
    if (found != HttpsServers().end() && found->second == tls_identity_.get()) {
      HttpsServers().erase(found);
    }
  }
}

}  // namespace h5depot::server
