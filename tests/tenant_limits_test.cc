// Limits per principal, so that one tenant cannot fill the server.
// Covered here: the store's Quota alone (what is charged to whom, and that
// everything is given back), and the auth file's LIMIT fields.
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "h5depot/internal/checksum.h"
#include "h5depot/internal/image_id.h"
#include "h5depot/internal/token.h"
#include "h5depot/server/image_store.h"
#include "server/src/access_rules_internal.h"

namespace h5depot {
namespace {

using server::AccessRules;
using server::ImageStore;
using server::PendingImage;
using server::Principal;
using server::PrincipalLimits;
using server::PushRequest;
using server::Quota;
using server::StoreOptions;

constexpr uint64_t kKiB = 1024;
constexpr uint64_t kMiB = 1024 * kKiB;

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
// --- The auth file's limits -------------------------------------------------

std::string Line(const std::string& name, const std::string& token,
                 const std::string& rest) {
  return absl::StrCat(name, " write ", internal::TokenHash(token), " ", rest,
                      "\n");
}

TEST(PrincipalLimitsTest, TheAuthFileGivesAPrincipalItsOwnLimits) {
  absl::StatusOr<std::unique_ptr<AccessRules>> rules =
      AccessRules::Parse(Line("a", "t1",
                              "runs/ max-memory=2G max-waits=5 calib/ "
                              "max-pending-pushes=unlimited") +
                             Line("b", "t2", "*"),
                         "auth");
  ASSERT_TRUE(rules.ok()) << rules.status();
  const Principal* a = (*rules)->Find("t1");
  ASSERT_NE(a, nullptr);
  EXPECT_EQ(a->prefixes, (std::vector<std::string>{"runs/", "calib/"}));
  PrincipalLimits defaults;
  defaults.max_memory_bytes = kMiB;
  defaults.max_pending_pushes = 3;
  defaults.max_waits = 7;
  const PrincipalLimits own = a->LimitsOver(defaults);
  EXPECT_EQ(own.max_memory_bytes, uint64_t{2} << 30);
  EXPECT_EQ(own.max_pending_pushes, PrincipalLimits::kUnlimited);
  EXPECT_EQ(own.max_waits, 5u);
  const PrincipalLimits b = (*rules)->Find("t2")->LimitsOver(defaults);
  EXPECT_EQ(b.max_memory_bytes, kMiB);
  EXPECT_EQ(b.max_pending_pushes, 3u);
  EXPECT_EQ(b.max_waits, 7u);
}

TEST(PrincipalLimitsTest, AMalformedLimitIsRefusedNamingItsLine) {
  struct Case {
    std::string rest;
    std::string says;
  };
  const std::vector<Case> cases = {
      {"max-disk=1G", "unknown limit 'max-disk'"},
      {"=1", "unknown limit ''"},
      {"max-memory=", "is not a byte size"},
      {"max-memory=lots", "is not a byte size"},
      {"max-waits=-1", "is not a whole number"},
      {"max-waits=1.5", "is not a whole number"},
      {"max-waits=99999999999999999999999", "is not a whole number"},
      {"max-pending-pushes=0", "must be at least 1"},
      {"max-waits=1 max-waits=2", "'max-waits' is given twice"},
  };
  for (const Case& c : cases) {
    absl::StatusOr<std::unique_ptr<AccessRules>> rules =
        AccessRules::Parse(Line("a", "t1", c.rest), "the file");
    ASSERT_FALSE(rules.ok()) << c.rest;
    EXPECT_EQ(rules.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_NE(rules.status().message().find("the file, line 1: "),
              std::string::npos)
        << rules.status().message();
    EXPECT_NE(rules.status().message().find(c.says), std::string::npos)
        << rules.status().message();
  }
}

// A LIMIT is told from a PREFIX by its '=', which no image id may hold.
TEST(PrincipalLimitsTest, NoImageIdCanBeMistakenForALimit) {
  for (const char* id : {"max-memory=2G", "runs/a=b", "="}) {
    EXPECT_EQ(internal::ValidateImageId(id).code(),
              absl::StatusCode::kInvalidArgument)
        << id;
  }
}

}  // namespace
}  // namespace h5depot
