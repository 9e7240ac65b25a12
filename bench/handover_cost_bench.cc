// What a same-host handover of one step costs each way, against a copy:
// the floor under the stream benchmark's same-host rows (docs/
// PERFORMANCE.md, "Streams on the data lane"). Prints one table.
//
//   build-bench/bench/handover_cost_bench [MiB] [ROUNDS]   # default 1 200
//
// Each round makes a memfd of SIZE bytes with one write(2), as a writer
// that hands its step over does (and as the /dev/shm peer writes its
// file), then reads it back three ways, as a reader would:
//   - map it read-only and touch one byte per page (what a reader of a
//     handed-over memfd does first), then unmap it;
//   - the same with MAP_POPULATE;
//   - pread(2) it into a buffer reused from round to round (what the
//     /dev/shm reader's read does, and what a reader of bytes does).
// Every figure is the mean per round, in milliseconds.
#include <sys/mman.h>
#include <unistd.h>

#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <vector>

namespace {

using Clock = std::chrono::steady_clock;

[[noreturn]] void Die(const char* what) {
  std::perror(what);
  std::exit(1);
}

double Milliseconds(Clock::time_point from, Clock::time_point to) {
  return std::chrono::duration<double, std::milli>(to - from).count();
}

// One byte per page, so that every page is touched and nothing is copied.
uint64_t TouchPages(const volatile uint8_t* data, size_t size) {
  uint64_t sum = 0;
  for (size_t at = 0; at < size; at += 4096) sum += data[at];
  return sum;
}

}  // namespace

int main(int argc, char** argv) {
  const size_t mib = argc > 1 ? std::strtoull(argv[1], nullptr, 10) : 1;
  const int rounds = argc > 2 ? std::atoi(argv[2]) : 200;
  const size_t size = mib << 20;
  if (size == 0 || rounds <= 0) {
    std::fprintf(stderr, "usage: %s [MiB] [ROUNDS]\n", argv[0]);
    return 2;
  }
  std::vector<uint8_t> source(size, 7);
  std::vector<uint8_t> reused(size, 1);  // written once: warm
  double write_ms = 0, touch_ms = 0, unmap_ms = 0, populate_ms = 0,
         pread_ms = 0;
  uint64_t sink = 0;
  for (int round = 0; round < rounds; ++round) {
    const Clock::time_point start = Clock::now();
    const int fd = memfd_create("handover", MFD_CLOEXEC);
    if (fd < 0) Die("memfd_create");
    if (write(fd, source.data(), size) != static_cast<ssize_t>(size)) {
      Die("write");
    }
    const Clock::time_point written = Clock::now();
    void* mapped = mmap(nullptr, size, PROT_READ, MAP_SHARED, fd, 0);
    if (mapped == MAP_FAILED) Die("mmap");
    sink += TouchPages(static_cast<const uint8_t*>(mapped), size);
    const Clock::time_point touched = Clock::now();
    munmap(mapped, size);
    const Clock::time_point unmapped = Clock::now();
    mapped = mmap(nullptr, size, PROT_READ, MAP_SHARED | MAP_POPULATE, fd, 0);
    if (mapped == MAP_FAILED) Die("mmap");
    sink += TouchPages(static_cast<const uint8_t*>(mapped), size);
    munmap(mapped, size);
    const Clock::time_point populated = Clock::now();
    if (pread(fd, reused.data(), size, 0) != static_cast<ssize_t>(size)) {
      Die("pread");
    }
    sink += TouchPages(reused.data(), size);
    const Clock::time_point copied = Clock::now();
    close(fd);
    write_ms += Milliseconds(start, written);
    touch_ms += Milliseconds(written, touched);
    unmap_ms += Milliseconds(touched, unmapped);
    populate_ms += Milliseconds(unmapped, populated);
    pread_ms += Milliseconds(populated, copied);
  }
  const double n = rounds;
  std::printf(
      "| size | memfd + write | map + touch | unmap | "
      "MAP_POPULATE map + touch + unmap | pread into a reused buffer "
      "|\n|---|---|---|---|---|---|\n");
  std::printf("| %zu MiB | %.3f ms | %.3f ms | %.3f ms | %.3f ms | %.3f ms |\n",
              mib, write_ms / n, touch_ms / n, unmap_ms / n, populate_ms / n,
              pread_ms / n);
  return sink == 0 ? 1 : 0;  // the bytes are 7s and 1s: never 0
}
