// Limits per principal, so that one tenant cannot fill the server: each
// principal of the auth file has a memory quota, a cap on pushes under way
// and a cap on waiting fetches and stats. Covered here: the store's Quota
// alone (what is charged to whom, and that everything is given back), the
// auth file's LIMIT fields, and a real DepotServer with the real client,
// over gRPC and the data lane: a principal at a limit is refused with
// RESOURCE_EXHAUSTED before anything moves, while another is served, and a
// refusal changes nothing.
#include <sys/socket.h>
#include <sys/uio.h>

#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "gtest/gtest.h"
#include "h5depot/client.h"
#include "h5depot/internal/byte_size.h"
#include "h5depot/internal/checksum.h"
#include "h5depot/internal/image_id.h"
#include "h5depot/internal/lane_protocol.h"
#include "h5depot/internal/lane_socket.h"
#include "h5depot/internal/token.h"
#include "h5depot/server/image_store.h"
#include "h5depot/testing/hdf5_images.h"
#include "h5depot/testing/in_process_depot.h"
#include "h5depot/testing/subprocess.h"
#include "h5depot/testing/temp_dir.h"
#include "server/src/access_rules_internal.h"

namespace h5depot {
namespace {

namespace lane = internal::lane;
using server::AccessRules;
using server::ImageStore;
using server::PendingImage;
using server::Principal;
using server::PrincipalLimits;
using server::PushRequest;
using server::Quota;
using server::StoreOptions;
using testing::InProcessDepot;
using testing::MakeHdf5Image;
using testing::TempDir;

constexpr uint64_t kKiB = 1024;
constexpr uint64_t kMiB = 1024 * kKiB;

// A safety net against a server that never answers, not a measurement.
absl::Time IoDeadline() { return absl::Now() + absl::Seconds(30); }

// Waits until `condition` holds (it is looked at again as soon as this
// thread runs again); false if it still does not after 30 s.
bool Eventually(const std::function<bool()>& condition) {
  const absl::Time give_up = IoDeadline();
  while (!condition()) {
    if (absl::Now() > give_up) return false;
    std::this_thread::yield();
  }
  return true;
}

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

TEST(QuotaCutOffTest, APushCutOffForFallingBehindGivesItsQuotaBack) {
  absl::Time now = absl::Now();
  StoreOptions options;
  options.require_hdf5 = false;
  options.start_reaper = false;
  options.clock = [&now] { return now; };
  options.push_idle_timeout = absl::Seconds(1);
  ImageStore store(options);
  auto quota = std::make_shared<Quota>("principal 'alice'");
  PushRequest request;
  request.image_id = "slow";
  request.size = kKiB;
  request.quota = quota;
  // As a transport does: the cut-off drops the push.
  std::unique_ptr<PendingImage> pending;
  absl::StatusOr<std::unique_ptr<PendingImage>> begun = store.BeginPush(
      std::move(request), [&pending](const absl::Status&) { pending.reset(); });
  ASSERT_TRUE(begun.ok()) << begun.status();
  pending = *std::move(begun);
  EXPECT_EQ(quota->pending_pushes(), 1u);
  EXPECT_EQ(quota->used_bytes(), kKiB);

  now += absl::Seconds(2);
  EXPECT_EQ(store.CutOffStalledPushes(), 1u);
  EXPECT_EQ(pending, nullptr);
  EXPECT_EQ(quota->pending_pushes(), 0u);
  EXPECT_EQ(quota->used_bytes(), 0u);
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
      {"max-pending-pushes=0", "max-pending-pushes must be at least 1"},
      {"max-memory=0", "max-memory must be at least 1"},
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

// --- A real server ----------------------------------------------------------

enum class Path { kGrpc, kLane };

std::string PathName(const ::testing::TestParamInfo<Path>& info) {
  return info.param == Path::kGrpc ? "Grpc" : "Lane";
}

// A data lane connection over TCP that has presented a token.
class RawLane {
 public:
  static absl::StatusOr<RawLane> Open(int port, const std::string& token) {
    absl::StatusOr<lane::LaneSocket> socket =
        lane::ConnectTcp("127.0.0.1", port, IoDeadline());
    if (!socket.ok()) return socket.status();
    uint8_t hello[lane::kHelloBytes];
    lane::EncodeHello(hello, lane::kFeatureToken);
    if (auto sent = socket->Send(hello, sizeof(hello), IoDeadline());
        !sent.ok()) {
      return sent;
    }
    if (auto got = socket->Receive(hello, sizeof(hello), IoDeadline());
        !got.ok()) {
      return got;
    }
    if (auto decoded = lane::DecodeHello(hello); !decoded.ok()) return decoded;
    uint8_t header[lane::kTokenHeaderBytes];
    lane::EncodeTokenHeader(static_cast<uint16_t>(token.size()), header);
    iovec iov[2] = {{header, sizeof(header)},
                    {const_cast<char*>(token.data()), token.size()}};
    if (auto sent = socket->SendAll(iov, 2, IoDeadline()); !sent.ok()) {
      return sent;
    }
    return RawLane(*std::move(socket));
  }

  // Sends a request for `id` (a PUT of `size` bytes, or a GET waiting
  // `wait_ms`), and nothing after it.
  absl::Status Send(lane::Op op, std::string_view id, uint64_t size,
                    uint64_t wait_ms) {
    lane::RequestHeader header;
    header.op = op;
    header.size = size;
    header.wait_ms = wait_ms;
    header.image_id_bytes = static_cast<uint16_t>(id.size());
    uint8_t raw[lane::kRequestHeaderBytes];
    lane::EncodeRequestHeader(header, raw);
    iovec iov[2] = {{raw, sizeof(raw)},
                    {const_cast<char*>(id.data()), id.size()}};
    return socket_.SendAll(iov, 2, IoDeadline());
  }

  // The next response: its header and message.
  absl::StatusOr<std::pair<lane::Response, std::string>> Receive() {
    uint8_t raw[lane::kResponseHeaderBytes];
    if (auto got = socket_.Receive(raw, sizeof(raw), IoDeadline()); !got.ok()) {
      return got;
    }
    lane::Response response;
    if (auto decoded = lane::DecodeResponse(raw, &response); !decoded.ok()) {
      return decoded;
    }
    std::string message(response.message_bytes, '\0');
    if (auto got =
            socket_.Receive(message.data(), message.size(), IoDeadline());
        !got.ok()) {
      return got;
    }
    return std::make_pair(response, std::move(message));
  }

  // Begins a PUT of `size` (over the lane's eager size, so that the server
  // answers its start): OK once the server has begun it (Continue), else
  // the server's refusal.
  absl::Status BeginPut(std::string_view id, uint64_t size) {
    if (absl::Status sent = Send(lane::Op::kPut, id, size, 0); !sent.ok()) {
      return sent;
    }
    auto reply = Receive();
    if (!reply.ok()) return reply.status();
    if (reply->first.kind == lane::ResponseKind::kContinue) {
      return absl::OkStatus();
    }
    return absl::Status(reply->first.code, reply->second);
  }

  void Close() { socket_.Close(); }

 private:
  explicit RawLane(lane::LaneSocket socket) : socket_(std::move(socket)) {}
  lane::LaneSocket socket_;
};

class TenantLimitsTest : public ::testing::TestWithParam<Path> {
 protected:
  void SetUp() override {
    auto dir = TempDir::Create();
    ASSERT_TRUE(dir.ok()) << dir.status();
    dir_ = std::make_unique<TempDir>(*std::move(dir));
    alice_ = internal::NewToken();
    bob_ = internal::NewToken();
    carol_ = internal::NewToken();
  }

  // Starts the server with `options` and an auth file of alice and bob
  // (the defaults) and carol (`carol_limits`, her own).
  void StartServer(server::ServerOptions options,
                   const std::string& carol_limits = "") {
    options.auth_file = dir_->File("auth");
    ASSERT_TRUE(
        testing::WriteFile(
            options.auth_file,
            absl::StrCat(Line("alice", alice_, ""), Line("bob", bob_, ""),
                         Line("carol", carol_, carol_limits)))
            .ok());
    auto depot = InProcessDepot::Start(options);
    ASSERT_TRUE(depot.ok()) << depot.status();
    depot_ = *std::move(depot);
  }

  std::unique_ptr<Client> Connect(const std::string& token,
                                  bool lane = GetParam() == Path::kLane) {
    ClientOptions options;
    options.token = token;
    options.use_data_lane = lane;
    absl::StatusOr<std::unique_ptr<Client>> client = depot_->Connect(options);
    EXPECT_TRUE(client.ok()) << client.status();
    return client.ok() ? *std::move(client) : nullptr;
  }

  absl::StatusOr<RawLane> OpenLane(const std::string& token) {
    return RawLane::Open(depot_->server().data_lane_port(), token);
  }

  uint64_t Reserved() { return depot_->store().Stats().reserved_bytes; }

  std::unique_ptr<TempDir> dir_;
  std::string alice_, bob_, carol_;
  std::unique_ptr<InProcessDepot> depot_;
};

TEST_P(TenantLimitsTest, APrincipalFillingItsQuotaIsRefusedAndOthersServed) {
  const std::string image = MakeHdf5Image(256 * kKiB, 1);
  server::ServerOptions options;
  options.principal_max_memory_bytes = 3 * image.size();
  ASSERT_NO_FATAL_FAILURE(StartServer(options));
  std::unique_ptr<Client> alice = Connect(alice_);
  std::unique_ptr<Client> bob = Connect(bob_);
  ASSERT_TRUE(alice && bob);

  absl::StatusOr<ImageInfo> first;
  for (const char* id : {"a/0", "a/1", "a/2"}) {
    absl::StatusOr<ImageInfo> pushed =
        alice->Push(id, image.data(), image.size());
    ASSERT_TRUE(pushed.ok()) << pushed.status();
    if (!first.ok()) first = pushed;
  }
  absl::StatusOr<ImageInfo> refused =
      alice->Push("a/3", image.data(), image.size());
  ASSERT_EQ(refused.status().code(), absl::StatusCode::kResourceExhausted)
      << refused.status();
  const std::string quota = internal::HumanSize(3 * image.size());
  EXPECT_NE(refused.status().message().find(
                absl::StrCat("principal 'alice' has ", quota, " of its ", quota,
                             " memory quota in use")),
            std::string::npos)
      << refused.status();

  // Replacing needs room for both generations: refused, and the old one
  // stays current.
  const std::string other = MakeHdf5Image(256 * kKiB, 2);
  EXPECT_EQ(alice->Push("a/0", other.data(), other.size()).status().code(),
            absl::StatusCode::kResourceExhausted);
  absl::StatusOr<ImageInfo> kept = bob->Stat("a/0");
  ASSERT_TRUE(kept.ok()) << kept.status();
  EXPECT_EQ(kept->generation, first->generation);
  EXPECT_EQ(alice->Stat("a/3").status().code(), absl::StatusCode::kNotFound);

  // Bob is served, on his own quota.
  for (const char* id : {"b/0", "b/1", "b/2"}) {
    EXPECT_TRUE(bob->Push(id, image.data(), image.size()).ok()) << id;
  }

  // A delete gives the room back (nobody holds the image).
  ASSERT_TRUE(alice->Delete("a/1").ok());
  EXPECT_TRUE(alice->Push("a/3", image.data(), image.size()).ok());
}

TEST_P(TenantLimitsTest, AFailedPushGivesItsQuotaBack) {
  const std::string image = MakeHdf5Image(512 * kKiB, 3);
  server::ServerOptions options;
  options.principal_max_memory_bytes = image.size();
  ASSERT_NO_FATAL_FAILURE(StartServer(options));
  std::unique_ptr<Client> alice = Connect(alice_);
  ASSERT_NE(alice, nullptr);
  // Not HDF5: refused when it is published, after its bytes came.
  const std::string junk(image.size(), 'x');
  for (int i = 0; i < 3; ++i) {
    EXPECT_EQ(alice->Push("junk", junk.data(), junk.size()).status().code(),
              absl::StatusCode::kInvalidArgument);
  }
  absl::StatusOr<ImageInfo> pushed =
      alice->Push("image", image.data(), image.size());
  EXPECT_TRUE(pushed.ok()) << pushed.status();
}

// A push whose client goes away midway: its reservation comes back when
// the server drops it.
TEST_P(TenantLimitsTest, AnAbandonedPushGivesItsQuotaBack) {
  // Over the lane's eager size, so that the server answers the start.
  const std::string image = MakeHdf5Image(2 * kMiB, 4);
  server::ServerOptions options;
  options.principal_max_memory_bytes = image.size();
  ASSERT_NO_FATAL_FAILURE(StartServer(options));
  absl::StatusOr<RawLane> abandoned = OpenLane(alice_);
  ASSERT_TRUE(abandoned.ok()) << abandoned.status();
  ASSERT_TRUE(abandoned->BeginPut("image", image.size()).ok());
  std::unique_ptr<Client> alice = Connect(alice_);
  ASSERT_NE(alice, nullptr);
  EXPECT_EQ(alice->Push("image", image.data(), image.size()).status().code(),
            absl::StatusCode::kResourceExhausted);

  abandoned->Close();
  ASSERT_TRUE(Eventually([&] { return Reserved() == 0; }));
  absl::StatusOr<ImageInfo> pushed =
      alice->Push("image", image.data(), image.size());
  ASSERT_TRUE(pushed.ok()) << pushed.status();
}

TEST_P(TenantLimitsTest, PushesBeyondAPrincipalsCapAreRefusedOnEveryTransport) {
  constexpr uint64_t kSize = 2 * kMiB;
  server::ServerOptions options;
  options.principal_max_pending_pushes = 2;
  ASSERT_NO_FATAL_FAILURE(StartServer(options));
  std::vector<RawLane> held;
  for (int i = 0; i < 2; ++i) {
    absl::StatusOr<RawLane> lane = OpenLane(alice_);
    ASSERT_TRUE(lane.ok()) << lane.status();
    ASSERT_TRUE(lane->BeginPut(absl::StrCat("held/", i), kSize).ok());
    held.push_back(*std::move(lane));
  }
  const std::string image = MakeHdf5Image(64 * kKiB, 5);
  absl::StatusOr<RawLane> third = OpenLane(alice_);
  ASSERT_TRUE(third.ok()) << third.status();
  absl::Status refused = third->BeginPut("held/2", kSize);
  EXPECT_EQ(refused.code(), absl::StatusCode::kResourceExhausted) << refused;
  EXPECT_NE(refused.message().find(
                "principal 'alice' has 2 pushes under way, its limit of 2"),
            std::string::npos)
      << refused;
  std::unique_ptr<Client> alice = Connect(alice_);
  std::unique_ptr<Client> bob = Connect(bob_);
  ASSERT_TRUE(alice && bob);
  EXPECT_EQ(alice->Push("small", image.data(), image.size()).status().code(),
            absl::StatusCode::kResourceExhausted);
  EXPECT_TRUE(bob->Push("small", image.data(), image.size()).ok());

  // A push that ends gives its place back.
  held[0].Close();
  absl::StatusOr<ImageInfo> pushed;
  ASSERT_TRUE(Eventually([&] {
    pushed = alice->Push("small", image.data(), image.size());
    return !absl::IsResourceExhausted(pushed.status());
  }));
  EXPECT_TRUE(pushed.ok()) << pushed.status();
}

TEST_P(TenantLimitsTest, WaitsBeyondAPrincipalsCapAreRefusedOnEveryTransport) {
  server::ServerOptions options;
  options.principal_max_waits = 2;
  ASSERT_NO_FATAL_FAILURE(StartServer(options));
  constexpr uint64_t kTenMinutesMs = 600 * 1000;
  std::vector<RawLane> waiters;
  for (int i = 0; i < 2; ++i) {
    absl::StatusOr<RawLane> lane = OpenLane(alice_);
    ASSERT_TRUE(lane.ok()) << lane.status();
    ASSERT_TRUE(
        lane->Send(lane::Op::kGet, absl::StrCat("later/", i), 0, kTenMinutesMs)
            .ok());
    waiters.push_back(*std::move(lane));
  }
  ASSERT_TRUE(
      Eventually([&] { return depot_->store().Stats().pending_waits == 2; }));

  std::unique_ptr<Client> alice = Connect(alice_);
  std::unique_ptr<Client> bob = Connect(bob_);
  ASSERT_TRUE(alice && bob);
  FetchOptions wait;
  wait.wait = absl::Seconds(30);
  absl::Status refused = alice->Fetch("later/2", wait).status();
  EXPECT_EQ(refused.code(), absl::StatusCode::kResourceExhausted) << refused;
  EXPECT_NE(refused.message().find("principal 'alice' is at its limit of 2 "
                                   "fetches and stats waiting"),
            std::string::npos)
      << refused;
  EXPECT_EQ(alice->Stat("later/2", absl::Seconds(30)).status().code(),
            absl::StatusCode::kResourceExhausted);

  // Bob waits, and is answered when the image comes.
  absl::StatusOr<RawLane> bobs = OpenLane(bob_);
  ASSERT_TRUE(bobs.ok()) << bobs.status();
  ASSERT_TRUE(bobs->Send(lane::Op::kGet, "later/0", 0, kTenMinutesMs).ok());
  ASSERT_TRUE(
      Eventually([&] { return depot_->store().Stats().pending_waits == 3; }));
  const std::string image = MakeHdf5Image(64 * kKiB, 6);
  absl::StatusOr<ImageInfo> pushed =
      bob->Push("later/0", image.data(), image.size());
  ASSERT_TRUE(pushed.ok()) << pushed.status();
  auto woken = bobs->Receive();
  ASSERT_TRUE(woken.ok()) << woken.status();
  EXPECT_EQ(woken->first.code, absl::StatusCode::kOk) << woken->second;
  EXPECT_EQ(woken->first.generation, pushed->generation);

  // A wait that need not wait is answered at the cap; an ended wait gives
  // its place back.
  auto alices = waiters[0].Receive();
  ASSERT_TRUE(alices.ok()) << alices.status();
  EXPECT_EQ(alices->first.code, absl::StatusCode::kOk);
  EXPECT_TRUE(alice->Fetch("later/0", wait).ok());
  EXPECT_EQ(alice->Stat("later/9", absl::Milliseconds(1)).status().code(),
            absl::StatusCode::kDeadlineExceeded);
}

TEST_P(TenantLimitsTest, TheAuthFileOverridesTheFlagsForOnePrincipal) {
  const std::string image = MakeHdf5Image(512 * kKiB, 7);
  server::ServerOptions options;
  options.principal_max_memory_bytes = 256 * kKiB;
  ASSERT_NO_FATAL_FAILURE(StartServer(options, "max-memory=1M"));
  std::unique_ptr<Client> alice = Connect(alice_);
  std::unique_ptr<Client> carol = Connect(carol_);
  ASSERT_TRUE(alice && carol);
  EXPECT_EQ(alice->Push("x", image.data(), image.size()).status().code(),
            absl::StatusCode::kResourceExhausted);
  EXPECT_TRUE(carol->Push("x", image.data(), image.size()).ok());
  EXPECT_EQ(carol->Push("y", image.data(), image.size()).status().code(),
            absl::StatusCode::kResourceExhausted);
}

INSTANTIATE_TEST_SUITE_P(Paths, TenantLimitsTest,
                         ::testing::Values(Path::kGrpc, Path::kLane), PathName);

// Without an auth file there are no principals (every caller on a host
// would be one peer address): only the server's limits hold.
TEST(NoAuthFileTest, OnlyTheServersLimitsHold) {
  server::ServerOptions options;
  options.principal_max_memory_bytes = kKiB;
  options.principal_max_pending_pushes = 1;
  auto depot = InProcessDepot::Start(options);
  ASSERT_TRUE(depot.ok()) << depot.status();
  // Two pushes under way at once, each over the memory "quota": both begin.
  std::vector<lane::LaneSocket> held;
  for (int i = 0; i < 2; ++i) {
    absl::StatusOr<lane::LaneSocket> socket = lane::ConnectTcp(
        "127.0.0.1", (*depot)->server().data_lane_port(), IoDeadline());
    ASSERT_TRUE(socket.ok()) << socket.status();
    uint8_t hello[lane::kHelloBytes];
    lane::EncodeHello(hello);
    ASSERT_TRUE(socket->Send(hello, sizeof(hello), IoDeadline()).ok());
    ASSERT_TRUE(socket->Receive(hello, sizeof(hello), IoDeadline()).ok());
    lane::RequestHeader header;
    header.op = lane::Op::kPut;
    header.size = 2 * kMiB;
    const std::string id = absl::StrCat("held/", i);
    header.image_id_bytes = static_cast<uint16_t>(id.size());
    uint8_t raw[lane::kRequestHeaderBytes];
    lane::EncodeRequestHeader(header, raw);
    iovec iov[2] = {{raw, sizeof(raw)},
                    {const_cast<char*>(id.data()), id.size()}};
    ASSERT_TRUE(socket->SendAll(iov, 2, IoDeadline()).ok());
    uint8_t reply[lane::kResponseHeaderBytes];
    ASSERT_TRUE(socket->Receive(reply, sizeof(reply), IoDeadline()).ok());
    lane::Response response;
    ASSERT_TRUE(lane::DecodeResponse(reply, &response).ok());
    EXPECT_EQ(response.kind, lane::ResponseKind::kContinue) << i;
    held.push_back(*std::move(socket));
  }
  EXPECT_EQ((*depot)->store().Stats().reserved_bytes, 4 * kMiB);
  auto client = (*depot)->Connect();
  ASSERT_TRUE(client.ok()) << client.status();
  const std::string image = MakeHdf5Image(64 * kKiB, 8);
  EXPECT_TRUE((*client)->Push("free", image.data(), image.size()).ok());
}

TEST(H5depotdFlagsTest, NoPendingPushesPerPrincipalIsRefused) {
  testing::CommandResult result =
      testing::RunCommand({testing::H5depotdPath(), "--listen=127.0.0.1:0",
                           "--principal-max-pending-pushes=0"});
  EXPECT_EQ(result.exit_code, 1);
  EXPECT_NE(result.stderr_text.find("--principal-max-pending-pushes must be "
                                    "at least 1"),
            std::string::npos)
      << result.stderr_text;
}

}  // namespace
}  // namespace h5depot
