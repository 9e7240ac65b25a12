// The one bridge between absl::Status and HDF5's error stack, for every part
// of h5depot that runs with HDF5 (the file image library and the remote
// driver): HDF5's error stack becomes an absl::Status here, and an
// absl::Status becomes an HDF5 failure here (a negative herr_t for the
// caller and an entry on the calling thread's error stack).
//
// Every entry h5depot pushes is under one error class, "h5depot" (library
// "h5depot", the project's version), with a major message naming the part
// it comes from (Hdf5ErrorSource) and a minor message naming the kind of
// failure, chosen by the Status code; its description is the Status itself
// ("NOT_FOUND: no image 'x'"). The minor messages, one per kind of failure
// a user acts on differently: "Server unavailable" (UNAVAILABLE,
// CANCELLED), "Image not found" (NOT_FOUND), "Image already exists"
// (ALREADY_EXISTS), "Commit conflict" (ABORTED), "Operation refused"
// (FAILED_PRECONDITION), "Timed out" (DEADLINE_EXCEEDED), "Invalid
// argument" (INVALID_ARGUMENT, OUT_OF_RANGE), "Out of resources"
// (RESOURCE_EXHAUSTED), "Data corrupted" (DATA_LOSS), "Read-only file"
// (PERMISSION_DENIED), "Internal error" (anything else).
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

// The part of h5depot an entry on the error stack comes from: its major
// message.
enum class Hdf5ErrorSource {
  kFileImage,     // "h5depot file image": the file image library's callbacks
  kRemoteDriver,  // "h5depot remote driver": the remote driver (H5FDremote.h)
};

// Registers the error class and its messages unless they are registered
// already; they are registered again if HDF5 was closed and reopened
// meanwhile (H5close releases every identifier). Pushing does this by
// itself; calling it first (as H5FD_remote_init does) only finds out early
// whether HDF5 takes it. Thread-safe. Returns a negative value if HDF5
// refused.
herr_t RegisterHdf5ErrorClass();

// Pushes `status` (which must not be OK) onto the calling thread's error
// stack as coming from `source`, at `file`, `function`, `line`. For code
// that HDF5 calls back, so that the failing HDF5 call reports why. Returns
// -1, HDF5's FAIL. Never fails loudly: if HDF5 cannot take the entry, it is
// lost and the caller still fails.
herr_t PushHdf5Error(Hdf5ErrorSource source, const char* file,
                     const char* function, unsigned line,
                     const absl::Status& status);

// For a failure the caller must not pass on to HDF5 (a remote driver's file
// close, see H5FDremote.cc): pushes `status` as PushHdf5Error does, then
// invokes the thread's automatic error handler (H5Eset_auto2; by default it
// prints the stack to stderr), as a failing API call would have.
void ReportHdf5ErrorWithoutFailing(Hdf5ErrorSource source, const char* file,
                                   const char* function, unsigned line,
                                   const absl::Status& status);

}  // namespace h5depot::internal

// Pushes `status` from the current function as coming from `source` (an
// Hdf5ErrorSource enumerator, unqualified); evaluates to -1.
#define H5DEPOT_PUSH_HDF5_ERROR(source, status)                         \
  ::h5depot::internal::PushHdf5Error(                                   \
      ::h5depot::internal::Hdf5ErrorSource::source, __FILE__, __func__, \
      __LINE__, (status))

#endif  // H5DEPOT_CLIENT_HDF5_ERROR_INTERNAL_H_
