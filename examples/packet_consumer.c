/* Process B of the file image example: waits for the image that process A
 * (packet_producer.c) pushes, fetches it and opens it as an HDF5 file
 * without copying it, then reads and prints what A wrote.
 *
 * Usage: packet_consumer TARGET IMAGE_ID [TIMEOUT_SECONDS]
 *   e.g. packet_consumer unix:/tmp/h5depot.sock run-42/packet 60
 *
 * Prints "waiting for IMAGE_ID" (flushed) before it starts waiting, so a
 * script can start A once B is ready. Exits 0 after printing the packet;
 * 1 on any failure, 3 if the image did not appear in time. */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "h5depot/h5depot.h"

/* Prints `label` and the string attribute `name` of `object`. */
static int print_string_attribute(const char* label, hid_t object,
                                  const char* name) {
  hid_t attribute = H5Aopen(object, name, H5P_DEFAULT);
  if (attribute < 0) return -1;
  hid_t type = H5Aget_type(attribute);
  size_t size = H5Tget_size(type);
  char* value = calloc(size + 1, 1);
  herr_t read = value == NULL ? -1 : H5Aread(attribute, type, value);
  if (read >= 0) printf("%s@%s = %s\n", label, name, value);
  free(value);
  H5Tclose(type);
  H5Aclose(attribute);
  return read < 0 ? -1 : 0;
}

static int print_int64_attribute(const char* label, hid_t object,
                                 const char* name) {
  hid_t attribute = H5Aopen(object, name, H5P_DEFAULT);
  if (attribute < 0) return -1;
  int64_t value = 0;
  herr_t read = H5Aread(attribute, H5T_NATIVE_INT64, &value);
  if (read >= 0) printf("%s@%s = %" PRId64 "\n", label, name, value);
  H5Aclose(attribute);
  return read < 0 ? -1 : 0;
}

/* The dimensions of `dataset` (up to 2). Returns the rank, -1 on error. */
static int get_dims(hid_t dataset, hsize_t dims[2]) {
  hid_t space = H5Dget_space(dataset);
  int rank = H5Sget_simple_extent_ndims(space);
  if (rank < 1 || rank > 2) rank = -1;
  if (rank > 0) H5Sget_simple_extent_dims(space, dims, NULL);
  H5Sclose(space);
  return rank;
}

static int print_adc(hid_t file) {
  hid_t dataset = H5Dopen2(file, "detector/adc", H5P_DEFAULT);
  if (dataset < 0) return -1;
  hsize_t dims[2] = {0, 0};
  int result = -1;
  uint16_t* adc = NULL;
  if (get_dims(dataset, dims) == 2) {
    adc = malloc(dims[0] * dims[1] * sizeof *adc);
  }
  if (adc != NULL && H5Dread(dataset, H5T_NATIVE_UINT16, H5S_ALL, H5S_ALL,
                             H5P_DEFAULT, adc) >= 0) {
    printf("/detector/adc [%llu x %llu]:\n", (unsigned long long)dims[0],
           (unsigned long long)dims[1]);
    for (hsize_t i = 0; i < dims[0]; ++i) {
      printf(" ");
      for (hsize_t j = 0; j < dims[1]; ++j) {
        printf(" %4u", (unsigned)adc[i * dims[1] + j]);
      }
      printf("\n");
    }
    result = 0;
  }
  free(adc);
  H5Dclose(dataset);
  return result;
}

static int print_energy(hid_t file) {
  hid_t dataset = H5Dopen2(file, "detector/energy", H5P_DEFAULT);
  if (dataset < 0) return -1;
  hsize_t dims[2] = {0, 0};
  int result = -1;
  double* energy = NULL;
  if (get_dims(dataset, dims) == 1 && dims[0] > 0) {
    energy = malloc(dims[0] * sizeof *energy);
  }
  if (energy != NULL && H5Dread(dataset, H5T_NATIVE_DOUBLE, H5S_ALL, H5S_ALL,
                                H5P_DEFAULT, energy) >= 0) {
    double sum = 0;
    for (hsize_t k = 0; k < dims[0]; ++k) sum += energy[k];
    printf("/detector/energy [%llu]: first %g, last %g, sum %g\n",
           (unsigned long long)dims[0], energy[0], energy[dims[0] - 1], sum);
    result = print_string_attribute("/detector/energy ", dataset, "units");
  }
  free(energy);
  H5Dclose(dataset);
  return result;
}

static int print_packet(hid_t file) {
  if (print_int64_attribute("/ ", file, "run") < 0 ||
      print_string_attribute("/ ", file, "source") < 0) {
    return -1;
  }
  hid_t detector = H5Gopen2(file, "detector", H5P_DEFAULT);
  if (detector < 0) return -1;
  int result = print_string_attribute("/detector ", detector, "name");
  H5Gclose(detector);
  if (result < 0 || print_adc(file) < 0 || print_energy(file) < 0) return -1;
  return 0;
}

int main(int argc, char** argv) {
  if (argc != 3 && argc != 4) {
    fprintf(stderr, "usage: %s TARGET IMAGE_ID [TIMEOUT_SECONDS]\n", argv[0]);
    return 2;
  }
  const char* target = argv[1];
  const char* image_id = argv[2];
  const int64_t timeout_ms = argc == 4 ? atoll(argv[3]) * 1000 : 60000;

  h5depot_client* client = h5depot_connect(target);
  if (client == NULL) {
    fprintf(stderr, "packet_consumer: %s\n", h5depot_errmsg());
    return 1;
  }
  printf("waiting for %s\n", image_id);
  fflush(stdout);
  if (h5depot_wait(client, image_id, timeout_ms) != H5DEPOT_OK) {
    fprintf(stderr, "packet_consumer: %s\n", h5depot_errmsg());
    int code = h5depot_errcode();
    h5depot_disconnect(client);
    return code == H5DEPOT_DEADLINE_EXCEEDED ? 3 : 1;
  }
  /* Fetched into one buffer that HDF5 then uses in place and frees when
   * the file closes: the image is never copied after it arrives. */
  hid_t file = h5depot_open(client, image_id, 0);
  if (file < 0) {
    fprintf(stderr, "packet_consumer: %s\n", h5depot_errmsg());
    h5depot_disconnect(client);
    return 1;
  }
  printf("opened %s\n", image_id);
  int result = print_packet(file);
  if (result < 0) {
    fprintf(stderr, "packet_consumer: %s is not the packet expected\n",
            image_id);
  }
  H5Fclose(file);
  h5depot_disconnect(client);
  return result < 0 ? 1 : 0;
}
