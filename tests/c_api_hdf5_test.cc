// The C API's HDF5 calls (h5depot.h) against a real DepotServer: result
// codes, messages and buffer ownership as the header promises them. The
// plain C program tests/c/c_api_client.c covers the same calls through the
// installed library.
#include <unistd.h>

#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "h5depot/h5depot.h"
#include "h5depot/testing/hdf5_datasets.h"
#include "h5depot/testing/hdf5_images.h"
#include "h5depot/testing/in_process_depot.h"

namespace {

using ::h5depot::testing::QuietHdf5Errors;

using ::testing::HasSubstr;

constexpr unsigned kRw = H5LT_FILE_IMAGE_OPEN_RW;
constexpr unsigned kDontCopy = H5LT_FILE_IMAGE_DONT_COPY;
constexpr unsigned kDontRelease = H5LT_FILE_IMAGE_DONT_RELEASE;

std::string CoreName() {
  static int counter = 0;
  return absl::StrCat("c-api-core-", counter++);
}

std::vector<int> Values(int seed) {
  std::vector<int> values(64);
  for (size_t i = 0; i < values.size(); ++i) {
    values[i] = seed * 100 + static_cast<int>(i);
  }
  return values;
}

bool WriteValues(hid_t file, const char* name, int seed) {
  const std::vector<int> values = Values(seed);
  const hsize_t dims[1] = {values.size()};
  hid_t space = H5Screate_simple(1, dims, nullptr);
  hid_t dataset = H5Dcreate2(file, name, H5T_NATIVE_INT, space, H5P_DEFAULT,
                             H5P_DEFAULT, H5P_DEFAULT);
  H5Sclose(space);
  if (dataset < 0) return false;
  const herr_t written = H5Dwrite(dataset, H5T_NATIVE_INT, H5S_ALL, H5S_ALL,
                                  H5P_DEFAULT, values.data());
  H5Dclose(dataset);
  return written >= 0;
}

std::vector<int> ReadValues(hid_t file, const char* name = "values") {
  std::vector<int> values(64);
  hid_t dataset = H5Dopen2(file, name, H5P_DEFAULT);
  if (dataset < 0) return {};
  const herr_t read = H5Dread(dataset, H5T_NATIVE_INT, H5S_ALL, H5S_ALL,
                              H5P_DEFAULT, values.data());
  H5Dclose(dataset);
  return read < 0 ? std::vector<int>() : values;
}

// A core file holding "values" = Values(seed).
hid_t CreateFile(int seed) {
  hid_t fapl = H5Pcreate(H5P_FILE_ACCESS);
  H5Pset_fapl_core(fapl, 1 << 16, 0);
  hid_t file = H5Fcreate(CoreName().c_str(), H5F_ACC_TRUNC, H5P_DEFAULT, fapl);
  H5Pclose(fapl);
  EXPECT_TRUE(WriteValues(file, "values", seed));
  return file;
}

// A malloc'ed image of CreateFile(seed).
void* MakeImage(int seed, size_t* len) {
  hid_t file = CreateFile(seed);
  H5Fflush(file, H5F_SCOPE_GLOBAL);
  const ssize_t size = H5Fget_file_image(file, nullptr, 0);
  void* image = std::malloc(static_cast<size_t>(size));
  H5Fget_file_image(file, image, static_cast<size_t>(size));
  H5Fclose(file);
  *len = static_cast<size_t>(size);
  return image;
}

class CApiHdf5Test : public ::testing::Test {
 protected:
  void SetUp() override {
    auto depot = h5depot::testing::InProcessDepot::Start();
    ASSERT_TRUE(depot.ok()) << depot.status();
    depot_ = *std::move(depot);
    client_ = h5depot_connect(depot_->target().c_str());
    ASSERT_NE(client_, nullptr) << h5depot_errmsg();
  }

  void TearDown() override {
    h5depot_disconnect(client_);
    depot_.reset();
    EXPECT_EQ(H5Fget_obj_count(H5F_OBJ_ALL, H5F_OBJ_ALL), 0)
        << "HDF5 objects were left open";
  }

  std::unique_ptr<h5depot::testing::InProcessDepot> depot_;
  h5depot_client* client_ = nullptr;
};

TEST_F(CApiHdf5Test, OpenImageTakesOwnershipAsTheFlagsSay) {
  size_t len = 0;
  // Copied: the caller frees its buffer at once.
  void* image = MakeImage(1, &len);
  hid_t file = h5depot_open_image(image, len, 0);
  std::free(image);
  ASSERT_GE(file, 0) << h5depot_errmsg();
  EXPECT_EQ(ReadValues(file), Values(1));
  EXPECT_GE(H5Fclose(file), 0);

  // DONT_COPY: HDF5 frees it when the file closes.
  file = h5depot_open_image(MakeImage(2, &len), len, kDontCopy);
  ASSERT_GE(file, 0) << h5depot_errmsg();
  EXPECT_EQ(ReadValues(file), Values(2));
  EXPECT_GE(H5Fclose(file), 0);

  // DONT_COPY | DONT_RELEASE: the caller frees it after the close, and
  // with OPEN_RW the writes land in it.
  image = MakeImage(3, &len);
  std::vector<unsigned char> slack(len + (1 << 16));
  std::memcpy(slack.data(), image, len);
  std::free(image);
  file = h5depot_open_image(slack.data(), slack.size(),
                            kRw | kDontCopy | kDontRelease);
  ASSERT_GE(file, 0) << h5depot_errmsg();
  ASSERT_TRUE(WriteValues(file, "more", 4));
  EXPECT_GE(H5Fclose(file), 0);
  file = h5depot_open_image(slack.data(), slack.size(), 0);
  ASSERT_GE(file, 0) << h5depot_errmsg();
  EXPECT_EQ(ReadValues(file, "more"), Values(4));
  EXPECT_GE(H5Fclose(file), 0);
}

TEST_F(CApiHdf5Test, OpenImageRefusesBadInputWithAMessage) {
  EXPECT_LT(h5depot_open_image(nullptr, 100, 0), 0);
  EXPECT_EQ(h5depot_errcode(), H5DEPOT_INVALID_ARGUMENT);
  EXPECT_THAT(h5depot_errmsg(), HasSubstr("NULL"));

  // A handed-over buffer is freed even when the call fails (LeakSanitizer
  // would report it otherwise; ASan a double free if the caller had to).
  EXPECT_LT(h5depot_open_image(std::malloc(16), 0, kDontCopy), 0);
  EXPECT_EQ(h5depot_errcode(), H5DEPOT_INVALID_ARGUMENT);
  void* garbage = std::calloc(4096, 1);
  EXPECT_LT(h5depot_open_image(garbage, 4096, kDontCopy), 0);
  EXPECT_THAT(h5depot_errmsg(), HasSubstr("not an HDF5 file image"));

  size_t len = 0;
  void* image = MakeImage(1, &len);
  EXPECT_LT(h5depot_open_image(image, len, kDontRelease), 0);
  EXPECT_THAT(h5depot_errmsg(), HasSubstr("only valid together"));
  EXPECT_LT(h5depot_open_image(image, len, 0x40), 0);
  EXPECT_THAT(h5depot_errmsg(), HasSubstr("unknown file image flags"));
  {
    QuietHdf5Errors quiet;
    EXPECT_LT(h5depot_open_image(image, len / 2, 0), 0);
  }
  EXPECT_THAT(h5depot_errmsg(), HasSubstr("cannot open file image"));
  // A success clears the last failure.
  hid_t file = h5depot_open_image(image, len, 0);
  EXPECT_GE(file, 0);
  EXPECT_EQ(h5depot_errcode(), H5DEPOT_OK);
  EXPECT_STREQ(h5depot_errmsg(), "");
  H5Fclose(file);
  std::free(image);
}

TEST_F(CApiHdf5Test, PushFileThenOpenReadsTheFileBack) {
  hid_t file = CreateFile(5);
  uint64_t generation = 0;
  ASSERT_EQ(h5depot_push_file(client_, "c/file", file, &generation), H5DEPOT_OK)
      << h5depot_errmsg();
  EXPECT_GT(generation, 0u);
  H5Fclose(file);

  for (unsigned flags : {0u, kDontCopy, kRw, kRw | kDontCopy}) {
    hid_t opened = h5depot_open(client_, "c/file", flags);
    ASSERT_GE(opened, 0) << h5depot_errmsg();
    EXPECT_EQ(ReadValues(opened), Values(5));
    EXPECT_GE(H5Fclose(opened), 0);
  }
}

TEST_F(CApiHdf5Test, FetchNewerAndWaitNewerTakeOnlyALaterGeneration) {
  const std::string image = ::h5depot::testing::MakeHdf5Image(4096, 5);
  uint64_t first = 0;
  ASSERT_EQ(h5depot_push_buffer(client_, "c/newer", image.data(), image.size(),
                                &first),
            H5DEPOT_OK)
      << h5depot_errmsg();
  void* buf = nullptr;
  size_t len = 0;
  uint64_t generation = 0;
  EXPECT_EQ(h5depot_fetch_newer(client_, "c/newer", first, 0, &buf, &len,
                                &generation),
            H5DEPOT_FAILED_PRECONDITION);
  EXPECT_EQ(buf, nullptr);
  EXPECT_EQ(h5depot_wait_newer(client_, "c/newer", first, 50, nullptr),
            H5DEPOT_DEADLINE_EXCEEDED);
  EXPECT_EQ(h5depot_fetch_newer(client_, "c/newer", first, -1, &buf, &len,
                                &generation),
            H5DEPOT_INVALID_ARGUMENT);

  uint64_t second = 0;
  ASSERT_EQ(h5depot_push_buffer(client_, "c/newer", image.data(), image.size(),
                                &second),
            H5DEPOT_OK);
  h5depot_image_info info{};
  ASSERT_EQ(h5depot_wait_newer(client_, "c/newer", first, 0, &info), H5DEPOT_OK)
      << h5depot_errmsg();
  EXPECT_EQ(info.generation, second);
  ASSERT_EQ(h5depot_fetch_newer(client_, "c/newer", first, 1000, &buf, &len,
                                &generation),
            H5DEPOT_OK)
      << h5depot_errmsg();
  EXPECT_EQ(generation, second);
  EXPECT_EQ(std::string(static_cast<const char*>(buf), len), image);
  free(buf);
}

TEST_F(CApiHdf5Test, OpenAndPushFileRefuseBadArguments) {
  EXPECT_LT(h5depot_open(client_, "c/missing", 0), 0);
  EXPECT_EQ(h5depot_errcode(), H5DEPOT_NOT_FOUND);
  EXPECT_THAT(h5depot_errmsg(), HasSubstr("c/missing"));
  EXPECT_LT(h5depot_open(client_, "c/missing", kDontCopy | kDontRelease), 0);
  EXPECT_EQ(h5depot_errcode(), H5DEPOT_INVALID_ARGUMENT);
  EXPECT_THAT(h5depot_errmsg(), HasSubstr("DONT_RELEASE"));
  EXPECT_LT(h5depot_open(nullptr, "x", 0), 0);
  EXPECT_EQ(h5depot_errcode(), H5DEPOT_INVALID_ARGUMENT);
  EXPECT_LT(h5depot_open(client_, nullptr, 0), 0);
  EXPECT_EQ(h5depot_errcode(), H5DEPOT_INVALID_ARGUMENT);

  uint64_t generation = 7;
  EXPECT_EQ(h5depot_push_file(client_, "c/x", H5I_INVALID_HID, &generation),
            H5DEPOT_INVALID_ARGUMENT);
  EXPECT_EQ(generation, 7u);
  EXPECT_THAT(h5depot_errmsg(), HasSubstr("not an open file"));
  EXPECT_EQ(h5depot_push_file(nullptr, "c/x", H5I_INVALID_HID, nullptr),
            H5DEPOT_INVALID_ARGUMENT);
  hid_t file = CreateFile(1);
  EXPECT_EQ(h5depot_push_file(client_, "bad id", file, nullptr),
            H5DEPOT_INVALID_ARGUMENT);
  H5Fclose(file);
}

TEST_F(CApiHdf5Test, CloseImageHandsBackTheFinalBuffer) {
  hid_t file = CreateFile(1);
  ASSERT_EQ(h5depot_push_file(client_, "c/rw", file, nullptr), H5DEPOT_OK);
  H5Fclose(file);

  hid_t opened = h5depot_open(client_, "c/rw", kRw);
  ASSERT_GE(opened, 0) << h5depot_errmsg();
  ASSERT_TRUE(WriteValues(opened, "more", 2));
  hid_t dataset = H5Dopen2(opened, "more", H5P_DEFAULT);
  void* buf = reinterpret_cast<void*>(1);
  size_t len = 1;
  // An object still open: the file stays open, the call may be retried.
  EXPECT_EQ(h5depot_close_image(opened, &buf, &len),
            H5DEPOT_FAILED_PRECONDITION);
  EXPECT_EQ(buf, nullptr);
  EXPECT_EQ(len, 0u);
  EXPECT_THAT(h5depot_errmsg(), HasSubstr("close them first"));
  EXPECT_GT(H5Iis_valid(opened), 0);
  H5Dclose(dataset);
  ASSERT_EQ(h5depot_close_image(opened, &buf, &len), H5DEPOT_OK)
      << h5depot_errmsg();
  ASSERT_NE(buf, nullptr);

  hid_t reopened = h5depot_open_image(buf, len, kDontCopy);
  ASSERT_GE(reopened, 0) << h5depot_errmsg();
  EXPECT_EQ(ReadValues(reopened, "more"), Values(2));
  H5Fclose(reopened);
}

TEST_F(CApiHdf5Test, CloseImageRefusesFilesItCannotKeep) {
  void* buf = nullptr;
  size_t len = 0;
  hid_t file = CreateFile(1);  // a core file, not an h5depot file image
  EXPECT_EQ(h5depot_close_image(file, &buf, &len), H5DEPOT_INVALID_ARGUMENT);
  EXPECT_GT(H5Iis_valid(file), 0) << "the file must stay open";
  H5Fclose(file);
  EXPECT_EQ(h5depot_close_image(H5I_INVALID_HID, &buf, &len),
            H5DEPOT_INVALID_ARGUMENT);

  void* image = MakeImage(1, &len);
  file = h5depot_open_image(image, len, kDontCopy | kDontRelease);
  ASSERT_GE(file, 0);
  EXPECT_EQ(h5depot_close_image(file, &buf, &len), H5DEPOT_FAILED_PRECONDITION);
  EXPECT_THAT(h5depot_errmsg(), HasSubstr("H5Fclose"));
  EXPECT_EQ(h5depot_close_image(file, nullptr, &len), H5DEPOT_INVALID_ARGUMENT);
  EXPECT_GE(H5Fclose(file), 0);
  std::free(image);
}

TEST_F(CApiHdf5Test, TheRoundTripFailsCleanlyOnAConcurrentChange) {
  size_t len = 0;
  void* image = MakeImage(1, &len);
  ASSERT_EQ(h5depot_push_buffer(client_, "c/rt", image, len, nullptr),
            H5DEPOT_OK);
  std::free(image);

  void* buf = nullptr;
  uint64_t fetched_generation = 0;
  ASSERT_EQ(h5depot_fetch(client_, "c/rt", &buf, &len, &fetched_generation),
            H5DEPOT_OK);
  hid_t file = h5depot_open_image(buf, len, kRw | kDontCopy);
  ASSERT_GE(file, 0) << h5depot_errmsg();
  ASSERT_TRUE(WriteValues(file, "mine", 2));
  ASSERT_EQ(h5depot_close_image(file, &buf, &len), H5DEPOT_OK);

  // Somebody else pushes first.
  hid_t theirs = CreateFile(3);
  uint64_t their_generation = 0;
  ASSERT_EQ(h5depot_push_file(client_, "c/rt", theirs, &their_generation),
            H5DEPOT_OK);
  H5Fclose(theirs);

  h5depot_push_options options;
  std::memset(&options, 0, sizeof options);
  options.use_if_generation_match = 1;
  options.if_generation_match = fetched_generation;
  uint64_t generation = 0;
  EXPECT_EQ(
      h5depot_push_buffer_ex(client_, "c/rt", buf, len, &options, &generation),
      H5DEPOT_ABORTED);
  h5depot_image_info info;
  ASSERT_EQ(h5depot_stat(client_, "c/rt", &info), H5DEPOT_OK);
  EXPECT_EQ(info.generation, their_generation);

  // Against their generation it goes through.
  options.if_generation_match = their_generation;
  EXPECT_EQ(
      h5depot_push_buffer_ex(client_, "c/rt", buf, len, &options, &generation),
      H5DEPOT_OK);
  EXPECT_GT(generation, their_generation);
  std::free(buf);
  hid_t opened = h5depot_open(client_, "c/rt", 0);
  ASSERT_GE(opened, 0);
  EXPECT_EQ(ReadValues(opened, "mine"), Values(2));
  H5Fclose(opened);
}

TEST_F(CApiHdf5Test, ValidateStopsABrokenImageBeforeItIsSent) {
  size_t len = 0;
  void* image = MakeImage(1, &len);
  h5depot_push_options options;
  std::memset(&options, 0, sizeof options);
  options.validate = 1;
  EXPECT_EQ(
      h5depot_push_buffer_ex(client_, "c/v", image, len / 2, &options, nullptr),
      H5DEPOT_INVALID_ARGUMENT);
  EXPECT_THAT(h5depot_errmsg(), HasSubstr("truncated"));
  h5depot_image_info info;
  EXPECT_EQ(h5depot_stat(client_, "c/v", &info), H5DEPOT_NOT_FOUND);
  EXPECT_EQ(
      h5depot_push_buffer_ex(client_, "c/v", image, len, &options, nullptr),
      H5DEPOT_OK);
  std::free(image);

  hid_t file = CreateFile(2);
  EXPECT_EQ(h5depot_push_file_ex(client_, "c/v", file, &options, nullptr),
            H5DEPOT_OK);
  H5Fclose(file);
}

TEST_F(CApiHdf5Test, ThousandsOfOpenCyclesLeaveNothingBehind) {
  hid_t file = CreateFile(1);
  ASSERT_EQ(h5depot_push_file(client_, "c/cycle", file, nullptr), H5DEPOT_OK);
  H5Fclose(file);
  for (int i = 0; i < 1000; ++i) {
    hid_t opened = h5depot_open(client_, "c/cycle", i % 2 == 0 ? 0 : kRw);
    ASSERT_GE(opened, 0) << h5depot_errmsg();
    if (i % 2 == 0) {
      ASSERT_GE(H5Fclose(opened), 0);
    } else {
      void* buf = nullptr;
      size_t len = 0;
      ASSERT_EQ(h5depot_close_image(opened, &buf, &len), H5DEPOT_OK);
      std::free(buf);
    }
  }
}

}  // namespace

TEST_F(CApiHdf5Test, AWatchReportsEachChangeInOrder) {
  h5depot_watch* watch = nullptr;
  ASSERT_EQ(h5depot_watch_start(client_, "w/", nullptr, &watch), H5DEPOT_OK)
      << h5depot_errmsg();
  ASSERT_NE(watch, nullptr);
  size_t len = 0;
  void* image = MakeImage(3, &len);
  uint64_t first = 0;
  uint64_t second = 0;
  ASSERT_EQ(h5depot_push_buffer(client_, "w/a", image, len, &first),
            H5DEPOT_OK);
  ASSERT_EQ(h5depot_push_buffer(client_, "other", image, len, nullptr),
            H5DEPOT_OK);
  ASSERT_EQ(h5depot_push_buffer(client_, "w/a", image, len, &second),
            H5DEPOT_OK);
  ASSERT_EQ(h5depot_delete(client_, "w/a"), H5DEPOT_OK);
  std::free(image);

  h5depot_event event;
  ASSERT_EQ(h5depot_watch_next(watch, 10000, &event), H5DEPOT_OK);
  EXPECT_EQ(event.kind, H5DEPOT_EVENT_PUBLISHED);
  EXPECT_STREQ(event.image_id, "w/a");
  EXPECT_EQ(event.generation, first);
  EXPECT_EQ(event.sequence, first);
  EXPECT_EQ(event.size, len);
  EXPECT_GT(event.time_unix_micros, 0);
  ASSERT_EQ(h5depot_watch_next(watch, 10000, &event), H5DEPOT_OK);
  EXPECT_EQ(event.kind, H5DEPOT_EVENT_REPLACED);
  EXPECT_EQ(event.generation, second);
  EXPECT_EQ(event.replaced_generation, first);
  ASSERT_EQ(h5depot_watch_next(watch, 10000, &event), H5DEPOT_OK);
  EXPECT_EQ(event.kind, H5DEPOT_EVENT_DELETED);
  EXPECT_STREQ(event.image_id, "w/a");
  EXPECT_EQ(event.generation, second);
  const uint64_t deleted_at = event.sequence;
  EXPECT_GT(deleted_at, second);
  EXPECT_EQ(h5depot_watch_next(watch, 50, &event), H5DEPOT_DEADLINE_EXCEEDED);
  h5depot_watch_cancel(watch);
  EXPECT_EQ(h5depot_watch_next(watch, -1, &event), H5DEPOT_CANCELLED);
  h5depot_watch_close(watch);

  // From a sequence on: the changes after it are replayed.
  ASSERT_EQ(h5depot_watch_start(client_, "w/", &first, &watch), H5DEPOT_OK)
      << h5depot_errmsg();
  ASSERT_EQ(h5depot_watch_next(watch, 10000, &event), H5DEPOT_OK);
  EXPECT_EQ(event.kind, H5DEPOT_EVENT_REPLACED);
  EXPECT_EQ(event.generation, second);
  ASSERT_EQ(h5depot_watch_next(watch, 10000, &event), H5DEPOT_OK);
  EXPECT_EQ(event.sequence, deleted_at);
  h5depot_watch_close(watch);

  EXPECT_EQ(h5depot_watch_start(nullptr, "w/", nullptr, &watch),
            H5DEPOT_INVALID_ARGUMENT);
  EXPECT_EQ(watch, nullptr);
  EXPECT_EQ(h5depot_watch_next(nullptr, 0, &event), H5DEPOT_INVALID_ARGUMENT);
  h5depot_watch_close(nullptr);
}

TEST_F(CApiHdf5Test, AWatchEndsUnavailableWhenTheServerStops) {
  h5depot_watch* watch = nullptr;
  ASSERT_EQ(h5depot_watch_start(client_, "", nullptr, &watch), H5DEPOT_OK)
      << h5depot_errmsg();
  depot_.reset();
  h5depot_event event;
  EXPECT_EQ(h5depot_watch_next(watch, 30000, &event), H5DEPOT_UNAVAILABLE)
      << h5depot_errmsg();
  h5depot_watch_close(watch);
}
