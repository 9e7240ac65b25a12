// The data lane's socket (h5depot/internal/lane_socket.h) and its wire
// encoding (lane_protocol.h) between two threads of one process, over a
// socket pair: a client thread pushes images while a server thread answers
// each, every byte checked at both ends; and Shutdown() from another thread
// wakes a thread blocked on the socket, as the server's lane does when it
// stops. data_lane_test speaks the same protocol to a real h5depotd; these
// need no server, so that they run in the ThreadSanitizer build too.
#include "h5depot/internal/lane_socket.h"

#include <sys/socket.h>
#include <sys/uio.h>

#include <cstdint>
#include <cstring>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "gtest/gtest.h"
#include "h5depot/internal/checksum.h"
#include "h5depot/internal/lane_protocol.h"
#include "test_images.h"

namespace h5depot::internal::lane {
namespace {

using ::h5depot::testing::MakeTestImage;

// Both ends of a connected Unix stream socket pair.
struct SocketPair {
  SocketPair() {
    int fds[2] = {-1, -1};
    EXPECT_EQ(::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, fds), 0);
    client = LaneSocket(fds[0]);
    server = LaneSocket(fds[1]);
  }
  LaneSocket client;
  LaneSocket server;
};

// A safety net against a peer that never answers (the test then fails
// instead of hanging), not a measurement.
absl::Time IoDeadline() { return absl::Now() + absl::Seconds(60); }

// Image sizes around LaneReader's buffering: headers and small images come
// through its buffer, from a quarter of it (16 KiB) on they go straight
// into the destination; and the eager-push limit.
constexpr size_t kImageSizes[] = {0,
                                  1,
                                  100,
                                  4096,
                                  (16 << 10) - 1,
                                  16 << 10,
                                  64 << 10,
                                  (64 << 10) + 1,
                                  kEagerPutBytes,
                                  kEagerPutBytes + 3};

std::string IdOf(size_t i) { return absl::StrCat("run-", i, "/packet.h5"); }

// The server's side: reads `count` pushes, checks each against what the
// client was to send, and answers each with its generation and checksum.
// Returns the first thing that went wrong, OK if nothing did.
absl::Status ServePushes(LaneSocket* socket, size_t count) {
  LaneReader reader(socket);
  for (size_t i = 0; i < count; ++i) {
    uint8_t header_bytes[kRequestHeaderBytes];
    if (absl::Status s =
            reader.Read(header_bytes, sizeof(header_bytes), IoDeadline());
        !s.ok()) {
      return s;
    }
    RequestHeader header;
    if (absl::Status s = DecodeRequestHeader(header_bytes, &header); !s.ok()) {
      return s;
    }
    const size_t expected_size = kImageSizes[i % std::size(kImageSizes)];
    if (header.op != Op::kPut || header.size != expected_size ||
        header.ttl_ms != i || header.if_generation_match != i) {
      return absl::InternalError(
          absl::StrCat("request ", i, " header differs"));
    }
    std::string id(header.image_id_bytes, '\0');
    std::vector<uint8_t> image(header.size);
    uint8_t checksum_bytes[8];
    for (auto [out, size] :
         {std::pair<void*, size_t>{id.data(), id.size()},
          std::pair<void*, size_t>{image.data(), image.size()},
          std::pair<void*, size_t>{checksum_bytes, sizeof(checksum_bytes)}}) {
      if (absl::Status s = reader.Read(out, size, IoDeadline()); !s.ok()) {
        return s;
      }
    }
    const uint64_t checksum = Checksum(image.data(), image.size());
    if (id != IdOf(i) || image != MakeTestImage(expected_size, i + 1) ||
        DecodeU64(checksum_bytes) != checksum) {
      return absl::InternalError(absl::StrCat("push ", i, " arrived damaged"));
    }

    const std::string message = absl::StrCat("stored ", id);
    Response response;
    response.message_bytes = static_cast<uint16_t>(message.size());
    response.size = image.size();
    response.generation = i + 1;
    response.checksum = checksum;
    uint8_t response_bytes[kResponseHeaderBytes];
    EncodeResponse(response, response_bytes);
    iovec iov[] = {{response_bytes, sizeof(response_bytes)},
                   {const_cast<char*>(message.data()), message.size()}};
    if (absl::Status s = socket->SendAll(iov, 2, IoDeadline()); !s.ok()) {
      return s;
    }
  }
  return absl::OkStatus();
}

TEST(LaneSocketTest, PushesAndAnswersCrossBetweenTwoThreadsIntact) {
  constexpr size_t kPushes = 3 * std::size(kImageSizes);
  SocketPair pair;
  absl::Status served;
  std::thread server([&] { served = ServePushes(&pair.server, kPushes); });

  LaneReader reader(&pair.client);
  for (size_t i = 0; i < kPushes; ++i) {
    const std::vector<uint8_t> image =
        MakeTestImage(kImageSizes[i % std::size(kImageSizes)], i + 1);
    const std::string id = IdOf(i);
    RequestHeader header;
    header.op = Op::kPut;
    header.image_id_bytes = static_cast<uint16_t>(id.size());
    header.size = image.size();
    header.if_generation_match = i;
    header.ttl_ms = i;
    uint8_t header_bytes[kRequestHeaderBytes];
    EncodeRequestHeader(header, header_bytes);
    uint8_t checksum_bytes[8];
    EncodeU64(Checksum(image.data(), image.size()), checksum_bytes);
    iovec iov[] = {{header_bytes, sizeof(header_bytes)},
                   {const_cast<char*>(id.data()), id.size()},
                   {const_cast<uint8_t*>(image.data()), image.size()},
                   {checksum_bytes, sizeof(checksum_bytes)}};
    ASSERT_TRUE(pair.client.SendAll(iov, 4, IoDeadline()).ok()) << i;

    uint8_t response_bytes[kResponseHeaderBytes];
    ASSERT_TRUE(
        reader.Read(response_bytes, sizeof(response_bytes), IoDeadline()).ok())
        << i;
    Response response;
    ASSERT_TRUE(DecodeResponse(response_bytes, &response).ok()) << i;
    std::string message(response.message_bytes, '\0');
    ASSERT_TRUE(reader.Read(message.data(), message.size(), IoDeadline()).ok());
    EXPECT_EQ(response.kind, ResponseKind::kFinal);
    EXPECT_EQ(response.code, absl::StatusCode::kOk);
    EXPECT_EQ(response.generation, i + 1);
    EXPECT_EQ(response.size, image.size());
    EXPECT_EQ(response.checksum, Checksum(image.data(), image.size()));
    EXPECT_EQ(message, "stored " + id);
  }
  server.join();
  EXPECT_TRUE(served.ok()) << served;
  EXPECT_EQ(reader.buffered(), 0u);
}

// Whenever Shutdown() comes -- before the receiver blocks or while it is
// blocked -- the receiver returns UNAVAILABLE, with or without a deadline.
TEST(LaneSocketTest, ShutdownFromAnotherThreadWakesABlockedReceiver) {
  for (const bool with_deadline : {false, true}) {
    SocketPair pair;
    absl::Status received;
    std::thread receiver([&] {
      LaneReader reader(&pair.server);
      uint8_t header[kRequestHeaderBytes];
      received =
          reader.Read(header, sizeof(header),
                      with_deadline ? IoDeadline() : absl::InfiniteFuture());
    });
    pair.server.Shutdown();
    receiver.join();
    EXPECT_EQ(received.code(), absl::StatusCode::kUnavailable)
        << "deadline: " << with_deadline << ": " << received;
  }
}

// A sender blocked on a peer that reads nothing (the socket's buffers
// full) is woken too: the lane's server stops even with a push under way.
TEST(LaneSocketTest, ShutdownFromAnotherThreadWakesABlockedSender) {
  for (const bool with_deadline : {false, true}) {
    SocketPair pair;
    // Far more than the socket pair's buffers hold.
    const std::vector<uint8_t> image = MakeTestImage(size_t{32} << 20);
    absl::Status sent;
    std::thread sender([&] {
      sent = pair.client.Send(
          image.data(), image.size(),
          with_deadline ? IoDeadline() : absl::InfiniteFuture());
    });
    pair.client.Shutdown();
    sender.join();
    EXPECT_EQ(sent.code(), absl::StatusCode::kUnavailable)
        << "deadline: " << with_deadline << ": " << sent;
  }
}

}  // namespace
}  // namespace h5depot::internal::lane
