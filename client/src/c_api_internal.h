// Shared plumbing of the C API's translation units: the opaque client
// struct and the one place that turns a failure into a result code plus
// the thread-local message h5depot_errmsg() returns.
#ifndef H5DEPOT_CLIENT_C_API_INTERNAL_H_
#define H5DEPOT_CLIENT_C_API_INTERNAL_H_

#include <memory>
#include <string>

#include "absl/status/status.h"
#include "h5depot/client.h"
#include "h5depot/h5depot.h"
#include "h5depot/hdf5_transfer.h"

struct h5depot_client {
  std::unique_ptr<h5depot::Client> client;
};

struct h5depot_step_buffer {
  h5depot::StepBuffer buffer;
};

struct h5depot_watch {
  std::unique_ptr<h5depot::ImageWatch> watch;
  std::string image_id;  // of the last event, which points into it
};

struct h5depot_view {
  h5depot::ImageBuffer buffer;
};

namespace h5depot::c_api {

// Records `status` as the calling thread's last failure; returns its code.
int Fail(const absl::Status& status);

// Records INVALID_ARGUMENT with `message`; returns its code.
int FailInvalid(const char* message);

// Inside a catch block: records the exception in flight as a failure.
int FailFromException();

// Clears the calling thread's last failure; returns H5DEPOT_OK.
int Succeed();

// The C++ push options for `options` (NULL: the defaults).
ImagePushOptions ToPushOptions(const h5depot_push_options* options);

// The C API's name for a kind of change.
h5depot_event_kind ToCEventKind(ImageEvent::Kind kind);

}  // namespace h5depot::c_api

#endif  // H5DEPOT_CLIENT_C_API_INTERNAL_H_
