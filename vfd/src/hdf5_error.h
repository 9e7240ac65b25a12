// The one place where an absl::Status becomes an HDF5 failure: an herr_t
// (or null/HADDR_UNDEF) for the caller plus an entry on the calling
// thread's HDF5 error stack, under the error class "h5depot remote driver".
#ifndef H5DEPOT_VFD_HDF5_ERROR_H_
#define H5DEPOT_VFD_HDF5_ERROR_H_

#include "absl/status/status.h"
#include "hdf5.h"

namespace h5depot::vfd {

// Registers the error class and its messages unless they are registered
// already (they vanish with H5close). Not thread-safe: H5FD_remote_init
// calls it under its lock. Returns a negative value if HDF5 refused.
herr_t RegisterErrorClass();

// Pushes `status` (which must not be OK) on the error stack, with a minor
// message chosen by its code: "Server unavailable" (UNAVAILABLE), "Image
// not found" (NOT_FOUND), "Image already exists" (ALREADY_EXISTS), "Commit
// conflict" (ABORTED), "Timed out" (DEADLINE_EXCEEDED), ... Returns -1,
// HDF5's FAIL.
herr_t PushError(const char* file, const char* function, unsigned line,
                 const absl::Status& status);

// For a failure the caller must not pass on to HDF5 (in a file close, see
// H5FDremote.cc): pushes `status` as PushError does and then invokes the
// thread's automatic error handler (H5Eset_auto2; by default it prints the
// stack to stderr), as a failing API call would have.
void ReportWithoutFailing(const char* file, const char* function, unsigned line,
                          const absl::Status& status);

}  // namespace h5depot::vfd

// Reports `status` from the current function; evaluates to -1.
#define H5DEPOT_VFD_FAIL(status) \
  ::h5depot::vfd::PushError(__FILE__, __func__, __LINE__, (status))

#endif  // H5DEPOT_VFD_HDF5_ERROR_H_
