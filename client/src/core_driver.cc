#include <cstddef>
#include <cstring>

#include "client/src/core_driver_internal.h"
#include "client/src/hdf5_error_internal.h"

namespace h5depot::internal {
namespace {

// The start of H5FD_core_t in H5FDcore.c (unchanged from HDF5 1.8 to 1.14).
struct CoreFileStart {
  H5FD_t pub;
  char* name;
  unsigned char* mem;
};

}  // namespace

absl::Status LimitCoreAddressSpace(hid_t file_id, const void* buffer,
                                   haddr_t max_address) {
  void* handle = nullptr;
  if (H5Fget_vfd_handle(file_id, H5P_DEFAULT, &handle) < 0 ||
      handle == nullptr) {
    return Hdf5Failure(absl::StatusCode::kInternal,
                       "cannot reach the core driver of the file image");
  }
  // `handle` is &mem; the checks below reject anything else before the
  // H5FD_t is written.
  auto* start = reinterpret_cast<CoreFileStart*>(static_cast<char*>(handle) -
                                                 offsetof(CoreFileStart, mem));
  H5FD_t& pub = start->pub;
  const bool layout_matches =
      start->mem == buffer && pub.driver_id == H5FD_CORE &&
      pub.cls != nullptr && pub.cls->name != nullptr &&
      std::strcmp(pub.cls->name, "core") == 0 &&
      pub.maxaddr == pub.cls->maxaddr && max_address <= pub.maxaddr;
  if (!layout_matches) {
    return absl::UnimplementedError(
        "this HDF5's core driver is not laid out as h5depot expects, so a "
        "file image cannot be kept within the application's buffer; open "
        "it without H5LT_FILE_IMAGE_DONT_RELEASE or read-only");
  }
  pub.maxaddr = max_address;
  return absl::OkStatus();
}

}  // namespace h5depot::internal
