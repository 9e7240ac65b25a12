// What an application sees when h5depotd misbehaves, through every way in:
// the C API, the h5depot command-line tool (run as a process) and the
// remote driver, over TCP and a Unix socket, with and without the data
// lane. A real h5depotd is stopped (SIGSTOP) and continued, killed, and
// restarted at the same addresses, and each call is held to the contract
// of README.md, "When the server misbehaves":
//
//   - stopped: every call ends by its deadline (the call timeout, plus 1 s
//     per 32 MiB for a transfer) with DEADLINE_EXCEEDED, a wait within its
//     wait + 1 s, a connect within its connect timeout; continued, the
//     server serves the same handles;
//   - killed: every call fails with UNAVAILABLE at once;
//   - restarted at the same addresses: a call made 1 s or more after it
//     listens succeeds at the first try, on every existing handle and on
//     the remote driver's shared connection, however long it was away.
//
// Every bound gets kSlack on top, for loaded CI machines. The calls against
// a stopped server run side by side (each is only waiting), which keeps
// the suite to well under a minute.
#include <signal.h>
#include <unistd.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "H5FDremote.h"
#include "absl/status/status.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/synchronization/blocking_counter.h"
#include "absl/synchronization/notification.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "gtest/gtest.h"
#include "h5depot/client.h"
#include "h5depot/h5depot.h"
#include "h5depot/testing/hdf5_images.h"
#include "h5depot/testing/server_process.h"
#include "h5depot/testing/subprocess.h"
#include "h5depot/testing/temp_dir.h"
#include "hdf5.h"
#include "hdf5_hl.h"

namespace h5depot {
namespace {

using ::h5depot::testing::CommandResult;
using ::h5depot::testing::H5depotCliPath;
using ::h5depot::testing::MakeHdf5Image;
using ::h5depot::testing::RunCommand;
using ::h5depot::testing::ServerProcess;
using ::h5depot::testing::ServerProcessOptions;
using ::h5depot::testing::TempDir;

// The timeouts the handles under test are given.
constexpr absl::Duration kCallTimeout = absl::Seconds(1);
constexpr absl::Duration kConnectTimeout = absl::Seconds(1);
// h5depot_connect's connect timeout (h5depot.h).
constexpr absl::Duration kDefaultConnectTimeout = absl::Seconds(10);
// A wait's bound is the wait plus this much (the contract).
constexpr absl::Duration kWait = absl::Milliseconds(1500);
constexpr absl::Duration kWaitGrace = absl::Seconds(1);
// Time after a restarted server listens within which the first call may
// still fail (the contract); later calls may not.
constexpr absl::Duration kRecovery = absl::Seconds(1);
// A call timeout far longer than kSlack: a call that fails within kSlack
// with it failed at once, not at its deadline.
constexpr absl::Duration kLongTimeout = absl::Seconds(60);
// How long a killed server stays away: long enough for gRPC's reconnection
// backoff to grow past the recovery bound if nothing keeps it in check.
constexpr absl::Duration kOutage = absl::Seconds(8);
// On top of every bound: CI machines are loaded.
constexpr absl::Duration kSlack = absl::Seconds(3);
// A deadline may be met a little early by a different clock.
constexpr absl::Duration kEarly = absl::Milliseconds(100);

constexpr size_t kSmallImage = 16 << 10;
constexpr size_t kLargeImage = size_t{8} << 20;  // more than socket buffers
constexpr size_t kHugeImage = size_t{64} << 20;

// The transfer allowance of the contract: 1 s per 32 MiB moved.
absl::Duration Allowance(size_t bytes) {
  return absl::Seconds(1) * (static_cast<double>(bytes) / (32 << 20));
}

int64_t Millis(absl::Duration duration) {
  return absl::ToInt64Milliseconds(duration);
}

std::string CodeName(int code) {
  return absl::StatusCodeToString(static_cast<absl::StatusCode>(code));
}

std::string CodeName(absl::StatusCode code) {
  return absl::StatusCodeToString(code);
}

// One call and how it ended, against what the contract says.
struct Outcome {
  std::string what;
  std::string expected;  // a code, "exit N", or the driver's minor message
  std::string actual;
  absl::Duration lower;  // it may not end before this
  absl::Duration upper;  // nor, but for kSlack, after this
  absl::Duration took;
  std::string detail;  // the message, stderr or error stack
};

void ExpectKept(const Outcome& outcome) {
  SCOPED_TRACE(outcome.what);
  EXPECT_EQ(outcome.actual, outcome.expected) << outcome.detail;
  EXPECT_GE(outcome.took, outcome.lower - kEarly)
      << "ended before its deadline: " << outcome.detail;
  EXPECT_LE(outcome.took, outcome.upper + kSlack)
      << "did not end by " << absl::FormatDuration(outcome.upper)
      << " (+ slack): " << outcome.detail;
}

// Bounds: ending at a deadline `at`, or at once.
struct Bound {
  absl::Duration lower;
  absl::Duration upper;
};
Bound AtDeadline(absl::Duration at) { return {at, at}; }
Bound Within(absl::Duration lower, absl::Duration upper) {
  return {lower, upper};
}
Bound AtOnce() { return {absl::ZeroDuration(), absl::ZeroDuration()}; }

// Times a C API call that returns an h5depot_code.
Outcome TimeC(std::string what, absl::StatusCode expected, Bound bound,
              const std::function<int()>& call) {
  Outcome outcome;
  outcome.what = std::move(what);
  outcome.expected = CodeName(expected);
  outcome.lower = bound.lower;
  outcome.upper = bound.upper;
  const absl::Time start = absl::Now();
  const int code = call();
  outcome.took = absl::Now() - start;
  outcome.actual = CodeName(code);
  outcome.detail = h5depot_errmsg();
  return outcome;
}

// --- The C API ---------------------------------------------------------------

struct Endpoint {
  std::string name;  // "tcp lane", "unix grpc", ...
  std::string target;
  bool lane = true;
};

// An HDF5 file open in memory, for h5depot_push_file.
hid_t OpenCoreFile(int seed) {
  hid_t fapl = H5Pcreate(H5P_FILE_ACCESS);
  H5Pset_fapl_core(fapl, 1 << 16, 0);
  const std::string name = absl::StrCat("core-", seed, ".h5");
  hid_t file = H5Fcreate(name.c_str(), H5F_ACC_TRUNC, H5P_DEFAULT, fapl);
  H5Pclose(fapl);
  const hsize_t count = 1000;
  std::vector<int> values(count, seed);
  H5LTmake_dataset_int(file, "values", 1, &count, values.data());
  return file;
}

// One h5depot_client and what its calls need.
struct CHandle {
  Endpoint endpoint;
  h5depot_client* client = nullptr;
  hid_t core_file = H5I_INVALID_HID;
  std::string prefix;  // of the image ids this handle uses

  std::string Id(const std::string& name) const { return prefix + name; }
  std::string What(const std::string& call) const {
    return absl::StrCat(endpoint.name, ": ", call);
  }
};

h5depot_client* ConnectC(const Endpoint& endpoint, absl::Duration call_timeout,
                         absl::Duration connect_timeout) {
  h5depot_connect_options options;
  std::memset(&options, 0, sizeof options);
  options.connect_timeout_ms = Millis(connect_timeout);
  options.call_timeout_ms = Millis(call_timeout);
  options.disable_data_lane = endpoint.lane ? 0 : 1;
  return h5depot_connect_ex(endpoint.target.c_str(), &options);
}

// The calls of the C API that do not touch HDF5 itself, each expected to
// end with `code` within `bound` (`wait_bound` for h5depot_wait of kWait);
// pushes of `size` bytes are given their transfer allowance on top.
std::vector<Outcome> CCallsWithoutHdf5(const CHandle& handle,
                                       const std::string& small,
                                       const std::string& large,
                                       absl::StatusCode code, Bound bound,
                                       Bound wait_bound) {
  std::vector<Outcome> outcomes;
  auto transfer = [&bound](size_t bytes) {
    return Bound{bound.lower, bound.upper + Allowance(bytes)};
  };
  h5depot_client* client = handle.client;
  outcomes.push_back(TimeC(
      handle.What("h5depot_push_buffer"), code, transfer(small.size()), [&] {
        return h5depot_push_buffer(client, handle.Id("pushed").c_str(),
                                   small.data(), small.size(), nullptr);
      }));
  outcomes.push_back(TimeC(handle.What("h5depot_push_buffer_ex, large"), code,
                           transfer(large.size()), [&] {
                             h5depot_push_options options;
                             std::memset(&options, 0, sizeof options);
                             options.ttl_ms = 60000;
                             return h5depot_push_buffer_ex(
                                 client, handle.Id("large").c_str(),
                                 large.data(), large.size(), &options, nullptr);
                           }));
  outcomes.push_back(
      TimeC(handle.What("h5depot_fetch"), code, transfer(small.size()), [&] {
        void* buf = nullptr;
        size_t len = 0;
        const int fetched = h5depot_fetch(client, handle.Id("present").c_str(),
                                          &buf, &len, nullptr);
        free(buf);
        return fetched;
      }));
  outcomes.push_back(TimeC(handle.What("h5depot_wait"), code, wait_bound, [&] {
    return h5depot_wait(client, handle.Id("never").c_str(), Millis(kWait));
  }));
  outcomes.push_back(TimeC(handle.What("h5depot_stat"), code, bound, [&] {
    h5depot_image_info info;
    return h5depot_stat(client, handle.Id("present").c_str(), &info);
  }));
  outcomes.push_back(TimeC(handle.What("h5depot_delete"), code, bound, [&] {
    return h5depot_delete(client, handle.Id("present").c_str());
  }));
  return outcomes;
}

// h5depot_push_file and h5depot_open, which call HDF5 besides the server:
// run apart from the remote driver, whose calls hold HDF5's lock while
// they wait for the server.
std::vector<Outcome> CCallsWithHdf5(const CHandle& handle, size_t image_size,
                                    absl::StatusCode code, Bound bound) {
  const Bound transfer{bound.lower, bound.upper + Allowance(image_size)};
  std::vector<Outcome> outcomes;
  outcomes.push_back(
      TimeC(handle.What("h5depot_push_file"), code, transfer, [&] {
        return h5depot_push_file(handle.client, handle.Id("file").c_str(),
                                 handle.core_file, nullptr);
      }));
  outcomes.push_back(TimeC(handle.What("h5depot_open"), code, transfer, [&] {
    const hid_t file =
        h5depot_open(handle.client, handle.Id("present").c_str(), 0);
    if (file < 0) return h5depot_errcode();
    H5Fclose(file);
    return static_cast<int>(H5DEPOT_OK);
  }));
  return outcomes;
}

Outcome TimeConnectEx(const Endpoint& endpoint, absl::StatusCode code,
                      Bound bound) {
  return TimeC(absl::StrCat(endpoint.name, ": h5depot_connect_ex"), code, bound,
               [&] {
                 h5depot_client* client =
                     ConnectC(endpoint, kCallTimeout, kConnectTimeout);
                 if (client == nullptr) return h5depot_errcode();
                 h5depot_disconnect(client);
                 return static_cast<int>(H5DEPOT_OK);
               });
}

Outcome TimeConnect(const std::string& name, const std::string& target,
                    absl::StatusCode code, Bound bound) {
  return TimeC(absl::StrCat(name, ": h5depot_connect"), code, bound, [&] {
    h5depot_client* client = h5depot_connect(target.c_str());
    if (client == nullptr) return h5depot_errcode();
    h5depot_disconnect(client);
    return static_cast<int>(H5DEPOT_OK);
  });
}

// --- The command-line tool -----------------------------------------------

// Each command that talks to the server, run as a process against
// `target` with --timeout and --connect-timeout: `exit_code` expected
// within `bound` (`wait_bound` for the commands with --wait of kWait).
std::vector<Outcome> CliCalls(const std::string& name,
                              const std::string& target,
                              const std::string& image_file,
                              absl::Duration timeout,
                              absl::Duration connect_timeout, int exit_code,
                              Bound bound, Bound wait_bound) {
  const std::vector<std::string> common = {
      H5depotCliPath(), "--server", target,
      absl::StrCat("--timeout=", Millis(timeout), "ms"),
      absl::StrCat("--connect-timeout=", Millis(connect_timeout), "ms")};
  const std::string wait = absl::StrCat(Millis(kWait), "ms");
  const std::vector<std::pair<std::vector<std::string>, bool>> commands = {
      {{"put", image_file, "--id", "cli/pushed"}, false},
      {{"get", "cli/present", "-o", "/dev/null"}, false},
      {{"get", "cli/never", "--wait", wait, "-o", "/dev/null"}, true},
      {{"ls", "cli/"}, false},
      {{"stat", "cli/present"}, false},
      {{"stat", "cli/never", "--wait", wait}, true},
      {{"rm", "cli/present"}, false},
  };
  // A process's start is not part of its calls' deadlines: the bounds get
  // what starting one takes here and now (seconds, on a loaded machine).
  const absl::Time before = absl::Now();
  RunCommand({H5depotCliPath(), "--version"});
  const absl::Duration startup = absl::Now() - before;
  std::vector<Outcome> outcomes;
  for (const auto& [args, waits] : commands) {
    std::vector<std::string> argv = common;
    argv.insert(argv.end(), args.begin(), args.end());
    Outcome outcome;
    outcome.what = absl::StrCat(name, ": h5depot ", absl::StrJoin(args, " "));
    outcome.expected = absl::StrCat("exit ", exit_code);
    outcome.lower = (waits ? wait_bound : bound).lower;
    outcome.upper = (waits ? wait_bound : bound).upper + startup;
    const absl::Time start = absl::Now();
    CommandResult result = RunCommand(argv);
    outcome.took = absl::Now() - start;
    outcome.actual = absl::StrCat("exit ", result.exit_code);
    outcome.detail = result.stderr_text;
    outcomes.push_back(std::move(outcome));
  }
  return outcomes;
}

// --- The remote driver -------------------------------------------------------

constexpr hsize_t kInts = 128 * 1024;  // 512 KiB, far more than the cache

std::string ErrorStack() {
  std::string text;
  hid_t stack = H5Eget_current_stack();
  H5Ewalk2(
      stack, H5E_WALK_DOWNWARD,
      [](unsigned, const H5E_error2_t* error, void* data) -> herr_t {
        char minor[128] = "";
        H5Eget_msg(error->min_num, nullptr, minor, sizeof(minor));
        absl::StrAppend(static_cast<std::string*>(data), minor, ": ",
                        error->desc, "\n");
        return 0;
      },
      &text);
  H5Eclose_stack(stack);
  return text;
}

// The kind of failure the driver reported ("Timed out", "Server
// unavailable", ...), or "OK".
std::string DriverOutcome(bool failed, const std::string& stack) {
  if (!failed) return "OK";
  for (const char* minor :
       {"Timed out", "Server unavailable", "Image not found",
        "Image already exists", "Commit conflict", "Invalid argument",
        "Operation refused", "Internal error"}) {
    if (absl::StrContains(stack, minor)) return minor;
  }
  return "failed without an h5depot error";
}

// Times a call through HDF5; `call` returns whether it succeeded, and may
// fill in the error stack itself (HDF5 clears it on the next API call).
Outcome TimeDriver(std::string what, const std::string& expected, Bound bound,
                   const std::function<bool(std::string* errors)>& call) {
  Outcome outcome;
  outcome.what = std::move(what);
  outcome.expected = expected;
  outcome.lower = bound.lower;
  outcome.upper = bound.upper;
  H5Eclear2(H5E_DEFAULT);
  const absl::Time start = absl::Now();
  std::string errors;
  const bool ok = call(&errors);
  outcome.took = absl::Now() - start;
  outcome.detail = errors.empty() ? ErrorStack() : errors;
  outcome.actual = DriverOutcome(!ok, outcome.detail);
  H5Eclear2(H5E_DEFAULT);
  return outcome;
}

hid_t DriverFapl(const std::string& target, absl::Duration call_timeout,
                 bool small_cache = true) {
  H5FD_remote_config_t config = H5FD_REMOTE_CONFIG_INIT;
  if (small_cache) {
    config.page_size = 4096;  // the cache holds one small page, no more
    config.cache_size = 4096;
    config.readahead = 0;
  }
  config.connect_timeout_ms = static_cast<uint32_t>(Millis(kConnectTimeout));
  config.call_timeout_ms = static_cast<uint32_t>(Millis(call_timeout));
  hid_t fapl = H5Pcreate(H5P_FILE_ACCESS);
  EXPECT_GE(H5Pset_fapl_remote(fapl, target.c_str(), &config), 0);
  return fapl;
}

std::vector<int> Ints(int seed) {
  std::vector<int> values(kInts);
  for (hsize_t i = 0; i < kInts; ++i) values[i] = static_cast<int>(i) + seed;
  return values;
}

// Creates `id` through the driver holding dataset "ints" = Ints(seed).
// A failure's error stack goes to `errors`.
bool CreateThroughDriver(hid_t fapl, const std::string& id, int seed,
                         std::string* errors) {
  hid_t file = H5Fcreate(id.c_str(), H5F_ACC_EXCL, H5P_DEFAULT, fapl);
  if (file < 0) {
    *errors = ErrorStack();
    return false;
  }
  const std::vector<int> values = Ints(seed);
  const bool ok =
      H5LTmake_dataset_int(file, "ints", 1, &kInts, values.data()) >= 0 &&
      H5Fflush(file, H5F_SCOPE_GLOBAL) >= 0;
  if (!ok) *errors = ErrorStack();
  H5Fclose(file);
  return ok;
}

// Reads `count` ints from element `start` of dataset "ints" of `file` and
// checks them against Ints(seed). A failure's error stack goes to `errors`
// if given, before the clean-up's calls clear it.
bool ReadInts(hid_t file, hsize_t start, hsize_t count, int seed,
              std::string* errors = nullptr) {
  hid_t dset = H5Dopen2(file, "ints", H5P_DEFAULT);
  if (dset < 0) {
    if (errors != nullptr) *errors = ErrorStack();
    return false;
  }
  hid_t file_space = H5Dget_space(dset);
  hid_t memory_space = H5Screate_simple(1, &count, nullptr);
  std::vector<int> got(count, -1);
  herr_t status = H5Sselect_hyperslab(file_space, H5S_SELECT_SET, &start,
                                      nullptr, &count, nullptr);
  if (status >= 0) {
    status = H5Dread(dset, H5T_NATIVE_INT, memory_space, file_space,
                     H5P_DEFAULT, got.data());
  }
  if (status < 0 && errors != nullptr) *errors = ErrorStack();
  H5Sclose(memory_space);
  H5Sclose(file_space);
  H5Dclose(dset);
  if (status < 0) return false;
  for (hsize_t i = 0; i < count; ++i) {
    if (got[i] != static_cast<int>(start + i) + seed) return false;
  }
  return true;
}

// A remote driver connection (its fapl) and files opened through it.
struct DriverHandle {
  std::string name;
  std::string target;
  hid_t fapl = H5I_INVALID_HID;
  hid_t reading = H5I_INVALID_HID;  // read-only, its first ints cached
  hid_t writing = H5I_INVALID_HID;  // read-write, with a write to commit
  std::string prefix;

  std::string Id(const std::string& name_in) const { return prefix + name_in; }
  std::string What(const std::string& call) const {
    return absl::StrCat(name, ": remote driver ", call);
  }

  // Images and open files, while the server answers.
  void Prepare(absl::Duration call_timeout) {
    fapl = DriverFapl(target, call_timeout);
    std::string errors;
    ASSERT_TRUE(CreateThroughDriver(fapl, Id("base"), 1, &errors)) << errors;
    ASSERT_TRUE(CreateThroughDriver(fapl, Id("rw"), 2, &errors)) << errors;
    reading = H5Fopen(Id("base").c_str(), H5F_ACC_RDONLY, fapl);
    ASSERT_GE(reading, 0) << ErrorStack();
    ASSERT_TRUE(ReadInts(reading, 0, 256, 1, &errors)) << errors;
    // With the default cache, which keeps the pages HDF5 read on opening:
    // its metadata is then written back without asking the server for
    // them, and a flush fails only in its commit (see
    // DISABLED_AFlushThatFailsInsideHdf5sCacheFlushLeavesAFileThatCloses).
    hid_t cached = DriverFapl(target, call_timeout, /*small_cache=*/false);
    writing = H5Fopen(Id("rw").c_str(), H5F_ACC_RDWR, cached);
    H5Pclose(cached);
    ASSERT_GE(writing, 0) << ErrorStack();
    const std::vector<int> more = Ints(3);
    ASSERT_GE(H5LTmake_dataset_int(writing, "more", 1, &kInts, more.data()), 0);
  }

  // H5Fopen, a read the cache cannot serve, a commit (H5Fflush) and
  // H5Fcreate, each expected to fail with the driver's `minor` message
  // within `bound` (a commit with its transfer allowance on top).
  std::vector<Outcome> FailingCalls(const std::string& minor, Bound bound) {
    std::vector<Outcome> outcomes;
    outcomes.push_back(
        TimeDriver(What("H5Fopen"), minor, bound, [&](std::string*) {
          hid_t file = H5Fopen(Id("base").c_str(), H5F_ACC_RDONLY, fapl);
          if (file < 0) return false;
          H5Fclose(file);
          return true;
        }));
    outcomes.push_back(TimeDriver(What("read of an uncached dataset"), minor,
                                  bound, [&](std::string* errors) {
                                    return ReadInts(reading, kInts / 2, 512, 1,
                                                    errors);
                                  }));
    // The image is about 1 MiB.
    const Bound commit{bound.lower, bound.upper + Allowance(size_t{1} << 20)};
    outcomes.push_back(
        TimeDriver(What("H5Fflush commit"), minor, commit, [&](std::string*) {
          return H5Fflush(writing, H5F_SCOPE_GLOBAL) >= 0;
        }));
    outcomes.push_back(
        TimeDriver(What("H5Fcreate"), minor, bound, [&](std::string*) {
          hid_t file =
              H5Fcreate(Id("created").c_str(), H5F_ACC_EXCL, H5P_DEFAULT, fapl);
          if (file < 0) return false;
          H5Fclose(file);
          return true;
        }));
    return outcomes;
  }

  void Close() {
    // Closing commits what the failed flush did not, or reports that it
    // cannot; it never fails (H5FDremote.h).
    for (hid_t file : {writing, reading}) {
      if (file >= 0) {
        EXPECT_GE(H5Fclose(file), 0) << name << ": " << ErrorStack();
      }
    }
    if (fapl >= 0) H5Pclose(fapl);
    writing = reading = fapl = H5I_INVALID_HID;
  }
};

// --- The fixture -------------------------------------------------------------

class ClientFaultsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    H5Eset_auto2(H5E_DEFAULT, nullptr, nullptr);
    ServerProcessOptions options;
    options.unix_socket = true;
    auto server = ServerProcess::Start(options);
    ASSERT_TRUE(server.ok()) << server.status();
    server_ = *std::move(server);
    auto dir = TempDir::Create();
    ASSERT_TRUE(dir.ok()) << dir.status();
    dir_.emplace(*std::move(dir));
    small_ = MakeHdf5Image(kSmallImage, 1);
    large_ = MakeHdf5Image(kLargeImage, 2);
    image_file_ = dir_->File("image.h5");
    ASSERT_TRUE(testing::WriteFile(image_file_, small_).ok());
  }

  void TearDown() override {
    for (CHandle& handle : c_handles_) {
      if (handle.core_file >= 0) H5Fclose(handle.core_file);
      h5depot_disconnect(handle.client);
    }
    for (DriverHandle& driver : drivers_) driver.Close();
    // A server left stopped by a failed assertion is continued and ended
    // by its destructor.
  }

  std::vector<Endpoint> CEndpoints() const {
    return {{"tcp lane", server_->tcp_target(), true},
            {"tcp grpc", server_->tcp_target(), false},
            {"unix lane", server_->unix_target(), true},
            {"unix grpc", server_->unix_target(), false}};
  }

  std::vector<std::pair<std::string, std::string>> Targets() const {
    return {{"tcp", server_->tcp_target()}, {"unix", server_->unix_target()}};
  }

  // One C API handle per endpoint with `call_timeout`, and an image
  // "present" for each to ask for.
  void ConnectCHandles(absl::Duration call_timeout) {
    int seed = 10;
    for (const Endpoint& endpoint : CEndpoints()) {
      CHandle handle;
      handle.endpoint = endpoint;
      handle.prefix = absl::StrCat("c/", seed, "/");
      handle.client = ConnectC(endpoint, call_timeout, kConnectTimeout);
      ASSERT_NE(handle.client, nullptr) << h5depot_errmsg();
      handle.core_file = OpenCoreFile(seed++);
      ASSERT_GE(handle.core_file, 0);
      ASSERT_EQ(h5depot_push_buffer(handle.client, handle.Id("present").c_str(),
                                    small_.data(), small_.size(), nullptr),
                H5DEPOT_OK)
          << h5depot_errmsg();
      c_handles_.push_back(handle);
    }
  }

  void PrepareDrivers(absl::Duration call_timeout) {
    for (const auto& [name, target] : Targets()) {
      DriverHandle driver;
      driver.name = name;
      driver.target = target;
      driver.prefix = absl::StrCat("rd/", name, "/");
      drivers_.push_back(driver);
      ASSERT_NO_FATAL_FAILURE(drivers_.back().Prepare(call_timeout));
    }
  }

  // An image for the CLI's get, stat and rm to ask for.
  void PushCliImage() {
    auto client = Client::Connect(server_->target());
    ASSERT_TRUE(client.ok()) << client.status();
    ASSERT_TRUE(
        (*client)->Push("cli/present", small_.data(), small_.size()).ok());
  }

  // Every C API handle's calls, every call of the CLI and of the remote
  // driver, and the connects, against the server as it is now, expecting
  // `c_code` (the C API and the driver's `minor`, the CLI's `exit_code`)
  // within the bounds given.
  struct Expectations {
    absl::StatusCode c_code;
    Bound call;
    Bound wait;
    absl::StatusCode connect_code;
    Bound connect;          // h5depot_connect_ex with kConnectTimeout
    Bound default_connect;  // h5depot_connect
    int cli_exit;
    Bound cli;  // each CLI command (which connects first)
    Bound cli_wait;
    std::string driver_minor;
    absl::Duration cli_timeout;
  };

  // Runs them, and `extra`, side by side and returns every outcome. Calls
  // that outlive
  // every bound (a client that ignores its deadlines) are reported, and
  // released by `release` (continuing a stopped server), so that the test
  // fails rather than hangs.
  std::vector<Outcome> RunEveryCall(
      const Expectations& expected, const std::function<void()>& release,
      std::vector<std::function<std::vector<Outcome>()>> extra = {}) {
    std::deque<std::vector<Outcome>> results;
    std::deque<absl::Notification> done;
    std::vector<std::thread> threads;
    auto run = [&](std::function<std::vector<Outcome>()> calls) {
      results.emplace_back();
      done.emplace_back();
      std::vector<Outcome>* result = &results.back();
      absl::Notification* finished = &done.back();
      threads.emplace_back([result, finished, calls = std::move(calls)] {
        H5Eset_auto2(H5E_DEFAULT, nullptr, nullptr);
        *result = calls();
        finished->Notify();
      });
    };
    // The C API's calls that use HDF5 come first, then the remote driver's
    // (which hold HDF5's lock while they wait), so that neither's time
    // includes waiting for the other.
    absl::BlockingCounter hdf5_free(static_cast<int>(c_handles_.size()));
    for (const CHandle& handle : c_handles_) {
      run([this, &handle, &expected, &hdf5_free] {
        std::vector<Outcome> outcomes = CCallsWithHdf5(
            handle, small_.size(), expected.c_code, expected.call);
        hdf5_free.DecrementCount();
        for (Outcome& outcome :
             CCallsWithoutHdf5(handle, small_, large_, expected.c_code,
                               expected.call, expected.wait)) {
          outcomes.push_back(std::move(outcome));
        }
        outcomes.push_back(TimeConnectEx(handle.endpoint, expected.connect_code,
                                         expected.connect));
        return outcomes;
      });
    }
    run([this, &expected, &hdf5_free] {
      hdf5_free.Wait();
      std::vector<Outcome> outcomes;
      for (DriverHandle& driver : drivers_) {
        for (Outcome& outcome :
             driver.FailingCalls(expected.driver_minor, expected.call)) {
          outcomes.push_back(std::move(outcome));
        }
      }
      return outcomes;
    });
    for (const auto& [name, target] : Targets()) {
      run([this, &expected, name = name, target = target] {
        return CliCalls(name, target, image_file_, expected.cli_timeout,
                        kConnectTimeout, expected.cli_exit, expected.cli,
                        expected.cli_wait);
      });
      // And h5depot_connect, with its default timeouts.
      run([&expected, name = name, target = target] {
        return std::vector<Outcome>{TimeConnect(
            name, target, expected.connect_code, expected.default_connect)};
      });
    }
    for (std::function<std::vector<Outcome>()>& calls : extra) {
      run(std::move(calls));
    }

    const absl::Time give_up =
        absl::Now() + kDefaultConnectTimeout + 2 * kSlack + absl::Seconds(10);
    bool all_done = true;
    for (absl::Notification& finished : done) {
      all_done = finished.WaitForNotificationWithDeadline(give_up) && all_done;
    }
    EXPECT_TRUE(all_done) << "calls still under way long after every bound";
    if (!all_done) release();
    for (std::thread& thread : threads) thread.join();
    std::vector<Outcome> outcomes;
    for (std::vector<Outcome>& result : results) {
      for (Outcome& outcome : result) outcomes.push_back(std::move(outcome));
    }
    return outcomes;
  }

  // The first call on every C API handle and on every remote driver
  // connection, then the rest of their calls, and each CLI command: all
  // expected to succeed.
  void ExpectEveryHandleServes(const std::string& when) {
    SCOPED_TRACE(when);
    for (const CHandle& handle : c_handles_) {
      SCOPED_TRACE(handle.endpoint.name);
      h5depot_client* client = handle.client;
      const std::string id = handle.Id(absl::StrCat("served/", when));
      ASSERT_EQ(h5depot_push_buffer(client, id.c_str(), small_.data(),
                                    small_.size(), nullptr),
                H5DEPOT_OK)
          << "the first call: " << h5depot_errmsg();
      void* buf = nullptr;
      size_t len = 0;
      EXPECT_EQ(h5depot_fetch(client, id.c_str(), &buf, &len, nullptr),
                H5DEPOT_OK)
          << h5depot_errmsg();
      EXPECT_EQ(len, small_.size());
      free(buf);
      h5depot_image_info info;
      EXPECT_EQ(h5depot_stat(client, id.c_str(), &info), H5DEPOT_OK)
          << h5depot_errmsg();
      EXPECT_EQ(h5depot_wait(client, id.c_str(), 0), H5DEPOT_OK)
          << h5depot_errmsg();
      const hid_t opened = h5depot_open(client, id.c_str(), 0);
      EXPECT_GE(opened, 0) << h5depot_errmsg();
      if (opened >= 0) H5Fclose(opened);
      EXPECT_EQ(
          h5depot_push_file(client, id.c_str(), handle.core_file, nullptr),
          H5DEPOT_OK)
          << h5depot_errmsg();
      EXPECT_EQ(h5depot_delete(client, id.c_str()), H5DEPOT_OK)
          << h5depot_errmsg();
    }
    for (DriverHandle& driver : drivers_) {
      SCOPED_TRACE(driver.name);
      // H5Fcreate's first request is the driver's first call.
      const std::string id = driver.Id(absl::StrCat("served/", when));
      std::string errors;
      ASSERT_TRUE(CreateThroughDriver(driver.fapl, id, 5, &errors))
          << "the first call: " << errors;
      hid_t file = H5Fopen(id.c_str(), H5F_ACC_RDONLY, driver.fapl);
      ASSERT_GE(file, 0) << ErrorStack();
      EXPECT_TRUE(ReadInts(file, kInts / 2, 512, 5, &errors)) << errors;
      H5Fclose(file);
    }
    for (const auto& [name, target] : Targets()) {
      CommandResult ls = RunCommand(
          {H5depotCliPath(), "--server", target, "--timeout=5s", "ls"});
      EXPECT_EQ(ls.exit_code, 0) << name << ": " << ls.stderr_text;
    }
  }

  std::unique_ptr<ServerProcess> server_;
  std::optional<TempDir> dir_;
  std::string small_;
  std::string large_;
  std::string image_file_;
  std::vector<CHandle> c_handles_;
  std::vector<DriverHandle> drivers_;
};

TEST_F(ClientFaultsTest, AStoppedServerEndsEveryCallByItsDeadline) {
  ASSERT_NO_FATAL_FAILURE(ConnectCHandles(kCallTimeout));
  ASSERT_NO_FATAL_FAILURE(PrepareDrivers(kCallTimeout));
  ASSERT_NO_FATAL_FAILURE(PushCliImage());
  // A handle with the default call timeout (30 s): its waits are bounded
  // by the wait, not by the call timeout.
  h5depot_client* patient = h5depot_connect(server_->tcp_target().c_str());
  ASSERT_NE(patient, nullptr) << h5depot_errmsg();

  ASSERT_EQ(server_->Suspend(), absl::OkStatus());
  Expectations expected;
  expected.c_code = absl::StatusCode::kDeadlineExceeded;
  expected.call = AtDeadline(kCallTimeout);
  expected.wait = Within(kWait, kWait + kWaitGrace);
  // Nothing answers the greeting of a connect: no server, as far as the
  // client can tell.
  expected.connect_code = absl::StatusCode::kUnavailable;
  expected.connect = AtDeadline(kConnectTimeout);
  expected.default_connect = AtDeadline(kDefaultConnectTimeout);
  // The tool connects first, so a stopped server stops it there.
  expected.cli_exit = 5;
  expected.cli = AtDeadline(kConnectTimeout);
  expected.cli_wait = AtDeadline(kConnectTimeout);
  expected.cli_timeout = kCallTimeout;
  expected.driver_minor = "Timed out";
  std::vector<Outcome> outcomes = RunEveryCall(
      expected, [this] { (void)server_->Resume(); }, {[patient] {
        return std::vector<Outcome>{TimeC(
            "tcp lane, default timeouts: h5depot_wait",
            absl::StatusCode::kDeadlineExceeded,
            Within(kWait, kWait + kWaitGrace),
            [&] { return h5depot_wait(patient, "c/never", Millis(kWait)); })};
      }});
  for (const Outcome& outcome : outcomes) ExpectKept(outcome);

  // Continued, it serves the very same handles.
  if (server_->suspended()) {
    ASSERT_EQ(server_->Resume(), absl::OkStatus());
  }
  ExpectEveryHandleServes("continued");
  h5depot_image_info info;
  EXPECT_EQ(h5depot_stat(patient, "c/10/present", &info), H5DEPOT_OK)
      << h5depot_errmsg();
  h5depot_disconnect(patient);
}

TEST_F(ClientFaultsTest,
       AKilledServerFailsEveryCallAtOnceAndARestartedOneServesTheSameHandles) {
  // A call timeout far beyond kSlack: failing within kSlack is failing at
  // once, not at the deadline.
  ASSERT_NO_FATAL_FAILURE(ConnectCHandles(kLongTimeout));
  ASSERT_NO_FATAL_FAILURE(PrepareDrivers(kLongTimeout));
  ASSERT_NO_FATAL_FAILURE(PushCliImage());

  server_->Kill();
  const absl::Time killed = absl::Now();
  Expectations expected;
  expected.c_code = absl::StatusCode::kUnavailable;
  expected.call = AtOnce();
  expected.wait = AtOnce();
  expected.connect_code = absl::StatusCode::kUnavailable;
  expected.connect = AtOnce();
  expected.default_connect = AtOnce();
  expected.cli_exit = 5;
  expected.cli = AtOnce();
  expected.cli_wait = AtOnce();
  expected.cli_timeout = kLongTimeout;
  expected.driver_minor = "Server unavailable";
  for (const Outcome& outcome : RunEveryCall(expected, [] {})) {
    ExpectKept(outcome);
  }

  // The server stays away a while, and the handles keep trying meanwhile,
  // as applications do: each failed attempt to reconnect lengthens gRPC's
  // wait before the next one, unless the client keeps that in check.
  while (absl::Now() < killed + kOutage) {
    for (const CHandle& handle : c_handles_) {
      h5depot_image_info info;
      EXPECT_EQ(
          h5depot_stat(handle.client, handle.Id("present").c_str(), &info),
          H5DEPOT_UNAVAILABLE)
          << handle.endpoint.name;
    }
    for (DriverHandle& driver : drivers_) {
      EXPECT_LT(H5Fopen(driver.Id("base").c_str(), H5F_ACC_RDONLY, driver.fapl),
                0);
      H5Eclear2(H5E_DEFAULT);
    }
    absl::SleepFor(absl::Milliseconds(500));  // waiting out the outage
  }

  ASSERT_EQ(server_->Restart(), absl::OkStatus());
  // The contract allows a call in the first second after the server
  // listens again to fail; not one after that.
  absl::SleepFor(kRecovery);
  ExpectEveryHandleServes("restarted");
}

// Connections to `port` on this machine's IPv4 addresses that are
// established, as the kernel lists them (server and client ends alike).
int EstablishedConnectionsTo(int port) {
  auto table = testing::ReadFile("/proc/net/tcp");
  if (!table.ok()) return -1;
  int count = 0;
  for (absl::string_view line : absl::StrSplit(*table, '\n')) {
    std::vector<absl::string_view> fields =
        absl::StrSplit(line, ' ', absl::SkipEmpty());
    // sl local_address rem_address st ...; addresses are HEXIP:HEXPORT.
    if (fields.size() < 4 || fields[3] != "01") continue;
    const size_t colon = fields[1].find(':');
    uint32_t local_port = 0;
    if (colon != absl::string_view::npos &&
        absl::SimpleHexAtoi(fields[1].substr(colon + 1), &local_port) &&
        static_cast<int>(local_port) == port) {
      ++count;
    }
  }
  return count;
}

// The command-line tool's own deadline: a server that stops answering
// once the tool is connected and under way (its data lane connection,
// opened after connecting, is there) makes it exit with status 6, that of
// DEADLINE_EXCEEDED, within its wait + 1 s.
TEST_F(ClientFaultsTest, ACliCommandTheServerStopsAnsweringExitsWithStatus6) {
  const int lane_port = server_->data_lane_port();
  ASSERT_NE(lane_port, 0);
  ASSERT_EQ(EstablishedConnectionsTo(lane_port), 0);
  const absl::Duration wait = absl::Seconds(3);
  CommandResult result;
  absl::Time ended;
  absl::Notification done;
  std::thread cli([&] {
    result = RunCommand({H5depotCliPath(), "--server", server_->tcp_target(),
                         "--timeout=1s", "get", "cli/never", "--wait",
                         absl::StrCat(Millis(wait), "ms"), "-o", "/dev/null"});
    ended = absl::Now();
    done.Notify();
  });
  while (EstablishedConnectionsTo(lane_port) == 0 && !done.HasBeenNotified()) {
    absl::SleepFor(absl::Milliseconds(1));  // polling the kernel's table
  }
  // The fetch, and so its deadline, began before this.
  const absl::Time under_way = absl::Now();
  const absl::Status suspended = server_->Suspend();
  cli.join();
  ASSERT_EQ(suspended, absl::OkStatus());
  EXPECT_EQ(result.exit_code, 6) << result.stderr_text;
  EXPECT_LE(ended - under_way, wait + kWaitGrace + kSlack)
      << result.stderr_text;
  ASSERT_EQ(server_->Resume(), absl::OkStatus());
}

// A transfer the server stops answering halfway ends by its deadline: the
// call timeout plus the transfer allowance of 1 s per 32 MiB, from the
// call's start. The transfers of `clients` run side by side and each waits
// in its first progress report until all are under way and the server is
// stopped; then they go on against the stopped server. Continues it after.
class StalledTransferTest : public ClientFaultsTest {
 protected:
  void SetUp() override {
    ASSERT_NO_FATAL_FAILURE(ClientFaultsTest::SetUp());
    huge_ = MakeHdf5Image(kHugeImage, 3);
    for (bool lane : {true, false}) {
      ClientOptions options;
      options.use_data_lane = lane;
      options.call_timeout = kCallTimeout;
      auto client = Client::Connect(server_->tcp_target(), options);
      ASSERT_TRUE(client.ok()) << client.status();
      (lane ? lane_ : grpc_) = *std::move(client);
    }
    // With the default call timeout: on a loaded machine 64 MiB may take
    // longer than the 3 s the stalled calls' deadline allows.
    auto setup = Client::Connect(server_->tcp_target());
    ASSERT_TRUE(setup.ok()) << setup.status();
    ASSERT_TRUE((*setup)->Push("huge", huge_.data(), huge_.size()).ok());
  }

  std::vector<Outcome> Stall(const std::vector<Client*>& clients,
                             bool fetching) {
    const Bound bound = AtDeadline(kCallTimeout + Allowance(huge_.size()));
    absl::BlockingCounter under_way(static_cast<int>(clients.size()));
    absl::Notification stopped;
    std::vector<Outcome> outcomes(clients.size());
    std::vector<std::thread> threads;
    for (size_t i = 0; i < clients.size(); ++i) {
      threads.emplace_back([&, i] {
        bool reported = false;
        absl::Time released = absl::InfinitePast();
        auto progress = [&](uint64_t, uint64_t) {
          if (reported) return;
          reported = true;
          under_way.DecrementCount();
          stopped.WaitForNotificationWithTimeout(absl::Seconds(60));
          released = absl::Now();
        };
        Outcome& outcome = outcomes[i];
        outcome.what = absl::StrCat(clients[i] == lane_.get() ? "lane" : "grpc",
                                    fetching ? " fetch" : " push");
        outcome.expected = CodeName(absl::StatusCode::kDeadlineExceeded);
        // At least the call timeout; how much of the allowance the
        // client grants before its last byte moved is its own business.
        outcome.lower = kCallTimeout;
        outcome.upper = bound.upper;
        const absl::Time start = absl::Now();
        absl::Status status;
        if (fetching) {
          FetchOptions options;
          options.progress = progress;
          status = clients[i]->Fetch("huge", options).status();
        } else {
          PushOptions options;
          options.progress = progress;
          status = clients[i]
                       ->Push(absl::StrCat("pushed/", i), huge_.data(),
                              huge_.size(), options)
                       .status();
        }
        outcome.took = absl::Now() - start;
        // A call cannot end while its own callback holds it: on a loaded
        // machine another transfer may be slow to get under way.
        outcome.upper = std::max(outcome.upper, released - start);
        outcome.actual = CodeName(status.code());
        outcome.detail = std::string(status.message());
        if (!reported) under_way.DecrementCount();
      });
    }
    under_way.Wait();
    const absl::Status suspended = server_->Suspend();
    stopped.Notify();
    for (std::thread& thread : threads) thread.join();
    EXPECT_EQ(suspended, absl::OkStatus());
    EXPECT_EQ(server_->Resume(), absl::OkStatus());
    return outcomes;
  }

  // And the clients carry on (with an image small enough for their short
  // call timeout on any machine).
  void ExpectTheClientsCarryOn() {
    for (Client* client : {lane_.get(), grpc_.get()}) {
      ASSERT_TRUE(client->Push("after", small_.data(), small_.size()).ok());
      auto fetched = client->Fetch("after");
      ASSERT_TRUE(fetched.ok()) << fetched.status();
      EXPECT_EQ(fetched->buffer.size(), small_.size());
    }
  }

  std::string huge_;
  std::unique_ptr<Client> lane_;
  std::unique_ptr<Client> grpc_;
};

TEST_F(StalledTransferTest, AFetchOrPushStalledHalfwayEndsByItsDeadline) {
  for (const Outcome& outcome :
       Stall({lane_.get(), grpc_.get()}, /*fetching=*/true)) {
    ExpectKept(outcome);
  }
  for (const Outcome& outcome : Stall({lane_.get()}, /*fetching=*/false)) {
    ExpectKept(outcome);
  }
  ExpectTheClientsCarryOn();
}

// A push over gRPC that the server stops answering while a write of it is
// under way. Cancelling the call completes that write only once the kernel
// gives up on the connection (gRPC sets TCP_USER_TIMEOUT to the keepalive
// timeout, 10 s), so the push must leave the call to finish without it. On
// an idle machine the stall tends to come while the write still waits for
// flow control; on a loaded one (beside `stress-ng --cpu 4`) it comes with
// the write in the socket most of the time, which is the case that counts.
TEST_F(StalledTransferTest, AGrpcPushStalledHalfwayEndsByItsDeadline) {
  for (const Outcome& outcome : Stall({grpc_.get()}, /*fetching=*/false)) {
    ExpectKept(outcome);
  }
  ExpectTheClientsCarryOn();
}

// HDF5 1.10 flushes its metadata cache through the driver's write callback,
// and a write failing there leaves the cache in the middle of a flush
// ("slist already enabled?"): every later flush and H5Fclose of the file
// fail, its id stays registered, and HDF5's exit handler crashes the
// process (SIGSEGV in H5F__close_cb). A partial write of a page the driver
// has not cached used to fetch that page first, and so failed while the
// server did not answer; writes never ask the server now, so the flush
// fails only in the driver's commit, which HDF5 survives. Run as a death
// test: a crash would be the child's.
TEST_F(ClientFaultsTest,
       AFlushThatFailsWhileTheServerIsAwayLeavesAFileThatCloses) {
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  // The child runs SetUp again (a server and a directory of its own) but
  // ends before the fixture's teardown: it ends both itself. A failure
  // leaves at once, without HDF5's exit handler and its open handles.
  auto fail = [this](int code) {
    server_.reset();
    dir_.reset();
    std::_Exit(code);
  };
  EXPECT_EXIT(
      {
        hid_t fapl = DriverFapl(server_->target(), kCallTimeout);
        std::string errors;
        if (!CreateThroughDriver(fapl, "flushed", 1, &errors)) fail(10);
        hid_t file = H5Fopen("flushed", H5F_ACC_RDWR, fapl);
        const std::vector<int> more = Ints(2);
        if (file < 0 ||
            H5LTmake_dataset_int(file, "more", 1, &kInts, more.data()) < 0) {
          fail(11);
        }
        if (!server_->Suspend().ok()) fail(12);
        if (H5Fflush(file, H5F_SCOPE_GLOBAL) >= 0) fail(13);
        if (!server_->Resume().ok()) fail(14);
        const bool closed = H5Fclose(file) >= 0;
        H5Pclose(fapl);
        server_.reset();
        dir_.reset();
        std::exit(closed ? 0 : 15);  // and HDF5's exit handler runs
      },
      ::testing::ExitedWithCode(0), "");
}

}  // namespace
}  // namespace h5depot
