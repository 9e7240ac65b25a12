/* Compiled as C: proves that H5FDremote.h is plain C and that the property
 * list functions work from C. Needs no server: nothing is contacted until a
 * file is opened. Exit status 0 on success. */
#include <stdio.h>
#include <string.h>

#include "H5FDremote.h"

static int failures = 0;

#define EXPECT(cond)                                                     \
  do {                                                                   \
    if (!(cond)) {                                                       \
      fprintf(stderr, "%s:%d: failed: %s\n", __FILE__, __LINE__, #cond); \
      ++failures;                                                        \
    }                                                                    \
  } while (0)

int main(void) {
  H5FD_remote_config_t config = H5FD_REMOTE_CONFIG_INIT;
  H5FD_remote_config_t back = H5FD_REMOTE_CONFIG_INIT;
  char target[64];
  hid_t fapl = H5Pcreate(H5P_FILE_ACCESS);
  herr_t status;

  EXPECT(H5FD_REMOTE >= 0);
  EXPECT(H5FD_REMOTE == H5FD_remote_init());

  config.page_size = (size_t)1 << 20;
  EXPECT(H5Pset_fapl_remote(fapl, "unix:/tmp/h5depot.sock", &config) >= 0);
  EXPECT(H5Pget_driver(fapl) == H5FD_REMOTE);
  EXPECT(H5Pget_fapl_remote(fapl, target, sizeof target, &back) >= 0);
  EXPECT(strcmp(target, "unix:/tmp/h5depot.sock") == 0);
  EXPECT(back.page_size == config.page_size);
  EXPECT(back.call_timeout_ms == config.call_timeout_ms);

  config.page_size = 1000; /* not a power of two */
  H5E_BEGIN_TRY { status = H5Pset_fapl_remote(fapl, "x:1", &config); }
  H5E_END_TRY;
  EXPECT(status < 0);

  H5E_BEGIN_TRY { status = H5Pget_fapl_remote(fapl, target, 4, NULL); }
  H5E_END_TRY;
  EXPECT(status < 0);

  /* Defaults with a NULL config. */
  EXPECT(H5Pset_fapl_remote(fapl, "localhost:7000", NULL) >= 0);
  EXPECT(H5Pget_fapl_remote(fapl, NULL, 0, &back) >= 0);
  EXPECT(back.version == H5FD_REMOTE_CONFIG_VERSION);
  EXPECT(back.page_size == 64 * 1024);

  H5Pclose(fapl);

  /* H5close forgets every registered driver; the id macro registers the
   * driver again, and its errors still reach the error stack. */
  H5close();
  EXPECT(H5FD_REMOTE >= 0);
  fapl = H5Pcreate(H5P_FILE_ACCESS);
  EXPECT(H5Pset_fapl_remote(fapl, "localhost:7000", NULL) >= 0);
  EXPECT(H5Pget_driver(fapl) == H5FD_REMOTE);
  H5E_BEGIN_TRY { status = H5Pset_fapl_remote(fapl, "", NULL); }
  H5E_END_TRY;
  EXPECT(status < 0);
  H5Pclose(fapl);

  if (failures == 0) printf("remote_driver_c_test: ok\n");
  return failures == 0 ? 0 : 1;
}
