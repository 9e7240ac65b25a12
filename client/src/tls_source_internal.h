// Where a client's TLS settings come from. Internal to the client.
#ifndef H5DEPOT_CLIENT_TLS_SOURCE_INTERNAL_H_
#define H5DEPOT_CLIENT_TLS_SOURCE_INTERNAL_H_

#include <memory>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "h5depot/client.h"
#include "h5depot/internal/tls.h"

namespace h5depot::internal {

// Settles `options`' TLS fields (client.h, ClientOptions::use_tls): when
// none is set, takes them from the environment; use_tls is true afterwards
// if TLS is to be used. INVALID_ARGUMENT if a certificate comes without
// its key or a key without its certificate.
absl::Status ResolveTls(ClientOptions* options);

// The files of resolved `options`, as tls.h takes them.
tls::ClientFiles TlsFilesOf(const ClientOptions& options);

}  // namespace h5depot::internal

#endif  // H5DEPOT_CLIENT_TLS_SOURCE_INTERNAL_H_
