// A client on the server's host has its small pushes and fetches served on
// the CPU it waits on (lane_protocol.h, kFeatureClientCpu), within the CPUs
// the server may use. Checked end to end, through the client library and a
// real h5depotd, by where the server's lane thread last ran.
#include <dirent.h>
#include <sched.h>
#include <sys/types.h>

#include <fstream>
#include <memory>
#include <optional>
#include <sstream>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "gtest/gtest.h"
#include "h5depot/client.h"
#include "h5depot/testing/hdf5_images.h"
#include "h5depot/testing/server_process.h"

namespace h5depot {
namespace {

using ::h5depot::testing::MakeHdf5Image;
using ::h5depot::testing::ServerProcess;
using ::h5depot::testing::ServerProcessOptions;

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

class ClientCpuTest : public ::testing::TestWithParam<bool> {
 protected:
  void SetUp() override {
    cpus_ = AllowedCpus();
    if (cpus_.size() < 2) GTEST_SKIP() << "needs two CPUs";
  }

  // h5depotd on TCP and a Unix socket, and a client over the transport
  // under test (true: the Unix socket).
  void Start(std::vector<std::string> flags = {}) {
    ServerProcessOptions options;
    options.unix_socket = true;
    options.extra_flags = std::move(flags);
    auto server = ServerProcess::Start(options);
    ASSERT_TRUE(server.ok()) << server.status();
    server_ = *std::move(server);
    auto client = Client::Connect(GetParam() ? server_->unix_target()
                                             : server_->tcp_target());
    ASSERT_TRUE(client.ok()) << client.status();
    client_ = *std::move(client);
  }

  std::vector<int> cpus_;
  std::unique_ptr<ServerProcess> server_;
  std::unique_ptr<Client> client_;
};

INSTANTIATE_TEST_SUITE_P(BothTransports, ClientCpuTest, ::testing::Bool(),
                         [](const ::testing::TestParamInfo<bool>& param_info) {
                           return param_info.param ? "Unix" : "Tcp";
                         });

TEST_P(ClientCpuTest, SmallPushesAndFetchesAreServedOnTheClientsCpu) {
  ASSERT_NO_FATAL_FAILURE(Start());
  const std::string image = MakeHdf5Image(4 << 10, 61);
  // The client alternates between two CPUs. The lane thread moves to the
  // client's before it answers; the scheduler may still move it on before
  // it is seen asleep (ctest runs these cases alone, but the machine may
  // have other load), so two rounds of 16 may miss. By chance alone, 14
  // would match once in 500 runs. On a machine busy enough that the
  // scheduler moves the thread more often than that, a batch may miss
  // more: up to three batches are tried, and one must match (by chance
  // alone, one in 160 runs would).
  constexpr int kRounds = 16;
  constexpr int kBatches = 3;
  std::string misses;
  for (int batch = 0; batch < kBatches; ++batch) {
    int matched = 0;
    for (int round = 0; round < kRounds; ++round) {
      const int cpu = cpus_[round % 2];
      const bool push = batch == 0 ? round < kRounds / 2 : round % 4 < 2;
      {
        ScopedCpu on(cpu);
        ASSERT_TRUE(on.confined());
        if (push) {
          ASSERT_TRUE(
              client_->Push("near.h5", image.data(), image.size()).ok());
        } else {
          ASSERT_TRUE(client_->Fetch("near.h5").ok());
        }
      }
      const int lane_cpu = LaneThreadCpu(*server_);
      if (lane_cpu == cpu) {
        ++matched;
      } else {
        absl::StrAppend(&misses, push ? " push" : " fetch", " on CPU ", cpu,
                        " served on ", lane_cpu, ";");
      }
    }
    if (matched >= kRounds - 2) return;
    absl::StrAppend(&misses, " (batch ", batch + 1, ": ", matched, " of ",
                    kRounds, ")");
  }
  ADD_FAILURE() << "no batch of " << kRounds << " had " << kRounds - 2
                << " served on the client's CPU:" << misses;
}

TEST_P(ClientCpuTest, ServerConfinedToOneCpuNeverLeavesIt) {
  const int server_cpu = cpus_[0];
  {
    ScopedCpu on(server_cpu);  // inherited by the server
    ASSERT_TRUE(on.confined());
    ASSERT_NO_FATAL_FAILURE(Start());
  }
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
