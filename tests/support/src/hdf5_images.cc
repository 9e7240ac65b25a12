#include "h5depot/testing/hdf5_images.h"

#include <atomic>
#include <vector>

#include "absl/strings/str_cat.h"
#include "hdf5.h"

namespace h5depot::testing {
namespace {

// Closes an HDF5 identifier when it goes out of scope.
class Hid {
 public:
  Hid(hid_t id, herr_t (*close)(hid_t)) : id_(id), close_(close) {}
  ~Hid() {
    if (id_ >= 0) close_(id_);
  }
  Hid(const Hid&) = delete;
  Hid& operator=(const Hid&) = delete;
  hid_t get() const { return id_; }
  bool ok() const { return id_ >= 0; }

 private:
  hid_t id_;
  herr_t (*close_)(hid_t);
};

std::vector<unsigned char> PseudoRandomBytes(size_t size, uint32_t seed) {
  std::vector<unsigned char> bytes(size);
  uint64_t state = 0x9e3779b97f4a7c15ULL ^ (uint64_t{seed} << 17 | seed);
  for (unsigned char& byte : bytes) {
    state ^= state << 13;
    state ^= state >> 7;
    state ^= state << 17;
    byte = static_cast<unsigned char>(state >> 56);
  }
  return bytes;
}

}  // namespace

std::string MakeHdf5Image(size_t data_bytes, uint32_t seed) {
  // The core driver without a backing store keeps the file in memory only;
  // HDF5 refuses two open files of one name, hence the counter.
  static std::atomic<uint64_t> counter{0};
  const std::string name =
      absl::StrCat("h5depot-test-image-", counter.fetch_add(1), ".h5");
  Hid fapl(H5Pcreate(H5P_FILE_ACCESS), H5Pclose);
  if (!fapl.ok() ||
      H5Pset_fapl_core(fapl.get(), size_t{1} << 20, /*backing_store=*/0) < 0) {
    return "";
  }
  Hid file(H5Fcreate(name.c_str(), H5F_ACC_TRUNC, H5P_DEFAULT, fapl.get()),
           H5Fclose);
  if (!file.ok()) return "";
  const hsize_t dims[1] = {static_cast<hsize_t>(data_bytes)};
  Hid space(H5Screate_simple(1, dims, nullptr), H5Sclose);
  if (!space.ok()) return "";
  // Without the dataset's modification time, the same size and seed give
  // the same bytes even when the two calls fall in different seconds.
  Hid dcpl(H5Pcreate(H5P_DATASET_CREATE), H5Pclose);
  if (!dcpl.ok() || H5Pset_obj_track_times(dcpl.get(), 0) < 0) return "";
  Hid dataset(H5Dcreate2(file.get(), "/data", H5T_NATIVE_UCHAR, space.get(),
                         H5P_DEFAULT, dcpl.get(), H5P_DEFAULT),
              H5Dclose);
  if (!dataset.ok()) return "";
  if (data_bytes > 0) {
    const std::vector<unsigned char> bytes =
        PseudoRandomBytes(data_bytes, seed);
    if (H5Dwrite(dataset.get(), H5T_NATIVE_UCHAR, H5S_ALL, H5S_ALL, H5P_DEFAULT,
                 bytes.data()) < 0) {
      return "";
    }
  }
  if (H5Fflush(file.get(), H5F_SCOPE_GLOBAL) < 0) return "";
  const ssize_t size = H5Fget_file_image(file.get(), nullptr, 0);
  if (size <= 0) return "";
  std::string image(static_cast<size_t>(size), '\0');
  if (H5Fget_file_image(file.get(), image.data(), image.size()) != size) {
    return "";
  }
  return image;
}

std::string StepBufferImage(uint64_t step) {
  static const auto* const images = [] {
    auto* made = new std::vector<std::string>;
    const size_t kDataBytes[] = {300 << 10, 1 << 20, 2 << 20, 512 << 10,
                                 1536 << 10};
    for (uint32_t i = 0; i < 5; ++i) {
      made->push_back(MakeHdf5Image(kDataBytes[i], 100 + i));
    }
    return made;
  }();
  std::string bytes = (*images)[step % images->size()];
  for (int i = 0; i < 8; ++i) {
    bytes.push_back(static_cast<char>((step >> (8 * i)) & 0xff));
  }
  return bytes;
}

}  // namespace h5depot::testing
