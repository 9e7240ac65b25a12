#include <string>
#include <vector>

#include "absl/base/const_init.h"
#include "absl/base/thread_annotations.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "client/src/hdf5_error_internal.h"
#include "h5depot/internal/mutex.h"

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

constexpr const char* kMajorText[] = {
    "h5depot file image",     // Hdf5ErrorSource::kFileImage
    "h5depot remote driver",  // Hdf5ErrorSource::kRemoteDriver
};
constexpr int kMajorCount = sizeof(kMajorText) / sizeof(kMajorText[0]);

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

Minor MinorFor(absl::StatusCode code) {
  switch (code) {
    case absl::StatusCode::kUnavailable:
    case absl::StatusCode::kCancelled:
      return kUnavailable;
    case absl::StatusCode::kNotFound:
      return kNotFound;
    case absl::StatusCode::kAlreadyExists:
      return kAlreadyExists;
    case absl::StatusCode::kAborted:  // a lost generation race
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

// The identifiers of the error class and its messages.
struct ErrorClass {
  hid_t cls = H5I_INVALID_HID;
  hid_t major[kMajorCount];
  hid_t minor[kMinorCount];
};

// Registers the class and its messages; `cls` negative if HDF5 refused.
ErrorClass RegisterErrorClass() {
  ErrorClass fresh;
  fresh.cls = H5Eregister_class("h5depot", "h5depot", H5DEPOT_VERSION);
  if (fresh.cls < 0) return fresh;
  bool complete = true;
  for (int i = 0; i < kMajorCount; ++i) {
    fresh.major[i] = H5Ecreate_msg(fresh.cls, H5E_MAJOR, kMajorText[i]);
    complete = complete && fresh.major[i] >= 0;
  }
  for (int i = 0; i < kMinorCount; ++i) {
    fresh.minor[i] = H5Ecreate_msg(fresh.cls, H5E_MINOR, kMinorText[i]);
    complete = complete && fresh.minor[i] >= 0;
  }
  if (!complete) {
    H5Eunregister_class(fresh.cls);  // closes its messages too
    fresh.cls = H5I_INVALID_HID;
  }
  return fresh;
}

// No HDF5 call is made with this held: callbacks call in here with HDF5's
// own lock held, and taking the two in both orders would deadlock.
Mutex g_error_class_mutex;
ErrorClass g_error_class ABSL_GUARDED_BY(g_error_class_mutex);

// The registered class, registering it first if need be; its `cls` is
// negative if HDF5 refused.
ErrorClass GetErrorClass() ABSL_LOCKS_EXCLUDED(g_error_class_mutex) {
  ErrorClass known;
  {
    MutexLock lock(&g_error_class_mutex);
    known = g_error_class;
  }
  if (known.cls >= 0 && H5Iis_valid(known.cls) > 0) return known;
  ErrorClass fresh = RegisterErrorClass();
  if (fresh.cls < 0) return fresh;
  ErrorClass winner;
  {
    MutexLock lock(&g_error_class_mutex);
    if (g_error_class.cls == known.cls) g_error_class = fresh;
    winner = g_error_class;
  }
  // Another thread registered one meanwhile: one class is enough.
  if (winner.cls != fresh.cls) H5Eunregister_class(fresh.cls);
  return winner;
}

}  // namespace

QuietHdf5Errors::QuietHdf5Errors() {
  // Nothing to change (or restore) on a thread that already prints nothing.
  if (H5Eget_auto2(H5E_DEFAULT, &saved_func_, &saved_data_) >= 0 &&
      saved_func_ != nullptr) {
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

herr_t RegisterHdf5ErrorClass() { return GetErrorClass().cls < 0 ? -1 : 0; }

herr_t PushHdf5Error(Hdf5ErrorSource source, const char* file,
                     const char* function, unsigned line,
                     const absl::Status& status) {
  const ErrorClass error_class = GetErrorClass();
  if (error_class.cls < 0) return -1;
  const std::string message = status.ToString();
  H5Epush2(H5E_DEFAULT, file, function, line, error_class.cls,
           error_class.major[static_cast<int>(source)],
           error_class.minor[MinorFor(status.code())], "%s", message.c_str());
  return -1;
}

void ReportHdf5ErrorWithoutFailing(Hdf5ErrorSource source, const char* file,
                                   const char* function, unsigned line,
                                   const absl::Status& status) {
  // Asked first: H5Eget_auto2, unlike H5Epush2, clears the stack.
  H5E_auto2_t handler = nullptr;
  void* handler_data = nullptr;
  H5Eget_auto2(H5E_DEFAULT, &handler, &handler_data);
  PushHdf5Error(source, file, function, line, status);
  if (handler != nullptr) handler(H5E_DEFAULT, handler_data);
}

}  // namespace h5depot::internal
