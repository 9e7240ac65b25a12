// HDF5 content the remote driver tests write and check, derived from a seed
// so that separate processes (the test, its helper, h5py) agree on it.
#ifndef H5DEPOT_TESTS_REMOTE_DRIVER_CONTENT_H_
#define H5DEPOT_TESTS_REMOTE_DRIVER_CONTENT_H_

#include <cstdint>
#include <string>
#include <vector>

#include "hdf5.h"
#include "hdf5_hl.h"

namespace h5depot::testing {

inline constexpr int kInts = 1000;
inline constexpr int kRows = 20;
inline constexpr int kCols = 30;

inline std::vector<int> Ints(int seed) {
  std::vector<int> v(kInts);
  for (int i = 0; i < kInts; ++i) v[i] = seed * 1000 + i;
  return v;
}

inline std::vector<double> Matrix(int seed) {
  std::vector<double> v(kRows * kCols);
  for (int r = 0; r < kRows; ++r) {
    for (int c = 0; c < kCols; ++c) v[r * kCols + c] = seed + r * 0.5 + c;
  }
  return v;
}

inline std::string Title(int seed) { return "seed " + std::to_string(seed); }

// Writes /ints (int32[1000]), /group/matrix (float64[20][30]) and the root
// attribute "title". Returns false if HDF5 refused any of it.
inline bool WriteContent(hid_t file, int seed) {
  const hsize_t ints_dims[1] = {kInts};
  const hsize_t matrix_dims[2] = {kRows, kCols};
  const std::vector<int> ints = Ints(seed);
  const std::vector<double> matrix = Matrix(seed);
  hid_t group =
      H5Gcreate2(file, "group", H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
  if (group < 0) return false;
  const bool ok =
      H5LTmake_dataset_int(file, "ints", 1, ints_dims, ints.data()) >= 0 &&
      H5LTmake_dataset_double(group, "matrix", 2, matrix_dims, matrix.data()) >=
          0 &&
      H5LTset_attribute_string(file, "/", "title", Title(seed).c_str()) >= 0;
  H5Gclose(group);
  return ok;
}

// Overwrites /ints with the values of `seed`, leaving the rest alone.
inline bool OverwriteInts(hid_t file, int seed) {
  const std::vector<int> ints = Ints(seed);
  hid_t dset = H5Dopen2(file, "ints", H5P_DEFAULT);
  if (dset < 0) return false;
  const bool ok = H5Dwrite(dset, H5T_NATIVE_INT, H5S_ALL, H5S_ALL, H5P_DEFAULT,
                           ints.data()) >= 0;
  H5Dclose(dset);
  return ok;
}

// "" if /ints holds the values of `ints_seed` and the rest those of `seed`;
// otherwise what differs first.
inline std::string CheckContent(hid_t file, int seed, int ints_seed) {
  std::vector<int> ints(kInts);
  if (H5LTread_dataset_int(file, "ints", ints.data()) < 0) {
    return "cannot read /ints";
  }
  if (ints != Ints(ints_seed)) return "/ints differs";
  std::vector<double> matrix(kRows * kCols);
  if (H5LTread_dataset_double(file, "group/matrix", matrix.data()) < 0) {
    return "cannot read /group/matrix";
  }
  if (matrix != Matrix(seed)) return "/group/matrix differs";
  char title[64] = {};
  if (H5LTget_attribute_string(file, "/", "title", title) < 0) {
    return "cannot read the title attribute";
  }
  if (Title(seed) != title) return std::string("title is ") + title;
  return "";
}

inline std::string CheckContent(hid_t file, int seed) {
  return CheckContent(file, seed, seed);
}

// What tests/h5py_dump.py prints for a file written by WriteContent(seed)
// with /ints overwritten by `ints_seed`.
inline std::string ExpectedDump(int seed, int ints_seed) {
  long long ints_sum = 0;
  for (int v : Ints(ints_seed)) ints_sum += v;
  double matrix_sum = 0;
  for (double v : Matrix(seed)) matrix_sum += v;
  char line[256];
  std::snprintf(line, sizeof(line),
                "ints int32 (%d,) sum=%lld first=%d last=%d\n"
                "group/matrix float64 (%d, %d) sum=%.1f\n"
                "title=%s\n",
                kInts, ints_sum, Ints(ints_seed).front(),
                Ints(ints_seed).back(), kRows, kCols, matrix_sum,
                Title(seed).c_str());
  return line;
}

}  // namespace h5depot::testing

#endif  // H5DEPOT_TESTS_REMOTE_DRIVER_CONTENT_H_
