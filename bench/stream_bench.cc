// Streams against their peers: one writer hands `steps` HDF5 images of one
// size to R readers sharing one reader group, through an h5depot stream
// (Append, or on the same host, for steps of 256 KiB and more, a step
// buffer the writer fills, or with --memfds=1 AppendMemfd of a new memfd
// per step; Next + Ack), through a Redis stream (XADD;
// XREADGROUP + XACK + XDEL, the same number of client threads, hiredis), and,
// on the same host, through files written to a /dev/shm directory and announced
// with inotify (write, rename into place; a reader claims a file by renaming
// it, reads it whole, unlinks it). With --file=plain or --file=buffered
// the h5depot writer appends the image as an open HDF5 file (the --image
// file opened once, read-only) with AppendFileImage, or with
// AppendFileImageInStepBuffer (HDF5 copies it into a step buffer). Every
// reader touches each page of each step it gets. Prints one line per case:
// steps/s and GB/s from the writer's first step to the last step taken.
// bench/stream_bench.sh starts the servers and prints the table.
//
//   stream_bench --peer=h5depot|redis|shm --size=BYTES --steps=N
//                --readers=R [--target=T] [--memfds=1]
//                [--file=plain|buffered] [--redis-socket=PATH |
//                --redis-port=P] [--shm-dir=DIR] --image=PATH
#include <fcntl.h>
#include <hiredis/hiredis.h>
#include <sys/inotify.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdarg>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <map>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/time/time.h"
#include "h5depot/client.h"
#include "h5depot/hdf5_transfer.h"
#include "hdf5.h"

namespace {

using Clock = std::chrono::steady_clock;

[[noreturn]] void Die(const std::string& message) {
  std::fprintf(stderr, "stream_bench: %s\n", message.c_str());
  std::exit(1);
}

std::map<std::string, std::string> ParseArgs(int argc, char** argv) {
  std::map<std::string, std::string> args;
  for (int i = 1; i < argc; ++i) {
    std::string arg = argv[i];
    const size_t eq = arg.find('=');
    if (arg.rfind("--", 0) != 0 || eq == std::string::npos) {
      Die("arguments are --name=value: " + arg);
    }
    args[arg.substr(2, eq - 2)] = arg.substr(eq + 1);
  }
  return args;
}

std::string LoadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) Die("cannot read " + path);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

// What a reader does with a step's bytes: touches each page, as a
// consumer that reads the image would at least.
uint64_t Touch(const void* data, size_t size) {
  const auto* bytes = static_cast<const volatile uint8_t*>(data);
  uint64_t sum = 0;
  for (size_t at = 0; at < size; at += 4096) sum += bytes[at];
  return sum;
}

std::atomic<uint64_t> g_sink{0};

// A new memfd holding `image`, sealed against any change, as
// Client::AppendMemfd takes it.
int MemfdOf(const std::string& image) {
  const int fd =
      memfd_create("stream-bench-step", MFD_CLOEXEC | MFD_ALLOW_SEALING);
  if (fd < 0) Die("memfd_create");
  for (size_t done = 0; done < image.size();) {
    const ssize_t n = write(fd, image.data() + done, image.size() - done);
    if (n <= 0) Die("write a step memfd");
    done += static_cast<size_t>(n);
  }
  if (fcntl(fd, F_ADD_SEALS,
            F_SEAL_WRITE | F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL) != 0) {
    Die("seal a step memfd");
  }
  return fd;
}

// ---------------------------------------------------------------- h5depot

double RunH5depot(const std::string& target, const std::string& image,
                  uint64_t steps, int readers, bool memfds,
                  const std::string& image_path, const std::string& file_mode) {
  hid_t file = H5I_INVALID_HID;
  if (!file_mode.empty()) {
    if (file_mode != "plain" && file_mode != "buffered") {
      Die("--file is plain or buffered");
    }
    file = H5Fopen(image_path.c_str(), H5F_ACC_RDONLY, H5P_DEFAULT);
    if (file < 0) Die("H5Fopen " + image_path);
  }
  auto writer = h5depot::Client::Connect(target);
  if (!writer.ok()) Die(std::string(writer.status().message()));
  const std::string stream = absl::StrCat(
      "bench/", getpid(), "-", Clock::now().time_since_epoch().count());
  h5depot::StreamPolicy policy;
  policy.max_steps = 8;
  policy.max_bytes = std::max<uint64_t>(uint64_t{256} << 20, 9 * image.size());
  if (!(*writer)->CreateStream(stream, policy).ok()) Die("create stream");
  std::vector<std::unique_ptr<h5depot::Client>> clients;
  for (int r = 0; r < readers; ++r) {
    auto client = h5depot::Client::Connect(target);
    if (!client.ok()) Die(std::string(client.status().message()));
    // Joins the group before the first step, so that it gets every one.
    (void)(*client)->Next(stream, "readers", h5depot::NextOptions{});
    clients.push_back(*std::move(client));
  }
  std::atomic<uint64_t> taken{0};
  std::vector<std::thread> threads;
  const Clock::time_point start = Clock::now();
  for (int r = 0; r < readers; ++r) {
    threads.emplace_back([&, r] {
      h5depot::NextOptions options;
      options.wait = absl::Seconds(60);
      for (;;) {
        // Each step's acknowledgement rides on the request for the next.
        auto step = clients[r]->Next(stream, "readers", options);
        if (absl::IsOutOfRange(step.status())) return;
        if (!step.ok()) Die(std::string(step.status().message()));
        g_sink += Touch(step->image.buffer.data(), step->image.buffer.size());
        options.ack_step = step->step;
        taken.fetch_add(1);
      }
    });
  }
  h5depot::AppendOptions append;
  append.wait_for_room = absl::Seconds(120);
  // On this host the writer builds each step of 256 KiB or more in a step
  // buffer (Client::BeginStep: one copy of the image, as the /dev/shm
  // peer's one write of its file) and hands it over; with --memfds, in a
  // new memfd of its own each (AppendMemfd), as before step buffers.
  // Smaller steps, and any elsewhere, it sends as bytes (CommitStep and
  // AppendMemfd would send a smaller one's bytes too).
  const bool same_host =
      target.rfind("unix:", 0) == 0 && image.size() >= (size_t{256} << 10);
  for (uint64_t i = 0; i < steps; ++i) {
    absl::StatusOr<h5depot::AppendedStep> appended;
    if (file >= 0) {
      appended = file_mode == "buffered"
                     ? h5depot::AppendFileImageInStepBuffer(**writer, stream,
                                                            file, append)
                     : h5depot::AppendFileImage(**writer, stream, file, append);
    } else if (same_host && memfds) {
      const int memfd = MemfdOf(image);
      appended = (*writer)->AppendMemfd(stream, memfd, image.size(), append);
      close(memfd);
    } else if (same_host) {
      absl::StatusOr<h5depot::StepBuffer> buffer =
          (*writer)->BeginStep(stream, image.size(), append);
      if (!buffer.ok()) Die(std::string(buffer.status().message()));
      std::memcpy(buffer->data(), image.data(), image.size());
      appended = (*writer)->CommitStep(*std::move(buffer), append);
    } else {
      appended = (*writer)->Append(stream, image.data(), image.size(), append);
    }
    if (!appended.ok()) Die(std::string(appended.status().message()));
  }
  if (file >= 0) H5Fclose(file);
  if (!(*writer)->FinishStream(stream).ok()) Die("finish");
  for (std::thread& thread : threads) thread.join();
  const double seconds =
      std::chrono::duration<double>(Clock::now() - start).count();
  if (taken.load() != steps) Die("steps were lost");
  return seconds;
}

// ------------------------------------------------------------------ Redis

redisContext* RedisConnect(const std::map<std::string, std::string>& args) {
  auto socket = args.find("redis-socket");
  redisContext* redis =
      socket != args.end()
          ? redisConnectUnix(socket->second.c_str())
          : redisConnect("127.0.0.1", std::stoi(args.at("redis-port")));
  if (redis == nullptr || redis->err) Die("cannot connect to redis");
  return redis;
}

redisReply* Command(redisContext* redis, const char* format, ...) {
  va_list ap;
  va_start(ap, format);
  auto* reply = static_cast<redisReply*>(redisvCommand(redis, format, ap));
  va_end(ap);
  if (reply == nullptr) Die(absl::StrCat("redis: ", redis->errstr));
  if (reply->type == REDIS_REPLY_ERROR)
    Die(absl::StrCat("redis: ", reply->str));
  return reply;
}

double RunRedis(const std::map<std::string, std::string>& args,
                const std::string& image, uint64_t steps, int readers) {
  redisContext* writer = RedisConnect(args);
  const std::string stream = absl::StrCat(
      "bench-", getpid(), "-", Clock::now().time_since_epoch().count());
  freeReplyObject(
      Command(writer, "XGROUP CREATE %s readers $ MKSTREAM", stream.c_str()));
  std::atomic<uint64_t> taken{0};
  std::vector<std::thread> threads;
  std::vector<redisContext*> contexts;
  for (int r = 0; r < readers; ++r) contexts.push_back(RedisConnect(args));
  const Clock::time_point start = Clock::now();
  for (int r = 0; r < readers; ++r) {
    threads.emplace_back([&, r] {
      redisContext* redis = contexts[r];
      const std::string consumer = absl::StrCat("c", r);
      while (taken.load() < steps) {
        redisReply* reply = Command(
            redis, "XREADGROUP GROUP readers %s COUNT 1 BLOCK 200 STREAMS %s >",
            consumer.c_str(), stream.c_str());
        if (reply->type == REDIS_REPLY_NIL) {
          freeReplyObject(reply);
          continue;
        }
        // [[stream, [[id, [field, value]]]]]
        redisReply* entry = reply->element[0]->element[1]->element[0];
        const std::string id(entry->element[0]->str, entry->element[0]->len);
        redisReply* value = entry->element[1]->element[1];
        g_sink += Touch(value->str, value->len);
        freeReplyObject(reply);
        freeReplyObject(
            Command(redis, "XACK %s readers %s", stream.c_str(), id.c_str()));
        freeReplyObject(
            Command(redis, "XDEL %s %s", stream.c_str(), id.c_str()));
        taken.fetch_add(1);
      }
    });
  }
  for (uint64_t i = 0; i < steps; ++i) {
    freeReplyObject(Command(writer, "XADD %s * d %b", stream.c_str(),
                            image.data(), image.size()));
  }
  for (std::thread& thread : threads) thread.join();
  const double seconds =
      std::chrono::duration<double>(Clock::now() - start).count();
  freeReplyObject(Command(writer, "DEL %s", stream.c_str()));
  for (redisContext* context : contexts) redisFree(context);
  redisFree(writer);
  return seconds;
}

// ------------------------------------------------------------- /dev/shm

double RunShm(const std::string& dir, const std::string& image, uint64_t steps,
              int readers) {
  std::atomic<uint64_t> taken{0};
  std::vector<std::thread> threads;
  std::vector<int> watches;
  for (int r = 0; r < readers; ++r) {
    const int fd = inotify_init1(IN_CLOEXEC);
    if (fd < 0 || inotify_add_watch(fd, dir.c_str(), IN_MOVED_TO) < 0) {
      Die("inotify");
    }
    watches.push_back(fd);
  }
  const Clock::time_point start = Clock::now();
  for (int r = 0; r < readers; ++r) {
    threads.emplace_back([&, r] {
      alignas(inotify_event) char events[64 * 1024];
      std::vector<char> buffer;
      while (taken.load() < steps) {
        const ssize_t got = read(watches[r], events, sizeof(events));
        if (got <= 0) continue;
        for (ssize_t at = 0; at < got;) {
          const auto* event = reinterpret_cast<inotify_event*>(events + at);
          at += sizeof(inotify_event) + event->len;
          const std::string name = event->name;
          if (name.rfind("step-", 0) != 0) continue;
          // Claimed by renaming: only one reader's rename succeeds.
          const std::string claimed =
              absl::StrCat(dir, "/claimed-", r, "-", name);
          if (rename((dir + "/" + name).c_str(), claimed.c_str()) != 0) {
            continue;
          }
          const int fd = open(claimed.c_str(), O_RDONLY | O_CLOEXEC);
          struct stat info;
          if (fd < 0 || fstat(fd, &info) != 0) Die("open a step");
          buffer.resize(static_cast<size_t>(info.st_size));
          size_t done = 0;
          while (done < buffer.size()) {
            const ssize_t n =
                read(fd, buffer.data() + done, buffer.size() - done);
            if (n <= 0) Die("read a step");
            done += static_cast<size_t>(n);
          }
          close(fd);
          g_sink += Touch(buffer.data(), buffer.size());
          unlink(claimed.c_str());
          taken.fetch_add(1);
        }
      }
    });
  }
  for (uint64_t i = 0; i < steps; ++i) {
    const std::string temporary = absl::StrCat(dir, "/.tmp-", i);
    const int fd =
        open(temporary.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (fd < 0) Die("create a step file");
    size_t done = 0;
    while (done < image.size()) {
      const ssize_t n = write(fd, image.data() + done, image.size() - done);
      if (n <= 0) Die("write a step file");
      done += static_cast<size_t>(n);
    }
    close(fd);
    if (rename(temporary.c_str(), absl::StrCat(dir, "/step-", i).c_str()) !=
        0) {
      Die("rename a step file");
    }
  }
  // Readers blocked in read() are woken by a last, unclaimable event.
  for (std::thread& thread : threads) {
    while (taken.load() < steps) std::this_thread::yield();
    const std::string poke = dir + "/.poke";
    close(open(poke.c_str(), O_WRONLY | O_CREAT | O_CLOEXEC, 0600));
    rename(poke.c_str(), (dir + "/done").c_str());
    thread.join();
  }
  const double seconds =
      std::chrono::duration<double>(Clock::now() - start).count();
  for (int fd : watches) close(fd);
  return seconds;
}

}  // namespace

int main(int argc, char** argv) {
  const std::map<std::string, std::string> args = ParseArgs(argc, argv);
  auto get = [&](const std::string& name) {
    auto it = args.find(name);
    if (it == args.end()) Die("--" + name + " is needed");
    return it->second;
  };
  const std::string image = LoadFile(get("image"));
  uint64_t steps = 0;
  int readers = 0;
  if (!absl::SimpleAtoi(get("steps"), &steps) ||
      !absl::SimpleAtoi(get("readers"), &readers) || readers < 1) {
    Die("--steps and --readers are numbers");
  }
  const std::string peer = get("peer");
  double seconds = 0;
  if (peer == "h5depot") {
    seconds = RunH5depot(get("target"), image, steps, readers,
                         args.count("memfds") != 0 && args.at("memfds") == "1",
                         get("image"),
                         args.count("file") != 0 ? args.at("file") : "");
  } else if (peer == "redis") {
    seconds = RunRedis(args, image, steps, readers);
  } else if (peer == "shm") {
    seconds = RunShm(get("shm-dir"), image, steps, readers);
  } else {
    Die("--peer is h5depot, redis or shm");
  }
  std::printf(
      "steps_per_second=%.1f\nbytes_per_second=%.1f\n",
      static_cast<double>(steps) / seconds,
      static_cast<double>(steps) * static_cast<double>(image.size()) / seconds);
  return 0;
}
