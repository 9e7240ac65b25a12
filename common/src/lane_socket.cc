#include "h5depot/internal/lane_socket.h"

#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <openssl/bio.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509_vfy.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <climits>
#include <cstring>
#include <utility>

#include "absl/strings/str_cat.h"
#include "h5depot/internal/host_name.h"
#include "h5depot/internal/tls.h"

namespace h5depot::internal::lane {
namespace {

absl::Status ErrnoStatus(int error, std::string_view what) {
  if (error == EAGAIN || error == EWOULDBLOCK) {
    return absl::DeadlineExceededError(
        absl::StrCat(std::string(what), ": the peer stalled"));
  }
  return absl::UnavailableError(
      absl::StrCat(std::string(what), ": ", std::strerror(error)));
}

absl::Status PeerClosed() {
  return absl::UnavailableError("the data lane connection was closed");
}

// Encrypted bytes a TLS socket gathers before it sends them.
constexpr int kTlsWriteBufferBytes = 256 * 1024;

// Milliseconds for poll() until `deadline`, rounded up; -1 for none.
int PollTimeout(absl::Time deadline) {
  if (deadline == absl::InfiniteFuture()) return -1;
  const absl::Duration left = deadline - absl::Now();
  if (left <= absl::ZeroDuration()) return 0;
  return static_cast<int>(std::min<int64_t>(
      INT_MAX,
      absl::ToInt64Milliseconds(absl::Ceil(left, absl::Milliseconds(1)))));
}

absl::Status ConnectAddress(int fd, const sockaddr* address,
                            socklen_t address_bytes, absl::Time deadline,
                            const std::string& name) {
  if (::connect(fd, address, address_bytes) == 0) return absl::OkStatus();
  if (errno != EINPROGRESS && errno != EINTR) {
    return ErrnoStatus(errno, absl::StrCat("connect to ", name));
  }
  pollfd entry{fd, POLLOUT, 0};
  while (true) {
    const int ready = ::poll(&entry, 1, PollTimeout(deadline));
    if (ready > 0) break;
    if (ready == 0) {
      return absl::UnavailableError(
          absl::StrCat("connect to ", name, ": timed out"));
    }
    if (errno != EINTR) return ErrnoStatus(errno, "poll");
  }
  int error = 0;
  socklen_t error_bytes = sizeof(error);
  ::getsockopt(fd, SOL_SOCKET, SO_ERROR, &error, &error_bytes);
  if (error != 0) return ErrnoStatus(error, absl::StrCat("connect to ", name));
  return absl::OkStatus();
}

// A socket connected to `address` by `deadline`, blocking again afterwards.
absl::StatusOr<LaneSocket> Connect(int family, const sockaddr* address,
                                   socklen_t address_bytes, absl::Time deadline,
                                   const std::string& name) {
  LaneSocket socket(
      ::socket(family, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0));
  if (!socket.is_open()) return ErrnoStatus(errno, "socket");
  if (absl::Status status =
          ConnectAddress(socket.fd(), address, address_bytes, deadline, name);
      !status.ok()) {
    return status;
  }
  const int flags = ::fcntl(socket.fd(), F_GETFL);
  ::fcntl(socket.fd(), F_SETFL, flags & ~O_NONBLOCK);
  TuneSocket(socket.fd());
  return socket;
}

}  // namespace

LaneSocket::~LaneSocket() { Close(); }

LaneSocket::LaneSocket(LaneSocket&& other) noexcept
    : fd_(std::exchange(other.fd_, -1)),
      ssl_(std::exchange(other.ssl_, nullptr)),
      accepts_descriptors_(other.accepts_descriptors_),
      lost_descriptors_(other.lost_descriptors_),
      descriptors_(std::move(other.descriptors_)),
      stall_timeout_(other.stall_timeout_) {
  other.descriptors_.clear();
}

LaneSocket& LaneSocket::operator=(LaneSocket&& other) noexcept {
  if (this != &other) {
    Close();
    fd_ = std::exchange(other.fd_, -1);
    ssl_ = std::exchange(other.ssl_, nullptr);
    accepts_descriptors_ = other.accepts_descriptors_;
    lost_descriptors_ = other.lost_descriptors_;
    descriptors_ = std::move(other.descriptors_);
    other.descriptors_.clear();
    stall_timeout_ = other.stall_timeout_;
  }
  return *this;
}

int LaneSocket::TakeDescriptor() {
  if (descriptors_.empty()) return -1;
  const int descriptor = descriptors_.front();
  descriptors_.pop_front();
  return descriptor;
}

void LaneSocket::CloseDescriptors() {
  for (int descriptor : descriptors_) ::close(descriptor);
  descriptors_.clear();
}

void LaneSocket::Close() {
  // No close_notify: every lane message says its own length, so a cut
  // connection cannot pass for a complete one.
  if (ssl_ != nullptr) SSL_free(ssl_);
  ssl_ = nullptr;
  if (fd_ >= 0) ::close(fd_);
  fd_ = -1;
  CloseDescriptors();
}

void LaneSocket::Shutdown() {
  if (fd_ >= 0) ::shutdown(fd_, SHUT_RDWR);
}

absl::Status LaneSocket::AwaitReady(short events, absl::Time deadline) {
  if (deadline == absl::InfiniteFuture()) return absl::OkStatus();
  pollfd entry{fd_, events, 0};
  while (true) {
    const int ready = ::poll(&entry, 1, PollTimeout(deadline));
    if (ready > 0) return absl::OkStatus();
    if (ready == 0) {
      return absl::DeadlineExceededError("the data lane call timed out");
    }
    if (errno != EINTR) return ErrnoStatus(errno, "poll");
  }
}

absl::Status LaneSocket::SendAll(struct iovec* iov, int count,
                                 absl::Time deadline) {
  if (ssl_ != nullptr) return TlsSendAll(iov, count, deadline);
  return SendAllPlain(iov, count, {-1, -1}, deadline);
}

absl::Status LaneSocket::SendAllWithDescriptor(struct iovec* iov, int count,
                                               int descriptor,
                                               absl::Time deadline) {
  if (ssl_ != nullptr) {
    return absl::FailedPreconditionError("descriptors cannot be sent over TLS");
  }
  return SendAllPlain(iov, count, {descriptor, -1}, deadline);
}

absl::Status LaneSocket::SendAllWithDescriptors(struct iovec* iov, int count,
                                                int first, int second,
                                                absl::Time deadline) {
  if (ssl_ != nullptr) {
    return absl::FailedPreconditionError("descriptors cannot be sent over TLS");
  }
  return SendAllPlain(iov, count, {first, second}, deadline);
}

absl::Status LaneSocket::SendAllPlain(struct iovec* iov, int count,
                                      const int (&descriptors)[2],
                                      absl::Time deadline) {
  const int riding =
      (descriptors[0] >= 0 ? 1 : 0) + (descriptors[1] >= 0 ? 1 : 0);
  bool descriptors_sent = riding == 0;
  const int flags =
      MSG_NOSIGNAL | (deadline == absl::InfiniteFuture() ? 0 : MSG_DONTWAIT);
  while (count > 0) {
    if (iov->iov_len == 0) {
      ++iov;
      --count;
      continue;
    }
    msghdr message{};
    message.msg_iov = iov;
    message.msg_iovlen = static_cast<size_t>(std::min(count, IOV_MAX));
    alignas(cmsghdr) char control[CMSG_SPACE(2 * sizeof(int))];
    if (!descriptors_sent) {
      // On the first bytes only: once any went, the descriptors went too.
      const size_t bytes = static_cast<size_t>(riding) * sizeof(int);
      std::memset(control, 0, sizeof(control));
      message.msg_control = control;
      message.msg_controllen = CMSG_SPACE(bytes);
      cmsghdr* header = CMSG_FIRSTHDR(&message);
      header->cmsg_level = SOL_SOCKET;
      header->cmsg_type = SCM_RIGHTS;
      header->cmsg_len = CMSG_LEN(bytes);
      unsigned char* out = CMSG_DATA(header);
      for (const int descriptor : descriptors) {
        if (descriptor < 0) continue;
        std::memcpy(out, &descriptor, sizeof(int));
        out += sizeof(int);
      }
    }
    const ssize_t sent = ::sendmsg(fd_, &message, flags);
    if (sent > 0) descriptors_sent = true;
    if (sent < 0) {
      if (errno == EINTR) continue;
      if ((errno == EAGAIN || errno == EWOULDBLOCK) &&
          deadline != absl::InfiniteFuture()) {
        if (absl::Status status = AwaitReady(POLLOUT, deadline); !status.ok())
          return status;
        continue;
      }
      return ErrnoStatus(errno, "send on the data lane");
    }
    for (size_t left = static_cast<size_t>(sent); left > 0;) {
      const size_t n = std::min(left, iov->iov_len);
      iov->iov_base = static_cast<uint8_t*>(iov->iov_base) + n;
      iov->iov_len -= n;
      left -= n;
      if (iov->iov_len == 0) {
        ++iov;
        --count;
      }
    }
  }
  return absl::OkStatus();
}

absl::Status LaneSocket::Send(const void* data, size_t size,
                              absl::Time deadline) {
  iovec iov{const_cast<void*>(data), size};
  return SendAll(&iov, 1, deadline);
}

absl::StatusOr<size_t> LaneSocket::ReceiveSome(void* data, size_t size,
                                               absl::Time deadline) {
  if (ssl_ != nullptr) return TlsReceiveSome(data, size, deadline);
  const int flags = deadline == absl::InfiniteFuture() ? 0 : MSG_DONTWAIT;
  while (true) {
    const ssize_t received = ReceivePlain(data, size, flags);
    if (received > 0) return static_cast<size_t>(received);
    if (received == 0) return PeerClosed();
    if (errno == EINTR) continue;
    if ((errno == EAGAIN || errno == EWOULDBLOCK) &&
        deadline != absl::InfiniteFuture()) {
      if (absl::Status status = AwaitReady(POLLIN, deadline); !status.ok())
        return status;
      continue;
    }
    return ErrnoStatus(errno, "receive on the data lane");
  }
}

absl::StatusOr<size_t> LaneSocket::SpliceSome(int pipe, size_t size,
                                              absl::Time deadline) {
  if (!can_splice()) {
    return absl::FailedPreconditionError(
        "bytes can be spliced only from a plain socket");
  }
  while (true) {
    // Waiting in poll first keeps `deadline`: the socket itself blocks (up
    // to the stall timeout) once splice is called.
    if (absl::Status status = AwaitReady(POLLIN, deadline); !status.ok()) {
      return status;
    }
    const ssize_t moved =
        ::splice(fd_, nullptr, pipe, nullptr, size, SPLICE_F_MOVE);
    if (moved > 0) return static_cast<size_t>(moved);
    if (moved == 0) return PeerClosed();
    if (errno == EINTR) continue;
    if ((errno == EAGAIN || errno == EWOULDBLOCK) &&
        deadline != absl::InfiniteFuture()) {
      continue;
    }
    return ErrnoStatus(errno, "receive on the data lane");
  }
}

// Received descriptors not yet taken, at most.
constexpr size_t kMaxHeldDescriptors = 16;

ssize_t LaneSocket::ReceivePlain(void* data, size_t size, int flags) {
  if (!accepts_descriptors_) return ::recv(fd_, data, size, flags);
  iovec iov{data, size};
  msghdr message{};
  message.msg_iov = &iov;
  message.msg_iovlen = 1;
  // Room for a few: a peer sends at most two per message, and a receive
  // stops at the next message that carries one.
  alignas(cmsghdr) char control[CMSG_SPACE(4 * sizeof(int))];
  message.msg_control = control;
  message.msg_controllen = sizeof(control);
  const ssize_t received = ::recvmsg(fd_, &message, flags | MSG_CMSG_CLOEXEC);
  if (received < 0) return received;
  if ((message.msg_flags & MSG_CTRUNC) != 0) lost_descriptors_ = true;
  for (cmsghdr* header = CMSG_FIRSTHDR(&message); header != nullptr;
       header = CMSG_NXTHDR(&message, header)) {
    if (header->cmsg_level != SOL_SOCKET || header->cmsg_type != SCM_RIGHTS) {
      continue;
    }
    const size_t count = (header->cmsg_len - CMSG_LEN(0)) / sizeof(int);
    for (size_t i = 0; i < count; ++i) {
      int descriptor;
      std::memcpy(&descriptor, CMSG_DATA(header) + i * sizeof(int),
                  sizeof(int));
      if (descriptors_.size() >= kMaxHeldDescriptors) {
        // A peer that floods this socket with descriptors gets them closed.
        ::close(descriptor);
        lost_descriptors_ = true;
        continue;
      }
      descriptors_.push_back(descriptor);
    }
  }
  return received;
}

absl::Status LaneSocket::Receive(void* data, size_t size, absl::Time deadline) {
  auto* out = static_cast<uint8_t*>(data);
  while (size > 0) {
    if (deadline == absl::InfiniteFuture() && ssl_ == nullptr &&
        !accepts_descriptors_) {
      // One call for the whole buffer when nothing needs polling.
      const ssize_t received = ::recv(fd_, out, size, MSG_WAITALL);
      if (received > 0) {
        out += received;
        size -= static_cast<size_t>(received);
        continue;
      }
      if (received == 0) return PeerClosed();
      if (errno == EINTR) continue;
      return ErrnoStatus(errno, "receive on the data lane");
    }
    absl::StatusOr<size_t> received = ReceiveSome(out, size, deadline);
    if (!received.ok()) return received.status();
    out += *received;
    size -= *received;
  }
  return absl::OkStatus();
}

absl::Status LaneSocket::SetStallTimeout(absl::Duration timeout) {
  stall_timeout_ = timeout;  // what a TLS socket's waits are bounded by
  timeval value{};
  if (timeout != absl::InfiniteDuration()) {
    value = absl::ToTimeval(std::max(timeout, absl::Milliseconds(1)));
  }
  if (::setsockopt(fd_, SOL_SOCKET, SO_RCVTIMEO, &value, sizeof(value)) != 0 ||
      ::setsockopt(fd_, SOL_SOCKET, SO_SNDTIMEO, &value, sizeof(value)) != 0) {
    return ErrnoStatus(errno, "setsockopt");
  }
  return absl::OkStatus();
}

absl::Status LaneSocket::StartTls(const tls::Context& context,
                                  const std::string& server_name,
                                  absl::Time deadline) {
  ERR_clear_error();
  SSL* ssl = SSL_new(context.get());
  // Records are written through a buffer, so that a large send leaves in
  // a few large system calls rather than one per 16 KiB record (about a
  // third of a TLS push's time otherwise); SendAll flushes it.
  BIO* socket_bio = BIO_new_socket(fd_, BIO_NOCLOSE);
  BIO* write_buffer = BIO_new(BIO_f_buffer());
  if (ssl == nullptr || socket_bio == nullptr || write_buffer == nullptr ||
      BIO_set_write_buffer_size(write_buffer, kTlsWriteBufferBytes) != 1) {
    SSL_free(ssl);
    BIO_free(socket_bio);
    BIO_free(write_buffer);
    return absl::InternalError("cannot start TLS on the data lane");
  }
  // The socket BIO is both the read end and the tail of the write chain:
  // one reference each, both released by SSL_free.
  BIO_up_ref(socket_bio);
  BIO_push(write_buffer, socket_bio);
  SSL_set_bio(ssl, socket_bio, write_buffer);
  // Records may be written in part (the rest when the socket has room),
  // from a buffer that moved meanwhile; and a peer that closes without a
  // close_notify reads as closed, as a plain socket does.
  SSL_set_mode(
      ssl, SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER);
  SSL_set_options(ssl, SSL_OP_IGNORE_UNEXPECTED_EOF);
  if (context.is_server()) {
    SSL_set_accept_state(ssl);
  } else {
    if (IsIpAddressLiteral(server_name)) {
      X509_VERIFY_PARAM_set1_ip_asc(SSL_get0_param(ssl), server_name.c_str());
    } else {
      SSL_set_tlsext_host_name(ssl, server_name.c_str());
      SSL_set1_host(ssl, server_name.c_str());
    }
    SSL_set_connect_state(ssl);
  }
  const int flags = ::fcntl(fd_, F_GETFL);
  ::fcntl(fd_, F_SETFL, flags | O_NONBLOCK);
  ssl_ = ssl;
  while (true) {
    ERR_clear_error();
    const int result = SSL_do_handshake(ssl_);
    if (result == 1) return absl::OkStatus();
    const long verified = SSL_get_verify_result(ssl_);
    absl::Status status = ContinueTls(result, deadline);
    if (status.ok()) continue;
    if (verified != X509_V_OK) {
      return absl::UnavailableError(absl::StrCat(
          "TLS handshake: the ", context.is_server() ? "client's" : "server's",
          " certificate was refused: ",
          X509_verify_cert_error_string(verified)));
    }
    return absl::UnavailableError(
        absl::StrCat("TLS handshake: ", status.message()));
  }
}

absl::Status LaneSocket::AwaitTls(short events, absl::Time deadline) {
  absl::Time until = deadline;
  bool stall_bound = false;
  if (stall_timeout_ != absl::InfiniteDuration()) {
    const absl::Time stalled_at = absl::Now() + stall_timeout_;
    if (stalled_at < until) {
      until = stalled_at;
      stall_bound = true;
    }
  }
  pollfd entry{fd_, events, 0};
  while (true) {
    const int ready = ::poll(&entry, 1, PollTimeout(until));
    if (ready > 0) return absl::OkStatus();
    if (ready == 0) {
      return absl::DeadlineExceededError(stall_bound
                                             ? "the data lane peer stalled"
                                             : "the data lane call timed out");
    }
    if (errno != EINTR) return ErrnoStatus(errno, "poll");
  }
}

absl::Status LaneSocket::ContinueTls(int result, absl::Time deadline) {
  const int error = SSL_get_error(ssl_, result);
  switch (error) {
    case SSL_ERROR_WANT_READ:
      return AwaitTls(POLLIN, deadline);
    case SSL_ERROR_WANT_WRITE:
      return AwaitTls(POLLOUT, deadline);
    case SSL_ERROR_ZERO_RETURN:
      return PeerClosed();
    case SSL_ERROR_SYSCALL:
      if (errno == 0 || errno == EPIPE || errno == ECONNRESET) {
        return PeerClosed();
      }
      return ErrnoStatus(errno, "TLS on the data lane");
    default:
      return absl::UnavailableError(absl::StrCat(
          "TLS on the data lane failed: ", tls::TakeOpenSslErrors()));
  }
}

absl::Status LaneSocket::TlsSendAll(struct iovec* iov, int count,
                                    absl::Time deadline) {
  // Small buffers (a header, a short message) go out gathered into one
  // record; a large one is encrypted straight from where it lies.
  constexpr size_t kGatherBytes = 16 * 1024;
  uint8_t gathered[kGatherBytes];
  auto write_all = [&](const uint8_t* data, size_t size) -> absl::Status {
    while (size > 0) {
      size_t written = 0;
      ERR_clear_error();
      const int result = SSL_write_ex(ssl_, data, size, &written);
      if (result == 1) {
        data += written;
        size -= written;
        continue;
      }
      if (absl::Status status = ContinueTls(result, deadline); !status.ok()) {
        return status;
      }
    }
    return absl::OkStatus();
  };
  // Sends what the write buffer holds.
  auto flush = [&]() -> absl::Status {
    BIO* buffer = SSL_get_wbio(ssl_);
    while (BIO_flush(buffer) != 1) {
      if (!BIO_should_retry(buffer)) {
        return errno == EPIPE || errno == ECONNRESET
                   ? PeerClosed()
                   : ErrnoStatus(errno, "send on the data lane");
      }
      if (absl::Status status = AwaitTls(POLLOUT, deadline); !status.ok()) {
        return status;
      }
    }
    return absl::OkStatus();
  };
  size_t held = 0;
  for (int i = 0; i < count; ++i) {
    const auto* data = static_cast<const uint8_t*>(iov[i].iov_base);
    const size_t size = iov[i].iov_len;
    if (size == 0) continue;  // an empty message: its base may be null
    if (held + size <= kGatherBytes) {
      std::memcpy(gathered + held, data, size);
      held += size;
      continue;
    }
    if (held > 0) {
      if (absl::Status status = write_all(gathered, held); !status.ok()) {
        return status;
      }
      held = 0;
    }
    if (absl::Status status = write_all(data, size); !status.ok()) {
      return status;
    }
  }
  if (held > 0) {
    if (absl::Status status = write_all(gathered, held); !status.ok()) {
      return status;
    }
  }
  return flush();
}

absl::StatusOr<size_t> LaneSocket::TlsReceiveSome(void* data, size_t size,
                                                  absl::Time deadline) {
  while (true) {
    size_t received = 0;
    ERR_clear_error();
    const int result = SSL_read_ex(ssl_, data, size, &received);
    if (result == 1) return received;
    if (absl::Status status = ContinueTls(result, deadline); !status.ok()) {
      return status;
    }
  }
}

bool LaneSocket::PeerHungUp() const {
  pollfd entry{fd_, POLLRDHUP, 0};
  return ::poll(&entry, 1, 0) > 0 &&
         (entry.revents & (POLLRDHUP | POLLHUP | POLLERR)) != 0;
}

LaneReader::LaneReader(LaneSocket* socket)
    : socket_(socket), buffer_(new uint8_t[kBufferBytes]) {}

absl::Status LaneReader::Read(void* out, size_t size, absl::Time deadline) {
  auto* to = static_cast<uint8_t*>(out);
  while (size > 0) {
    if (buffered() > 0) {
      const size_t n = std::min(size, buffered());
      std::memcpy(to, buffer_.get() + begin_, n);
      begin_ += n;
      to += n;
      size -= n;
      continue;
    }
    if (size >= kBufferBytes / 4) return socket_->Receive(to, size, deadline);
    if (absl::Status status = Fill(deadline); !status.ok()) return status;
  }
  return absl::OkStatus();
}

absl::StatusOr<size_t> LaneReader::ReadSome(void* out, size_t size,
                                            absl::Time deadline) {
  if (buffered() == 0) {
    if (size >= kBufferBytes / 4) {
      return socket_->ReceiveSome(out, size, deadline);
    }
    if (absl::Status status = Fill(deadline); !status.ok()) return status;
  }
  const size_t n = std::min(size, buffered());
  std::memcpy(out, buffer_.get() + begin_, n);
  begin_ += n;
  return n;
}

absl::Status LaneReader::Fill(absl::Time deadline) {
  if (buffered() == kBufferBytes) return absl::OkStatus();
  if (begin_ == end_) begin_ = end_ = 0;
  if (end_ == kBufferBytes) {
    std::memmove(buffer_.get(), buffer_.get() + begin_, end_ - begin_);
    end_ -= begin_;
    begin_ = 0;
  }
  absl::StatusOr<size_t> received =
      socket_->ReceiveSome(buffer_.get() + end_, kBufferBytes - end_, deadline);
  if (!received.ok()) return received.status();
  end_ += *received;
  return absl::OkStatus();
}

namespace {

// Waits until the pipe whose write end is `pipe` has room, for a
// non-blocking one (a blocking one waits in the call itself).
absl::Status AwaitPipeRoom(int pipe, absl::Time deadline) {
  pollfd entry{pipe, POLLOUT, 0};
  while (true) {
    const int ready = ::poll(&entry, 1, PollTimeout(deadline));
    if (ready > 0) return absl::OkStatus();
    if (ready == 0) {
      return absl::DeadlineExceededError("the pipe written to stayed full");
    }
    if (errno != EINTR) return ErrnoStatus(errno, "poll");
  }
}

absl::Status PipeWriteError(int error) {
  return absl::UnavailableError(
      absl::StrCat("cannot write to the pipe: ", std::strerror(error)));
}

absl::Status WriteToPipe(int pipe, const uint8_t* data, size_t size,
                         absl::Time deadline) {
  while (size > 0) {
    const ssize_t written = ::write(pipe, data, size);
    if (written >= 0) {
      data += written;
      size -= static_cast<size_t>(written);
      continue;
    }
    if (errno == EINTR) continue;
    if (errno == EAGAIN) {
      if (absl::Status status = AwaitPipeRoom(pipe, deadline); !status.ok()) {
        return status;
      }
      continue;
    }
    return PipeWriteError(errno);
  }
  return absl::OkStatus();
}

// A pipe of this process's own, closed with it.
class PrivatePipe {
 public:
  PrivatePipe() {
    if (::pipe2(ends_, O_CLOEXEC) != 0) ends_[0] = ends_[1] = -1;
  }
  ~PrivatePipe() {
    for (int end : ends_) {
      if (end >= 0) ::close(end);
    }
  }
  PrivatePipe(const PrivatePipe&) = delete;
  PrivatePipe& operator=(const PrivatePipe&) = delete;

  bool is_open() const { return ends_[0] >= 0; }
  int read_end() const { return ends_[0]; }
  int write_end() const { return ends_[1]; }

 private:
  int ends_[2];
};

// What a private pipe is widened to, so that each splice moves a large
// piece (what an unprivileged process may ask for by default).
constexpr int kSplicePipeBytes = 1 << 20;

}  // namespace

absl::Status LaneReader::MoveToPipe(
    int pipe, uint64_t size, absl::Time deadline,
    absl::FunctionRef<void(const uint8_t*, size_t)> seen) {
  if (!socket_->can_splice()) {
    return absl::FailedPreconditionError(
        "bytes can be spliced only from a plain socket");
  }
  if (buffered() > 0) {
    const size_t n = static_cast<size_t>(std::min<uint64_t>(size, buffered()));
    const uint8_t* from = buffer_.get() + begin_;
    if (absl::Status status = WriteToPipe(pipe, from, n, deadline);
        !status.ok()) {
      return status;
    }
    seen(from, n);
    begin_ += n;
    size -= n;
  }
  if (size == 0) return absl::OkStatus();
  PrivatePipe staging;
  if (!staging.is_open()) return ErrnoStatus(errno, "pipe");
  ::fcntl(staging.write_end(), F_SETPIPE_SZ, kSplicePipeBytes);
  const int room = ::fcntl(staging.write_end(), F_GETPIPE_SZ);
  const size_t piece = room > 0 ? static_cast<size_t>(room) : kBufferBytes;
  while (size > 0) {
    // The staging pipe is empty here, so the splice moves up to its size.
    absl::StatusOr<size_t> spliced = socket_->SpliceSome(
        staging.write_end(),
        static_cast<size_t>(std::min<uint64_t>(size, piece)), deadline);
    if (!spliced.ok()) return spliced.status();
    size -= *spliced;
    // tee duplicates the head of the staging pipe into `pipe`, as much as
    // `pipe` has room for; exactly those bytes are then read out of the
    // staging pipe (through this reader's buffer), so the next tee starts
    // where this one ended.
    for (size_t left = *spliced; left > 0;) {
      const ssize_t teed = ::tee(staging.read_end(), pipe, left, 0);
      if (teed <= 0) {
        if (teed < 0 && errno == EINTR) continue;
        if (teed < 0 && errno == EAGAIN) {
          if (absl::Status status = AwaitPipeRoom(pipe, deadline);
              !status.ok()) {
            return status;
          }
          continue;
        }
        return PipeWriteError(teed < 0 ? errno : EIO);
      }
      left -= static_cast<size_t>(teed);
      for (size_t unread = static_cast<size_t>(teed); unread > 0;) {
        const ssize_t got = ::read(staging.read_end(), buffer_.get(),
                                   std::min(unread, kBufferBytes));
        if (got <= 0) {
          if (got < 0 && errno == EINTR) continue;
          return ErrnoStatus(got < 0 ? errno : EIO, "read a private pipe");
        }
        seen(buffer_.get(), static_cast<size_t>(got));
        unread -= static_cast<size_t>(got);
      }
    }
  }
  return absl::OkStatus();
}

absl::Status LaneReader::Skip(uint64_t size, absl::Time deadline) {
  while (size > 0) {
    if (buffered() == 0) {
      if (absl::Status status = Fill(deadline); !status.ok()) return status;
    }
    const size_t n = static_cast<size_t>(std::min<uint64_t>(size, buffered()));
    begin_ += n;
    size -= n;
  }
  return absl::OkStatus();
}

void TuneSocket(int fd) {
  sockaddr_storage address{};
  socklen_t address_bytes = sizeof(address);
  ::getsockname(fd, reinterpret_cast<sockaddr*>(&address), &address_bytes);
  int on = 1;
  if (address.ss_family == AF_UNIX) {
    // A Unix socket's sender may queue only its send buffer's worth; the
    // default (about 200 KiB) makes a large transfer a ping-pong of small
    // batches between the two processes. The kernel caps this at
    // net.core.wmem_max. (TCP sizes its buffers itself, better left alone.)
    int send_buffer_bytes = 4 << 20;
    ::setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &send_buffer_bytes,
                 sizeof(send_buffer_bytes));
    return;
  }
  ::setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &on, sizeof(on));
  if (::setsockopt(fd, SOL_SOCKET, SO_KEEPALIVE, &on, sizeof(on)) == 0) {
    int idle_seconds = 20, interval_seconds = 10, probes = 4;
    ::setsockopt(fd, IPPROTO_TCP, TCP_KEEPIDLE, &idle_seconds,
                 sizeof(idle_seconds));
    ::setsockopt(fd, IPPROTO_TCP, TCP_KEEPINTVL, &interval_seconds,
                 sizeof(interval_seconds));
    ::setsockopt(fd, IPPROTO_TCP, TCP_KEEPCNT, &probes, sizeof(probes));
  }
}

absl::StatusOr<LaneSocket> ConnectTcp(const std::string& host, int port,
                                      absl::Time deadline) {
  const std::string name = absl::StrCat(host, ":", port);
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = AI_NUMERICSERV;
  addrinfo* addresses = nullptr;
  const std::string service = std::to_string(port);
  if (const int error =
          ::getaddrinfo(host.c_str(), service.c_str(), &hints, &addresses);
      error != 0) {
    return absl::UnavailableError(
        absl::StrCat("cannot resolve ", host, ": ", ::gai_strerror(error)));
  }
  absl::Status last =
      absl::UnavailableError(absl::StrCat("no address for ", host));
  for (addrinfo* a = addresses; a != nullptr; a = a->ai_next) {
    absl::StatusOr<LaneSocket> socket =
        Connect(a->ai_family, a->ai_addr, a->ai_addrlen, deadline, name);
    if (socket.ok()) {
      ::freeaddrinfo(addresses);
      return socket;
    }
    last = socket.status();
  }
  ::freeaddrinfo(addresses);
  return last;
}

absl::StatusOr<LaneSocket> ConnectUnix(const std::string& path,
                                       absl::Time deadline) {
  sockaddr_un address{};
  address.sun_family = AF_UNIX;
  if (path.empty() || path.size() >= sizeof(address.sun_path)) {
    return absl::InvalidArgumentError(
        absl::StrCat("bad Unix socket path '", path, "'"));
  }
  std::memcpy(address.sun_path, path.data(), path.size());
  return Connect(AF_UNIX, reinterpret_cast<const sockaddr*>(&address),
                 sizeof(address), deadline, path);
}

}  // namespace h5depot::internal::lane
