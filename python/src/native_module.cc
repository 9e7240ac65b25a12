// h5depot._native: the C++ client as the Python package (h5depot/) uses it.
//
// Contracts kept here, so that the Python layer need not know them:
//  - Every call that waits on the network (a transfer, a wait, a connect)
//    releases the GIL; every call into HDF5 holds it, since Debian's HDF5
//    is not thread-safe and h5py serialises its own calls under the GIL.
//  - A failed call raises the exception class of h5depot.errors named for
//    its status code (one place: SetStatusError), with the client's
//    message.
//  - A fetched image is exposed through the buffer protocol, read-only, in
//    the memory it arrived in: nothing is copied after the transfer.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <memory>
#include <optional>
#include <string>
#include <utility>

#include "H5FDremote.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "h5depot/client.h"
#include "h5depot/file_image.h"
#include "h5depot/hdf5_transfer.h"

namespace py = pybind11;

namespace h5depot::python {
namespace {

// Raised by the bindings for a failed status; translated to the class of
// h5depot.errors that its code names.
struct StatusError {
  absl::Status status;
};

// Waits for `run` without the GIL. `run` must not touch Python objects.
template <typename Function>
auto WithoutGil(Function&& run) {
  py::gil_scoped_release released;
  return run();
}

template <typename T>
T ValueOrRaise(absl::StatusOr<T> result) {
  if (!result.ok()) throw StatusError{result.status()};
  return *std::move(result);
}

void OkOrRaise(const absl::Status& status) {
  if (!status.ok()) throw StatusError{status};
}

// The time as seconds since the epoch, or None for an infinite one.
py::object Seconds(absl::Time time) {
  if (time == absl::InfiniteFuture() || time == absl::InfinitePast()) {
    return py::none();
  }
  return py::float_(absl::ToDoubleSeconds(time - absl::UnixEpoch()));
}

absl::Duration Duration(std::optional<double> seconds) {
  return seconds.has_value() ? absl::Seconds(*seconds) : absl::ZeroDuration();
}

// An ImageInfo as the keyword arguments of h5depot.ImageInfo.
py::dict InfoDict(const ImageInfo& info) {
  py::dict out;
  out["image_id"] = info.image_id;
  out["size"] = info.size;
  out["generation"] = info.generation;
  out["checksum"] = info.checksum;
  out["created"] = Seconds(info.created);
  out["expires"] = Seconds(info.expires);
  return out;
}

PushOptions MakePushOptions(std::optional<uint64_t> if_generation_match,
                            std::optional<double> ttl) {
  PushOptions options;
  options.if_generation_match = if_generation_match;
  options.ttl = Duration(ttl);
  return options;
}

// A StreamInfo as the keyword arguments of h5depot.StreamInfo.
py::dict StreamInfoDict(const StreamInfo& info) {
  py::dict out;
  out["stream"] = info.stream;
  out["max_steps"] = info.policy.max_steps;
  out["max_bytes"] = info.policy.max_bytes;
  switch (info.policy.when_full) {
    case StreamPolicy::WhenFull::kBlock:
      out["when_full"] = "block";
      break;
    case StreamPolicy::WhenFull::kDiscardOldest:
      out["when_full"] = "discard-oldest";
      break;
    case StreamPolicy::WhenFull::kRefuse:
      out["when_full"] = "refuse";
      break;
  }
  out["reserve_steps"] = info.policy.reserve_steps;
  out["keep_first_step"] = info.policy.keep_first_step;
  out["finished"] = info.finished;
  out["appended_steps"] = info.appended_steps;
  out["queued_steps"] = info.queued_steps;
  out["queued_bytes"] = info.queued_bytes;
  out["kept_steps"] = info.kept_steps;
  out["kept_bytes"] = info.kept_bytes;
  py::dict groups;
  for (const StreamGroupInfo& group : info.groups) {
    py::dict g;
    g["next_step"] = group.next_step;
    g["acked_below"] = group.acked_below;
    g["leased_steps"] = group.leased_steps;
    g["waiting_steps"] = group.waiting_steps;
    groups[py::str(group.name)] = g;
  }
  out["groups"] = groups;
  return out;
}

// An appended step as (step, ImageInfo fields).
py::tuple AppendedTuple(const AppendedStep& appended) {
  return py::make_tuple(appended.step, InfoDict(appended.info));
}

// An ImageEvent as the keyword arguments of h5depot.ImageEvent.
py::dict EventDict(const ImageEvent& event) {
  py::dict out;
  out["kind"] = ImageEventKindName(event.kind);
  out["sequence"] = event.sequence;
  out["image_id"] = event.image_id;
  out["generation"] = event.generation;
  out["size"] = event.size;
  out["replaced_generation"] = event.replaced_generation;
  out["time"] = Seconds(event.time);
  out["first_lost_sequence"] = event.first_lost_sequence;
  return out;
}

// A watch (Client::Watch). Next waits without the GIL, in slices, so that
// a signal (Ctrl-C) interrupts a long wait as Python code would be.
class NativeWatch {
 public:
  explicit NativeWatch(std::unique_ptr<ImageWatch> watch)
      : watch_(std::move(watch)) {}

  uint64_t started_after() const { return watch_->started_after(); }

  // The next event, waiting up to `timeout` seconds (None: for ever);
  // DEADLINE_EXCEEDED when it passes.
  py::dict Next(std::optional<double> timeout) {
    constexpr absl::Duration kSignalCheck = absl::Milliseconds(200);
    const absl::Time deadline = timeout.has_value()
                                    ? absl::Now() + absl::Seconds(*timeout)
                                    : absl::InfiniteFuture();
    while (true) {
      const absl::Time slice = std::min(deadline, absl::Now() + kSignalCheck);
      absl::StatusOr<ImageEvent> event =
          WithoutGil([&] { return watch_->Next(slice); });
      if (event.ok()) return EventDict(*event);
      if (!absl::IsDeadlineExceeded(event.status()) ||
          absl::Now() >= deadline) {
        throw StatusError{event.status()};
      }
      if (PyErr_CheckSignals() != 0) throw py::error_already_set();
    }
  }

  void Cancel() { watch_->Cancel(); }

 private:
  std::unique_ptr<ImageWatch> watch_;
};

// A fetched image, owning its buffer. Read through the buffer protocol, or
// handed whole to HDF5 by OpenImage (after which it is empty).
class Image {
 public:
  explicit Image(FetchedImage fetched) : fetched_(std::move(fetched)) {}

  const ImageInfo& info() const { return fetched_.info; }
  ImageBuffer TakeBuffer() { return std::move(fetched_.buffer); }
  const ImageBuffer& buffer() const { return fetched_.buffer; }

 private:
  FetchedImage fetched_;
};

class NativeClient {
 public:
  NativeClient(const std::string& target, const ClientOptions& options)
      : client_(ValueOrRaise(
            WithoutGil([&] { return Client::Connect(target, options); }))) {}

  const std::string& target() const { return client_->target(); }

  py::dict PushBytes(const std::string& image_id, const py::buffer& source,
                     std::optional<uint64_t> if_generation_match,
                     std::optional<double> ttl) {
    const py::buffer_info view = source.request();
    if (view.ndim > 1 && !IsContiguous(view)) {
      throw StatusError{absl::InvalidArgumentError(
          "push: the buffer is not contiguous; pass bytes(...) of it")};
    }
    const size_t size = static_cast<size_t>(view.size * view.itemsize);
    const PushOptions options = MakePushOptions(if_generation_match, ttl);
    // `view` keeps the object's buffer exported while the GIL is released.
    return InfoDict(ValueOrRaise(WithoutGil(
        [&] { return client_->Push(image_id, view.ptr, size, options); })));
  }

  py::dict PushPath(const std::string& image_id, const std::string& path,
                    std::optional<uint64_t> if_generation_match,
                    std::optional<double> ttl) {
    const PushOptions options = MakePushOptions(if_generation_match, ttl);
    return InfoDict(ValueOrRaise(WithoutGil(
        [&] { return client_->PushFile(image_id, path, options); })));
  }

  // The image of an open HDF5 file (an h5py.File's id): taken under the
  // GIL, which guards HDF5, then sent without it.
  py::dict PushHdf5File(const std::string& image_id, int64_t file_id,
                        std::optional<uint64_t> if_generation_match,
                        std::optional<double> ttl) {
    ImageBuffer image =
        ValueOrRaise(TakeFileImage(static_cast<hid_t>(file_id)));
    const PushOptions options = MakePushOptions(if_generation_match, ttl);
    return InfoDict(ValueOrRaise(WithoutGil([&] {
      return client_->Push(image_id, image.data(), image.size(), options);
    })));
  }

  std::unique_ptr<Image> Fetch(const std::string& image_id,
                               std::optional<double> wait,
                               uint64_t newer_than) {
    FetchOptions options;
    options.wait = Duration(wait);
    options.newer_than = newer_than;
    return std::make_unique<Image>(ValueOrRaise(
        WithoutGil([&] { return client_->Fetch(image_id, options); })));
  }

  // The image's bytes written to the descriptor `fd` as they arrive
  // (Client::FetchToDescriptor), without the GIL; its info.
  py::dict FetchToDescriptor(const std::string& image_id, int fd,
                             std::optional<double> wait, uint64_t newer_than) {
    FetchOptions options;
    options.wait = Duration(wait);
    options.newer_than = newer_than;
    return InfoDict(ValueOrRaise(WithoutGil(
        [&] { return client_->FetchToDescriptor(image_id, fd, options); })));
  }

  py::dict Stat(const std::string& image_id, std::optional<double> wait,
                uint64_t newer_than) {
    return InfoDict(ValueOrRaise(WithoutGil(
        [&] { return client_->Stat(image_id, Duration(wait), newer_than); })));
  }

  // One page of ids under `prefix`: (infos, next page token or "").
  py::tuple List(const std::string& prefix, const std::string& page_token,
                 uint32_t page_size) {
    ListOptions options;
    options.prefix = prefix;
    options.page_token = page_token;
    options.page_size = page_size;
    const ListPage page =
        ValueOrRaise(WithoutGil([&] { return client_->List(options); }));
    py::list infos;
    for (const ImageInfo& info : page.images) infos.append(InfoDict(info));
    return py::make_tuple(infos, page.next_page_token);
  }

  void Delete(const std::string& image_id,
              std::optional<uint64_t> if_generation_match) {
    OkOrRaise(WithoutGil(
        [&] { return client_->Delete(image_id, if_generation_match); }));
  }

  py::dict CreateStream(const std::string& stream, uint64_t max_steps,
                        uint64_t max_bytes, const std::string& when_full,
                        uint64_t reserve_steps, bool keep_first_step) {
    StreamPolicy policy;
    policy.max_steps = max_steps;
    policy.max_bytes = max_bytes;
    if (when_full == "discard-oldest") {
      policy.when_full = StreamPolicy::WhenFull::kDiscardOldest;
    } else if (when_full == "refuse") {
      policy.when_full = StreamPolicy::WhenFull::kRefuse;
    } else if (when_full != "block") {
      throw StatusError{absl::InvalidArgumentError(
          "create_stream: when_full is \"block\", \"discard-oldest\" or "
          "\"refuse\", not \"" +
          when_full + "\"")};
    }
    policy.reserve_steps = reserve_steps;
    policy.keep_first_step = keep_first_step;
    return StreamInfoDict(ValueOrRaise(
        WithoutGil([&] { return client_->CreateStream(stream, policy); })));
  }

  py::tuple AppendBytes(const std::string& stream, const py::buffer& source,
                        double wait_for_room, bool step_buffer) {
    const py::buffer_info view = source.request();
    if (view.ndim > 1 && !IsContiguous(view)) {
      throw StatusError{absl::InvalidArgumentError(
          "append: the buffer is not contiguous; pass bytes(...) of it")};
    }
    const size_t size = static_cast<size_t>(view.size * view.itemsize);
    AppendOptions options;
    options.wait_for_room = absl::Seconds(wait_for_room);
    return AppendedTuple(ValueOrRaise(WithoutGil([&] {
      return step_buffer ? AppendInStepBuffer(stream, view.ptr, size, options)
                         : client_->Append(stream, view.ptr, size, options);
    })));
  }

  // Append's bytes copied into one of the client's step buffers and
  // committed (docs/STREAMS.md, "Step buffers").
  absl::StatusOr<AppendedStep> AppendInStepBuffer(
      const std::string& stream, const void* data, size_t size,
      const AppendOptions& options) {
    absl::StatusOr<StepBuffer> buffer =
        client_->BeginStep(stream, size, options);
    if (!buffer.ok()) return buffer.status();
    std::memcpy(buffer->data(), data, size);
    return client_->CommitStep(*std::move(buffer), options);
  }

  py::tuple AppendPath(const std::string& stream, const std::string& path,
                       double wait_for_room) {
    AppendOptions options;
    options.wait_for_room = absl::Seconds(wait_for_room);
    return AppendedTuple(ValueOrRaise(WithoutGil(
        [&] { return client_->AppendFile(stream, path, options); })));
  }

  // The image of an open HDF5 file, taken under the GIL, sent without it.
  py::tuple AppendHdf5File(const std::string& stream, int64_t file_id,
                           double wait_for_room, bool step_buffer) {
    AppendOptions options;
    options.wait_for_room = absl::Seconds(wait_for_room);
    if (step_buffer) {
      // Under the GIL, which guards HDF5, with a step buffer free now: HDF5
      // writes the image straight into it. With none free the image is
      // taken first, below, and the wait for one made without the GIL.
      AppendOptions at_once = options;
      at_once.wait_for_room = absl::ZeroDuration();
      absl::StatusOr<StepBuffer> buffer = TakeFileImageInStepBuffer(
          *client_, stream, static_cast<hid_t>(file_id), at_once);
      if (buffer.ok()) {
        return AppendedTuple(ValueOrRaise(WithoutGil(
            [&] { return client_->CommitStep(*std::move(buffer), options); })));
      }
      if (!absl::IsDeadlineExceeded(buffer.status()) &&
          !absl::IsResourceExhausted(buffer.status())) {
        throw StatusError{buffer.status()};
      }
    }
    ImageBuffer image =
        ValueOrRaise(TakeFileImage(static_cast<hid_t>(file_id)));
    return AppendedTuple(ValueOrRaise(WithoutGil([&] {
      return step_buffer
                 ? AppendInStepBuffer(stream, image.data(), image.size(),
                                      options)
                 : client_->Append(stream, image.data(), image.size(), options);
    })));
  }

  // (step, Image, [(first, last) lost], consumer).
  py::tuple Next(const std::string& stream, const std::string& group,
                 std::optional<double> wait, std::optional<double> lease,
                 const std::string& start, uint64_t start_step,
                 std::optional<uint64_t> ack_step) {
    NextOptions options;
    options.wait = Duration(wait);
    options.lease = Duration(lease);
    options.ack_step = ack_step;
    if (start == "latest") {
      options.start = NextOptions::Start::kLatest;
    } else if (start == "step") {
      options.start = NextOptions::Start::kStep;
      options.start_step = start_step;
    }
    StreamStep step = ValueOrRaise(
        WithoutGil([&] { return client_->Next(stream, group, options); }));
    py::list lost;
    for (const StepRange& range : step.lost) {
      lost.append(py::make_tuple(range.first, range.last));
    }
    return py::make_tuple(step.step,
                          std::make_unique<Image>(std::move(step.image)), lost,
                          step.consumer);
  }

  void Ack(const std::string& stream, const std::string& group, uint64_t step,
           const std::string& consumer) {
    OkOrRaise(WithoutGil(
        [&] { return client_->Ack(stream, group, step, consumer); }));
  }

  py::dict FinishStream(const std::string& stream) {
    return StreamInfoDict(ValueOrRaise(
        WithoutGil([&] { return client_->FinishStream(stream); })));
  }

  void DeleteStream(const std::string& stream,
                    std::optional<std::string> group) {
    OkOrRaise(WithoutGil([&] {
      return group.has_value() ? client_->DeleteStreamGroup(stream, *group)
                               : client_->DeleteStream(stream);
    }));
  }

  py::dict StatStream(const std::string& stream) {
    return StreamInfoDict(
        ValueOrRaise(WithoutGil([&] { return client_->StatStream(stream); })));
  }

  std::unique_ptr<NativeWatch> Watch(const std::string& prefix,
                                     std::optional<uint64_t> after) {
    WatchOptions options;
    options.prefix = prefix;
    options.after = after;
    return std::make_unique<NativeWatch>(
        ValueOrRaise(WithoutGil([&] { return client_->Watch(options); })));
  }

 private:
  static bool IsContiguous(const py::buffer_info& view) {
    py::ssize_t expected = view.itemsize;
    for (py::ssize_t dim = view.ndim - 1; dim >= 0; --dim) {
      if (view.strides[dim] != expected) return false;
      expected *= view.shape[dim];
    }
    return true;
  }

  std::unique_ptr<Client> client_;
};

// Opens `image` as an HDF5 file in its own memory (DONT_COPY: HDF5 takes
// the buffer and frees it when the file closes); returns the file id for
// h5py to adopt. `writable`: H5LT_FILE_IMAGE_OPEN_RW. Under the GIL.
int64_t OpenImage(Image& image, bool writable) {
  return static_cast<int64_t>(ValueOrRaise(OpenFileImage(
      image.TakeBuffer(), writable ? H5LT_FILE_IMAGE_OPEN_RW : 0u)));
}

// absl::StatusCode's name, as h5depot.errors keys its classes.
const char* CodeName(absl::StatusCode code) {
  switch (code) {
    case absl::StatusCode::kCancelled:
      return "CANCELLED";
    case absl::StatusCode::kInvalidArgument:
      return "INVALID_ARGUMENT";
    case absl::StatusCode::kDeadlineExceeded:
      return "DEADLINE_EXCEEDED";
    case absl::StatusCode::kNotFound:
      return "NOT_FOUND";
    case absl::StatusCode::kAlreadyExists:
      return "ALREADY_EXISTS";
    case absl::StatusCode::kPermissionDenied:
      return "PERMISSION_DENIED";
    case absl::StatusCode::kResourceExhausted:
      return "RESOURCE_EXHAUSTED";
    case absl::StatusCode::kFailedPrecondition:
      return "FAILED_PRECONDITION";
    case absl::StatusCode::kAborted:
      return "ABORTED";
    case absl::StatusCode::kOutOfRange:
      return "OUT_OF_RANGE";
    case absl::StatusCode::kUnimplemented:
      return "UNIMPLEMENTED";
    case absl::StatusCode::kUnavailable:
      return "UNAVAILABLE";
    case absl::StatusCode::kDataLoss:
      return "DATA_LOSS";
    case absl::StatusCode::kUnauthenticated:
      return "UNAUTHENTICATED";
    default:
      return "UNKNOWN";
  }
}

// Settings of the remote driver (H5FDremote.h) that h5depot.File passes.
struct RemoteSettings {
  std::string target;
  std::string token;
  bool use_tls = false;
  std::string tls_ca_file;
  std::string tls_cert_file;
  std::string tls_key_file;
  double connect_timeout = 10;
  double call_timeout = 30;
  size_t page_size = size_t{64} << 10;
  size_t cache_size = size_t{64} << 20;
};

// The innermost message on HDF5's default error stack (the driver's own,
// where it gave one), or `fallback`.
std::string Hdf5Message(const std::string& fallback) {
  std::string message;
  H5Ewalk2(
      H5E_DEFAULT, H5E_WALK_UPWARD,
      [](unsigned, const H5E_error2_t* error, void* out) -> herr_t {
        auto* text = static_cast<std::string*>(out);
        if (text->empty() && error->desc != nullptr) *text = error->desc;
        return 0;
      },
      &message);
  H5Eclear2(H5E_DEFAULT);
  return message.empty() ? fallback : message;
}

// The status a remote driver message stands for: the driver starts its
// messages with the status code's name ("NOT_FOUND: no image ..."); HDF5's
// own failures, without one, are INVALID_ARGUMENT (not an HDF5 file...).
absl::Status DriverStatus(const std::string& message) {
  for (int value = 1; value <= 16; ++value) {
    const auto code = static_cast<absl::StatusCode>(value);
    const std::string prefix = std::string(CodeName(code)) + ": ";
    if (message.compare(0, prefix.size(), prefix) == 0) {
      return absl::Status(code, message.substr(prefix.size()));
    }
  }
  return absl::InvalidArgumentError(message);
}

// Opens (or creates) image `image_id` through the remote driver, as
// h5py.File's `mode` says ("r", "r+", "w", "w-" or "x", "a"); returns the
// file id for h5py to adopt. Under the GIL, as every HDF5 call here.
int64_t OpenRemote(const std::string& image_id, const std::string& mode,
                   const RemoteSettings& settings) {
  H5FD_remote_config_t config = H5FD_REMOTE_CONFIG_INIT;
  config.page_size = settings.page_size;
  config.cache_size = settings.cache_size;
  config.connect_timeout_ms =
      static_cast<uint32_t>(settings.connect_timeout * 1000);
  config.call_timeout_ms = static_cast<uint32_t>(settings.call_timeout * 1000);
  config.token = settings.token.empty() ? nullptr : settings.token.c_str();
  config.use_tls = settings.use_tls ? 1 : 0;
  auto path = [](const std::string& value) {
    return value.empty() ? nullptr : value.c_str();
  };
  config.tls_ca_file = path(settings.tls_ca_file);
  config.tls_cert_file = path(settings.tls_cert_file);
  config.tls_key_file = path(settings.tls_key_file);

  const hid_t fapl = H5Pcreate(H5P_FILE_ACCESS);
  if (fapl < 0 ||
      H5Pset_fapl_remote(fapl, settings.target.c_str(), &config) < 0) {
    if (fapl >= 0) H5Pclose(fapl);
    throw StatusError{absl::InvalidArgumentError(
        Hdf5Message("the remote driver refused its settings"))};
  }
  hid_t file = H5I_INVALID_HID;
  // HDF5 prints nothing: a failure becomes the exception below.
  H5E_auto2_t print = nullptr;
  void* print_data = nullptr;
  H5Eget_auto2(H5E_DEFAULT, &print, &print_data);
  H5Eset_auto2(H5E_DEFAULT, nullptr, nullptr);
  if (mode == "r" || mode == "r+") {
    file = H5Fopen(image_id.c_str(),
                   mode == "r" ? H5F_ACC_RDONLY : H5F_ACC_RDWR, fapl);
  } else if (mode == "w") {
    file = H5Fcreate(image_id.c_str(), H5F_ACC_TRUNC, H5P_DEFAULT, fapl);
  } else if (mode == "w-" || mode == "x") {
    file = H5Fcreate(image_id.c_str(), H5F_ACC_EXCL, H5P_DEFAULT, fapl);
  } else if (mode == "a") {
    file = H5Fopen(image_id.c_str(), H5F_ACC_RDWR, fapl);
    if (file < 0) {
      H5Eclear2(H5E_DEFAULT);
      file = H5Fcreate(image_id.c_str(), H5F_ACC_EXCL, H5P_DEFAULT, fapl);
    }
  }
  const std::string why =
      file < 0 ? Hdf5Message("HDF5 could not open it") : std::string();
  H5Eset_auto2(H5E_DEFAULT, print, print_data);
  H5Pclose(fapl);
  if (file < 0) throw StatusError{DriverStatus(why)};
  return static_cast<int64_t>(file);
}

// The one conversion of a failed status to a Python exception: sets the
// exception h5depot.errors makes for its code.
void SetStatusError(const absl::Status& status) {
  py::object error = py::module_::import("h5depot.errors")
                         .attr("_for_code")(CodeName(status.code()),
                                            std::string(status.message()));
  PyErr_SetObject(reinterpret_cast<PyObject*>(Py_TYPE(error.ptr())),
                  error.ptr());
}

}  // namespace
}  // namespace h5depot::python

PYBIND11_MODULE(_native, module) {
  using namespace h5depot::python;  // NOLINT: the module's own names
  module.doc() = "The h5depot C++ client, for the h5depot package.";

  py::register_exception_translator([](std::exception_ptr thrown) {
    try {
      if (thrown) std::rethrow_exception(thrown);
    } catch (const StatusError& error) {
      try {
        SetStatusError(error.status);
      } catch (py::error_already_set& unconvertible) {
        unconvertible.restore();  // h5depot.errors itself failed to load
      }
    }
  });

  py::class_<h5depot::ClientOptions>(module, "ClientOptions")
      .def(py::init<>())
      .def_property(
          "connect_timeout",
          [](const h5depot::ClientOptions& o) {
            return absl::ToDoubleSeconds(o.connect_timeout);
          },
          [](h5depot::ClientOptions& o, double seconds) {
            o.connect_timeout = absl::Seconds(seconds);
          })
      .def_property(
          "call_timeout",
          [](const h5depot::ClientOptions& o) {
            return absl::ToDoubleSeconds(o.call_timeout);
          },
          [](h5depot::ClientOptions& o, std::optional<double> seconds) {
            o.call_timeout = seconds.has_value() ? absl::Seconds(*seconds)
                                                 : absl::InfiniteDuration();
          })
      .def_readwrite("use_data_lane", &h5depot::ClientOptions::use_data_lane)
      .def_readwrite("share_memory", &h5depot::ClientOptions::share_memory)
      .def_readwrite("token", &h5depot::ClientOptions::token)
      .def_readwrite("use_tls", &h5depot::ClientOptions::use_tls)
      .def_readwrite("tls_ca_file", &h5depot::ClientOptions::tls_ca_file)
      .def_readwrite("tls_cert_file", &h5depot::ClientOptions::tls_cert_file)
      .def_readwrite("tls_key_file", &h5depot::ClientOptions::tls_key_file);

  py::class_<Image>(module, "Image", py::buffer_protocol(), R"doc(
A fetched image, in the memory it arrived in.

It exposes its bytes through the buffer protocol, read-only:
memoryview(image), numpy.frombuffer(image, numpy.uint8) and bytes(image)
(the one that copies) all work. image.info describes the generation
fetched; len(image) is its size in bytes; image.is_mapped tells whether it
is a mapping of the server's memory (same host, over a Unix socket) rather
than bytes that were sent.)doc")
      .def_property_readonly(
          "_native_info",
          [](const Image& image) { return InfoDict(image.info()); })
      .def_property_readonly(
          "is_mapped",
          [](const Image& image) { return image.buffer().is_mapped(); })
      .def("__len__", [](const Image& image) { return image.buffer().size(); })
      .def_buffer([](Image& image) {
        const h5depot::ImageBuffer& buffer = image.buffer();
        if (buffer.data() == nullptr && buffer.size() > 0) {
          throw StatusError{absl::FailedPreconditionError(
              "the image was handed to HDF5 by open()")};
        }
        return py::buffer_info(const_cast<void*>(buffer.data()), 1,
                               py::format_descriptor<uint8_t>::format(), 1,
                               {static_cast<py::ssize_t>(buffer.size())}, {1},
                               /*readonly=*/true);
      });

  py::class_<NativeClient>(module, "Client")
      .def(py::init<const std::string&, const h5depot::ClientOptions&>(),
           py::arg("target"), py::arg("options"))
      .def_property_readonly("target", &NativeClient::target)
      .def("push_bytes", &NativeClient::PushBytes)
      .def("push_path", &NativeClient::PushPath)
      .def("push_hdf5_file", &NativeClient::PushHdf5File)
      .def("fetch", &NativeClient::Fetch)
      .def("fetch_to_fd", &NativeClient::FetchToDescriptor)
      .def("stat", &NativeClient::Stat)
      .def("list", &NativeClient::List)
      .def("delete", &NativeClient::Delete)
      .def("watch", &NativeClient::Watch)
      .def("create_stream", &NativeClient::CreateStream)
      .def("append_bytes", &NativeClient::AppendBytes)
      .def("append_path", &NativeClient::AppendPath)
      .def("append_hdf5_file", &NativeClient::AppendHdf5File)
      .def("next_step", &NativeClient::Next)
      .def("ack", &NativeClient::Ack)
      .def("finish_stream", &NativeClient::FinishStream)
      .def("delete_stream", &NativeClient::DeleteStream)
      .def("stat_stream", &NativeClient::StatStream);

  py::class_<NativeWatch>(module, "Watch")
      .def_property_readonly("started_after", &NativeWatch::started_after)
      .def("next", &NativeWatch::Next, py::arg("timeout"))
      .def("cancel", &NativeWatch::Cancel);

  module.def("open_image", &OpenImage, py::arg("image"), py::arg("writable"));

  py::class_<RemoteSettings>(module, "RemoteSettings")
      .def(py::init<>())
      .def_readwrite("target", &RemoteSettings::target)
      .def_readwrite("token", &RemoteSettings::token)
      .def_readwrite("use_tls", &RemoteSettings::use_tls)
      .def_readwrite("tls_ca_file", &RemoteSettings::tls_ca_file)
      .def_readwrite("tls_cert_file", &RemoteSettings::tls_cert_file)
      .def_readwrite("tls_key_file", &RemoteSettings::tls_key_file)
      .def_readwrite("connect_timeout", &RemoteSettings::connect_timeout)
      .def_readwrite("call_timeout", &RemoteSettings::call_timeout)
      .def_readwrite("page_size", &RemoteSettings::page_size)
      .def_readwrite("cache_size", &RemoteSettings::cache_size);
  module.def("open_remote", &OpenRemote, py::arg("image_id"), py::arg("mode"),
             py::arg("settings"));
}
