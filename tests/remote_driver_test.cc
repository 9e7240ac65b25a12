// End-to-end tests of the remote driver: HDF5 calls through H5FD_REMOTE
// against a real server (in-process, or the h5depotd binary where the test
// is about the process going away), with other processes and h5py on the
// other side.
#include <signal.h>
#include <sys/wait.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "H5FDremote.h"
#include "absl/strings/str_cat.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "h5depot/client.h"
#include "h5depot/internal/token.h"
#include "h5depot/server/depot_server.h"
#include "h5depot/testing/in_process_depot.h"
#include "h5depot/testing/server_process.h"
#include "h5depot/testing/subprocess.h"
#include "h5depot/testing/temp_dir.h"
#include "remote_driver_content.h"

namespace h5depot {
namespace {

using testing::CheckContent;
using testing::ExpectedDump;
using ::testing::HasSubstr;
using testing::OverwriteInts;
using testing::WriteContent;

// Takes everything off the calling thread's HDF5 error stack, one entry a
// line: "class | major | minor | description". (A copy is walked: the
// H5Eget_* calls would clear the live stack under the walk.)
std::string ErrorStack() {
  std::string text;
  hid_t stack = H5Eget_current_stack();
  H5Ewalk2(
      stack, H5E_WALK_DOWNWARD,
      [](unsigned, const H5E_error2_t* error, void* data) -> herr_t {
        char cls[128] = "", major[128] = "", minor[128] = "";
        H5Eget_class_name(error->cls_id, cls, sizeof(cls));
        H5Eget_msg(error->maj_num, nullptr, major, sizeof(major));
        H5Eget_msg(error->min_num, nullptr, minor, sizeof(minor));
        absl::StrAppend(static_cast<std::string*>(data), cls, " | ", major,
                        " | ", minor, " | ", error->desc, "\n");
        return 0;
      },
      &text);
  H5Eclose_stack(stack);
  return text;
}

// Runs the helper (a second application using the driver) to completion
// and expects it to succeed.
void ExpectHelperSucceeds(const std::vector<std::string>& args) {
  std::vector<std::string> argv = {H5DEPOT_REMOTE_DRIVER_HELPER};
  argv.insert(argv.end(), args.begin(), args.end());
  testing::CommandResult result = testing::RunCommand(argv);
  ASSERT_EQ(result.exit_code, 0) << args.front() << ": " << result.stderr_text;
}

// Stops `server` (SIGSTOP) and returns once it is stopped: it then accepts
// connections and requests but answers none.
void Freeze(const testing::ServerProcess& server) {
  kill(server.pid(), SIGSTOP);
  int status = 0;
  waitpid(server.pid(), &status, WUNTRACED);
}

class RemoteDriverTest : public ::testing::Test {
 protected:
  void SetUp() override {
    H5Eset_auto2(H5E_DEFAULT, nullptr, nullptr);
    auto depot = testing::InProcessDepot::Start();
    ASSERT_TRUE(depot.ok()) << depot.status();
    depot_ = std::move(*depot);
    target_ = depot_->target();
    auto client = depot_->Connect();
    ASSERT_TRUE(client.ok()) << client.status();
    client_ = std::move(*client);
  }

  void TearDown() override {
    for (hid_t fapl : fapls_) H5Pclose(fapl);
  }

  // A file access property list for the test server (closed at the end).
  hid_t Fapl(const H5FD_remote_config_t* config = nullptr,
             const std::string& target = "") {
    hid_t fapl = H5Pcreate(H5P_FILE_ACCESS);
    EXPECT_GE(H5Pset_fapl_remote(
                  fapl, (target.empty() ? target_ : target).c_str(), config),
              0)
        << ErrorStack();
    fapls_.push_back(fapl);
    return fapl;
  }

  // Creates `id` through the driver, holding WriteContent(seed).
  void CreateImage(const std::string& id, int seed) {
    hid_t file = H5Fcreate(id.c_str(), H5F_ACC_EXCL, H5P_DEFAULT, Fapl());
    ASSERT_GE(file, 0) << ErrorStack();
    ASSERT_TRUE(WriteContent(file, seed));
    ASSERT_GE(H5Fclose(file), 0) << ErrorStack();
  }

  uint64_t CurrentGeneration(const std::string& id) {
    auto info = client_->Stat(id);
    EXPECT_TRUE(info.ok()) << info.status();
    return info.ok() ? info->generation : 0;
  }

  H5FD_remote_file_info_t FileInfo(hid_t file) {
    H5FD_remote_file_info_t info{};
    EXPECT_GE(H5FD_remote_get_file_info(file, &info), 0) << ErrorStack();
    return info;
  }

  std::unique_ptr<testing::InProcessDepot> depot_;
  std::string target_;
  std::unique_ptr<Client> client_;
  std::vector<hid_t> fapls_;
};

TEST_F(RemoteDriverTest, AnImageCreatedInOneProcessOpensInAnother) {
  ExpectHelperSucceeds({"create", target_, "runs/from-helper", "3"});

  hid_t file = H5Fopen("runs/from-helper", H5F_ACC_RDONLY, Fapl());
  ASSERT_GE(file, 0) << ErrorStack();
  EXPECT_EQ(CheckContent(file, 3), "");
  EXPECT_EQ(FileInfo(file).generation, CurrentGeneration("runs/from-helper"));
  EXPECT_GE(H5Fclose(file), 0);

  // And the other way round: what this process creates, the helper reads.
  CreateImage("runs/from-test", 4);
  ExpectHelperSucceeds({"check", target_, "runs/from-test", "4", "4"});
}

TEST_F(RemoteDriverTest, WhatTheDriverCommittedIsWhatH5pySees) {
  CreateImage("h5py/check", 5);
  hid_t file = H5Fopen("h5py/check", H5F_ACC_RDWR, Fapl());
  ASSERT_GE(file, 0) << ErrorStack();
  ASSERT_TRUE(OverwriteInts(file, 9));
  ASSERT_GE(H5Fclose(file), 0) << ErrorStack();

  auto fetched = client_->Fetch("h5py/check");
  ASSERT_TRUE(fetched.ok()) << fetched.status();
  auto dir = testing::TempDir::Create();
  ASSERT_TRUE(dir.ok()) << dir.status();
  const std::string path = dir->File("fetched.h5");
  ASSERT_TRUE(testing::WriteFile(path, std::string(static_cast<const char*>(
                                                       fetched->buffer.data()),
                                                   fetched->buffer.size()))
                  .ok());
  testing::CommandResult dump =
      testing::RunCommand({H5DEPOT_H5PY_PYTHON, H5PY_DUMP_SCRIPT, path});
  EXPECT_EQ(dump.exit_code, 0) << dump.stderr_text;
  EXPECT_EQ(dump.stdout_text, ExpectedDump(5, 9));
}

TEST_F(RemoteDriverTest,
       AFileKeepsReadingItsGenerationWhileTheImageIsReplaced) {
  CreateImage("replaced", 1);
  CreateImage("replacement", 2);
  // One small page and no readahead: every object is fetched when read.
  H5FD_remote_config_t config = H5FD_REMOTE_CONFIG_INIT;
  config.page_size = 4096;
  config.cache_size = 4096;
  config.readahead = 0;
  hid_t file = H5Fopen("replaced", H5F_ACC_RDONLY, Fapl(&config));
  ASSERT_GE(file, 0) << ErrorStack();
  const uint64_t opened_at = FileInfo(file).generation;

  auto replacement = client_->Fetch("replacement");
  ASSERT_TRUE(replacement.ok());
  auto pushed = client_->Push("replaced", replacement->buffer.data(),
                              replacement->buffer.size());
  ASSERT_TRUE(pushed.ok()) << pushed.status();
  ASSERT_GT(pushed->generation, opened_at);

  EXPECT_EQ(CheckContent(file, 1), "");
  EXPECT_EQ(FileInfo(file).generation, opened_at);

  // A new open is a different file: it sees the new generation.
  hid_t reopened = H5Fopen("replaced", H5F_ACC_RDONLY, Fapl(&config));
  ASSERT_GE(reopened, 0) << ErrorStack();
  EXPECT_EQ(CheckContent(reopened, 2), "");
  EXPECT_EQ(FileInfo(reopened).generation, pushed->generation);
  EXPECT_GE(H5Fclose(reopened), 0);
  EXPECT_GE(H5Fclose(file), 0);
}

TEST_F(RemoteDriverTest, OfTwoWritersOfOneGenerationTheSecondToCommitFails) {
  CreateImage("contended", 1);
  hid_t file = H5Fopen("contended", H5F_ACC_RDWR, Fapl());
  ASSERT_GE(file, 0) << ErrorStack();
  ASSERT_TRUE(OverwriteInts(file, 5));

  // Another process opens the same generation, writes and commits first.
  ExpectHelperSucceeds({"overwrite-ints", target_, "contended", "7"});
  const uint64_t winner = CurrentGeneration("contended");

  EXPECT_LT(H5Fflush(file, H5F_SCOPE_GLOBAL), 0);
  const std::string errors = ErrorStack();
  EXPECT_THAT(errors, HasSubstr("Commit conflict"));
  EXPECT_THAT(errors, HasSubstr("another client published"));
  EXPECT_THAT(errors, HasSubstr("nothing was published"));
  // The close cannot fail (HDF5 1.10 would keep a dangling file id), but
  // the lost commit goes to the automatic error handler (by default: printed
  // to stderr) and stays on the error stack after it.
  ASSERT_TRUE(OverwriteInts(file, 8));
  int reports = 0;
  H5Eset_auto2(
      H5E_DEFAULT,
      [](hid_t, void* count) -> herr_t {
        ++*static_cast<int*>(count);
        return 0;
      },
      &reports);
  EXPECT_GE(H5Fclose(file), 0);
  H5Eset_auto2(H5E_DEFAULT, nullptr, nullptr);
  EXPECT_EQ(reports, 1);
  EXPECT_THAT(ErrorStack(), HasSubstr("Commit conflict"));

  EXPECT_EQ(CurrentGeneration("contended"), winner);
  ExpectHelperSucceeds({"check", target_, "contended", "1", "7"});
}

TEST_F(RemoteDriverTest, CreatingAnIdThatAnotherClientCreatedMeanwhileFails) {
  hid_t file = H5Fcreate("raced", H5F_ACC_EXCL, H5P_DEFAULT, Fapl());
  ASSERT_GE(file, 0) << ErrorStack();
  ASSERT_TRUE(WriteContent(file, 1));
  ExpectHelperSucceeds({"create", target_, "raced", "3"});

  EXPECT_GE(H5Fclose(file), 0);
  const std::string errors = ErrorStack();
  EXPECT_THAT(errors, HasSubstr("Commit conflict"));
  EXPECT_THAT(errors, HasSubstr("created the image"));
  ExpectHelperSucceeds({"check", target_, "raced", "3", "3"});
}

TEST_F(RemoteDriverTest, CreateRefusesAnExistingIdUnlessAskedToTruncate) {
  CreateImage("existing", 1);
  const uint64_t before = CurrentGeneration("existing");
  EXPECT_LT(H5Fcreate("existing", H5F_ACC_EXCL, H5P_DEFAULT, Fapl()), 0);
  EXPECT_THAT(ErrorStack(), HasSubstr("Image already exists"));
  EXPECT_EQ(CurrentGeneration("existing"), before);

  hid_t file = H5Fcreate("existing", H5F_ACC_TRUNC, H5P_DEFAULT, Fapl());
  ASSERT_GE(file, 0) << ErrorStack();
  ASSERT_TRUE(WriteContent(file, 6));
  ASSERT_GE(H5Fclose(file), 0) << ErrorStack();
  EXPECT_GT(CurrentGeneration("existing"), before);
  ExpectHelperSucceeds({"check", target_, "existing", "6", "6"});
}

TEST_F(RemoteDriverTest, FlushPublishesAGenerationAndTheFileGoesOnFromIt) {
  CreateImage("flushed", 1);
  const uint64_t created = CurrentGeneration("flushed");
  hid_t file = H5Fopen("flushed", H5F_ACC_RDWR, Fapl());
  ASSERT_GE(file, 0) << ErrorStack();

  ASSERT_TRUE(OverwriteInts(file, 4));
  ASSERT_GE(H5Fflush(file, H5F_SCOPE_GLOBAL), 0) << ErrorStack();
  const uint64_t flushed = CurrentGeneration("flushed");
  EXPECT_GT(flushed, created);
  EXPECT_EQ(FileInfo(file).generation, flushed);
  ExpectHelperSucceeds({"check", target_, "flushed", "1", "4"});

  ASSERT_TRUE(OverwriteInts(file, 6));
  EXPECT_EQ(CheckContent(file, 1, 6), "");
  ASSERT_GE(H5Fclose(file), 0) << ErrorStack();
  EXPECT_GT(CurrentGeneration("flushed"), flushed);
  ExpectHelperSucceeds({"check", target_, "flushed", "1", "6"});
}

TEST_F(RemoteDriverTest, OpeningReadWriteWithoutWritingPublishesNothing) {
  CreateImage("untouched", 1);
  const uint64_t before = CurrentGeneration("untouched");
  hid_t file = H5Fopen("untouched", H5F_ACC_RDWR, Fapl());
  ASSERT_GE(file, 0) << ErrorStack();
  EXPECT_EQ(CheckContent(file, 1), "");
  ASSERT_GE(H5Fclose(file), 0) << ErrorStack();
  EXPECT_EQ(CurrentGeneration("untouched"), before);
}

TEST_F(RemoteDriverTest, AnUnknownImageFailsToOpenWithImageNotFound) {
  EXPECT_LT(H5Fopen("no/such/image", H5F_ACC_RDONLY, Fapl()), 0);
  const std::string errors = ErrorStack();
  EXPECT_THAT(errors, HasSubstr("h5depot remote driver"));
  EXPECT_THAT(errors, HasSubstr("Image not found"));
  EXPECT_THAT(errors, HasSubstr("no/such/image"));
}

TEST_F(RemoteDriverTest, AnInvalidImageIdIsRefusedWithTheRules) {
  EXPECT_LT(H5Fopen("a//b", H5F_ACC_RDONLY, Fapl()), 0);
  EXPECT_THAT(ErrorStack(), HasSubstr("not a valid image id"));
}

TEST_F(RemoteDriverTest, AnUnreachableServerFailsToOpenWithServerUnavailable) {
  H5FD_remote_config_t config = H5FD_REMOTE_CONFIG_INIT;
  config.connect_timeout_ms = 500;
  const std::string nowhere =
      "unix:" + ::testing::TempDir() + "/no-server-here.sock";
  EXPECT_LT(H5Fopen("anything", H5F_ACC_RDONLY, Fapl(&config, nowhere)), 0);
  const std::string errors = ErrorStack();
  EXPECT_THAT(errors, HasSubstr("Server unavailable"));
  EXPECT_THAT(errors, HasSubstr("cannot reach h5depotd"));
}

TEST_F(RemoteDriverTest, FaplSettingsRoundTripAndBadOnesAreRefused) {
  H5FD_remote_config_t config = H5FD_REMOTE_CONFIG_INIT;
  config.readahead = 0;
  config.call_timeout_ms = 1234;
  hid_t fapl = Fapl(&config);
  char target[256];
  H5FD_remote_config_t back = H5FD_REMOTE_CONFIG_INIT;
  ASSERT_GE(H5Pget_fapl_remote(fapl, target, sizeof(target), &back), 0);
  EXPECT_EQ(target, target_);
  EXPECT_EQ(back.readahead, 0u);
  EXPECT_EQ(back.call_timeout_ms, 1234u);

  // A copy of the list (as H5Fget_access_plist makes) keeps them.
  hid_t copy = H5Pcopy(fapl);
  ASSERT_GE(H5Pget_fapl_remote(copy, nullptr, 0, &back), 0);
  EXPECT_EQ(back.call_timeout_ms, 1234u);
  H5Pclose(copy);

  struct Case {
    const char* what;
    void (*spoil)(H5FD_remote_config_t*);
    const char* message;
  };
  const Case cases[] = {
      {"version", [](H5FD_remote_config_t* c) { c->version = 99; }, "version"},
      {"page", [](H5FD_remote_config_t* c) { c->page_size = 5000; },
       "power of two"},
      {"cache", [](H5FD_remote_config_t* c) { c->cache_size = 1; },
       "at least one page"},
      {"timeout", [](H5FD_remote_config_t* c) { c->call_timeout_ms = 0; },
       "hang forever"},
  };
  for (const Case& c : cases) {
    H5FD_remote_config_t bad = H5FD_REMOTE_CONFIG_INIT;
    c.spoil(&bad);
    hid_t list = H5Pcreate(H5P_FILE_ACCESS);
    EXPECT_LT(H5Pset_fapl_remote(list, target_.c_str(), &bad), 0) << c.what;
    EXPECT_THAT(ErrorStack(), HasSubstr(c.message)) << c.what;
    EXPECT_NE(H5Pget_driver(list), H5FD_REMOTE) << c.what;
    H5Pclose(list);
  }
  hid_t list = H5Pcreate(H5P_FILE_ACCESS);
  EXPECT_LT(H5Pset_fapl_remote(list, "", nullptr), 0);
  EXPECT_THAT(ErrorStack(), HasSubstr("target is empty"));
  H5Pclose(list);
}

TEST_F(RemoteDriverTest, ReadsBetweenEofAndEoaAreZerosAndReadsPastEoaFail) {
  CreateImage("eof", 1);
  H5FD_t* file = H5FDopen("eof", H5F_ACC_RDONLY, Fapl(), HADDR_MAX);
  ASSERT_NE(file, nullptr) << ErrorStack();
  const haddr_t eof = H5FDget_eof(file, H5FD_MEM_DEFAULT);
  ASSERT_GT(eof, 100u);
  ASSERT_GE(H5FDset_eoa(file, H5FD_MEM_DEFAULT, eof + 1000), 0);

  std::vector<unsigned char> bytes(600, 0xAB);
  ASSERT_GE(
      H5FDread(file, H5FD_MEM_DRAW, H5P_DEFAULT, eof - 100, 600, bytes.data()),
      0)
      << ErrorStack();
  EXPECT_NE(std::vector<unsigned char>(bytes.begin(), bytes.begin() + 100),
            std::vector<unsigned char>(100, 0));  // the image's last bytes
  EXPECT_EQ(std::vector<unsigned char>(bytes.begin() + 100, bytes.end()),
            std::vector<unsigned char>(500, 0));

  EXPECT_LT(
      H5FDread(file, H5FD_MEM_DRAW, H5P_DEFAULT, eof + 900, 200, bytes.data()),
      0);
  EXPECT_GE(H5FDclose(file), 0);
}

// An image much larger than anything read from it: /big (64 MiB of bytes)
// written first, /small (100 ints) after it, so that its object header and
// data lie past the big dataset, as in files that grow over a run.
void WriteLargeImage(hid_t file, std::vector<unsigned char>* big) {
  big->resize(64 << 20);
  for (size_t i = 0; i < big->size(); ++i)
    (*big)[i] = (i * 7 + i / 4096) & 0xff;
  const hsize_t big_dims[1] = {big->size()};
  ASSERT_GE(
      H5LTmake_dataset(file, "big", 1, big_dims, H5T_NATIVE_UCHAR, big->data()),
      0);
  std::vector<int> small(100);
  for (int i = 0; i < 100; ++i) small[i] = i * i;
  const hsize_t small_dims[1] = {100};
  ASSERT_GE(H5LTmake_dataset_int(file, "small", 1, small_dims, small.data()),
            0);
}

TEST_F(RemoteDriverTest, ReadingASmallDatasetOfALargeImageFetchesLittle) {
  std::vector<unsigned char> big;
  {
    hid_t file = H5Fcreate("large", H5F_ACC_EXCL, H5P_DEFAULT, Fapl());
    ASSERT_GE(file, 0) << ErrorStack();
    WriteLargeImage(file, &big);
    ASSERT_GE(H5Fclose(file), 0) << ErrorStack();
  }
  hid_t file = H5Fopen("large", H5F_ACC_RDONLY, Fapl());
  ASSERT_GE(file, 0) << ErrorStack();
  std::vector<int> small(100);
  ASSERT_GE(H5LTread_dataset_int(file, "small", small.data()), 0);
  EXPECT_EQ(small[99], 99 * 99);

  const H5FD_remote_file_info_t info = FileInfo(file);
  const uint64_t pages = (64 << 20) / (64 << 10);
  EXPECT_LE(info.round_trips, 6u);  // the open, then a few reads
  EXPECT_LT(info.page_misses, pages / 50);
  EXPECT_LT(info.bytes_fetched, uint64_t{2} << 20);

  // Then the whole big dataset, in a handful of requests, not per page.
  std::vector<unsigned char> read_back(big.size());
  ASSERT_GE(H5LTread_dataset(file, "big", H5T_NATIVE_UCHAR, read_back.data()),
            0);
  EXPECT_TRUE(read_back == big);
  EXPECT_LE(FileInfo(file).round_trips, info.round_trips + 4);
  EXPECT_GE(H5Fclose(file), 0);
}

TEST_F(RemoteDriverTest, EditingASmallDatasetOfALargeImageFetchesLittle) {
  std::vector<unsigned char> big;
  {
    hid_t file = H5Fcreate("edited", H5F_ACC_EXCL, H5P_DEFAULT, Fapl());
    ASSERT_GE(file, 0) << ErrorStack();
    WriteLargeImage(file, &big);
    ASSERT_GE(H5Fclose(file), 0) << ErrorStack();
  }
  const uint64_t before = CurrentGeneration("edited");
  hid_t file = H5Fopen("edited", H5F_ACC_RDWR, Fapl());
  ASSERT_GE(file, 0) << ErrorStack();
  std::vector<int> small(100, -1);
  hid_t dset = H5Dopen2(file, "small", H5P_DEFAULT);
  ASSERT_GE(H5Dwrite(dset, H5T_NATIVE_INT, H5S_ALL, H5S_ALL, H5P_DEFAULT,
                     small.data()),
            0);
  H5Dclose(dset);
  // Until the commit only what HDF5 touched came over, not the image.
  EXPECT_LT(FileInfo(file).bytes_fetched, uint64_t{2} << 20);
  ASSERT_GE(H5Fclose(file), 0) << ErrorStack();
  EXPECT_GT(CurrentGeneration("edited"), before);

  file = H5Fopen("edited", H5F_ACC_RDONLY, Fapl());
  ASSERT_GE(file, 0) << ErrorStack();
  std::vector<int> small_back(100);
  ASSERT_GE(H5LTread_dataset_int(file, "small", small_back.data()), 0);
  EXPECT_EQ(small_back, small);
  std::vector<unsigned char> big_back(big.size());
  ASSERT_GE(H5LTread_dataset(file, "big", H5T_NATIVE_UCHAR, big_back.data()),
            0);
  EXPECT_TRUE(big_back == big);
  EXPECT_GE(H5Fclose(file), 0);
}

TEST_F(RemoteDriverTest, ManyThreadsReadThroughTheDriverAtOnce) {
  constexpr int kImages = 4;
  constexpr int kThreads = 8;
  for (int i = 0; i < kImages; ++i) CreateImage(absl::StrCat("threads/", i), i);
  H5FD_remote_config_t config = H5FD_REMOTE_CONFIG_INIT;
  config.page_size = 4096;
  config.cache_size = 16384;  // small, so threads keep going to the server
  config.readahead = 4096;
  hid_t fapl = Fapl(&config);

  std::atomic<int> failures{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      for (int round = 0; round < 10; ++round) {
        const int image = (t + round) % kImages;
        hid_t file = H5Fopen(absl::StrCat("threads/", image).c_str(),
                             H5F_ACC_RDONLY, fapl);
        if (file < 0 || CheckContent(file, image) != "") ++failures;
        if (file >= 0 && H5Fclose(file) < 0) ++failures;
      }
    });
  }
  for (std::thread& thread : threads) thread.join();
  EXPECT_EQ(failures.load(), 0);
}

TEST(RemoteDriverRegistrationTest, ThreadsRacingToRegisterGetOneDriverId) {
  std::vector<hid_t> ids(8, H5I_INVALID_HID);
  std::vector<std::thread> threads;
  for (hid_t& id : ids) {
    threads.emplace_back([&id] { id = H5FD_remote_init(); });
  }
  for (std::thread& thread : threads) thread.join();
  for (hid_t id : ids) {
    EXPECT_GE(id, 0);
    EXPECT_EQ(id, ids.front());
  }
  EXPECT_EQ(H5FD_REMOTE, ids.front());
}

TEST(RemoteDriverServerProcessTest, AServerKilledMidReadFailsTheRead) {
  H5Eset_auto2(H5E_DEFAULT, nullptr, nullptr);
  auto started = testing::ServerProcess::Start();
  ASSERT_TRUE(started.ok()) << started.status();
  testing::ServerProcess& server = **started;
  H5FD_remote_config_t config = H5FD_REMOTE_CONFIG_INIT;
  config.page_size = 4096;
  config.cache_size = 4096;
  config.readahead = 0;
  hid_t fapl = H5Pcreate(H5P_FILE_ACCESS);
  ASSERT_GE(H5Pset_fapl_remote(fapl, server.target().c_str(), &config), 0);
  {
    hid_t file = H5Fcreate("doomed", H5F_ACC_EXCL, H5P_DEFAULT, fapl);
    ASSERT_GE(file, 0) << ErrorStack();
    ASSERT_TRUE(WriteContent(file, 1));
    ASSERT_GE(H5Fclose(file), 0) << ErrorStack();
  }
  hid_t file = H5Fopen("doomed", H5F_ACC_RDONLY, fapl);
  ASSERT_GE(file, 0) << ErrorStack();
  std::vector<int> ints(testing::kInts);
  ASSERT_GE(H5LTread_dataset_int(file, "ints", ints.data()), 0);

  server.Kill();
  std::vector<double> matrix(testing::kRows * testing::kCols);
  EXPECT_LT(H5LTread_dataset_double(file, "group/matrix", matrix.data()), 0);
  const std::string errors = ErrorStack();
  EXPECT_THAT(errors, HasSubstr("Server unavailable"));
  EXPECT_THAT(errors, HasSubstr("doomed"));
  H5Fclose(file);  // read-only: nothing to lose, whatever it returns
  H5Pclose(fapl);
}

TEST(RemoteDriverServerProcessTest, AStoppedServerFailsReadsWithATimeout) {
  H5Eset_auto2(H5E_DEFAULT, nullptr, nullptr);
  auto started = testing::ServerProcess::Start();
  ASSERT_TRUE(started.ok()) << started.status();
  testing::ServerProcess& server = **started;
  H5FD_remote_config_t config = H5FD_REMOTE_CONFIG_INIT;
  config.page_size = 4096;
  config.cache_size = 4096;
  config.readahead = 0;
  config.call_timeout_ms = 1000;
  hid_t fapl = H5Pcreate(H5P_FILE_ACCESS);
  ASSERT_GE(H5Pset_fapl_remote(fapl, server.target().c_str(), &config), 0);
  {
    hid_t file = H5Fcreate("stalled", H5F_ACC_EXCL, H5P_DEFAULT, fapl);
    ASSERT_GE(file, 0) << ErrorStack();
    ASSERT_TRUE(WriteContent(file, 1));
    ASSERT_GE(H5Fclose(file), 0) << ErrorStack();
  }
  hid_t file = H5Fopen("stalled", H5F_ACC_RDONLY, fapl);
  ASSERT_GE(file, 0) << ErrorStack();

  Freeze(server);
  std::vector<double> matrix(testing::kRows * testing::kCols);
  EXPECT_LT(H5LTread_dataset_double(file, "group/matrix", matrix.data()), 0);
  EXPECT_THAT(ErrorStack(), HasSubstr("Timed out"));
  // Closing ends the reader that pins the generation, which waits for the
  // server's goodbye; a stopped server would only be given up on by the
  // connection's keepalive, so let it die first.
  server.Kill();
  H5Fclose(file);
  H5Pclose(fapl);
}

// What happens to the server between the reads of
// ReadsAfterAFailedReadFailToo.
enum class ServerFault { kKilled, kStopped };

// Reads `count` ints of the one-dimensional int dataset `dset` from
// element `start`; negative if HDF5 reports a failure.
herr_t ReadInts(hid_t dset, hsize_t start, hsize_t count, int* out) {
  hid_t file_space = H5Dget_space(dset);
  hid_t memory_space = H5Screate_simple(1, &count, nullptr);
  herr_t status = H5Sselect_hyperslab(file_space, H5S_SELECT_SET, &start,
                                      nullptr, &count, nullptr);
  if (status >= 0) {
    status = H5Dread(dset, H5T_NATIVE_INT, memory_space, file_space,
                     H5P_DEFAULT, out);
  }
  H5Sclose(memory_space);
  H5Sclose(file_space);
  return status;
}

class RemoteDriverFaultTest : public ::testing::TestWithParam<ServerFault> {};

// HDF5's data sieve and metadata accumulator move to the address of a read
// before the driver fills them, and stay there when it fails: a driver that
// offered them would let the next nearby read "succeed" with the bytes of
// the previous window. Whatever the server did, a read the driver could not
// serve fails, and so does every read after it that needs the same bytes.
TEST_P(RemoteDriverFaultTest, ReadsAfterAFailedReadFailToo) {
  H5Eset_auto2(H5E_DEFAULT, nullptr, nullptr);
  auto started = testing::ServerProcess::Start();
  ASSERT_TRUE(started.ok()) << started.status();
  testing::ServerProcess& server = **started;
  H5FD_remote_config_t config = H5FD_REMOTE_CONFIG_INIT;
  config.page_size = 4096;  // the cache holds one small page, no more
  config.cache_size = 4096;
  config.readahead = 0;
  config.call_timeout_ms = 1000;
  hid_t fapl = H5Pcreate(H5P_FILE_ACCESS);
  ASSERT_GE(H5Pset_fapl_remote(fapl, server.target().c_str(), &config), 0);
  // 512 KiB of contiguous ints, eight times HDF5's default sieve buffer.
  constexpr hsize_t kCount = 128 * 1024;
  std::vector<int> values(kCount);
  for (hsize_t i = 0; i < kCount; ++i) values[i] = static_cast<int>(i) * 7;
  {
    hid_t file = H5Fcreate("fragile", H5F_ACC_EXCL, H5P_DEFAULT, fapl);
    ASSERT_GE(file, 0) << ErrorStack();
    ASSERT_GE(H5LTmake_dataset_int(file, "ints", 1, &kCount, values.data()), 0);
    ASSERT_GE(H5Fclose(file), 0) << ErrorStack();
  }
  hid_t file = H5Fopen("fragile", H5F_ACC_RDONLY, fapl);
  ASSERT_GE(file, 0) << ErrorStack();
  hid_t dset = H5Dopen2(file, "ints", H5P_DEFAULT);
  ASSERT_GE(dset, 0) << ErrorStack();
  constexpr hsize_t kRead = 512;
  std::vector<int> got(kRead);
  ASSERT_GE(ReadInts(dset, 0, kRead, got.data()), 0) << ErrorStack();
  ASSERT_TRUE(std::equal(got.begin(), got.end(), values.begin()));

  if (GetParam() == ServerFault::kKilled) {
    server.Kill();
  } else {
    Freeze(server);
  }
  // Far from the first read and from the driver's one cached page.
  const hsize_t far = kCount / 4;
  EXPECT_LT(ReadInts(dset, far, kRead, got.data()), 0);
  H5Eclear2(H5E_DEFAULT);
  for (hsize_t start : {far, far + kRead, far + 8 * kRead}) {
    std::fill(got.begin(), got.end(), -1);
    const herr_t status = ReadInts(dset, start, kRead, got.data());
    const bool right = std::equal(got.begin(), got.end(),
                                  values.begin() + static_cast<long>(start));
    EXPECT_LT(status, 0) << "a read from element " << start
                         << " succeeded with "
                         << (right ? "the right" : "wrong") << " values";
    H5Eclear2(H5E_DEFAULT);
  }
  // A stopped server would hold the reader's goodbye until keepalive gives
  // up on it; a dead one answers at once.
  server.Kill();
  H5Dclose(dset);
  H5Fclose(file);  // read-only: nothing to lose, whatever it returns
  H5Pclose(fapl);
}

// The token on the file access property list, against a server started
// with an auth file: a writer, a reader limited to "shared/", and no
// token in the environment.
class RemoteDriverTokenTest : public ::testing::Test {
 protected:
  static constexpr const char* kWriter = "writer-token-0123456789";
  static constexpr const char* kReader = "reader-token-0123456789";

  void SetUp() override {
    H5Eset_auto2(H5E_DEFAULT, nullptr, nullptr);
    unsetenv("H5DEPOT_TOKEN");
    unsetenv("H5DEPOT_TOKEN_FILE");
    auto dir = testing::TempDir::Create();
    ASSERT_TRUE(dir.ok()) << dir.status();
    dir_.emplace(*std::move(dir));
    const std::string auth = absl::StrCat(
        "writer write ", internal::TokenHash(kWriter), "\n", "reader read ",
        internal::TokenHash(kReader), " shared/\n");
    ASSERT_TRUE(testing::WriteFile(dir_->File("auth"), auth).ok());
    server::ServerOptions options;
    options.auth_file = dir_->File("auth");
    auto depot =
        testing::InProcessDepot::Start(options, testing::Listeners::kUnix);
    ASSERT_TRUE(depot.ok()) << depot.status();
    depot_ = std::move(*depot);
  }

  void TearDown() override {
    for (hid_t fapl : fapls_) H5Pclose(fapl);
  }

  // A file access property list for the server with `token` (null: none).
  hid_t Fapl(const char* token) {
    H5FD_remote_config_t config = H5FD_REMOTE_CONFIG_INIT;
    config.token = token;
    hid_t fapl = H5Pcreate(H5P_FILE_ACCESS);
    EXPECT_GE(H5Pset_fapl_remote(fapl, depot_->target().c_str(), &config), 0)
        << ErrorStack();
    fapls_.push_back(fapl);
    return fapl;
  }

  std::optional<testing::TempDir> dir_;
  std::unique_ptr<testing::InProcessDepot> depot_;
  std::vector<hid_t> fapls_;
};

TEST_F(RemoteDriverTokenTest, AFileOpensWithTheTokenOnItsFapl) {
  // The token is copied: the caller's string may go at once.
  std::string token = kWriter;
  hid_t fapl = Fapl(token.c_str());
  token.assign(token.size(), 'x');
  hid_t file = H5Fcreate("shared/run", H5F_ACC_EXCL, H5P_DEFAULT, fapl);
  ASSERT_GE(file, 0) << ErrorStack();
  ASSERT_TRUE(WriteContent(file, 6));
  ASSERT_GE(H5Fclose(file), 0) << ErrorStack();

  file = H5Fopen("shared/run", H5F_ACC_RDONLY, fapl);
  ASSERT_GE(file, 0) << ErrorStack();
  EXPECT_EQ(CheckContent(file, 6), "");
  EXPECT_GE(H5Fclose(file), 0);
}

TEST_F(RemoteDriverTokenTest, AWrongOrMissingTokenFailsToOpen) {
  hid_t good =
      H5Fcreate("shared/held", H5F_ACC_EXCL, H5P_DEFAULT, Fapl(kWriter));
  ASSERT_GE(good, 0) << ErrorStack();
  ASSERT_TRUE(WriteContent(good, 2));
  ASSERT_GE(H5Fflush(good, H5F_SCOPE_GLOBAL), 0) << ErrorStack();

  // Not even while a file of the same image is open with a good token:
  // HDF5 must not hand the open file to another token's open.
  EXPECT_LT(H5Fopen("shared/held", H5F_ACC_RDONLY, Fapl("not-a-known-token")),
            0);
  EXPECT_THAT(ErrorStack(), HasSubstr("not one this server knows"));
  EXPECT_LT(H5Fopen("shared/held", H5F_ACC_RDONLY, Fapl(nullptr)), 0);
  EXPECT_THAT(ErrorStack(), HasSubstr("needs a token"));
  EXPECT_GE(H5Fclose(good), 0);
}

TEST_F(RemoteDriverTokenTest, TwoFaplsWithDifferentTokensKeepTheirOwnGrants) {
  hid_t writer = Fapl(kWriter);
  hid_t reader = Fapl(kReader);
  hid_t file = H5Fcreate("shared/both", H5F_ACC_EXCL, H5P_DEFAULT, writer);
  ASSERT_GE(file, 0) << ErrorStack();
  ASSERT_TRUE(WriteContent(file, 3));
  ASSERT_GE(H5Fclose(file), 0) << ErrorStack();

  // The reader's list reaches the server with the reader's token, not the
  // writer's connection: it reads, and may not push.
  file = H5Fopen("shared/both", H5F_ACC_RDONLY, reader);
  ASSERT_GE(file, 0) << ErrorStack();
  EXPECT_EQ(CheckContent(file, 3), "");
  EXPECT_GE(H5Fclose(file), 0);
  // Its commit of a new image is refused (a created file is only local
  // until then).
  hid_t created =
      H5Fcreate("shared/by-reader", H5F_ACC_EXCL, H5P_DEFAULT, reader);
  ASSERT_GE(created, 0) << ErrorStack();
  ASSERT_TRUE(WriteContent(created, 4));
  EXPECT_LT(H5Fflush(created, H5F_SCOPE_GLOBAL), 0);
  EXPECT_THAT(ErrorStack(), HasSubstr("has the role read, which may not"));
  H5Fclose(created);
  H5Eclear2(H5E_DEFAULT);
  EXPECT_FALSE(depot_->store().Get("shared/by-reader").ok());

  // Both at once, each open with its own token.
  hid_t as_writer = H5Fopen("shared/both", H5F_ACC_RDONLY, writer);
  hid_t as_reader = H5Fopen("shared/both", H5F_ACC_RDONLY, reader);
  ASSERT_GE(as_writer, 0) << ErrorStack();
  ASSERT_GE(as_reader, 0) << ErrorStack();
  EXPECT_EQ(CheckContent(as_reader, 3), "");
  EXPECT_GE(H5Fclose(as_reader), 0);
  EXPECT_GE(H5Fclose(as_writer), 0);
}

TEST_F(RemoteDriverTokenTest, TheTokenIsNeverHandedBackAndVersion1IsRead) {
  hid_t fapl = Fapl(kWriter);
  H5FD_remote_config_t back = H5FD_REMOTE_CONFIG_INIT;
  back.token = "untouched";
  ASSERT_GE(H5Pget_fapl_remote(fapl, nullptr, 0, &back), 0);
  EXPECT_EQ(back.version, H5FD_REMOTE_CONFIG_VERSION);
  EXPECT_EQ(back.token, nullptr);

  // A version 1 struct has no token field: whatever follows it is never
  // read (here a pointer that would crash if it were).
  H5FD_remote_config_t v1 = H5FD_REMOTE_CONFIG_INIT;
  v1.version = 1;
  v1.call_timeout_ms = 4321;
  v1.token = reinterpret_cast<const char*>(uintptr_t{1});
  hid_t list = H5Pcreate(H5P_FILE_ACCESS);
  ASSERT_GE(H5Pset_fapl_remote(list, depot_->target().c_str(), &v1), 0)
      << ErrorStack();
  H5FD_remote_config_t v1_back = H5FD_REMOTE_CONFIG_INIT;
  v1_back.version = 1;
  v1_back.token = "after the version 1 fields";
  ASSERT_GE(H5Pget_fapl_remote(list, nullptr, 0, &v1_back), 0);
  EXPECT_EQ(v1_back.version, 1);
  EXPECT_EQ(v1_back.call_timeout_ms, 4321u);
  EXPECT_STREQ(v1_back.token, "after the version 1 fields");
  // Without a token of its own the list uses the environment's: none here.
  EXPECT_LT(H5Fopen("shared/none", H5F_ACC_RDONLY, list), 0);
  EXPECT_THAT(ErrorStack(), HasSubstr("needs a token"));
  H5Pclose(list);

  // A token the server could never accept is refused up front, unquoted.
  H5FD_remote_config_t spaced = H5FD_REMOTE_CONFIG_INIT;
  spaced.token = "secret phrase";
  list = H5Pcreate(H5P_FILE_ACCESS);
  EXPECT_LT(H5Pset_fapl_remote(list, depot_->target().c_str(), &spaced), 0);
  const std::string errors = ErrorStack();
  EXPECT_THAT(errors, HasSubstr("token"));
  EXPECT_THAT(errors, ::testing::Not(HasSubstr("secret")));
  H5Pclose(list);
}

INSTANTIATE_TEST_SUITE_P(
    KilledAndStopped, RemoteDriverFaultTest,
    ::testing::Values(ServerFault::kKilled, ServerFault::kStopped),
    [](const ::testing::TestParamInfo<ServerFault>& fault) {
      return fault.param == ServerFault::kKilled ? "Killed" : "Stopped";
    });

}  // namespace
}  // namespace h5depot
