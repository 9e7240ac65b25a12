/* Process A of the file image example: builds an HDF5 file in memory (a
 * memfd, nothing touches the disk), writes datasets and
 * attributes, and pushes its image to h5depotd. Process B
 * (packet_consumer.c) waits for the image, fetches it and opens it without
 * a copy.
 *
 * Usage: packet_producer TARGET IMAGE_ID
 *   e.g. packet_producer unix:/tmp/h5depot.sock run-42/packet
 *
 * Exits 0 once the image is stored, 1 on any failure (with a message on
 * stderr). */
#include <inttypes.h>
#include <stdio.h>
#include <string.h>

#include "h5depot/h5depot.h"

#define ADC_ROWS 4
#define ADC_COLUMNS 6
#define ENERGY_COUNT 1000

/* Attaches the string attribute `name` = `value` to `object`. */
static int write_string_attribute(hid_t object, const char* name,
                                  const char* value) {
  hid_t type = H5Tcopy(H5T_C_S1);
  H5Tset_size(type, strlen(value));
  hid_t space = H5Screate(H5S_SCALAR);
  hid_t attribute =
      H5Acreate2(object, name, type, space, H5P_DEFAULT, H5P_DEFAULT);
  herr_t written = attribute < 0 ? -1 : H5Awrite(attribute, type, value);
  if (attribute >= 0) H5Aclose(attribute);
  H5Sclose(space);
  H5Tclose(type);
  return written < 0 ? -1 : 0;
}

static int write_int64_attribute(hid_t object, const char* name,
                                 int64_t value) {
  hid_t space = H5Screate(H5S_SCALAR);
  hid_t attribute =
      H5Acreate2(object, name, H5T_STD_I64LE, space, H5P_DEFAULT, H5P_DEFAULT);
  herr_t written =
      attribute < 0 ? -1 : H5Awrite(attribute, H5T_NATIVE_INT64, &value);
  if (attribute >= 0) H5Aclose(attribute);
  H5Sclose(space);
  return written < 0 ? -1 : 0;
}

/* /detector/adc: a small 2-D dataset, adc[i][j] = 100 * i + j. */
static int write_adc(hid_t detector) {
  uint16_t adc[ADC_ROWS][ADC_COLUMNS];
  for (int i = 0; i < ADC_ROWS; ++i) {
    for (int j = 0; j < ADC_COLUMNS; ++j) adc[i][j] = (uint16_t)(100 * i + j);
  }
  hsize_t dims[2] = {ADC_ROWS, ADC_COLUMNS};
  hid_t space = H5Screate_simple(2, dims, NULL);
  hid_t dataset = H5Dcreate2(detector, "adc", H5T_STD_U16LE, space, H5P_DEFAULT,
                             H5P_DEFAULT, H5P_DEFAULT);
  herr_t written = dataset < 0 ? -1
                               : H5Dwrite(dataset, H5T_NATIVE_UINT16, H5S_ALL,
                                          H5S_ALL, H5P_DEFAULT, adc);
  if (dataset >= 0) H5Dclose(dataset);
  H5Sclose(space);
  return written < 0 ? -1 : 0;
}

/* /detector/energy: chunked and compressed, energy[k] = k / 4, in GeV. */
static int write_energy(hid_t detector) {
  static double energy[ENERGY_COUNT];
  for (int k = 0; k < ENERGY_COUNT; ++k) energy[k] = k / 4.0;
  hsize_t dims[1] = {ENERGY_COUNT};
  hsize_t chunk[1] = {100};
  hid_t space = H5Screate_simple(1, dims, NULL);
  hid_t dcpl = H5Pcreate(H5P_DATASET_CREATE);
  H5Pset_chunk(dcpl, 1, chunk);
  H5Pset_deflate(dcpl, 6);
  hid_t dataset = H5Dcreate2(detector, "energy", H5T_IEEE_F64LE, space,
                             H5P_DEFAULT, dcpl, H5P_DEFAULT);
  herr_t written = dataset < 0 ? -1
                               : H5Dwrite(dataset, H5T_NATIVE_DOUBLE, H5S_ALL,
                                          H5S_ALL, H5P_DEFAULT, energy);
  if (written >= 0) written = write_string_attribute(dataset, "units", "GeV");
  if (dataset >= 0) H5Dclose(dataset);
  H5Pclose(dcpl);
  H5Sclose(space);
  return written < 0 ? -1 : 0;
}

/* The packet: attributes on the root group, a group with two datasets. */
static int write_packet(hid_t file) {
  if (write_int64_attribute(file, "run", 42) < 0 ||
      write_string_attribute(file, "source", "packet_producer") < 0) {
    return -1;
  }
  hid_t detector =
      H5Gcreate2(file, "detector", H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
  if (detector < 0) return -1;
  int result = write_string_attribute(detector, "name", "calorimeter") < 0 ||
                       write_adc(detector) < 0 || write_energy(detector) < 0
                   ? -1
                   : 0;
  H5Gclose(detector);
  return result;
}

int main(int argc, char** argv) {
  if (argc != 3) {
    fprintf(stderr, "usage: %s TARGET IMAGE_ID\n", argv[0]);
    return 2;
  }
  const char* target = argv[1];
  const char* image_id = argv[2];

  /* A file in memory, built directly in shared memory (a memfd): pushed to
   * a server on this host over its Unix socket, it is handed over without
   * a copy. (A file of the core driver, H5Pset_fapl_core without a backing
   * store, pushes the same way, copying its image once.) */
  hid_t file = h5depot_create_memory_file(H5P_DEFAULT, H5P_DEFAULT);
  if (file < 0 || write_packet(file) < 0) {
    fprintf(stderr, "packet_producer: cannot build the HDF5 file\n");
    return 1;
  }

  h5depot_client* client = h5depot_connect(target);
  if (client == NULL) {
    fprintf(stderr, "packet_producer: %s\n", h5depot_errmsg());
    H5Fclose(file);
    return 1;
  }
  /* One copy of the file's image, streamed to the server. */
  uint64_t generation = 0;
  int rc = h5depot_push_file(client, image_id, file, &generation);
  if (rc != H5DEPOT_OK) {
    fprintf(stderr, "packet_producer: %s\n", h5depot_errmsg());
  } else {
    printf("pushed %s as generation %" PRIu64 "\n", image_id, generation);
  }
  h5depot_disconnect(client);
  H5Fclose(file);
  return rc == H5DEPOT_OK ? 0 : 1;
}
