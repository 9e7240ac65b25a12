// Limits per tenant, so that one tenant cannot fill the server. Covered
// here: the store's Quota alone (what is charged to whom, and that
// everything is given back).
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "h5depot/internal/checksum.h"
#include "h5depot/server/image_store.h"

namespace h5depot {
namespace {

using server::ImageStore;
using server::PendingImage;
using server::PushRequest;
using server::Quota;
using server::StoreOptions;

constexpr uint64_t kKiB = 1024;

// --- The store's Quota ------------------------------------------------------

class QuotaTest : public ::testing::Test {
 protected:
  QuotaTest() : store_(Options()) {}

  static StoreOptions Options() {
    StoreOptions options;
    options.require_hdf5 = false;
    options.start_reaper = false;
    return options;
  }

  absl::StatusOr<std::unique_ptr<PendingImage>> Begin(
      const std::string& id, uint64_t size,
      const std::shared_ptr<Quota>& quota) {
    PushRequest request;
    request.image_id = id;
    request.size = size;
    request.checksum = internal::Checksum(std::string(size, 'x').data(), size);
    request.quota = quota;
    return store_.BeginPush(std::move(request));
  }

  // A whole push of `size` bytes of 'x'.
  absl::StatusOr<server::ImageRef> Push(const std::string& id, uint64_t size,
                                        const std::shared_ptr<Quota>& quota) {
    absl::StatusOr<std::unique_ptr<PendingImage>> pending =
        Begin(id, size, quota);
    if (!pending.ok()) return pending.status();
    const std::string bytes(size, 'x');
    if (absl::Status status = (*pending)->Append(bytes.data(), size);
        !status.ok()) {
      return status;
    }
    return (*pending)->Publish();
  }

  ImageStore store_;
  std::shared_ptr<Quota> alice_ = std::make_shared<Quota>("principal 'alice'");
  std::shared_ptr<Quota> bob_ = std::make_shared<Quota>("principal 'bob'");
};

TEST_F(QuotaTest, APushBeyondItsQuotaIsRefusedAtItsStartAndOthersAreServed) {
  alice_->SetLimits(10 * kKiB, Quota::kUnlimited);
  bob_->SetLimits(10 * kKiB, Quota::kUnlimited);
  ASSERT_TRUE(Push("a", 8 * kKiB, alice_).ok());
  EXPECT_EQ(alice_->used_bytes(), 8 * kKiB);

  absl::StatusOr<std::unique_ptr<PendingImage>> refused =
      Begin("b", 4 * kKiB, alice_);
  ASSERT_EQ(refused.status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_NE(refused.status().message().find(
                "principal 'alice' has 8.0 KiB of its 10.0 KiB memory quota"),
            std::string::npos)
      << refused.status();
  EXPECT_EQ(alice_->used_bytes(), 8 * kKiB);
  EXPECT_EQ(alice_->pending_pushes(), 0u);
  EXPECT_EQ(store_.Stats().reserved_bytes, 8 * kKiB);

  EXPECT_TRUE(Push("b", 4 * kKiB, bob_).ok());
  EXPECT_EQ(bob_->used_bytes(), 4 * kKiB);
}

TEST_F(QuotaTest, AGenerationStaysChargedToItsPusherUntilItsBufferIsFreed) {
  absl::StatusOr<server::ImageRef> first = Push("shared", 4 * kKiB, alice_);
  ASSERT_TRUE(first.ok()) << first.status();
  server::ImageRef reader = *first;
  first = absl::UnknownError("dropped");

  // Bob replaces it; Alice's generation is pinned by the reader.
  ASSERT_TRUE(Push("shared", 6 * kKiB, bob_).ok());
  EXPECT_EQ(alice_->used_bytes(), 4 * kKiB);
  EXPECT_EQ(bob_->used_bytes(), 6 * kKiB);
  reader.reset();
  EXPECT_EQ(alice_->used_bytes(), 0u);

  // Alice deletes Bob's image: Bob is no longer charged for it.
  ASSERT_TRUE(store_.Delete("shared", std::nullopt).ok());
  EXPECT_EQ(bob_->used_bytes(), 0u);
  EXPECT_EQ(store_.Stats().reserved_bytes, 0u);
}

TEST_F(QuotaTest, PendingPushesAreCappedAndEveryEndGivesItsPlaceBack) {
  alice_->SetLimits(Quota::kUnlimited, 2);
  auto one = Begin("one", kKiB, alice_);
  auto two = Begin("two", kKiB, alice_);
  ASSERT_TRUE(one.ok() && two.ok());
  auto three = Begin("three", kKiB, alice_);
  ASSERT_EQ(three.status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_NE(three.status().message().find("principal 'alice' has 2 pushes "
                                          "under way, its limit of 2"),
            std::string::npos)
      << three.status();
  EXPECT_TRUE(Begin("bobs", kKiB, bob_).ok());

  // Dropped: the place and the memory come back.
  one->reset();
  EXPECT_EQ(alice_->pending_pushes(), 1u);
  EXPECT_EQ(alice_->used_bytes(), kKiB);
  // A publish that fails (the bytes never came) gives back both too.
  EXPECT_EQ((*two)->Publish().status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(alice_->pending_pushes(), 0u);
  EXPECT_EQ(alice_->used_bytes(), 0u);

  // A publish that succeeds gives back the place and keeps the bytes.
  ASSERT_TRUE(Push("four", kKiB, alice_).ok());
  EXPECT_EQ(alice_->pending_pushes(), 0u);
  EXPECT_EQ(alice_->used_bytes(), kKiB);
}

TEST_F(QuotaTest, RefusedByTheStoresLimitAPushChargesItsQuotaNothing) {
  StoreOptions options = Options();
  options.max_memory_bytes = 4 * kKiB;
  ImageStore small(options);
  PushRequest request;
  request.image_id = "big";
  request.size = 8 * kKiB;
  request.quota = alice_;
  EXPECT_EQ(small.BeginPush(std::move(request)).status().code(),
            absl::StatusCode::kResourceExhausted);
  EXPECT_EQ(alice_->used_bytes(), 0u);
  EXPECT_EQ(alice_->pending_pushes(), 0u);
}

}  // namespace
}  // namespace h5depot
