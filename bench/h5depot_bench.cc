// h5depot_bench: measures h5depot's data path against its peers on this
// machine and prints one table. bench/run.sh builds and runs it.
//
// The driver (no --case) makes HDF5 images of each size in /dev/shm, starts
// its own h5depotd (the real binary), redis-server and iperf3 on loopback,
// and runs every measurement in a fresh child process (this program again,
// with --case=...) so that each client's peak RSS is its own. Everything it
// starts is stopped, and its files removed, when it ends, fails, is
// interrupted, or runs out of time (--time-limit).
//
// Peers: iperf3 (single TCP stream, the raw loopback ceiling), Redis
// SET/GET of the same bytes through hiredis, a file handoff through
// /dev/shm opened with HDF5's sec2 driver, memcpy, and redis-benchmark for
// small values with 16 clients (rounds alternating with ours, medians).

#include <arpa/inet.h>
#include <fcntl.h>
#include <hdf5.h>
#include <hiredis/hiredis.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <tuple>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "h5depot/client.h"
#include "h5depot/file_image.h"
#include "h5depot/internal/byte_size.h"
#include "h5depot/internal/memfd.h"
#include "h5depot/internal/token.h"

namespace {

using Clock = std::chrono::steady_clock;

double SecondsSince(Clock::time_point start) {
  return std::chrono::duration<double>(Clock::now() - start).count();
}

[[noreturn]] void Die(const std::string& message) {
  std::fprintf(stderr, "h5depot_bench: %s\n", message.c_str());
  std::exit(1);
}

// --name=value arguments.
class Args {
 public:
  Args(int argc, char** argv) {
    for (int i = 1; i < argc; ++i) {
      std::string arg = argv[i];
      if (arg.rfind("--", 0) != 0) Die("unexpected argument " + arg);
      const size_t eq = arg.find('=');
      values_[arg.substr(
          2, eq == std::string::npos ? std::string::npos : eq - 2)] =
          eq == std::string::npos ? "true" : arg.substr(eq + 1);
    }
  }
  std::string Get(const std::string& name, const std::string& def = "") const {
    auto it = values_.find(name);
    return it == values_.end() ? def : it->second;
  }
  double GetDouble(const std::string& name, double def) const {
    double value = def;
    const std::string text = Get(name);
    if (!text.empty() && !absl::SimpleAtod(text, &value)) {
      Die("--" + name + " wants a number");
    }
    return value;
  }
  uint64_t GetSize(const std::string& name, uint64_t def) const {
    const std::string text = Get(name);
    if (text.empty()) return def;
    std::optional<uint64_t> value = h5depot::internal::ParseByteSize(text);
    if (!value) Die("--" + name + " wants a byte count");
    return *value;
  }
  bool Has(const std::string& name) const { return values_.count(name) > 0; }

 private:
  std::map<std::string, std::string> values_;
};

std::string SizeLabel(uint64_t bytes) {
  const char* units[] = {"B", "KiB", "MiB", "GiB", "TiB"};
  int unit = 0;
  while (unit < 4 && bytes >= 1024 && bytes % 1024 == 0) {
    bytes /= 1024;
    ++unit;
  }
  return absl::StrCat(bytes, " ", units[unit]);
}

std::string Duration(double seconds) {
  if (seconds >= 1) return absl::StrFormat("%.3f s", seconds);
  if (seconds >= 1e-3) return absl::StrFormat("%.2f ms", seconds * 1e3);
  return absl::StrFormat("%.1f us", seconds * 1e6);
}

constexpr double kGiB = 1024.0 * 1024.0 * 1024.0;
constexpr double kMiB = 1024.0 * 1024.0;

// The fastest run of the last TimeMedian, printed by cases for tuning
// experiments on a noisy machine.
double g_best_seconds = 0;

double Median(std::vector<double> values) {
  if (values.empty()) return 0;
  std::sort(values.begin(), values.end());
  return values[values.size() / 2];
}

// Runs `op` at least three times and for at least `min_seconds` (at most
// `max_reps` times) and returns the median duration of one run; `setup`
// runs untimed before each.
double TimeMedian(double min_seconds, int max_reps,
                  const std::function<void()>& setup,
                  const std::function<void()>& op) {
  std::vector<double> runs;
  const Clock::time_point start = Clock::now();
  // Five runs at least: on a shared machine a burst of someone else's work
  // can slow one or two runs down by half, which a median of three follows.
  while (runs.size() < 5 || (SecondsSince(start) < min_seconds &&
                             runs.size() < static_cast<size_t>(max_reps))) {
    if (setup) setup();
    const Clock::time_point t0 = Clock::now();
    op();
    runs.push_back(SecondsSince(t0));
  }
  g_best_seconds = *std::min_element(runs.begin(), runs.end());
  return Median(runs);
}

std::vector<char> LoadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) Die("cannot read " + path);
  in.seekg(0, std::ios::end);
  std::vector<char> bytes(static_cast<size_t>(in.tellg()));
  in.seekg(0);
  in.read(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  if (!in) Die("cannot read " + path);
  return bytes;
}

// ---------------------------------------------------------------------------
// Cases: each runs in its own process and prints "name=value" lines.

// --grpc-only: clients move image bytes over gRPC instead of the data lane,
// to compare the two paths on one machine.
bool g_grpc_only = false;
// --token=TOKEN, --tls-ca-file=PATH: the credentials a case's clients
// present (the security rows' servers ask for them).
std::string g_token;
std::string g_tls_ca_file;

std::unique_ptr<h5depot::Client> ConnectOrDie(const std::string& target) {
  h5depot::ClientOptions options;
  options.use_data_lane = !g_grpc_only;
  options.token = g_token;
  options.tls_ca_file = g_tls_ca_file;
  auto client = h5depot::Client::Connect(target, options);
  if (!client.ok()) Die(std::string(client.status().message()));
  return *std::move(client);
}

void CasePush(const Args& args, double min_seconds) {
  const std::vector<char> image = LoadFile(args.Get("image"));
  auto client = ConnectOrDie(args.Get("target"));
  const std::string id = args.Get("id");
  // Every push makes a new image. A small one replaces the last, as the
  // Redis SET it is compared with does; a large one is deleted first
  // (untimed), so that the server never holds two, which would blur its
  // peak memory.
  const bool replace = image.size() <= (size_t{1} << 20);
  const double seconds = TimeMedian(
      min_seconds, 2000,
      [&] {
        if (!replace) client->Delete(id).IgnoreError();
      },
      [&] {
        auto info = client->Push(id, image.data(), image.size());
        if (!info.ok()) Die(std::string(info.status().message()));
      });
  std::printf("seconds=%.9f\nbest=%.9f\n", seconds, g_best_seconds);
}

void CaseFetch(const Args& args, double min_seconds, bool open) {
  auto client = ConnectOrDie(args.Get("target"));
  const std::string id = args.Get("id");
  const double seconds = TimeMedian(min_seconds, 2000, nullptr, [&] {
    auto fetched = client->Fetch(id);
    if (!fetched.ok()) Die(std::string(fetched.status().message()));
    if (!open) return;
    // Opened in place: HDF5 takes the buffer and frees it at H5Fclose.
    absl::StatusOr<hid_t> file =
        h5depot::OpenFileImage(std::move(fetched->buffer));
    if (!file.ok() || H5Lexists(*file, "payload", H5P_DEFAULT) <= 0) {
      Die("HDF5 cannot open the fetched image");
    }
    H5Fclose(*file);
  });
  std::printf("seconds=%.9f\nbest=%.9f\n", seconds, g_best_seconds);
}

// A memfd holding the image file at `path`, sealed as a producer that built
// its image in shared memory hands it over (memory_file.h does that for
// HDF5 files); dies on failure.
int SealedMemfdOf(const std::string& path, uint64_t* size) {
  const std::vector<char> image = LoadFile(path);
  absl::StatusOr<h5depot::internal::UniqueFd> memfd =
      h5depot::internal::CreateMemfd("bench-image", image.size());
  if (!memfd.ok()) Die(std::string(memfd.status().message()));
  if (pwrite(memfd->get(), image.data(), image.size(), 0) !=
          static_cast<ssize_t>(image.size()) ||
      !h5depot::internal::AddSeals(memfd->get(),
                                   h5depot::internal::kSealsFromClient)
           .ok()) {
    Die("cannot fill and seal a memfd");
  }
  *size = image.size();
  return memfd->Release();
}

// Pushes an image built in a sealed memfd: on the server's Unix socket the
// descriptor is handed over, nothing copied.
void CasePushMemfd(const Args& args, double min_seconds) {
  uint64_t size = 0;
  const int memfd = SealedMemfdOf(args.Get("image"), &size);
  auto client = ConnectOrDie(args.Get("target"));
  const std::string id = args.Get("id");
  const double seconds = TimeMedian(
      min_seconds, 2000, [&] { client->Delete(id).IgnoreError(); },
      [&] {
        auto info = client->PushMemfd(id, memfd, size);
        if (!info.ok()) Die(std::string(info.status().message()));
      });
  close(memfd);
  std::printf("seconds=%.9f\nbest=%.9f\n", seconds, g_best_seconds);
}

// Fetches and opens the image, reads every byte of it (so that each of its
// pages is this process's to count), says "ready" and holds it open until
// killed: one of the readers whose memory the driver adds up.
void CaseHoldOpen(const Args& args) {
  auto client = ConnectOrDie(args.Get("target"));
  auto fetched = client->Fetch(args.Get("id"));
  if (!fetched.ok()) Die(std::string(fetched.status().message()));
  const auto* bytes = static_cast<const unsigned char*>(fetched->buffer.data());
  uint64_t sum = 0;
  for (size_t i = 0; i < fetched->buffer.size(); i += 4096) sum += bytes[i];
  absl::StatusOr<hid_t> file =
      h5depot::OpenFileImage(std::move(fetched->buffer));
  if (!file.ok() || H5Lexists(*file, "payload", H5P_DEFAULT) <= 0) {
    Die("HDF5 cannot open the fetched image");
  }
  std::printf("ready %llu\n", static_cast<unsigned long long>(sum % 2));
  std::fflush(stdout);
  pause();
}

redisContext* RedisConnectOrDie(const Args& args) {
  redisContext* redis =
      args.Has("redis-socket")
          ? redisConnectUnix(args.Get("redis-socket").c_str())
          : redisConnect("127.0.0.1", std::stoi(args.Get("redis-port")));
  if (redis == nullptr || redis->err) Die("cannot connect to redis");
  return redis;
}

// SET `key` to `image`, or GET it and check its length; dies on failure.
void RedisRoundTrip(redisContext* redis, bool set, const std::string& key,
                    const std::vector<char>& image) {
  auto* reply = static_cast<redisReply*>(
      set ? redisCommand(redis, "SET %b %b", key.data(), key.size(),
                         image.data(), image.size())
          : redisCommand(redis, "GET %b", key.data(), key.size()));
  if (reply == nullptr) Die(absl::StrCat("redis: ", redis->errstr));
  const bool ok =
      set ? reply->type == REDIS_REPLY_STATUS
          : reply->type == REDIS_REPLY_STRING && reply->len == image.size();
  if (!ok) Die(absl::StrCat("redis answered ", reply->type, " ", reply->str));
  freeReplyObject(reply);
}

void CaseRedis(const Args& args, double min_seconds, bool set) {
  redisContext* redis = RedisConnectOrDie(args);
  const std::vector<char> image = LoadFile(args.Get("image"));
  const std::string key = args.Get("id");
  if (!set) RedisRoundTrip(redis, true, key, image);
  const double seconds = TimeMedian(min_seconds, 2000, nullptr, [&] {
    RedisRoundTrip(redis, set, key, image);
  });
  redisFree(redis);
  std::printf("seconds=%.9f\n", seconds);
}

// The producer writes the image to a file in /dev/shm; the consumer opens
// it with HDF5's default (sec2) driver.
void CaseHandoff(const Args& args, double min_seconds) {
  const std::vector<char> image = LoadFile(args.Get("image"));
  const std::string path = args.Get("out");
  auto write_file = [&] {
    const int fd = open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0600);
    if (fd < 0) Die("cannot create " + path);
    for (size_t done = 0; done < image.size();) {
      const ssize_t n = write(fd, image.data() + done, image.size() - done);
      if (n <= 0) Die("cannot write " + path);
      done += static_cast<size_t>(n);
    }
    close(fd);
  };
  const double write_seconds = TimeMedian(
      min_seconds, 2000, [&] { unlink(path.c_str()); }, write_file);
  const double open_seconds = TimeMedian(min_seconds, 2000, nullptr, [&] {
    hid_t file = H5Fopen(path.c_str(), H5F_ACC_RDONLY, H5P_DEFAULT);
    if (file < 0 || H5Lexists(file, "payload", H5P_DEFAULT) <= 0) {
      Die("HDF5 cannot open " + path);
    }
    H5Fclose(file);
  });
  unlink(path.c_str());
  std::printf("write_seconds=%.9f\nopen_seconds=%.9f\n", write_seconds,
              open_seconds);
}

// Runs `op(i)` back to back on `clients` threads (i = 0, 1, ...) for
// `seconds`; returns operations per second. `op` returns false on failure.
double RunConcurrently(int clients, double seconds,
                       const std::function<bool(int)>& op) {
  std::atomic<uint64_t> ops{0};
  std::atomic<bool> failed{false};
  std::vector<std::thread> threads;
  const Clock::time_point start = Clock::now();
  for (int i = 0; i < clients; ++i) {
    threads.emplace_back([&, i] {
      uint64_t n = 0;
      while (SecondsSince(start) < seconds) {
        if (!op(i)) failed = true;
        ++n;
      }
      ops += n;
    });
  }
  for (std::thread& t : threads) t.join();
  if (failed) Die("a small-image operation failed");
  return static_cast<double>(ops) / SecondsSince(start);
}

// `clients` threads, each with its own Client, push (then fetch) their own
// image id as fast as they can for `seconds`.
void CaseSmallOps(const Args& args) {
  const std::vector<char> image = LoadFile(args.Get("image"));
  const int clients = std::stoi(args.Get("clients", "16"));
  const double seconds = args.GetDouble("seconds", 2);
  std::vector<std::unique_ptr<h5depot::Client>> connections;
  std::vector<std::string> ids;
  for (int i = 0; i < clients; ++i) {
    connections.push_back(ConnectOrDie(args.Get("target")));
    ids.push_back(absl::StrCat("bench/small/", i));
  }
  const double push_ops = RunConcurrently(clients, seconds, [&](int i) {
    return connections[i]->Push(ids[i], image.data(), image.size()).ok();
  });
  const double fetch_ops = RunConcurrently(clients, seconds, [&](int i) {
    return connections[i]->Fetch(ids[i]).ok();
  });
  std::printf("push_ops=%.1f\nfetch_ops=%.1f\n", push_ops, fetch_ops);
}

// The same with Redis: `clients` threads, each with its own synchronous
// hiredis connection, as h5depot's clients are (redis-benchmark instead
// drives all its connections from one thread).
void CaseRedisSmallOps(const Args& args) {
  const std::vector<char> image = LoadFile(args.Get("image"));
  const int clients = std::stoi(args.Get("clients", "16"));
  const double seconds = args.GetDouble("seconds", 2);
  std::vector<redisContext*> connections;
  std::vector<std::string> keys;
  for (int i = 0; i < clients; ++i) {
    connections.push_back(RedisConnectOrDie(args));
    keys.push_back(absl::StrCat("bench/small/", i));
  }
  const double set_ops = RunConcurrently(clients, seconds, [&](int i) {
    RedisRoundTrip(connections[i], true, keys[i], image);
    return true;
  });
  const double get_ops = RunConcurrently(clients, seconds, [&](int i) {
    RedisRoundTrip(connections[i], false, keys[i], image);
    return true;
  });
  for (redisContext* redis : connections) redisFree(redis);
  std::printf("set_ops=%.1f\nget_ops=%.1f\n", set_ops, get_ops);
}

uint64_t MakeHdf5Image(const std::string& path, uint64_t size);

int RunCase(const Args& args) {
  H5Eset_auto2(H5E_DEFAULT, nullptr, nullptr);
  const std::string name = args.Get("case");
  const double min_seconds = args.GetDouble("min-seconds", 1.0);
  if (name == "push") {
    CasePush(args, min_seconds);
  } else if (name == "fetch") {
    CaseFetch(args, min_seconds, false);
  } else if (name == "fetch_open") {
    CaseFetch(args, min_seconds, true);
  } else if (name == "push_memfd") {
    CasePushMemfd(args, min_seconds);
  } else if (name == "hold_open") {
    CaseHoldOpen(args);
  } else if (name == "redis_set") {
    CaseRedis(args, min_seconds, true);
  } else if (name == "redis_get") {
    CaseRedis(args, min_seconds, false);
  } else if (name == "handoff") {
    CaseHandoff(args, min_seconds);
  } else if (name == "redis_small_ops") {
    CaseRedisSmallOps(args);
  } else if (name == "small_ops") {
    CaseSmallOps(args);
  } else if (name == "make_image") {
    std::printf("size=%llu\n", static_cast<unsigned long long>(MakeHdf5Image(
                                   args.Get("out"), args.GetSize("size", 0))));
  } else {
    Die("unknown case " + name);
  }
  return 0;
}

// ---------------------------------------------------------------------------
// The driver: child processes, peers, the table.

// Everything to undo if the run is interrupted; read by the signal handler,
// so written only before the handler can fire or with signals blocked.
constexpr int kMaxChildren = 64;
volatile pid_t g_children[kMaxChildren];
std::vector<std::string>* g_cleanup_paths = nullptr;

void KillChildrenAndClean() {
  for (int i = 0; i < kMaxChildren; ++i) {
    if (g_children[i] > 0) kill(g_children[i], SIGKILL);
  }
  if (g_cleanup_paths != nullptr) {
    // Files first, then the directory (last in the list).
    for (const std::string& path : *g_cleanup_paths) unlink(path.c_str());
    if (!g_cleanup_paths->empty()) rmdir(g_cleanup_paths->back().c_str());
  }
}

void OnFatalSignal(int signal_number) {
  const char message[] = "h5depot_bench: stopped; cleaning up\n";
  ssize_t ignored = write(2, message, sizeof(message) - 1);
  (void)ignored;
  KillChildrenAndClean();
  _exit(128 + signal_number);
}

struct Child {
  pid_t pid = -1;
  int out = -1;  // the child's stdout, when captured
  int slot = -1;
};

Child Spawn(const std::vector<std::string>& argv, bool capture_stdout,
            bool quiet = false) {
  int pipe_fds[2] = {-1, -1};
  if (capture_stdout && pipe2(pipe_fds, O_CLOEXEC) != 0) Die("pipe failed");
  sigset_t all, old;
  sigfillset(&all);
  sigprocmask(SIG_BLOCK, &all, &old);
  const pid_t parent = getpid();
  const pid_t pid = fork();
  if (pid == 0) {
    // Dies with the driver, whatever kills it.
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (getppid() != parent) _exit(1);
    signal(SIGINT, SIG_DFL);
    signal(SIGTERM, SIG_DFL);
    signal(SIGALRM, SIG_DFL);
    sigprocmask(SIG_SETMASK, &old, nullptr);
    if (capture_stdout) dup2(pipe_fds[1], 1);
    if (quiet) {
      const int null_fd = open("/dev/null", O_WRONLY);
      if (!capture_stdout) dup2(null_fd, 1);
      dup2(null_fd, 2);
    }
    std::vector<char*> c_argv;
    for (const std::string& arg : argv) {
      c_argv.push_back(const_cast<char*>(arg.c_str()));
    }
    c_argv.push_back(nullptr);
    execvp(c_argv[0], c_argv.data());
    std::fprintf(stderr, "cannot run %s: %s\n", c_argv[0], strerror(errno));
    _exit(127);
  }
  Child child;
  child.pid = pid;
  for (int i = 0; i < kMaxChildren; ++i) {
    if (g_children[i] <= 0) {
      g_children[i] = pid;
      child.slot = i;
      break;
    }
  }
  sigprocmask(SIG_SETMASK, &old, nullptr);
  if (pid < 0) Die("fork failed");
  if (capture_stdout) {
    close(pipe_fds[1]);
    child.out = pipe_fds[0];
  }
  return child;
}

// Reads the child's stdout up to EOF or `deadline`.
std::string ReadOutput(Child& child, Clock::time_point deadline) {
  std::string text;
  char buffer[4096];
  while (child.out >= 0) {
    const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
        deadline - Clock::now());
    if (left.count() <= 0) break;
    pollfd pfd = {child.out, POLLIN, 0};
    if (poll(&pfd, 1, static_cast<int>(left.count())) <= 0) continue;
    const ssize_t n = read(child.out, buffer, sizeof(buffer));
    if (n <= 0) break;
    text.append(buffer, static_cast<size_t>(n));
  }
  return text;
}

// Reads one line (without the newline) or gives up at `deadline`.
std::optional<std::string> ReadLine(Child& child, Clock::time_point deadline) {
  std::string line;
  char c;
  while (Clock::now() < deadline) {
    pollfd pfd = {child.out, POLLIN, 0};
    if (poll(&pfd, 1, 100) <= 0) continue;
    if (read(child.out, &c, 1) != 1) return std::nullopt;
    if (c == '\n') return line;
    line.push_back(c);
  }
  return std::nullopt;
}

// Waits for the child to exit, killing it at `deadline`. Returns its exit
// status and peak RSS in bytes.
std::pair<int, uint64_t> Reap(Child& child, Clock::time_point deadline) {
  int status = 0;
  rusage usage{};
  while (true) {
    const pid_t done = wait4(child.pid, &status, WNOHANG, &usage);
    if (done == child.pid) break;
    if (Clock::now() >= deadline) {
      kill(child.pid, SIGKILL);
      wait4(child.pid, &status, 0, &usage);
      break;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  if (child.slot >= 0) g_children[child.slot] = 0;
  if (child.out >= 0) close(child.out);
  child.out = -1;
  return {status, static_cast<uint64_t>(usage.ru_maxrss) * 1024};
}

void Stop(Child& child, absl::Duration grace) {
  if (child.pid <= 0) return;
  kill(child.pid, SIGTERM);
  Reap(child, Clock::now() + absl::ToChronoNanoseconds(grace));
  child.pid = -1;
}

struct CaseResult {
  std::map<std::string, double> values;
  uint64_t peak_rss = 0;
};

std::string g_self;  // this program, for re-running it as a case

CaseResult RunChildCase(const std::vector<std::string>& args) {
  std::vector<std::string> argv = {g_self};
  argv.insert(argv.end(), args.begin(), args.end());
  if (g_grpc_only) argv.push_back("--grpc-only");
  Child child = Spawn(argv, true);
  const Clock::time_point deadline = Clock::now() + std::chrono::minutes(5);
  const std::string output = ReadOutput(child, deadline);
  auto [status, rss] = Reap(child, deadline);
  if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
    Die(absl::StrCat("case failed: ", absl::StrJoin(args, " ")));
  }
  CaseResult result;
  result.peak_rss = rss;
  for (absl::string_view line : absl::StrSplit(output, '\n')) {
    std::pair<std::string, std::string> kv = absl::StrSplit(line, '=');
    double value;
    if (absl::SimpleAtod(kv.second, &value)) result.values[kv.first] = value;
  }
  return result;
}

int FreePort() {
  const int fd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof(addr);
  if (bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0 ||
      getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len) != 0) {
    Die("cannot find a free port");
  }
  close(fd);
  return ntohs(addr.sin_port);
}

bool OnPath(const std::string& program) {
  const char* path = std::getenv("PATH");
  for (absl::string_view dir : absl::StrSplit(path ? path : "", ':')) {
    if (access(absl::StrCat(dir, "/", program).c_str(), X_OK) == 0) {
      return true;
    }
  }
  return false;
}

// An HDF5 file of about `size` bytes: one contiguous uint8 dataset
// "payload" filled with incompressible bytes. Returns the actual size.
uint64_t MakeHdf5Image(const std::string& path, uint64_t size) {
  // Superblock, root group and the dataset's object header come first.
  constexpr uint64_t kOverhead = 2048;
  const hsize_t n = size > 2 * kOverhead ? size - kOverhead : kOverhead;
  hid_t file = H5Fcreate(path.c_str(), H5F_ACC_TRUNC, H5P_DEFAULT, H5P_DEFAULT);
  hid_t space = H5Screate_simple(1, &n, nullptr);
  hid_t dcpl = H5Pcreate(H5P_DATASET_CREATE);
  H5Pset_alloc_time(dcpl, H5D_ALLOC_TIME_EARLY);
  hid_t dset = H5Dcreate2(file, "payload", H5T_NATIVE_UINT8, space, H5P_DEFAULT,
                          dcpl, H5P_DEFAULT);
  if (file < 0 || dset < 0) Die("cannot create " + path);
  const hsize_t slab = std::min<hsize_t>(n, hsize_t{16} << 20);
  std::vector<uint64_t> bytes((slab + 7) / 8);
  uint64_t state = 0x9e3779b97f4a7c15ull;
  for (hsize_t at = 0; at < n; at += slab) {
    for (uint64_t& word : bytes) {
      state ^= state << 13;
      state ^= state >> 7;
      state ^= state << 17;
      word = state;
    }
    hsize_t count = std::min(slab, n - at);
    hid_t memspace = H5Screate_simple(1, &count, nullptr);
    H5Sselect_hyperslab(space, H5S_SELECT_SET, &at, nullptr, &count, nullptr);
    if (H5Dwrite(dset, H5T_NATIVE_UINT8, memspace, space, H5P_DEFAULT,
                 bytes.data()) < 0) {
      Die("cannot write " + path);
    }
    H5Sclose(memspace);
  }
  H5Dclose(dset);
  H5Pclose(dcpl);
  H5Sclose(space);
  H5Fclose(file);
  return std::filesystem::file_size(path);
}

// Copy bandwidth between two buffers that are already faulted in.
double MemcpyBytesPerSecond(uint64_t size) {
  std::vector<char> from(size, 1), to(size, 2);
  const double seconds = TimeMedian(0.3, 100000, nullptr, [&] {
    std::memcpy(to.data(), from.data(), size);
    asm volatile("" : : "r"(to.data()) : "memory");
  });
  return static_cast<double>(size) / seconds;
}

// iperf3, one TCP stream over loopback, for `seconds`.
double IperfBytesPerSecond(double seconds) {
  const std::string port = std::to_string(FreePort());
  Child server =
      Spawn({"iperf3", "-s", "-1", "-B", "127.0.0.1", "-p", port}, false, true);
  double result = 0;
  for (int attempt = 0; attempt < 50 && result == 0; ++attempt) {
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
    Child client = Spawn({"iperf3", "-c", "127.0.0.1", "-p", port, "-t",
                          absl::StrFormat("%.0f", seconds), "-J"},
                         true, true);
    const Clock::time_point deadline =
        Clock::now() + std::chrono::seconds(static_cast<int>(seconds) + 20);
    const std::string json = ReadOutput(client, deadline);
    Reap(client, deadline);
    const size_t sum = json.find("\"sum_received\"");
    if (sum == std::string::npos) continue;
    const std::string key = "\"bits_per_second\":";
    const size_t at = json.find(key, sum);
    if (at == std::string::npos) continue;
    result = std::strtod(json.c_str() + at + key.size(), nullptr) / 8;
  }
  Stop(server, absl::Seconds(2));
  if (result == 0) Die("iperf3 gave no result");
  return result;
}

// The proportional set size of `pid`: its private memory plus its share of
// what it maps together with others.
uint64_t Pss(pid_t pid) {
  std::ifstream rollup(absl::StrCat("/proc/", pid, "/smaps_rollup"));
  std::string line;
  while (std::getline(rollup, line)) {
    if (line.rfind("Pss:", 0) == 0) {
      return std::strtoull(line.c_str() + 4, nullptr, 10) * 1024;
    }
  }
  return 0;
}

uint64_t VmHwm(pid_t pid) {
  std::ifstream status(absl::StrCat("/proc/", pid, "/status"));
  std::string line;
  while (std::getline(status, line)) {
    if (line.rfind("VmHWM:", 0) == 0) {
      return std::strtoull(line.c_str() + 6, nullptr, 10) * 1024;
    }
  }
  return 0;
}

// redis-benchmark's requests per second for SET and GET.
std::pair<double, double> RedisBenchmark(const std::vector<std::string>& where,
                                         uint64_t value_size, int clients,
                                         int requests) {
  std::vector<std::string> argv = {"redis-benchmark"};
  argv.insert(argv.end(), where.begin(), where.end());
  for (const std::string& arg :
       {std::string("-c"), std::to_string(clients), std::string("-n"),
        std::to_string(requests), std::string("-d"), std::to_string(value_size),
        std::string("-t"), std::string("set,get"), std::string("--csv")}) {
    argv.push_back(arg);
  }
  Child child = Spawn(argv, true, true);
  const Clock::time_point deadline = Clock::now() + std::chrono::minutes(3);
  const std::string csv = ReadOutput(child, deadline);
  Reap(child, deadline);
  double set = 0, get = 0;
  for (absl::string_view line : absl::StrSplit(csv, '\n')) {
    std::vector<std::string> fields = absl::StrSplit(line, ',');
    if (fields.size() < 2) continue;
    auto unquote = [](std::string s) {
      s.erase(std::remove(s.begin(), s.end(), '"'), s.end());
      return s;
    };
    double rps = 0;
    if (!absl::SimpleAtod(unquote(fields[1]), &rps)) continue;
    if (unquote(fields[0]) == "SET") set = rps;
    if (unquote(fields[0]) == "GET") get = rps;
  }
  if (set == 0 || get == 0) Die("redis-benchmark gave no result");
  return {set, get};
}

struct Row {
  std::string transport, size, operation, time, rate, peer, peer_time,
      peer_rate, ratio;
};

std::string Rate(double bytes_per_second) {
  return absl::StrFormat("%.2f GiB/s", bytes_per_second / kGiB);
}

std::string Ratio(double ours, double theirs) {
  return theirs > 0 ? absl::StrFormat("%.2fx", ours / theirs) : "-";
}

// A CA and a certificate for 127.0.0.1 it signed, made in `dir` with the
// openssl tool, for the TLS rows.
void MakeCertificates(const std::string& dir) {
  const std::string command = absl::StrCat(
      "cd '", dir, "' && { ",
      "openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes "
      "-keyout ca.key -out ca.pem -subj /CN=bench-ca -days 2 && ",
      "openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes "
      "-keyout server.key -out server.csr -subj /CN=127.0.0.1 && ",
      "printf 'subjectAltName=IP:127.0.0.1\\n' > san.ext && ",
      "openssl x509 -req -in server.csr -CA ca.pem -CAkey ca.key "
      "-CAcreateserial -days 2 -extfile san.ext -out server.crt; ",
      "} >/dev/null 2>&1");
  if (std::system(command.c_str()) != 0) {
    Die("openssl could not make the TLS rows' certificates (apt-get install "
        "openssl)");
  }
}

int RunDriver(const Args& args) {
  const absl::Duration time_limit =
      absl::Seconds(args.GetDouble("time-limit", 1800));
  signal(SIGINT, OnFatalSignal);
  signal(SIGTERM, OnFatalSignal);
  signal(SIGALRM, OnFatalSignal);
  signal(SIGPIPE, SIG_IGN);
  alarm(static_cast<unsigned>(absl::ToInt64Seconds(time_limit)));
  H5Eset_auto2(H5E_DEFAULT, nullptr, nullptr);

  std::string h5depotd = args.Get("h5depotd");
  if (h5depotd.empty()) {
    h5depotd = (std::filesystem::path(g_self).parent_path().parent_path() /
                "server" / "h5depotd")
                   .string();
  }
  if (access(h5depotd.c_str(), X_OK) != 0) {
    Die("no h5depotd at " + h5depotd + " (give --h5depotd=PATH)");
  }
  for (const char* tool : {"iperf3", "redis-server", "redis-benchmark"}) {
    if (!OnPath(tool)) {
      Die(absl::StrCat(tool,
                       " not found; apt-get install iperf3 "
                       "redis-server redis-tools"));
    }
  }
  std::vector<uint64_t> sizes;
  for (absl::string_view text :
       absl::StrSplit(args.Get("sizes", "4K,1M,64M,1G"), ',')) {
    std::optional<uint64_t> size =
        h5depot::internal::ParseByteSize(std::string(text));
    if (!size || *size == 0) Die("bad --sizes");
    sizes.push_back(*size);
  }
  const double min_seconds = args.GetDouble("min-seconds", 1.0);
  const double small_seconds = args.GetDouble("small-seconds", 2.0);
  constexpr int kSmallRounds = 3;
  const uint64_t largest = *std::max_element(sizes.begin(), sizes.end());

  // Everything lives in one directory in /dev/shm, removed at the end.
  std::string dir_template = "/dev/shm/h5depot-bench.XXXXXX";
  if (mkdtemp(dir_template.data()) == nullptr) Die("cannot create a temp dir");
  const std::string dir = dir_template;
  static std::vector<std::string> cleanup;
  auto in_dir = [&](const std::string& name) { return dir + "/" + name; };
  {
    sigset_t all, old;
    sigfillset(&all);
    sigprocmask(SIG_BLOCK, &all, &old);
    for (uint64_t size : sizes) {
      cleanup.push_back(in_dir(absl::StrCat("image-", size, ".h5")));
      cleanup.push_back(in_dir(absl::StrCat("handoff-", size, ".h5")));
    }
    for (const char* name :
         {"h5depotd.sock", "redis.sock", "small.h5", "auth.sock", "auth",
          "ca.key", "ca.pem", "ca.srl", "server.key", "server.csr",
          "server.crt", "san.ext"}) {
      cleanup.push_back(in_dir(name));
    }
    cleanup.push_back(dir);
    g_cleanup_paths = &cleanup;
    sigprocmask(SIG_SETMASK, &old, nullptr);
  }
  auto image_path = [&](uint64_t size) {
    return in_dir(absl::StrCat("image-", size, ".h5"));
  };

  std::fprintf(stderr, "h5depot_bench: making images in %s\n", dir.c_str());
  std::map<uint64_t, uint64_t> actual_size;
  for (uint64_t size : sizes) {
    actual_size[size] = MakeHdf5Image(image_path(size), size);
  }
  const uint64_t small_size = 4096;
  const uint64_t small_actual = MakeHdf5Image(in_dir("small.h5"), small_size);

  std::fprintf(stderr, "h5depot_bench: memcpy and iperf3\n");
  std::map<uint64_t, double> memcpy_rate;
  for (uint64_t size : sizes) memcpy_rate[size] = MemcpyBytesPerSecond(size);
  const double iperf = IperfBytesPerSecond(5);

  // h5depotd with room for the largest image twice (a replacement pushed
  // while the old generation is still pinned) plus the small ones.
  // Starts an h5depotd with `flags` and returns it with its TCP and Unix
  // targets, once it listens.
  struct Server {
    Child child;
    std::string tcp_target, unix_target;
  };
  auto start_server = [&](std::vector<std::string> flags) {
    flags.insert(
        flags.begin(),
        {h5depotd, "--listen=127.0.0.1:0",
         absl::StrCat("--max-memory=", 3 * largest + (uint64_t{512} << 20)),
         absl::StrCat("--max-image-size=", largest + (uint64_t{1} << 20))});
    Server started{Spawn(flags, true), "", ""};
    const Clock::time_point start_deadline =
        Clock::now() + std::chrono::seconds(30);
    while (true) {
      std::optional<std::string> line = ReadLine(started.child, start_deadline);
      if (!line) Die("h5depotd did not start");
      const std::string prefix = "h5depotd listening on ";
      if (line->rfind(prefix, 0) == 0) {
        const std::string target = line->substr(prefix.size());
        (target.rfind("unix:", 0) == 0 ? started.unix_target
                                       : started.tcp_target) = target;
      }
      if (line->rfind("h5depotd holds", 0) == 0) break;
    }
    return started;
  };
  Server plain_server = start_server({"--unix=" + in_dir("h5depotd.sock")});
  Child& server = plain_server.child;
  const std::string tcp_target = plain_server.tcp_target;
  const std::string unix_target = plain_server.unix_target;

  const int redis_port = FreePort();
  Child redis =
      Spawn({"redis-server",
             "--bind",
             "127.0.0.1",
             "--port",
             std::to_string(redis_port),
             "--unixsocket",
             in_dir("redis.sock"),
             "--unixsocketperm",
             "700",
             "--save",
             "",
             "--appendonly",
             "no",
             "--protected-mode",
             "no",
             "--proto-max-bulk-len",
             std::to_string(std::max<uint64_t>(largest + (uint64_t{1} << 20),
                                               uint64_t{512} << 20)),
             "--client-query-buffer-limit",
             std::to_string(std::max<uint64_t>(2 * largest, uint64_t{1} << 30)),
             "--client-output-buffer-limit",
             "normal 0 0 0",
             "--dir",
             dir,
             "--logfile",
             ""},
            false, true);
  for (int attempt = 0;; ++attempt) {
    redisContext* probe = redisConnect("127.0.0.1", redis_port);
    const bool up = probe != nullptr && probe->err == 0;
    if (probe != nullptr) redisFree(probe);
    if (up) break;
    if (attempt == 100) Die("redis-server did not start");
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }

  const std::string min_arg = absl::StrCat("--min-seconds=", min_seconds);
  std::vector<Row> rows;
  uint64_t fetch_open_rss = 0;
  struct Transport {
    std::string name, target;
    std::vector<std::string> redis_args, redis_benchmark_args;
  };
  const std::vector<Transport> transports = {
      {"tcp",
       tcp_target,
       {absl::StrCat("--redis-port=", redis_port)},
       {"-h", "127.0.0.1", "-p", std::to_string(redis_port)}},
      {"unix",
       unix_target,
       {"--redis-socket=" + in_dir("redis.sock")},
       {"-s", in_dir("redis.sock")}}};
  bool targets_met = true;
  std::vector<std::string> verdicts;
  auto check = [&](bool ok, const std::string& what) {
    targets_met = targets_met && ok;
    verdicts.push_back(absl::StrCat(ok ? "PASS  " : "FAIL  ", what));
  };

  std::map<uint64_t, std::pair<double, double>> handoff;
  for (uint64_t size : sizes) {
    std::fprintf(stderr, "h5depot_bench: file handoff, %s\n",
                 SizeLabel(size).c_str());
    CaseResult r = RunChildCase(
        {"--case=handoff", "--image=" + image_path(size),
         "--out=" + in_dir(absl::StrCat("handoff-", size, ".h5")), min_arg});
    handoff[size] = {r.values["write_seconds"], r.values["open_seconds"]};
  }

  for (const Transport& transport : transports) {
    for (uint64_t size : sizes) {
      std::fprintf(stderr, "h5depot_bench: %s, %s\n", transport.name.c_str(),
                   SizeLabel(size).c_str());
      const double bytes = static_cast<double>(actual_size[size]);
      const std::string id = absl::StrCat("bench/", size);
      std::vector<std::string> common = {"--image=" + image_path(size),
                                         "--id=" + id, min_arg};
      auto ours = [&](const std::string& which) {
        std::vector<std::string> argv = common;
        argv.push_back("--case=" + which);
        argv.push_back("--target=" + transport.target);
        return RunChildCase(argv);
      };
      auto theirs = [&](const std::string& which) {
        std::vector<std::string> argv = common;
        argv.push_back("--case=" + which);
        argv.insert(argv.end(), transport.redis_args.begin(),
                    transport.redis_args.end());
        return RunChildCase(argv);
      };
      // The machine is shared and its speed drifts: large images are
      // compared with an iperf3 run made right before them.
      const bool large = size >= (uint64_t{64} << 20);
      const double iperf_now = large ? IperfBytesPerSecond(2) : iperf;
      const double push = ours("push").values["seconds"];
      const double fetch = ours("fetch").values["seconds"];
      CaseResult open = ours("fetch_open");
      const double fetch_open = open.values["seconds"];
      const double set = theirs("redis_set").values["seconds"];
      const double get = theirs("redis_get").values["seconds"];
      const auto [write_s, open_s] = handoff[size];

      const std::string label = SizeLabel(size);
      // A peer given by its time per operation, or (iperf3, memcpy) by
      // its rate alone.
      auto add = [&](const std::string& op, double seconds,
                     const std::string& peer, double peer_seconds,
                     double peer_rate = 0) {
        const double rate = bytes / seconds;
        if (peer_rate == 0) peer_rate = bytes / peer_seconds;
        rows.push_back({transport.name, label, op, Duration(seconds),
                        Rate(rate), peer,
                        peer_seconds > 0 ? Duration(peer_seconds) : "",
                        Rate(peer_rate), Ratio(rate, peer_rate)});
        return rate / peer_rate;
      };
      const double push_iperf = add("push", push, "iperf3", 0, iperf_now);
      const double push_redis = add("push", push, "redis SET", set);
      const double fetch_iperf = add("fetch", fetch, "iperf3", 0, iperf_now);
      const double fetch_redis = add("fetch", fetch, "redis GET", get);
      add("fetch", fetch, "memcpy", 0, memcpy_rate[size]);
      add("fetch+open", fetch_open, "redis GET", get);
      // The whole handoff, producer to consumer: through h5depot, or by
      // writing a file to /dev/shm that the consumer opens with sec2.
      const double handoff_ratio = add("push+fetch+open", push + fetch_open,
                                       "shm write+sec2 open", write_s + open_s);
      if (transport.name == "unix") {
        // Same host: the image built in a sealed memfd and handed over.
        const double push_memfd = ours("push_memfd").values["seconds"];
        add("push (memfd)", push_memfd, "shm write", write_s);
        add("fetch+open", fetch_open, "sec2 open", open_s);
        const double memfd_ratio =
            add("push(memfd)+f+o", push_memfd + fetch_open,
                "shm write+sec2 open", write_s + open_s);
        const std::string where = absl::StrCat("unix ", label);
        if (size == small_size) {
          check(handoff_ratio >= 1.0,
                absl::StrFormat("%s push+fetch+open >= /dev/shm handoff "
                                "(%.2fx)",
                                where, handoff_ratio));
        }
        if (large) {
          check(memfd_ratio >= 10,
                absl::StrFormat("%s push(memfd)+fetch+open >= 10x /dev/shm "
                                "handoff (%.2fx)",
                                where, memfd_ratio));
        }
        if (size >= (uint64_t{1} << 30)) {
          check(fetch_open <= 0.001,
                absl::StrFormat("%s fetch+open <= 1 ms (%.3f ms)", where,
                                fetch_open * 1000));
        }
      }
      if (large) {
        const std::string where = absl::StrCat(transport.name, " ", label);
        check(push_iperf >= 0.5,
              absl::StrFormat("%s push >= 0.5x iperf3 (%.2fx)", where,
                              push_iperf));
        check(fetch_iperf >= 0.5,
              absl::StrFormat("%s fetch >= 0.5x iperf3 (%.2fx)", where,
                              fetch_iperf));
        check(push_redis >= 5, absl::StrFormat("%s push >= 5x redis (%.2fx)",
                                               where, push_redis));
        check(fetch_redis >= 5, absl::StrFormat("%s fetch >= 5x redis (%.2fx)",
                                                where, fetch_redis));
      }
      if (size == largest) {
        fetch_open_rss = std::max(fetch_open_rss, open.peak_rss);
        const double limit = 1.1 * bytes + 64 * kMiB;
        check(static_cast<double>(open.peak_rss) <= limit,
              absl::StrFormat("%s fetch+open %s: client peak RSS %.0f MiB "
                              "<= 1.1x image + 64 MiB = %.0f MiB",
                              transport.name, label, open.peak_rss / kMiB,
                              limit / kMiB));
      }
    }
  }

  // The server's high-water mark against what it holds now.
  const uint64_t server_hwm = VmHwm(server.pid);
  uint64_t stored = 0;
  {
    auto client = ConnectOrDie(tcp_target);
    auto limits = client->GetLimits();
    if (!limits.ok()) Die(std::string(limits.status().message()));
    stored = limits->stored_bytes;
  }
  const double server_limit = 1.05 * static_cast<double>(stored) + 64 * kMiB;
  check(static_cast<double>(server_hwm) <= server_limit,
        absl::StrFormat("server peak RSS %.0f MiB <= 1.05x stored (%.0f MiB) "
                        "+ 64 MiB = %.0f MiB",
                        server_hwm / kMiB, stored / kMiB, server_limit / kMiB));

  // Memory of one image read by four processes: the server plus four
  // readers holding the largest image open, each having read all of it.
  std::vector<Row> memory_rows;
  {
    const std::string id = "bench/held";
    {
      auto client = ConnectOrDie(unix_target);
      const std::vector<char> image = LoadFile(image_path(largest));
      auto pushed = client->Push(id, image.data(), image.size());
      if (!pushed.ok()) Die(std::string(pushed.status().message()));
    }
    const double bytes = static_cast<double>(actual_size[largest]);
    std::map<std::string, double> total;
    for (const Transport& transport : transports) {
      std::fprintf(stderr, "h5depot_bench: 4 readers holding %s, %s\n",
                   SizeLabel(largest).c_str(), transport.name.c_str());
      std::vector<Child> readers;
      for (int i = 0; i < 4; ++i) {
        readers.push_back(Spawn({g_self, "--case=hold_open",
                                 "--target=" + transport.target, "--id=" + id},
                                true));
        const Clock::time_point deadline =
            Clock::now() + std::chrono::minutes(2);
        std::optional<std::string> line = ReadLine(readers.back(), deadline);
        if (!line || line->rfind("ready", 0) != 0) Die("a reader failed");
      }
      double pss = static_cast<double>(Pss(server.pid));
      for (Child& reader : readers) {
        pss += static_cast<double>(Pss(reader.pid));
      }
      for (Child& reader : readers) Stop(reader, absl::Seconds(5));
      total[transport.name] = pss;
    }
    const std::string label = SizeLabel(largest);
    const double limit = 1.15 * bytes;
    memory_rows.push_back({"unix", label, "server+4 readers",
                           absl::StrFormat("%.0f MiB", total["unix"] / kMiB),
                           "PSS", "tcp",
                           absl::StrFormat("%.0f MiB", total["tcp"] / kMiB),
                           "PSS", Ratio(total["tcp"], total["unix"])});
    // Below 1 GiB each process's own baseline (libraries, heaps) weighs
    // more than the image; the target is for large images.
    if (largest >= (uint64_t{1} << 30))
      check(total["unix"] <= limit,
            absl::StrFormat("unix %s: server + 4 readers PSS %.0f MiB <= 1.15x "
                            "image = %.0f MiB",
                            label, total["unix"] / kMiB, limit / kMiB));
    auto client = ConnectOrDie(unix_target);
    client->Delete(id).IgnoreError();
  }

  std::vector<Row> small_rows;
  for (const Transport& transport : transports) {
    std::fprintf(stderr, "h5depot_bench: small images, %s\n",
                 transport.name.c_str());
    // Rounds of ours then Redis's, each figure the median of its rounds,
    // so that the machine's drift over the minute this takes falls on both.
    std::vector<double> push_rounds, fetch_rounds, set_rounds, get_rounds,
        threaded_set_rounds, threaded_get_rounds;
    for (int round = 0; round < kSmallRounds; ++round) {
      CaseResult ours =
          RunChildCase({"--case=small_ops", "--target=" + transport.target,
                        "--image=" + in_dir("small.h5"), "--clients=16",
                        absl::StrCat("--seconds=", small_seconds)});
      push_rounds.push_back(ours.values["push_ops"]);
      fetch_rounds.push_back(ours.values["fetch_ops"]);
      const auto [set, get] = RedisBenchmark(transport.redis_benchmark_args,
                                             small_actual, 16, 100000);
      set_rounds.push_back(set);
      get_rounds.push_back(get);
      std::vector<std::string> argv = {
          "--case=redis_small_ops", "--image=" + in_dir("small.h5"),
          "--clients=16", absl::StrCat("--seconds=", small_seconds)};
      argv.insert(argv.end(), transport.redis_args.begin(),
                  transport.redis_args.end());
      CaseResult threaded = RunChildCase(argv);
      threaded_set_rounds.push_back(threaded.values["set_ops"]);
      threaded_get_rounds.push_back(threaded.values["get_ops"]);
    }
    const double push_ops = Median(push_rounds);
    const double fetch_ops = Median(fetch_rounds);
    const double set_rps = Median(set_rounds);
    const double get_rps = Median(get_rounds);
    const double threaded_set_ops = Median(threaded_set_rounds);
    const double threaded_get_ops = Median(threaded_get_rounds);
    const std::string label = SizeLabel(small_size);
    auto ops_row = [&](const std::string& operation, double ours,
                       const std::string& peer, double theirs) {
      small_rows.push_back({transport.name, label, operation, "",
                            absl::StrFormat("%.0f op/s", ours), peer, "",
                            absl::StrFormat("%.0f op/s", theirs),
                            Ratio(ours, theirs)});
    };
    ops_row("push, 16 clients", push_ops, "redis-benchmark SET", set_rps);
    ops_row("push, 16 clients", push_ops, "redis SET, 16 threads",
            threaded_set_ops);
    ops_row("fetch, 16 clients", fetch_ops, "redis-benchmark GET", get_rps);
    ops_row("fetch, 16 clients", fetch_ops, "redis GET, 16 threads",
            threaded_get_ops);
    check(push_ops >= set_rps,
          absl::StrFormat("%s small push ops/s >= redis SET (%.2fx)",
                          transport.name, push_ops / set_rps));
    check(fetch_ops >= get_rps,
          absl::StrFormat("%s small fetch ops/s >= redis GET (%.2fx)",
                          transport.name, fetch_ops / get_rps));
  }

  // Security: TLS on the data lane against the plain lane, and token
  // authentication against none, each pair measured back to back.
  std::vector<Row> secure_rows;
  {
    std::fprintf(stderr, "h5depot_bench: TLS and tokens\n");
    MakeCertificates(dir);
    const std::string token = h5depot::internal::NewToken();
    {
      std::ofstream auth(in_dir("auth"));
      auth << "bench write " << h5depot::internal::TokenHash(token) << "\n";
      if (!auth) Die("cannot write the auth file");
    }
    Server tls_server = start_server({"--tls-cert-file=" + in_dir("server.crt"),
                                      "--tls-key-file=" + in_dir("server.key"),
                                      "--auth-file=" + in_dir("auth")});
    Server auth_server = start_server(
        {"--unix=" + in_dir("auth.sock"), "--auth-file=" + in_dir("auth")});
    const std::vector<std::string> tls_credentials = {
        "--token=" + token, "--tls-ca-file=" + in_dir("ca.pem")};
    for (uint64_t size : sizes) {
      if (size < (uint64_t{64} << 20)) continue;
      const double bytes = static_cast<double>(actual_size[size]);
      const std::string label = SizeLabel(size);
      for (const std::string which : {"push", "fetch"}) {
        auto run = [&](const std::string& target,
                       const std::vector<std::string>& credentials) {
          std::vector<std::string> argv = {
              "--image=" + image_path(size), absl::StrCat("--id=bench/", size),
              min_arg, "--case=" + which, "--target=" + target};
          argv.insert(argv.end(), credentials.begin(), credentials.end());
          return RunChildCase(argv).values["seconds"];
        };
        const double plain = run(tcp_target, {});
        const double tls = run(tls_server.tcp_target, tls_credentials);
        secure_rows.push_back({"tls", label, which, Duration(tls),
                               Rate(bytes / tls), "tcp lane, plain",
                               Duration(plain), Rate(bytes / plain),
                               Ratio(plain, tls)});
        check(plain / tls >= 0.5,
              absl::StrFormat("tls %s %s >= 0.5x the plain lane (%.2fx)", label,
                              which, plain / tls));
      }
    }
    for (const auto& [name, plain_target, auth_target] :
         std::vector<std::tuple<std::string, std::string, std::string>>{
             {"tcp", tcp_target, auth_server.tcp_target},
             {"unix", unix_target, auth_server.unix_target}}) {
      std::vector<double> plain_push, plain_fetch, token_push, token_fetch;
      for (int round = 0; round < kSmallRounds; ++round) {
        auto run = [&](const std::string& target, const std::string& with) {
          std::vector<std::string> argv = {
              "--case=small_ops", "--target=" + target,
              "--image=" + in_dir("small.h5"), "--clients=16",
              absl::StrCat("--seconds=", small_seconds)};
          if (!with.empty()) argv.push_back("--token=" + with);
          return RunChildCase(argv);
        };
        CaseResult without = run(plain_target, "");
        CaseResult with = run(auth_target, token);
        plain_push.push_back(without.values["push_ops"]);
        plain_fetch.push_back(without.values["fetch_ops"]);
        token_push.push_back(with.values["push_ops"]);
        token_fetch.push_back(with.values["fetch_ops"]);
      }
      for (const auto& [operation, ours, theirs] :
           std::vector<std::tuple<std::string, double, double>>{
               {"push, token", Median(token_push), Median(plain_push)},
               {"fetch, token", Median(token_fetch), Median(plain_fetch)}}) {
        secure_rows.push_back(
            {name, SizeLabel(small_size), operation + ", 16 clients", "",
             absl::StrFormat("%.0f op/s", ours), "the same, no auth", "",
             absl::StrFormat("%.0f op/s", theirs), Ratio(ours, theirs)});
        check(ours >= 0.9 * theirs,
              absl::StrFormat("%s small %s >= 0.9x without auth (%.2fx)", name,
                              operation, ours / theirs));
      }
    }
    Stop(tls_server.child, absl::Seconds(10));
    Stop(auth_server.child, absl::Seconds(10));
  }

  const double iperf_again = IperfBytesPerSecond(3);
  Stop(server, absl::Seconds(10));
  Stop(redis, absl::Seconds(10));
  KillChildrenAndClean();

  // The table.
  std::printf(
      "h5depot data path (%s), %ld cores, loopback. iperf3 single stream: "
      "%.2f GiB/s at start, %.2f GiB/s at end (the peer of images of 64 MiB "
      "and more is a run made just before them).\n\n",
      g_grpc_only ? "gRPC only" : "data lane", sysconf(_SC_NPROCESSORS_ONLN),
      iperf / kGiB, iperf_again / kGiB);
  auto print = [](const Row& row) {
    std::printf("%-5s %-8s %-17s %10s %12s  %-20s %10s %12s %7s\n",
                row.transport.c_str(), row.size.c_str(), row.operation.c_str(),
                row.time.c_str(), row.rate.c_str(), row.peer.c_str(),
                row.peer_time.c_str(), row.peer_rate.c_str(),
                row.ratio.c_str());
  };
  print({"via", "size", "h5depot", "time/op", "rate", "peer", "time/op", "rate",
         "ratio"});
  std::string previous;
  for (const Row& row : rows) {
    if (!previous.empty() && previous != row.transport + row.size) {
      std::printf("\n");
    }
    previous = row.transport + row.size;
    print(row);
  }
  std::printf("\n");
  for (const Row& row : memory_rows) print(row);
  std::printf("\n");
  for (const Row& row : small_rows) print(row);
  std::printf("\n");
  for (const Row& row : secure_rows) print(row);
  std::printf(
      "\nmemory: fetch+open of %s, client peak RSS %.0f MiB; server "
      "peak RSS %.0f MiB holding %.0f MiB\n\n",
      SizeLabel(largest).c_str(), fetch_open_rss / kMiB, server_hwm / kMiB,
      stored / kMiB);
  for (const std::string& verdict : verdicts) {
    std::printf("%s\n", verdict.c_str());
  }
  std::printf("\n%s\n", targets_met ? "all targets met" : "targets missed");
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  g_self = std::filesystem::canonical("/proc/self/exe").string();
  Args args(argc, argv);
  g_grpc_only = args.Has("grpc-only");
  g_token = args.Get("token", "");
  g_tls_ca_file = args.Get("tls-ca-file", "");
  if (args.Has("case")) return RunCase(args);
  return RunDriver(args);
}
