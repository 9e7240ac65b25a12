// The C API's HDF5 part (h5depot/h5depot.h): pushing open files, opening
// file images with the ownership flags, fetch-and-open, getting the
// final image of a file back, and creating files in a memfd. A thin shim
// over file_image.h, hdf5_transfer.h and memory_file.h. No C++ exception
// crosses this boundary: every entry point catches everything and turns
// it into a result code plus the thread-local message.

#include <cstdlib>
#include <utility>

#include "client/src/c_api_internal.h"
#include "h5depot/file_image.h"
#include "h5depot/h5depot.h"
#include "h5depot/hdf5_transfer.h"
#include "h5depot/memory_file.h"

using h5depot::c_api::Fail;
using h5depot::c_api::FailFromException;
using h5depot::c_api::FailInvalid;
using h5depot::c_api::Succeed;

extern "C" {

int h5depot_push_file(h5depot_client* client, const char* image_id,
                      hid_t file_id, uint64_t* generation) {
  return h5depot_push_file_ex(client, image_id, file_id, nullptr, generation);
}

int h5depot_push_file_ex(h5depot_client* client, const char* image_id,
                         hid_t file_id, const h5depot_push_options* options,
                         uint64_t* generation) {
  try {
    if (client == nullptr || image_id == nullptr) {
      return FailInvalid("client and image id must not be NULL");
    }
    auto info = h5depot::PushFileImage(*client->client, image_id, file_id,
                                       h5depot::c_api::ToPushOptions(options));
    if (!info.ok()) return Fail(info.status());
    if (generation != nullptr) *generation = info->generation;
    return Succeed();
  } catch (...) {
    return FailFromException();
  }
}

namespace {

// The two appends of a file's image: the same checks, options and result.
int AppendFile(h5depot_client* client, const char* stream, hid_t file_id,
               int64_t wait_ms, uint64_t* step, bool in_step_buffer) {
  try {
    if (client == nullptr || stream == nullptr) {
      return FailInvalid("client and stream must not be NULL");
    }
    h5depot::AppendOptions options;
    if (wait_ms >= 0) options.wait_for_room = absl::Milliseconds(wait_ms);
    auto appended = in_step_buffer
                        ? h5depot::AppendFileImageInStepBuffer(
                              *client->client, stream, file_id, options)
                        : h5depot::AppendFileImage(*client->client, stream,
                                                   file_id, options);
    if (!appended.ok()) return Fail(appended.status());
    if (step != nullptr) *step = appended->step;
    return Succeed();
  } catch (...) {
    return FailFromException();
  }
}

}  // namespace

int h5depot_stream_append_file(h5depot_client* client, const char* stream,
                               hid_t file_id, int64_t wait_ms, uint64_t* step) {
  return AppendFile(client, stream, file_id, wait_ms, step,
                    /*in_step_buffer=*/false);
}

int h5depot_stream_append_file_buffered(h5depot_client* client,
                                        const char* stream, hid_t file_id,
                                        int64_t wait_ms, uint64_t* step) {
  return AppendFile(client, stream, file_id, wait_ms, step,
                    /*in_step_buffer=*/true);
}

hid_t h5depot_stream_open_next(h5depot_client* client, const char* stream,
                               const char* group, int64_t wait_ms,
                               unsigned flags, uint64_t* step) {
  try {
    if (client == nullptr || stream == nullptr || group == nullptr) {
      FailInvalid("client, stream and group must not be NULL");
      return H5I_INVALID_HID;
    }
    if (wait_ms < 0) {
      FailInvalid("wait must not be negative");
      return H5I_INVALID_HID;
    }
    // Checked before a step is taken, which then could not be opened.
    if ((flags &
         ~unsigned{H5LT_FILE_IMAGE_OPEN_RW | H5LT_FILE_IMAGE_DONT_COPY}) != 0) {
      FailInvalid(
          "a step opens with H5LT_FILE_IMAGE_OPEN_RW or without; no other "
          "flags");
      return H5I_INVALID_HID;
    }
    h5depot::NextOptions options;
    options.wait = absl::Milliseconds(wait_ms);
    absl::StatusOr<h5depot::StreamStep> taken =
        client->client->Next(stream, group, options);
    if (!taken.ok()) {
      Fail(taken.status());
      return H5I_INVALID_HID;
    }
    absl::StatusOr<hid_t> file = h5depot::OpenFileImage(
        std::move(taken->image.buffer), flags | H5LT_FILE_IMAGE_DONT_COPY);
    if (!file.ok()) {
      Fail(file.status());
      return H5I_INVALID_HID;
    }
    if (step != nullptr) *step = taken->step;
    Succeed();
    return *file;
  } catch (...) {
    FailFromException();
    return H5I_INVALID_HID;
  }
}

hid_t h5depot_open_image(void* buf, size_t len, unsigned flags) {
  try {
    absl::StatusOr<hid_t> file = h5depot::OpenFileImage(buf, len, flags);
    if (!file.ok()) {
      Fail(file.status());
      return H5I_INVALID_HID;
    }
    Succeed();
    return *file;
  } catch (...) {
    // Only std::bad_alloc gets here. A handed-over buffer that the image
    // share had taken was freed as the share unwound; one taken earlier
    // is leaked rather than risk freeing it twice.
    FailFromException();
    return H5I_INVALID_HID;
  }
}

hid_t h5depot_open(h5depot_client* client, const char* image_id,
                   unsigned flags) {
  try {
    if (client == nullptr || image_id == nullptr) {
      FailInvalid("client and image id must not be NULL");
      return H5I_INVALID_HID;
    }
    auto fetched = h5depot::FetchAndOpen(*client->client, image_id, flags);
    if (!fetched.ok()) {
      Fail(fetched.status());
      return H5I_INVALID_HID;
    }
    Succeed();
    return fetched->file;
  } catch (...) {
    FailFromException();
    return H5I_INVALID_HID;
  }
}

int h5depot_close_image(hid_t file_id, void** buf, size_t* len) {
  try {
    if (buf != nullptr) *buf = nullptr;
    if (len != nullptr) *len = 0;
    if (buf == nullptr || len == nullptr) {
      return FailInvalid("buf and len must not be NULL");
    }
    absl::StatusOr<h5depot::ImageBuffer> image =
        h5depot::CloseFileImage(file_id);
    if (!image.ok()) return Fail(image.status());
    *len = image->size();
    *buf = image->Release();
    return Succeed();
  } catch (...) {
    return FailFromException();
  }
}

hid_t h5depot_create_memory_file(hid_t fcpl, hid_t fapl) {
  try {
    absl::StatusOr<hid_t> file = h5depot::CreateMemoryFile(fcpl, fapl);
    if (!file.ok()) {
      Fail(file.status());
      return H5I_INVALID_HID;
    }
    Succeed();
    return *file;
  } catch (...) {
    FailFromException();
    return H5I_INVALID_HID;
  }
}

}  // extern "C"
