/* A plain C program using the installed h5depot C API; built by
 * install_test.sh exactly as an application would be:
 *   cc c_api_client.c $(pkg-config --cflags --libs h5depot)
 * Usage: c_api_client TARGET. Exits 0 when every check passes. */
#define _POSIX_C_SOURCE 200809L /* pipe, pread, fileno */

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "h5depot/h5depot.h"

static int failures = 0;

#define CHECK(condition)                                                      \
  do {                                                                        \
    if (!(condition)) {                                                       \
      fprintf(stderr, "%s:%d: check failed: %s (last error: %s)\n", __FILE__, \
              __LINE__, #condition, h5depot_errmsg());                        \
      ++failures;                                                             \
    }                                                                         \
  } while (0)

/* An HDF5 file built in memory with the core driver, as a malloc'ed image. */
static void* make_image(size_t* len) {
  hid_t fapl = H5Pcreate(H5P_FILE_ACCESS);
  H5Pset_fapl_core(fapl, 1 << 16, 0);
  hid_t file = H5Fcreate("c-api-image.h5", H5F_ACC_TRUNC, H5P_DEFAULT, fapl);
  hsize_t dims[1] = {100};
  hid_t space = H5Screate_simple(1, dims, NULL);
  hid_t dset = H5Dcreate2(file, "values", H5T_NATIVE_INT, space, H5P_DEFAULT,
                          H5P_DEFAULT, H5P_DEFAULT);
  int values[100];
  for (int i = 0; i < 100; ++i) values[i] = i * i;
  H5Dwrite(dset, H5T_NATIVE_INT, H5S_ALL, H5S_ALL, H5P_DEFAULT, values);
  H5Dclose(dset);
  H5Sclose(space);
  H5Fflush(file, H5F_SCOPE_GLOBAL);
  ssize_t size = H5Fget_file_image(file, NULL, 0);
  void* image = malloc((size_t)size);
  H5Fget_file_image(file, image, (size_t)size);
  H5Fclose(file);
  H5Pclose(fapl);
  *len = (size_t)size;
  return image;
}

/* The 100 ints of dataset `name` of `file` into `values`; 0 on success. */
static int read_values(hid_t file, const char* name, int values[100]) {
  hid_t dset = H5Dopen2(file, name, H5P_DEFAULT);
  if (dset < 0) return -1;
  herr_t read =
      H5Dread(dset, H5T_NATIVE_INT, H5S_ALL, H5S_ALL, H5P_DEFAULT, values);
  H5Dclose(dset);
  return read < 0 ? -1 : 0;
}

/* Whether dataset `name` of `file` holds i * i + offset at i. */
static int has_squares(hid_t file, const char* name, int offset) {
  int values[100];
  if (read_values(file, name, values) != 0) return 0;
  for (int i = 0; i < 100; ++i) {
    if (values[i] != i * i + offset) return 0;
  }
  return 1;
}

static int write_squares(hid_t file, const char* name, int offset) {
  hsize_t dims[1] = {100};
  int values[100];
  for (int i = 0; i < 100; ++i) values[i] = i * i + offset;
  hid_t space = H5Screate_simple(1, dims, NULL);
  hid_t dset = H5Dcreate2(file, name, H5T_NATIVE_INT, space, H5P_DEFAULT,
                          H5P_DEFAULT, H5P_DEFAULT);
  herr_t written = dset < 0 ? -1
                            : H5Dwrite(dset, H5T_NATIVE_INT, H5S_ALL, H5S_ALL,
                                       H5P_DEFAULT, values);
  if (dset >= 0) H5Dclose(dset);
  H5Sclose(space);
  return written < 0 ? -1 : 0;
}

/* Pushing an open file, opening images with the ownership flags, fetch and
 * open, and the round trip with its conflict. */
static void check_file_images(h5depot_client* client) {
  /* An open core file, pushed as it is. */
  hid_t fapl = H5Pcreate(H5P_FILE_ACCESS);
  H5Pset_fapl_core(fapl, 1 << 16, 0);
  hid_t file = H5Fcreate("c-api-push.h5", H5F_ACC_TRUNC, H5P_DEFAULT, fapl);
  H5Pclose(fapl);
  CHECK(write_squares(file, "values", 0) == 0);
  uint64_t generation = 0;
  CHECK(h5depot_push_file(client, "c/file", file, &generation) == H5DEPOT_OK);
  CHECK(generation > 0);
  CHECK(h5depot_push_file(client, "c/file", -1, NULL) ==
        H5DEPOT_INVALID_ARGUMENT);
  H5Fclose(file);

  /* Fetch and open in one call, read-only and read/write. */
  hid_t opened = h5depot_open(client, "c/file", 0);
  CHECK(opened >= 0);
  CHECK(has_squares(opened, "values", 0));
  H5Fclose(opened);
  CHECK(h5depot_open(client, "c/file",
                     H5LT_FILE_IMAGE_DONT_COPY | H5LT_FILE_IMAGE_DONT_RELEASE) <
        0);
  CHECK(h5depot_errcode() == H5DEPOT_INVALID_ARGUMENT);
  CHECK(h5depot_open(client, "c/none", 0) < 0);
  CHECK(h5depot_errcode() == H5DEPOT_NOT_FOUND);

  /* h5depot_open_image on a fetched buffer: a copy, then handed over. */
  void* buf = NULL;
  size_t len = 0;
  uint64_t fetched_generation = 0;
  CHECK(h5depot_fetch(client, "c/file", &buf, &len, &fetched_generation) ==
        H5DEPOT_OK);
  CHECK(fetched_generation == generation);
  opened = h5depot_open_image(buf, len, 0);
  CHECK(opened >= 0);
  CHECK(has_squares(opened, "values", 0));
  H5Fclose(opened);
  CHECK(h5depot_open_image(NULL, len, 0) < 0);
  CHECK(h5depot_errcode() == H5DEPOT_INVALID_ARGUMENT);

  /* The round trip: opened read/write in the fetched buffer, written,
   * closed keeping the final buffer, pushed on condition. */
  opened = h5depot_open_image(
      buf, len, H5LT_FILE_IMAGE_OPEN_RW | H5LT_FILE_IMAGE_DONT_COPY);
  CHECK(opened >= 0);
  CHECK(write_squares(opened, "more", 1) == 0);
  buf = NULL;
  CHECK(h5depot_close_image(opened, &buf, &len) == H5DEPOT_OK);
  CHECK(buf != NULL && len > 0);

  h5depot_push_options options;
  memset(&options, 0, sizeof options);
  options.use_if_generation_match = 1;
  options.if_generation_match = fetched_generation;
  options.validate = 1;
  uint64_t new_generation = 0;
  CHECK(h5depot_push_buffer_ex(client, "c/file", buf, len, &options,
                               &new_generation) == H5DEPOT_OK);
  CHECK(new_generation > fetched_generation);
  /* The same condition again: the generation has moved on. */
  CHECK(h5depot_push_buffer_ex(client, "c/file", buf, len, &options, NULL) ==
        H5DEPOT_ABORTED);
  free(buf);

  opened = h5depot_open(client, "c/file", H5LT_FILE_IMAGE_OPEN_RW);
  CHECK(opened >= 0);
  CHECK(has_squares(opened, "values", 0));
  CHECK(has_squares(opened, "more", 1));
  buf = NULL;
  CHECK(h5depot_close_image(opened, &buf, &len) == H5DEPOT_OK);
  free(buf);
  CHECK(h5depot_close_image(-1, &buf, &len) == H5DEPOT_INVALID_ARGUMENT);
  CHECK(buf == NULL && len == 0);
  CHECK(h5depot_delete(client, "c/file") == H5DEPOT_OK);
}

/* h5depot_connect_ex: its options, and the failures it reports before
 * contacting anything. */
static void check_connect_options(const char* target, const void* image,
                                  size_t len) {
  h5depot_connect_options options;
  memset(&options, 0, sizeof options); /* zero: every default */
  h5depot_client* defaults = h5depot_connect_ex(target, &options);
  CHECK(defaults != NULL);
  h5depot_disconnect(defaults);
  defaults = h5depot_connect_ex(target, NULL);
  CHECK(defaults != NULL);
  h5depot_disconnect(defaults);

  /* Short timeouts, image bytes over gRPC only: the same results. */
  options.connect_timeout_ms = 2000;
  options.call_timeout_ms = 5000;
  options.disable_data_lane = 1;
  h5depot_client* client = h5depot_connect_ex(target, &options);
  CHECK(client != NULL);
  if (client != NULL) {
    uint64_t generation = 0;
    CHECK(h5depot_push_buffer(client, "c/options", image, len, &generation) ==
          H5DEPOT_OK);
    void* fetched = NULL;
    size_t fetched_len = 0;
    CHECK(h5depot_fetch(client, "c/options", &fetched, &fetched_len, NULL) ==
          H5DEPOT_OK);
    CHECK(fetched_len == len && fetched != NULL &&
          memcmp(fetched, image, len) == 0);
    free(fetched);
    CHECK(h5depot_delete(client, "c/options") == H5DEPOT_OK);
    h5depot_disconnect(client);
  }

  /* Refused at once: negative timeouts, malformed targets. */
  options.call_timeout_ms = -1;
  CHECK(h5depot_connect_ex(target, &options) == NULL);
  CHECK(h5depot_errcode() == H5DEPOT_INVALID_ARGUMENT);
  options.call_timeout_ms = 0;
  options.connect_timeout_ms = -5;
  CHECK(h5depot_connect_ex(target, &options) == NULL);
  CHECK(h5depot_errcode() == H5DEPOT_INVALID_ARGUMENT);
  CHECK(h5depot_connect_ex(NULL, NULL) == NULL);
  CHECK(h5depot_errcode() == H5DEPOT_INVALID_ARGUMENT);
  CHECK(h5depot_connect("not a target!!") == NULL);
  CHECK(h5depot_errcode() == H5DEPOT_INVALID_ARGUMENT);
  CHECK(strstr(h5depot_errmsg(), "HOST:PORT") != NULL);
  CHECK(h5depot_connect_ex("localhost:99999", NULL) == NULL);
  CHECK(h5depot_errcode() == H5DEPOT_INVALID_ARGUMENT);
}

/* A stream's steps through the C API: appended, taken and acknowledged,
 * then a reader group and the stream deleted. */
static void check_streams(h5depot_client* client, const void* image,
                          size_t len) {
  uint64_t step = 99;
  void* buf = NULL;
  size_t got = 0;
  CHECK(h5depot_stream_next(client, "c/stream", "g", 0, &buf, &got, &step) ==
        H5DEPOT_DEADLINE_EXCEEDED); /* makes the group */
  CHECK(h5depot_stream_append(client, "c/stream", image, len, -1, &step) ==
        H5DEPOT_OK);
  CHECK(step == 0);
  CHECK(h5depot_stream_next(client, "c/stream", "g", 1000, &buf, &got, &step) ==
        H5DEPOT_OK);
  CHECK(step == 0 && got == len && buf != NULL && memcmp(buf, image, len) == 0);
  free(buf);
  CHECK(h5depot_stream_ack(client, "c/stream", "g", 0) == H5DEPOT_OK);
  CHECK(h5depot_stream_ack(client, "c/stream", "g", 0) ==
        H5DEPOT_FAILED_PRECONDITION);
  /* Step 1 built in place, in a step buffer. */
  h5depot_step_buffer* buffer = NULL;
  CHECK(h5depot_stream_begin_step(client, "c/stream", 0, -1, &buffer) ==
        H5DEPOT_INVALID_ARGUMENT);
  CHECK(buffer == NULL);
  CHECK(h5depot_stream_begin_step(client, "c/stream", len, -1, &buffer) ==
        H5DEPOT_OK);
  h5depot_step_buffer_free(buffer); /* not committed: nothing appended */
  buffer = NULL;
  CHECK(h5depot_stream_begin_step(client, "c/stream", len, -1, &buffer) ==
        H5DEPOT_OK);
  if (buffer != NULL) {
    CHECK(h5depot_step_buffer_size(buffer) == len);
    memcpy(h5depot_step_buffer_data(buffer), image, len);
    CHECK(h5depot_stream_commit_step(client, buffer, -1, &step) == H5DEPOT_OK);
    CHECK(step == 1);
  }
  CHECK(h5depot_stream_next(client, "c/stream", "g", 1000, &buf, &got, &step) ==
        H5DEPOT_OK);
  CHECK(step == 1 && got == len && buf != NULL && memcmp(buf, image, len) == 0);
  free(buf);
  CHECK(h5depot_stream_ack(client, "c/stream", "g", 1) == H5DEPOT_OK);
  CHECK(h5depot_stream_finish(client, "c/stream") == H5DEPOT_OK);
  CHECK(h5depot_stream_delete(client, "c/stream", "g") == H5DEPOT_OK);
  CHECK(h5depot_stream_delete(client, "c/stream", "g") == H5DEPOT_NOT_FOUND);
  CHECK(h5depot_stream_delete(client, "c/stream", NULL) == H5DEPOT_OK);
  CHECK(h5depot_stream_delete(client, "c/stream", NULL) == H5DEPOT_NOT_FOUND);
  CHECK(h5depot_stream_delete(NULL, "c/stream", NULL) ==
        H5DEPOT_INVALID_ARGUMENT);
}

/* A watch through the C API: a publish, a replace and a delete reported
 * in order, then a wait that gives up, then the end of the watch. */
static void check_watch(h5depot_client* client, const void* image, size_t len) {
  h5depot_watch* watch = NULL;
  CHECK(h5depot_watch_start(client, "c/watched/", NULL, &watch) == H5DEPOT_OK);
  if (watch == NULL) return;
  uint64_t first = 0;
  uint64_t second = 0;
  CHECK(h5depot_push_buffer(client, "c/watched/a", image, len, &first) ==
        H5DEPOT_OK);
  CHECK(h5depot_push_buffer(client, "c/watched/a", image, len, &second) ==
        H5DEPOT_OK);
  CHECK(h5depot_delete(client, "c/watched/a") == H5DEPOT_OK);
  h5depot_event event;
  CHECK(h5depot_watch_next(watch, 10000, &event) == H5DEPOT_OK);
  CHECK(event.kind == H5DEPOT_EVENT_PUBLISHED && event.generation == first &&
        strcmp(event.image_id, "c/watched/a") == 0 && event.size == len);
  CHECK(h5depot_watch_next(watch, 10000, &event) == H5DEPOT_OK);
  CHECK(event.kind == H5DEPOT_EVENT_REPLACED && event.generation == second &&
        event.replaced_generation == first);
  CHECK(h5depot_watch_next(watch, 10000, &event) == H5DEPOT_OK);
  CHECK(event.kind == H5DEPOT_EVENT_DELETED && event.sequence > second);
  CHECK(h5depot_watch_next(watch, 20, &event) == H5DEPOT_DEADLINE_EXCEEDED);
  h5depot_watch_cancel(watch);
  CHECK(h5depot_watch_next(watch, -1, &event) == H5DEPOT_CANCELLED);
  h5depot_watch_close(watch);
}

int main(int argc, char** argv) {
  if (argc != 2) {
    fprintf(stderr, "usage: %s TARGET\n", argv[0]);
    return 2;
  }
  h5depot_client* client = h5depot_connect(argv[1]);
  if (client == NULL) {
    fprintf(stderr, "connect: %s\n", h5depot_errmsg());
    return 1;
  }

  size_t len = 0;
  void* image = make_image(&len);
  uint64_t pushed_generation = 0;
  CHECK(h5depot_push_buffer(client, "c/packet", image, len,
                            &pushed_generation) == H5DEPOT_OK);
  CHECK(pushed_generation > 0);

  h5depot_image_info info;
  CHECK(h5depot_stat(client, "c/packet", &info) == H5DEPOT_OK);
  CHECK(info.size == len && info.generation == pushed_generation);

  void* fetched = NULL;
  size_t fetched_len = 0;
  uint64_t fetched_generation = 0;
  CHECK(h5depot_fetch(client, "c/packet", &fetched, &fetched_len,
                      &fetched_generation) == H5DEPOT_OK);
  CHECK(fetched_len == len && fetched != NULL &&
        memcmp(fetched, image, len) == 0);
  CHECK(fetched_generation == pushed_generation);
  free(fetched);

  /* Into a pipe (the image is smaller than a pipe holds) and a file, which
   * keep their descriptors open; a missing image writes nothing. */
  int ends[2];
  CHECK(pipe(ends) == 0);
  CHECK(h5depot_fetch_to_fd(client, "c/packet", ends[1], &info) == H5DEPOT_OK);
  CHECK(info.generation == pushed_generation && info.size == len);
  CHECK(h5depot_fetch_to_fd(client, "c/absent", ends[1], NULL) ==
        H5DEPOT_NOT_FOUND);
  close(ends[1]);
  char* piped = malloc(len + 1);
  size_t piped_len = 0;
  for (ssize_t got = 1; got > 0 && piped_len <= len; piped_len += (size_t)got) {
    got = read(ends[0], piped + piped_len, len + 1 - piped_len);
    if (got < 0) break;
  }
  close(ends[0]);
  CHECK(piped_len == len && memcmp(piped, image, len) == 0);
  free(piped);
  FILE* file = tmpfile();
  CHECK(file != NULL && fputs("head", file) >= 0 && fflush(file) == 0);
  CHECK(h5depot_fetch_to_fd(client, "c/packet", fileno(file), NULL) ==
        H5DEPOT_OK);
  char* written = malloc(4 + len);
  CHECK(pread(fileno(file), written, 4 + len, 0) == (ssize_t)(4 + len));
  CHECK(memcmp(written, "head", 4) == 0 &&
        memcmp(written + 4, image, len) == 0);
  free(written);
  fclose(file);
  CHECK(h5depot_fetch_to_fd(client, "c/packet", -1, NULL) ==
        H5DEPOT_INVALID_ARGUMENT);

  /* A create-only push of an existing id fails with ALREADY_EXISTS. */
  h5depot_push_options options;
  memset(&options, 0, sizeof options);
  options.use_if_generation_match = 1;
  options.if_generation_match = 0;
  CHECK(h5depot_push_buffer_ex(client, "c/packet", image, len, &options,
                               NULL) == H5DEPOT_ALREADY_EXISTS);
  CHECK(h5depot_errcode() == H5DEPOT_ALREADY_EXISTS);
  CHECK(strlen(h5depot_errmsg()) > 0);

  CHECK(h5depot_wait(client, "c/packet", 0) == H5DEPOT_OK);
  CHECK(h5depot_wait(client, "c/never", 50) == H5DEPOT_DEADLINE_EXCEEDED);
  CHECK(h5depot_delete(client, "c/packet") == H5DEPOT_OK);
  CHECK(h5depot_fetch(client, "c/packet", &fetched, &fetched_len, NULL) ==
        H5DEPOT_NOT_FOUND);
  CHECK(fetched == NULL && fetched_len == 0);
  CHECK(strstr(h5depot_errmsg(), "c/packet") != NULL);
  CHECK(h5depot_push_buffer(client, "bad id", image, len, NULL) ==
        H5DEPOT_INVALID_ARGUMENT);

  check_connect_options(argv[1], image, len);
  check_streams(client, image, len);
  check_watch(client, image, len);
  free(image);
  check_file_images(client);
  h5depot_disconnect(client);
  CHECK(h5depot_connect("unix:/nonexistent/h5depot.sock") == NULL);
  CHECK(h5depot_errcode() == H5DEPOT_UNAVAILABLE);
  if (failures == 0) printf("c_api_client: all checks passed\n");
  return failures == 0 ? 0 : 1;
}
