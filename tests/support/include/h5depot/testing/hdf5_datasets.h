// Small HDF5 helpers for tests: silencing expected errors, and writing and
// reading back whole 1-D datasets.
#ifndef H5DEPOT_TESTING_HDF5_DATASETS_H_
#define H5DEPOT_TESTING_HDF5_DATASETS_H_

#include <hdf5.h>

#include <cstdint>
#include <vector>

namespace h5depot::testing {

// Turns HDF5's automatic error printing off for its lifetime, for failures
// a test expects.
class QuietHdf5Errors {
 public:
  QuietHdf5Errors() {
    H5Eget_auto2(H5E_DEFAULT, &func_, &data_);
    H5Eset_auto2(H5E_DEFAULT, nullptr, nullptr);
  }
  ~QuietHdf5Errors() { H5Eset_auto2(H5E_DEFAULT, func_, data_); }
  QuietHdf5Errors(const QuietHdf5Errors&) = delete;
  QuietHdf5Errors& operator=(const QuietHdf5Errors&) = delete;

 private:
  H5E_auto2_t func_ = nullptr;
  void* data_ = nullptr;
};

// The HDF5 memory type of T.
inline hid_t NativeType(const int*) { return H5T_NATIVE_INT; }
inline hid_t NativeType(const int64_t*) { return H5T_NATIVE_INT64; }
inline hid_t NativeType(const uint8_t*) { return H5T_NATIVE_UINT8; }
inline hid_t NativeType(const double*) { return H5T_NATIVE_DOUBLE; }

// Writes `values` to the 1-D dataset `name` of `file`, creating it (with
// T's native type) if it does not exist. False if HDF5 fails.
template <typename T>
bool WriteDataset(hid_t file, const char* name, const std::vector<T>& values) {
  const hid_t type = NativeType(static_cast<const T*>(nullptr));
  hid_t dataset = H5Lexists(file, name, H5P_DEFAULT) > 0
                      ? H5Dopen2(file, name, H5P_DEFAULT)
                      : H5I_INVALID_HID;
  if (dataset < 0) {
    const hsize_t dims[1] = {values.size()};
    hid_t space = H5Screate_simple(1, dims, nullptr);
    dataset = H5Dcreate2(file, name, type, space, H5P_DEFAULT, H5P_DEFAULT,
                         H5P_DEFAULT);
    H5Sclose(space);
    if (dataset < 0) return false;
  }
  const herr_t written =
      H5Dwrite(dataset, type, H5S_ALL, H5S_ALL, H5P_DEFAULT, values.data());
  H5Dclose(dataset);
  return written >= 0;
}

// The values of the 1-D dataset `name`, converted to T; empty if it cannot
// be read.
template <typename T>
std::vector<T> ReadDataset(hid_t file, const char* name) {
  hid_t dataset = H5Dopen2(file, name, H5P_DEFAULT);
  if (dataset < 0) return {};
  hid_t space = H5Dget_space(dataset);
  const hssize_t count = H5Sget_simple_extent_npoints(space);
  H5Sclose(space);
  std::vector<T> values(count > 0 ? static_cast<size_t>(count) : 0);
  const herr_t read =
      H5Dread(dataset, NativeType(static_cast<const T*>(nullptr)), H5S_ALL,
              H5S_ALL, H5P_DEFAULT, values.data());
  H5Dclose(dataset);
  if (count < 0 || read < 0) return {};
  return values;
}

}  // namespace h5depot::testing

#endif  // H5DEPOT_TESTING_HDF5_DATASETS_H_
