#include <mutex>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "client/src/hdf5_error_internal.h"

namespace h5depot::internal {
namespace {

herr_t CollectDescription(unsigned /*n*/, const H5E_error2_t* entry,
                          void* client_data) {
  auto* descriptions = static_cast<std::vector<std::string>*>(client_data);
  if (entry->desc != nullptr && entry->desc[0] != '\0') {
    // HDF5 repeats a cause when several layers report it in the same words.
    if (descriptions->empty() || descriptions->back() != entry->desc) {
      descriptions->emplace_back(entry->desc);
    }
  }
  return 0;
}

// The error class and messages of h5depot's own entries. Registered on
// first use; registered again if HDF5 was closed and reopened meanwhile
// (H5close releases every identifier).
struct ErrorClass {
  hid_t cls = H5I_INVALID_HID;
  hid_t major = H5I_INVALID_HID;
  hid_t minor = H5I_INVALID_HID;
};

ErrorClass GetErrorClass() {
  static std::mutex mu;
  static ErrorClass registered;
  std::lock_guard<std::mutex> lock(mu);
  if (registered.cls < 0 || H5Iis_valid(registered.cls) <= 0) {
    registered.cls = H5Eregister_class("h5depot", "h5depot", "0.1");
    registered.major =
        H5Ecreate_msg(registered.cls, H5E_MAJOR, "HDF5 file image");
    registered.minor =
        H5Ecreate_msg(registered.cls, H5E_MINOR, "File image buffer");
  }
  return registered;
}

}  // namespace

QuietHdf5Errors::QuietHdf5Errors() {
  if (H5Eget_auto2(H5E_DEFAULT, &saved_func_, &saved_data_) >= 0) {
    restore_ = H5Eset_auto2(H5E_DEFAULT, nullptr, nullptr) >= 0;
  }
}

QuietHdf5Errors::~QuietHdf5Errors() {
  if (restore_) H5Eset_auto2(H5E_DEFAULT, saved_func_, saved_data_);
}

std::string TakeHdf5ErrorStack() {
  std::vector<std::string> descriptions;
  H5Ewalk2(H5E_DEFAULT, H5E_WALK_DOWNWARD, CollectDescription, &descriptions);
  H5Eclear2(H5E_DEFAULT);
  return absl::StrJoin(descriptions, ": ");
}

absl::Status Hdf5Failure(absl::StatusCode code, absl::string_view context) {
  std::string stack = TakeHdf5ErrorStack();
  if (stack.empty()) return absl::Status(code, context);
  return absl::Status(code, absl::StrCat(context, ": ", stack));
}

void PushHdf5Error(const char* function, const std::string& message) {
  ErrorClass error_class = GetErrorClass();
  if (error_class.cls < 0) return;
  H5Epush2(H5E_DEFAULT, __FILE__, function, __LINE__, error_class.cls,
           error_class.major, error_class.minor, "%s", message.c_str());
}

}  // namespace h5depot::internal
