// h5depot_create_memory_file, the C form of CreateMemoryFile: its results
// and error reporting (the file itself is covered by memory_file_test.cc,
// which needs no gRPC and so also runs under ThreadSanitizer).
#include <cstring>
#include <optional>

#include "client/src/memory_file_internal.h"
#include "gtest/gtest.h"
#include "h5depot/h5depot.h"
#include "h5depot/testing/hdf5_datasets.h"

namespace h5depot {
namespace {

using ::h5depot::internal::LiveMemoryFiles;
using ::h5depot::internal::SealedFileImage;
using ::h5depot::internal::SealMemoryFile;
using ::h5depot::testing::ReadDataset;
using ::h5depot::testing::WriteDataset;

TEST(MemoryFileCApiTest, CreatesAMemoryFile) {
  hid_t file = h5depot_create_memory_file(H5P_DEFAULT, H5P_DEFAULT);
  ASSERT_GE(file, 0) << h5depot_errmsg();
  ASSERT_TRUE(WriteDataset(file, "ints", std::vector<int>{1, 2, 3}));
  EXPECT_EQ(ReadDataset<int>(file, "ints"), (std::vector<int>{1, 2, 3}));
  absl::StatusOr<std::optional<SealedFileImage>> sealed = SealMemoryFile(file);
  ASSERT_TRUE(sealed.ok()) << sealed.status();
  EXPECT_TRUE(sealed->has_value());
  EXPECT_EQ(H5Fclose(file), 0);
  EXPECT_EQ(LiveMemoryFiles(), 0u);
}

TEST(MemoryFileCApiTest, ReportsAListHdf5Refuses) {
  hid_t fcpl = H5Pcreate(H5P_FILE_CREATE);
  // A file creation list where the access list belongs.
  EXPECT_EQ(h5depot_create_memory_file(H5P_DEFAULT, fcpl), H5I_INVALID_HID);
  EXPECT_EQ(h5depot_errcode(), H5DEPOT_INVALID_ARGUMENT);
  EXPECT_NE(std::strlen(h5depot_errmsg()), 0u);
  H5Pclose(fcpl);
  EXPECT_EQ(LiveMemoryFiles(), 0u);
}

}  // namespace
}  // namespace h5depot
