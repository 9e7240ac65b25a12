// The server's operations layer behind its gRPC codec, against a real
// DepotServer on a loopback port: waiting Fetch and Stat calls hold no
// thread each, and end by publish, deadline, cancellation or shutdown with
// the error contract's codes. Calls go through the generated stub's
// callback API, so that the clients themselves hold no thread per call
// either and the test process's thread count shows the server's.
#include <dirent.h>
#include <grpcpp/grpcpp.h>

#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "gtest/gtest.h"
#include "h5depot/client.h"
#include "h5depot/server/depot_server.h"
#include "h5depot/testing/in_process_depot.h"
#include "h5depot/v1/depot.grpc.pb.h"
#include "test_images.h"

namespace h5depot {
namespace {

using ::h5depot::testing::InProcessDepot;
using ::h5depot::testing::MakeTestImage;

// Threads of this process.
int CountThreads() {
  DIR* tasks = opendir("/proc/self/task");
  if (tasks == nullptr) return -1;
  int count = 0;
  while (const dirent* entry = readdir(tasks)) {
    if (entry->d_name[0] != '.') ++count;
  }
  closedir(tasks);
  return count;
}

// Counts calls that have ended, for the test to wait on.
class Completions {
 public:
  void Add() {
    absl::MutexLock lock(&mutex_);
    ++done_;
  }
  // Whether `n` calls ended before `timeout`.
  bool AwaitAtLeast(int n, absl::Duration timeout) {
    absl::MutexLock lock(&mutex_);
    auto reached = [this, n]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mutex_) {
      return done_ >= n;
    };
    return mutex_.AwaitWithTimeout(absl::Condition(&reached), timeout);
  }

 private:
  absl::Mutex mutex_;
  int done_ ABSL_GUARDED_BY(mutex_) = 0;
};

// One Fetch through the stub's callback API: collects the info and the
// bytes, then reports to `completions`.
class FetchCall final : public grpc::ClientReadReactor<v1::FetchResponse> {
 public:
  FetchCall(v1::Depot::Stub* stub, const std::string& image_id,
            uint64_t wait_timeout_ms, Completions* completions)
      : completions_(completions) {
    request_.set_image_id(image_id);
    request_.set_wait_timeout_ms(wait_timeout_ms);
    stub->async()->Fetch(&context_, &request_, this);
    StartRead(&response_);
    StartCall();
  }

  void OnReadDone(bool ok) override {
    if (!ok) return;  // OnDone follows
    if (response_.has_info()) {
      info_ = response_.info();
    } else {
      bytes_.append(response_.chunk());
    }
    StartRead(&response_);
  }

  void OnDone(const grpc::Status& status) override {
    status_ = status;
    completions_->Add();
  }

  void Cancel() { context_.TryCancel(); }

  // Read only after the call ended.
  const grpc::Status& status() const { return status_; }
  const v1::ImageInfo& info() const { return info_; }
  const std::string& bytes() const { return bytes_; }

 private:
  Completions* const completions_;
  grpc::ClientContext context_;
  v1::FetchRequest request_;
  v1::FetchResponse response_;
  v1::ImageInfo info_;
  std::string bytes_;
  grpc::Status status_;
};

// One Stat through the stub's callback API.
class StatCall {
 public:
  StatCall(v1::Depot::Stub* stub, const std::string& image_id,
           uint64_t wait_timeout_ms, Completions* completions) {
    request_.set_image_id(image_id);
    request_.set_wait_timeout_ms(wait_timeout_ms);
    stub->async()->Stat(&context_, &request_, &info_,
                        [this, completions](grpc::Status status) {
                          status_ = std::move(status);
                          completions->Add();
                        });
  }

  void Cancel() { context_.TryCancel(); }

  const grpc::Status& status() const { return status_; }
  const v1::ImageInfo& info() const { return info_; }

 private:
  grpc::ClientContext context_;
  v1::StatRequest request_;
  v1::ImageInfo info_;
  grpc::Status status_;
};

class DepotOperationsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto depot = InProcessDepot::Start();
    ASSERT_TRUE(depot.ok()) << depot.status();
    depot_ = *std::move(depot);
    channel_ = grpc::CreateChannel(depot_->target(),
                                   grpc::InsecureChannelCredentials());
    stub_ = v1::Depot::NewStub(channel_);
  }

  // Whether the store's count of pending waits satisfies `reached` before
  // `timeout`. The calls are asynchronous: this is how the test knows they
  // have arrived at the server, or ended there.
  template <typename Predicate>
  bool AwaitPendingWaits(Predicate reached, absl::Duration timeout) {
    const absl::Time deadline = absl::Now() + timeout;
    while (!reached(depot_->store().Stats().pending_waits)) {
      if (absl::Now() >= deadline) return false;
      absl::SleepFor(absl::Milliseconds(2));
    }
    return true;
  }
  bool AwaitAtLeastPendingWaits(uint64_t n) {
    return AwaitPendingWaits([n](uint64_t waits) { return waits >= n; },
                             absl::Seconds(60));
  }
  bool AwaitNoPendingWaits() {
    return AwaitPendingWaits([](uint64_t waits) { return waits == 0; },
                             absl::Seconds(60));
  }

  std::unique_ptr<InProcessDepot> depot_;
  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<v1::Depot::Stub> stub_;
};

TEST_F(DepotOperationsTest, ManyWaitingFetchesAndStatsHoldNoThreadEach) {
  constexpr int kEach = 100;  // waiting Fetch calls, and as many Stat calls
  constexpr uint64_t kWaitMs = 120'000;
  // gRPC starts its threads on first use: one call of each kind first.
  {
    Completions warm_up;
    FetchCall fetch(stub_.get(), "missing", 0, &warm_up);
    StatCall stat(stub_.get(), "missing", 0, &warm_up);
    ASSERT_TRUE(warm_up.AwaitAtLeast(2, absl::Seconds(30)));
    EXPECT_EQ(fetch.status().error_code(), grpc::StatusCode::NOT_FOUND);
    EXPECT_EQ(stat.status().error_code(), grpc::StatusCode::NOT_FOUND);
  }
  const int threads_before = CountThreads();
  ASSERT_GT(threads_before, 0);

  Completions completions;
  std::vector<std::unique_ptr<FetchCall>> fetches;
  std::vector<std::unique_ptr<StatCall>> stats;
  for (int i = 0; i < kEach; ++i) {
    fetches.push_back(std::make_unique<FetchCall>(stub_.get(), "late/image",
                                                  kWaitMs, &completions));
    stats.push_back(std::make_unique<StatCall>(stub_.get(), "late/image",
                                               kWaitMs, &completions));
  }
  ASSERT_TRUE(AwaitAtLeastPendingWaits(2 * kEach))
      << depot_->store().Stats().pending_waits << " waits registered";
  const int threads_waiting = CountThreads();
  RecordProperty("threads_before", threads_before);
  RecordProperty("threads_waiting", threads_waiting);
  EXPECT_LT(threads_waiting - threads_before, 2 * kEach / 4)
      << threads_before << " threads before the waits, " << threads_waiting
      << " while " << 2 * kEach << " calls wait";

  const auto bytes = MakeTestImage((1 << 20) + 17);
  auto client = depot_->Connect();
  ASSERT_TRUE(client.ok()) << client.status();
  auto pushed = (*client)->Push("late/image", bytes.data(), bytes.size());
  ASSERT_TRUE(pushed.ok()) << pushed.status();

  ASSERT_TRUE(completions.AwaitAtLeast(2 * kEach, absl::Seconds(60)));
  for (const auto& fetch : fetches) {
    ASSERT_TRUE(fetch->status().ok()) << fetch->status().error_message();
    EXPECT_EQ(fetch->info().generation(), pushed->generation);
    ASSERT_EQ(fetch->bytes().size(), bytes.size());
    EXPECT_EQ(0,
              std::memcmp(fetch->bytes().data(), bytes.data(), bytes.size()));
  }
  for (const auto& stat : stats) {
    ASSERT_TRUE(stat->status().ok()) << stat->status().error_message();
    EXPECT_EQ(stat->info().image_id(), "late/image");
    EXPECT_EQ(stat->info().generation(), pushed->generation);
    EXPECT_EQ(stat->info().size(), bytes.size());
  }
  EXPECT_EQ(depot_->store().Stats().pending_waits, 0u);
}

TEST_F(DepotOperationsTest, CancellingAWaitingCallEndsItsWait) {
  Completions completions;
  FetchCall fetch(stub_.get(), "never", 120'000, &completions);
  StatCall stat(stub_.get(), "never", 120'000, &completions);
  ASSERT_TRUE(AwaitAtLeastPendingWaits(2));
  fetch.Cancel();
  stat.Cancel();
  ASSERT_TRUE(completions.AwaitAtLeast(2, absl::Seconds(30)));
  EXPECT_EQ(fetch.status().error_code(), grpc::StatusCode::CANCELLED);
  EXPECT_EQ(stat.status().error_code(), grpc::StatusCode::CANCELLED);
  // The server's side ends too (OnCancel), not only the client's; it may
  // do so after the client has seen the cancellation.
  EXPECT_TRUE(AwaitNoPendingWaits())
      << depot_->store().Stats().pending_waits << " waits left";
}

TEST_F(DepotOperationsTest, AWaitThatRunsOutIsDeadlineExceeded) {
  Completions completions;
  FetchCall fetch(stub_.get(), "never", 30, &completions);
  StatCall stat(stub_.get(), "never", 30, &completions);
  ASSERT_TRUE(completions.AwaitAtLeast(2, absl::Seconds(30)));
  EXPECT_EQ(fetch.status().error_code(), grpc::StatusCode::DEADLINE_EXCEEDED);
  EXPECT_EQ(stat.status().error_code(), grpc::StatusCode::DEADLINE_EXCEEDED);
  EXPECT_EQ(depot_->store().Stats().pending_waits, 0u);
}

TEST_F(DepotOperationsTest, ShutdownEndsWaitingCallsWithUnavailable) {
  Completions completions;
  FetchCall fetch(stub_.get(), "never", 120'000, &completions);
  StatCall stat(stub_.get(), "never", 120'000, &completions);
  ASSERT_TRUE(AwaitAtLeastPendingWaits(2));
  depot_->Shutdown(absl::Seconds(5));
  ASSERT_TRUE(completions.AwaitAtLeast(2, absl::Seconds(30)));
  EXPECT_EQ(fetch.status().error_code(), grpc::StatusCode::UNAVAILABLE);
  EXPECT_EQ(stat.status().error_code(), grpc::StatusCode::UNAVAILABLE);
}

TEST_F(DepotOperationsTest, AMalformedIdIsInvalidEvenWithAWait) {
  Completions completions;
  FetchCall fetch(stub_.get(), "../etc", 120'000, &completions);
  StatCall stat(stub_.get(), "../etc", 120'000, &completions);
  ASSERT_TRUE(completions.AwaitAtLeast(2, absl::Seconds(30)));
  EXPECT_EQ(fetch.status().error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_EQ(stat.status().error_code(), grpc::StatusCode::INVALID_ARGUMENT);
}

}  // namespace
}  // namespace h5depot
