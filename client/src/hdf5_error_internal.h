// The one place where HDF5's error stack becomes an absl::Status, and where
// h5depot code running inside HDF5 (file image callbacks) reports an error
// on that stack.
#ifndef H5DEPOT_CLIENT_HDF5_ERROR_INTERNAL_H_
#define H5DEPOT_CLIENT_HDF5_ERROR_INTERNAL_H_

#include <string>

#include "absl/status/status.h"
#include "absl/strings/string_view.h"
#include "hdf5.h"

namespace h5depot::internal {

// While alive, HDF5 does not print error stacks on the calling thread (HDF5
// keeps the error stack and its printing setting per thread); failures
// reach the caller as a Status instead. Restores the previous setting.
class QuietHdf5Errors {
 public:
  QuietHdf5Errors();
  ~QuietHdf5Errors();
  QuietHdf5Errors(const QuietHdf5Errors&) = delete;
  QuietHdf5Errors& operator=(const QuietHdf5Errors&) = delete;

 private:
  H5E_auto2_t saved_func_ = nullptr;
  void* saved_data_ = nullptr;
  bool restore_ = false;
};

// The calling thread's HDF5 error stack as one line, outermost call first,
// innermost cause last ("unable to open file: ...: incorrect metadata
// checksum after all read attempts"); clears the stack. Empty if the stack
// is empty.
std::string TakeHdf5ErrorStack();

// A Status with `code` and the message "<context>: <error stack>" (just
// `context` when the stack is empty). Clears the stack.
absl::Status Hdf5Failure(absl::StatusCode code, absl::string_view context);

// Pushes `message` onto the calling thread's HDF5 error stack under the
// error class "h5depot". For code that HDF5 calls back, so that the failing
// HDF5 call reports why. Never fails loudly: if HDF5 cannot take the entry,
// the message is lost and the HDF5 call still fails.
void PushHdf5Error(const char* function, const std::string& message);

}  // namespace h5depot::internal

#endif  // H5DEPOT_CLIENT_HDF5_ERROR_INTERNAL_H_
