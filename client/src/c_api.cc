// The C API (h5depot/h5depot.h) over h5depot::Client. No C++ exception
// crosses this boundary: every entry point catches everything and turns it
// into a result code plus a thread-local message.

#include <exception>
#include <memory>
#include <string>
#include <utility>

#include "client/src/c_api_internal.h"
#include "h5depot/client.h"
#include "h5depot/h5depot.h"
#include "h5depot/hdf5_transfer.h"

namespace h5depot::c_api {
namespace {

thread_local std::string last_error_message;
thread_local int last_error_code = H5DEPOT_OK;

}  // namespace

int Fail(const absl::Status& status) {
  last_error_code = static_cast<int>(status.code());
  last_error_message = std::string(status.message());
  return last_error_code;
}

int Succeed() {
  last_error_code = H5DEPOT_OK;
  last_error_message.clear();
  return H5DEPOT_OK;
}

int FailInvalid(const char* message) {
  return Fail(absl::InvalidArgumentError(message));
}

int FailFromException() {
  try {
    throw;
  } catch (const std::bad_alloc&) {
    return Fail(absl::ResourceExhaustedError("out of memory"));
  } catch (const std::exception& e) {
    return Fail(absl::InternalError(e.what()));
  } catch (...) {
    return Fail(absl::InternalError("unknown error"));
  }
}

ImagePushOptions ToPushOptions(const h5depot_push_options* options) {
  ImagePushOptions push_options;
  if (options != nullptr) {
    if (options->use_if_generation_match) {
      push_options.if_generation_match = options->if_generation_match;
    }
    push_options.ttl = absl::Milliseconds(options->ttl_ms);
    push_options.validate = options->validate != 0;
  }
  return push_options;
}

h5depot_event_kind ToCEventKind(ImageEvent::Kind kind) {
  switch (kind) {
    case ImageEvent::Kind::kPublished:
      return H5DEPOT_EVENT_PUBLISHED;
    case ImageEvent::Kind::kReplaced:
      return H5DEPOT_EVENT_REPLACED;
    case ImageEvent::Kind::kDeleted:
      return H5DEPOT_EVENT_DELETED;
    case ImageEvent::Kind::kExpired:
      return H5DEPOT_EVENT_EXPIRED;
    case ImageEvent::Kind::kEvicted:
      return H5DEPOT_EVENT_EVICTED;
    case ImageEvent::Kind::kLost:
      return H5DEPOT_EVENT_LOST;
  }
  return H5DEPOT_EVENT_LOST;
}

}  // namespace h5depot::c_api

using h5depot::c_api::Fail;
using h5depot::c_api::FailFromException;
using h5depot::c_api::FailInvalid;
using h5depot::c_api::Succeed;

extern "C" {

const char* h5depot_errmsg(void) {
  return h5depot::c_api::last_error_message.c_str();
}

int h5depot_errcode(void) { return h5depot::c_api::last_error_code; }

h5depot_client* h5depot_connect(const char* target) {
  return h5depot_connect_ex(target, nullptr);
}

h5depot_client* h5depot_connect_ex(const char* target,
                                   const h5depot_connect_options* options) {
  try {
    if (target == nullptr) {
      FailInvalid("no server given: expected host:port or unix:/path");
      return nullptr;
    }
    // Zero keeps ClientOptions' default, the one place defaults are set.
    h5depot::ClientOptions client_options;
    if (options != nullptr) {
      if (options->connect_timeout_ms < 0 || options->call_timeout_ms < 0) {
        FailInvalid(
            "connect_timeout_ms and call_timeout_ms must not be negative (0: "
            "the default)");
        return nullptr;
      }
      if (options->connect_timeout_ms > 0) {
        client_options.connect_timeout =
            absl::Milliseconds(options->connect_timeout_ms);
      }
      if (options->call_timeout_ms > 0) {
        client_options.call_timeout =
            absl::Milliseconds(options->call_timeout_ms);
      }
      client_options.use_data_lane = options->disable_data_lane == 0;
      if (options->token != nullptr) client_options.token = options->token;
      client_options.use_tls = options->use_tls != 0;
      if (options->tls_ca_file != nullptr) {
        client_options.tls_ca_file = options->tls_ca_file;
      }
      if (options->tls_cert_file != nullptr) {
        client_options.tls_cert_file = options->tls_cert_file;
      }
      if (options->tls_key_file != nullptr) {
        client_options.tls_key_file = options->tls_key_file;
      }
    }
    auto client = h5depot::Client::Connect(target, client_options);
    if (!client.ok()) {
      Fail(client.status());
      return nullptr;
    }
    Succeed();
    return new h5depot_client{*std::move(client)};
  } catch (...) {
    FailFromException();
    return nullptr;
  }
}

void h5depot_disconnect(h5depot_client* client) {
  try {
    delete client;
  } catch (...) {
    FailFromException();
  }
}

int h5depot_push_buffer(h5depot_client* client, const char* image_id,
                        const void* buf, size_t len, uint64_t* generation) {
  return h5depot_push_buffer_ex(client, image_id, buf, len, nullptr,
                                generation);
}

int h5depot_push_buffer_ex(h5depot_client* client, const char* image_id,
                           const void* buf, size_t len,
                           const h5depot_push_options* options,
                           uint64_t* generation) {
  try {
    if (client == nullptr || image_id == nullptr) {
      return FailInvalid("client and image id must not be NULL");
    }
    if (buf == nullptr && len > 0) {
      return FailInvalid("buffer is NULL");
    }
    auto info = h5depot::PushImage(*client->client, image_id, buf, len,
                                   h5depot::c_api::ToPushOptions(options));
    if (!info.ok()) return Fail(info.status());
    if (generation != nullptr) *generation = info->generation;
    return Succeed();
  } catch (...) {
    return FailFromException();
  }
}

namespace {

// h5depot_fetch and h5depot_fetch_newer: `options` says what will do.
int FetchInto(h5depot_client* client, const char* image_id,
              const h5depot::FetchOptions& options, void** buf, size_t* len,
              uint64_t* generation) {
  if (buf != nullptr) *buf = nullptr;
  if (len != nullptr) *len = 0;
  if (client == nullptr || image_id == nullptr || buf == nullptr ||
      len == nullptr) {
    return FailInvalid("client, image id, buf and len must not be NULL");
  }
  auto fetched = client->client->Fetch(image_id, options);
  if (!fetched.ok()) return Fail(fetched.status());
  const size_t size = fetched->buffer.size();
  void* data = fetched->buffer.Release();
  if (data == nullptr && size > 0) {
    return Fail(absl::ResourceExhaustedError(
        absl::StrCat("fetch '", image_id, "': cannot allocate ", size,
                     " bytes to copy the image into")));
  }
  *len = size;
  *buf = data;
  if (generation != nullptr) *generation = fetched->info.generation;
  return Succeed();
}

// The C form of `info`.
h5depot_image_info ToCInfo(const h5depot::ImageInfo& info) {
  h5depot_image_info c_info;
  c_info.size = info.size;
  c_info.generation = info.generation;
  c_info.checksum = info.checksum;
  c_info.created_unix_micros = absl::ToUnixMicros(info.created);
  c_info.expires_unix_micros = info.expires == absl::InfiniteFuture()
                                   ? 0
                                   : absl::ToUnixMicros(info.expires);
  return c_info;
}

}  // namespace

int h5depot_stream_append(h5depot_client* client, const char* stream,
                          const void* buf, size_t len, int64_t wait_ms,
                          uint64_t* step) {
  try {
    if (client == nullptr || stream == nullptr) {
      return FailInvalid("client and stream must not be NULL");
    }
    if (buf == nullptr && len > 0) return FailInvalid("buffer is NULL");
    h5depot::AppendOptions options;
    if (wait_ms >= 0) options.wait_for_room = absl::Milliseconds(wait_ms);
    auto appended = client->client->Append(stream, buf, len, options);
    if (!appended.ok()) return Fail(appended.status());
    if (step != nullptr) *step = appended->step;
    return Succeed();
  } catch (...) {
    return FailFromException();
  }
}

int h5depot_stream_begin_step(h5depot_client* client, const char* stream,
                              size_t len, int64_t wait_ms,
                              h5depot_step_buffer** out) {
  try {
    if (out != nullptr) *out = nullptr;
    if (client == nullptr || stream == nullptr || out == nullptr) {
      return FailInvalid("client, stream and out must not be NULL");
    }
    h5depot::AppendOptions options;
    if (wait_ms >= 0) options.wait_for_room = absl::Milliseconds(wait_ms);
    auto lent = client->client->BeginStep(stream, len, options);
    if (!lent.ok()) return Fail(lent.status());
    *out = new h5depot_step_buffer{*std::move(lent)};
    return Succeed();
  } catch (...) {
    return FailFromException();
  }
}

void* h5depot_step_buffer_data(h5depot_step_buffer* buffer) {
  return buffer == nullptr ? nullptr : buffer->buffer.data();
}

size_t h5depot_step_buffer_size(const h5depot_step_buffer* buffer) {
  return buffer == nullptr ? 0 : buffer->buffer.size();
}

int h5depot_stream_commit_step(h5depot_client* client,
                               h5depot_step_buffer* buffer, int64_t wait_ms,
                               uint64_t* step) {
  std::unique_ptr<h5depot_step_buffer> owned(buffer);
  try {
    if (client == nullptr || buffer == nullptr) {
      return FailInvalid("client and buffer must not be NULL");
    }
    h5depot::AppendOptions options;
    if (wait_ms >= 0) options.wait_for_room = absl::Milliseconds(wait_ms);
    auto appended =
        client->client->CommitStep(std::move(owned->buffer), options);
    if (!appended.ok()) return Fail(appended.status());
    if (step != nullptr) *step = appended->step;
    return Succeed();
  } catch (...) {
    return FailFromException();
  }
}

void h5depot_step_buffer_free(h5depot_step_buffer* buffer) { delete buffer; }

int h5depot_stream_next(h5depot_client* client, const char* stream,
                        const char* group, int64_t wait_ms, void** buf,
                        size_t* len, uint64_t* step) {
  try {
    if (buf != nullptr) *buf = nullptr;
    if (len != nullptr) *len = 0;
    if (client == nullptr || stream == nullptr || group == nullptr ||
        buf == nullptr || len == nullptr) {
      return FailInvalid("client, stream, group, buf and len must not be NULL");
    }
    if (wait_ms < 0) return FailInvalid("wait must not be negative");
    h5depot::NextOptions options;
    options.wait = absl::Milliseconds(wait_ms);
    auto taken = client->client->Next(stream, group, options);
    if (!taken.ok()) return Fail(taken.status());
    const size_t size = taken->image.buffer.size();
    void* data = taken->image.buffer.Release();
    if (data == nullptr && size > 0) {
      return Fail(absl::ResourceExhaustedError(
          absl::StrCat("next step of '", stream, "': cannot allocate ", size,
                       " bytes to copy the step into")));
    }
    *buf = data;
    *len = size;
    if (step != nullptr) *step = taken->step;
    return Succeed();
  } catch (...) {
    return FailFromException();
  }
}

int h5depot_stream_ack(h5depot_client* client, const char* stream,
                       const char* group, uint64_t step) {
  try {
    if (client == nullptr || stream == nullptr || group == nullptr) {
      return FailInvalid("client, stream and group must not be NULL");
    }
    absl::Status acked = client->client->Ack(stream, group, step);
    return acked.ok() ? Succeed() : Fail(acked);
  } catch (...) {
    return FailFromException();
  }
}

int h5depot_stream_finish(h5depot_client* client, const char* stream) {
  try {
    if (client == nullptr || stream == nullptr) {
      return FailInvalid("client and stream must not be NULL");
    }
    auto finished = client->client->FinishStream(stream);
    return finished.ok() ? Succeed() : Fail(finished.status());
  } catch (...) {
    return FailFromException();
  }
}

int h5depot_stream_delete(h5depot_client* client, const char* stream,
                          const char* group) {
  try {
    if (client == nullptr || stream == nullptr) {
      return FailInvalid("client and stream must not be NULL");
    }
    absl::Status deleted =
        group == nullptr ? client->client->DeleteStream(stream)
                         : client->client->DeleteStreamGroup(stream, group);
    return deleted.ok() ? Succeed() : Fail(deleted);
  } catch (...) {
    return FailFromException();
  }
}

int h5depot_fetch(h5depot_client* client, const char* image_id, void** buf,
                  size_t* len, uint64_t* generation) {
  try {
    return FetchInto(client, image_id, h5depot::FetchOptions(), buf, len,
                     generation);
  } catch (...) {
    return FailFromException();
  }
}

int h5depot_fetch_newer(h5depot_client* client, const char* image_id,
                        uint64_t newer_than, int64_t timeout_ms, void** buf,
                        size_t* len, uint64_t* generation) {
  try {
    if (timeout_ms < 0) return FailInvalid("timeout must not be negative");
    h5depot::FetchOptions options;
    options.wait = absl::Milliseconds(timeout_ms);
    options.newer_than = newer_than;
    return FetchInto(client, image_id, options, buf, len, generation);
  } catch (...) {
    return FailFromException();
  }
}

int h5depot_fetch_to_fd(h5depot_client* client, const char* image_id, int fd,
                        h5depot_image_info* info) {
  try {
    if (client == nullptr || image_id == nullptr) {
      return FailInvalid("client and image id must not be NULL");
    }
    if (fd < 0) return FailInvalid("the descriptor must not be negative");
    absl::StatusOr<h5depot::ImageInfo> fetched =
        client->client->FetchToDescriptor(image_id, fd);
    if (!fetched.ok()) return Fail(fetched.status());
    if (info != nullptr) *info = ToCInfo(*fetched);
    return Succeed();
  } catch (...) {
    return FailFromException();
  }
}

int h5depot_fetch_view(h5depot_client* client, const char* image_id,
                       h5depot_view** view, void** data, size_t* len,
                       uint64_t* generation) {
  try {
    if (view != nullptr) *view = nullptr;
    if (data != nullptr) *data = nullptr;
    if (len != nullptr) *len = 0;
    if (client == nullptr || image_id == nullptr || view == nullptr ||
        data == nullptr || len == nullptr) {
      return FailInvalid(
          "client, image id, view, data and len must not be NULL");
    }
    auto fetched = client->client->Fetch(image_id);
    if (!fetched.ok()) return Fail(fetched.status());
    auto made = std::make_unique<h5depot_view>();
    made->buffer = std::move(fetched->buffer);
    *data = made->buffer.data();
    *len = made->buffer.size();
    *view = made.release();
    if (generation != nullptr) *generation = fetched->info.generation;
    return Succeed();
  } catch (...) {
    return FailFromException();
  }
}

void h5depot_view_free(h5depot_view* view) { delete view; }

int h5depot_wait(h5depot_client* client, const char* image_id,
                 int64_t timeout_ms) {
  try {
    if (client == nullptr || image_id == nullptr) {
      return FailInvalid("client and image id must not be NULL");
    }
    if (timeout_ms < 0) return FailInvalid("timeout must not be negative");
    // A zero timeout still asks once; Stat with no wait does exactly that.
    auto info = client->client->Stat(image_id, absl::Milliseconds(timeout_ms));
    if (!info.ok()) {
      if (timeout_ms == 0 &&
          info.status().code() == absl::StatusCode::kNotFound) {
        return Fail(absl::DeadlineExceededError(std::string("image '") +
                                                image_id + "' does not exist"));
      }
      return Fail(info.status());
    }
    return Succeed();
  } catch (...) {
    return FailFromException();
  }
}

int h5depot_wait_newer(h5depot_client* client, const char* image_id,
                       uint64_t newer_than, int64_t timeout_ms,
                       h5depot_image_info* info) {
  try {
    if (client == nullptr || image_id == nullptr) {
      return FailInvalid("client and image id must not be NULL");
    }
    if (timeout_ms < 0) return FailInvalid("timeout must not be negative");
    auto stat = client->client->Stat(image_id, absl::Milliseconds(timeout_ms),
                                     newer_than);
    if (!stat.ok()) return Fail(stat.status());
    if (info != nullptr) *info = ToCInfo(*stat);
    return Succeed();
  } catch (...) {
    return FailFromException();
  }
}

int h5depot_stat(h5depot_client* client, const char* image_id,
                 h5depot_image_info* info) {
  try {
    if (client == nullptr || image_id == nullptr || info == nullptr) {
      return FailInvalid("client, image id and info must not be NULL");
    }
    auto stat = client->client->Stat(image_id);
    if (!stat.ok()) return Fail(stat.status());
    *info = ToCInfo(*stat);
    return Succeed();
  } catch (...) {
    return FailFromException();
  }
}

int h5depot_watch_start(h5depot_client* client, const char* prefix,
                        const uint64_t* after, h5depot_watch** watch) {
  try {
    if (watch != nullptr) *watch = nullptr;
    if (client == nullptr || watch == nullptr) {
      return FailInvalid("client and watch must not be NULL");
    }
    h5depot::WatchOptions options;
    if (prefix != nullptr) options.prefix = prefix;
    if (after != nullptr) options.after = *after;
    auto started = client->client->Watch(options);
    if (!started.ok()) return Fail(started.status());
    auto made = std::make_unique<h5depot_watch>();
    made->watch = *std::move(started);
    *watch = made.release();
    return Succeed();
  } catch (...) {
    return FailFromException();
  }
}

int h5depot_watch_next(h5depot_watch* watch, int64_t timeout_ms,
                       h5depot_event* event) {
  try {
    if (watch == nullptr || event == nullptr) {
      return FailInvalid("watch and event must not be NULL");
    }
    const absl::Time deadline =
        timeout_ms < 0 ? absl::InfiniteFuture()
                       : absl::Now() + absl::Milliseconds(timeout_ms);
    absl::StatusOr<h5depot::ImageEvent> next = watch->watch->Next(deadline);
    if (!next.ok()) return Fail(next.status());
    watch->image_id = std::move(next->image_id);
    *event = h5depot_event{};
    event->kind = h5depot::c_api::ToCEventKind(next->kind);
    event->sequence = next->sequence;
    event->image_id = watch->image_id.c_str();
    event->generation = next->generation;
    event->size = next->size;
    event->replaced_generation = next->replaced_generation;
    event->time_unix_micros = absl::ToUnixMicros(next->time);
    event->first_lost_sequence = next->first_lost_sequence;
    return Succeed();
  } catch (...) {
    return FailFromException();
  }
}

void h5depot_watch_cancel(h5depot_watch* watch) {
  try {
    if (watch != nullptr) watch->watch->Cancel();
  } catch (...) {
    FailFromException();
  }
}

void h5depot_watch_close(h5depot_watch* watch) { delete watch; }

int h5depot_delete(h5depot_client* client, const char* image_id) {
  try {
    if (client == nullptr || image_id == nullptr) {
      return FailInvalid("client and image id must not be NULL");
    }
    absl::Status status = client->client->Delete(image_id);
    return status.ok() ? Succeed() : Fail(status);
  } catch (...) {
    return FailFromException();
  }
}

}  // extern "C"
