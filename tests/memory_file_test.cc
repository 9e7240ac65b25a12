// Memory files (h5depot/memory_file.h): HDF5 files created in a memfd, and
// sealing their image for a same-host push (client/src/memory_file_internal.h).
// Covers which callbacks HDF5's core driver calls for a new file, writing
// and reading back, growth, what the kernel refuses on a sealed image,
// that a sealed image never changes while the file goes on, files that are
// not memory files, descriptors and mappings left behind, and threads.
#include "h5depot/memory_file.h"

#include <dirent.h>
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstdint>
#include <cstring>
#include <fstream>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "client/src/memory_file_internal.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "h5depot/file_image.h"
#include "h5depot/internal/memfd.h"
#include "h5depot/testing/hdf5_datasets.h"

namespace h5depot {
namespace {

using ::h5depot::internal::CheckSealedImage;
using ::h5depot::internal::kSealsFromClient;
using ::h5depot::internal::LiveMemoryFiles;
using ::h5depot::internal::Mapping;
using ::h5depot::internal::SealedFileImage;
using ::h5depot::internal::SealMemoryFile;
using ::h5depot::testing::QuietHdf5Errors;
using ::h5depot::testing::ReadDataset;
using ::h5depot::testing::WriteDataset;
using ::testing::ElementsAre;
using ::testing::HasSubstr;

std::vector<int> Iota(size_t count, int start) {
  std::vector<int> values(count);
  for (size_t i = 0; i < count; ++i) values[i] = start + static_cast<int>(i);
  return values;
}

size_t OpenDescriptors() {
  size_t count = 0;
  DIR* dir = opendir("/proc/self/fd");
  if (dir == nullptr) return 0;
  while (dirent* entry = readdir(dir)) {
    if (entry->d_name[0] != '.') ++count;
  }
  closedir(dir);
  return count - 1;  // opendir's own
}

// Mappings of memory files' memfds ("/memfd:h5depot-memory-file").
size_t MemoryFileMappings() {
  std::ifstream maps("/proc/self/maps");
  size_t count = 0;
  for (std::string line; std::getline(maps, line);) {
    if (line.find("memfd:h5depot-memory-file") != std::string::npos) ++count;
  }
  return count;
}

bool WriteIntAttribute(hid_t object, const char* name, int value) {
  hid_t space = H5Screate(H5S_SCALAR);
  hid_t attribute =
      H5Acreate2(object, name, H5T_NATIVE_INT, space, H5P_DEFAULT, H5P_DEFAULT);
  H5Sclose(space);
  if (attribute < 0) return false;
  const herr_t written = H5Awrite(attribute, H5T_NATIVE_INT, &value);
  H5Aclose(attribute);
  return written >= 0;
}

int ReadIntAttribute(hid_t object, const char* name) {
  int value = -1;
  hid_t attribute = H5Aopen(object, name, H5P_DEFAULT);
  if (attribute < 0) return -1;
  if (H5Aread(attribute, H5T_NATIVE_INT, &value) < 0) value = -1;
  H5Aclose(attribute);
  return value;
}

// A sealed image mapped read-only and opened as an HDF5 file without a
// copy; closes the file before unmapping.
class OpenedSeal {
 public:
  explicit OpenedSeal(const SealedFileImage& image) {
    absl::StatusOr<Mapping> mapping =
        Mapping::Map(image.fd.get(), image.size, Mapping::Access::kReadOnly);
    EXPECT_TRUE(mapping.ok()) << mapping.status();
    if (!mapping.ok()) return;
    mapping_ = *std::move(mapping);
    absl::StatusOr<hid_t> file =
        OpenFileImage(mapping_.data(), image.size,
                      H5LT_FILE_IMAGE_DONT_COPY | H5LT_FILE_IMAGE_DONT_RELEASE);
    EXPECT_TRUE(file.ok()) << file.status();
    if (file.ok()) file_ = *file;
  }
  ~OpenedSeal() {
    if (file_ >= 0) {
      EXPECT_GE(H5Fclose(file_), 0);
    }
  }
  hid_t file() const { return file_; }

 private:
  Mapping mapping_;
  hid_t file_ = H5I_INVALID_HID;
};

SealedFileImage Seal(hid_t file) {
  absl::StatusOr<std::optional<SealedFileImage>> sealed = SealMemoryFile(file);
  EXPECT_TRUE(sealed.ok()) << sealed.status();
  if (!sealed.ok() || !sealed->has_value()) return {};
  return std::move(**sealed);
}

class MemoryFileTest : public ::testing::Test {
 protected:
  void SetUp() override {
    descriptors_ = OpenDescriptors();
    mappings_ = MemoryFileMappings();
  }
  void TearDown() override {
    EXPECT_EQ(LiveMemoryFiles(), 0u);
    EXPECT_EQ(OpenDescriptors(), descriptors_);
    EXPECT_EQ(MemoryFileMappings(), mappings_);
  }

  size_t descriptors_ = 0;
  size_t mappings_ = 0;
};

// What the core driver of this HDF5 calls, as docs/FILE_IMAGES.md says:
// for a new file without a backing store, only image_realloc (from NULL
// first) and image_free at close.
struct Trace {
  std::vector<std::string> calls;
};

void* TraceMalloc(size_t size, H5FD_file_image_op_t op, void* udata) {
  static_cast<Trace*>(udata)->calls.push_back(absl::StrCat("malloc ", op));
  return malloc(size);
}
void* TraceMemcpy(void* dest, const void* src, size_t size,
                  H5FD_file_image_op_t op, void* udata) {
  static_cast<Trace*>(udata)->calls.push_back(absl::StrCat("memcpy ", op));
  return memcpy(dest, src, size);
}
void* TraceRealloc(void* ptr, size_t size, H5FD_file_image_op_t op,
                   void* udata) {
  static_cast<Trace*>(udata)->calls.push_back(
      absl::StrCat("realloc ", ptr == nullptr ? "null " : "", size, " ", op));
  return realloc(ptr, size);
}
herr_t TraceFree(void* ptr, H5FD_file_image_op_t op, void* udata) {
  static_cast<Trace*>(udata)->calls.push_back(absl::StrCat("free ", op));
  free(ptr);
  return 0;
}
void* TraceUdataCopy(void* udata) { return udata; }
herr_t TraceUdataFree(void*) { return 0; }

// A mapping whose pages are made at once (MAP_POPULATE) is the same memory
// as one that faults them in: what is written through one is read through
// the others, to the last byte.
TEST(MappingTest, PagesMadeAtOnceAreTheSameMemory) {
  constexpr size_t kSize = (size_t{3} << 20) + 123;
  absl::StatusOr<internal::UniqueFd> memfd =
      internal::CreateMemfd("mapping-test", kSize);
  ASSERT_TRUE(memfd.ok()) << memfd.status();
  absl::StatusOr<Mapping> written =
      Mapping::Map(memfd->get(), kSize, Mapping::Access::kReadWrite,
                   Mapping::Pages::kAtOnce);
  ASSERT_TRUE(written.ok()) << written.status();
  auto* bytes = static_cast<uint8_t*>(written->data());
  for (size_t at = 0; at < kSize; ++at)
    bytes[at] = static_cast<uint8_t>(at * 7);
  for (const Mapping::Pages pages :
       {Mapping::Pages::kAtOnce, Mapping::Pages::kOnFirstTouch}) {
    absl::StatusOr<Mapping> read =
        Mapping::Map(memfd->get(), kSize, Mapping::Access::kReadOnly, pages);
    ASSERT_TRUE(read.ok()) << read.status();
    EXPECT_EQ(std::memcmp(read->data(), bytes, kSize), 0);
  }
}

TEST(CoreDriverTest, NewFileCallsOnlyReallocAndFreeAtClose) {
  Trace trace;
  H5FD_file_image_callbacks_t callbacks = {
      TraceMalloc,    TraceMemcpy,    TraceRealloc, TraceFree,
      TraceUdataCopy, TraceUdataFree, &trace};
  hid_t fapl = H5Pcreate(H5P_FILE_ACCESS);
  ASSERT_GE(H5Pset_fapl_core(fapl, 4096, 0), 0);
  ASSERT_GE(H5Pset_file_image_callbacks(fapl, &callbacks), 0);
  hid_t file =
      H5Fcreate("/dev/null/h5depot-trace", H5F_ACC_EXCL, H5P_DEFAULT, fapl);
  ASSERT_GE(file, 0);
  H5Pclose(fapl);
  const std::vector<std::string> at_create = trace.calls;
  ASSERT_TRUE(WriteDataset(file, "big", Iota(5000, 0)));
  ASSERT_GE(H5Fflush(file, H5F_SCOPE_LOCAL), 0);
  const std::vector<std::string> at_flush = trace.calls;
  ASSERT_GE(H5Fclose(file), 0);

  // H5Fcreate writes the superblock: the first buffer comes from a resize
  // of none. Later writes and the flush only resize, the close frees.
  const std::string resize = absl::StrCat(" ", H5FD_FILE_IMAGE_OP_FILE_RESIZE);
  ASSERT_EQ(at_create.size(), 1u) << absl::StrJoin(at_create, "\n");
  EXPECT_THAT(at_create[0], HasSubstr("realloc null "));
  EXPECT_THAT(at_create[0], ::testing::EndsWith(resize));
  ASSERT_GT(at_flush.size(), 1u);
  for (size_t i = 1; i < at_flush.size(); ++i) {
    EXPECT_THAT(at_flush[i], ::testing::StartsWith("realloc ")) << at_flush[i];
    EXPECT_THAT(at_flush[i], ::testing::Not(HasSubstr("null")));
    EXPECT_THAT(at_flush[i], ::testing::EndsWith(resize));
  }
  ASSERT_EQ(trace.calls.size(), at_flush.size() + 1)
      << absl::StrJoin(trace.calls, "\n");
  EXPECT_EQ(trace.calls.back(),
            absl::StrCat("free ", H5FD_FILE_IMAGE_OP_FILE_CLOSE));
}

TEST_F(MemoryFileTest, WritesDatasetsAndAttributesAndReadsThemBack) {
  absl::StatusOr<hid_t> file = CreateMemoryFile();
  ASSERT_TRUE(file.ok()) << file.status();
  EXPECT_EQ(LiveMemoryFiles(), 1u);
  ASSERT_TRUE(WriteDataset(*file, "ints", Iota(1000, 7)));
  ASSERT_TRUE(WriteDataset(*file, "doubles", std::vector<double>{1.5, 2.5}));
  ASSERT_TRUE(WriteIntAttribute(*file, "answer", 42));
  hid_t group =
      H5Gcreate2(*file, "group", H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
  ASSERT_GE(group, 0);
  ASSERT_TRUE(WriteDataset(group, "inner", Iota(10, -5)));
  H5Gclose(group);

  EXPECT_EQ(ReadDataset<int>(*file, "ints"), Iota(1000, 7));
  EXPECT_EQ(ReadDataset<double>(*file, "doubles"),
            (std::vector<double>{1.5, 2.5}));
  EXPECT_EQ(ReadIntAttribute(*file, "answer"), 42);
  EXPECT_EQ(ReadDataset<int>(*file, "group/inner"), Iota(10, -5));
  EXPECT_EQ(MemoryFileMappings(), mappings_ + 1);
  EXPECT_EQ(H5Fclose(*file), 0);
}

TEST_F(MemoryFileTest, GrowsAcrossManyIncrements) {
  absl::StatusOr<hid_t> file = CreateMemoryFile();
  ASSERT_TRUE(file.ok()) << file.status();
  // 40 datasets of 40,000 bytes: the 64 KiB increment many times over.
  for (int i = 0; i < 40; ++i) {
    ASSERT_TRUE(WriteDataset(*file, absl::StrCat("d", i).c_str(),
                             Iota(10000, i * 10000)));
  }
  ASSERT_GE(H5Fflush(*file, H5F_SCOPE_LOCAL), 0);
  EXPECT_GT(H5Fget_file_image(*file, nullptr, 0), 1600000);
  for (int i = 0; i < 40; ++i) {
    EXPECT_EQ(ReadDataset<int>(*file, absl::StrCat("d", i).c_str()),
              Iota(10000, i * 10000));
  }
  EXPECT_EQ(H5Fclose(*file), 0);
}

TEST_F(MemoryFileTest, TakesTheCallersPropertyLists) {
  hid_t fcpl = H5Pcreate(H5P_FILE_CREATE);
  ASSERT_GE(H5Pset_userblock(fcpl, 512), 0);
  hid_t fapl = H5Pcreate(H5P_FILE_ACCESS);
  ASSERT_GE(H5Pset_libver_bounds(fapl, H5F_LIBVER_V18, H5F_LIBVER_LATEST), 0);
  absl::StatusOr<hid_t> file = CreateMemoryFile(fcpl, fapl);
  ASSERT_TRUE(file.ok()) << file.status();
  ASSERT_TRUE(WriteDataset(*file, "ints", Iota(100, 1)));
  SealedFileImage sealed = Seal(*file);
  ASSERT_TRUE(sealed.fd);
  {
    OpenedSeal opened(sealed);
    ASSERT_GE(opened.file(), 0);
    EXPECT_EQ(ReadDataset<int>(opened.file(), "ints"), Iota(100, 1));
  }
  // The caller's lists are unchanged and still theirs.
  EXPECT_EQ(H5Pget_driver(fapl), H5FD_SEC2);
  EXPECT_EQ(H5Pclose(fapl), 0);
  EXPECT_EQ(H5Pclose(fcpl), 0);
  EXPECT_EQ(H5Fclose(*file), 0);
}

// A version 3 superblock records that the file is open for writing; the
// sealed image says closed, as HDF5 wants to open it, and the open file
// keeps its own.
TEST_F(MemoryFileTest, SealsASuperblockVersion3File) {
  hid_t fapl = H5Pcreate(H5P_FILE_ACCESS);
  ASSERT_GE(H5Pset_libver_bounds(fapl, H5F_LIBVER_LATEST, H5F_LIBVER_LATEST),
            0);
  absl::StatusOr<hid_t> file = CreateMemoryFile(H5P_DEFAULT, fapl);
  H5Pclose(fapl);
  ASSERT_TRUE(file.ok()) << file.status();
  ASSERT_TRUE(WriteDataset(*file, "ints", Iota(100, 1)));
  SealedFileImage sealed = Seal(*file);
  ASSERT_TRUE(sealed.fd);
  ASSERT_TRUE(WriteDataset(*file, "more", Iota(100000, 2)));
  SealedFileImage second = Seal(*file);
  ASSERT_TRUE(second.fd);
  {
    OpenedSeal opened(sealed);
    ASSERT_GE(opened.file(), 0);
    EXPECT_EQ(ReadDataset<int>(opened.file(), "ints"), Iota(100, 1));
  }
  {
    OpenedSeal opened(second);
    ASSERT_GE(opened.file(), 0);
    EXPECT_EQ(ReadDataset<int>(opened.file(), "more"), Iota(100000, 2));
  }
  ASSERT_TRUE(WriteDataset(*file, "ints", Iota(100, 3)));
  EXPECT_EQ(H5Fclose(*file), 0);
}

TEST_F(MemoryFileTest, RefusesAFileAccessListWithAnImage) {
  hid_t fapl = H5Pcreate(H5P_FILE_ACCESS);
  char bytes[16] = {};
  ASSERT_GE(H5Pset_file_image(fapl, bytes, sizeof(bytes)), 0);
  absl::StatusOr<hid_t> file = CreateMemoryFile(H5P_DEFAULT, fapl);
  EXPECT_EQ(file.status().code(), absl::StatusCode::kInvalidArgument);
  H5Pclose(fapl);
}

TEST_F(MemoryFileTest, SealedImageIsRefusedEveryWriteByTheKernel) {
  absl::StatusOr<hid_t> file = CreateMemoryFile();
  ASSERT_TRUE(file.ok()) << file.status();
  ASSERT_TRUE(WriteDataset(*file, "ints", Iota(1000, 0)));
  SealedFileImage sealed = Seal(*file);
  ASSERT_TRUE(sealed.fd);
  const int fd = sealed.fd.get();
  EXPECT_EQ(H5Fget_file_image(*file, nullptr, 0),
            static_cast<ssize_t>(sealed.size));
  absl::StatusOr<uint64_t> length =
      CheckSealedImage(fd, kSealsFromClient, sealed.size);
  ASSERT_TRUE(length.ok()) << length.status();
  EXPECT_GE(*length, sealed.size);
  EXPECT_EQ(fcntl(fd, F_GETFD) & FD_CLOEXEC, FD_CLOEXEC);

  char byte = 1;
  EXPECT_EQ(pwrite(fd, &byte, 1, 0), -1);
  EXPECT_EQ(errno, EPERM);
  EXPECT_EQ(ftruncate(fd, 1), -1);
  EXPECT_EQ(ftruncate(fd, static_cast<off_t>(*length) + 4096), -1);
  void* writable =
      mmap(nullptr, sealed.size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
  EXPECT_EQ(writable, MAP_FAILED);
  if (writable != MAP_FAILED) munmap(writable, sealed.size);
  EXPECT_EQ(fcntl(fd, F_ADD_SEALS, 0), -1);  // F_SEAL_SEAL
  EXPECT_EQ(H5Fclose(*file), 0);
}

TEST_F(MemoryFileTest, SealedImageKeepsTheDataAsOfTheSeal) {
  absl::StatusOr<hid_t> file = CreateMemoryFile();
  ASSERT_TRUE(file.ok()) << file.status();
  ASSERT_TRUE(WriteDataset(*file, "ints", Iota(1000, 0)));
  ASSERT_TRUE(WriteIntAttribute(*file, "version", 1));
  SealedFileImage first = Seal(*file);
  ASSERT_TRUE(first.fd);

  // The file stays open and writable: overwrite in place, add, and grow
  // well past the mapping the seal took.
  ASSERT_TRUE(WriteDataset(*file, "ints", Iota(1000, 5000)));
  ASSERT_TRUE(WriteDataset(*file, "later", Iota(300000, 3)));
  hid_t root = H5Gopen2(*file, "/", H5P_DEFAULT);
  ASSERT_GE(H5Adelete(root, "version"), 0);
  ASSERT_TRUE(WriteIntAttribute(root, "version", 2));
  H5Gclose(root);
  EXPECT_EQ(ReadDataset<int>(*file, "ints"), Iota(1000, 5000));
  EXPECT_EQ(ReadDataset<int>(*file, "later"), Iota(300000, 3));

  {
    OpenedSeal opened(first);
    ASSERT_GE(opened.file(), 0);
    EXPECT_EQ(ReadDataset<int>(opened.file(), "ints"), Iota(1000, 0));
    EXPECT_EQ(ReadIntAttribute(opened.file(), "version"), 1);
    EXPECT_EQ(H5Lexists(opened.file(), "later", H5P_DEFAULT), 0);
  }

  SealedFileImage second = Seal(*file);
  ASSERT_TRUE(second.fd);
  EXPECT_GT(second.size, first.size);
  ASSERT_TRUE(WriteDataset(*file, "ints", Iota(1000, 9000)));
  {
    OpenedSeal opened(second);
    ASSERT_GE(opened.file(), 0);
    EXPECT_EQ(ReadDataset<int>(opened.file(), "ints"), Iota(1000, 5000));
    EXPECT_EQ(ReadDataset<int>(opened.file(), "later"), Iota(300000, 3));
    EXPECT_EQ(ReadIntAttribute(opened.file(), "version"), 2);
  }
  {
    OpenedSeal opened(first);
    ASSERT_GE(opened.file(), 0);
    EXPECT_EQ(ReadDataset<int>(opened.file(), "ints"), Iota(1000, 0));
  }
  EXPECT_EQ(ReadDataset<int>(*file, "ints"), Iota(1000, 9000));
  EXPECT_EQ(H5Fclose(*file), 0);
  // The sealed images outlive the file.
  {
    OpenedSeal opened(second);
    ASSERT_GE(opened.file(), 0);
    EXPECT_EQ(ReadDataset<int>(opened.file(), "later"), Iota(300000, 3));
  }
}

TEST_F(MemoryFileTest, SealingTwiceWithoutWritesGivesEqualImages) {
  absl::StatusOr<hid_t> file = CreateMemoryFile();
  ASSERT_TRUE(file.ok()) << file.status();
  ASSERT_TRUE(WriteDataset(*file, "ints", Iota(100, 0)));
  SealedFileImage first = Seal(*file);
  SealedFileImage second = Seal(*file);
  ASSERT_TRUE(first.fd && second.fd);
  ASSERT_EQ(first.size, second.size);
  std::vector<char> a(first.size), b(second.size);
  ASSERT_EQ(pread(first.fd.get(), a.data(), a.size(), 0),
            static_cast<ssize_t>(a.size()));
  ASSERT_EQ(pread(second.fd.get(), b.data(), b.size(), 0),
            static_cast<ssize_t>(b.size()));
  EXPECT_EQ(a, b);
  EXPECT_EQ(H5Fclose(*file), 0);
}

// Each seal runs under HDF5's lock through an identifier type of its own,
// made and destroyed for the call: HDF5 has room for about a hundred
// types, so they must not run out.
TEST_F(MemoryFileTest, SealsManyTimes) {
  absl::StatusOr<hid_t> file = CreateMemoryFile();
  ASSERT_TRUE(file.ok()) << file.status();
  for (int i = 0; i < 500; ++i) {
    ASSERT_TRUE(WriteDataset(*file, "ints", Iota(100, i)));
    SealedFileImage sealed = Seal(*file);
    ASSERT_TRUE(sealed.fd) << "seal " << i;
  }
  SealedFileImage last = Seal(*file);
  {
    OpenedSeal opened(last);
    ASSERT_GE(opened.file(), 0);
    EXPECT_EQ(ReadDataset<int>(opened.file(), "ints"), Iota(100, 499));
  }
  EXPECT_EQ(H5Fclose(*file), 0);
}

TEST_F(MemoryFileTest, OtherFilesAreNotMemoryFiles) {
  hid_t fapl = H5Pcreate(H5P_FILE_ACCESS);
  ASSERT_GE(H5Pset_fapl_core(fapl, 4096, 0), 0);
  hid_t core = H5Fcreate("/dev/null/h5depot-not-a-memory-file", H5F_ACC_EXCL,
                         H5P_DEFAULT, fapl);
  H5Pclose(fapl);
  ASSERT_GE(core, 0);
  ASSERT_TRUE(WriteDataset(core, "ints", Iota(10, 0)));
  absl::StatusOr<std::optional<SealedFileImage>> sealed = SealMemoryFile(core);
  ASSERT_TRUE(sealed.ok()) << sealed.status();
  EXPECT_FALSE(sealed->has_value());

  // An image opened by h5depot has callbacks of its own: not ours either.
  ASSERT_GE(H5Fflush(core, H5F_SCOPE_LOCAL), 0);
  const ssize_t size = H5Fget_file_image(core, nullptr, 0);
  std::vector<char> bytes(static_cast<size_t>(size));
  ASSERT_EQ(H5Fget_file_image(core, bytes.data(), bytes.size()), size);
  EXPECT_EQ(H5Fclose(core), 0);
  absl::StatusOr<hid_t> opened =
      OpenFileImage(bytes.data(), bytes.size(), H5LT_FILE_IMAGE_OPEN_RW);
  ASSERT_TRUE(opened.ok()) << opened.status();
  sealed = SealMemoryFile(*opened);
  ASSERT_TRUE(sealed.ok()) << sealed.status();
  EXPECT_FALSE(sealed->has_value());
  EXPECT_EQ(H5Fclose(*opened), 0);

  char path[] = "/tmp/h5depot-memory-file-test-XXXXXX";
  const int fd = mkstemp(path);
  ASSERT_GE(fd, 0);
  close(fd);
  hid_t sec2 = H5Fcreate(path, H5F_ACC_TRUNC, H5P_DEFAULT, H5P_DEFAULT);
  ASSERT_GE(sec2, 0);
  sealed = SealMemoryFile(sec2);
  ASSERT_TRUE(sealed.ok()) << sealed.status();
  EXPECT_FALSE(sealed->has_value());
  EXPECT_EQ(H5Fclose(sec2), 0);
  unlink(path);

  QuietHdf5Errors quiet;
  hid_t space = H5Screate(H5S_SCALAR);
  EXPECT_EQ(SealMemoryFile(space).status().code(),
            absl::StatusCode::kInvalidArgument);
  H5Sclose(space);
  EXPECT_EQ(SealMemoryFile(H5I_INVALID_HID).status().code(),
            absl::StatusCode::kInvalidArgument);
}

TEST_F(MemoryFileTest, ItsAccessListMakesOrdinaryCoreFiles) {
  absl::StatusOr<hid_t> file = CreateMemoryFile();
  ASSERT_TRUE(file.ok()) << file.status();
  // HDF5 keeps no file image callbacks in the list it gives back.
  hid_t fapl = H5Fget_access_plist(*file);
  ASSERT_GE(fapl, 0);
  H5FD_file_image_callbacks_t callbacks;
  ASSERT_GE(H5Pget_file_image_callbacks(fapl, &callbacks), 0);
  EXPECT_EQ(callbacks.udata, nullptr);
  hid_t other =
      H5Fcreate("/dev/null/h5depot-other", H5F_ACC_EXCL, H5P_DEFAULT, fapl);
  H5Pclose(fapl);
  ASSERT_GE(other, 0);
  ASSERT_TRUE(WriteDataset(other, "ints", Iota(10, 0)));
  absl::StatusOr<std::optional<SealedFileImage>> sealed = SealMemoryFile(other);
  ASSERT_TRUE(sealed.ok()) << sealed.status();
  EXPECT_FALSE(sealed->has_value());
  EXPECT_EQ(H5Fclose(other), 0);
  ASSERT_TRUE(WriteDataset(*file, "ints", Iota(10, 0)));
  EXPECT_EQ(ReadDataset<int>(*file, "ints"), Iota(10, 0));
  EXPECT_EQ(H5Fclose(*file), 0);
}

TEST_F(MemoryFileTest, ManyFilesFromSeveralThreads) {
  constexpr int kThreads = 6;
  constexpr int kFilesPerThread = 20;
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([t] {
      for (int i = 0; i < kFilesPerThread; ++i) {
        const int tag = t * 1000 + i;
        absl::StatusOr<hid_t> file = CreateMemoryFile();
        ASSERT_TRUE(file.ok()) << file.status();
        ASSERT_TRUE(WriteDataset(*file, "ints", Iota(2000 + i * 100, tag)));
        SealedFileImage sealed = Seal(*file);
        ASSERT_TRUE(sealed.fd);
        ASSERT_TRUE(WriteDataset(*file, "more", Iota(50000, tag)));
        {
          OpenedSeal opened(sealed);
          ASSERT_GE(opened.file(), 0);
          EXPECT_EQ(ReadDataset<int>(opened.file(), "ints"),
                    Iota(2000 + i * 100, tag));
          EXPECT_EQ(H5Lexists(opened.file(), "more", H5P_DEFAULT), 0);
        }
        EXPECT_EQ(ReadDataset<int>(*file, "more"), Iota(50000, tag));
        EXPECT_EQ(H5Fclose(*file), 0);
      }
    });
  }
  for (std::thread& thread : threads) thread.join();
}

TEST_F(MemoryFileTest, SealsWhileAnotherThreadWritesTheSameFile) {
  absl::StatusOr<hid_t> file = CreateMemoryFile();
  ASSERT_TRUE(file.ok()) << file.status();
  ASSERT_TRUE(WriteDataset(*file, "ints", Iota(1000, 0)));
  std::thread writer([&] {
    for (int i = 0; i < 200; ++i) {
      ASSERT_TRUE(WriteDataset(*file, absl::StrCat("d", i % 20).c_str(),
                               Iota(5000, i)));
    }
  });
  std::vector<SealedFileImage> seals;
  for (int i = 0; i < 20; ++i) seals.push_back(Seal(*file));
  writer.join();
  for (const SealedFileImage& sealed : seals) {
    ASSERT_TRUE(sealed.fd);
    OpenedSeal opened(sealed);
    ASSERT_GE(opened.file(), 0);
    EXPECT_EQ(ReadDataset<int>(opened.file(), "ints"), Iota(1000, 0));
  }
  for (int i = 0; i < 20; ++i) {
    EXPECT_EQ(ReadDataset<int>(*file, absl::StrCat("d", i).c_str()),
              Iota(5000, 180 + i));
  }
  EXPECT_EQ(H5Fclose(*file), 0);
}

// A child of fork() inherits the file and, when it exits, HDF5 flushes
// and closes it there: none of that may reach the parent's file.
TEST_F(MemoryFileTest, AForkedChildNeverWritesTheParentsFile) {
  absl::StatusOr<hid_t> file = CreateMemoryFile();
  ASSERT_TRUE(file.ok()) << file.status();
  ASSERT_TRUE(WriteDataset(*file, "ints", Iota(1000, 0)));
  ASSERT_GE(H5Fflush(*file, H5F_SCOPE_LOCAL), 0);
  const pid_t child = fork();
  ASSERT_GE(child, 0);
  if (child == 0) {
    const bool written = WriteDataset(*file, "ints", Iota(1000, 77)) &&
                         WriteDataset(*file, "child", Iota(200000, 1)) &&
                         H5Fclose(*file) >= 0;
    _exit(written ? 0 : 1);
  }
  int status = 0;
  ASSERT_EQ(waitpid(child, &status, 0), child);
  ASSERT_TRUE(WIFEXITED(status));
  EXPECT_EQ(WEXITSTATUS(status), 0);

  EXPECT_EQ(ReadDataset<int>(*file, "ints"), Iota(1000, 0));
  EXPECT_EQ(H5Lexists(*file, "child", H5P_DEFAULT), 0);
  SealedFileImage sealed = Seal(*file);
  ASSERT_TRUE(sealed.fd);
  {
    OpenedSeal opened(sealed);
    ASSERT_GE(opened.file(), 0);
    EXPECT_EQ(ReadDataset<int>(opened.file(), "ints"), Iota(1000, 0));
    EXPECT_EQ(H5Lexists(opened.file(), "child", H5P_DEFAULT), 0);
  }
  EXPECT_EQ(H5Fclose(*file), 0);
}

TEST_F(MemoryFileTest, ClosingWithObjectsOpenFreesOnceTheLastCloses) {
  absl::StatusOr<hid_t> file = CreateMemoryFile();
  ASSERT_TRUE(file.ok()) << file.status();
  ASSERT_TRUE(WriteDataset(*file, "ints", Iota(10, 0)));
  hid_t dataset = H5Dopen2(*file, "ints", H5P_DEFAULT);
  ASSERT_GE(dataset, 0);
  EXPECT_EQ(H5Fclose(*file), 0);
  EXPECT_EQ(LiveMemoryFiles(), 1u);  // HDF5 keeps the file for the dataset
  EXPECT_EQ(H5Dclose(dataset), 0);
}

}  // namespace
}  // namespace h5depot
