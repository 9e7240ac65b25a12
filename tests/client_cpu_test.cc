// A client on the server's host has its small pushes and fetches served on
// the CPU it waits on (lane_protocol.h, kFeatureClientCpu), within the CPUs
// the server may use. Checked against a real h5depotd, by where its lane
// thread last ran, seen in /proc.
#include <dirent.h>
#include <sched.h>
#include <sys/types.h>
#include <sys/uio.h>

#include <fstream>
#include <memory>
#include <optional>
#include <sstream>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "gtest/gtest.h"
#include "h5depot/client.h"
#include "h5depot/internal/checksum.h"
#include "h5depot/internal/lane_protocol.h"
#include "h5depot/internal/lane_socket.h"
#include "h5depot/testing/hdf5_images.h"
#include "h5depot/testing/server_process.h"

namespace h5depot {
namespace {

namespace lane = internal::lane;
using ::h5depot::testing::MakeHdf5Image;
using ::h5depot::testing::ServerProcess;
using ::h5depot::testing::ServerProcessOptions;
using lane::LaneSocket;

// The CPUs the calling thread may run on.
std::vector<int> AllowedCpus(pid_t tid = 0) {
  cpu_set_t set;
  CPU_ZERO(&set);
  std::vector<int> cpus;
  if (sched_getaffinity(tid, sizeof(set), &set) != 0) return cpus;
  for (int cpu = 0; cpu < CPU_SETSIZE; ++cpu) {
    if (CPU_ISSET(cpu, &set)) cpus.push_back(cpu);
  }
  return cpus;
}

// Confines the calling thread (and processes it starts) to one CPU for its
// lifetime.
class ScopedCpu {
 public:
  explicit ScopedCpu(int cpu) {
    sched_getaffinity(0, sizeof(saved_), &saved_);
    cpu_set_t just_one;
    CPU_ZERO(&just_one);
    CPU_SET(cpu, &just_one);
    confined_ = sched_setaffinity(0, sizeof(just_one), &just_one) == 0;
  }
  ~ScopedCpu() { sched_setaffinity(0, sizeof(saved_), &saved_); }
  ScopedCpu(const ScopedCpu&) = delete;
  ScopedCpu& operator=(const ScopedCpu&) = delete;

  bool confined() const { return confined_; }

 private:
  cpu_set_t saved_;
  bool confined_ = false;
};

// The ids of `pid`'s threads named `name`.
std::vector<pid_t> ThreadsNamed(pid_t pid, const std::string& name) {
  std::vector<pid_t> threads;
  const std::string dir = absl::StrCat("/proc/", pid, "/task");
  DIR* tasks = opendir(dir.c_str());
  if (tasks == nullptr) return threads;
  while (dirent* entry = readdir(tasks)) {
    if (entry->d_name[0] == '.') continue;
    std::ifstream comm(absl::StrCat(dir, "/", entry->d_name, "/comm"));
    std::string line;
    if (std::getline(comm, line) && line == name) {
      threads.push_back(static_cast<pid_t>(std::stol(entry->d_name)));
    }
  }
  closedir(tasks);
  return threads;
}

struct ThreadState {
  char state = '?';  // R running, S sleeping, ...
  int last_cpu = -1;
};

// From /proc/PID/task/TID/stat: fields 3 (state) and 39 (processor).
std::optional<ThreadState> StateOf(pid_t pid, pid_t tid) {
  std::ifstream stat(absl::StrCat("/proc/", pid, "/task/", tid, "/stat"));
  std::string line;
  if (!std::getline(stat, line)) return std::nullopt;
  const size_t name_end = line.rfind(')');  // the name may hold spaces
  if (name_end == std::string::npos) return std::nullopt;
  std::istringstream fields(line.substr(name_end + 2));
  ThreadState result;
  std::string field;
  for (int number = 3; fields >> field; ++number) {
    if (number == 3) result.state = field[0];
    if (number == 39) {
      result.last_cpu = std::stoi(field);
      return result;
    }
  }
  return std::nullopt;
}

// The CPU the server's one lane thread last ran on, once it is asleep
// waiting for the next request (it answers before it is done).
int LaneThreadCpu(const ServerProcess& server) {
  const std::vector<pid_t> lane = ThreadsNamed(server.pid(), "h5depot-lane");
  EXPECT_EQ(lane.size(), 1u) << "one client, one lane connection";
  if (lane.empty()) return -1;
  const absl::Time deadline = absl::Now() + absl::Seconds(30);
  while (absl::Now() < deadline) {
    std::optional<ThreadState> state = StateOf(server.pid(), lane.front());
    if (!state.has_value()) return -1;
    if (state->state == 'S') return state->last_cpu;
    sched_yield();
  }
  ADD_FAILURE() << "the lane thread did not go back to waiting";
  return -1;
}

// How many times thread `tid` of `pid` has gone to sleep so far.
std::optional<uint64_t> SleepsOf(pid_t pid, pid_t tid) {
  std::ifstream status(absl::StrCat("/proc/", pid, "/task/", tid, "/status"));
  constexpr std::string_view kField = "voluntary_ctxt_switches:";
  for (std::string line; std::getline(status, line);) {
    uint64_t count = 0;
    if (line.compare(0, kField.size(), kField) == 0 &&
        absl::SimpleAtoi(absl::StripAsciiWhitespace(line.substr(kField.size())),
                         &count)) {
      return count;
    }
  }
  return std::nullopt;
}

// A safety net against a server that never answers, not a measurement.
absl::Time IoDeadline() { return absl::Now() + absl::Seconds(30); }

class ClientCpuTest : public ::testing::TestWithParam<bool> {
 protected:
  void SetUp() override {
    cpus_ = AllowedCpus();
    if (cpus_.size() < 2) GTEST_SKIP() << "needs two CPUs";
  }

  // h5depotd on TCP and a Unix socket.
  void Start() {
    ServerProcessOptions options;
    options.unix_socket = true;
    auto server = ServerProcess::Start(options);
    ASSERT_TRUE(server.ok()) << server.status();
    server_ = *std::move(server);
  }

  // A client over the transport under test (true: the Unix socket).
  void ConnectClient() {
    auto client = Client::Connect(GetParam() ? server_->unix_target()
                                             : server_->tcp_target());
    ASSERT_TRUE(client.ok()) << client.status();
    client_ = *std::move(client);
  }

  // A lane connection over the transport under test whose hellos agreed
  // that requests say the client's CPU.
  absl::StatusOr<LaneSocket> OpenLaneSayingCpus() {
    absl::StatusOr<LaneSocket> socket =
        GetParam()
            ? lane::ConnectUnix(server_->data_lane_unix_path(), IoDeadline())
            : lane::ConnectTcp("127.0.0.1", server_->data_lane_port(),
                               IoDeadline());
    if (!socket.ok()) return socket.status();
    uint8_t hello[lane::kHelloBytes];
    lane::EncodeHello(hello, lane::kFeatureClientCpu);
    if (absl::Status status = socket->Send(hello, sizeof(hello), IoDeadline());
        !status.ok()) {
      return status;
    }
    if (absl::Status status =
            socket->Receive(hello, sizeof(hello), IoDeadline());
        !status.ok()) {
      return status;
    }
    uint16_t agreed = 0;
    if (absl::Status status = lane::DecodeHello(hello, &agreed); !status.ok()) {
      return status;
    }
    if ((agreed & lane::kFeatureClientCpu) == 0) {
      return absl::FailedPreconditionError(
          "a local server did not agree to hear the client's CPU");
    }
    return socket;
  }

  // How many times the server's one lane thread has gone to sleep.
  absl::StatusOr<uint64_t> LaneThreadSleeps() {
    const std::vector<pid_t> lane =
        ThreadsNamed(server_->pid(), "h5depot-lane");
    if (lane.size() != 1) {
      return absl::FailedPreconditionError(
          absl::StrCat(lane.size(), " lane threads, not one"));
    }
    lane_thread_ = lane.front();
    std::optional<uint64_t> sleeps = SleepsOf(server_->pid(), lane_thread_);
    if (!sleeps.has_value()) return absl::InternalError("no sleep count");
    return *sleeps;
  }

  // The CPU the lane thread last ran on, once it has gone to sleep at
  // least `sleeps` times in all and is asleep. (The count is read before
  // the state, so a sleep seen is one after the count was reached.)
  int LaneThreadCpuAfterSleeps(uint64_t sleeps) {
    const absl::Time deadline = IoDeadline();
    while (absl::Now() < deadline) {
      const std::optional<uint64_t> slept =
          SleepsOf(server_->pid(), lane_thread_);
      if (!slept.has_value()) return -1;
      if (*slept >= sleeps) {
        std::optional<ThreadState> state =
            StateOf(server_->pid(), lane_thread_);
        if (!state.has_value()) return -1;
        if (state->state == 'S') return state->last_cpu;
      }
      sched_yield();
    }
    ADD_FAILURE() << "the lane thread did not go to sleep";
    return -1;
  }

  // Sends a push's header, naming `cpu` as the client's, and its id.
  static absl::Status SendPushHeader(LaneSocket& socket,
                                     std::string_view image_id, uint64_t size,
                                     int cpu) {
    lane::RequestHeader header;
    header.op = lane::Op::kPut;
    header.size = size;
    header.image_id_bytes = static_cast<uint16_t>(image_id.size());
    header.client_cpu = static_cast<uint32_t>(cpu);
    uint8_t raw[lane::kRequestHeaderBytes];
    lane::EncodeRequestHeader(header, raw);
    iovec iov[2] = {{raw, sizeof(raw)},
                    {const_cast<char*>(image_id.data()), image_id.size()}};
    return socket.SendAll(iov, 2, IoDeadline());
  }

  // Sends the bytes of the push SendPushHeader began, and its checksum;
  // the server's answer.
  static absl::StatusOr<lane::Response> FinishPush(LaneSocket& socket,
                                                   const std::string& image) {
    uint8_t trailer[8];
    lane::EncodeU64(internal::Checksum(image.data(), image.size()), trailer);
    iovec iov[2] = {{const_cast<char*>(image.data()), image.size()},
                    {trailer, sizeof(trailer)}};
    if (absl::Status status = socket.SendAll(iov, 2, IoDeadline());
        !status.ok()) {
      return status;
    }
    uint8_t raw[lane::kResponseHeaderBytes];
    if (absl::Status status = socket.Receive(raw, sizeof(raw), IoDeadline());
        !status.ok()) {
      return status;
    }
    lane::Response response;
    if (absl::Status status = lane::DecodeResponse(raw, &response);
        !status.ok()) {
      return status;
    }
    std::string message(response.message_bytes, '\0');
    if (absl::Status status =
            socket.Receive(message.data(), message.size(), IoDeadline());
        !status.ok()) {
      return status;
    }
    return response;
  }

  std::vector<int> cpus_;
  std::unique_ptr<ServerProcess> server_;
  std::unique_ptr<Client> client_;
  pid_t lane_thread_ = 0;
};

INSTANTIATE_TEST_SUITE_P(BothTransports, ClientCpuTest, ::testing::Bool(),
                         [](const ::testing::TestParamInfo<bool>& param_info) {
                           return param_info.param ? "Unix" : "Tcp";
                         });

// A client speaking the lane protocol directly (what the client library
// sends, minus the library), so that the server can be seen in the middle
// of a request: a push of a small image whose header and id are sent, its
// bytes not yet. Each header names a CPU, alternating between two; the
// server's lane thread must move onto it before it waits for the bytes.
//
// What is checked is the nudge, where the thread goes to sleep straight
// after moving, not where the scheduler lets it stay: after the answer the
// kernel is free to move it back (and does, when one CPU is busy and the
// other idle). The thread could still be moved in the few microseconds
// between its move and its sleep; by chance alone, 14 of 16 would match
// once in 500 runs, and one of three batches must.
TEST_P(ClientCpuTest, ALocalPushIsServedOnTheCpuItsHeaderNames) {
  ASSERT_NO_FATAL_FAILURE(Start());
  absl::StatusOr<LaneSocket> lane = OpenLaneSayingCpus();
  ASSERT_TRUE(lane.ok()) << lane.status();
  const std::string image = MakeHdf5Image(4 << 10, 61);
  constexpr int kRounds = 16;
  constexpr int kBatches = 3;
  std::string misses;
  for (int batch = 0; batch < kBatches; ++batch) {
    int matched = 0;
    for (int round = 0; round < kRounds; ++round) {
      const int cpu = cpus_[round % 2];
      const absl::StatusOr<uint64_t> before = LaneThreadSleeps();
      ASSERT_TRUE(before.ok()) << before.status();
      ASSERT_TRUE(SendPushHeader(*lane, "near.h5", image.size(), cpu).ok());
      const int waiting_on = LaneThreadCpuAfterSleeps(*before + 1);
      if (waiting_on == cpu) {
        ++matched;
      } else {
        absl::StrAppend(&misses, " CPU ", cpu, " named, ", waiting_on,
                        " waited on;");
      }
      const absl::StatusOr<lane::Response> answer = FinishPush(*lane, image);
      ASSERT_TRUE(answer.ok()) << answer.status();
      ASSERT_EQ(answer->code, absl::StatusCode::kOk);
    }
    if (matched >= kRounds - 2) return;
    absl::StrAppend(&misses, " (batch ", batch + 1, ": ", matched, " of ",
                    kRounds, ")");
  }
  ADD_FAILURE() << "no batch of " << kRounds << " had " << kRounds - 2
                << " waited on the named CPU:" << misses;
}

TEST_P(ClientCpuTest, ServerConfinedToOneCpuNeverLeavesIt) {
  const int server_cpu = cpus_[0];
  {
    ScopedCpu on(server_cpu);  // inherited by the server
    ASSERT_TRUE(on.confined());
    ASSERT_NO_FATAL_FAILURE(Start());
  }
  ASSERT_NO_FATAL_FAILURE(ConnectClient());
  const std::string image = MakeHdf5Image(4 << 10, 62);
  {
    ScopedCpu on(cpus_[1]);
    ASSERT_TRUE(on.confined());
    for (int i = 0; i < 4; ++i) {
      ASSERT_TRUE(
          client_->Push("confined.h5", image.data(), image.size()).ok());
      ASSERT_TRUE(client_->Fetch("confined.h5").ok());
    }
  }
  EXPECT_EQ(LaneThreadCpu(*server_), server_cpu);
  const std::vector<pid_t> lane = ThreadsNamed(server_->pid(), "h5depot-lane");
  ASSERT_EQ(lane.size(), 1u);
  EXPECT_EQ(AllowedCpus(lane.front()), std::vector<int>{server_cpu});
}

}  // namespace
}  // namespace h5depot
