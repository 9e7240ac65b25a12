// The zero-copy data path through a real server: chunk boundaries that do
// not line up between the two ends, empty images, bytes borrowed from the
// caller, generations that vanish while they are being sent or read, and
// clients that speak plain generated protobuf.
#include <grpcpp/generic/generic_stub.h>
#include <grpcpp/grpcpp.h>
#include <unistd.h>

#include <atomic>
#include <cstring>
#include <memory>
#include <string>
#include <thread>
#include <vector>

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

// The client sends 64 KiB chunks, the server 48 KiB ones, so that the
// boundaries of the two directions never coincide.
constexpr size_t kPushChunk = 64 << 10;
constexpr size_t kSendChunk = 48 << 10;

enum class Transport { kTcp, kUnix };

class DataPathTest : public ::testing::TestWithParam<Transport> {
 protected:
  void SetUp() override {
    server::ServerOptions options;
    options.send_chunk_bytes = kSendChunk;
    options.store.max_memory_bytes = uint64_t{256} << 20;
    options.store.max_image_bytes = uint64_t{64} << 20;
    options.store.require_hdf5 = false;  // empty and tiny images too
    auto depot = InProcessDepot::Start(options, GetParam() == Transport::kTcp
                                                    ? Listeners::kTcp
                                                    : Listeners::kUnix);
    ASSERT_TRUE(depot.ok()) << depot.status();
    depot_ = *std::move(depot);
    client_ = Connect();
  }

  std::unique_ptr<Client> Connect() {
    ClientOptions options;
    options.chunk_bytes = kPushChunk;
    auto client = depot_->Connect(options);
    EXPECT_TRUE(client.ok()) << client.status();
    return client.ok() ? *std::move(client) : nullptr;
  }

  void TearDown() override {
    client_.reset();
    depot_.reset();
  }

  std::unique_ptr<InProcessDepot> depot_;
  std::unique_ptr<Client> client_;
};

TEST_P(DataPathTest, ImagesAroundChunkBoundariesSurviveTheRoundTrip) {
  const size_t sizes[] = {0, 1, kSendChunk - 1, kSendChunk, kSendChunk + 1,
                          kPushChunk - 1, kPushChunk, kPushChunk + 1,
                          3 * kPushChunk, 3 * kSendChunk + 5, (1 << 20) + 3,
                          // Large enough for the server's append thread.
                          (17 << 20) + 11};
  uint32_t seed = 1;
  for (size_t size : sizes) {
    SCOPED_TRACE(size);
    const auto bytes = MakeTestImage(size, seed++);
    const std::string id = "edge/" + std::to_string(size);
    auto pushed = client_->Push(id, bytes.data(), bytes.size());
    ASSERT_TRUE(pushed.ok()) << pushed.status();
    EXPECT_EQ(pushed->size, size);
    auto fetched = client_->Fetch(id);
    ASSERT_TRUE(fetched.ok()) << fetched.status();
    ASSERT_EQ(fetched->buffer.size(), size);
    if (size > 0) {
      EXPECT_EQ(0, std::memcmp(fetched->buffer.data(), bytes.data(), size));
    }
  }
}

TEST_P(DataPathTest, ReadsAcrossChunkBoundariesReturnExactlyTheRange) {
  const auto bytes = MakeTestImage(5 * kSendChunk + 17);
  ASSERT_TRUE(client_->Push("ranges", bytes.data(), bytes.size()).ok());
  const std::pair<uint64_t, size_t> ranges[] = {{0, 0},
                                                {0, kSendChunk},
                                                {kSendChunk - 1, 2},
                                                {kSendChunk, kSendChunk + 1},
                                                {3, 4 * kSendChunk},
                                                {bytes.size() - 1, 10},
                                                {bytes.size(), 10}};
  for (const auto& [offset, length] : ranges) {
    SCOPED_TRACE(absl::StrCat(offset, "+", length));
    std::vector<uint8_t> out(length + 1, 0xee);
    auto read = client_->Read("ranges", 0, offset, out.data(), length);
    ASSERT_TRUE(read.ok()) << read.status();
    const size_t expected =
        offset >= bytes.size() ? 0 : std::min(length, bytes.size() - offset);
    ASSERT_EQ(read->bytes_read, expected);
    EXPECT_EQ(0, std::memcmp(out.data(), bytes.data() + offset, expected));
    EXPECT_EQ(out[expected], 0xee) << "wrote past the range";
  }
  // The same ranges through one reader, in one stream.
  auto reader = client_->OpenReader("ranges");
  ASSERT_TRUE(reader.ok()) << reader.status();
  for (const auto& [offset, length] : ranges) {
    SCOPED_TRACE(absl::StrCat("reader ", offset, "+", length));
    std::vector<uint8_t> out(length + 1, 0xee);
    auto read = (*reader)->Read(offset, out.data(), length);
    ASSERT_TRUE(read.ok()) << read.status();
    const size_t expected =
        offset >= bytes.size() ? 0 : std::min(length, bytes.size() - offset);
    ASSERT_EQ(*read, expected);
    EXPECT_EQ(0, std::memcmp(out.data(), bytes.data() + offset, expected));
    EXPECT_EQ(out[expected], 0xee) << "wrote past the range";
  }
}

TEST_P(DataPathTest, ReaderKeepsReadingAGenerationDeletedUnderIt) {
  const auto bytes = MakeTestImage(3 * kSendChunk + 1, 5);
  ASSERT_TRUE(client_->Push("pinned", bytes.data(), bytes.size()).ok());
  auto reader = client_->OpenReader("pinned");
  ASSERT_TRUE(reader.ok()) << reader.status();
  ASSERT_TRUE(client_->Delete("pinned").ok());
  std::vector<uint8_t> out(bytes.size());
  auto read = (*reader)->Read(0, out.data(), out.size());
  ASSERT_TRUE(read.ok()) << read.status();
  ASSERT_EQ(*read, bytes.size());
  EXPECT_EQ(out, bytes);
  reader->reset();
  // Closing the reader lets the last reference, and its memory, go.
  const absl::Time give_up = absl::Now() + absl::Seconds(10);
  while (depot_->store().Stats().reserved_bytes != 0 && absl::Now() < give_up) {
    absl::SleepFor(absl::Milliseconds(1));
  }
  EXPECT_EQ(depot_->store().Stats().reserved_bytes, 0u);
}

TEST_P(DataPathTest, CallersBytesAreFreeToReuseWhenPushReturns) {
  // Under AddressSanitizer this also proves that nothing still reads the
  // caller's buffer after Push returned.
  auto bytes =
      std::make_unique<std::vector<uint8_t>>(MakeTestImage((2 << 20) + 99, 7));
  const uint64_t checksum = internal::Checksum(bytes->data(), bytes->size());
  auto pushed = client_->Push("borrowed", bytes->data(), bytes->size());
  ASSERT_TRUE(pushed.ok()) << pushed.status();
  std::memset(bytes->data(), 0, bytes->size());
  bytes.reset();
  auto fetched = client_->Fetch("borrowed");
  ASSERT_TRUE(fetched.ok()) << fetched.status();
  EXPECT_EQ(internal::Checksum(fetched->buffer.data(), fetched->buffer.size()),
            checksum);
}

TEST_P(DataPathTest, RefusedPushReturnsAndReleasesTheCallersBytes) {
  const auto bytes = MakeTestImage(3 * kPushChunk);
  ASSERT_TRUE(client_->Push("taken", bytes.data(), bytes.size()).ok());
  PushOptions options;
  options.if_generation_match = 0;  // only if absent: refused
  auto refused = client_->Push("taken", bytes.data(), bytes.size(), options);
  EXPECT_EQ(refused.status().code(), absl::StatusCode::kAlreadyExists);
}

TEST_P(DataPathTest, FetchGetsTheWholeGenerationEvenIfDeletedMidway) {
  const auto bytes = MakeTestImage(8 << 20, 3);
  ASSERT_TRUE(client_->Push("fleeting", bytes.data(), bytes.size()).ok());
  std::unique_ptr<Client> other = Connect();
  ASSERT_NE(other, nullptr);
  bool deleted = false;
  FetchOptions options;
  options.progress = [&](uint64_t done, uint64_t) {
    if (!deleted && done > 0) {
      // Replaced, then deleted: only the transfer still holds the bytes.
      const auto replacement = MakeTestImage(1 << 20, 4);
      EXPECT_TRUE(
          other->Push("fleeting", replacement.data(), replacement.size()).ok());
      EXPECT_TRUE(other->Delete("fleeting").ok());
      deleted = true;
    }
  };
  auto fetched = client_->Fetch("fleeting", options);
  ASSERT_TRUE(fetched.ok()) << fetched.status();
  EXPECT_TRUE(deleted);
  ASSERT_EQ(fetched->buffer.size(), bytes.size());
  EXPECT_EQ(0, std::memcmp(fetched->buffer.data(), bytes.data(), bytes.size()));
  // Once the transfer is over, and the buffer gone (over the Unix socket
  // it maps the server's memory), its memory is released too.
  fetched->buffer = ImageBuffer();
  const absl::Time give_up = absl::Now() + absl::Seconds(10);
  while (depot_->store().Stats().reserved_bytes != 0 && absl::Now() < give_up) {
    absl::SleepFor(absl::Milliseconds(1));
  }
  EXPECT_EQ(depot_->store().Stats().reserved_bytes, 0u);
}

// Pushes `bytes` through the generated stub declaring `declared_size` and
// `checksum`, optionally cancelling after `cancel_after` bytes. Returns the
// call's status.
grpc::Status RawPush(const std::string& target, const std::string& id,
                     const std::vector<uint8_t>& bytes, uint64_t declared_size,
                     uint64_t checksum, size_t cancel_after = SIZE_MAX) {
  auto channel =
      grpc::CreateChannel(target, grpc::InsecureChannelCredentials());
  auto stub = v1::Depot::NewStub(channel);
  grpc::ClientContext context;
  v1::PushResponse response;
  auto writer = stub->Push(&context, &response);
  v1::PushRequest request;
  request.mutable_header()->set_image_id(id);
  request.mutable_header()->set_size(declared_size);
  request.mutable_header()->set_checksum(checksum);
  if (writer->Write(request)) {
    writer->WaitForInitialMetadata();
    for (size_t sent = 0; sent < bytes.size();) {
      if (sent >= cancel_after) {
        context.TryCancel();
        break;
      }
      const size_t n = std::min<size_t>(kPushChunk, bytes.size() - sent);
      request.set_chunk(bytes.data() + sent, n);
      if (!writer->Write(request)) break;
      sent += n;
    }
    writer->WritesDone();
  }
  return writer->Finish();
}

// Waits (boundedly) for the server to have released every reservation.
void ExpectNothingReserved(server::DepotServer& server) {
  const absl::Time give_up = absl::Now() + absl::Seconds(10);
  while (server.store().Stats().reserved_bytes != 0 && absl::Now() < give_up) {
    absl::SleepFor(absl::Milliseconds(1));
  }
  EXPECT_EQ(server.store().Stats().reserved_bytes, 0u);
}

TEST_P(DataPathTest, LargePushesThatGoWrongLeaveNothingBehind) {
  // Large enough to be appended by the server's append thread.
  const auto bytes = MakeTestImage((20 << 20) + 3, 13);
  const uint64_t checksum = internal::Checksum(bytes.data(), bytes.size());
  const std::string target = depot_->target();
  EXPECT_EQ(
      RawPush(target, "bad", bytes, bytes.size(), checksum ^ 1).error_code(),
      grpc::StatusCode::DATA_LOSS);
  EXPECT_EQ(
      RawPush(target, "bad", bytes, bytes.size() - 5, checksum).error_code(),
      grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_EQ(
      RawPush(target, "bad", bytes, bytes.size() + 5, checksum).error_code(),
      grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_EQ(RawPush(target, "bad", bytes, bytes.size(), checksum, 8 << 20)
                .error_code(),
            grpc::StatusCode::CANCELLED);
  EXPECT_EQ(client_->Stat("bad").status().code(), absl::StatusCode::kNotFound);
  ExpectNothingReserved(depot_->server());
  // And a good one still goes through.
  EXPECT_TRUE(RawPush(target, "bad", bytes, bytes.size(), checksum).ok());
  auto fetched = client_->Fetch("bad");
  ASSERT_TRUE(fetched.ok()) << fetched.status();
  EXPECT_EQ(internal::Checksum(fetched->buffer.data(), fetched->buffer.size()),
            checksum);
}

TEST_P(DataPathTest, GeneratedStubPushIsStoredAndFetchedIntact) {
  // Chunks of odd sizes, one of them empty, encoded by protobuf itself.
  const auto bytes = MakeTestImage(200000, 9);
  auto channel =
      grpc::CreateChannel(depot_->target(), grpc::InsecureChannelCredentials());
  auto stub = v1::Depot::NewStub(channel);
  grpc::ClientContext context;
  v1::PushResponse response;
  auto writer = stub->Push(&context, &response);
  v1::PushRequest request = PushHeaderFor("generated", bytes);
  ASSERT_TRUE(writer->Write(request));
  size_t sent = 0;
  for (size_t n : {size_t{1}, size_t{0}, size_t{70000}, size_t{12345}}) {
    request.set_chunk(bytes.data() + sent, n);
    ASSERT_TRUE(writer->Write(request));
    sent += n;
  }
  request.set_chunk(bytes.data() + sent, bytes.size() - sent);
  ASSERT_TRUE(writer->Write(request));
  writer->WritesDone();
  grpc::Status status = writer->Finish();
  ASSERT_TRUE(status.ok()) << status.error_message();
  EXPECT_EQ(response.info().size(), bytes.size());

  auto fetched = client_->Fetch("generated");
  ASSERT_TRUE(fetched.ok()) << fetched.status();
  ASSERT_EQ(fetched->buffer.size(), bytes.size());
  EXPECT_EQ(0, std::memcmp(fetched->buffer.data(), bytes.data(), bytes.size()));
}

TEST_P(DataPathTest, NonCanonicalChunkEncodingIsReadAsProtobufWould) {
  // A chunk message holding its field twice, sent as raw bytes through the
  // generic stub: the server must store the last occurrence.
  const auto bytes = MakeTestImage(5000, 11);
  auto channel =
      grpc::CreateChannel(depot_->target(), grpc::InsecureChannelCredentials());
  grpc::GenericStub stub(channel);
  grpc::ClientContext context;
  grpc::CompletionQueue queue;
  auto call = stub.PrepareCall(&context, "/h5depot.v1.Depot/Push", &queue);
  void* tag;
  bool ok;
  auto step = [&] { return queue.Next(&tag, &ok) && ok; };
  call->StartCall(nullptr);
  ASSERT_TRUE(step());
  v1::PushRequest header = PushHeaderFor("doubled", bytes);
  v1::PushRequest decoy, real;
  decoy.set_chunk("decoy bytes");
  real.set_chunk(bytes.data(), bytes.size());
  grpc::Slice header_slice(header.SerializeAsString());
  grpc::Slice chunk_slice(decoy.SerializeAsString() + real.SerializeAsString());
  grpc::ByteBuffer header_message(&header_slice, 1);
  grpc::ByteBuffer chunk_message(&chunk_slice, 1);
  call->Write(header_message, nullptr);
  ASSERT_TRUE(step());
  call->WriteLast(chunk_message, grpc::WriteOptions(), nullptr);
  ASSERT_TRUE(step());
  grpc::ByteBuffer reply;
  call->Read(&reply, nullptr);
  ASSERT_TRUE(step());
  grpc::Status status;
  call->Finish(&status, nullptr);
  ASSERT_TRUE(step());
  ASSERT_TRUE(status.ok()) << status.error_message();
  call.reset();
  queue.Shutdown();
  while (queue.Next(&tag, &ok)) {
  }

  auto fetched = client_->Fetch("doubled");
  ASSERT_TRUE(fetched.ok()) << fetched.status();
  ASSERT_EQ(fetched->buffer.size(), bytes.size());
  EXPECT_EQ(0, std::memcmp(fetched->buffer.data(), bytes.data(), bytes.size()));
}

TEST_P(DataPathTest, ServerShutdownEndsAWaitingFetch) {
  std::atomic<bool> done{false};
  absl::Status result;
  std::thread waiter([&] {
    FetchOptions options;
    options.wait = absl::Seconds(60);
    result = client_->Fetch("never", options).status();
    done = true;
  });
  // Whether the wait began before the shutdown or raced with it, it must
  // end now, not run out its minute: UNAVAILABLE from the store, or
  // CANCELLED when gRPC refused the call at the door.
  depot_->Shutdown(absl::Seconds(1));
  waiter.join();
  EXPECT_TRUE(done);
  EXPECT_TRUE(result.code() == absl::StatusCode::kUnavailable ||
              result.code() == absl::StatusCode::kCancelled)
      << result;
}

INSTANTIATE_TEST_SUITE_P(Transports, DataPathTest,
                         ::testing::Values(Transport::kTcp, Transport::kUnix),
                         [](const auto& param_info) {
                           return param_info.param == Transport::kTcp ? "Tcp"
                                                                      : "Unix";
                         });

}  // namespace
}  // namespace h5depot
