// TLS for the data lane's TCP connections (docs/SECURITY.md, "TLS"): the
// OpenSSL contexts both ends make from PEM files, and the server's copy of
// them that follows the files as they are replaced on disk. gRPC makes its
// own from the same files; LaneSocket::StartTls runs a connection through
// one of these.
#ifndef H5DEPOT_COMMON_TLS_H_
#define H5DEPOT_COMMON_TLS_H_

#include <sys/stat.h>

#include <array>
#include <memory>
#include <string>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "h5depot/internal/mutex.h"

struct ssl_ctx_st;  // OpenSSL's SSL_CTX

namespace h5depot::internal::tls {

// The PEM files of a server: its certificate chain and private key, and
// the CAs whose client certificates it requires (empty: none required).
struct ServerFiles {
  std::string cert_file;
  std::string key_file;
  std::string client_ca_file;
};

// The PEM files of a client: the CAs it trusts to sign the server's
// certificate (empty: the system's trusted roots), and the certificate
// chain and key it presents if the server asks (both or neither).
struct ClientFiles {
  std::string ca_file;
  std::string cert_file;
  std::string key_file;
};

// One immutable OpenSSL context, TLS 1.2 or later. Shared by every
// connection made from it, which keeps it alive.
class Context {
 public:
  // Errors name the file at fault: NOT_FOUND if one cannot be read,
  // INVALID_ARGUMENT if it holds no usable PEM, or the key does not match
  // the certificate.
  static absl::StatusOr<std::shared_ptr<const Context>> ForServer(
      const ServerFiles& files);
  static absl::StatusOr<std::shared_ptr<const Context>> ForClient(
      const ClientFiles& files);

  ~Context();
  Context(const Context&) = delete;
  Context& operator=(const Context&) = delete;

  bool is_server() const { return is_server_; }
  ssl_ctx_st* get() const { return ctx_; }

 private:
  Context(ssl_ctx_st* ctx, bool is_server) : ctx_(ctx), is_server_(is_server) {}
  ssl_ctx_st* ctx_;
  bool is_server_;
};

// A server's context, made again from its files when any of them changes
// (a new inode, size or modification time), so that certificates renewed
// on disk are served without a restart. Thread-safe.
class ReloadingServerContext {
 public:
  // Loads the files once: their errors are the server's start-up errors.
  static absl::StatusOr<std::unique_ptr<ReloadingServerContext>> Load(
      const ServerFiles& files);

  // The context for a connection accepted now. Looks at the files at most
  // once per `kRecheckInterval`; files that changed but do not load (a
  // certificate written before its key, say) leave the last good context
  // in use until they do, and the error in last_reload_error().
  std::shared_ptr<const Context> Current();

  // OK, or why the files on disk could not replace the context in use.
  absl::Status last_reload_error();

  // The files it follows.
  const ServerFiles& files() const { return files_; }

  static constexpr absl::Duration kRecheckInterval = absl::Seconds(1);

 private:
  // What identifies a file's version: device, inode, size, mtime (ns).
  using Stamp = std::array<int64_t, 5>;
  using Stamps = std::array<Stamp, 3>;
  explicit ReloadingServerContext(ServerFiles files)
      : files_(std::move(files)) {}
  Stamps StampFiles() const;

  const ServerFiles files_;
  Mutex mutex_;
  std::shared_ptr<const Context> current_ ABSL_GUARDED_BY(mutex_);
  Stamps stamps_ ABSL_GUARDED_BY(mutex_){};
  absl::Time next_check_ ABSL_GUARDED_BY(mutex_);
  absl::Status last_reload_error_ ABSL_GUARDED_BY(mutex_);
};

// OpenSSL's reasons for the last failures on this thread, oldest first,
// "; "-separated ("no reason given" if none), leaving its error queue
// empty for the next call.
std::string TakeOpenSslErrors();

}  // namespace h5depot::internal::tls

#endif  // H5DEPOT_COMMON_TLS_H_
