// http_load: a small HTTP/1.1 load generator (bench/http_gateway_bench.sh
// drives it; wrk is not on every machine). N threads, each with one
// keep-alive TCP connection, send GET for one URL, one request at a time,
// for a number of seconds, and count the answers.
//
//   http_load --url=http://127.0.0.1:8080/v1/images/small
//             [--connections=16] [--seconds=5] [--range=0-4095]
//             [--expect-bytes=4096]
//
// Of an answer it reads the status line and the Content-Length header, no
// more: the body is the next Content-Length bytes, read and dropped. A
// status other than 200 or 206, an answer without Content-Length, a body of
// other than --expect-bytes bytes, or a connection closed by the server is
// a failure; after one the thread reconnects. Prints, one per line:
// requests= (successful answers within the time), failures=, reconnects=,
// seconds=, requests_per_second=, bytes= (of bodies).
#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cctype>
#include <cerrno>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

namespace {

using Clock = std::chrono::steady_clock;

struct Options {
  std::string host;
  int port = 80;
  std::string path = "/";
  int connections = 16;
  double seconds = 5;
  std::string range;            // "first-last", sent as a Range header
  long long expect_bytes = -1;  // the body's length every answer must have
};

struct Counts {
  std::uint64_t requests = 0;
  std::uint64_t failures = 0;
  std::uint64_t reconnects = 0;
  std::uint64_t bytes = 0;
};

[[noreturn]] void Usage(const char* why) {
  std::fprintf(stderr,
               "http_load: %s\n"
               "usage: http_load --url=http://HOST:PORT/PATH [--connections=N]"
               " [--seconds=S] [--range=FIRST-LAST] [--expect-bytes=N]\n",
               why);
  std::exit(2);
}

// http://HOST[:PORT]/PATH, HOST a dotted IPv4 address.
bool ParseUrl(std::string_view url, Options& options) {
  constexpr std::string_view kScheme = "http://";
  if (url.substr(0, kScheme.size()) != kScheme) return false;
  url.remove_prefix(kScheme.size());
  const std::size_t slash = url.find('/');
  const std::string_view authority = url.substr(0, slash);
  options.path =
      slash == std::string_view::npos ? "/" : std::string(url.substr(slash));
  const std::size_t colon = authority.rfind(':');
  options.host = std::string(authority.substr(0, colon));
  if (colon != std::string_view::npos) {
    options.port = std::atoi(std::string(authority.substr(colon + 1)).c_str());
  }
  return !options.host.empty() && options.port > 0 && options.port < 65536;
}

Options ParseOptions(int argc, char** argv) {
  Options options;
  bool have_url = false;
  for (int i = 1; i < argc; ++i) {
    const std::string_view arg = argv[i];
    const std::size_t equals = arg.find('=');
    if (equals == std::string_view::npos) Usage("options are --name=value");
    const std::string_view name = arg.substr(0, equals);
    const std::string value(arg.substr(equals + 1));
    if (name == "--url") {
      if (!ParseUrl(value, options))
        Usage("--url is not http://IPV4:PORT/PATH");
      have_url = true;
    } else if (name == "--connections") {
      options.connections = std::atoi(value.c_str());
    } else if (name == "--seconds") {
      options.seconds = std::atof(value.c_str());
    } else if (name == "--range") {
      options.range = value;
    } else if (name == "--expect-bytes") {
      options.expect_bytes = std::atoll(value.c_str());
    } else {
      Usage("unknown option");
    }
  }
  if (!have_url) Usage("--url is required");
  if (options.connections < 1) Usage("--connections must be at least 1");
  if (options.seconds <= 0) Usage("--seconds must be positive");
  return options;
}

int Connect(const sockaddr_in& address) {
  const int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return -1;
  const int one = 1;
  setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  if (connect(fd, reinterpret_cast<const sockaddr*>(&address),
              sizeof address) != 0) {
    close(fd);
    return -1;
  }
  return fd;
}

bool SendAll(int fd, const std::string& bytes) {
  std::size_t sent = 0;
  while (sent < bytes.size()) {
    const ssize_t n =
        send(fd, bytes.data() + sent, bytes.size() - sent, MSG_NOSIGNAL);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return false;
    sent += static_cast<std::size_t>(n);
  }
  return true;
}

bool StartsWithNoCase(std::string_view text, std::string_view prefix) {
  if (text.size() < prefix.size()) return false;
  for (std::size_t i = 0; i < prefix.size(); ++i) {
    if (std::tolower(static_cast<unsigned char>(text[i])) !=
        std::tolower(static_cast<unsigned char>(prefix[i]))) {
      return false;
    }
  }
  return true;
}

// Reads one answer on `fd`: its head, then Content-Length bytes of body.
// Returns the body's length, or -1 if the answer is a failure (see the top).
long long ReadAnswer(int fd, std::vector<char>& buffer) {
  constexpr std::string_view kEnd = "\r\n\r\n";
  std::size_t have = 0;
  std::size_t head_end = std::string_view::npos;
  while (head_end == std::string_view::npos) {
    if (have == buffer.size()) return -1;  // a head larger than the buffer
    const ssize_t n = recv(fd, buffer.data() + have, buffer.size() - have, 0);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return -1;
    // Search from a little before the new bytes: the end may straddle.
    const std::size_t from = have >= kEnd.size() ? have - (kEnd.size() - 1) : 0;
    have += static_cast<std::size_t>(n);
    const std::string_view text(buffer.data(), have);
    const std::size_t at = text.find(kEnd, from);
    if (at != std::string_view::npos) head_end = at + kEnd.size();
  }
  const std::string_view head(buffer.data(), head_end);
  // The status line: "HTTP/1.x NNN ...".
  if (head.size() < 12 || head.substr(0, 7) != "HTTP/1.") return -1;
  const std::string_view status = head.substr(9, 3);
  if (status != "200" && status != "206") return -1;
  // Content-Length, at the start of a line of the head.
  long long length = -1;
  constexpr std::string_view kName = "content-length:";
  for (std::size_t line = head.find("\r\n"); line != std::string_view::npos;
       line = head.find("\r\n", line + 2)) {
    const std::string_view rest = head.substr(line + 2);
    if (!StartsWithNoCase(rest, kName)) continue;
    std::size_t i = kName.size();
    while (i < rest.size() && rest[i] == ' ') ++i;
    if (i == rest.size() || !std::isdigit(static_cast<unsigned char>(rest[i])))
      return -1;
    length = 0;
    while (i < rest.size() &&
           std::isdigit(static_cast<unsigned char>(rest[i]))) {
      length = length * 10 + (rest[i] - '0');
      ++i;
    }
    break;
  }
  if (length < 0) return -1;
  // The body: what came with the head, then the rest. One request at a
  // time, so nothing may follow it.
  const auto with_head = static_cast<long long>(have - head_end);
  if (with_head > length) return -1;
  long long left = length - with_head;
  while (left > 0) {
    const std::size_t want = static_cast<std::size_t>(
        std::min<long long>(left, static_cast<long long>(buffer.size())));
    const ssize_t n = recv(fd, buffer.data(), want, 0);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return -1;
    left -= n;
  }
  return length;
}

void RunConnection(const Options& options, const sockaddr_in& address,
                   const std::string& request, std::atomic<int>& ready,
                   const std::atomic<bool>& go,
                   const Clock::time_point& deadline, Counts& counts) {
  std::vector<char> buffer(64 * 1024);
  int fd = Connect(address);
  ready.fetch_add(1);
  while (!go.load()) std::this_thread::yield();
  while (Clock::now() < deadline) {
    if (fd < 0) {
      fd = Connect(address);
      ++counts.reconnects;
      if (fd < 0) {
        ++counts.failures;
        std::this_thread::sleep_for(std::chrono::milliseconds(1));
        continue;
      }
    }
    long long length = SendAll(fd, request) ? ReadAnswer(fd, buffer) : -1;
    if (length >= 0 && options.expect_bytes >= 0 &&
        length != options.expect_bytes) {
      length = -1;
    }
    if (Clock::now() >= deadline)
      break;  // finished after the time: not counted
    if (length < 0) {
      ++counts.failures;
      close(fd);
      fd = -1;
      continue;
    }
    ++counts.requests;
    counts.bytes += static_cast<std::uint64_t>(length);
  }
  if (fd >= 0) close(fd);
}

}  // namespace

int main(int argc, char** argv) {
  const Options options = ParseOptions(argc, argv);
  sockaddr_in address{};
  address.sin_family = AF_INET;
  address.sin_port = htons(static_cast<std::uint16_t>(options.port));
  if (inet_pton(AF_INET, options.host.c_str(), &address.sin_addr) != 1) {
    Usage("the host must be an IPv4 address");
  }
  std::string request = "GET " + options.path +
                        " HTTP/1.1\r\nHost: " + options.host + ":" +
                        std::to_string(options.port) + "\r\n";
  if (!options.range.empty())
    request += "Range: bytes=" + options.range + "\r\n";
  request += "\r\n";

  // Every thread connects first; the clock starts once all have.
  std::atomic<int> ready{0};
  std::atomic<bool> go{false};
  Clock::time_point deadline;
  std::vector<Counts> counts(static_cast<std::size_t>(options.connections));
  std::vector<std::thread> threads;
  threads.reserve(counts.size());
  for (Counts& mine : counts) {
    threads.emplace_back(RunConnection, std::cref(options), std::cref(address),
                         std::cref(request), std::ref(ready), std::cref(go),
                         std::cref(deadline), std::ref(mine));
  }
  while (ready.load() < options.connections) std::this_thread::yield();
  const auto start = Clock::now();
  deadline = start + std::chrono::duration_cast<Clock::duration>(
                         std::chrono::duration<double>(options.seconds));
  go.store(true);  // publishes `deadline` to the threads
  for (std::thread& thread : threads) thread.join();

  Counts total;
  for (const Counts& mine : counts) {
    total.requests += mine.requests;
    total.failures += mine.failures;
    total.reconnects += mine.reconnects;
    total.bytes += mine.bytes;
  }
  std::printf(
      "requests=%llu\nfailures=%llu\nreconnects=%llu\nseconds=%.3f\n"
      "requests_per_second=%.1f\nbytes=%llu\n",
      static_cast<unsigned long long>(total.requests),
      static_cast<unsigned long long>(total.failures),
      static_cast<unsigned long long>(total.reconnects), options.seconds,
      static_cast<double>(total.requests) / options.seconds,
      static_cast<unsigned long long>(total.bytes));
  return total.requests > 0 ? 0 : 1;
}
