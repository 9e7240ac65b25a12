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
 *   - fork(): the parent keeps using its clients. A child may use the
 *     clients it inherited (the first call makes the child's own
 *     connections; the parent's are left alone) and connect new ones,
 *     unless it was forked while another thread of the parent was in a
 *     call that uses gRPC (anything but a push or fetch over the data
 *     lane): then every call there fails at once with
 *     H5DEPOT_FAILED_PRECONDITION. h5depot_disconnect in a child frees
 *     only what the child made, and returns at once.
 *   - Image ids are 1 to 255 characters from A-Z a-z 0-9 . _ - /.
 *
 * Example (process A pushes, process B fetches and opens without a copy):
 *
 *   h5depot_client *c = h5depot_connect("unix:/run/h5depot/h5depot.sock");
 *   if (c == NULL) { fprintf(stderr, "%s\n", h5depot_errmsg()); ... }
 *   uint64_t generation;
 *   h5depot_push_file(c, "run-42/packet", file_id, &generation);  // A
 *   hid_t f = h5depot_open(c, "run-42/packet", 0);               // B
 *
 * HDF5 file images: the ownership flags are the H5LT_FILE_IMAGE_* values
 * of H5LTpublic.h (OPEN_RW 0x1, DONT_COPY 0x2, DONT_RELEASE 0x4), with the
 * meaning the HDF5 file image guide gives them:
 *
 *   flags                       copied   who frees the buffer    may grow
 *   0 / OPEN_RW                 yes      the caller, at once     yes
 *   DONT_COPY (| OPEN_RW)       no       HDF5, when the file     yes
 *                                        closes (or the call
 *                                        fails)
 *   DONT_COPY | DONT_RELEASE    no       the caller, once HDF5   no
 *     (| OPEN_RW)                        has closed the file
 *
 * A file image opened by h5depot is closed with H5Fclose, or with
 * h5depot_close_image to keep its final buffer. See docs/FILE_IMAGES.md.
 */
#ifndef H5DEPOT_CLIENT_H5DEPOT_H_
#define H5DEPOT_CLIENT_H5DEPOT_H_

#include <stddef.h>
#include <stdint.h>

#include "hdf5.h"
/* The H5LT_FILE_IMAGE_* ownership flags; needs hdf5.h first. */
#include "H5LTpublic.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Result codes; the numbering is gRPC's and Abseil's, and each means one
 * situation on every call (the project's one error table,
 * docs/ARCHITECTURE.md "Errors"). The comment says what to do next. */
typedef enum h5depot_code {
  H5DEPOT_OK = 0,
  H5DEPOT_CANCELLED = 1, /* the caller cancelled */
  H5DEPOT_UNKNOWN = 2,
  /* malformed image id, bad flags or request, not an HDF5 image: fix the
   * call */
  H5DEPOT_INVALID_ARGUMENT = 3,
  H5DEPOT_DEADLINE_EXCEEDED = 4, /* a wait or call deadline passed */
  H5DEPOT_NOT_FOUND = 5,         /* no such image (or generation) */
  /* create-only push (if_generation_match 0), the image exists: choose
   * another id, or fetch it */
  H5DEPOT_ALREADY_EXISTS = 6,
  H5DEPOT_PERMISSION_DENIED = 7,
  H5DEPOT_RESOURCE_EXHAUSTED = 8, /* over a server or memory limit */
  /* the caller's own state must be fixed first (objects still open in the
   * file, a buffer the caller keeps): fix it, then retry */
  H5DEPOT_FAILED_PRECONDITION = 9,
  /* a lost generation race: if_generation_match was N and generation N is
   * not current (or the image is gone); fetch again and redo the change */
  H5DEPOT_ABORTED = 10,
  H5DEPOT_OUT_OF_RANGE = 11,
  H5DEPOT_UNIMPLEMENTED = 12,
  H5DEPOT_INTERNAL = 13,
  H5DEPOT_UNAVAILABLE = 14, /* server unreachable or stopping: retry later */
  H5DEPOT_DATA_LOSS = 15,   /* bytes did not match their checksum: resend */
  /* the server needs a token it knows (h5depot_connect_options.token,
   * H5DEPOT_TOKEN): fix the credentials */
  H5DEPOT_UNAUTHENTICATED = 16
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
   * (else H5DEPOT_ABORTED), 0 there meaning "only if the image does not
   * exist yet" (else H5DEPOT_ALREADY_EXISTS). */
  int use_if_generation_match;
  uint64_t if_generation_match;
  /* Delete the image this many milliseconds after it is published;
   * 0: never. */
  uint64_t ttl_ms;
  /* Non-zero: before sending, open the image read-only and read every
   * object header; an image that fails is H5DEPOT_INVALID_ARGUMENT and
   * nothing is sent. (The server only checks for the HDF5 signature.) */
  int validate;
} h5depot_push_options;

/* Describes the calling thread's last failure; "" if there was none. */
const char* h5depot_errmsg(void);

/* The h5depot_code of the calling thread's last failure. */
int h5depot_errcode(void);

/* Options of h5depot_connect_ex; zero-initialise, then set fields. Zero
 * means the default, a negative value is H5DEPOT_INVALID_ARGUMENT. */
typedef struct h5depot_connect_options {
  /* How long connecting waits for the server to answer, in milliseconds.
   * Default 10000 (10 s). */
  int64_t connect_timeout_ms;
  /* The deadline of every later call on the client, in milliseconds from
   * when it starts; pushes and fetches are given 1 s more per 32 MiB of
   * image bytes they move. A wait (h5depot_wait) answers within its own
   * timeout plus 1 s. Default 30000 (30 s). */
  int64_t call_timeout_ms;
  /* Non-zero: move image bytes over gRPC only, never the server's data
   * lane (the same results, slower; for a lane a firewall blocks). */
  int disable_data_lane;
  /* The bearer token of the client's principal, for a server started with
   * an auth file; copied, so it may be freed once the call returns. NULL
   * or "": the environment's H5DEPOT_TOKEN, or the first line of the file
   * H5DEPOT_TOKEN_FILE names; none if neither is set. A token is only sent
   * encrypted (TLS, below) or to a server on this host (a Unix socket or a
   * loopback address): connecting elsewhere with one and without TLS is
   * H5DEPOT_FAILED_PRECONDITION. */
  const char* token;
  /* TLS, for a server started with a certificate (docs/SECURITY.md): every
   * TCP connection is encrypted and the server's certificate checked
   * against the CAs in the PEM file tls_ca_file (NULL or "": the system's
   * trusted CAs). tls_cert_file and tls_key_file (PEM, both or neither)
   * are the client's certificate, for a server that requires one. On when
   * use_tls is non-zero or a file is given; with none of the four set,
   * from the environment (H5DEPOT_TLS_CA_FILE, H5DEPOT_TLS_CERT_FILE,
   * H5DEPOT_TLS_KEY_FILE, H5DEPOT_TLS=1). The paths are copied. */
  int use_tls;
  const char* tls_ca_file;
  const char* tls_cert_file;
  const char* tls_key_file;
} h5depot_connect_options;

/* Connects to h5depotd at `target` with the default options; the same as
 * h5depot_connect_ex(target, NULL). */
h5depot_client* h5depot_connect(const char* target);

/* Connects to h5depotd at `target`: "host:port", "[ipv6]:port",
 * "unix:/path/to/socket" or another gRPC target (dns:, ipv4:, ipv6:,
 * unix-abstract:). `options` may be NULL (the defaults). Each client has a
 * connection of its own; free it with h5depot_disconnect.
 *
 * Returns NULL on failure, with h5depot_errcode() and h5depot_errmsg()
 * saying which, and how long it took at most:
 *   H5DEPOT_INVALID_ARGUMENT  `target` is NULL or not a target (the
 *                             message says what a target looks like), or
 *                             a timeout is negative: at once, nothing is
 *                             contacted
 *   H5DEPOT_UNAVAILABLE       no server answered: at once if nothing
 *                             listens there (connection refused, no such
 *                             socket); after connect_timeout_ms if the
 *                             server or its host does not answer (stopped,
 *                             hung, unreachable, or a name that takes that
 *                             long to resolve)
 *   H5DEPOT_FAILED_PRECONDITION  in a child of fork() that cannot use
 *                             gRPC (above), or a token with a server that
 *                             may be on another host: at once
 *   H5DEPOT_UNAUTHENTICATED   the server needs a token, and this client
 *                             has none it knows
 *   another code              the server answered but refused: what it
 *                             said, at once
 *
 * Afterwards, every call on the client ends by its deadline
 * (call_timeout_ms after it starts, more for large transfers, above) with
 * H5DEPOT_DEADLINE_EXCEEDED if the server does not answer in time (it is
 * stopped or hung), or with H5DEPOT_UNAVAILABLE within about a quarter of
 * a second if nothing listens; a wait ends within its timeout plus 1 s.
 * Once a restarted server listens again at the same address, a call made
 * 1 s or more later succeeds, however long the server was away: no need
 * to reconnect. */
h5depot_client* h5depot_connect_ex(const char* target,
                                   const h5depot_connect_options* options);

/* Closes the connection and frees `client`. NULL is ignored. In a child of
 * fork(), closes only the connections the child made and returns at once:
 * the parent's stay as they are. */
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
 * *buf is NULL and *len 0. From a server on this host the image arrives as
 * a mapping of the server's memory and is copied once into the buffer:
 * h5depot_fetch_view and h5depot_open use it in place instead. */
int h5depot_fetch(h5depot_client* client, const char* image_id, void** buf,
                  size_t* len, uint64_t* generation);

/* h5depot_fetch of a generation newer than `newer_than` (0: any): the
 * current one if it is newer, else the first published within timeout_ms
 * milliseconds (H5DEPOT_DEADLINE_EXCEEDED if none is; with timeout_ms 0,
 * H5DEPOT_FAILED_PRECONDITION at once). A consumer passing the generation
 * it last received misses no publish: generations only grow, and if
 * several were published meanwhile it gets the newest. */
int h5depot_fetch_newer(h5depot_client* client, const char* image_id,
                        uint64_t newer_than, int64_t timeout_ms, void** buf,
                        size_t* len, uint64_t* generation);

/* Writes the current generation of `image_id` to the open descriptor `fd`
 * (a file, from where its offset stands; a pipe; a socket) through a few
 * MiB of memory whatever the image's size, and leaves `fd` open. The
 * bytes are verified as they pass: H5DEPOT_DATA_LOSS after the last one
 * if they do not match (what was written cannot be taken back: discard
 * it). Into a pipe, bytes arriving over TCP move inside the kernel and
 * are read once, to be verified. *info is optional (NULL). */
int h5depot_fetch_to_fd(h5depot_client* client, const char* image_id, int fd,
                        h5depot_image_info* info);

/* A fetched image the caller reads in place: from a server on this host
 * over its Unix socket, a copy-on-write mapping of the server's memory
 * (nothing copied, shared with every process that fetched that
 * generation); otherwise the fetched bytes. Valid until
 * h5depot_view_free; the server counts the memory of a mapped view until
 * then. */
typedef struct h5depot_view h5depot_view;

/* Fetches the current generation of `image_id` as a view: *view, *data and
 * *len receive it; *generation is optional (NULL). The bytes at *data may
 * be written (the writes stay the caller's own). On failure *view and
 * *data are NULL and *len 0. */
int h5depot_fetch_view(h5depot_client* client, const char* image_id,
                       h5depot_view** view, void** data, size_t* len,
                       uint64_t* generation);

/* Frees a view (NULL: nothing). */
void h5depot_view_free(h5depot_view* view);

/* Waits up to timeout_ms milliseconds for `image_id` to exist.
 * H5DEPOT_DEADLINE_EXCEEDED if it does not appear in time. */
int h5depot_wait(h5depot_client* client, const char* image_id,
                 int64_t timeout_ms);

/* Waits as h5depot_fetch_newer does, for a generation of `image_id` newer
 * than `newer_than`, and describes it in *info (optional: NULL). */
int h5depot_wait_newer(h5depot_client* client, const char* image_id,
                       uint64_t newer_than, int64_t timeout_ms,
                       h5depot_image_info* info);

/* Describes the current generation of `image_id`. */
int h5depot_stat(h5depot_client* client, const char* image_id,
                 h5depot_image_info* info);

/* Deletes `image_id`. H5DEPOT_NOT_FOUND if it does not exist. */
int h5depot_delete(h5depot_client* client, const char* image_id);

/* --- Streams (docs/STREAMS.md) --------------------------------------- */

/* Appends the `len` bytes at `buf`, an HDF5 image, as the next step of
 * `stream` (created with the default policy by its first append). A full
 * stream whose policy blocks makes it wait up to `wait_ms` milliseconds
 * (negative: 30 s) for room, then H5DEPOT_DEADLINE_EXCEEDED; one that
 * refuses fails H5DEPOT_RESOURCE_EXHAUSTED; a finished one
 * H5DEPOT_FAILED_PRECONDITION. Stores the step's number in *step if not
 * NULL. */
int h5depot_stream_append(h5depot_client* client, const char* stream,
                          const void* buf, size_t len, int64_t wait_ms,
                          uint64_t* step);

/* A buffer to build the next step of a stream in (docs/STREAMS.md, "Step
 * buffers"): on the server's host one of a few memories the client fills
 * again once every holder of its last step let go, handed over with no
 * copy and no fresh memory; elsewhere its bytes are sent. */
typedef struct h5depot_step_buffer h5depot_step_buffer;

/* Lends a step buffer of `len` (> 0) bytes for the next step of `stream`:
 * *out receives it, h5depot_step_buffer_data() says where to write the
 * step's HDF5 image (all `len` bytes of it). Waits up to `wait_ms`
 * milliseconds (negative: 30 s) while every buffer is still held, then
 * H5DEPOT_DEADLINE_EXCEEDED. */
int h5depot_stream_begin_step(h5depot_client* client, const char* stream,
                              size_t len, int64_t wait_ms,
                              h5depot_step_buffer** out);

/* Where to write the step: h5depot_step_buffer_size() bytes. */
void* h5depot_step_buffer_data(h5depot_step_buffer* buffer);
size_t h5depot_step_buffer_size(const h5depot_step_buffer* buffer);

/* Appends the buffer's bytes as the stream's next step, as
 * h5depot_stream_append does (the same errors and wait), and frees
 * `buffer` whatever happens: its memory must not be written again. Stores
 * the step's number in *step if not NULL. */
int h5depot_stream_commit_step(h5depot_client* client,
                               h5depot_step_buffer* buffer, int64_t wait_ms,
                               uint64_t* step);

/* Frees a buffer not committed; it goes back unused. NULL is ignored. */
void h5depot_step_buffer_free(h5depot_step_buffer* buffer);

/* The next step of `stream` for reader group `group`, leased to this
 * client until h5depot_stream_ack (or for 60 s, after which another
 * member of the group gets it): *buf (malloc'ed: free() it, or open it
 * with h5depot_open_image and H5LT_FILE_IMAGE_DONT_COPY) and *len receive
 * its image, *step its number. Waits up to `wait_ms` milliseconds for a
 * step (H5DEPOT_DEADLINE_EXCEEDED); H5DEPOT_OUT_OF_RANGE once the stream
 * is finished and the group has had every step. A new group starts at
 * the oldest step the stream keeps. */
int h5depot_stream_next(h5depot_client* client, const char* stream,
                        const char* group, int64_t wait_ms, void** buf,
                        size_t* len, uint64_t* step);

/* This client is done with `step` of `group`: the group will not get it
 * again. H5DEPOT_FAILED_PRECONDITION if the client does not hold it (its
 * lease ran out and another member got it). */
int h5depot_stream_ack(h5depot_client* client, const char* stream,
                       const char* group, uint64_t step);

/* Ends `stream`: readers get the steps appended, then
 * H5DEPOT_OUT_OF_RANGE. */
int h5depot_stream_finish(h5depot_client* client, const char* stream);

/* Deletes `stream` (its steps and reader groups), or with `group` not NULL
 * only that reader group; readers and writers waiting on what is deleted
 * get H5DEPOT_NOT_FOUND. H5DEPOT_NOT_FOUND if there is no such stream or
 * group; H5DEPOT_FAILED_PRECONDITION, deleting nothing, while an append to
 * the stream is under way. */
int h5depot_stream_delete(h5depot_client* client, const char* stream,
                          const char* group);

/* --- HDF5 files and file images ------------------------------------- */

/* Pushes the image of `file_id`, an open HDF5 file of the core, sec2 or
 * stdio driver, as a new generation of `image_id`. The file is flushed and
 * its image taken in one copy (images of every superblock version open
 * again), which is streamed and freed; the file stays open and unchanged.
 * Stores the generation in *generation if not NULL.
 * H5DEPOT_INVALID_ARGUMENT if `file_id` is not an open file or its driver
 * cannot give an image. */
int h5depot_push_file(h5depot_client* client, const char* image_id,
                      hid_t file_id, uint64_t* generation);

/* h5depot_push_file with options (NULL: defaults). */
int h5depot_push_file_ex(h5depot_client* client, const char* image_id,
                         hid_t file_id, const h5depot_push_options* options,
                         uint64_t* generation);

/* Appends the image of `file_id` (an open HDF5 file of the core, sec2 or
 * stdio driver, or one made by h5depot_create_memory_file, taken as
 * h5depot_push_file takes it: a memory file is handed over without a copy
 * to a server on this host) as the next step of `stream`; otherwise as
 * h5depot_stream_append. */
int h5depot_stream_append_file(h5depot_client* client, const char* stream,
                               hid_t file_id, int64_t wait_ms, uint64_t* step);

/* h5depot_stream_append_file for large steps on the server's host: the
 * image of any file but a memory file is copied by HDF5 straight into one
 * of the client's step buffers (h5depot_stream_begin_step) and handed
 * over: one copy, into memory the client reuses from step to step, where
 * h5depot_stream_append_file copies into new memory and sends that.
 * Elsewhere the buffer's bytes are sent. `wait_ms` (< 0: 30 s) also
 * bounds the wait for a step buffer to come back. */
int h5depot_stream_append_file_buffered(h5depot_client* client,
                                        const char* stream, hid_t file_id,
                                        int64_t wait_ms, uint64_t* step);

/* h5depot_stream_next, the step opened as an HDF5 file in the memory it
 * arrived in (as h5depot_open: `flags` 0 or H5LT_FILE_IMAGE_OPEN_RW, HDF5
 * frees the image when the file closes); *step receives its number.
 * Returns the file id, or H5I_INVALID_HID with the errors of
 * h5depot_stream_next and h5depot_open_image. Acknowledge the step with
 * h5depot_stream_ack once done with it. */
hid_t h5depot_stream_open_next(h5depot_client* client, const char* stream,
                               const char* group, int64_t wait_ms,
                               unsigned flags, uint64_t* step);

/* --- Watching changes (README.md, "Watching changes") ----------------- */

/* What changed (h5depot_event.kind). */
typedef enum h5depot_event_kind {
  H5DEPOT_EVENT_PUBLISHED = 0, /* the first generation under its id */
  H5DEPOT_EVENT_REPLACED = 1,  /* a new generation replacing the current */
  H5DEPOT_EVENT_DELETED = 2,   /* removed by a delete */
  H5DEPOT_EVENT_EXPIRED = 3,   /* removed at the end of its time to live */
  H5DEPOT_EVENT_EVICTED = 4,   /* removed to make room (--eviction=lru) */
  /* not a change: changes first_lost_sequence through sequence were not
   * delivered (the server no longer kept them); look again
   * (h5depot_stat) and go on */
  H5DEPOT_EVENT_LOST = 5
} h5depot_event_kind;

/* One change, in the order changes took effect; sequences only grow. */
typedef struct h5depot_event {
  int kind; /* an h5depot_event_kind */
  uint64_t sequence;
  /* The image's id ("" for H5DEPOT_EVENT_LOST), owned by the watch: valid
   * until the next h5depot_watch_next or h5depot_watch_close on it. */
  const char* image_id;
  /* Published, replaced: the new generation and its size; deleted,
   * expired, evicted: the generation removed and its size. */
  uint64_t generation;
  uint64_t size;
  uint64_t replaced_generation; /* H5DEPOT_EVENT_REPLACED only */
  int64_t time_unix_micros;     /* when it took effect */
  uint64_t first_lost_sequence; /* H5DEPOT_EVENT_LOST only */
} h5depot_event;

typedef struct h5depot_watch h5depot_watch;

/* Starts watching the changes to the images whose ids start with `prefix`
 * (NULL or "": every image): from now on, or with `after` not NULL, every
 * change after sequence *after that the server still keeps (an
 * H5DEPOT_EVENT_LOST first for those it does not). Returns once the watch
 * runs on the server, so nothing done after it is missed; *watch receives
 * it (NULL on failure). Watches travel over gRPC. */
int h5depot_watch_start(h5depot_client* client, const char* prefix,
                        const uint64_t* after, h5depot_watch** watch);

/* The next change, waiting up to timeout_ms milliseconds (negative: for
 * ever): H5DEPOT_DEADLINE_EXCEEDED then, and the watch goes on.
 * H5DEPOT_UNAVAILABLE once the server stops or the connection breaks,
 * H5DEPOT_CANCELLED after h5depot_watch_cancel: the watch is over then.
 * For one thread at a time. */
int h5depot_watch_next(h5depot_watch* watch, int64_t timeout_ms,
                       h5depot_event* event);

/* Ends the watch, from any thread: an h5depot_watch_next waiting on
 * another thread returns H5DEPOT_CANCELLED. */
void h5depot_watch_cancel(h5depot_watch* watch);

/* Ends the watch and frees it (NULL: nothing); before its client is
 * disconnected. Not while another thread is in h5depot_watch_next on it:
 * cancel, let it return, then close. */
void h5depot_watch_close(h5depot_watch* watch);

/* Opens `len` bytes at `buf` as an HDF5 file in memory: the thread-safe
 * replacement of H5LTopen_file_image(buf, len, flags), with the same flags
 * and the ownership of the table above. Images opened at once, from any
 * threads, never alias one another, no file on disk interferes, and
 * nothing is left behind when the file closes.
 *
 * With DONT_COPY the buffer must come from malloc (e.g. h5depot_fetch):
 * HDF5 may realloc it, and frees it when the file closes; also when this
 * call fails, so the caller never frees it. With DONT_RELEASE the caller
 * keeps it until HDF5 has closed the file (the file id and every object
 * opened in it), and with OPEN_RW a write that needs more room than the
 * buffer fails in the HDF5 call that needs it.
 *
 * Returns the file id, or H5I_INVALID_HID: H5DEPOT_INVALID_ARGUMENT for a
 * NULL buffer, zero length, unknown flags, DONT_RELEASE without DONT_COPY,
 * or bytes that HDF5 cannot open (the message gives HDF5's reason). */
hid_t h5depot_open_image(void* buf, size_t len, unsigned flags);

/* Fetches the current generation of `image_id` and opens it as an HDF5
 * file in memory without copying it: the fetched buffer goes to HDF5 as
 * with DONT_COPY, and HDF5 frees it when the file closes. `flags` is 0 or
 * H5LT_FILE_IMAGE_OPEN_RW (DONT_COPY may be given; it is implied).
 * DONT_RELEASE is H5DEPOT_INVALID_ARGUMENT: to keep the buffer, use
 * h5depot_fetch and h5depot_open_image. Returns the file id, or
 * H5I_INVALID_HID (H5DEPOT_NOT_FOUND if there is no such image, and the
 * errors of h5depot_fetch and h5depot_open_image). */
hid_t h5depot_open(h5depot_client* client, const char* image_id,
                   unsigned flags);

/* Closes `file_id`, a file that h5depot_open or h5depot_open_image opened
 * without DONT_RELEASE, and hands its final image to the caller instead of
 * letting HDF5 free it: *buf (malloc'ed: the caller frees it, or pushes it
 * and then frees it) and *len receive the buffer HDF5 used, after any
 * growth, trimmed to the image's size. Nothing is copied.
 *
 * The round trip, with no copy after the fetch:
 *
 *   void *buf; size_t len; uint64_t generation;
 *   h5depot_fetch(c, "id", &buf, &len, &generation);
 *   hid_t f = h5depot_open_image(buf, len, H5LT_FILE_IMAGE_OPEN_RW |
 *                                          H5LT_FILE_IMAGE_DONT_COPY);
 *   ... write through f, close what was opened in it ...
 *   h5depot_close_image(f, &buf, &len);
 *   h5depot_push_options o = {0};
 *   o.use_if_generation_match = 1;
 *   o.if_generation_match = generation;
 *   rc = h5depot_push_buffer_ex(c, "id", buf, len, &o, &generation);
 *   free(buf);  // rc H5DEPOT_ABORTED: changed meanwhile, start again
 *
 * On failure *buf is NULL and *len 0. H5DEPOT_INVALID_ARGUMENT if
 * `file_id` is not such a file; H5DEPOT_FAILED_PRECONDITION if it was
 * opened with DONT_RELEASE (close it with H5Fclose), or if objects are
 * still open in it: the file then stays open; close them and call again. */
int h5depot_close_image(hid_t file_id, void** buf, size_t* len);

/* Creates a new, empty HDF5 file, open read/write, that lives in memory
 * only: HDF5's core driver without a backing store, its image built
 * directly in a memfd (shared memory) that grows with the file, so that it
 * can later be handed to a server on the same host without a copy.
 * `fcpl` and `fapl` are H5P_DEFAULT or the caller's lists, neither
 * modified; the fapl's driver is replaced by the core driver (a fapl that
 * holds a file image is refused). Close the file with H5Fclose: once HDF5
 * has closed it (the file id and every object opened in it), the memory
 * is freed. The memory is charged to the calling process.
 * Returns the file id, or H5I_INVALID_HID: H5DEPOT_INVALID_ARGUMENT if
 * HDF5 refuses the property lists, H5DEPOT_RESOURCE_EXHAUSTED if no
 * memfd can be made. */
hid_t h5depot_create_memory_file(hid_t fcpl, hid_t fapl);

#ifdef __cplusplus
} /* extern "C" */
#endif

#endif /* H5DEPOT_CLIENT_H5DEPOT_H_ */
