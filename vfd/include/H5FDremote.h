/*
 * H5FDremote.h: the remote driver, an HDF5 virtual file driver that opens
 * and creates images held by h5depotd as if they were local files.
 *
 * The name given to H5Fopen/H5Fcreate is the image id; the server is named
 * on the file access property list:
 *
 *   hid_t fapl = H5Pcreate(H5P_FILE_ACCESS);
 *   H5Pset_fapl_remote(fapl, "unix:/run/h5depot.sock", NULL);
 *   hid_t file = H5Fopen("run-42/packet", H5F_ACC_RDONLY, fapl);
 *
 * Consistency: a file reads one generation of the image for its whole life,
 * whatever other clients push meanwhile. Writes stay in this process until
 * H5Fflush or H5Fclose, which commit the whole image as a new generation,
 * atomically, and only if the image is still at the generation the file
 * was opened from (or last committed). A commit that loses that race fails
 * and publishes nothing. H5Fcreate with H5F_ACC_EXCL (the default) fails if
 * the image id exists; with H5F_ACC_TRUNC it replaces the image, on the
 * same condition: that nobody pushed it after H5Fcreate looked.
 *
 * Call H5Fflush(file, H5F_SCOPE_GLOBAL) before H5Fclose to learn whether
 * the commit succeeded: HDF5 1.10 cannot survive a failing close (the file
 * id would stay registered after the file was freed), so H5Fclose never
 * fails because of the driver. A commit that fails inside H5Fclose is
 * passed to the automatic error handler (by default printed to stderr) and
 * left on the error stack, and nothing is published.
 *
 * Tokens: a server started with an auth file serves only callers with a
 * token it knows. The token goes in H5FD_remote_config_t.token; without
 * one, the driver takes it from the environment (H5DEPOT_TOKEN, or the
 * first line of the file H5DEPOT_TOKEN_FILE names). Files opened with
 * different tokens never share a connection.
 *
 * Errors are reported on the HDF5 error stack under the error class
 * "h5depot" (h5depot's one class), major message "h5depot remote driver",
 * with a minor message saying what kind of failure it is (server
 * unavailable, image not found, commit conflict, timed out, ...) and a
 * description saying what happened.
 *
 * Thread safety: every function here may be called from any thread.
 * Debian's HDF5 is built thread-safe and serialises calls into the driver.
 *
 * This header is plain C and includes only hdf5.h.
 */
#ifndef H5DEPOT_VFD_H5FDREMOTE_H_
#define H5DEPOT_VFD_H5FDREMOTE_H_

#include <stddef.h>
#include <stdint.h>

#include "hdf5.h"

#ifdef __cplusplus
extern "C" {
#endif

/* The driver id. Registers the driver on first use (and again after
 * H5close), once, whichever thread gets there first. */
#define H5FD_REMOTE (H5FD_remote_init())

/* The value the version field must hold for this header's struct layout.
 * Version 1 structs (without `token`) are still accepted: only their
 * fields are read, and the token then comes from the environment. */
#define H5FD_REMOTE_CONFIG_VERSION 2

/* Longest server target H5Pset_fapl_remote accepts, without the NUL. */
#define H5FD_REMOTE_MAX_TARGET_LEN 1023

/* Longest token H5Pset_fapl_remote accepts, without the NUL. */
#define H5FD_REMOTE_MAX_TOKEN_LEN 1024

/* Longest TLS file path H5Pset_fapl_remote accepts, without the NUL. */
#define H5FD_REMOTE_MAX_PATH_LEN 4095

/* Tuning of one file access property list. Start from
 * H5FD_REMOTE_CONFIG_INIT (the defaults) and change what you need. */
/* HDF5 names, not the project style:
 * NOLINTNEXTLINE(readability-identifier-naming) */
typedef struct H5FD_remote_config_t {
  /* H5FD_REMOTE_CONFIG_VERSION. */
  int32_t version;
  /* Unit of caching and of local (uncommitted) writes: a power of two from
   * 4 KiB to 16 MiB. Default 64 KiB. */
  size_t page_size;
  /* Bytes of clean pages each open file keeps; at least one page. Pages
   * written but not yet committed are kept in addition, whatever this
   * says, and so is a buffer for readahead of up to a quarter of this.
   * Default 64 MiB. */
  size_t cache_size;
  /* Bytes read past a cache miss, in the same round trip. Doubles while
   * misses are sequential, up to a quarter of the cache. Default 64 KiB;
   * 0 turns readahead off. */
  size_t readahead;
  /* How long to wait for the server to answer when first connecting.
   * Default 10000; must be positive. */
  uint32_t connect_timeout_ms;
  /* Deadline of each request to the server: an open, a read (reads are
   * split into requests of at most 64 MiB), a commit (one request carrying
   * the whole image); a request moving image bytes gets one second more
   * per 32 MiB it moves. Default 30000; must be positive, so that no
   * request can hang forever. */
  uint32_t call_timeout_ms;
  /* (Version 2.) The bearer token to present to a server started with an
   * auth file: 1 to H5FD_REMOTE_MAX_TOKEN_LEN printable ASCII characters
   * without spaces, NUL-terminated. H5Pset_fapl_remote copies it into the
   * property list, so it may be freed once that returns. NULL or "": the
   * token in the environment (H5DEPOT_TOKEN, H5DEPOT_TOKEN_FILE), if any.
   * As every h5depot client, the driver sends a token only over TLS
   * (below) or to a server on this host (a Unix socket or a loopback
   * address). Default NULL. */
  const char* token;
  /* (Version 2.) TLS, for a server started with a certificate
   * (docs/SECURITY.md, "TLS"): the connection is encrypted and the
   * server's certificate checked against the CAs in the PEM file
   * tls_ca_file (NULL or "": the system's trusted CAs); tls_cert_file and
   * tls_key_file (PEM, both or neither) are the client's certificate, for
   * a server that requires one. On when use_tls is non-zero or a path is
   * given; with none of the four set, from the environment
   * (H5DEPOT_TLS_CA_FILE, H5DEPOT_TLS_CERT_FILE, H5DEPOT_TLS_KEY_FILE,
   * H5DEPOT_TLS=1). Paths of at most H5FD_REMOTE_MAX_PATH_LEN characters,
   * copied like the token. Over TLS the token may go to any host. Default
   * 0 and NULL: no TLS unless the environment asks. */
  int32_t use_tls;
  const char* tls_ca_file;
  const char* tls_cert_file;
  const char* tls_key_file;
} H5FD_remote_config_t;

/* The defaults, for initialising an H5FD_remote_config_t. */
#define H5FD_REMOTE_CONFIG_INIT                                              \
  {                                                                          \
    H5FD_REMOTE_CONFIG_VERSION, (size_t)64 * 1024, (size_t)64 * 1024 * 1024, \
        (size_t)64 * 1024, 10000u, 30000u, NULL, 0, NULL, NULL, NULL         \
  }

/* Counters of one open file, for tuning and for tests. */
/* NOLINTNEXTLINE(readability-identifier-naming) */
typedef struct H5FD_remote_file_info_t {
  /* The generation the file reads from: the one it was opened at, or the
   * one it last committed. 0 for a created file not yet committed. */
  uint64_t generation;
  /* Requests this file sent to the server (opens, reads, commits). */
  uint64_t round_trips;
  /* Image bytes received from, and pushed to, the server. */
  uint64_t bytes_fetched;
  uint64_t bytes_pushed;
  /* Read calls from HDF5, and how many of the pages they touched were
   * cached and how many had to be fetched. */
  uint64_t reads;
  uint64_t page_hits;
  uint64_t page_misses;
  /* Successful commits (new generations published) by this file. */
  uint64_t commits;
} H5FD_remote_file_info_t;

/* Registers the driver if it is not registered and returns its id, or
 * H5I_INVALID_HID if HDF5 refused. Idempotent and thread-safe. */
hid_t H5FD_remote_init(void);

/* Makes `fapl_id` use the remote driver with the server at `target`
 * ("host:port", "unix:/path" or any gRPC target) and `config` (copied,
 * its token included; NULL for the defaults). Nothing is contacted until
 * a file is opened. Fails, with the reason on the error stack, if `target`
 * is empty or too long or `config` is out of range (the message never
 * quotes the token). */
herr_t H5Pset_fapl_remote(hid_t fapl_id, const char* target,
                          const H5FD_remote_config_t* config);

/* Reads back the settings of a file access property list that uses the
 * remote driver. `target_out` (may be NULL) receives the target,
 * NUL-terminated, and fails if `target_size` is too small for it;
 * `config_out` (may be NULL) receives the effective configuration, with
 * `token` and the TLS paths always NULL: they stay inside the property
 * list (the token is a secret, and a pointer into the list would not
 * outlive it). Set
 * config_out->version to the version of the caller's struct first (as
 * H5FD_REMOTE_CONFIG_INIT does): a 1 receives only the version 1 fields;
 * any other value, this header's whole struct. */
herr_t H5Pget_fapl_remote(hid_t fapl_id, char* target_out, size_t target_size,
                          H5FD_remote_config_t* config_out);

/* Fills `info` with the counters of `file_id`, an open file that uses the
 * remote driver. */
herr_t H5FD_remote_get_file_info(hid_t file_id, H5FD_remote_file_info_t* info);

#ifdef __cplusplus
}
#endif

#endif /* H5DEPOT_VFD_H5FDREMOTE_H_ */
