// The remote driver side by side with HDF5's ROS3 driver, on the same file:
// one served by h5depotd, the other by an HTTP server over loopback.
// Run it through bench/remote_driver_bench.sh, which starts both servers.
//
//   remote_driver_bench --file=PATH --target=HOST:PORT --url=URL
//                       --access-log=PATH [--repeat=N]
//
// Builds PATH (if absent) as a 256 MiB contiguous dataset /big followed by
// a 100-element /small, pushes it to the server as image "bench/256m",
// then measures, per driver, the median of N runs (and, for the first
// operation, the first run: the process's first open):
//   open + read /small   a fresh H5Fopen, H5Dread of /small, H5Fclose
//   read /big at once    one H5Dread of all 256 MiB, file already open
//   read /big by 1 MiB   sequential 1 MiB hyperslab reads of /big
// Requests are the remote driver's own count (plus one for the connection's
// first contact on the first open: a lane hello on the server's host, a
// GetLimits call elsewhere) and, for ROS3, the lines the HTTP
// server logged; bytes are payload bytes (image bytes received, or HTTP
// body bytes sent).
#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <functional>
#include <string>
#include <thread>
#include <vector>

#include "H5FDremote.h"
#include "h5depot/client.h"
#include "hdf5.h"

namespace {

constexpr const char* kImageId = "bench/256m";
constexpr hsize_t kBigBytes = hsize_t{256} << 20;
constexpr hsize_t kSlabBytes = hsize_t{1} << 20;

struct Args {
  std::string file, target, url, access_log;
  int repeat = 5;
};

bool ParseArgs(int argc, char** argv, Args* args) {
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    auto value = [&](const char* name, std::string* out) {
      const std::string prefix = std::string("--") + name + "=";
      if (arg.rfind(prefix, 0) != 0) return false;
      *out = arg.substr(prefix.size());
      return true;
    };
    std::string repeat;
    if (value("file", &args->file) || value("target", &args->target) ||
        value("url", &args->url) || value("access-log", &args->access_log)) {
      continue;
    }
    if (value("repeat", &repeat)) {
      args->repeat = std::max(1, std::atoi(repeat.c_str()));
      continue;
    }
    std::fprintf(stderr, "unknown argument %s\n", arg.c_str());
    return false;
  }
  return !args->file.empty() && !args->target.empty() && !args->url.empty() &&
         !args->access_log.empty();
}

void Die(const char* what) {
  std::fprintf(stderr, "remote_driver_bench: %s\n", what);
  H5Eprint2(H5E_DEFAULT, stderr);
  std::exit(1);
}

bool Exists(const std::string& path) { return std::ifstream(path).good(); }

void MakeFile(const std::string& path) {
  hid_t file = H5Fcreate(path.c_str(), H5F_ACC_TRUNC, H5P_DEFAULT, H5P_DEFAULT);
  if (file < 0) Die("cannot create the bench file");
  std::vector<unsigned char> big(kBigBytes);
  for (size_t i = 0; i < big.size(); ++i) big[i] = (i * 131 + (i >> 12)) & 0xff;
  hid_t space = H5Screate_simple(1, &kBigBytes, nullptr);
  hid_t dset = H5Dcreate2(file, "big", H5T_NATIVE_UCHAR, space, H5P_DEFAULT,
                          H5P_DEFAULT, H5P_DEFAULT);
  if (dset < 0 || H5Dwrite(dset, H5T_NATIVE_UCHAR, H5S_ALL, H5S_ALL,
                           H5P_DEFAULT, big.data()) < 0) {
    Die("cannot write /big");
  }
  H5Dclose(dset);
  H5Sclose(space);
  std::vector<double> small(100);
  for (int i = 0; i < 100; ++i) small[i] = i * 0.5;
  const hsize_t small_dims = small.size();
  space = H5Screate_simple(1, &small_dims, nullptr);
  dset = H5Dcreate2(file, "small", H5T_NATIVE_DOUBLE, space, H5P_DEFAULT,
                    H5P_DEFAULT, H5P_DEFAULT);
  if (dset < 0 || H5Dwrite(dset, H5T_NATIVE_DOUBLE, H5S_ALL, H5S_ALL,
                           H5P_DEFAULT, small.data()) < 0) {
    Die("cannot write /small");
  }
  H5Dclose(dset);
  H5Sclose(space);
  H5Fclose(file);
}

// Requests and body bytes the HTTP server has logged so far, one request a
// line, the body size as the line's last field.
struct LogTotals {
  uint64_t requests = 0;
  uint64_t bytes = 0;
};

LogTotals ReadAccessLog(const std::string& path) {
  LogTotals totals;
  std::ifstream log(path);
  for (std::string line; std::getline(log, line);) {
    ++totals.requests;
    const size_t space = line.find_last_of(' ');
    totals.bytes += std::strtoull(line.c_str() + space + 1, nullptr, 10);
  }
  return totals;
}

struct Sample {
  double seconds = 0;
  uint64_t requests = 0;
  uint64_t bytes = 0;
};

// One driver under test: how to make its fapl and count its traffic.
struct Driver {
  const char* name;
  std::string file_name;
  std::function<hid_t()> make_fapl;
  // Requests and bytes so far for `file` (remote: per file; ROS3: global
  // log totals, so callers take differences).
  std::function<LogTotals(hid_t file)> traffic;
};

double Now() {
  return std::chrono::duration<double>(
             std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

bool g_connected = false;  // whether the remote driver has connected yet

Sample OpenAndReadSmall(const Driver& driver) {
  hid_t fapl = driver.make_fapl();
  const LogTotals before = driver.traffic(-1);
  const double start = Now();
  hid_t file = H5Fopen(driver.file_name.c_str(), H5F_ACC_RDONLY, fapl);
  if (file < 0) Die("cannot open the file");
  std::vector<double> small(100);
  hid_t dset = H5Dopen2(file, "small", H5P_DEFAULT);
  if (dset < 0 || H5Dread(dset, H5T_NATIVE_DOUBLE, H5S_ALL, H5S_ALL,
                          H5P_DEFAULT, small.data()) < 0) {
    Die("cannot read /small");
  }
  H5Dclose(dset);
  Sample sample;
  sample.seconds = Now() - start;
  const LogTotals after = driver.traffic(file);
  H5Fclose(file);
  if (small[99] != 49.5) Die("/small holds the wrong values");
  sample.requests = after.requests - before.requests;
  sample.bytes = after.bytes - before.bytes;
  if (std::string(driver.name) == "remote" && !g_connected) {
    ++sample.requests;  // the connection's first contact
    g_connected = true;
  }
  H5Pclose(fapl);
  return sample;
}

Sample ReadBig(const Driver& driver, hsize_t slab, unsigned char* buffer) {
  hid_t fapl = driver.make_fapl();
  hid_t file = H5Fopen(driver.file_name.c_str(), H5F_ACC_RDONLY, fapl);
  if (file < 0) Die("cannot open the file");
  hid_t dset = H5Dopen2(file, "big", H5P_DEFAULT);
  if (dset < 0) Die("cannot open /big");
  hid_t file_space = H5Dget_space(dset);
  hid_t memory_space = H5Screate_simple(1, &slab, nullptr);
  const LogTotals before = driver.traffic(file);
  const double start = Now();
  for (hsize_t offset = 0; offset < kBigBytes; offset += slab) {
    H5Sselect_hyperslab(file_space, H5S_SELECT_SET, &offset, nullptr, &slab,
                        nullptr);
    if (H5Dread(dset, H5T_NATIVE_UCHAR, memory_space, file_space, H5P_DEFAULT,
                buffer + offset) < 0) {
      Die("cannot read /big");
    }
  }
  Sample sample;
  sample.seconds = Now() - start;
  const LogTotals after = driver.traffic(file);
  sample.requests = after.requests - before.requests;
  sample.bytes = after.bytes - before.bytes;
  H5Sclose(memory_space);
  H5Sclose(file_space);
  H5Dclose(dset);
  H5Fclose(file);
  H5Pclose(fapl);
  for (size_t i = 0; i < kBigBytes; i += 999983) {
    if (buffer[i] != ((i * 131 + (i >> 12)) & 0xff)) Die("/big read wrong");
  }
  return sample;
}

Sample Median(std::vector<Sample> samples) {
  std::sort(
      samples.begin(), samples.end(),
      [](const Sample& a, const Sample& b) { return a.seconds < b.seconds; });
  return samples[samples.size() / 2];
}

std::string Bytes(uint64_t n) {
  char text[64];
  if (n >= (uint64_t{1} << 20)) {
    std::snprintf(text, sizeof(text), "%.1f MiB", n / 1048576.0);
  } else if (n >= 1024) {
    std::snprintf(text, sizeof(text), "%.1f KiB", n / 1024.0);
  } else {
    std::snprintf(text, sizeof(text), "%llu B", (unsigned long long)n);
  }
  return text;
}

}  // namespace

int main(int argc, char** argv) {
  Args args;
  if (!ParseArgs(argc, argv, &args)) {
    std::fprintf(stderr,
                 "usage: remote_driver_bench --file=PATH --target=HOST:PORT "
                 "--url=URL --access-log=PATH [--repeat=N]\n");
    return 2;
  }
  if (!Exists(args.file)) MakeFile(args.file);
  {
    auto client = h5depot::Client::Connect(args.target);
    if (!client.ok()) Die(std::string(client.status().ToString()).c_str());
    auto pushed = (*client)->PushFile(kImageId, args.file);
    if (!pushed.ok()) Die(std::string(pushed.status().ToString()).c_str());
  }

  Driver remote{
      "remote", kImageId,
      [&] {
        hid_t fapl = H5Pcreate(H5P_FILE_ACCESS);
        if (H5Pset_fapl_remote(fapl, args.target.c_str(), nullptr) < 0) {
          Die("H5Pset_fapl_remote failed");
        }
        return fapl;
      },
      [](hid_t file) {
        LogTotals totals;
        if (file < 0) return totals;
        H5FD_remote_file_info_t info;
        if (H5FD_remote_get_file_info(file, &info) < 0) {
          Die("no file info");
        }
        totals.requests = info.round_trips;
        totals.bytes = info.bytes_fetched;
        return totals;
      }};
  Driver ros3{"ros3", args.url,
              [] {
                hid_t fapl = H5Pcreate(H5P_FILE_ACCESS);
                H5FD_ros3_fapl_t config;
                std::memset(&config, 0, sizeof(config));
                config.version = H5FD_CURR_ROS3_FAPL_T_VERSION;
                config.authenticate = 0;
                if (H5Pset_fapl_ros3(fapl, &config) < 0) Die("no ROS3");
                return fapl;
              },
              [&](hid_t) {
                // The server logs a request once it has sent all of it,
                // which may be a moment after the client got the bytes.
                std::this_thread::sleep_for(std::chrono::milliseconds(100));
                return ReadAccessLog(args.access_log);
              }};

  std::vector<unsigned char> buffer(kBigBytes);
  std::memset(buffer.data(), 0, buffer.size());  // fault the pages in once

  std::printf(
      "| driver | operation (run) | time | requests | bytes moved | "
      "throughput |\n");
  std::printf("|---|---|---|---|---|---|\n");
  struct Operation {
    const char* name;
    std::function<Sample(const Driver&)> run;
    bool throughput;
  };
  const Operation operations[] = {
      {"open 256 MiB file + read 100-element /small", OpenAndReadSmall, false},
      {"read 256 MiB /big in one H5Dread",
       [&](const Driver& d) { return ReadBig(d, kBigBytes, buffer.data()); },
       true},
      {"read 256 MiB /big as 1 MiB hyperslabs",
       [&](const Driver& d) { return ReadBig(d, kSlabBytes, buffer.data()); },
       true},
  };
  for (const Operation& operation : operations) {
    for (const Driver* driver : {&remote, &ros3}) {
      std::vector<Sample> samples;
      for (int i = 0; i < args.repeat; ++i) {
        samples.push_back(operation.run(*driver));
      }
      auto print = [&](const char* which, const Sample& m) {
        char throughput[32] = "";
        if (operation.throughput) {
          std::snprintf(throughput, sizeof(throughput), "%.2f GB/s",
                        kBigBytes / m.seconds / 1e9);
        }
        std::printf("| %s | %s (%s) | %.2f ms | %llu | %s | %s |\n",
                    driver->name, operation.name, which, m.seconds * 1e3,
                    (unsigned long long)m.requests, Bytes(m.bytes).c_str(),
                    throughput);
      };
      // The first run of the first operation is the process's first open:
      // the remote driver connects then, and keeps the connection.
      if (&operation == &operations[0]) print("first", samples.front());
      print("median", Median(samples));
      std::fflush(stdout);
    }
  }
  return 0;
}
