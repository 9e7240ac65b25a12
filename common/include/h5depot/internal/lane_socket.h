// A connected stream socket of the data lane (lane_protocol.h), moving whole
// buffers: each call returns only when every byte went or came, or with the
// reason it could not. Plain, or encrypted once StartTls has run (tls.h).
#ifndef H5DEPOT_COMMON_LANE_SOCKET_H_
#define H5DEPOT_COMMON_LANE_SOCKET_H_

#include <sys/uio.h>

#include <cstddef>
#include <cstdint>
#include <deque>
#include <memory>
#include <string>
#include <utility>

#include "absl/functional/function_ref.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"

struct ssl_st;  // OpenSSL's SSL

namespace h5depot::internal::tls {
class Context;
}  // namespace h5depot::internal::tls

namespace h5depot::internal::lane {

// Errors: UNAVAILABLE when the peer closed or reset the connection,
// DEADLINE_EXCEEDED when `deadline` passed or the stall timeout set with
// SetStallTimeout() ran out with no progress. After any error the socket is
// out of step with its peer and only good for closing.
class LaneSocket {
 public:
  LaneSocket() = default;
  explicit LaneSocket(int fd) : fd_(fd) {}  // takes ownership
  ~LaneSocket();
  LaneSocket(LaneSocket&& other) noexcept;
  LaneSocket& operator=(LaneSocket&& other) noexcept;
  LaneSocket(const LaneSocket&) = delete;
  LaneSocket& operator=(const LaneSocket&) = delete;

  bool is_open() const { return fd_ >= 0; }
  // The descriptor, for socket options and for polling for a hang-up; on
  // a TLS socket never for reading or writing, nor for polling for data
  // (OpenSSL may hold received bytes the descriptor no longer shows).
  int fd() const { return fd_; }

  // Runs the TLS handshake on this connected socket, as the client or the
  // server `context` was made for, by `deadline`; from then on every send
  // and receive is encrypted. A client checks that the server's
  // certificate is valid, signed by a CA it trusts, and names
  // `server_name` (a host name, or an IP address literal). UNAVAILABLE
  // saying why if the handshake fails (the socket is then only good for
  // closing), DEADLINE_EXCEEDED if `deadline` passes first.
  absl::Status StartTls(const tls::Context& context,
                        const std::string& server_name, absl::Time deadline);
  bool is_tls() const { return ssl_ != nullptr; }

  // Sends the `count` buffers of `iov` in order, in as few system calls as
  // the kernel allows. `iov` is modified.
  absl::Status SendAll(struct iovec* iov, int count,
                       absl::Time deadline = absl::InfiniteFuture());
  absl::Status Send(const void* data, size_t size,
                    absl::Time deadline = absl::InfiniteFuture());

  // SendAll, with `descriptor` riding on the first bytes (SCM_RIGHTS), on a
  // plain Unix socket. The caller keeps its descriptor; the peer gets a
  // duplicate.
  absl::Status SendAllWithDescriptor(
      struct iovec* iov, int count, int descriptor,
      absl::Time deadline = absl::InfiniteFuture());
  // The same with two descriptors, which the peer takes in this order.
  absl::Status SendAllWithDescriptors(
      struct iovec* iov, int count, int first, int second,
      absl::Time deadline = absl::InfiniteFuture());

  // From now on, receives take the descriptors that ride with the bytes
  // (plain Unix sockets), kept for TakeDescriptor() in the order they came.
  // Without it the kernel closes any descriptor sent to this socket.
  void AcceptDescriptors() { accepts_descriptors_ = true; }
  // The oldest descriptor received and not taken, now the caller's; -1 if
  // none. A message's descriptor has arrived once its first byte has been
  // received.
  int TakeDescriptor();
  // Whether a descriptor sent to this socket was lost on the way in because
  // this process had no room for it (RLIMIT_NOFILE), since the last call.
  bool TakeLostDescriptors() { return std::exchange(lost_descriptors_, false); }

  // Receives exactly `size` bytes into `data`.
  absl::Status Receive(void* data, size_t size,
                       absl::Time deadline = absl::InfiniteFuture());

  // Receives up to `size` bytes, at least one, as they come.
  absl::StatusOr<size_t> ReceiveSome(
      void* data, size_t size, absl::Time deadline = absl::InfiniteFuture());

  // Whether received bytes can be moved into a pipe by SpliceSome: a plain
  // socket that takes no descriptors.
  bool can_splice() const { return ssl_ == nullptr && !accepts_descriptors_; }
  // As ReceiveSome, but the bytes go into the pipe whose write end is `pipe`
  // by reference (splice), not copied; at most the room the pipe has left.
  // Only where can_splice() (FAILED_PRECONDITION otherwise).
  absl::StatusOr<size_t> SpliceSome(
      int pipe, size_t size, absl::Time deadline = absl::InfiniteFuture());

  // Each later send or receive fails with DEADLINE_EXCEEDED when no byte
  // moves for `timeout`; InfiniteDuration (the default) to wait forever.
  absl::Status SetStallTimeout(absl::Duration timeout);

  // True once the peer has closed or reset its end (data still unread does
  // not count). Does not block.
  bool PeerHungUp() const;

  // Wakes every thread blocked on this socket with an error; the descriptor
  // stays open until destruction. Thread-safe against the socket's user.
  void Shutdown();

  void Close();

 private:
  absl::Status AwaitReady(short events, absl::Time deadline);
  // The TLS counterparts of the plain system calls: the descriptor is
  // non-blocking, and a wait for it is bounded by `deadline` and by the
  // stall timeout alike.
  absl::Status AwaitTls(short events, absl::Time deadline);
  // Continues after an OpenSSL call on ssl_ returned `result`: OK to try
  // the call again (after waiting for the descriptor), else the error.
  absl::Status ContinueTls(int result, absl::Time deadline);
  absl::Status TlsSendAll(struct iovec* iov, int count, absl::Time deadline);
  absl::StatusOr<size_t> TlsReceiveSome(void* data, size_t size,
                                        absl::Time deadline);

  // `descriptors` (-1 for none) ride on the first bytes sent.
  absl::Status SendAllPlain(struct iovec* iov, int count,
                            const int (&descriptors)[2], absl::Time deadline);
  // recv(), or with descriptors accepted recvmsg() keeping them.
  ssize_t ReceivePlain(void* data, size_t size, int flags);
  void CloseDescriptors();

  int fd_ = -1;
  ssl_st* ssl_ = nullptr;
  bool accepts_descriptors_ = false;
  bool lost_descriptors_ = false;
  std::deque<int> descriptors_;  // received, not taken
  absl::Duration stall_timeout_ = absl::InfiniteDuration();
};

// Receives from a LaneSocket through a small buffer, so that a header and
// a small payload behind it arrive in one system call, while large reads go
// straight from the kernel into their destination. It may read ahead into
// the next message; use one reader per socket for the socket's whole life.
class LaneReader {
 public:
  explicit LaneReader(LaneSocket* socket);

  // Receives exactly `size` bytes into `out`.
  absl::Status Read(void* out, size_t size,
                    absl::Time deadline = absl::InfiniteFuture());
  // Receives at least one and at most `size` (> 0) bytes into `out`, as
  // they come; returns how many.
  absl::StatusOr<size_t> ReadSome(void* out, size_t size,
                                  absl::Time deadline = absl::InfiniteFuture());
  // Receives and discards `size` bytes.
  absl::Status Skip(uint64_t size,
                    absl::Time deadline = absl::InfiniteFuture());

  // Waits for more bytes and buffers them (one system call). Costs nothing
  // extra when the next Read would have made that call anyway.
  absl::Status Fill(absl::Time deadline = absl::InfiniteFuture());

  // Bytes received but not read yet.
  size_t buffered() const { return end_ - begin_; }

  // Receives exactly `size` bytes and writes them to the pipe whose write
  // end is `pipe`, handing each piece to `seen` as well, in order (to be
  // verified; `seen`'s pointer is valid only during the call). Buffered
  // bytes are written from the buffer; the rest move from the socket into
  // the pipe by reference (spliced into a private pipe, duplicated into
  // `pipe` with tee) and are read once, for `seen`: one copy of each byte
  // in this process, not two. A `pipe` without room blocks, as write()
  // does (or is polled, if non-blocking, until `deadline`). Only where
  // socket.can_splice() (FAILED_PRECONDITION otherwise, nothing moved).
  // Failing to write to `pipe` returns an error saying so, and SIGPIPE is
  // raised as a write() would (its reader gone).
  absl::Status MoveToPipe(int pipe, uint64_t size, absl::Time deadline,
                          absl::FunctionRef<void(const uint8_t*, size_t)> seen);

 private:
  static constexpr size_t kBufferBytes = size_t{64} << 10;

  LaneSocket* socket_;
  std::unique_ptr<uint8_t[]> buffer_;
  size_t begin_ = 0;
  size_t end_ = 0;
};

// Connects to a TCP `host` (name or address) and `port`, with TCP_NODELAY
// and keepalive on. UNAVAILABLE if nothing answers by `deadline`.
absl::StatusOr<LaneSocket> ConnectTcp(const std::string& host, int port,
                                      absl::Time deadline);
// Connects to the Unix domain socket at `path`.
absl::StatusOr<LaneSocket> ConnectUnix(const std::string& path,
                                       absl::Time deadline);

// Tunes a connected socket for the lane: on TCP, no Nagle delay and
// keepalive probes (a peer host that vanished is noticed within about a
// minute); on a Unix socket, a send buffer large enough for bulk transfers.
void TuneSocket(int fd);

}  // namespace h5depot::internal::lane

#endif  // H5DEPOT_COMMON_LANE_SOCKET_H_
