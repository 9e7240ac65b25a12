// What it costs h5depotd to fill memory it has never touched, the way a
// push fills an image's buffer, by each way Linux offers to get the pages;
// prints one table (docs/PERFORMANCE.md, "Fresh memory on the server").
//
//   build-bench/bench/fresh_memory_bench [MiB]      # default 1024
//
// Each row maps SIZE bytes, then writes them all in 256 KiB pieces (a
// push's receive is a copy into the buffer, at about memset's speed; the
// page faults and the zeroing are what differ), and unmaps. Every row is
// the median of five rounds, the rounds interleaved so that a slow spell
// of a shared machine falls on all rows alike. The "warm" row writes into
// memory written once before: what a push costs when the server reuses a
// retained buffer, the floor for every other row.
#include <fcntl.h>
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <string>
#include <utility>
#include <vector>

namespace {

constexpr size_t kPiece = size_t{256} << 10;

[[noreturn]] void Die(const char* what) {
  std::perror(what);
  std::exit(1);
}

// Writes every byte of [data, data + size) a piece at a time.
void Fill(uint8_t* data, size_t size, uint8_t value) {
  for (size_t at = 0; at < size; at += kPiece) {
    std::memset(data + at, value, std::min(kPiece, size - at));
  }
}

struct Mapped {
  uint8_t* data;
  int fd;  // -1: anonymous
};

Mapped MapMemfd(size_t size, int extra_flags, bool fallocate_first,
                int advice = 0) {
  const int fd = memfd_create("fresh-memory-bench", MFD_CLOEXEC);
  if (fd < 0) Die("memfd_create");
  if (ftruncate(fd, static_cast<off_t>(size)) != 0) Die("ftruncate");
  if (fallocate_first && fallocate(fd, 0, 0, static_cast<off_t>(size)) != 0) {
    Die("fallocate");
  }
  void* p = mmap(nullptr, size, PROT_READ | PROT_WRITE,
                 MAP_SHARED | extra_flags, fd, 0);
  if (p == MAP_FAILED) Die("mmap");
  if (advice != 0) madvise(p, size, advice);
  return {static_cast<uint8_t*>(p), fd};
}

Mapped MapAnonymous(size_t size, int extra_flags, int advice) {
  void* p = mmap(nullptr, size, PROT_READ | PROT_WRITE,
                 MAP_PRIVATE | MAP_ANONYMOUS | extra_flags, -1, 0);
  if (p == MAP_FAILED) Die("mmap");
  if (advice != 0) madvise(p, size, advice);
  return {static_cast<uint8_t*>(p), -1};
}

void Unmap(const Mapped& mapped, size_t size) {
  munmap(mapped.data, size);
  if (mapped.fd >= 0) close(mapped.fd);
}

struct Row {
  Row(const char* row_name, std::function<Mapped(size_t)> row_map)
      : name(row_name), map(std::move(row_map)) {}

  const char* name;
  std::function<Mapped(size_t)> map;
  std::vector<double> map_seconds;
  std::vector<double> fill_seconds;
};

double Seconds(std::chrono::steady_clock::time_point since) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - since)
      .count();
}

double Median(std::vector<double> values) {
  std::sort(values.begin(), values.end());
  return values[values.size() / 2];
}

std::string ReadSetting(const char* path) {
  FILE* file = std::fopen(path, "r");
  if (file == nullptr) return "?";
  char line[256] = {};
  if (std::fgets(line, sizeof(line), file) == nullptr) line[0] = '\0';
  std::fclose(file);
  std::string text(line);
  if (!text.empty() && text.back() == '\n') text.pop_back();
  return text;
}

}  // namespace

int main(int argc, char** argv) {
  const size_t mib = argc > 1 ? std::strtoull(argv[1], nullptr, 10) : 1024;
  const size_t size = mib << 20;
  if (size == 0) {
    std::fprintf(stderr, "usage: %s [MiB]\n", argv[0]);
    return 2;
  }
  std::vector<Row> rows = {
      {"memfd, pages faulted in by the writes",
       [](size_t n) { return MapMemfd(n, 0, false); }},
      {"memfd, MAP_POPULATE",
       [](size_t n) { return MapMemfd(n, MAP_POPULATE, false); }},
      {"memfd, fallocate before mapping (h5depotd over 16 MiB)",
       [](size_t n) { return MapMemfd(n, 0, true); }},
      {"memfd, fallocate and MAP_POPULATE (h5depotd up to 16 MiB)",
       [](size_t n) { return MapMemfd(n, MAP_POPULATE, true); }},
      {"memfd, MADV_HUGEPAGE (takes effect if shared memory allows it)",
       [](size_t n) { return MapMemfd(n, 0, false, MADV_HUGEPAGE); }},
      {"anonymous, 4 KiB pages (MADV_NOHUGEPAGE)",
       [](size_t n) { return MapAnonymous(n, 0, MADV_NOHUGEPAGE); }},
      {"anonymous, MADV_HUGEPAGE",
       [](size_t n) { return MapAnonymous(n, 0, MADV_HUGEPAGE); }},
      {"anonymous, MADV_HUGEPAGE and MAP_POPULATE",
       [](size_t n) { return MapAnonymous(n, MAP_POPULATE, MADV_HUGEPAGE); }},
  };
  // The floor: memory written once already.
  Mapped warm = MapAnonymous(size, 0, 0);
  Fill(warm.data, size, 1);
  std::vector<double> warm_seconds;

  for (int round = 0; round < 5; ++round) {
    for (Row& row : rows) {
      auto start = std::chrono::steady_clock::now();
      Mapped mapped = row.map(size);
      row.map_seconds.push_back(Seconds(start));
      start = std::chrono::steady_clock::now();
      Fill(mapped.data, size, static_cast<uint8_t>(round + 2));
      row.fill_seconds.push_back(Seconds(start));
      Unmap(mapped, size);
    }
    const auto start = std::chrono::steady_clock::now();
    Fill(warm.data, size, static_cast<uint8_t>(round + 2));
    warm_seconds.push_back(Seconds(start));
  }
  Unmap(warm, size);

  std::printf(
      "%zu MiB; transparent huge pages: %s; for shared memory: %s\n\n", mib,
      ReadSetting("/sys/kernel/mm/transparent_hugepage/enabled").c_str(),
      ReadSetting("/sys/kernel/mm/transparent_hugepage/shmem_enabled").c_str());
  std::printf("| pages from | map | write | total | GB/s | warm / total |\n");
  std::printf("|---|---|---|---|---|---|\n");
  const double floor = Median(warm_seconds);
  for (const Row& row : rows) {
    const double map = Median(row.map_seconds);
    const double fill = Median(row.fill_seconds);
    std::printf("| %s | %.1f ms | %.1f ms | %.1f ms | %.2f | %.2fx |\n",
                row.name, map * 1e3, fill * 1e3, (map + fill) * 1e3,
                static_cast<double>(size) / (map + fill) / 1e9,
                floor / (map + fill));
  }
  std::printf(
      "| warm: memory written before (a retained buffer) | | %.1f ms "
      "| %.1f ms | %.2f | 1.00x |\n",
      floor * 1e3, floor * 1e3, static_cast<double>(size) / floor / 1e9);
  return 0;
}
