// The data lane's socket (h5depot/internal/lane_socket.h) and its wire
// encoding (lane_protocol.h) between two threads of one process, over a
// socket pair: a client thread pushes images while a server thread answers
// each, every byte checked at both ends; and Shutdown() from another thread
// wakes a thread blocked on the socket, as the server's lane does when it
// stops. data_lane_test speaks the same protocol to a real h5depotd; these
// need no server, so that they run in the ThreadSanitizer build too.
#include "h5depot/internal/lane_socket.h"

#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <unistd.h>

#include <cerrno>
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

// Both ends of a TCP connection over loopback.
struct TcpPair {
  TcpPair() {
    const int listener = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_in address{};
    address.sin_family = AF_INET;
    address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t address_bytes = sizeof(address);
    EXPECT_EQ(::bind(listener, reinterpret_cast<sockaddr*>(&address),
                     sizeof(address)),
              0);
    EXPECT_EQ(::listen(listener, 1), 0);
    EXPECT_EQ(::getsockname(listener, reinterpret_cast<sockaddr*>(&address),
                            &address_bytes),
              0);
    const int connected = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    EXPECT_EQ(::connect(connected, reinterpret_cast<sockaddr*>(&address),
                        sizeof(address)),
              0)
        << std::strerror(errno);
    client = LaneSocket(connected);
    server = LaneSocket(::accept4(listener, nullptr, nullptr, SOCK_CLOEXEC));
    ::close(listener);
  }
  LaneSocket client;
  LaneSocket server;
};

// A pipe; the ends still open are closed with it.
struct Pipe {
  Pipe() { EXPECT_EQ(::pipe2(ends, O_CLOEXEC), 0) << std::strerror(errno); }
  ~Pipe() {
    CloseReadEnd();
    CloseWriteEnd();
  }
  void CloseReadEnd() {
    if (ends[0] >= 0) ::close(ends[0]);
    ends[0] = -1;
  }
  void CloseWriteEnd() {
    if (ends[1] >= 0) ::close(ends[1]);
    ends[1] = -1;
  }
  int read_end() const { return ends[0]; }
  int write_end() const { return ends[1]; }
  int ends[2] = {-1, -1};
};

// Everything read from `fd` until its writers are gone.
std::string ReadUntilClosed(int fd) {
  std::string data;
  char buffer[1 << 16];
  while (true) {
    const ssize_t got = ::read(fd, buffer, sizeof(buffer));
    if (got > 0) {
      data.append(buffer, static_cast<size_t>(got));
    } else if (got == 0 || errno != EINTR) {
      return data;
    }
  }
}

std::string AsString(const std::vector<uint8_t>& bytes) {
  return std::string(bytes.begin(), bytes.end());
}

// Sends a 24-byte header and then `body` in one call, as a server answers
// a fetch; the receiver reads the header (its reader buffering whatever of
// the body came with it) and moves the body into a pipe: every byte
// reaches the pipe and `seen` once, in order, over TCP and a Unix socket,
// for bodies inside the reader's buffer, across its end and far beyond
// it, with and without a deadline.
TEST(LaneSocketTest, MoveToPipeDeliversTheBodyInOrderAndShowsEachByteOnce) {
  for (const bool tcp : {true, false}) {
    for (const size_t size :
         {size_t{1}, size_t{4096}, size_t{100000}, (size_t{3} << 20) + 5}) {
      for (const bool with_deadline : {false, true}) {
        SCOPED_TRACE(absl::StrCat(tcp ? "tcp " : "unix ", size, " bytes",
                                  with_deadline ? ", deadline" : ""));
        TcpPair tcp_pair;
        SocketPair unix_pair;
        LaneSocket& sending = tcp ? tcp_pair.client : unix_pair.client;
        LaneSocket& receiving = tcp ? tcp_pair.server : unix_pair.server;
        ASSERT_TRUE(receiving.can_splice());
        const std::vector<uint8_t> body = MakeTestImage(size);
        const std::string message = std::string(24, 'Z') + AsString(body);
        std::thread sender([&] {
          EXPECT_TRUE(sending.Send(message.data(), message.size()).ok());
        });
        Pipe pipe;
        std::string piped;
        std::thread drainer([&] { piped = ReadUntilClosed(pipe.read_end()); });

        LaneReader reader(&receiving);
        uint8_t header[24];
        ASSERT_TRUE(reader.Read(header, sizeof(header), IoDeadline()).ok());
        std::string seen;
        const absl::Status moved = reader.MoveToPipe(
            pipe.write_end(), body.size(),
            with_deadline ? IoDeadline() : absl::InfiniteFuture(),
            [&](const uint8_t* data, size_t n) {
              seen.append(reinterpret_cast<const char*>(data), n);
            });
        pipe.CloseWriteEnd();
        drainer.join();
        sender.join();
        EXPECT_TRUE(moved.ok()) << moved;
        EXPECT_TRUE(piped == AsString(body)) << "the pipe got other bytes";
        EXPECT_TRUE(seen == AsString(body)) << "`seen` got other bytes";
        EXPECT_EQ(reader.buffered(), 0u);
      }
    }
  }
}

// A socket that takes descriptors may carry one with the bytes, which a
// splice would drop: MoveToPipe refuses it and reads nothing.
TEST(LaneSocketTest, MoveToPipeRefusesASocketThatTakesDescriptors) {
  SocketPair pair;
  pair.server.AcceptDescriptors();
  EXPECT_FALSE(pair.server.can_splice());
  const std::vector<uint8_t> body = MakeTestImage(4096);
  ASSERT_TRUE(pair.client.Send(body.data(), body.size(), IoDeadline()).ok());
  Pipe pipe;
  LaneReader reader(&pair.server);
  EXPECT_EQ(reader
                .MoveToPipe(pipe.write_end(), body.size(), IoDeadline(),
                            [](const uint8_t*, size_t) {})
                .code(),
            absl::StatusCode::kFailedPrecondition);
  std::vector<uint8_t> still_there(body.size());
  ASSERT_TRUE(
      reader.Read(still_there.data(), still_there.size(), IoDeadline()).ok());
  EXPECT_EQ(still_there, body);
}

// A peer that closes part-way, and a pipe whose reader went away, each end
// the move with an error that says which; the pipe's case as UNAVAILABLE
// with SIGPIPE ignored (a process that keeps the default dies of it, as it
// would writing).
TEST(LaneSocketTest, MoveToPipeSaysWhetherThePeerOrThePipeFailed) {
  {
    TcpPair pair;
    const std::vector<uint8_t> half = MakeTestImage(1 << 20);
    ASSERT_TRUE(pair.client.Send(half.data(), half.size(), IoDeadline()).ok());
    pair.client.Close();
    Pipe pipe;
    std::string piped;
    std::thread drainer([&] { piped = ReadUntilClosed(pipe.read_end()); });
    LaneReader reader(&pair.server);
    const absl::Status moved =
        reader.MoveToPipe(pipe.write_end(), 2 * half.size(), IoDeadline(),
                          [](const uint8_t*, size_t) {});
    pipe.CloseWriteEnd();
    drainer.join();
    EXPECT_EQ(moved.code(), absl::StatusCode::kUnavailable) << moved;
    EXPECT_NE(moved.message().find("closed"), std::string::npos) << moved;
    EXPECT_TRUE(piped == AsString(half));
  }
  struct sigaction ignore {};
  ignore.sa_handler = SIG_IGN;
  struct sigaction before {};
  ASSERT_EQ(::sigaction(SIGPIPE, &ignore, &before), 0);
  for (const size_t size : {size_t{100}, size_t{4} << 20}) {
    SCOPED_TRACE(size);
    TcpPair pair;
    const std::vector<uint8_t> body = MakeTestImage(size);
    std::thread sender([&] {
      // Fails once the receiver gives up and closes: either is fine.
      (void)pair.client.Send(body.data(), body.size(), IoDeadline());
    });
    Pipe pipe;
    pipe.CloseReadEnd();
    LaneReader reader(&pair.server);
    const absl::Status moved =
        reader.MoveToPipe(pipe.write_end(), body.size(), IoDeadline(),
                          [](const uint8_t*, size_t) {});
    pair.server.Shutdown();
    sender.join();
    EXPECT_EQ(moved.code(), absl::StatusCode::kUnavailable) << moved;
    EXPECT_NE(moved.message().find("cannot write to the pipe"),
              std::string::npos)
        << moved;
  }
  ASSERT_EQ(::sigaction(SIGPIPE, &before, nullptr), 0);
}

// A non-blocking pipe nobody reads is waited on only until the deadline,
// and so is a peer that sends no more.
TEST(LaneSocketTest, MoveToPipeEndsAtItsDeadline) {
  for (const bool pipe_full : {true, false}) {
    SCOPED_TRACE(pipe_full ? "the pipe stays full" : "the peer stops sending");
    TcpPair pair;
    const std::vector<uint8_t> body = MakeTestImage(size_t{4} << 20);
    const size_t sent = pipe_full ? body.size() : body.size() / 2;
    std::thread sender(
        [&] { (void)pair.client.Send(body.data(), sent, IoDeadline()); });
    Pipe pipe;
    std::string piped;
    std::thread drainer;
    if (pipe_full) {
      ASSERT_EQ(::fcntl(pipe.write_end(), F_SETFL, O_NONBLOCK), 0);
    } else {
      drainer = std::thread([&] { piped = ReadUntilClosed(pipe.read_end()); });
    }
    LaneReader reader(&pair.server);
    const absl::Status moved = reader.MoveToPipe(
        pipe.write_end(), body.size(), absl::Now() + absl::Milliseconds(300),
        [](const uint8_t*, size_t) {});
    pipe.CloseWriteEnd();
    if (drainer.joinable()) drainer.join();
    pair.server.Shutdown();
    sender.join();
    EXPECT_EQ(moved.code(), absl::StatusCode::kDeadlineExceeded) << moved;
    if (!pipe_full) {
      EXPECT_TRUE(piped == AsString(body).substr(0, sent));
    }
  }
}

}  // namespace
}  // namespace h5depot::internal::lane
