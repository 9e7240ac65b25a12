// HDF5 files over the network (hdf5_transfer.h) against a real DepotServer
// on a loopback port: open files of every local driver and superblock
// version pushed and fetched back, fetch-and-open with every ownership flag
// it allows, the round trip and its conflicts, files written by h5py in
// both directions, many threads, and many cycles that must leave nothing
// behind.
#include "h5depot/hdf5_transfer.h"

#include <unistd.h>

#include <atomic>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "client/src/image_share_internal.h"
#include "client/src/superblock_internal.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "h5depot/client.h"
#include "h5depot/file_image.h"
#include "h5depot/testing/hdf5_datasets.h"
#include "h5depot/testing/in_process_depot.h"
#include "h5py_images.h"

namespace h5depot {
namespace {

using ::h5depot::testing::QuietHdf5Errors;
using ::h5depot::testing::ReadDataset;
using ::h5depot::testing::WriteDataset;

using ::h5depot::testing::ExpectH5pyContents;
using ::h5depot::testing::H5pyWritten;
using ::testing::HasSubstr;

constexpr unsigned kRw = H5LT_FILE_IMAGE_OPEN_RW;
constexpr unsigned kDontCopy = H5LT_FILE_IMAGE_DONT_COPY;
constexpr unsigned kDontRelease = H5LT_FILE_IMAGE_DONT_RELEASE;

// The flag combinations FetchAndOpen accepts.
const unsigned kFetchFlags[] = {0, kDontCopy, kRw, kRw | kDontCopy};

std::string FlagsName(unsigned flags) {
  std::string name;
  if (flags & kRw) name += "OpenRw";
  if (flags & kDontCopy) name += "DontCopy";
  return name.empty() ? "ReadOnly" : name;
}

std::string TempPath(const std::string& name) {
  static std::atomic<int> counter{0};
  return absl::StrCat(::testing::TempDir(), "/h5depot-transfer-", getpid(), "-",
                      counter++, "-", name);
}

// Core files are told apart by name: each gets its own.
std::string CoreName() {
  static std::atomic<int> counter{0};
  return absl::StrCat("transfer-core-", counter++);
}

std::vector<int64_t> Values(int seed, size_t count) {
  std::vector<int64_t> values(count);
  for (size_t i = 0; i < count; ++i) {
    values[i] = int64_t{seed} * 1000003 + static_cast<int64_t>(i);
  }
  return values;
}

// A core file holding "values" = Values(seed, count).
hid_t CreateCoreFile(int seed, size_t count = 100) {
  hid_t fapl = H5Pcreate(H5P_FILE_ACCESS);
  H5Pset_fapl_core(fapl, 64 << 10, /*backing_store=*/false);
  hid_t file = H5Fcreate(CoreName().c_str(), H5F_ACC_TRUNC, H5P_DEFAULT, fapl);
  H5Pclose(fapl);
  EXPECT_TRUE(WriteDataset(file, "values", Values(seed, count)));
  return file;
}

// The image of CreateCoreFile(seed, count).
ImageBuffer MakeImage(int seed, size_t count = 100) {
  hid_t file = CreateCoreFile(seed, count);
  absl::StatusOr<ImageBuffer> image = TakeFileImage(file);
  H5Fclose(file);
  EXPECT_TRUE(image.ok()) << image.status();
  return image.ok() ? *std::move(image) : ImageBuffer();
}

std::vector<unsigned char> Bytes(const void* data, size_t size) {
  const auto* bytes = static_cast<const unsigned char*>(data);
  return std::vector<unsigned char>(bytes, bytes + size);
}

void WriteFile(const std::string& path, const void* data, size_t size) {
  std::ofstream(path, std::ios::binary)
      .write(static_cast<const char*>(data),
             static_cast<std::streamsize>(size));
}

// A real server on a free loopback port and a client of it. Every test
// ends with no image share alive and no HDF5 object open: whatever was
// fetched and opened was released.
class Hdf5TransferTest : public ::testing::Test {
 protected:
  void SetUp() override {
    shares_before_ = internal::ImageShare::LiveCount();
    server::ServerOptions options;
    options.store.max_memory_bytes = uint64_t{512} << 20;
    auto depot = testing::InProcessDepot::Start(options);
    ASSERT_TRUE(depot.ok()) << depot.status();
    depot_ = *std::move(depot);
    client_ = Connect();
  }

  void TearDown() override {
    client_.reset();
    depot_.reset();
    EXPECT_EQ(internal::ImageShare::LiveCount(), shares_before_)
        << "an image share outlived its file";
    EXPECT_EQ(H5Fget_obj_count(H5F_OBJ_ALL, H5F_OBJ_ALL), 0)
        << "HDF5 objects were left open";
  }

  std::unique_ptr<Client> Connect() {
    absl::StatusOr<std::unique_ptr<Client>> client = depot_->Connect();
    EXPECT_TRUE(client.ok()) << client.status();
    return client.ok() ? *std::move(client) : nullptr;
  }

  // Pushes the image of a core file holding Values(seed, count).
  ImageInfo PushValues(const std::string& image_id, int seed,
                       size_t count = 100) {
    ImageBuffer image = MakeImage(seed, count);
    absl::StatusOr<ImageInfo> pushed =
        client_->Push(image_id, image.data(), image.size());
    EXPECT_TRUE(pushed.ok()) << pushed.status();
    return pushed.ok() ? *pushed : ImageInfo();
  }

  // The values of dataset `name` in the current generation of `image_id`.
  std::vector<int64_t> RemoteValues(const std::string& image_id,
                                    const char* name = "values") {
    absl::StatusOr<FetchedFile> fetched = FetchAndOpen(*client_, image_id);
    if (!fetched.ok()) {
      ADD_FAILURE() << fetched.status();
      return {};
    }
    std::vector<int64_t> values = ReadDataset<int64_t>(fetched->file, name);
    H5Fclose(fetched->file);
    return values;
  }

  size_t shares_before_ = 0;
  std::unique_ptr<testing::InProcessDepot> depot_;
  std::unique_ptr<Client> client_;
};

// ---------------------------------------------------------------------------
// Pushing open files

enum class Driver { kCore, kSec2, kStdio };

struct FileCase {
  Driver driver;
  H5F_libver_t low;
  int superblock_version;
};

std::string FileCaseName(const FileCase& c) {
  const char* driver = c.driver == Driver::kCore   ? "Core"
                       : c.driver == Driver::kSec2 ? "Sec2"
                                                   : "Stdio";
  return absl::StrCat(driver, "SuperblockV", c.superblock_version);
}

void PrintTo(const FileCase& c, std::ostream* os) { *os << FileCaseName(c); }

class PushFileImageTest : public Hdf5TransferTest,
                          public ::testing::WithParamInterface<FileCase> {};

TEST_P(PushFileImageTest, AnOpenFileComesBackWithItsDataAndStaysUsable) {
  const FileCase& param = GetParam();
  hid_t fapl = H5Pcreate(H5P_FILE_ACCESS);
  H5Pset_libver_bounds(fapl, param.low, H5F_LIBVER_LATEST);
  std::string name = TempPath("pushed.h5");
  switch (param.driver) {
    case Driver::kCore:
      H5Pset_fapl_core(fapl, 64 << 10, /*backing_store=*/false);
      name = CoreName();
      break;
    case Driver::kSec2:
      H5Pset_fapl_sec2(fapl);
      break;
    case Driver::kStdio:
      H5Pset_fapl_stdio(fapl);
      break;
  }
  hid_t file = H5Fcreate(name.c_str(), H5F_ACC_TRUNC, H5P_DEFAULT, fapl);
  H5Pclose(fapl);
  ASSERT_GE(file, 0);
  ASSERT_TRUE(WriteDataset(file, "values", Values(3, 5000)));
  hid_t group =
      H5Gcreate2(file, "group", H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
  ASSERT_TRUE(WriteDataset(group, "inner", Values(4, 10)));
  H5Gclose(group);

  // Pushed while open for writing: the superblock's status flags are set,
  // the case HDF5 1.10.8 images wrongly for superblock versions 2 and 3.
  absl::StatusOr<ImageInfo> first = PushFileImage(*client_, "open/file", file);
  ASSERT_TRUE(first.ok()) << first.status();

  absl::StatusOr<FetchedImage> bytes = client_->Fetch("open/file");
  ASSERT_TRUE(bytes.ok()) << bytes.status();
  std::optional<internal::Superblock> sb =
      internal::ParseSuperblock(bytes->buffer.data(), bytes->buffer.size());
  ASSERT_TRUE(sb.has_value());
  EXPECT_EQ(sb->version, param.superblock_version);
  EXPECT_EQ(bytes->info.size, first->size);

  absl::StatusOr<FetchedFile> fetched = FetchAndOpen(*client_, "open/file");
  ASSERT_TRUE(fetched.ok()) << fetched.status();
  EXPECT_EQ(fetched->info.generation, first->generation);
  EXPECT_EQ(ReadDataset<int64_t>(fetched->file, "values"), Values(3, 5000));
  EXPECT_EQ(ReadDataset<int64_t>(fetched->file, "group/inner"), Values(4, 10));
  EXPECT_GE(H5Fclose(fetched->file), 0);

  // The file is still open and writable; pushing again publishes the
  // change as the next generation.
  ASSERT_TRUE(WriteDataset(file, "later", Values(5, 20)));
  absl::StatusOr<ImageInfo> second = PushFileImage(*client_, "open/file", file);
  ASSERT_TRUE(second.ok()) << second.status();
  EXPECT_GT(second->generation, first->generation);
  EXPECT_EQ(RemoteValues("open/file", "later"), Values(5, 20));
  EXPECT_EQ(RemoteValues("open/file"), Values(3, 5000));

  EXPECT_GE(H5Fclose(file), 0);
  if (param.driver != Driver::kCore) std::remove(name.c_str());
}

std::vector<FileCase> FileCases() {
  std::vector<FileCase> cases;
  for (Driver driver : {Driver::kCore, Driver::kSec2, Driver::kStdio}) {
    cases.push_back({driver, H5F_LIBVER_EARLIEST, 0});
    cases.push_back({driver, H5F_LIBVER_V18, 2});
    cases.push_back({driver, H5F_LIBVER_LATEST, 3});
  }
  return cases;
}

INSTANTIATE_TEST_SUITE_P(DriversAndVersions, PushFileImageTest,
                         ::testing::ValuesIn(FileCases()),
                         [](const ::testing::TestParamInfo<FileCase>& p) {
                           return FileCaseName(p.param);
                         });

TEST_F(Hdf5TransferTest, PushFileImageRefusesWhatIsNotAnOpenFileOrABadId) {
  hid_t file = CreateCoreFile(1);
  absl::StatusOr<ImageInfo> bad_id = PushFileImage(*client_, "bad id", file);
  EXPECT_EQ(bad_id.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(bad_id.status().message(), HasSubstr("push 'bad id'"));

  hid_t dataset = H5Dopen2(file, "values", H5P_DEFAULT);
  absl::StatusOr<ImageInfo> not_a_file = PushFileImage(*client_, "x", dataset);
  EXPECT_EQ(not_a_file.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(not_a_file.status().message(), HasSubstr("not an open file"));
  H5Dclose(dataset);
  EXPECT_EQ(PushFileImage(*client_, "x", H5I_INVALID_HID).status().code(),
            absl::StatusCode::kInvalidArgument);
  H5Fclose(file);

  absl::StatusOr<ListPage> stored = client_->List();
  ASSERT_TRUE(stored.ok());
  EXPECT_TRUE(stored->images.empty()) << "nothing may have been stored";
}

TEST_F(Hdf5TransferTest, ValidateStopsAnImageHdf5CannotReadBeforeItIsSent) {
  ImageBuffer image = MakeImage(1, 10000);
  // Cut short: the signature is still there, so the server would take it.
  const size_t truncated = image.size() / 2;
  ImagePushOptions validate;
  validate.validate = true;
  absl::StatusOr<ImageInfo> refused =
      PushImage(*client_, "cut", image.data(), truncated, validate);
  EXPECT_EQ(refused.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(refused.status().message(), HasSubstr("truncated file"));
  EXPECT_EQ(client_->Stat("cut").status().code(), absl::StatusCode::kNotFound);

  // Good images pass, pushed whole or as an open file.
  EXPECT_TRUE(
      PushImage(*client_, "whole", image.data(), image.size(), validate).ok());
  hid_t file = CreateCoreFile(2);
  EXPECT_TRUE(PushFileImage(*client_, "file", file, validate).ok());
  H5Fclose(file);
}

TEST_F(Hdf5TransferTest, AFetchedImageHdf5CannotOpenIsInvalidArgument) {
  ImageBuffer image = MakeImage(1, 10000);
  ASSERT_TRUE(client_->Push("cut", image.data(), image.size() / 2).ok());
  QuietHdf5Errors quiet;
  for (unsigned flags : kFetchFlags) {
    SCOPED_TRACE(FlagsName(flags));
    absl::StatusOr<FetchedFile> fetched = FetchAndOpen(*client_, "cut", flags);
    EXPECT_EQ(fetched.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(fetched.status().message(),
                HasSubstr("cannot open file image"));
    EXPECT_THAT(fetched.status().message(), HasSubstr("open 'cut'"));
  }
  EXPECT_EQ(ImageUpdate::Begin(*client_, "cut").status().code(),
            absl::StatusCode::kInvalidArgument);
}

// ---------------------------------------------------------------------------
// Fetch and open

class FetchAndOpenFlagsTest : public Hdf5TransferTest,
                              public ::testing::WithParamInterface<unsigned> {};

TEST_P(FetchAndOpenFlagsTest, OpensTheFetchedImageAsTheFlagsSay) {
  const unsigned flags = GetParam();
  ImageBuffer image = MakeImage(7, 2000);
  absl::StatusOr<ImageInfo> pushed =
      client_->Push("flags", image.data(), image.size());
  ASSERT_TRUE(pushed.ok()) << pushed.status();

  absl::StatusOr<FetchedFile> fetched = FetchAndOpen(*client_, "flags", flags);
  ASSERT_TRUE(fetched.ok()) << fetched.status();
  EXPECT_EQ(fetched->info.generation, pushed->generation);
  EXPECT_EQ(fetched->info.image_id, "flags");
  EXPECT_EQ(ReadDataset<int64_t>(fetched->file, "values"), Values(7, 2000));

  if ((flags & kRw) == 0) {
    QuietHdf5Errors quiet;
    EXPECT_FALSE(WriteDataset(fetched->file, "more", Values(8, 10)))
        << "a read-only open must refuse writes";
    // Nothing was written, so the image comes back byte for byte.
    absl::StatusOr<ImageBuffer> final_image = CloseFileImage(fetched->file);
    ASSERT_TRUE(final_image.ok()) << final_image.status();
    EXPECT_EQ(Bytes(final_image->data(), final_image->size()),
              Bytes(image.data(), image.size()));
    return;
  }
  // Read/write: the image grows in place, and its final buffer holds both.
  ASSERT_TRUE(WriteDataset(fetched->file, "more", Values(8, 100000)));
  absl::StatusOr<ImageBuffer> final_image = CloseFileImage(fetched->file);
  ASSERT_TRUE(final_image.ok()) << final_image.status();
  EXPECT_GT(final_image->size(), image.size());
  absl::StatusOr<hid_t> reopened = OpenFileImage(*std::move(final_image));
  ASSERT_TRUE(reopened.ok()) << reopened.status();
  EXPECT_EQ(ReadDataset<int64_t>(*reopened, "values"), Values(7, 2000));
  EXPECT_EQ(ReadDataset<int64_t>(*reopened, "more"), Values(8, 100000));
  H5Fclose(*reopened);
}

INSTANTIATE_TEST_SUITE_P(AllowedFlags, FetchAndOpenFlagsTest,
                         ::testing::ValuesIn(kFetchFlags),
                         [](const ::testing::TestParamInfo<unsigned>& p) {
                           return FlagsName(p.param);
                         });

TEST_F(Hdf5TransferTest, FetchAndOpenRefusesDontReleaseBeforeFetching) {
  // The image does not exist: NOT_FOUND would mean it had been fetched.
  for (unsigned flags : {kDontRelease, kDontCopy | kDontRelease,
                         kRw | kDontCopy | kDontRelease}) {
    absl::StatusOr<FetchedFile> fetched =
        FetchAndOpen(*client_, "never/pushed", flags);
    EXPECT_EQ(fetched.status().code(), absl::StatusCode::kInvalidArgument)
        << flags;
    EXPECT_THAT(fetched.status().message(), HasSubstr("DONT_RELEASE"));
  }
  absl::StatusOr<FetchedFile> unknown =
      FetchAndOpen(*client_, "never/pushed", 0x10);
  EXPECT_EQ(unknown.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(unknown.status().message(),
              HasSubstr("unknown file image flags"));
}

TEST_F(Hdf5TransferTest, FetchAndOpenOfAMissingImageIsNotFoundOrTimesOut) {
  absl::StatusOr<FetchedFile> missing = FetchAndOpen(*client_, "no/such");
  EXPECT_EQ(missing.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(missing.status().message(), HasSubstr("no/such"));
  FetchOptions wait;
  wait.wait = absl::Milliseconds(50);
  EXPECT_EQ(FetchAndOpen(*client_, "no/such", 0, wait).status().code(),
            absl::StatusCode::kDeadlineExceeded);
}

TEST_F(Hdf5TransferTest, FetchAndOpenWaitsForAnImagePushedLater) {
  absl::StatusOr<FetchedFile> fetched = absl::UnknownError("not run");
  std::thread waiter([&] {
    FetchOptions wait;
    wait.wait = absl::Seconds(60);
    fetched = FetchAndOpen(*client_, "later", 0, wait);
  });
  auto pusher = Connect();
  ImageBuffer image = MakeImage(11);
  ASSERT_TRUE(pusher->Push("later", image.data(), image.size()).ok());
  waiter.join();
  ASSERT_TRUE(fetched.ok()) << fetched.status();
  EXPECT_EQ(ReadDataset<int64_t>(fetched->file, "values"), Values(11, 100));
  H5Fclose(fetched->file);
}

// ---------------------------------------------------------------------------
// The round trip

TEST_F(Hdf5TransferTest, AnUpdateGrowsTheImageAndPushesTheNextGeneration) {
  const ImageInfo pushed = PushValues("rt", 1);
  absl::StatusOr<std::unique_ptr<ImageUpdate>> update =
      ImageUpdate::Begin(*client_, "rt");
  ASSERT_TRUE(update.ok()) << update.status();
  EXPECT_EQ((*update)->base().generation, pushed.generation);
  EXPECT_EQ((*update)->base().image_id, "rt");
  EXPECT_EQ(ReadDataset<int64_t>((*update)->file(), "values"), Values(1, 100));
  // Far past the fetched buffer: the core driver reallocates it.
  ASSERT_TRUE(WriteDataset((*update)->file(), "big", Values(2, 500000)));

  absl::StatusOr<ImageInfo> committed = (*update)->Commit();
  ASSERT_TRUE(committed.ok()) << committed.status();
  EXPECT_GT(committed->generation, pushed.generation);
  EXPECT_GT(committed->size, pushed.size + 500000 * sizeof(int64_t) - 1);
  EXPECT_EQ((*update)->file(), H5I_INVALID_HID);
  EXPECT_EQ((*update)->Commit().status().code(),
            absl::StatusCode::kFailedPrecondition);

  absl::StatusOr<ImageInfo> stat = client_->Stat("rt");
  ASSERT_TRUE(stat.ok());
  EXPECT_EQ(stat->generation, committed->generation);
  EXPECT_EQ(RemoteValues("rt"), Values(1, 100));
  EXPECT_EQ(RemoteValues("rt", "big"), Values(2, 500000));
}

TEST_F(Hdf5TransferTest, AnUpdateFailsCleanlyWhenAnotherPushCameFirst) {
  PushValues("rt", 1);
  absl::StatusOr<std::unique_ptr<ImageUpdate>> update =
      ImageUpdate::Begin(*client_, "rt");
  ASSERT_TRUE(update.ok()) << update.status();
  ASSERT_TRUE(WriteDataset((*update)->file(), "mine", Values(2, 10)));

  // Another process pushes meanwhile.
  std::unique_ptr<Client> other = Connect();
  ImageBuffer theirs = MakeImage(3);
  absl::StatusOr<ImageInfo> concurrent =
      other->Push("rt", theirs.data(), theirs.size());
  ASSERT_TRUE(concurrent.ok());

  absl::StatusOr<ImageInfo> committed = (*update)->Commit();
  EXPECT_EQ(committed.status().code(), absl::StatusCode::kAborted)
      << committed.status();
  // Nothing of the update arrived; theirs is current.
  absl::StatusOr<ImageInfo> stat = client_->Stat("rt");
  ASSERT_TRUE(stat.ok());
  EXPECT_EQ(stat->generation, concurrent->generation);
  EXPECT_EQ(RemoteValues("rt"), Values(3, 100));
  EXPECT_TRUE(RemoteValues("rt", "mine").empty());
  // Trying again changes nothing: the condition still does not hold.
  EXPECT_EQ((*update)->Commit().status().code(), absl::StatusCode::kAborted);
  update->reset();

  // Starting again from their generation works.
  update = ImageUpdate::Begin(*client_, "rt");
  ASSERT_TRUE(update.ok());
  EXPECT_EQ((*update)->base().generation, concurrent->generation);
  ASSERT_TRUE(WriteDataset((*update)->file(), "mine", Values(2, 10)));
  ASSERT_TRUE((*update)->Commit().ok());
  EXPECT_EQ(RemoteValues("rt"), Values(3, 100));
  EXPECT_EQ(RemoteValues("rt", "mine"), Values(2, 10));
}

TEST_F(Hdf5TransferTest, AnUpdateFailsCleanlyWhenTheImageWasDeleted) {
  PushValues("rt", 1);
  absl::StatusOr<std::unique_ptr<ImageUpdate>> update =
      ImageUpdate::Begin(*client_, "rt");
  ASSERT_TRUE(update.ok());
  ASSERT_TRUE(client_->Delete("rt").ok());
  EXPECT_EQ((*update)->Commit().status().code(), absl::StatusCode::kAborted);
  EXPECT_EQ(client_->Stat("rt").status().code(), absl::StatusCode::kNotFound);
}

TEST_F(Hdf5TransferTest, CommitWaitsForObjectsStillOpenInTheFile) {
  const ImageInfo pushed = PushValues("rt", 1);
  absl::StatusOr<std::unique_ptr<ImageUpdate>> update =
      ImageUpdate::Begin(*client_, "rt");
  ASSERT_TRUE(update.ok());
  hid_t dataset = H5Dopen2((*update)->file(), "values", H5P_DEFAULT);
  ASSERT_GE(dataset, 0);
  absl::StatusOr<ImageInfo> refused = (*update)->Commit();
  EXPECT_EQ(refused.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(refused.status().message(), HasSubstr("close them first"));
  // The file is still open and nothing was pushed.
  EXPECT_GT(H5Iis_valid((*update)->file()), 0);
  EXPECT_EQ(client_->Stat("rt")->generation, pushed.generation);

  H5Dclose(dataset);
  EXPECT_TRUE((*update)->Commit().ok());
}

TEST_F(Hdf5TransferTest, CommitRefusesAConditionOnAnotherGeneration) {
  const ImageInfo pushed = PushValues("rt", 1);
  absl::StatusOr<std::unique_ptr<ImageUpdate>> update =
      ImageUpdate::Begin(*client_, "rt");
  ASSERT_TRUE(update.ok());
  ImagePushOptions options;
  options.if_generation_match = pushed.generation + 1;
  EXPECT_EQ((*update)->Commit(options).status().code(),
            absl::StatusCode::kInvalidArgument);
  options.if_generation_match = pushed.generation;
  options.validate = true;
  EXPECT_TRUE((*update)->Commit(options).ok());
}

TEST_F(Hdf5TransferTest, AnUpdateDroppedWithoutCommitPushesNothing) {
  const ImageInfo pushed = PushValues("rt", 1);
  {
    absl::StatusOr<std::unique_ptr<ImageUpdate>> update =
        ImageUpdate::Begin(*client_, "rt");
    ASSERT_TRUE(update.ok());
    ASSERT_TRUE(WriteDataset((*update)->file(), "dropped", Values(2, 10)));
  }
  EXPECT_EQ(client_->Stat("rt")->generation, pushed.generation);
  QuietHdf5Errors quiet;
  EXPECT_TRUE(RemoteValues("rt", "dropped").empty());
}

TEST_F(Hdf5TransferTest, TheRoundTripAlsoWorksThroughCloseFileImage) {
  PushValues("rt", 1);
  absl::StatusOr<FetchedFile> fetched = FetchAndOpen(*client_, "rt", kRw);
  ASSERT_TRUE(fetched.ok());
  ASSERT_TRUE(WriteDataset(fetched->file, "added", Values(4, 1000)));
  absl::StatusOr<ImageBuffer> final_image = CloseFileImage(fetched->file);
  ASSERT_TRUE(final_image.ok()) << final_image.status();

  ImagePushOptions conditional;
  conditional.if_generation_match = fetched->info.generation;
  absl::StatusOr<ImageInfo> pushed = PushImage(
      *client_, "rt", final_image->data(), final_image->size(), conditional);
  ASSERT_TRUE(pushed.ok()) << pushed.status();
  EXPECT_EQ(RemoteValues("rt", "added"), Values(4, 1000));
  // The same condition again: the generation moved on.
  EXPECT_EQ(PushImage(*client_, "rt", final_image->data(), final_image->size(),
                      conditional)
                .status()
                .code(),
            absl::StatusCode::kAborted);
}

// ---------------------------------------------------------------------------
// Files written by h5py

class H5pyTransferTest : public Hdf5TransferTest,
                         public ::testing::WithParamInterface<const char*> {
 protected:
  void SetUp() override {
    Hdf5TransferTest::SetUp();
    if (!::h5depot::testing::HaveH5py()) {
      GTEST_SKIP() << "no Python with h5py was found at configure time";
    }
  }
};

TEST_P(H5pyTransferTest, AnH5pyFileIsPushedFetchedAndReadBackIdentically) {
  const std::vector<unsigned char>& written = H5pyWritten(GetParam());
  ASSERT_FALSE(written.empty());

  // As bytes from disk: the server hands back exactly those bytes.
  const std::string path = TempPath("h5py.h5");
  WriteFile(path, written.data(), written.size());
  ASSERT_TRUE(client_->PushFile("h5py/bytes", path).ok());
  absl::StatusOr<FetchedImage> bytes = client_->Fetch("h5py/bytes");
  ASSERT_TRUE(bytes.ok());
  EXPECT_EQ(Bytes(bytes->buffer.data(), bytes->buffer.size()), written);
  absl::StatusOr<FetchedFile> fetched = FetchAndOpen(*client_, "h5py/bytes");
  ASSERT_TRUE(fetched.ok()) << fetched.status();
  ExpectH5pyContents(fetched->file);
  H5Fclose(fetched->file);

  // As a file that an application opened with the default (sec2) driver.
  hid_t file = H5Fopen(path.c_str(), H5F_ACC_RDONLY, H5P_DEFAULT);
  ASSERT_GE(file, 0);
  absl::StatusOr<ImageInfo> pushed = PushFileImage(*client_, "h5py/file", file);
  H5Fclose(file);
  std::remove(path.c_str());
  ASSERT_TRUE(pushed.ok()) << pushed.status();
  for (unsigned flags : kFetchFlags) {
    SCOPED_TRACE(FlagsName(flags));
    fetched = FetchAndOpen(*client_, "h5py/file", flags);
    ASSERT_TRUE(fetched.ok()) << fetched.status();
    ExpectH5pyContents(fetched->file);
    H5Fclose(fetched->file);
  }
}

TEST_P(H5pyTransferTest, H5pyReadsWhatTheRoundTripPushed) {
  const std::vector<unsigned char>& written = H5pyWritten(GetParam());
  ASSERT_FALSE(written.empty());
  ASSERT_TRUE(client_->Push("h5py/rt", written.data(), written.size()).ok());

  absl::StatusOr<std::unique_ptr<ImageUpdate>> update =
      ImageUpdate::Begin(*client_, "h5py/rt");
  ASSERT_TRUE(update.ok()) << update.status();
  std::vector<int64_t> squares(1000);
  for (size_t k = 0; k < squares.size(); ++k) {
    squares[k] = static_cast<int64_t>(k * k);
  }
  ASSERT_TRUE(WriteDataset((*update)->file(), "run/added", squares));
  ASSERT_TRUE((*update)->Commit().ok());

  // The other direction: h5py reads the fetched bytes and checks them.
  absl::StatusOr<FetchedImage> fetched = client_->Fetch("h5py/rt");
  ASSERT_TRUE(fetched.ok());
  const std::string path = TempPath("h5py-rt.h5");
  WriteFile(path, fetched->buffer.data(), fetched->buffer.size());
  ::h5depot::testing::H5pyReport report =
      ::h5depot::testing::ReadWithH5py(path);
  std::remove(path.c_str());
  EXPECT_EQ(report.exit_code, 0) << report.output;
  EXPECT_THAT(report.output, HasSubstr("run/gzip: ok"));
  EXPECT_THAT(report.output, HasSubstr("run/added: ok (1000,)"));
  EXPECT_THAT(report.output, ::testing::Not(HasSubstr("MISMATCH")));
}

// earliest: superblock version 0; v108: version 2; latest: version 3.
INSTANTIATE_TEST_SUITE_P(SuperblockVersions, H5pyTransferTest,
                         ::testing::Values("earliest", "v108", "latest"),
                         [](const ::testing::TestParamInfo<const char*>& p) {
                           const std::string low = p.param;
                           return low == "earliest" ? "V0"
                                  : low == "v108"   ? "V2"
                                                    : "V3";
                         });

// ---------------------------------------------------------------------------
// Many threads, many cycles

TEST_F(Hdf5TransferTest, ManyThreadsFetchAndOpenAtOnceAndNeverSeeAnotherImage) {
  constexpr int kImages = 6;
  constexpr int kThreads = 8;
  constexpr int kRounds = 60;
  for (int i = 0; i < kImages; ++i) {
    // Sizes differ too, so an image opened under another's name shows.
    PushValues(absl::StrCat("many/", i), i + 1, 100 + 300 * i);
  }
  std::atomic<int> mismatches{0};
  std::vector<std::thread> threads;
  threads.reserve(kThreads);
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      // Each thread holds a few files open at a time.
      std::vector<std::pair<hid_t, int>> open;
      for (int round = 0; round < kRounds; ++round) {
        const int image = (t + round) % kImages;
        const unsigned flags = kFetchFlags[(t + 3 * round) % 4];
        absl::StatusOr<FetchedFile> fetched =
            FetchAndOpen(*client_, absl::StrCat("many/", image), flags);
        if (!fetched.ok()) {
          ADD_FAILURE() << fetched.status();
          ++mismatches;
          continue;
        }
        open.emplace_back(fetched->file, image);
        if (open.size() < 3) continue;
        for (auto [file, id] : open) {
          if (ReadDataset<int64_t>(file, "values") !=
              Values(id + 1, 100 + 300 * id)) {
            ++mismatches;
          }
          H5Fclose(file);
        }
        open.clear();
      }
      for (auto [file, id] : open) {
        if (ReadDataset<int64_t>(file, "values") !=
            Values(id + 1, 100 + 300 * id)) {
          ++mismatches;
        }
        H5Fclose(file);
      }
    });
  }
  for (std::thread& thread : threads) thread.join();
  EXPECT_EQ(mismatches.load(), 0);
}

TEST_F(Hdf5TransferTest, ThousandsOfFetchAndOpenCyclesLeaveNothingBehind) {
  // Run under ASan/LSan, this also proves no byte leaks per cycle; here the
  // image shares and HDF5's open objects are counted (TearDown).
  PushValues("cycle", 1);
  for (int i = 0; i < 2000; ++i) {
    const unsigned flags = kFetchFlags[i % 4];
    absl::StatusOr<FetchedFile> fetched =
        FetchAndOpen(*client_, "cycle", flags);
    ASSERT_TRUE(fetched.ok()) << fetched.status();
    hid_t dataset = H5Dopen2(fetched->file, "values", H5P_DEFAULT);
    ASSERT_GE(dataset, 0);
    H5Dclose(dataset);
    if (i % 3 == 0) {
      absl::StatusOr<ImageBuffer> final_image = CloseFileImage(fetched->file);
      ASSERT_TRUE(final_image.ok()) << final_image.status();
    } else {
      ASSERT_GE(H5Fclose(fetched->file), 0);
    }
  }
  for (int i = 0; i < 200; ++i) {
    absl::StatusOr<std::unique_ptr<ImageUpdate>> update =
        ImageUpdate::Begin(*client_, "cycle");
    ASSERT_TRUE(update.ok()) << update.status();
    if (i % 2 == 0) {
      ASSERT_TRUE((*update)->Commit().ok());
    }
  }
  EXPECT_EQ(RemoteValues("cycle"), Values(1, 100));
}

}  // namespace
}  // namespace h5depot
