#include "h5py_images.h"

#include <sys/wait.h>
#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <iterator>
#include <map>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "gtest/gtest.h"

namespace h5depot::testing {
namespace {

std::string ReadStringAttribute(hid_t object, const char* name) {
  hid_t attribute = H5Aopen(object, name, H5P_DEFAULT);
  hid_t type = H5Tcopy(H5T_C_S1);
  H5Tset_size(type, H5T_VARIABLE);
  H5Tset_cset(type, H5T_CSET_UTF8);
  char* value = nullptr;
  std::string result = "<unreadable>";
  if (H5Aread(attribute, type, &value) >= 0 && value != nullptr) {
    result = value;
    hid_t space = H5Aget_space(attribute);
    H5Dvlen_reclaim(type, space, H5P_DEFAULT, &value);
    H5Sclose(space);
  }
  H5Tclose(type);
  H5Aclose(attribute);
  return result;
}

template <typename T>
std::vector<T> ReadNumbers(hid_t dataset_or_attribute, hid_t memory_type,
                           bool attribute) {
  hid_t space = attribute ? H5Aget_space(dataset_or_attribute)
                          : H5Dget_space(dataset_or_attribute);
  std::vector<T> values(
      static_cast<size_t>(H5Sget_simple_extent_npoints(space)));
  H5Sclose(space);
  const herr_t read =
      attribute ? H5Aread(dataset_or_attribute, memory_type, values.data())
                : H5Dread(dataset_or_attribute, memory_type, H5S_ALL, H5S_ALL,
                          H5P_DEFAULT, values.data());
  if (read < 0) return {};
  return values;
}

}  // namespace

bool HaveH5py() { return !std::string(H5DEPOT_H5PY_PYTHON).empty(); }

const std::vector<unsigned char>& H5pyWritten(const std::string& low) {
  static absl::Mutex mutex(absl::kConstInit);
  static auto* written = new std::map<std::string, std::vector<unsigned char>>;
  absl::MutexLock lock(&mutex);
  std::vector<unsigned char>& bytes = (*written)[low];
  if (bytes.empty()) {
    const std::string path = absl::StrCat(::testing::TempDir(), "/h5depot-",
                                          getpid(), "-h5py-", low, ".h5");
    const std::string command =
        absl::StrCat("'", H5DEPOT_H5PY_PYTHON, "' '", H5DEPOT_H5PY_WRITER,
                     "' '", path, "' ", low);
    EXPECT_EQ(std::system(command.c_str()), 0) << command;
    std::ifstream in(path, std::ios::binary);
    bytes.assign(std::istreambuf_iterator<char>(in),
                 std::istreambuf_iterator<char>());
    std::remove(path.c_str());
  }
  return bytes;
}

H5pyReport ReadWithH5py(const std::string& path) {
  const std::string command =
      absl::StrCat("'", H5DEPOT_H5PY_PYTHON, "' '", H5DEPOT_H5PY_READER, "' '",
                   path, "' 2>&1");
  H5pyReport report;
  FILE* pipe = popen(command.c_str(), "r");
  if (pipe == nullptr) {
    report.output = absl::StrCat("cannot run ", command);
    return report;
  }
  char chunk[4096];
  size_t n;
  while ((n = std::fread(chunk, 1, sizeof chunk, pipe)) > 0) {
    report.output.append(chunk, n);
  }
  const int status = pclose(pipe);
  report.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  return report;
}

// Compares everything h5py_writer.py wrote with its formulas.
void ExpectH5pyContents(hid_t file) {
  EXPECT_EQ(ReadStringAttribute(file, "title"), "h5depot round trip");
  hid_t shape = H5Aopen(file, "shape", H5P_DEFAULT);
  EXPECT_EQ(ReadNumbers<int64_t>(shape, H5T_NATIVE_INT64, true),
            (std::vector<int64_t>{200, 300}));
  H5Aclose(shape);

  hid_t config = H5Gopen2(file, "run/config", H5P_DEFAULT);
  ASSERT_GE(config, 0);
  hid_t threshold = H5Aopen(config, "threshold", H5P_DEFAULT);
  EXPECT_EQ(ReadNumbers<double>(threshold, H5T_NATIVE_DOUBLE, true),
            std::vector<double>{0.25});
  H5Aclose(threshold);
  EXPECT_EQ(ReadStringAttribute(config, "label"), "détecteur β");
  H5Gclose(config);

  hid_t chunked = H5Dopen2(file, "run/chunked", H5P_DEFAULT);
  ASSERT_GE(chunked, 0);
  hid_t dcpl = H5Dget_create_plist(chunked);
  EXPECT_EQ(H5Pget_layout(dcpl), H5D_CHUNKED);
  H5Pclose(dcpl);
  std::vector<int32_t> ints =
      ReadNumbers<int32_t>(chunked, H5T_NATIVE_INT32, false);
  ASSERT_EQ(ints.size(), 200u * 300u);
  for (size_t k = 0; k < ints.size(); ++k) {
    ASSERT_EQ(ints[k], 3 * static_cast<int32_t>(k) - 7) << k;
  }
  H5Dclose(chunked);

  hid_t gzip = H5Dopen2(file, "run/gzip", H5P_DEFAULT);
  ASSERT_GE(gzip, 0);
  dcpl = H5Dget_create_plist(gzip);
  unsigned filter_flags = 0;
  size_t values = 1;
  unsigned level = 0;
  EXPECT_GE(H5Pget_filter_by_id2(dcpl, H5Z_FILTER_DEFLATE, &filter_flags,
                                 &values, &level, 0, nullptr, nullptr),
            0);
  EXPECT_EQ(level, 6u);
  H5Pclose(dcpl);
  std::vector<double> doubles =
      ReadNumbers<double>(gzip, H5T_NATIVE_DOUBLE, false);
  ASSERT_EQ(doubles.size(), 10000u);
  for (size_t k = 0; k < doubles.size(); ++k) {
    ASSERT_EQ(doubles[k], 0.5 * static_cast<double>(k)) << k;
  }
  H5Dclose(gzip);

  hid_t names = H5Dopen2(file, "run/names", H5P_DEFAULT);
  ASSERT_GE(names, 0);
  hid_t type = H5Tcopy(H5T_C_S1);
  H5Tset_size(type, H5T_VARIABLE);
  H5Tset_cset(type, H5T_CSET_UTF8);
  char* strings[4] = {};
  ASSERT_GE(H5Dread(names, type, H5S_ALL, H5S_ALL, H5P_DEFAULT, strings), 0);
  std::vector<std::string> read(strings, strings + 4);
  hid_t space = H5Dget_space(names);
  H5Dvlen_reclaim(type, space, H5P_DEFAULT, strings);
  H5Sclose(space);
  H5Tclose(type);
  H5Dclose(names);
  EXPECT_EQ(read, (std::vector<std::string>{"alpha", "beta", "γάμμα", ""}));
}

}  // namespace h5depot::testing
