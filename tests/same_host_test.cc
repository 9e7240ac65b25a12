// Same host, zero copies: images handed over as sealed memfds over the
// server's Unix socket (docs/ARCHITECTURE.md, "Same host: images as sealed
// memory"), through a real h5depotd and real processes.
#include <fcntl.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <functional>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "gtest/gtest.h"
#include "h5depot/client.h"
#include "h5depot/h5depot.h"
#include "h5depot/hdf5_transfer.h"
#include "h5depot/internal/memfd.h"
#include "h5depot/memory_file.h"
#include "h5depot/testing/hdf5_datasets.h"
#include "h5depot/testing/hdf5_images.h"
#include "h5depot/testing/server_process.h"
#include "h5depot/testing/subprocess.h"

namespace h5depot {
namespace {

using internal::UniqueFd;
using testing::MakeHdf5Image;
using testing::MemfdsOf;
using testing::ServerProcess;
using testing::ServerProcessOptions;

constexpr size_t kMiB = size_t{1} << 20;

// Waits until `condition` holds; false if it still does not after 30 s.
bool Eventually(const std::function<bool()>& condition) {
  const absl::Time give_up = absl::Now() + absl::Seconds(30);
  while (!condition()) {
    if (absl::Now() > give_up) return false;
    std::this_thread::yield();
  }
  return true;
}

// A memfd holding `bytes`, sealed against every change, as a client that
// built its image in memory hands it over.
UniqueFd SealedMemfd(const std::string& bytes) {
  absl::StatusOr<UniqueFd> memfd =
      internal::CreateMemfd("same-host-test", bytes.size());
  if (!memfd.ok()) return UniqueFd();
  if (pwrite(memfd->get(), bytes.data(), bytes.size(), 0) !=
      static_cast<ssize_t>(bytes.size())) {
    return UniqueFd();
  }
  if (!internal::AddSeals(memfd->get(), internal::kSealsFromClient).ok()) {
    return UniqueFd();
  }
  return *std::move(memfd);
}

std::string BytesOf(const ImageBuffer& buffer) {
  return std::string(static_cast<const char*>(buffer.data()), buffer.size());
}

class SameHostTest : public ::testing::Test {
 protected:
  void StartServer(std::vector<std::string> flags = {}) {
    ServerProcessOptions options;
    options.unix_socket = true;
    options.extra_flags = std::move(flags);
    absl::StatusOr<std::unique_ptr<ServerProcess>> server =
        ServerProcess::Start(options);
    ASSERT_TRUE(server.ok()) << server.status();
    server_ = *std::move(server);
  }

  std::unique_ptr<Client> Connect(const std::string& target,
                                  ClientOptions options = {}) {
    absl::StatusOr<std::unique_ptr<Client>> client =
        Client::Connect(target, options);
    EXPECT_TRUE(client.ok()) << client.status();
    return client.ok() ? *std::move(client) : nullptr;
  }

  std::unique_ptr<Client> ConnectUnix(ClientOptions options = {}) {
    return Connect(server_->unix_target(), options);
  }

  ServerLimits Limits(Client& client) {
    absl::StatusOr<ServerLimits> limits = client.GetLimits();
    EXPECT_TRUE(limits.ok()) << limits.status();
    return limits.ok() ? *limits : ServerLimits{};
  }

  std::unique_ptr<ServerProcess> server_;
};

TEST_F(SameHostTest, AFetchOverTheUnixSocketMapsTheServersMemory) {
  StartServer();
  std::unique_ptr<Client> client = ConnectUnix();
  ASSERT_NE(client, nullptr);
  const std::string image = MakeHdf5Image(4 * kMiB, 1);
  ASSERT_TRUE(client->Push("mapped", image.data(), image.size()).ok());

  absl::StatusOr<FetchedImage> fetched = client->Fetch("mapped");
  ASSERT_TRUE(fetched.ok()) << fetched.status();
  EXPECT_TRUE(fetched->buffer.is_mapped());
  EXPECT_EQ(BytesOf(fetched->buffer), image);
  EXPECT_EQ(fetched->info.size, image.size());
  EXPECT_EQ(Limits(*client).leased_generations, 1u);

  // Dropping the buffer ends the lease.
  fetched->buffer = ImageBuffer();
  EXPECT_TRUE(
      Eventually([&] { return Limits(*client).leased_generations == 0; }));
}

TEST_F(SameHostTest, WritesToAFetchedBufferStayPrivate) {
  StartServer();
  std::unique_ptr<Client> client = ConnectUnix();
  ASSERT_NE(client, nullptr);
  const std::string image = MakeHdf5Image(2 * kMiB, 2);
  ASSERT_TRUE(client->Push("private", image.data(), image.size()).ok());
  absl::StatusOr<FetchedImage> first = client->Fetch("private");
  ASSERT_TRUE(first.ok()) << first.status();
  ASSERT_TRUE(first->buffer.is_mapped());
  std::memset(first->buffer.data(), 0x5a, first->buffer.size());

  absl::StatusOr<FetchedImage> second = client->Fetch("private");
  ASSERT_TRUE(second.ok()) << second.status();
  EXPECT_EQ(BytesOf(second->buffer), image);
  // A mapped buffer handed on as a malloc'ed block is a copy.
  void* copy = first->buffer.Release();
  ASSERT_NE(copy, nullptr);
  EXPECT_EQ(static_cast<unsigned char*>(copy)[0], 0x5a);
  std::free(copy);
}

TEST_F(SameHostTest, TcpClientsAndServersThatDoNotShareGetBytes) {
  StartServer({"--noshare-memory"});
  const std::string image = MakeHdf5Image(2 * kMiB, 3);
  std::unique_ptr<Client> unix_client = ConnectUnix();
  ASSERT_NE(unix_client, nullptr);
  ASSERT_TRUE(unix_client->Push("bytes", image.data(), image.size()).ok());
  absl::StatusOr<FetchedImage> fetched = unix_client->Fetch("bytes");
  ASSERT_TRUE(fetched.ok()) << fetched.status();
  EXPECT_FALSE(fetched->buffer.is_mapped());
  EXPECT_EQ(BytesOf(fetched->buffer), image);

  // A sealed memfd pushed to a server that does not take them goes as bytes.
  UniqueFd memfd = SealedMemfd(image);
  ASSERT_TRUE(memfd);
  absl::StatusOr<ImageInfo> pushed =
      unix_client->PushMemfd("from-memfd", memfd.get(), image.size());
  ASSERT_TRUE(pushed.ok()) << pushed.status();
  absl::StatusOr<FetchedImage> back = unix_client->Fetch("from-memfd");
  ASSERT_TRUE(back.ok()) << back.status();
  EXPECT_EQ(BytesOf(back->buffer), image);
  EXPECT_EQ(back->info.checksum, pushed->checksum);
}

TEST_F(SameHostTest, TcpClientsGetBytesFromAServerThatShares) {
  StartServer();
  const std::string image = MakeHdf5Image(2 * kMiB, 4);
  std::unique_ptr<Client> unix_client = ConnectUnix();
  ASSERT_NE(unix_client, nullptr);
  UniqueFd memfd = SealedMemfd(image);
  ASSERT_TRUE(memfd);
  // Handed over as a descriptor: the server knows no checksum yet.
  ASSERT_TRUE(unix_client->PushMemfd("shared", memfd.get(), image.size()).ok());

  std::unique_ptr<Client> tcp_client = Connect(server_->tcp_target());
  ASSERT_NE(tcp_client, nullptr);
  absl::StatusOr<FetchedImage> fetched = tcp_client->Fetch("shared");
  ASSERT_TRUE(fetched.ok()) << fetched.status();
  EXPECT_FALSE(fetched->buffer.is_mapped());
  EXPECT_EQ(BytesOf(fetched->buffer), image);
  // The bytes that moved were checked against the checksum the server
  // computed for them; stat reports the same.
  absl::StatusOr<ImageInfo> stat = tcp_client->Stat("shared");
  ASSERT_TRUE(stat.ok()) << stat.status();
  EXPECT_EQ(stat->checksum, fetched->info.checksum);
  EXPECT_NE(stat->checksum, 0u);

  ClientOptions bytes_only;
  bytes_only.share_memory = false;
  std::unique_ptr<Client> unshared = ConnectUnix(bytes_only);
  ASSERT_NE(unshared, nullptr);
  absl::StatusOr<FetchedImage> copied = unshared->Fetch("shared");
  ASSERT_TRUE(copied.ok()) << copied.status();
  EXPECT_FALSE(copied->buffer.is_mapped());
  EXPECT_EQ(BytesOf(copied->buffer), image);
}

TEST_F(SameHostTest, AnUnsealedMemfdIsRefusedAndChangesNothing) {
  StartServer();
  std::unique_ptr<Client> client = ConnectUnix();
  ASSERT_NE(client, nullptr);
  const std::string image = MakeHdf5Image(2 * kMiB, 5);
  absl::StatusOr<UniqueFd> unsealed =
      internal::CreateMemfd("unsealed", image.size());
  ASSERT_TRUE(unsealed.ok());
  ASSERT_EQ(pwrite(unsealed->get(), image.data(), image.size(), 0),
            static_cast<ssize_t>(image.size()));
  absl::StatusOr<ImageInfo> pushed =
      client->PushMemfd("unsealed", unsealed->get(), image.size());
  EXPECT_EQ(pushed.status().code(), absl::StatusCode::kInvalidArgument)
      << pushed.status();
  EXPECT_NE(pushed.status().message().find("F_SEAL_WRITE"),
            std::string_view::npos)
      << pushed.status();
  EXPECT_EQ(client->Stat("unsealed").status().code(),
            absl::StatusCode::kNotFound);

  // Sealed, but not an HDF5 image: refused by the server, nothing stored.
  UniqueFd junk = SealedMemfd(std::string(2 * kMiB, 'x'));
  ASSERT_TRUE(junk);
  pushed = client->PushMemfd("junk", junk.get(), 2 * kMiB);
  EXPECT_EQ(pushed.status().code(), absl::StatusCode::kInvalidArgument)
      << pushed.status();
  EXPECT_EQ(client->Stat("junk").status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(Limits(*client).reserved_bytes, 0u);
}

TEST_F(SameHostTest, TheKernelRefusesEveryChangeToAPushedMemfd) {
  StartServer();
  std::unique_ptr<Client> client = ConnectUnix();
  ASSERT_NE(client, nullptr);
  const std::string image = MakeHdf5Image(2 * kMiB, 6);
  UniqueFd memfd = SealedMemfd(image);
  ASSERT_TRUE(memfd);
  ASSERT_TRUE(client->PushMemfd("sealed", memfd.get(), image.size()).ok());

  EXPECT_EQ(pwrite(memfd.get(), "x", 1, 0), -1);
  EXPECT_EQ(errno, EPERM);
  EXPECT_EQ(ftruncate(memfd.get(), 4096), -1);
  EXPECT_EQ(errno, EPERM);
  EXPECT_EQ(ftruncate(memfd.get(), 8 * kMiB), -1);
  EXPECT_EQ(errno, EPERM);
  EXPECT_EQ(mmap(nullptr, image.size(), PROT_READ | PROT_WRITE, MAP_SHARED,
                 memfd.get(), 0),
            MAP_FAILED);
  EXPECT_EQ(fcntl(memfd.get(), F_ADD_SEALS, 0), -1);  // F_SEAL_SEAL

  absl::StatusOr<FetchedImage> fetched = client->Fetch("sealed");
  ASSERT_TRUE(fetched.ok()) << fetched.status();
  EXPECT_TRUE(fetched->buffer.is_mapped());
  EXPECT_EQ(BytesOf(fetched->buffer), image);
}

TEST_F(SameHostTest, AReplaceOrDeleteKeepsAMappedReadersView) {
  StartServer();
  std::unique_ptr<Client> client = ConnectUnix();
  ASSERT_NE(client, nullptr);
  const std::string first = MakeHdf5Image(3 * kMiB, 7);
  const std::string second = MakeHdf5Image(3 * kMiB, 8);
  ASSERT_TRUE(client->Push("changing", first.data(), first.size()).ok());
  absl::StatusOr<FetchedImage> held = client->Fetch("changing");
  ASSERT_TRUE(held.ok()) << held.status();
  ASSERT_TRUE(held->buffer.is_mapped());

  ASSERT_TRUE(client->Push("changing", second.data(), second.size()).ok());
  EXPECT_EQ(BytesOf(held->buffer), first);
  ServerLimits limits = Limits(*client);
  EXPECT_EQ(limits.leased_generations, 1u);
  EXPECT_GE(limits.leased_superseded_bytes, first.size());
  // Both generations count against the memory limit.
  EXPECT_GE(limits.reserved_bytes, first.size() + second.size());

  ASSERT_TRUE(client->Delete("changing").ok());
  EXPECT_EQ(BytesOf(held->buffer), first);
  held->buffer = ImageBuffer();
  EXPECT_TRUE(Eventually([&] {
    const ServerLimits now = Limits(*client);
    return now.leased_generations == 0 && now.reserved_bytes == 0;
  }));
}

TEST_F(SameHostTest, AFileBuiltInAMemfdIsPushedWithoutACopy) {
  StartServer();
  std::unique_ptr<Client> client = ConnectUnix();
  ASSERT_NE(client, nullptr);
  absl::StatusOr<hid_t> file = CreateMemoryFile();
  ASSERT_TRUE(file.ok()) << file.status();
  const std::vector<double> values(512 * 1024, 2.5);
  ASSERT_TRUE(testing::WriteDataset(*file, "/values", values));
  absl::StatusOr<ImageInfo> pushed =
      PushFileImage(*client, "built-in-memfd", *file);
  ASSERT_TRUE(pushed.ok()) << pushed.status();
  // The server holds the producer's own memfd.
  EXPECT_GE(MemfdsOf(server_->pid(), "h5depot-memory-file"), 1);

  // The file stays open and writable; what it writes now is its own.
  const std::vector<double> changed(512 * 1024, -1.0);
  ASSERT_TRUE(testing::WriteDataset(*file, "/values", changed));
  absl::StatusOr<FetchedFile> opened = FetchAndOpen(*client, "built-in-memfd");
  ASSERT_TRUE(opened.ok()) << opened.status();
  EXPECT_EQ(testing::ReadDataset<double>(opened->file, "/values"), values);
  H5Fclose(opened->file);
  EXPECT_EQ(testing::ReadDataset<double>(*file, "/values"), changed);
  H5Fclose(*file);
}

// A stream step built in a memfd is handed over as a push is: the server
// holds the producer's memfd, and a reader on this host maps it.
TEST_F(SameHostTest, AStepBuiltInAMemfdIsAppendedWithoutACopy) {
  StartServer();
  std::unique_ptr<Client> client = ConnectUnix();
  ASSERT_NE(client, nullptr);
  absl::StatusOr<hid_t> file = CreateMemoryFile();
  ASSERT_TRUE(file.ok()) << file.status();
  const std::vector<double> values(512 * 1024, 4.5);
  ASSERT_TRUE(testing::WriteDataset(*file, "/values", values));
  absl::StatusOr<AppendedStep> appended =
      AppendFileImage(*client, "frames", *file);
  ASSERT_TRUE(appended.ok()) << appended.status();
  EXPECT_EQ(appended->step, 0u);
  EXPECT_EQ(appended->info.image_id, "frames@0");
  EXPECT_GE(MemfdsOf(server_->pid(), "h5depot-memory-file"), 1);
  // The file goes on as the producer's own: its next state is the next
  // step.
  const std::vector<double> changed(512 * 1024, -4.5);
  ASSERT_TRUE(testing::WriteDataset(*file, "/values", changed));
  appended = AppendFileImage(*client, "frames", *file);
  ASSERT_TRUE(appended.ok()) << appended.status();
  EXPECT_EQ(appended->step, 1u);
  H5Fclose(*file);

  for (const std::vector<double>* expected : {&values, &changed}) {
    absl::StatusOr<StreamStep> step = client->Next("frames", "readers");
    ASSERT_TRUE(step.ok()) << step.status();
    EXPECT_TRUE(step->image.buffer.is_mapped());
    const uint64_t number = step->step;
    absl::StatusOr<hid_t> opened = OpenFileImage(std::move(step->image.buffer));
    ASSERT_TRUE(opened.ok()) << opened.status();
    EXPECT_EQ(testing::ReadDataset<double>(*opened, "/values"), *expected);
    H5Fclose(*opened);
    ASSERT_TRUE(client->Ack("frames", "readers", number).ok());
  }
}

TEST_F(SameHostTest, AnImageCrossesProcessesAsSealedMemory) {
  StartServer();
  const std::string image = MakeHdf5Image(8 * kMiB, 9);
  // Process A builds the image in a memfd and pushes it; the parent is
  // process B, which waits for it, fetches it and opens it.
  const pid_t producer = fork();
  ASSERT_GE(producer, 0);
  if (producer == 0) {
    UniqueFd memfd = SealedMemfd(image);
    absl::StatusOr<std::unique_ptr<Client>> client =
        Client::Connect(server_->unix_target());
    const bool pushed =
        memfd && client.ok() &&
        (*client)->PushMemfd("packet", memfd.get(), image.size()).ok();
    _exit(pushed ? 0 : 1);
  }
  std::unique_ptr<Client> client = ConnectUnix();
  ASSERT_NE(client, nullptr);
  FetchOptions wait;
  wait.wait = absl::Seconds(60);
  absl::StatusOr<FetchedFile> opened = FetchAndOpen(*client, "packet", 0, wait);
  int status = 0;
  ASSERT_EQ(waitpid(producer, &status, 0), producer);
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0);
  ASSERT_TRUE(opened.ok()) << opened.status();
  const std::vector<uint8_t> data =
      testing::ReadDataset<uint8_t>(opened->file, "/data");
  EXPECT_EQ(data.size(), 8 * kMiB);
  EXPECT_EQ(Limits(*client).leased_generations, 1u);
  EXPECT_GE(H5Fclose(opened->file), 0);
  // Closing the file unmaps the image and ends the lease.
  EXPECT_TRUE(
      Eventually([&] { return Limits(*client).leased_generations == 0; }));
}

TEST_F(SameHostTest, AClientKilledWhileMappingAnImageFreesItsMemory) {
  StartServer();
  const std::string image = MakeHdf5Image(4 * kMiB, 10);
  {
    std::unique_ptr<Client> client = ConnectUnix();
    ASSERT_NE(client, nullptr);
    ASSERT_TRUE(client->Push("pinned", image.data(), image.size()).ok());
  }
  int ready[2];
  ASSERT_EQ(pipe(ready), 0);
  const pid_t reader = fork();
  ASSERT_GE(reader, 0);
  if (reader == 0) {
    close(ready[0]);
    absl::StatusOr<std::unique_ptr<Client>> client =
        Client::Connect(server_->unix_target());
    if (!client.ok()) _exit(1);
    absl::StatusOr<FetchedImage> fetched = (*client)->Fetch("pinned");
    if (!fetched.ok() || !fetched->buffer.is_mapped()) _exit(2);
    const char byte = 1;
    if (write(ready[1], &byte, 1) != 1) _exit(3);
    pause();  // holding the mapping until killed
    _exit(0);
  }
  close(ready[1]);
  char byte = 0;
  ASSERT_EQ(read(ready[0], &byte, 1), 1);
  close(ready[0]);
  std::unique_ptr<Client> client = ConnectUnix();
  ASSERT_NE(client, nullptr);
  EXPECT_EQ(Limits(*client).leased_generations, 1u);
  ASSERT_TRUE(client->Delete("pinned").ok());
  EXPECT_GE(Limits(*client).leased_superseded_bytes, image.size());

  ASSERT_EQ(kill(reader, SIGKILL), 0);
  int status = 0;
  ASSERT_EQ(waitpid(reader, &status, 0), reader);
  EXPECT_TRUE(Eventually([&] {
    const ServerLimits now = Limits(*client);
    return now.leased_generations == 0 && now.reserved_bytes == 0;
  }));
}

TEST_F(SameHostTest, ACopyOnWriteRoundTripPushesANewGeneration) {
  StartServer();
  std::unique_ptr<Client> client = ConnectUnix();
  ASSERT_NE(client, nullptr);
  const std::string image = MakeHdf5Image(2 * kMiB, 11);
  absl::StatusOr<ImageInfo> base =
      client->Push("round-trip", image.data(), image.size());
  ASSERT_TRUE(base.ok()) << base.status();
  absl::StatusOr<FetchedImage> reader = client->Fetch("round-trip");
  ASSERT_TRUE(reader.ok()) << reader.status();
  ASSERT_TRUE(reader->buffer.is_mapped());

  auto update = ImageUpdate::Begin(*client, "round-trip");
  ASSERT_TRUE(update.ok()) << update.status();
  const std::vector<int> written = {1, 2, 3, 4};
  ASSERT_TRUE(testing::WriteDataset((*update)->file(), "/added", written));
  absl::StatusOr<ImageInfo> committed = (*update)->Commit();
  ASSERT_TRUE(committed.ok()) << committed.status();
  EXPECT_GT(committed->generation, base->generation);

  // The reader's mapping of the base generation saw none of the writes.
  EXPECT_EQ(BytesOf(reader->buffer), image);
  absl::StatusOr<FetchedFile> opened = FetchAndOpen(*client, "round-trip");
  ASSERT_TRUE(opened.ok()) << opened.status();
  EXPECT_EQ(testing::ReadDataset<int>(opened->file, "/added"), written);
  EXPECT_EQ(testing::ReadDataset<uint8_t>(opened->file, "/data").size(),
            2 * kMiB);
  H5Fclose(opened->file);
}

TEST_F(SameHostTest, AClientOutOfDescriptorsGetsTheBytesInstead) {
  StartServer();
  std::unique_ptr<Client> client = ConnectUnix();
  ASSERT_NE(client, nullptr);
  const std::string image = MakeHdf5Image(2 * kMiB, 12);
  ASSERT_TRUE(client->Push("no-room", image.data(), image.size()).ok());
  // The lane connection is made and pooled first.
  ASSERT_TRUE(client->Fetch("no-room").ok());

  rlimit saved;
  ASSERT_EQ(getrlimit(RLIMIT_NOFILE, &saved), 0);
  rlimit lowered = saved;
  lowered.rlim_cur = 256;
  ASSERT_EQ(setrlimit(RLIMIT_NOFILE, &lowered), 0);
  std::vector<int> filler;
  for (int fd = dup(0); fd >= 0; fd = dup(0)) filler.push_back(fd);
  absl::StatusOr<FetchedImage> fetched = client->Fetch("no-room");
  for (int fd : filler) close(fd);
  ASSERT_EQ(setrlimit(RLIMIT_NOFILE, &saved), 0);

  ASSERT_TRUE(fetched.ok()) << fetched.status();
  EXPECT_FALSE(fetched->buffer.is_mapped());
  EXPECT_EQ(BytesOf(fetched->buffer), image);
  // The lease the lost descriptor stood for was given back.
  EXPECT_TRUE(
      Eventually([&] { return Limits(*client).leased_generations == 0; }));
}

TEST_F(SameHostTest, TheCApiReadsAViewInPlaceAndCopiesForFree) {
  StartServer();
  h5depot_client* c = h5depot_connect(server_->unix_target().c_str());
  ASSERT_NE(c, nullptr) << h5depot_errmsg();
  const std::string image = MakeHdf5Image(2 * kMiB, 14);
  ASSERT_EQ(
      h5depot_push_buffer(c, "c-view", image.data(), image.size(), nullptr),
      H5DEPOT_OK)
      << h5depot_errmsg();

  h5depot_view* view = nullptr;
  void* data = nullptr;
  size_t len = 0;
  uint64_t generation = 0;
  ASSERT_EQ(h5depot_fetch_view(c, "c-view", &view, &data, &len, &generation),
            H5DEPOT_OK)
      << h5depot_errmsg();
  EXPECT_EQ(std::string(static_cast<const char*>(data), len), image);
  EXPECT_GT(generation, 0u);
  std::unique_ptr<Client> client = ConnectUnix();
  ASSERT_NE(client, nullptr);
  EXPECT_EQ(Limits(*client).leased_generations, 1u);

  void* copy = nullptr;
  ASSERT_EQ(h5depot_fetch(c, "c-view", &copy, &len, nullptr), H5DEPOT_OK)
      << h5depot_errmsg();
  EXPECT_EQ(std::string(static_cast<const char*>(copy), len), image);
  std::free(copy);  // a malloc'ed copy, as h5depot_fetch promises

  h5depot_view_free(view);
  EXPECT_TRUE(
      Eventually([&] { return Limits(*client).leased_generations == 0; }));
  h5depot_disconnect(c);
}

TEST_F(SameHostTest, ASmallImageMovesAsBytes) {
  StartServer();
  std::unique_ptr<Client> client = ConnectUnix();
  ASSERT_NE(client, nullptr);
  const std::string image = MakeHdf5Image(4096, 13);
  ASSERT_TRUE(client->Push("small", image.data(), image.size()).ok());
  absl::StatusOr<FetchedFile> opened = FetchAndOpen(*client, "small");
  ASSERT_TRUE(opened.ok()) << opened.status();
  EXPECT_EQ(testing::ReadDataset<uint8_t>(opened->file, "/data").size(), 4096u);
  H5Fclose(opened->file);
}

}  // namespace
}  // namespace h5depot
