// The client across fork(), as programs that fork (Python's multiprocessing
// among them) use it, against a real h5depotd over TCP and a Unix socket,
// with the data lane and without: a parent keeps using its client while it
// forks, also from other threads; a child uses the client it inherited and
// a fresh one, or gets the documented error, and never hangs nor touches
// the parent's connections; the C API and the remote driver in a child.
//
// Children report through their exit status (and stderr, which ctest
// shows). Each has an alarm, and the parent waits for it a bounded time: a
// child that hangs is a failure, not a hung suite.
#include <poll.h>
#include <signal.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "H5FDremote.h"
#include "absl/base/thread_annotations.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "h5depot/client.h"
#include "h5depot/h5depot.h"
#include "h5depot/internal/mutex.h"
#include "h5depot/rpc/grpc_runtime.h"
#include "h5depot/testing/server_process.h"
#include "h5depot/testing/subprocess.h"
#include "remote_driver_content.h"
#include "test_images.h"

namespace h5depot {
namespace {

using ::h5depot::internal::CondVar;
using ::h5depot::internal::Mutex;
using ::h5depot::internal::MutexLock;
using ::h5depot::testing::MakeTestImage;
using ::h5depot::testing::ServerProcess;
using ::h5depot::testing::ServerProcessOptions;

// A child that has not ended by then counts as hung; sanitizer builds are
// slow. The parent then prints its threads' stacks and kills it; the
// child's own alarm, later, is for a parent that is gone.
constexpr int kChildHangSeconds = 90;
constexpr int kChildAlarmSeconds = kChildHangSeconds + 60;
// What "promptly" means for a disconnect or a refused call in a child.
constexpr absl::Duration kPrompt = absl::Seconds(5);

// Exit statuses of children.
constexpr int kChildOk = 0;
constexpr int kChildFailed = 1;
// Every call the child made was refused with the documented
// FAILED_PRECONDITION: it was forked while the parent was in a gRPC call.
constexpr int kChildWithoutGrpc = 10;

// In a child: says what went wrong and returns kChildFailed.
int Fail(const std::string& what) {
  std::fprintf(stderr, "child %d: %s\n", static_cast<int>(getpid()),
               what.c_str());
  return kChildFailed;
}

// The error a child of a fork taken during a gRPC call gets.
bool IsNoGrpcInChild(const absl::Status& status) {
  return status.code() == absl::StatusCode::kFailedPrecondition &&
         absl::StrContains(status.message(),
                           "gRPC cannot be used in this child of fork()");
}

// Forks; the child runs `body` and _exits with what it returns (no
// destructors, no atexit handlers, no gtest: only its exit status counts).
pid_t ForkChild(const std::function<int()>& body) {
  std::fflush(nullptr);
  const pid_t pid = fork();
  if (pid == 0) {
    alarm(kChildAlarmSeconds);
    const int status = body();
    std::fflush(nullptr);
    _exit(status);
  }
  return pid;
}

// Waits for `pid` for a bounded time and returns its exit status; a
// signal (its alarm: it hung) or a timeout is a test failure, and -1.
int WaitForChild(pid_t pid) {
  if (pid < 0) {
    ADD_FAILURE() << "fork failed: " << std::strerror(errno);
    return -1;
  }
  const int pid_fd = static_cast<int>(syscall(SYS_pidfd_open, pid, 0));
  if (pid_fd >= 0) {
    pollfd exited{pid_fd, POLLIN, 0};
    const int ready = poll(&exited, 1, kChildHangSeconds * 1000);
    close(pid_fd);
    if (ready == 0) {
      // Hung: most likely on a lock another thread held across fork().
      // Its stacks name it (a parent may trace its child).
      testing::CommandOptions options;
      options.timeout = absl::Seconds(60);
      const testing::CommandResult stacks =
          testing::RunCommand({"gdb", "-batch", "-p", absl::StrCat(pid), "-ex",
                               "thread apply all bt"},
                              options);
      ADD_FAILURE() << "child " << pid << " hung for " << kChildHangSeconds
                    << " s; its threads:\n"
                    << stacks.stdout_text << stacks.stderr_text;
      kill(pid, SIGKILL);
    }
  }
  int status = 0;
  if (waitpid(pid, &status, 0) != pid) {
    ADD_FAILURE() << "waitpid: " << std::strerror(errno);
    return -1;
  }
  if (WIFSIGNALED(status)) {
    ADD_FAILURE() << "child " << pid << " died of signal " << WTERMSIG(status)
                  << (WTERMSIG(status) == SIGALRM ? " (its alarm: it hung)"
                                                  : "");
    return -1;
  }
  return WEXITSTATUS(status);
}

// Runs `body` in a child and returns its exit status (-1: it hung).
int RunInChild(const std::function<int()>& body) {
  return WaitForChild(ForkChild(body));
}

// "" if `client` stores and returns `image` under `id` and describes it;
// else what went wrong.
std::string PushFetchStat(Client& client, const std::string& id,
                          const std::vector<uint8_t>& image,
                          absl::Status* first_error = nullptr) {
  absl::StatusOr<ImageInfo> pushed =
      client.Push(id, image.data(), image.size());
  if (!pushed.ok()) {
    if (first_error != nullptr) *first_error = pushed.status();
    return absl::StrCat("push: ", pushed.status().ToString());
  }
  absl::StatusOr<FetchedImage> fetched = client.Fetch(id);
  if (!fetched.ok())
    return absl::StrCat("fetch: ", fetched.status().ToString());
  if (fetched->buffer.size() != image.size() ||
      std::memcmp(fetched->buffer.data(), image.data(), image.size()) != 0) {
    return absl::StrCat("fetched other bytes than were pushed to ", id);
  }
  absl::StatusOr<ImageInfo> info = client.Stat(id);
  if (!info.ok()) return absl::StrCat("stat: ", info.status().ToString());
  if (info->size != image.size() || info->generation != pushed->generation) {
    return absl::StrCat("stat describes another generation of ", id);
  }
  return "";
}

struct Setup {
  bool unix_socket;
  bool data_lane;
};

std::string SetupName(const ::testing::TestParamInfo<Setup>& info) {
  return absl::StrCat(info.param.unix_socket ? "Unix" : "Tcp",
                      info.param.data_lane ? "Lane" : "NoLane");
}

class ForkTest : public ::testing::TestWithParam<Setup> {
 protected:
  void SetUp() override {
    ServerProcessOptions options;
    options.tcp = !GetParam().unix_socket;
    options.unix_socket = GetParam().unix_socket;
    if (!GetParam().data_lane) options.extra_flags = {"--nodata-lane"};
    auto server = ServerProcess::Start(options);
    ASSERT_TRUE(server.ok()) << server.status();
    server_ = std::move(*server);
    client_options_.connect_timeout = absl::Seconds(20);
    client_options_.call_timeout = absl::Seconds(60);
    auto client = Client::Connect(server_->target(), client_options_);
    ASSERT_TRUE(client.ok()) << client.status();
    client_ = std::move(*client);
  }

  // In a child: a fresh client works, and is gone again promptly.
  int UseFreshClient(const std::string& id, const std::vector<uint8_t>& image) {
    auto fresh = Client::Connect(server_->target(), client_options_);
    if (!fresh.ok()) return Fail("connect: " + fresh.status().ToString());
    if (std::string error = PushFetchStat(**fresh, id, image); !error.empty()) {
      return Fail("fresh client: " + error);
    }
    const absl::Time start = absl::Now();
    fresh->reset();
    if (absl::Now() - start > kPrompt) return Fail("fresh disconnect is slow");
    return kChildOk;
  }

  // In a child: destroying the client inherited from the parent returns
  // promptly.
  int DisconnectInherited() {
    const absl::Time start = absl::Now();
    client_.reset();
    if (absl::Now() - start > kPrompt) {
      return Fail("disconnecting the inherited client is slow");
    }
    return kChildOk;
  }

  // In a child forked during a gRPC call: every call, and a fresh connect,
  // is refused at once with the documented error; disconnects are prompt.
  int ExpectNoGrpc(const absl::Status& first_refusal) {
    if (!IsNoGrpcInChild(first_refusal)) {
      return Fail("expected the documented refusal, got " +
                  first_refusal.ToString());
    }
    const absl::Time start = absl::Now();
    absl::StatusOr<ImageInfo> info = client_->Stat("parent/any");
    if (!IsNoGrpcInChild(info.status())) {
      return Fail("stat after a refusal: " + info.status().ToString());
    }
    auto fresh = Client::Connect(server_->target(), client_options_);
    if (!IsNoGrpcInChild(fresh.status())) {
      return Fail("connect after a refusal: " + fresh.status().ToString());
    }
    if (absl::Now() - start > kPrompt) return Fail("refusals are slow");
    if (int status = DisconnectInherited(); status != kChildOk) return status;
    return kChildWithoutGrpc;
  }

  std::unique_ptr<ServerProcess> server_;
  ClientOptions client_options_;
  std::unique_ptr<Client> client_;
};

// Threads of the parent pushing and fetching, each its own image, checking
// every byte, until stopped.
class ParentTraffic {
 public:
  ParentTraffic(Client* client, int threads) : num_threads_(threads) {
    for (int t = 0; t < threads; ++t) {
      threads_.emplace_back([this, client, t] { Run(client, t); });
    }
  }

  ~ParentTraffic() { Stop(); }

  // Returns once every thread has made `rounds` more rounds than now.
  void AwaitProgress(int rounds) {
    MutexLock lock(&mutex_);
    const int target = min_rounds_ + rounds;
    while (min_rounds_ < target && error_.empty()) progress_.Wait(&mutex_);
  }

  void Stop() {
    stop_.store(true);
    for (std::thread& thread : threads_) thread.join();
    threads_.clear();
  }

  std::string error() {
    MutexLock lock(&mutex_);
    return error_;
  }

 private:
  void Run(Client* client, int t) {
    // One small image and one large enough to go in pieces.
    const size_t size = t % 2 == 0 ? 20000 : (size_t{3} << 20);
    const std::string id = absl::StrCat("parent/", t);
    for (int round = 0; !stop_.load(); ++round) {
      const std::vector<uint8_t> image =
          MakeTestImage(size, static_cast<uint32_t>(t * 100000 + round));
      std::string error;
      absl::StatusOr<ImageInfo> pushed =
          client->Push(id, image.data(), image.size());
      absl::StatusOr<FetchedImage> fetched =
          pushed.ok() ? client->Fetch(id) : pushed.status();
      if (!fetched.ok()) {
        error = fetched.status().ToString();
      } else if (fetched->buffer.size() != image.size() ||
                 std::memcmp(fetched->buffer.data(), image.data(),
                             image.size()) != 0) {
        error = absl::StrCat("fetched other bytes than were pushed to ", id);
      }
      MutexLock lock(&mutex_);
      if (!error.empty()) {
        if (error_.empty()) error_ = absl::StrCat(id, ": ", error);
        progress_.SignalAll();
        return;
      }
      rounds_[t] = round + 1;
      int least = rounds_.empty() ? 0 : rounds_.begin()->second;
      for (const auto& [thread, done] : rounds_) least = std::min(least, done);
      if (static_cast<int>(rounds_.size()) == num_threads_) {
        min_rounds_ = least;
        progress_.SignalAll();
      }
    }
  }

  const int num_threads_;
  std::vector<std::thread> threads_;
  std::atomic<bool> stop_{false};
  Mutex mutex_;
  CondVar progress_;
  std::map<int, int> rounds_ ABSL_GUARDED_BY(mutex_);
  int min_rounds_ ABSL_GUARDED_BY(mutex_) = 0;
  std::string error_ ABSL_GUARDED_BY(mutex_);
};

TEST_P(ForkTest,
       ParentTrafficContinuesWhileChildrenUseInheritedAndFreshClients) {
  constexpr int kChildren = 4;
  ParentTraffic traffic(client_.get(), 2);
  std::vector<pid_t> children;
  for (int i = 0; i < kChildren; ++i) {
    // Each fork lands in the middle of the parent's traffic.
    traffic.AwaitProgress(1);
    children.push_back(ForkChild([this, i] {
      const std::vector<uint8_t> image =
          MakeTestImage(size_t{200000} + i, static_cast<uint32_t>(7000 + i));
      absl::Status refusal;
      const std::string error = PushFetchStat(
          *client_, absl::StrCat("child/", i, "/inherited"), image, &refusal);
      // Without a lane, the parent's threads are in gRPC calls most of
      // the time: a child forked then cannot use gRPC (documented).
      if (!error.empty() && !GetParam().data_lane && !refusal.ok() &&
          IsNoGrpcInChild(refusal)) {
        return ExpectNoGrpc(refusal);
      }
      if (!error.empty()) return Fail("inherited client: " + error);
      if (int status = UseFreshClient(absl::StrCat("child/", i, "/fresh"),
                                      MakeTestImage(size_t{1} << 20, 8000 + i));
          status != kChildOk) {
        return status;
      }
      return DisconnectInherited();
    }));
  }
  for (int i = 0; i < kChildren; ++i) {
    const int status = WaitForChild(children[i]);
    if (GetParam().data_lane) {
      EXPECT_EQ(status, kChildOk) << "child " << i;
    } else {
      EXPECT_TRUE(status == kChildOk || status == kChildWithoutGrpc)
          << "child " << i << " exited with " << status;
    }
    if (status != kChildOk) continue;
    // What the child pushed is there, seen from the parent's client.
    auto fetched = client_->Fetch(absl::StrCat("child/", i, "/fresh"));
    ASSERT_TRUE(fetched.ok()) << fetched.status();
    const std::vector<uint8_t> expected =
        MakeTestImage(size_t{1} << 20, static_cast<uint32_t>(8000 + i));
    EXPECT_EQ(
        std::memcmp(fetched->buffer.data(), expected.data(), expected.size()),
        0);
  }
  // The parent's threads kept going after the last fork, with right bytes.
  traffic.AwaitProgress(2);
  traffic.Stop();
  EXPECT_EQ(traffic.error(), "");
  EXPECT_TRUE(client_->Stat("parent/0").ok());
}

TEST_P(ForkTest, AChildThatNeverUsesTheClientDisconnectsPromptly) {
  const std::vector<uint8_t> image = MakeTestImage(100000, 1);
  ASSERT_EQ(PushFetchStat(*client_, "parent/used", image), "");
  auto reader = client_->OpenReader("parent/used");
  ASSERT_TRUE(reader.ok()) << reader.status();

  EXPECT_EQ(RunInChild([&] {
              const absl::Time start = absl::Now();
              reader->reset();
              client_.reset();
              if (absl::Now() - start > kPrompt) return Fail("slow disconnect");
              return kChildOk;
            }),
            kChildOk);

  // Nothing of the parent's went with the child.
  std::vector<uint8_t> bytes(image.size());
  auto read = (*reader)->Read(0, bytes.data(), bytes.size());
  ASSERT_TRUE(read.ok()) << read.status();
  EXPECT_EQ(bytes, image);
  EXPECT_EQ(PushFetchStat(*client_, "parent/used", MakeTestImage(5000, 2)), "");
}

TEST_P(ForkTest, AReaderOpenedBeforeTheForkIsRefusedInTheChildOnly) {
  const std::vector<uint8_t> image = MakeTestImage(100000, 3);
  ASSERT_TRUE(client_->Push("parent/read", image.data(), image.size()).ok());
  auto reader = client_->OpenReader("parent/read");
  ASSERT_TRUE(reader.ok()) << reader.status();

  EXPECT_EQ(
      RunInChild([&] {
        std::vector<uint8_t> bytes(100);
        auto read = (*reader)->Read(0, bytes.data(), bytes.size());
        if (read.status().code() != absl::StatusCode::kFailedPrecondition ||
            !absl::StrContains(read.status().message(), "before fork")) {
          return Fail("read through the parent's reader: " +
                      read.status().ToString());
        }
        // A reader of its own works.
        auto own = client_->OpenReader("parent/read");
        if (!own.ok()) return Fail(own.status().ToString());
        auto own_read = (*own)->Read(0, bytes.data(), bytes.size());
        if (!own_read.ok() || *own_read != bytes.size() ||
            std::memcmp(bytes.data(), image.data(), bytes.size()) != 0) {
          return Fail("own reader: " + own_read.status().ToString());
        }
        own->reset();
        reader->reset();
        return DisconnectInherited();
      }),
      kChildOk);

  std::vector<uint8_t> bytes(image.size());
  auto read = (*reader)->Read(0, bytes.data(), bytes.size());
  ASSERT_TRUE(read.ok()) << read.status();
  EXPECT_EQ(bytes, image);
}

TEST_P(ForkTest, AChildForkedDuringAGrpcCallGetsTheDocumentedErrorPromptly) {
  // A stat waiting for an image that is not there yet: a gRPC call that
  // stays under way until the image is pushed.
  std::atomic<bool> waited{false};
  std::thread waiter([&] {
    absl::StatusOr<ImageInfo> info =
        client_->Stat("parent/late", absl::Seconds(120));
    waited.store(info.ok());
  });
  // Waits (a bounded spin on an observable condition) until the call is
  // under way.
  const absl::Time give_up = absl::Now() + absl::Seconds(60);
  while (internal::GrpcUsesUnderWay() == 0 && absl::Now() < give_up) {
    std::this_thread::yield();
  }
  ASSERT_GT(internal::GrpcUsesUnderWay(), 0);

  EXPECT_EQ(RunInChild([this] {
              const std::vector<uint8_t> image = MakeTestImage(1000, 4);
              absl::StatusOr<ImageInfo> pushed =
                  client_->Push("child/late", image.data(), image.size());
              if (!absl::StrContains(pushed.status().message(),
                                     "in a call to h5depotd over gRPC")) {
                return Fail("push: " + pushed.status().ToString());
              }
              return ExpectNoGrpc(pushed.status());
            }),
            kChildWithoutGrpc);

  // The parent's call under way at the fork goes on and completes.
  const std::vector<uint8_t> image = MakeTestImage(1000, 5);
  ASSERT_TRUE(client_->Push("parent/late", image.data(), image.size()).ok());
  waiter.join();
  EXPECT_TRUE(waited.load());
}

TEST_P(ForkTest, AChildOfAnIdleParentUsesGrpcAndItsOwnChildrenToo) {
  ASSERT_EQ(PushFetchStat(*client_, "parent/idle", MakeTestImage(7000, 6)), "");
  EXPECT_EQ(
      RunInChild([this] {
        const std::vector<uint8_t> image = MakeTestImage(7000, 7);
        if (std::string error = PushFetchStat(*client_, "child/idle", image);
            !error.empty()) {
          return Fail(error);
        }
        // A grandchild: the same again, one generation further.
        const int grandchild = RunInChild([this] {
          if (std::string error = PushFetchStat(*client_, "grandchild/idle",
                                                MakeTestImage(7000, 8));
              !error.empty()) {
            return Fail(error);
          }
          return DisconnectInherited();
        });
        if (grandchild != kChildOk) return Fail("grandchild failed");
        return DisconnectInherited();
      }),
      kChildOk);
  auto fetched = client_->Fetch("grandchild/idle");
  ASSERT_TRUE(fetched.ok()) << fetched.status();
  EXPECT_EQ(fetched->buffer.size(), 7000u);
}

INSTANTIATE_TEST_SUITE_P(Setups, ForkTest,
                         ::testing::Values(Setup{false, true},
                                           Setup{false, false},
                                           Setup{true, true},
                                           Setup{true, false}),
                         SetupName);

// The C API and the remote driver, against a server with a data lane on a
// Unix socket and TCP.
class ForkApiTest : public ::testing::Test {
 protected:
  void SetUp() override {
    H5Eset_auto2(H5E_DEFAULT, nullptr, nullptr);
    ServerProcessOptions options;
    options.unix_socket = true;
    auto server = ServerProcess::Start(options);
    ASSERT_TRUE(server.ok()) << server.status();
    server_ = std::move(*server);
  }

  std::unique_ptr<ServerProcess> server_;
};

TEST_F(ForkApiTest, TheCApiConnectsAFreshClientInAChild) {
  h5depot_client* parent = h5depot_connect(server_->unix_target().c_str());
  ASSERT_NE(parent, nullptr) << h5depot_errmsg();
  const std::vector<uint8_t> image = MakeTestImage(30000, 9);
  ASSERT_EQ(h5depot_push_buffer(parent, "c/parent", image.data(), image.size(),
                                nullptr),
            H5DEPOT_OK)
      << h5depot_errmsg();

  EXPECT_EQ(RunInChild([&] {
              h5depot_client* fresh =
                  h5depot_connect(server_->tcp_target().c_str());
              if (fresh == nullptr) return Fail(h5depot_errmsg());
              const std::vector<uint8_t> mine = MakeTestImage(30000, 10);
              if (h5depot_push_buffer(fresh, "c/child", mine.data(),
                                      mine.size(), nullptr) != H5DEPOT_OK) {
                return Fail(h5depot_errmsg());
              }
              void* buf = nullptr;
              size_t len = 0;
              if (h5depot_fetch(fresh, "c/child", &buf, &len, nullptr) !=
                  H5DEPOT_OK) {
                return Fail(h5depot_errmsg());
              }
              const bool same =
                  len == mine.size() && std::memcmp(buf, mine.data(), len) == 0;
              std::free(buf);
              if (!same) return Fail("fetched other bytes");
              // The inherited client works too.
              h5depot_image_info info{};
              if (h5depot_stat(parent, "c/parent", &info) != H5DEPOT_OK ||
                  info.size != image.size()) {
                return Fail(absl::StrCat("stat: ", h5depot_errmsg()));
              }
              const absl::Time start = absl::Now();
              h5depot_disconnect(fresh);
              h5depot_disconnect(parent);
              if (absl::Now() - start > kPrompt) return Fail("slow disconnect");
              return kChildOk;
            }),
            kChildOk);

  h5depot_image_info info{};
  EXPECT_EQ(h5depot_stat(parent, "c/child", &info), H5DEPOT_OK)
      << h5depot_errmsg();
  EXPECT_EQ(info.size, 30000u);
  h5depot_disconnect(parent);
}

TEST_F(ForkApiTest, AChildOpensRemoteDriverFilesAfterTheParentUsedTheDriver) {
  hid_t fapl = H5Pcreate(H5P_FILE_ACCESS);
  ASSERT_GE(H5Pset_fapl_remote(fapl, server_->unix_target().c_str(), nullptr),
            0);
  hid_t created = H5Fcreate("vfd/parent", H5F_ACC_EXCL, H5P_DEFAULT, fapl);
  ASSERT_GE(created, 0);
  ASSERT_TRUE(testing::WriteContent(created, 11));
  ASSERT_GE(H5Fclose(created), 0);
  // Open across the fork: its reader pins the generation in the parent.
  hid_t open = H5Fopen("vfd/parent", H5F_ACC_RDONLY, fapl);
  ASSERT_GE(open, 0);
  ASSERT_EQ(testing::CheckContent(open, 11), "");

  EXPECT_EQ(RunInChild([&] {
              hid_t file = H5Fopen("vfd/parent", H5F_ACC_RDONLY, fapl);
              if (file < 0) return Fail("open the parent's file");
              std::string error = testing::CheckContent(file, 11);
              H5Fclose(file);
              if (!error.empty()) return Fail(error);
              hid_t mine =
                  H5Fcreate("vfd/child", H5F_ACC_EXCL, H5P_DEFAULT, fapl);
              if (mine < 0 || !testing::WriteContent(mine, 12) ||
                  H5Fclose(mine) < 0) {
                return Fail("create a file");
              }
              // The file the parent holds open closes without waiting.
              const absl::Time start = absl::Now();
              if (H5Fclose(open) < 0) return Fail("close the inherited file");
              if (absl::Now() - start > kPrompt) return Fail("slow close");
              return kChildOk;
            }),
            kChildOk);

  EXPECT_EQ(testing::CheckContent(open, 11), "");
  EXPECT_GE(H5Fclose(open), 0);
  hid_t child = H5Fopen("vfd/child", H5F_ACC_RDONLY, fapl);
  ASSERT_GE(child, 0);
  EXPECT_EQ(testing::CheckContent(child, 12), "");
  EXPECT_GE(H5Fclose(child), 0);
  H5Pclose(fapl);
}

}  // namespace
}  // namespace h5depot
