#include "vfd/src/hdf5_error.h"

#include <atomic>
#include <string>

namespace h5depot::vfd {
namespace {

// The minor messages, one per kind of failure a user acts on differently.
enum Minor {
  kUnavailable,
  kNotFound,
  kAlreadyExists,
  kConflict,
  kTimedOut,
  kBadArgument,
  kOutOfResources,
  kDataLoss,
  kReadOnly,
  kRefused,
  kInternal,
  kMinorCount,
};

constexpr const char* kMinorText[kMinorCount] = {
    "Server unavailable", "Image not found", "Image already exists",
    "Commit conflict",    "Timed out",       "Invalid argument",
    "Out of resources",   "Data corrupted",  "Read-only file",
    "Operation refused",  "Internal error",
};

// Read by callbacks on any thread without a lock; written only by
// RegisterErrorClass under H5FD_remote_init's lock.
std::atomic<hid_t> g_class{H5I_INVALID_HID};
std::atomic<hid_t> g_major{H5I_INVALID_HID};
std::atomic<hid_t> g_minor[kMinorCount];

Minor MinorFor(absl::StatusCode code) {
  switch (code) {
    case absl::StatusCode::kUnavailable:
    case absl::StatusCode::kCancelled:
      return kUnavailable;
    case absl::StatusCode::kNotFound:
      return kNotFound;
    case absl::StatusCode::kAlreadyExists:
      return kAlreadyExists;
    case absl::StatusCode::kAborted:  // what a lost commit race is reported as
      return kConflict;
    case absl::StatusCode::kFailedPrecondition:
      return kRefused;
    case absl::StatusCode::kDeadlineExceeded:
      return kTimedOut;
    case absl::StatusCode::kInvalidArgument:
    case absl::StatusCode::kOutOfRange:
      return kBadArgument;
    case absl::StatusCode::kResourceExhausted:
      return kOutOfResources;
    case absl::StatusCode::kDataLoss:
      return kDataLoss;
    case absl::StatusCode::kPermissionDenied:
      return kReadOnly;
    default:
      return kInternal;
  }
}

}  // namespace

herr_t RegisterErrorClass() {
  if (H5Iget_type(g_class.load()) == H5I_ERROR_CLASS) return 0;
  const hid_t cls =
      H5Eregister_class("h5depot remote driver", "h5depot", "0.1.0");
  if (cls < 0) return -1;
  const hid_t major = H5Ecreate_msg(cls, H5E_MAJOR, "Remote driver");
  if (major < 0) return -1;
  for (int i = 0; i < kMinorCount; ++i) {
    const hid_t minor = H5Ecreate_msg(cls, H5E_MINOR, kMinorText[i]);
    if (minor < 0) return -1;
    g_minor[i].store(minor);
  }
  g_major.store(major);
  g_class.store(cls);
  return 0;
}

herr_t PushError(const char* file, const char* function, unsigned line,
                 const absl::Status& status) {
  const std::string message = status.ToString();
  H5Epush2(H5E_DEFAULT, file, function, line, g_class.load(), g_major.load(),
           g_minor[MinorFor(status.code())].load(), "%s", message.c_str());
  return -1;
}

void ReportWithoutFailing(const char* file, const char* function, unsigned line,
                          const absl::Status& status) {
  // Asked first: H5Eget_auto2, unlike H5Epush2, clears the stack.
  H5E_auto2_t handler = nullptr;
  void* handler_data = nullptr;
  H5Eget_auto2(H5E_DEFAULT, &handler, &handler_data);
  PushError(file, function, line, status);
  if (handler != nullptr) handler(H5E_DEFAULT, handler_data);
}

}  // namespace h5depot::vfd
