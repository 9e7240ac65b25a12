#include <cstdlib>
#include <string>

#include "client/src/tls_source_internal.h"

namespace h5depot::internal {
namespace {

std::string Environment(const char* name) {
  const char* value = std::getenv(name);
  return value == nullptr ? std::string() : std::string(value);
}

}  // namespace

absl::Status ResolveTls(ClientOptions* options) {
  const bool given = options->use_tls || !options->tls_ca_file.empty() ||
                     !options->tls_cert_file.empty() ||
                     !options->tls_key_file.empty();
  if (!given) {
    options->tls_ca_file = Environment("H5DEPOT_TLS_CA_FILE");
    options->tls_cert_file = Environment("H5DEPOT_TLS_CERT_FILE");
    options->tls_key_file = Environment("H5DEPOT_TLS_KEY_FILE");
    options->use_tls = Environment("H5DEPOT_TLS") == "1";
  }
  options->use_tls = options->use_tls || !options->tls_ca_file.empty() ||
                     !options->tls_cert_file.empty() ||
                     !options->tls_key_file.empty();
  if (options->tls_cert_file.empty() != options->tls_key_file.empty()) {
    return absl::InvalidArgumentError(
        "a client certificate needs its private key, and a key its "
        "certificate: give both TLS files or neither");
  }
  return absl::OkStatus();
}

tls::ClientFiles TlsFilesOf(const ClientOptions& options) {
  return {options.tls_ca_file, options.tls_cert_file, options.tls_key_file};
}

}  // namespace h5depot::internal
