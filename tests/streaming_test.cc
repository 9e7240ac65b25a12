// Client::FetchTo, the fetch that hands an image's bytes on as they arrive
// (h5depot/client.h), and FetchToDescriptor, against a real h5depotd: over the
// data lane (TCP and Unix socket) and over gRPC (a server without a lane).
#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "gtest/gtest.h"
#include "h5depot/client.h"
#include "h5depot/testing/hdf5_images.h"
#include "h5depot/testing/server_paths.h"
#include "h5depot/testing/server_process.h"

namespace h5depot {
namespace {

using ::h5depot::testing::MakeHdf5Image;
using ::h5depot::testing::ServerProcess;

using ::h5depot::testing::AllServerPaths;
using ::h5depot::testing::ServerOptionsFor;
using ::h5depot::testing::ServerPath;
using ::h5depot::testing::ServerPathName;
using ::h5depot::testing::TargetFor;

class FetchToTest : public ::testing::TestWithParam<ServerPath> {
 protected:
  void SetUp() override {
    auto server = ServerProcess::Start(ServerOptionsFor(GetParam()));
    ASSERT_TRUE(server.ok()) << server.status();
    server_ = *std::move(server);
    auto client = Client::Connect(TargetFor(*server_, GetParam()));
    ASSERT_TRUE(client.ok()) << client.status();
    client_ = *std::move(client);
  }

  std::unique_ptr<ServerProcess> server_;
  std::unique_ptr<Client> client_;
};

TEST_P(FetchToTest, HandsOnTheImageInOrderInPiecesMuchSmallerThanIt) {
  for (size_t size : {size_t{4096}, size_t{3} << 20, size_t{40} << 20}) {
    SCOPED_TRACE(size);
    const std::string image = MakeHdf5Image(size, 7);
    auto pushed = client_->Push("streamed.h5", image.data(), image.size());
    ASSERT_TRUE(pushed.ok()) << pushed.status();

    std::string received;
    size_t largest_piece = 0;
    uint64_t last_progress = 0;
    FetchOptions options;
    options.progress = [&](uint64_t done, uint64_t total) {
      EXPECT_EQ(total, image.size());
      EXPECT_GE(done, last_progress);
      last_progress = done;
    };
    absl::StatusOr<ImageInfo> info = client_->FetchTo(
        "streamed.h5",
        [&](const void* data, size_t n) {
          received.append(static_cast<const char*>(data), n);
          largest_piece = std::max(largest_piece, n);
          return absl::OkStatus();
        },
        options);
    ASSERT_TRUE(info.ok()) << info.status();
    EXPECT_EQ(info->generation, pushed->generation);
    EXPECT_EQ(info->checksum, pushed->checksum);
    EXPECT_TRUE(received == image);
    EXPECT_EQ(last_progress, image.size());
    EXPECT_LE(largest_piece, size_t{4} << 20);
  }
}

TEST_P(FetchToTest, ASinkErrorEndsTheFetchAndTheClientCarriesOn) {
  const std::string image = MakeHdf5Image(16 << 20, 8);
  ASSERT_TRUE(client_->Push("refused.h5", image.data(), image.size()).ok());
  size_t calls = 0;
  absl::StatusOr<ImageInfo> info =
      client_->FetchTo("refused.h5", [&](const void*, size_t) {
        ++calls;
        return absl::ResourceExhaustedError("disk full");
      });
  ASSERT_FALSE(info.ok());
  EXPECT_EQ(info.status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_NE(info.status().message().find("disk full"), std::string::npos)
      << info.status();
  EXPECT_EQ(calls, 1u);
  // The rest of the image was left behind with the connection; the next
  // calls are in step.
  auto fetched = client_->Fetch("refused.h5");
  ASSERT_TRUE(fetched.ok()) << fetched.status();
  EXPECT_EQ(fetched->info.size, image.size());
  std::string again;
  ASSERT_TRUE(client_
                  ->FetchTo("refused.h5",
                            [&](const void* data, size_t n) {
                              again.append(static_cast<const char*>(data), n);
                              return absl::OkStatus();
                            })
                  .ok());
  EXPECT_TRUE(again == image);
}

TEST_P(FetchToTest, RefusalsAreTheServersAndNothingReachesTheSink) {
  bool called = false;
  auto sink = [&](const void*, size_t) {
    called = true;
    return absl::OkStatus();
  };
  EXPECT_EQ(client_->FetchTo("absent.h5", sink).status().code(),
            absl::StatusCode::kNotFound);
  EXPECT_EQ(client_->FetchTo("not an id", sink).status().code(),
            absl::StatusCode::kInvalidArgument);
  FetchOptions mapped;
  mapped.only_if_mapped = true;
  EXPECT_EQ(client_->FetchTo("absent.h5", sink, mapped).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_FALSE(called);
}

// On the server's host a large image is handed on from the server's own
// memory (its memfd, mapped a window at a time), not sent as bytes: the
// server counts the lease while the sink runs.
TEST_P(FetchToTest, OnTheServersHostALargeImageComesFromItsMemory) {
  if (GetParam() != ServerPath::kLaneUnix) GTEST_SKIP() << "same host only";
  const std::string image = MakeHdf5Image(24 << 20, 9);
  ASSERT_TRUE(client_->Push("shared.h5", image.data(), image.size()).ok());
  std::string received;
  uint64_t leased_while_sinking = 0;
  absl::StatusOr<ImageInfo> info =
      client_->FetchTo("shared.h5", [&](const void* data, size_t n) {
        if (received.empty()) {
          absl::StatusOr<ServerLimits> limits = client_->GetLimits();
          if (limits.ok()) leased_while_sinking = limits->leased_generations;
        }
        received.append(static_cast<const char*>(data), n);
        return absl::OkStatus();
      });
  ASSERT_TRUE(info.ok()) << info.status();
  EXPECT_EQ(leased_while_sinking, 1u);
  EXPECT_TRUE(received == image);
}

// Everything read from `fd` until its writers are gone.
std::string ReadUntilClosed(int fd) {
  std::string data;
  char buffer[1 << 16];
  while (true) {
    const ssize_t got = read(fd, buffer, sizeof(buffer));
    if (got > 0) {
      data.append(buffer, static_cast<size_t>(got));
    } else if (got == 0 || errno != EINTR) {
      return data;
    }
  }
}

// FetchToDescriptor into a pipe that another thread drains (over the TCP
// lane the bytes are spliced into it, on the Unix socket they come from the
// server's memory, over gRPC they are written) and into a file where its
// offset stands: the bytes are the image's, progress reaches the end, and
// the descriptor stays open.
TEST_P(FetchToTest, WritesTheImageIntoAPipeOrAFile) {
  for (size_t size : {size_t{4096}, size_t{40} << 20}) {
    SCOPED_TRACE(size);
    const std::string image = MakeHdf5Image(size, 10);
    auto pushed = client_->Push("to-fd.h5", image.data(), image.size());
    ASSERT_TRUE(pushed.ok()) << pushed.status();

    int ends[2];
    ASSERT_EQ(pipe2(ends, O_CLOEXEC), 0) << std::strerror(errno);
    std::string piped;
    std::thread drainer([&] { piped = ReadUntilClosed(ends[0]); });
    uint64_t last_progress = 0;
    FetchOptions options;
    options.progress = [&](uint64_t done, uint64_t) { last_progress = done; };
    absl::StatusOr<ImageInfo> info =
        client_->FetchToDescriptor("to-fd.h5", ends[1], options);
    EXPECT_EQ(fcntl(ends[1], F_GETFD), FD_CLOEXEC) << "the pipe was closed";
    close(ends[1]);
    drainer.join();
    close(ends[0]);
    ASSERT_TRUE(info.ok()) << info.status();
    EXPECT_EQ(info->checksum, pushed->checksum);
    EXPECT_EQ(last_progress, image.size());
    EXPECT_TRUE(piped == image) << "the pipe carried other bytes";

    std::FILE* file = std::tmpfile();
    ASSERT_NE(file, nullptr);
    ASSERT_GE(std::fputs("head", file), 0);
    ASSERT_EQ(std::fflush(file), 0);
    info = client_->FetchToDescriptor("to-fd.h5", fileno(file));
    ASSERT_TRUE(info.ok()) << info.status();
    std::string written(4 + image.size(), '\0');
    ASSERT_EQ(pread(fileno(file), written.data(), written.size(), 0),
              static_cast<ssize_t>(written.size()));
    std::fclose(file);
    EXPECT_TRUE(written == "head" + image) << "the file holds other bytes";
  }
}

INSTANTIATE_TEST_SUITE_P(Paths, FetchToTest, AllServerPaths(), ServerPathName);

}  // namespace
}  // namespace h5depot
