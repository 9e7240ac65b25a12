/* h5depot C API: push, fetch and open HDF5 file images held by h5depotd.
 *
 * A thin C layer over the C++ client (h5depot/client.h), usable from C and,
 * through ISO_C_BINDING, from Fortran. Link with libh5depot:
 *
 *   cc app.c $(pkg-config --cflags --libs h5depot)
 *
 * Conventions:
 *   - Functions returning int return H5DEPOT_OK (0) on success, otherwise
 *     one of the h5depot_code values below, which say what to do next.
 *   - Functions returning a pointer or an hid_t return NULL or a negative
 *     hid_t on failure.
 *   - After any failure, h5depot_errmsg() describes it. The message is
 *     thread-local: it belongs to the thread that made the failing call and
 *     stays valid until that thread's next h5depot call.
 *   - An h5depot_client may be used by many threads at once.
 *   - Image ids are 1 to 255 characters from A-Z a-z 0-9 . _ - /.
 *
 * Example (process A pushes, process B fetches and opens without a copy):
 *
 *   h5depot_client *c = h5depot_connect("unix:/run/h5depot/h5depot.sock");
 *   if (c == NULL) { fprintf(stderr, "%s\n", h5depot_errmsg()); ... }
 *   uint64_t generation;
 *   h5depot_push_file(c, "run-42/packet", file_id, &generation);  // A
 *   hid_t f = h5depot_open(c, "run-42/packet", 0);               // B
 */
#ifndef H5DEPOT_CLIENT_H5DEPOT_H_
#define H5DEPOT_CLIENT_H5DEPOT_H_

#include <stddef.h>
#include <stdint.h>

#include "hdf5.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Result codes; the numbering is gRPC's and Abseil's. */
typedef enum h5depot_code {
  H5DEPOT_OK = 0,
  H5DEPOT_CANCELLED = 1,
  H5DEPOT_UNKNOWN = 2,
  H5DEPOT_INVALID_ARGUMENT = 3,  /* bad id, bad flags, not HDF5 */
  H5DEPOT_DEADLINE_EXCEEDED = 4, /* a wait or call timed out */
  H5DEPOT_NOT_FOUND = 5,         /* no such image */
  H5DEPOT_ALREADY_EXISTS = 6,    /* create-only push, image exists */
  H5DEPOT_PERMISSION_DENIED = 7,
  H5DEPOT_RESOURCE_EXHAUSTED = 8,  /* over a server or memory limit */
  H5DEPOT_FAILED_PRECONDITION = 9, /* generation changed meanwhile */
  H5DEPOT_ABORTED = 10,
  H5DEPOT_OUT_OF_RANGE = 11,
  H5DEPOT_UNIMPLEMENTED = 12,
  H5DEPOT_INTERNAL = 13,
  H5DEPOT_UNAVAILABLE = 14, /* server unreachable; retry may work */
  H5DEPOT_DATA_LOSS = 15    /* bytes did not match their checksum */
} h5depot_code;

typedef struct h5depot_client h5depot_client;

typedef struct h5depot_image_info {
  uint64_t size;
  uint64_t generation;
  uint64_t checksum; /* XXH3-64 of the whole image */
  int64_t created_unix_micros;
  int64_t expires_unix_micros; /* 0: never expires */
} h5depot_image_info;

/* Options of h5depot_push_buffer_ex; zero-initialise, then set fields. */
typedef struct h5depot_push_options {
  /* Non-zero: push only if the current generation is if_generation_match
   * (0 there meaning "only if the image does not exist yet"). */
  int use_if_generation_match;
  uint64_t if_generation_match;
  /* Delete the image this many milliseconds after it is published;
   * 0: never. */
  uint64_t ttl_ms;
} h5depot_push_options;

/* Describes the calling thread's last failure; "" if there was none. */
const char* h5depot_errmsg(void);

/* The h5depot_code of the calling thread's last failure. */
int h5depot_errcode(void);

/* Connects to h5depotd at `target` ("host:port" or "unix:/path").
 * Returns NULL if the server cannot be reached (see h5depot_errmsg). */
h5depot_client* h5depot_connect(const char* target);

/* Closes the connection and frees `client`. NULL is ignored. */
void h5depot_disconnect(h5depot_client* client);

/* Pushes `len` bytes at `buf` (borrowed for the call) as a new generation of
 * `image_id`; stores the generation in *generation if not NULL. */
int h5depot_push_buffer(h5depot_client* client, const char* image_id,
                        const void* buf, size_t len, uint64_t* generation);

/* h5depot_push_buffer with options (NULL: defaults). */
int h5depot_push_buffer_ex(h5depot_client* client, const char* image_id,
                           const void* buf, size_t len,
                           const h5depot_push_options* options,
                           uint64_t* generation);

/* Fetches the current generation of `image_id` into a new malloc'ed buffer:
 * *buf and *len receive it and the caller owns it (free() it, or hand it to
 * h5depot_open_image / H5LTopen_file_image with
 * H5LT_FILE_IMAGE_DONT_COPY). *generation is optional (NULL). On failure
 * *buf is NULL and *len 0. */
int h5depot_fetch(h5depot_client* client, const char* image_id, void** buf,
                  size_t* len, uint64_t* generation);

/* Waits up to timeout_ms milliseconds for `image_id` to exist.
 * H5DEPOT_DEADLINE_EXCEEDED if it does not appear in time. */
int h5depot_wait(h5depot_client* client, const char* image_id,
                 int64_t timeout_ms);

/* Describes the current generation of `image_id`. */
int h5depot_stat(h5depot_client* client, const char* image_id,
                 h5depot_image_info* info);

/* Deletes `image_id`. H5DEPOT_NOT_FOUND if it does not exist. */
int h5depot_delete(h5depot_client* client, const char* image_id);

#ifdef __cplusplus
} /* extern "C" */
#endif

#endif /* H5DEPOT_CLIENT_H5DEPOT_H_ */
