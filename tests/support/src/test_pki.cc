#include "h5depot/testing/test_pki.h"

#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

#include <cstdio>
#include <memory>

#include "absl/strings/str_cat.h"

namespace h5depot::testing {
namespace {

struct KeyFree {
  void operator()(EVP_PKEY* key) const { EVP_PKEY_free(key); }
};
struct CertFree {
  void operator()(X509* cert) const { X509_free(cert); }
};
using Key = std::unique_ptr<EVP_PKEY, KeyFree>;
using Cert = std::unique_ptr<X509, CertFree>;

constexpr long kDay = 24 * 60 * 60;

absl::Status OpenSslError(const std::string& what) {
  char reason[256] = "no reason given";
  if (const unsigned long code = ERR_get_error()) {
    ERR_error_string_n(code, reason, sizeof(reason));
  }
  ERR_clear_error();
  return absl::InternalError(absl::StrCat(what, ": ", reason));
}

bool AddExtension(X509* cert, X509* issuer, int nid, const char* value) {
  X509V3_CTX context;
  X509V3_set_ctx_nodb(&context);
  X509V3_set_ctx(&context, issuer, cert, nullptr, nullptr, 0);
  X509_EXTENSION* extension =
      X509V3_EXT_conf_nid(nullptr, &context, nid, value);
  if (extension == nullptr) return false;
  const bool added = X509_add_ext(cert, extension, -1) == 1;
  X509_EXTENSION_free(extension);
  return added;
}

enum class Kind { kCa, kServer, kClient };

// A certificate for `key` named `name`, signed by `issuer` with
// `issuer_key` (itself when issuer is null), valid from `from` to `to`
// seconds from now.
absl::StatusOr<Cert> MakeCertificate(EVP_PKEY* key, const std::string& name,
                                     Kind kind, X509* issuer,
                                     EVP_PKEY* issuer_key, long from, long to,
                                     long serial) {
  Cert cert(X509_new());
  if (cert == nullptr) return OpenSslError("X509_new");
  X509_set_version(cert.get(), 2);
  ASN1_INTEGER_set(X509_get_serialNumber(cert.get()), serial);
  X509_gmtime_adj(X509_getm_notBefore(cert.get()), from);
  X509_gmtime_adj(X509_getm_notAfter(cert.get()), to);
  X509_set_pubkey(cert.get(), key);
  X509_NAME* subject = X509_get_subject_name(cert.get());
  X509_NAME_add_entry_by_txt(
      subject, "CN", MBSTRING_ASC,
      reinterpret_cast<const unsigned char*>(name.c_str()), -1, -1, 0);
  X509* signer = issuer == nullptr ? cert.get() : issuer;
  X509_set_issuer_name(cert.get(), X509_get_subject_name(signer));
  bool ok = true;
  switch (kind) {
    case Kind::kCa:
      ok = AddExtension(cert.get(), signer, NID_basic_constraints,
                        "critical,CA:TRUE") &&
           AddExtension(cert.get(), signer, NID_key_usage,
                        "critical,keyCertSign,cRLSign") &&
           AddExtension(cert.get(), signer, NID_subject_key_identifier, "hash");
      break;
    case Kind::kServer:
      ok = AddExtension(cert.get(), signer, NID_basic_constraints,
                        "critical,CA:FALSE") &&
           AddExtension(cert.get(), signer, NID_ext_key_usage, "serverAuth") &&
           AddExtension(cert.get(), signer, NID_subject_alt_name,
                        "IP:127.0.0.1,IP:::1,DNS:localhost");
      break;
    case Kind::kClient:
      ok = AddExtension(cert.get(), signer, NID_basic_constraints,
                        "critical,CA:FALSE") &&
           AddExtension(cert.get(), signer, NID_ext_key_usage, "clientAuth");
      break;
  }
  if (!ok) return OpenSslError("adding an extension");
  if (X509_sign(cert.get(), issuer_key, EVP_sha256()) == 0) {
    return OpenSslError("X509_sign");
  }
  return cert;
}

absl::Status WritePem(const std::string& path, X509* cert, EVP_PKEY* key) {
  std::FILE* file = std::fopen(path.c_str(), "w");
  if (file == nullptr) {
    return absl::InternalError(absl::StrCat("cannot write ", path));
  }
  const bool ok = cert != nullptr
                      ? PEM_write_X509(file, cert) == 1
                      : PEM_write_PrivateKey(file, key, nullptr, nullptr, 0,
                                             nullptr, nullptr) == 1;
  std::fclose(file);
  if (!ok) return OpenSslError(absl::StrCat("writing ", path));
  return absl::OkStatus();
}

// A CA: its key and self-signed certificate, written to `dir`/`name`.pem.
struct Authority {
  Key key;
  Cert cert;
};

absl::StatusOr<Authority> MakeAuthority(const std::string& dir,
                                        const std::string& name, long serial,
                                        std::string* file) {
  Key key(EVP_EC_gen("P-256"));
  if (key == nullptr) return OpenSslError("EVP_EC_gen");
  absl::StatusOr<Cert> cert = MakeCertificate(
      key.get(), name, Kind::kCa, nullptr, key.get(), -kDay, 30 * kDay, serial);
  if (!cert.ok()) return cert.status();
  *file = absl::StrCat(dir, "/", name, ".pem");
  if (absl::Status status = WritePem(*file, cert->get(), nullptr);
      !status.ok()) {
    return status;
  }
  return Authority{std::move(key), *std::move(cert)};
}

absl::StatusOr<CertificateFiles> Issue(const std::string& dir,
                                       const std::string& name, Kind kind,
                                       const Authority& ca, long from, long to,
                                       long serial) {
  Key key(EVP_EC_gen("P-256"));
  if (key == nullptr) return OpenSslError("EVP_EC_gen");
  absl::StatusOr<Cert> cert = MakeCertificate(
      key.get(), name, kind, ca.cert.get(), ca.key.get(), from, to, serial);
  if (!cert.ok()) return cert.status();
  CertificateFiles files{absl::StrCat(dir, "/", name, ".crt"),
                         absl::StrCat(dir, "/", name, ".key")};
  if (absl::Status status = WritePem(files.cert_file, cert->get(), nullptr);
      !status.ok()) {
    return status;
  }
  if (absl::Status status = WritePem(files.key_file, nullptr, key.get());
      !status.ok()) {
    return status;
  }
  return files;
}

}  // namespace

absl::StatusOr<TestPki> MakeTestPki(const std::string& directory) {
  TestPki pki;
  absl::StatusOr<Authority> ca =
      MakeAuthority(directory, "test-ca", 1, &pki.ca_file);
  if (!ca.ok()) return ca.status();
  absl::StatusOr<Authority> other =
      MakeAuthority(directory, "other-ca", 2, &pki.other_ca_file);
  if (!other.ok()) return other.status();
  struct Wanted {
    CertificateFiles* files;
    const char* name;
    Kind kind;
    const Authority* ca;
    long from, to;
  };
  const Wanted wanted[] = {
      {&pki.server, "server", Kind::kServer, &*ca, -kDay, 30 * kDay},
      {&pki.client, "client", Kind::kClient, &*ca, -kDay, 30 * kDay},
      {&pki.expired, "expired", Kind::kServer, &*ca, -30 * kDay, -kDay},
      {&pki.other_server, "other-server", Kind::kServer, &*other, -kDay,
       30 * kDay},
      {&pki.other_client, "other-client", Kind::kClient, &*other, -kDay,
       30 * kDay},
  };
  long serial = 10;
  for (const Wanted& w : wanted) {
    absl::StatusOr<CertificateFiles> files =
        Issue(directory, w.name, w.kind, *w.ca, w.from, w.to, ++serial);
    if (!files.ok()) return files.status();
    *w.files = *std::move(files);
  }
  return pki;
}

}  // namespace h5depot::testing
