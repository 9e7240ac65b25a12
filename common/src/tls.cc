#include "h5depot/internal/tls.h"

#include <openssl/err.h>
#include <openssl/ssl.h>
#include <sys/stat.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <utility>

#include "absl/strings/str_cat.h"

namespace h5depot::internal::tls {
namespace {

// OK if `path` can be opened for reading, else NOT_FOUND naming it and
// `what` it was meant to be; OpenSSL's own errors for a missing file are
// far less clear.
absl::Status Readable(const std::string& path, const char* what) {
  std::FILE* file = std::fopen(path.c_str(), "r");
  if (file == nullptr) {
    return absl::NotFoundError(absl::StrCat("cannot read the ", what, " '",
                                            path, "': ", std::strerror(errno)));
  }
  std::fclose(file);
  return absl::OkStatus();
}

absl::Status Unusable(const std::string& path, const char* what) {
  return absl::InvalidArgumentError(absl::StrCat(
      "the ", what, " '", path, "' is not usable: ", TakeOpenSslErrors()));
}

// A context for `method` with the settings both ends share: TLS 1.2 at
// least, and nothing that could renegotiate under a blocking transfer.
SSL_CTX* NewContext(const SSL_METHOD* method) {
  SSL_CTX* ctx = SSL_CTX_new(method);
  if (ctx == nullptr) return nullptr;
  SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
  SSL_CTX_set_options(ctx, SSL_OP_NO_RENEGOTIATION);
  // A record arrives in one read, not a header read and a body read. The
  // read-ahead buffer stays one record long: OpenSSL moves the unread rest
  // of it to the front before each record, so a larger one costs a copy of
  // all it holds per 16 KiB record (a 256 KiB buffer halved TLS's rate).
  SSL_CTX_set_read_ahead(ctx, 1);
  // Images are bulk data: AES-128-GCM first (as fast as the CPU's AES
  // instructions go), the others where the peer lacks it.
  SSL_CTX_set_ciphersuites(ctx,
                           "TLS_AES_128_GCM_SHA256:TLS_AES_256_GCM_SHA384:"
                           "TLS_CHACHA20_POLY1305_SHA256");
  return ctx;
}

absl::Status UseIdentity(SSL_CTX* ctx, const std::string& cert_file,
                         const std::string& key_file) {
  if (absl::Status status = Readable(cert_file, "certificate"); !status.ok()) {
    return status;
  }
  if (absl::Status status = Readable(key_file, "private key"); !status.ok()) {
    return status;
  }
  if (SSL_CTX_use_certificate_chain_file(ctx, cert_file.c_str()) != 1) {
    return Unusable(cert_file, "certificate");
  }
  if (SSL_CTX_use_PrivateKey_file(ctx, key_file.c_str(), SSL_FILETYPE_PEM) !=
      1) {
    return Unusable(key_file, "private key");
  }
  if (SSL_CTX_check_private_key(ctx) != 1) {
    ERR_clear_error();
    return absl::InvalidArgumentError(
        absl::StrCat("the private key '", key_file,
                     "' does not belong to the certificate '", cert_file, "'"));
  }
  return absl::OkStatus();
}

absl::Status TrustCas(SSL_CTX* ctx, const std::string& ca_file) {
  if (absl::Status status = Readable(ca_file, "CA certificate file");
      !status.ok()) {
    return status;
  }
  if (SSL_CTX_load_verify_locations(ctx, ca_file.c_str(), nullptr) != 1) {
    return Unusable(ca_file, "CA certificate file");
  }
  return absl::OkStatus();
}

}  // namespace

std::string TakeOpenSslErrors() {
  std::string reasons;
  while (const unsigned long code = ERR_get_error()) {
    char text[256];
    ERR_error_string_n(code, text, sizeof(text));
    if (!reasons.empty()) reasons += "; ";
    reasons += text;
  }
  return reasons.empty() ? "no reason given" : reasons;
}

Context::~Context() { SSL_CTX_free(ctx_); }

absl::StatusOr<std::shared_ptr<const Context>> Context::ForServer(
    const ServerFiles& files) {
  if (files.cert_file.empty() || files.key_file.empty()) {
    return absl::InvalidArgumentError(
        "TLS needs both a certificate file and a private key file");
  }
  SSL_CTX* ctx = NewContext(TLS_server_method());
  if (ctx == nullptr) {
    return absl::InternalError(
        absl::StrCat("cannot make a TLS context: ", TakeOpenSslErrors()));
  }
  std::shared_ptr<const Context> context(new Context(ctx, true));
  if (absl::Status status = UseIdentity(ctx, files.cert_file, files.key_file);
      !status.ok()) {
    return status;
  }
  if (!files.client_ca_file.empty()) {
    if (absl::Status status = TrustCas(ctx, files.client_ca_file);
        !status.ok()) {
      return status;
    }
    SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER | SSL_VERIFY_FAIL_IF_NO_PEER_CERT,
                       nullptr);
  }
  // Lane connections are long-lived and pooled: a resumed session would
  // save little, and a session cache is state to bound.
  SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_OFF);
  SSL_CTX_set_num_tickets(ctx, 0);
  return context;
}

absl::StatusOr<std::shared_ptr<const Context>> Context::ForClient(
    const ClientFiles& files) {
  if (files.cert_file.empty() != files.key_file.empty()) {
    return absl::InvalidArgumentError(
        "a client certificate needs its private key, and a key its "
        "certificate: give both files or neither");
  }
  SSL_CTX* ctx = NewContext(TLS_client_method());
  if (ctx == nullptr) {
    return absl::InternalError(
        absl::StrCat("cannot make a TLS context: ", TakeOpenSslErrors()));
  }
  std::shared_ptr<const Context> context(new Context(ctx, false));
  if (files.ca_file.empty()) {
    if (SSL_CTX_set_default_verify_paths(ctx) != 1) {
      return absl::InternalError(absl::StrCat(
          "cannot load the system's trusted CAs: ", TakeOpenSslErrors()));
    }
  } else if (absl::Status status = TrustCas(ctx, files.ca_file); !status.ok()) {
    return status;
  }
  if (!files.cert_file.empty()) {
    if (absl::Status status = UseIdentity(ctx, files.cert_file, files.key_file);
        !status.ok()) {
      return status;
    }
  }
  SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, nullptr);
  return context;
}

absl::StatusOr<std::unique_ptr<ReloadingServerContext>>
ReloadingServerContext::Load(const ServerFiles& files) {
  std::unique_ptr<ReloadingServerContext> reloading(
      new ReloadingServerContext(files));
  // Stamped before loading: a file replaced meanwhile is loaded again at
  // the next check rather than missed.
  const Stamps stamps = reloading->StampFiles();
  absl::StatusOr<std::shared_ptr<const Context>> context =
      Context::ForServer(files);
  if (!context.ok()) return context.status();
  MutexLock lock(&reloading->mutex_);
  reloading->current_ = *std::move(context);
  reloading->stamps_ = stamps;
  reloading->next_check_ = absl::Now() + kRecheckInterval;
  return reloading;
}

ReloadingServerContext::Stamps ReloadingServerContext::StampFiles() const {
  Stamps stamps{};
  const std::string* paths[] = {&files_.cert_file, &files_.key_file,
                                &files_.client_ca_file};
  for (size_t i = 0; i < stamps.size(); ++i) {
    struct stat info {};
    if (paths[i]->empty() || ::stat(paths[i]->c_str(), &info) != 0) continue;
    stamps[i] = {static_cast<int64_t>(info.st_dev),
                 static_cast<int64_t>(info.st_ino),
                 static_cast<int64_t>(info.st_size),
                 static_cast<int64_t>(info.st_mtim.tv_sec),
                 static_cast<int64_t>(info.st_mtim.tv_nsec)};
  }
  return stamps;
}

std::shared_ptr<const Context> ReloadingServerContext::Current() {
  MutexLock lock(&mutex_);
  const absl::Time now = absl::Now();
  if (now < next_check_) return current_;
  next_check_ = now + kRecheckInterval;
  const Stamps stamps = StampFiles();
  if (stamps == stamps_) return current_;
  // A context takes a millisecond or so to make; connections are accepted
  // one at a time, so holding the lock for it delays nobody else.
  absl::StatusOr<std::shared_ptr<const Context>> context =
      Context::ForServer(files_);
  if (!context.ok()) {
    last_reload_error_ = context.status();
    return current_;
  }
  current_ = *std::move(context);
  stamps_ = stamps;
  last_reload_error_ = absl::OkStatus();
  return current_;
}

absl::Status ReloadingServerContext::last_reload_error() {
  MutexLock lock(&mutex_);
  return last_reload_error_;
}

}  // namespace h5depot::internal::tls
