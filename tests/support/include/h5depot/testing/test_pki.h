// h5depot::testing::MakeTestPki: a small public key infrastructure made
// afresh by a test with OpenSSL, as PEM files in a directory of its own:
// a CA, a server and a client certificate it signed, an expired server
// certificate, and a second, unrelated CA with a server and a client
// certificate of its own (the "wrong CA"). Server certificates name
// 127.0.0.1, ::1 and localhost. Keys are ECDSA P-256, made in
// milliseconds.
//
// Example:
//   TempDir dir = *TempDir::Make();
//   absl::StatusOr<TestPki> pki = MakeTestPki(dir.path());
//   options.tls_cert_file = pki->server.cert_file;
//   options.tls_key_file = pki->server.key_file;
//   client_options.tls_ca_file = pki->ca_file;
#ifndef H5DEPOT_TESTING_TEST_PKI_H_
#define H5DEPOT_TESTING_TEST_PKI_H_

#include <string>

#include "absl/status/statusor.h"

namespace h5depot::testing {

struct CertificateFiles {
  std::string cert_file;
  std::string key_file;
};

struct TestPki {
  std::string ca_file;            // the CA every party trusts
  CertificateFiles server;        // signed by it, valid now
  CertificateFiles client;        // signed by it, valid now
  CertificateFiles expired;       // a server certificate signed by it, expired
  std::string other_ca_file;      // a CA nobody here trusts
  CertificateFiles other_server;  // signed by the other CA
  CertificateFiles other_client;  // signed by the other CA
};

// Writes the files into `directory` (which must exist). INTERNAL if
// OpenSSL fails, with its reason.
absl::StatusOr<TestPki> MakeTestPki(const std::string& directory);

}  // namespace h5depot::testing

#endif  // H5DEPOT_TESTING_TEST_PKI_H_
