// HDF5 files written by h5py, for tests that check h5depot reads them back
// identically (h5py_writer.py writes them; ExpectH5pyContents checks every
// value), and h5py reading what h5depot hands out (h5py_reader.py).
#ifndef H5DEPOT_TESTS_H5PY_IMAGES_H_
#define H5DEPOT_TESTS_H5PY_IMAGES_H_

#include <string>
#include <vector>

#include "hdf5.h"

namespace h5depot::testing {

// Whether a Python with h5py was found at configure time. Tests that need
// it GTEST_SKIP without.
bool HaveH5py();

// The bytes of the file h5py_writer.py writes with libver (`low`,
// "latest"): `low` "earliest" gives superblock version 0, "v108" version 2,
// "latest" version 3. Written once per process and `low`; thread-safe.
// Empty (with a test failure) if the writer fails.
const std::vector<unsigned char>& H5pyWritten(const std::string& low);

// Expects (GoogleTest) every attribute, group and dataset h5py_writer.py
// writes, with every value, in the open file `file`.
void ExpectH5pyContents(hid_t file);

struct H5pyReport {
  int exit_code = -1;  // 0: h5py read every value as expected
  std::string output;  // what h5py_reader.py printed (stdout and stderr)
};

// Runs h5py_reader.py on the file at `path`: h5py opens it and checks
// every value h5py_writer.py writes, plus /run/added if present (int64,
// value(k) = k * k), printing one line per object.
H5pyReport ReadWithH5py(const std::string& path);

}  // namespace h5depot::testing

#endif  // H5DEPOT_TESTS_H5PY_IMAGES_H_
