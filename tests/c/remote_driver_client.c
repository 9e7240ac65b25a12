/* A plain C program using the installed remote driver; built by
 * install_test.sh with nothing but pkg-config. Creates an image on the
 * server with H5Fcreate, then opens it again with H5Fopen and checks the
 * values. Usage: remote_driver_client TARGET. Exits 0 when all is well. */
#include <stdio.h>

#include "H5FDremote.h"

int main(int argc, char** argv) {
  if (argc != 2) return 2;
  hid_t fapl = H5Pcreate(H5P_FILE_ACCESS);
  if (H5Pset_fapl_remote(fapl, argv[1], NULL) < 0) return 1;

  hid_t file = H5Fcreate("c/remote.h5", H5F_ACC_EXCL, H5P_DEFAULT, fapl);
  if (file < 0) return 1;
  hsize_t dims[1] = {1000};
  hid_t space = H5Screate_simple(1, dims, NULL);
  hid_t dset = H5Dcreate2(file, "squares", H5T_NATIVE_LONG, space, H5P_DEFAULT,
                          H5P_DEFAULT, H5P_DEFAULT);
  long values[1000];
  for (long i = 0; i < 1000; ++i) values[i] = i * i;
  if (H5Dwrite(dset, H5T_NATIVE_LONG, H5S_ALL, H5S_ALL, H5P_DEFAULT, values) <
      0) {
    return 1;
  }
  H5Dclose(dset);
  H5Sclose(space);
  if (H5Fclose(file) < 0) return 1; /* commits the image */

  file = H5Fopen("c/remote.h5", H5F_ACC_RDONLY, fapl);
  if (file < 0) return 1;
  dset = H5Dopen2(file, "squares", H5P_DEFAULT);
  long read_back[1000];
  if (H5Dread(dset, H5T_NATIVE_LONG, H5S_ALL, H5S_ALL, H5P_DEFAULT, read_back) <
      0) {
    return 1;
  }
  for (long i = 0; i < 1000; ++i) {
    if (read_back[i] != i * i) {
      fprintf(stderr, "value %ld is %ld\n", i, read_back[i]);
      return 1;
    }
  }
  H5Dclose(dset);
  H5Fclose(file);
  H5Pclose(fapl);
  printf("remote_driver_client: all checks passed\n");
  return 0;
}
