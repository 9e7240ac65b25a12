// The C++ client against a real DepotServer on a loopback port or a Unix
// socket, through the public client API only, plus one test through the raw
// stub that pins the wire protocol.
#include <grpcpp/grpcpp.h>
#include <unistd.h>

#include <atomic>
#include <cstdio>
#include <fstream>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/escaping.h"
#include "gtest/gtest.h"
#include "h5depot/client.h"
#include "h5depot/internal/checksum.h"
#include "h5depot/server/depot_server.h"
#include "h5depot/testing/in_process_depot.h"
#include "h5depot/v1/depot.grpc.pb.h"
#include "test_images.h"
#include "wire_messages.h"

namespace h5depot {
namespace {

using ::h5depot::testing::InProcessDepot;
using ::h5depot::testing::Listeners;
using ::h5depot::testing::PushHeaderFor;

using ::h5depot::testing::MakeTestImage;

enum class Transport { kTcp, kUnix };

std::string UniqueSocketPath() {
  static std::atomic<int> counter{0};
  return "/tmp/h5depot-test-" + std::to_string(getpid()) + "-" +
         std::to_string(counter++) + ".sock";
}

class ClientServerTest : public ::testing::TestWithParam<Transport> {
 protected:
  void SetUp() override {
    server::ServerOptions options;
    options.store.max_memory_bytes = uint64_t{256} << 20;
    options.store.max_image_bytes = uint64_t{64} << 20;
    auto depot = InProcessDepot::Start(options, GetParam() == Transport::kTcp
                                                    ? Listeners::kTcp
                                                    : Listeners::kUnix);
    ASSERT_TRUE(depot.ok()) << depot.status();
    depot_ = *std::move(depot);
    auto client = depot_->Connect();
    ASSERT_TRUE(client.ok()) << client.status();
    client_ = *std::move(client);
  }

  void TearDown() override {
    client_.reset();
    depot_.reset();
  }

  std::unique_ptr<InProcessDepot> depot_;
  std::unique_ptr<Client> client_;
};

TEST_P(ClientServerTest, PushThenFetchReturnsTheSameBytes) {
  // Several chunks, and a size that is not a multiple of the chunk size.
  const auto bytes = MakeTestImage((3 << 20) + 12345);
  auto pushed = client_->Push("run/packet", bytes.data(), bytes.size());
  ASSERT_TRUE(pushed.ok()) << pushed.status();
  EXPECT_EQ(pushed->size, bytes.size());
  EXPECT_EQ(pushed->checksum, internal::Checksum(bytes.data(), bytes.size()));

  auto fetched = client_->Fetch("run/packet");
  ASSERT_TRUE(fetched.ok()) << fetched.status();
  EXPECT_EQ(fetched->info.generation, pushed->generation);
  ASSERT_EQ(fetched->buffer.size(), bytes.size());
  EXPECT_EQ(0, std::memcmp(fetched->buffer.data(), bytes.data(), bytes.size()));
}

TEST_P(ClientServerTest, ProgressIsReportedUpToTheTotal) {
  const auto bytes = MakeTestImage(5 << 20);
  uint64_t last_push = 0;
  PushOptions push_options;
  push_options.progress = [&](uint64_t done, uint64_t total) {
    EXPECT_GT(done, last_push);
    EXPECT_EQ(total, bytes.size());
    last_push = done;
  };
  ASSERT_TRUE(
      client_->Push("p", bytes.data(), bytes.size(), push_options).ok());
  EXPECT_EQ(last_push, bytes.size());
  uint64_t last_fetch = 0;
  FetchOptions fetch_options;
  fetch_options.progress = [&](uint64_t done, uint64_t) { last_fetch = done; };
  ASSERT_TRUE(client_->Fetch("p", fetch_options).ok());
  EXPECT_EQ(last_fetch, bytes.size());
}

TEST_P(ClientServerTest, PushFileSendsTheFileContents) {
  const auto bytes = MakeTestImage(100000);
  const std::string path = UniqueSocketPath() + ".h5";
  {
    std::ofstream out(path, std::ios::binary);
    out.write(reinterpret_cast<const char*>(bytes.data()), bytes.size());
  }
  auto pushed = client_->PushFile("from-file", path);
  std::remove(path.c_str());
  ASSERT_TRUE(pushed.ok()) << pushed.status();
  auto fetched = client_->Fetch("from-file");
  ASSERT_TRUE(fetched.ok());
  EXPECT_EQ(0, std::memcmp(fetched->buffer.data(), bytes.data(), bytes.size()));

  auto missing = client_->PushFile("x", "/nonexistent/file.h5");
  EXPECT_EQ(missing.status().code(), absl::StatusCode::kNotFound);
}

TEST_P(ClientServerTest, UnknownIdIsNotFoundWithTheIdInTheMessage) {
  auto fetched = client_->Fetch("no/such/image");
  EXPECT_EQ(fetched.status().code(), absl::StatusCode::kNotFound);
  EXPECT_NE(fetched.status().message().find("no/such/image"),
            std::string::npos);
  EXPECT_EQ(client_->Stat("no/such/image").status().code(),
            absl::StatusCode::kNotFound);
  EXPECT_EQ(client_->Delete("no/such/image").code(),
            absl::StatusCode::kNotFound);
}

TEST_P(ClientServerTest, BadIdIsInvalidArgumentSayingWhatIsAllowed) {
  const auto bytes = MakeTestImage(100);
  auto pushed = client_->Push("has space", bytes.data(), bytes.size());
  EXPECT_EQ(pushed.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(pushed.status().message().find("A-Z a-z 0-9"), std::string::npos);
}

TEST_P(ClientServerTest, NonHdf5BlobIsRefused) {
  std::vector<uint8_t> blob(4096, 0x42);
  auto pushed = client_->Push("blob", blob.data(), blob.size());
  EXPECT_EQ(pushed.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(pushed.status().message().find("not an HDF5 file image"),
            std::string::npos);
  EXPECT_FALSE(client_->Stat("blob").ok());
}

TEST_P(ClientServerTest, PushOverTheMemoryLimitIsRefusedBeforeItsDataIsSent) {
  const auto bytes = MakeTestImage(40 << 20);
  ASSERT_TRUE(client_->Push("a", bytes.data(), bytes.size()).ok());
  ASSERT_TRUE(client_->Push("b", bytes.data(), bytes.size()).ok());
  ASSERT_TRUE(client_->Push("c", bytes.data(), bytes.size()).ok());
  ASSERT_TRUE(client_->Push("d", bytes.data(), bytes.size()).ok());
  ASSERT_TRUE(client_->Push("e", bytes.data(), bytes.size()).ok());
  ASSERT_TRUE(client_->Push("f", bytes.data(), bytes.size()).ok());
  // 6 x 40 MiB stored; a seventh would pass 256 MiB.
  uint64_t sent = 0;
  PushOptions options;
  options.progress = [&](uint64_t done, uint64_t) { sent = done; };
  auto refused = client_->Push("g", bytes.data(), bytes.size(), options);
  EXPECT_EQ(refused.status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_NE(refused.status().message().find("memory limit"), std::string::npos)
      << refused.status();
  EXPECT_EQ(sent, 0u) << "data was streamed although the header was refused";
  EXPECT_FALSE(client_->Stat("g").ok());
}

TEST_P(ClientServerTest, ImageOverTheSizeLimitIsRefused) {
  const auto bytes = MakeTestImage((64 << 20) + 1);
  auto refused = client_->Push("big", bytes.data(), bytes.size());
  EXPECT_EQ(refused.status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_NE(refused.status().message().find("per image"), std::string::npos);
}

TEST_P(ClientServerTest, ConcurrentConditionalPushesHaveExactlyOneWinner) {
  const auto bytes = MakeTestImage(2 << 20);
  auto base = client_->Push("x", bytes.data(), bytes.size());
  ASSERT_TRUE(base.ok());
  std::atomic<int> winners{0};
  std::atomic<int> conflicts{0};
  std::vector<std::thread> writers;
  for (int i = 0; i < 6; ++i) {
    writers.emplace_back([&] {
      PushOptions options;
      options.if_generation_match = base->generation;
      auto result = client_->Push("x", bytes.data(), bytes.size(), options);
      if (result.ok()) ++winners;
      if (result.status().code() == absl::StatusCode::kAborted) {
        ++conflicts;
      }
    });
  }
  for (auto& t : writers) t.join();
  EXPECT_EQ(winners.load(), 1);
  EXPECT_EQ(conflicts.load(), 5);
}

TEST_P(ClientServerTest, CreateOnlyPushFailsWhenTheImageExists) {
  const auto bytes = MakeTestImage(100);
  PushOptions create_only;
  create_only.if_generation_match = 0;
  ASSERT_TRUE(client_->Push("x", bytes.data(), bytes.size(), create_only).ok());
  EXPECT_EQ(client_->Push("x", bytes.data(), bytes.size(), create_only)
                .status()
                .code(),
            absl::StatusCode::kAlreadyExists);
}

TEST_P(ClientServerTest, ReadersDuringAReplaceEachSeeOneWholeGeneration) {
  const auto v1 = MakeTestImage(3 << 20, 1);
  const auto v2 = MakeTestImage(2 << 20, 2);
  ASSERT_TRUE(client_->Push("x", v1.data(), v1.size()).ok());
  std::atomic<bool> stop{false};
  std::atomic<int> reads{0};
  std::vector<std::thread> readers;
  for (int i = 0; i < 3; ++i) {
    readers.emplace_back([&] {
      while (!stop) {
        auto fetched = client_->Fetch("x");
        ASSERT_TRUE(fetched.ok()) << fetched.status();
        const auto& expected = fetched->buffer.size() == v1.size() ? v1 : v2;
        ASSERT_EQ(fetched->buffer.size(), expected.size());
        ASSERT_EQ(0, std::memcmp(fetched->buffer.data(), expected.data(),
                                 expected.size()));
        ++reads;
      }
    });
  }
  for (int i = 0; i < 20; ++i) {
    const auto& next = i % 2 == 0 ? v2 : v1;
    ASSERT_TRUE(client_->Push("x", next.data(), next.size()).ok());
  }
  stop = true;
  for (auto& t : readers) t.join();
  EXPECT_GT(reads.load(), 0);
}

TEST_P(ClientServerTest, PinnedReaderKeepsItsGenerationAcrossAReplace) {
  const auto v1 = MakeTestImage(3 << 20, 1);
  const auto v2 = MakeTestImage(1 << 20, 2);
  auto first = client_->Push("x", v1.data(), v1.size());
  ASSERT_TRUE(first.ok());
  auto reader = client_->OpenReader("x");
  ASSERT_TRUE(reader.ok()) << reader.status();
  EXPECT_EQ((*reader)->info().generation, first->generation);
  ASSERT_TRUE(client_->Push("x", v2.data(), v2.size()).ok());
  ASSERT_TRUE(client_->Delete("x").ok());

  std::vector<uint8_t> out(2 << 20);
  auto n = (*reader)->Read(v1.size() - 1000, out.data(), out.size());
  ASSERT_TRUE(n.ok()) << n.status();
  EXPECT_EQ(*n, 1000u);  // clamped at the end of the image
  EXPECT_EQ(0, std::memcmp(out.data(), v1.data() + v1.size() - 1000, 1000));
  n = (*reader)->Read(12345, out.data(), out.size());
  ASSERT_TRUE(n.ok());
  EXPECT_EQ(*n, out.size());
  EXPECT_EQ(0, std::memcmp(out.data(), v1.data() + 12345, out.size()));
  // The pinned generation is readable by number while the reader lives...
  std::vector<uint8_t> small(16);
  EXPECT_TRUE(
      client_->Read("x", first->generation, 0, small.data(), small.size())
          .ok());
  reader->reset();
  // ...and released once the server has seen the reader go (the client
  // does not wait for that); bounded wait.
  const absl::Time give_up = absl::Now() + absl::Seconds(10);
  absl::StatusCode code = absl::StatusCode::kOk;
  while (absl::Now() < give_up) {
    code = client_->Read("x", first->generation, 0, small.data(), small.size())
               .status()
               .code();
    if (code != absl::StatusCode::kOk) break;
  }
  EXPECT_EQ(code, absl::StatusCode::kNotFound);
}

TEST_P(ClientServerTest, OpeningAReaderOnAMissingImageIsNotFound) {
  auto reader = client_->OpenReader("missing");
  EXPECT_EQ(reader.status().code(), absl::StatusCode::kNotFound);
  EXPECT_NE(reader.status().message().find("missing"), std::string::npos);
  const auto bytes = MakeTestImage(100);
  auto pushed = client_->Push("present", bytes.data(), bytes.size());
  ASSERT_TRUE(pushed.ok());
  auto stale = client_->OpenReader("present", pushed->generation + 1);
  EXPECT_EQ(stale.status().code(), absl::StatusCode::kNotFound);
}

TEST_P(ClientServerTest, ReadReturnsTheRangeOfTheCurrentGeneration) {
  const auto bytes = MakeTestImage(5 << 20);
  auto pushed = client_->Push("x", bytes.data(), bytes.size());
  ASSERT_TRUE(pushed.ok());
  std::vector<uint8_t> out(3 << 20);
  auto read = client_->Read("x", 0, 1 << 20, out.data(), out.size());
  ASSERT_TRUE(read.ok()) << read.status();
  EXPECT_EQ(read->bytes_read, out.size());
  EXPECT_EQ(read->info.generation, pushed->generation);
  EXPECT_EQ(0, std::memcmp(out.data(), bytes.data() + (1 << 20), out.size()));
  auto past_end = client_->Read("x", 0, bytes.size() + 10, out.data(), 10);
  ASSERT_TRUE(past_end.ok());
  EXPECT_EQ(past_end->bytes_read, 0u);
}

TEST_P(ClientServerTest, WaitIsSatisfiedByALaterPush) {
  const auto bytes = MakeTestImage(1000);
  std::thread waiter_thread;
  absl::StatusOr<FetchedImage> fetched;
  FetchOptions options;
  options.wait = absl::Seconds(30);
  waiter_thread =
      std::thread([&] { fetched = client_->Fetch("later", options); });
  // Push only once the server holds the waiter, so the wait really waits.
  auto stat = client_->Stat("later");
  EXPECT_EQ(stat.status().code(), absl::StatusCode::kNotFound);
  ASSERT_TRUE(client_->Push("later", bytes.data(), bytes.size()).ok());
  waiter_thread.join();
  ASSERT_TRUE(fetched.ok()) << fetched.status();
  EXPECT_EQ(fetched->buffer.size(), bytes.size());
  auto waited_stat = client_->Stat("later", absl::Seconds(1));
  EXPECT_TRUE(waited_stat.ok());
}

TEST_P(ClientServerTest, WaitThatTimesOutIsDeadlineExceeded) {
  FetchOptions options;
  options.wait = absl::Milliseconds(100);
  EXPECT_EQ(client_->Fetch("never", options).status().code(),
            absl::StatusCode::kDeadlineExceeded);
  EXPECT_EQ(client_->Stat("never", absl::Milliseconds(100)).status().code(),
            absl::StatusCode::kDeadlineExceeded);
}

TEST_P(ClientServerTest, CancelledPushLeavesNothingBehind) {
  const auto bytes = MakeTestImage(8 << 20);
  auto channel =
      grpc::CreateChannel(depot_->target(), grpc::InsecureChannelCredentials());
  auto stub = v1::Depot::NewStub(channel);
  {
    grpc::ClientContext context;
    v1::PushResponse response;
    auto writer = stub->Push(&context, &response);
    v1::PushRequest request = PushHeaderFor("half", bytes);
    ASSERT_TRUE(writer->Write(request));
    writer->WaitForInitialMetadata();  // the server accepted the header
    request.set_chunk(bytes.data(), 1 << 20);
    ASSERT_TRUE(writer->Write(request));
    context.TryCancel();
    EXPECT_EQ(writer->Finish().error_code(), grpc::StatusCode::CANCELLED);
  }
  EXPECT_EQ(client_->Stat("half").status().code(), absl::StatusCode::kNotFound);
  // The server notices the cancellation on its own schedule; its
  // reservation must go back to zero, and soon.
  const absl::Time give_up = absl::Now() + absl::Seconds(10);
  while (depot_->store().Stats().reserved_bytes != 0 && absl::Now() < give_up) {
    std::this_thread::yield();
  }
  EXPECT_EQ(depot_->store().Stats().reserved_bytes, 0u);
  // And the id is free for a complete push.
  PushOptions create_only;
  create_only.if_generation_match = 0;
  EXPECT_TRUE(
      client_->Push("half", bytes.data(), bytes.size(), create_only).ok());
}

TEST_P(ClientServerTest, ListPagesThroughAllImagesWithAPrefix) {
  const auto bytes = MakeTestImage(100);
  for (int i = 0; i < 25; ++i) {
    ASSERT_TRUE(
        client_
            ->Push("job/" + std::to_string(100 + i), bytes.data(), bytes.size())
            .ok());
  }
  ASSERT_TRUE(client_->Push("other", bytes.data(), bytes.size()).ok());
  std::vector<std::string> ids;
  ListOptions options;
  options.prefix = "job/";
  options.page_size = 10;
  int pages = 0;
  do {
    auto page = client_->List(options);
    ASSERT_TRUE(page.ok()) << page.status();
    for (const auto& info : page->images) ids.push_back(info.image_id);
    options.page_token = page->next_page_token;
    ++pages;
  } while (!options.page_token.empty());
  EXPECT_EQ(pages, 3);
  ASSERT_EQ(ids.size(), 25u);
  EXPECT_EQ(ids.front(), "job/100");
  EXPECT_EQ(ids.back(), "job/124");
}

TEST_P(ClientServerTest, TimeToLiveMakesTheImageExpire) {
  const auto bytes = MakeTestImage(100);
  PushOptions options;
  options.ttl = absl::Milliseconds(300);
  auto pushed = client_->Push("brief", bytes.data(), bytes.size(), options);
  ASSERT_TRUE(pushed.ok());
  EXPECT_NE(pushed->expires, absl::InfiniteFuture());
  EXPECT_NEAR(absl::ToDoubleMilliseconds(pushed->expires - pushed->created),
              300, 1);
  // The expiry is the event under test: poll for it within a generous bound.
  const absl::Time give_up = absl::Now() + absl::Seconds(10);
  absl::StatusCode code = absl::StatusCode::kOk;
  while (absl::Now() < give_up) {
    code = client_->Stat("brief").status().code();
    if (code != absl::StatusCode::kOk) break;
    ASSERT_LT(absl::Now(), pushed->expires + absl::Seconds(1));
  }
  EXPECT_EQ(code, absl::StatusCode::kNotFound);
  EXPECT_GE(absl::Now(), pushed->expires);
}

TEST_P(ClientServerTest, OversizedMessageIsRefusedByTheServer) {
  // A client that ignores the advertised chunk limit gets RESOURCE_EXHAUSTED
  // and leaves nothing behind.
  auto limits = client_->GetLimits();
  ASSERT_TRUE(limits.ok());
  const auto bytes = MakeTestImage(limits->max_chunk_bytes * 2);
  auto channel =
      grpc::CreateChannel(depot_->target(), grpc::InsecureChannelCredentials());
  auto stub = v1::Depot::NewStub(channel);
  grpc::ClientContext context;
  v1::PushResponse response;
  auto writer = stub->Push(&context, &response);
  v1::PushRequest request = PushHeaderFor("huge-chunk", bytes);
  writer->Write(request);
  request.set_chunk(bytes.data(), bytes.size());
  writer->Write(request);
  writer->WritesDone();
  grpc::Status status = writer->Finish();
  EXPECT_EQ(status.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED);
  EXPECT_EQ(client_->Stat("huge-chunk").status().code(),
            absl::StatusCode::kNotFound);
}

TEST_P(ClientServerTest, WireProtocolStreamsInfoThenChunks) {
  const auto bytes = MakeTestImage((2 << 20) + 7);
  auto pushed = client_->Push("wire", bytes.data(), bytes.size());
  ASSERT_TRUE(pushed.ok());
  auto channel =
      grpc::CreateChannel(depot_->target(), grpc::InsecureChannelCredentials());
  auto stub = v1::Depot::NewStub(channel);
  grpc::ClientContext context;
  v1::FetchRequest request;
  request.set_image_id("wire");
  auto reader = stub->Fetch(&context, request);
  v1::FetchResponse response;
  ASSERT_TRUE(reader->Read(&response));
  ASSERT_TRUE(response.has_info());
  EXPECT_EQ(response.info().size(), bytes.size());
  EXPECT_EQ(response.info().generation(), pushed->generation);
  size_t received = 0;
  int chunks = 0;
  while (reader->Read(&response)) {
    ASSERT_TRUE(response.has_chunk());
    EXPECT_LE(response.chunk().size(), size_t{4} << 20);
    received += response.chunk().size();
    ++chunks;
  }
  EXPECT_TRUE(reader->Finish().ok());
  EXPECT_EQ(received, bytes.size());
  EXPECT_GE(chunks, 2);
}

// Below the client library, which checks ids itself: every RPC that names
// an image refuses one no push could have stored as INVALID_ARGUMENT, the
// code the data lane gives too, not NOT_FOUND.
TEST_P(ClientServerTest, EveryRpcRefusesAMalformedIdAsInvalidArgument) {
  const auto bytes = MakeTestImage(4096);
  ASSERT_TRUE(client_->Push("kept", bytes.data(), bytes.size()).ok());
  auto stub = v1::Depot::NewStub(grpc::CreateChannel(
      depot_->target(), grpc::InsecureChannelCredentials()));
  const std::vector<std::string> malformed = {
      "../etc", "", std::string(300, 'a'), std::string("a\0b", 3)};
  for (const std::string& id : malformed) {
    SCOPED_TRACE(absl::CEscape(id));
    for (uint64_t wait_ms : {uint64_t{0}, uint64_t{60'000}}) {
      grpc::ClientContext context;
      v1::FetchRequest request;
      request.set_image_id(id);
      request.set_wait_timeout_ms(wait_ms);
      auto reader = stub->Fetch(&context, request);
      v1::FetchResponse response;
      EXPECT_FALSE(reader->Read(&response));
      EXPECT_EQ(reader->Finish().error_code(),
                grpc::StatusCode::INVALID_ARGUMENT)
          << "Fetch, wait " << wait_ms;
    }
    {
      grpc::ClientContext context;
      v1::ReadRequest request;
      request.set_image_id(id);
      request.set_length(10);
      auto reader = stub->Read(&context, request);
      v1::ReadResponse response;
      EXPECT_FALSE(reader->Read(&response));
      EXPECT_EQ(reader->Finish().error_code(),
                grpc::StatusCode::INVALID_ARGUMENT)
          << "Read";
    }
    {
      grpc::ClientContext context;
      auto stream = stub->OpenReader(&context);
      v1::ReaderRequest open;
      open.mutable_open()->set_image_id(id);
      stream->Write(open);
      stream->WritesDone();
      v1::ReaderResponse response;
      while (stream->Read(&response)) {
      }
      EXPECT_EQ(stream->Finish().error_code(),
                grpc::StatusCode::INVALID_ARGUMENT)
          << "OpenReader";
    }
    for (uint64_t wait_ms : {uint64_t{0}, uint64_t{60'000}}) {
      grpc::ClientContext context;
      v1::StatRequest request;
      request.set_image_id(id);
      request.set_wait_timeout_ms(wait_ms);
      v1::ImageInfo info;
      EXPECT_EQ(stub->Stat(&context, request, &info).error_code(),
                grpc::StatusCode::INVALID_ARGUMENT)
          << "Stat, wait " << wait_ms;
    }
    {
      grpc::ClientContext context;
      v1::DeleteRequest request;
      request.set_image_id(id);
      v1::DeleteResponse response;
      EXPECT_EQ(stub->Delete(&context, request, &response).error_code(),
                grpc::StatusCode::INVALID_ARGUMENT)
          << "Delete";
    }
  }
  EXPECT_TRUE(client_->Stat("kept").ok());
}

TEST(ServerShutdownTest, UnixSocketFileIsRemovedOnShutdown) {
  server::ServerOptions options;
  options.listen_address = "";
  options.unix_socket_path = UniqueSocketPath();
  auto server = server::DepotServer::Start(options);
  ASSERT_TRUE(server.ok()) << server.status();
  EXPECT_EQ(access(options.unix_socket_path.c_str(), F_OK), 0);
  (*server)->Shutdown(absl::Seconds(1));
  EXPECT_NE(access(options.unix_socket_path.c_str(), F_OK), 0);
}

TEST(ClientConnectTest, UnreachableServerIsUnavailableWithTheAddress) {
  auto client = Client::Connect("unix:/nonexistent/h5depot.sock");
  EXPECT_EQ(client.status().code(), absl::StatusCode::kUnavailable);
  EXPECT_NE(client.status().message().find("/nonexistent/h5depot.sock"),
            std::string::npos);
}

TEST(ServerStartTest, AddressInUseIsUnavailable) {
  server::ServerOptions options;
  options.listen_address = "127.0.0.1:0";
  auto first = server::DepotServer::Start(options);
  ASSERT_TRUE(first.ok());
  options.listen_address = "127.0.0.1:" + std::to_string((*first)->port());
  auto second = server::DepotServer::Start(options);
  EXPECT_EQ(second.status().code(), absl::StatusCode::kUnavailable);
}

INSTANTIATE_TEST_SUITE_P(Transports, ClientServerTest,
                         ::testing::Values(Transport::kTcp, Transport::kUnix),
                         [](const auto& param_info) {
                           return param_info.param == Transport::kTcp ? "Tcp"
                                                                      : "Unix";
                         });

}  // namespace
}  // namespace h5depot
