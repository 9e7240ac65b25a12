// Tokens with scopes, end to end against a real h5depotd started with an
// --auth-file: every operation on every transport is checked by the same
// rule (UNAUTHENTICATED without a known token, PERMISSION_DENIED outside the
// role or the prefixes), a refusal changes nothing and reveals nothing, and
// the C++ client, the C API and the CLI present their tokens.
#include <grpcpp/generic/generic_stub.h>
#include <grpcpp/grpcpp.h>
#include <hdf5.h>

#include <chrono>
#include <cstdlib>
#include <future>
#include <memory>
#include <string>
#include <vector>

#include "H5FDremote.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "gtest/gtest.h"
#include "h5depot/client.h"
#include "h5depot/h5depot.h"
#include "h5depot/internal/lane_protocol.h"
#include "h5depot/internal/lane_socket.h"
#include "h5depot/internal/token.h"
#include "h5depot/testing/hdf5_images.h"
#include "h5depot/testing/server_process.h"
#include "h5depot/testing/subprocess.h"
#include "h5depot/testing/temp_dir.h"
#include "server/src/access_rules_internal.h"

namespace h5depot {
namespace {

using server::AccessRules;
using server::Role;
using testing::CommandOptions;
using testing::CommandResult;
using testing::H5depotCliPath;
using testing::RunCommand;
using testing::ServerProcess;
using testing::ServerProcessOptions;
using testing::TempDir;

// --- The auth file ----------------------------------------------------------

std::string HashLine(const std::string& name, const std::string& role,
                     const std::string& token, const std::string& prefixes) {
  return absl::StrCat(name, " ", role, " ", internal::TokenHash(token), " ",
                      prefixes, "\n");
}

TEST(AccessRulesTest, FindsEachPrincipalByItsTokenOnly) {
  const std::string text = absl::StrCat(
      "# comment\n\n", HashLine("ingest", "write", "tok-a", "runs/ calib/"),
      HashLine("viewer", "read", "tok-b", "*"), "\tops admin ",
      internal::TokenHash("tok-c"), "\n");
  absl::StatusOr<std::unique_ptr<AccessRules>> rules =
      AccessRules::Parse(text, "auth");
  ASSERT_TRUE(rules.ok()) << rules.status();
  EXPECT_EQ((*rules)->size(), 3u);
  const server::Principal* ingest = (*rules)->Find("tok-a");
  ASSERT_NE(ingest, nullptr);
  EXPECT_EQ(ingest->name, "ingest");
  EXPECT_EQ(ingest->role, Role::kWrite);
  EXPECT_TRUE(ingest->MayTouch("runs/1.h5"));
  EXPECT_TRUE(ingest->MayTouch("calib/x"));
  EXPECT_FALSE(ingest->MayTouch("run"));
  EXPECT_FALSE(ingest->MayTouch("other/runs/1.h5"));
  ASSERT_NE((*rules)->Find("tok-b"), nullptr);
  EXPECT_TRUE((*rules)->Find("tok-b")->MayTouch("anything"));
  ASSERT_NE((*rules)->Find("tok-c"), nullptr);
  EXPECT_EQ((*rules)->Find("tok-c")->role, Role::kAdmin);
  EXPECT_EQ((*rules)->Find("tok-"), nullptr);
  EXPECT_EQ((*rules)->Find(internal::TokenHash("tok-a")), nullptr);
}

TEST(AccessRulesTest, AMalformedFileIsRefusedNamingItsLine) {
  const std::string good = HashLine("a", "read", "t1", "");
  struct Case {
    std::string text;
    std::string says;
  };
  const std::vector<Case> cases = {
      {"", "names no principal"},
      {"# only comments\n", "names no principal"},
      {"a read\n", "line 1: too few fields"},
      {good + "b reader " + internal::TokenHash("t2") + "\n",
       "line 2: unknown role 'reader'"},
      {good + "b read sha256:abc\n", "line 2: the token hash"},
      {good + "b read " + internal::TokenHash("t2").substr(7) + "\n",
       "line 2: the token hash"},
      {good + HashLine("a", "write", "t2", ""),
       "line 2: principal 'a' is named twice"},
      {good + HashLine("b", "write", "t1", ""), "line 2: this token hash"},
      {HashLine("a b", "read", "t1", ""), "line 1: unknown role 'b'"},
      {HashLine("a!", "read", "t1", ""), "line 1: a name is made of"},
      {HashLine("a", "read", "t1", "runs/ x?y"), "line 1: prefix 'x?y'"},
  };
  for (const Case& c : cases) {
    absl::StatusOr<std::unique_ptr<AccessRules>> rules =
        AccessRules::Parse(c.text, "the file");
    ASSERT_FALSE(rules.ok()) << c.text;
    EXPECT_EQ(rules.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_NE(rules.status().message().find(c.says), std::string::npos)
        << rules.status().message();
  }
}

TEST(TokenTest, TokensAreRandomPrintableAndHashedOneWay) {
  const std::string a = internal::NewToken();
  const std::string b = internal::NewToken();
  EXPECT_NE(a, b);
  EXPECT_EQ(a.size(), 43u);
  EXPECT_TRUE(internal::ValidateToken(a).ok());
  EXPECT_EQ(internal::TokenHash("abc"),
            "sha256:"
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
  EXPECT_FALSE(internal::ValidateToken("").ok());
  EXPECT_FALSE(internal::ValidateToken("has space").ok());
  EXPECT_FALSE(internal::ValidateToken("line\n").ok());
  EXPECT_FALSE(internal::ValidateToken(std::string(2000, 'x')).ok());
}

// --- A server with an auth file -------------------------------------------

enum class Path { kGrpc, kLaneTcp, kLaneUnix };

std::string PathName(const ::testing::TestParamInfo<Path>& info) {
  switch (info.param) {
    case Path::kGrpc:
      return "Grpc";
    case Path::kLaneTcp:
      return "LaneTcp";
    case Path::kLaneUnix:
      return "LaneUnix";
  }
  return "Unknown";
}

class AuthTest : public ::testing::TestWithParam<Path> {
 protected:
  void SetUp() override {
    // The tests say which token each client has; the environment does not.
    unsetenv("H5DEPOT_TOKEN");
    unsetenv("H5DEPOT_TOKEN_FILE");
    auto dir = TempDir::Create();
    ASSERT_TRUE(dir.ok()) << dir.status();
    dir_ = std::make_unique<TempDir>(*std::move(dir));
    writer_token_ = internal::NewToken();
    reader_token_ = internal::NewToken();
    admin_token_ = internal::NewToken();
    auth_file_ = dir_->File("auth");
    ASSERT_TRUE(
        testing::WriteFile(
            auth_file_,
            absl::StrCat(
                HashLine("writer", "write", writer_token_, "runs/ shared/"),
                HashLine("reader", "read", reader_token_, "runs/"),
                HashLine("admin", "admin", admin_token_, "*")))
            .ok());
    ServerProcessOptions options;
    options.unix_socket = true;
    options.extra_flags = {absl::StrCat("--auth-file=", auth_file_)};
    auto server = ServerProcess::Start(options);
    ASSERT_TRUE(server.ok()) << server.status();
    server_ = *std::move(server);
  }

  std::string target() const {
    return GetParam() == Path::kLaneUnix ? server_->unix_target()
                                         : server_->tcp_target();
  }

  absl::StatusOr<std::unique_ptr<Client>> ConnectWith(
      const std::string& token) const {
    ClientOptions options;
    options.token = token;
    options.use_data_lane = GetParam() != Path::kGrpc;
    return Client::Connect(target(), options);
  }

  std::unique_ptr<Client> MustConnect(const std::string& token) const {
    absl::StatusOr<std::unique_ptr<Client>> client = ConnectWith(token);
    EXPECT_TRUE(client.ok()) << client.status();
    return client.ok() ? *std::move(client) : nullptr;
  }

  // A GET of `id` on a new data lane connection that presents `token`
  // (none if empty): the code of the server's answer.
  absl::StatusOr<absl::StatusCode> GetOverTheLane(const std::string& token,
                                                  const std::string& id) const;

  std::unique_ptr<TempDir> dir_;
  std::string writer_token_, reader_token_, admin_token_, auth_file_;
  std::unique_ptr<ServerProcess> server_;
};

TEST_P(AuthTest, WithoutAKnownTokenNothingIsServed) {
  for (const std::string& token : {std::string(), std::string("not-a-token")}) {
    absl::StatusOr<std::unique_ptr<Client>> client = ConnectWith(token);
    ASSERT_FALSE(client.ok());
    EXPECT_EQ(client.status().code(), absl::StatusCode::kUnauthenticated)
        << client.status();
  }
}

TEST_P(AuthTest, EachRoleDoesWhatItMayAndARefusalChangesNothing) {
  const std::string image = testing::MakeHdf5Image(100 << 10, 1);
  const std::string other = testing::MakeHdf5Image(300 << 10, 2);
  std::unique_ptr<Client> writer = MustConnect(writer_token_);
  std::unique_ptr<Client> reader = MustConnect(reader_token_);
  ASSERT_NE(writer, nullptr);
  ASSERT_NE(reader, nullptr);

  absl::StatusOr<ImageInfo> pushed =
      writer->Push("runs/1.h5", image.data(), image.size());
  ASSERT_TRUE(pushed.ok()) << pushed.status();

  // Reading is the reader's.
  absl::StatusOr<FetchedImage> fetched = reader->Fetch("runs/1.h5");
  ASSERT_TRUE(fetched.ok()) << fetched.status();
  EXPECT_EQ(fetched->buffer.size(), image.size());
  EXPECT_TRUE(reader->Stat("runs/1.h5").ok());
  char first[8];
  EXPECT_TRUE(reader->Read("runs/1.h5", 0, 0, first, sizeof(first)).ok());

  // Writing is not, over whichever path the bytes would take.
  absl::StatusOr<ImageInfo> replaced =
      reader->Push("runs/1.h5", other.data(), other.size());
  EXPECT_EQ(replaced.status().code(), absl::StatusCode::kPermissionDenied)
      << replaced.status();
  EXPECT_NE(replaced.status().message().find("role read"), std::string::npos)
      << replaced.status();
  EXPECT_EQ(reader->Delete("runs/1.h5").code(),
            absl::StatusCode::kPermissionDenied);
  absl::StatusOr<ImageInfo> after = writer->Stat("runs/1.h5");
  ASSERT_TRUE(after.ok()) << after.status();
  EXPECT_EQ(after->generation, pushed->generation);
  EXPECT_EQ(after->size, image.size());

  EXPECT_TRUE(writer->Delete("runs/1.h5").ok());
}

// A stream's name is authorised as an image id: the reader reads it,
// only the writer appends, finishes or deletes it, and a refusal changes
// nothing.
TEST_P(AuthTest, StreamsFollowTheRolesOfTheirNames) {
  const std::string step = testing::MakeHdf5Image(4 << 10, 3);
  std::unique_ptr<Client> writer = MustConnect(writer_token_);
  std::unique_ptr<Client> reader = MustConnect(reader_token_);
  ASSERT_NE(writer, nullptr);
  ASSERT_NE(reader, nullptr);
  const std::string stream = "runs/stream";
  NextOptions at_once;
  EXPECT_TRUE(absl::IsDeadlineExceeded(
      reader->Next(stream, "g", at_once).status()));  // makes the group
  EXPECT_EQ(reader->Append(stream, step.data(), step.size()).status().code(),
            absl::StatusCode::kPermissionDenied);
  ASSERT_TRUE(writer->Append(stream, step.data(), step.size()).ok());
  EXPECT_EQ(reader->FinishStream(stream).status().code(),
            absl::StatusCode::kPermissionDenied);
  EXPECT_EQ(reader->DeleteStreamGroup(stream, "g").code(),
            absl::StatusCode::kPermissionDenied);
  EXPECT_EQ(reader->DeleteStream(stream).code(),
            absl::StatusCode::kPermissionDenied);
  absl::StatusOr<StreamInfo> info = writer->StatStream(stream);
  ASSERT_TRUE(info.ok()) << info.status();
  EXPECT_EQ(info->appended_steps, 1u);
  EXPECT_FALSE(info->finished);
  EXPECT_EQ(info->groups.size(), 1u);

  absl::StatusOr<StreamStep> taken = reader->Next(stream, "g", at_once);
  ASSERT_TRUE(taken.ok()) << taken.status();
  EXPECT_EQ(taken->step, 0u);
  EXPECT_TRUE(reader->Ack(stream, "g", taken->step, taken->consumer).ok());
  EXPECT_EQ(writer->DeleteStream("elsewhere/stream").code(),
            absl::StatusCode::kPermissionDenied);
  EXPECT_TRUE(writer->DeleteStream(stream).ok());
}

TEST_P(AuthTest, AnIdOutsideThePrefixesIsRefusedWhetherOrNotItExists) {
  const std::string image = testing::MakeHdf5Image(64 << 10, 3);
  std::unique_ptr<Client> admin = MustConnect(admin_token_);
  std::unique_ptr<Client> writer = MustConnect(writer_token_);
  ASSERT_NE(admin, nullptr);
  ASSERT_NE(writer, nullptr);
  ASSERT_TRUE(admin->Push("secret/exists", image.data(), image.size()).ok());

  for (const char* id : {"secret/exists", "secret/absent"}) {
    SCOPED_TRACE(id);
    absl::Status fetch = writer->Fetch(id).status();
    absl::Status stat = writer->Stat(id).status();
    absl::Status push = writer->Push(id, image.data(), image.size()).status();
    absl::Status remove = writer->Delete(id);
    for (const absl::Status& status : {fetch, stat, push, remove}) {
      EXPECT_EQ(status.code(), absl::StatusCode::kPermissionDenied) << status;
      EXPECT_NE(status.message().find("outside the principal's image id "
                                      "prefixes"),
                std::string::npos)
          << status;
    }
    FetchOptions wait;
    wait.wait = absl::Seconds(30);
    EXPECT_EQ(writer->Fetch(id, wait).status().code(),
              absl::StatusCode::kPermissionDenied);
  }
  // The image is as the admin left it.
  absl::StatusOr<FetchedImage> kept = admin->Fetch("secret/exists");
  ASSERT_TRUE(kept.ok()) << kept.status();
  EXPECT_EQ(kept->buffer.size(), image.size());
}

TEST_P(AuthTest, AListShowsOnlyWhatThePrincipalMaySee) {
  const std::string image = testing::MakeHdf5Image(16 << 10, 4);
  std::unique_ptr<Client> admin = MustConnect(admin_token_);
  std::unique_ptr<Client> reader = MustConnect(reader_token_);
  ASSERT_NE(admin, nullptr);
  ASSERT_NE(reader, nullptr);
  for (const char* id : {"runs/a", "runs/b", "secret/c", "shared/d", "z"}) {
    ASSERT_TRUE(admin->Push(id, image.data(), image.size()).ok()) << id;
  }
  auto ids = [](Client& client, const std::string& prefix) {
    std::vector<std::string> seen;
    ListOptions options;
    options.prefix = prefix;
    options.page_size = 1;  // the cut applies page by page
    do {
      absl::StatusOr<ListPage> page = client.List(options);
      EXPECT_TRUE(page.ok()) << page.status();
      if (!page.ok()) break;
      for (const ImageInfo& info : page->images) seen.push_back(info.image_id);
      options.page_token = page->next_page_token;
    } while (!options.page_token.empty());
    return seen;
  };
  EXPECT_EQ(ids(*reader, ""), (std::vector<std::string>{"runs/a", "runs/b"}));
  EXPECT_EQ(ids(*reader, "secret/"), std::vector<std::string>{});
  EXPECT_EQ(ids(*admin, "").size(), 5u);
}

// Probes need no token: the standard health service stays open.
TEST_P(AuthTest, TheHealthServiceAnswersWithoutAToken) {
  if (GetParam() != Path::kGrpc) GTEST_SKIP() << "a gRPC test";
  grpc::GenericStub stub(grpc::CreateChannel(
      server_->tcp_target(), grpc::InsecureChannelCredentials()));
  grpc::ClientContext context;
  context.set_deadline(std::chrono::system_clock::now() +
                       std::chrono::seconds(30));
  grpc::Slice empty("", 0);
  grpc::ByteBuffer request(&empty, 1);  // service "": the whole server
  grpc::ByteBuffer response;
  std::promise<grpc::Status> done;
  stub.UnaryCall(&context, "/grpc.health.v1.Health/Check", grpc::StubOptions(),
                 &request, &response,
                 [&](grpc::Status status) { done.set_value(status); });
  const grpc::Status status = done.get_future().get();
  EXPECT_TRUE(status.ok()) << status.error_message();
}

TEST_P(AuthTest, ATokenIsNeverSentToAnotherHost) {
  ClientOptions options;
  options.token = writer_token_;
  options.connect_timeout = absl::Seconds(30);
  for (const char* elsewhere : {"192.0.2.1:7878", "example.invalid:7878"}) {
    const absl::Time start = absl::Now();
    absl::StatusOr<std::unique_ptr<Client>> client =
        Client::Connect(elsewhere, options);
    ASSERT_FALSE(client.ok());
    EXPECT_EQ(client.status().code(), absl::StatusCode::kFailedPrecondition)
        << client.status();
    // Refused before any connection was tried.
    EXPECT_LT(absl::Now() - start, absl::Seconds(5));
  }
}

// The data lane itself, byte by byte: a connection without a token gets
// each request refused, one that presented a token is served as its
// principal. (Clients fall back to gRPC when the lane fails, so the tests
// above alone could not tell.)
TEST_P(AuthTest, TheDataLaneAuthorisesEachRequestAsItsConnectionsToken) {
  if (GetParam() == Path::kGrpc) GTEST_SKIP() << "a lane test";
  // The code of the answer to a GET of `id`; UNKNOWN if the exchange
  // failed (the test's failure then says why).
  auto get = [&](const std::string& token,
                 const std::string& id) -> absl::StatusCode {
    absl::StatusOr<absl::StatusCode> code = GetOverTheLane(token, id);
    EXPECT_TRUE(code.ok()) << code.status();
    return code.ok() ? *code : absl::StatusCode::kUnknown;
  };
  EXPECT_EQ(get("", "runs/absent"), absl::StatusCode::kUnauthenticated);
  EXPECT_EQ(get("wrong-token", "runs/absent"),
            absl::StatusCode::kUnauthenticated);
  EXPECT_EQ(get(reader_token_, "runs/absent"), absl::StatusCode::kNotFound);
  EXPECT_EQ(get(reader_token_, "secret/absent"),
            absl::StatusCode::kPermissionDenied);
}

absl::StatusOr<absl::StatusCode> AuthTest::GetOverTheLane(
    const std::string& token, const std::string& id) const {
  const absl::Time deadline = absl::Now() + absl::Seconds(30);
  absl::StatusOr<internal::lane::LaneSocket> socket =
      GetParam() == Path::kLaneUnix
          ? internal::lane::ConnectUnix(server_->data_lane_unix_path(),
                                        deadline)
          : internal::lane::ConnectTcp("127.0.0.1", server_->data_lane_port(),
                                       deadline);
  if (!socket.ok()) return socket.status();
  namespace lane = internal::lane;
  uint8_t hello[lane::kHelloBytes];
  lane::EncodeHello(hello, token.empty() ? 0 : lane::kFeatureToken);
  if (auto sent = socket->Send(hello, sizeof(hello), deadline); !sent.ok()) {
    return sent;
  }
  uint16_t agreed = 0;
  if (auto got = socket->Receive(hello, sizeof(hello), deadline); !got.ok()) {
    return got;
  }
  if (auto decoded = lane::DecodeHello(hello, &agreed); !decoded.ok()) {
    return decoded;
  }
  std::string request;
  if (!token.empty()) {
    EXPECT_NE(agreed & lane::kFeatureToken, 0);
    uint8_t header[lane::kTokenHeaderBytes];
    lane::EncodeTokenHeader(static_cast<uint16_t>(token.size()), header);
    request.append(reinterpret_cast<const char*>(header), sizeof(header));
    request += token;
  }
  lane::RequestHeader get_header;
  get_header.op = lane::Op::kGet;
  get_header.image_id_bytes = static_cast<uint16_t>(id.size());
  uint8_t raw[lane::kRequestHeaderBytes];
  lane::EncodeRequestHeader(get_header, raw);
  request.append(reinterpret_cast<const char*>(raw), sizeof(raw));
  request += id;
  if (auto sent = socket->Send(request.data(), request.size(), deadline);
      !sent.ok()) {
    return sent;
  }
  uint8_t reply[lane::kResponseHeaderBytes];
  if (auto got = socket->Receive(reply, sizeof(reply), deadline); !got.ok()) {
    return got;
  }
  lane::Response response;
  if (auto decoded = lane::DecodeResponse(reply, &response); !decoded.ok()) {
    return decoded;
  }
  return response.code;
}

INSTANTIATE_TEST_SUITE_P(Paths, AuthTest,
                         ::testing::Values(Path::kGrpc, Path::kLaneTcp,
                                           Path::kLaneUnix),
                         PathName);

// --- The C API and the command line ---------------------------------------

class AuthToolsTest : public AuthTest {};

TEST_P(AuthToolsTest, TheCApiPresentsItsToken) {
  h5depot_connect_options options{};
  options.disable_data_lane = GetParam() == Path::kGrpc;
  h5depot_client* none = h5depot_connect_ex(target().c_str(), &options);
  EXPECT_EQ(none, nullptr);
  EXPECT_EQ(h5depot_errcode(), H5DEPOT_UNAUTHENTICATED) << h5depot_errmsg();

  options.token = writer_token_.c_str();
  h5depot_client* client = h5depot_connect_ex(target().c_str(), &options);
  ASSERT_NE(client, nullptr) << h5depot_errmsg();
  const std::string image = testing::MakeHdf5Image(8 << 10, 5);
  uint64_t generation = 0;
  EXPECT_EQ(h5depot_push_buffer(client, "runs/c.h5", image.data(), image.size(),
                                &generation),
            H5DEPOT_OK)
      << h5depot_errmsg();
  EXPECT_EQ(h5depot_push_buffer(client, "elsewhere.h5", image.data(),
                                image.size(), &generation),
            H5DEPOT_PERMISSION_DENIED);
  h5depot_disconnect(client);
}

TEST_P(AuthToolsTest, TheCommandLineTakesItsTokenFromTheEnvironment) {
  // A token made by the CLI itself, added to a fresh server's file.
  CommandResult made =
      RunCommand({H5depotCliPath(), "new-token", "cli", "write", "runs/"});
  ASSERT_EQ(made.exit_code, 0) << made.stderr_text;
  std::vector<std::string> lines =
      absl::StrSplit(made.stdout_text, '\n', absl::SkipEmpty());
  ASSERT_EQ(lines.size(), 2u) << made.stdout_text;
  const std::string& token = lines[0];
  EXPECT_TRUE(internal::ValidateToken(token).ok());
  EXPECT_EQ(lines[1],
            absl::StrCat("cli write ", internal::TokenHash(token), " runs/"));
  const std::string auth = dir_->File("cli-auth");
  ASSERT_TRUE(testing::WriteFile(auth, lines[1] + "\n").ok());
  ServerProcessOptions server_options;
  server_options.unix_socket = true;
  server_options.extra_flags = {absl::StrCat("--auth-file=", auth)};
  auto server = ServerProcess::Start(server_options);
  ASSERT_TRUE(server.ok()) << server.status();
  const std::string cli_target = GetParam() == Path::kLaneUnix
                                     ? (*server)->unix_target()
                                     : (*server)->tcp_target();
  const std::string file = dir_->File("in.h5");
  ASSERT_TRUE(
      testing::WriteFile(file, testing::MakeHdf5Image(4 << 10, 6)).ok());

  CommandOptions without;
  without.env = {{"H5DEPOT_TOKEN", std::nullopt},
                 {"H5DEPOT_TOKEN_FILE", std::nullopt}};
  CommandResult refused =
      RunCommand({H5depotCliPath(), "--server", cli_target, "ls"}, without);
  EXPECT_EQ(refused.exit_code, 9) << refused.stderr_text;
  EXPECT_NE(refused.stderr_text.find("needs a token"), std::string::npos)
      << refused.stderr_text;

  CommandOptions with_token = without;
  with_token.env["H5DEPOT_TOKEN"] = token;
  CommandResult put = RunCommand({H5depotCliPath(), "--server", cli_target,
                                  "put", file, "--id", "runs/in.h5"},
                                 with_token);
  EXPECT_EQ(put.exit_code, 0) << put.stderr_text;
  CommandResult denied = RunCommand({H5depotCliPath(), "--server", cli_target,
                                     "put", file, "--id", "other/in.h5"},
                                    with_token);
  EXPECT_EQ(denied.exit_code, 9) << denied.stderr_text;

  const std::string token_file = dir_->File("token");
  ASSERT_TRUE(testing::WriteFile(token_file, token + "\n").ok());
  CommandOptions with_file = without;
  with_file.env["H5DEPOT_TOKEN_FILE"] = token_file;
  CommandResult listed =
      RunCommand({H5depotCliPath(), "--server", cli_target, "ls"}, with_file);
  EXPECT_EQ(listed.exit_code, 0) << listed.stderr_text;
  EXPECT_NE(listed.stdout_text.find("runs/in.h5"), std::string::npos)
      << listed.stdout_text;
}

TEST_P(AuthToolsTest, TheRemoteDriverTakesItsTokenFromTheEnvironment) {
  std::unique_ptr<Client> writer = MustConnect(writer_token_);
  ASSERT_NE(writer, nullptr);
  const std::string image = testing::MakeHdf5Image(32 << 10, 7);
  ASSERT_TRUE(writer->Push("runs/driver.h5", image.data(), image.size()).ok());

  auto open = [&] {
    const hid_t fapl = H5Pcreate(H5P_FILE_ACCESS);
    EXPECT_GE(H5Pset_fapl_remote(fapl, target().c_str(), nullptr), 0);
    hid_t file = -1;
    H5E_BEGIN_TRY { file = H5Fopen("runs/driver.h5", H5F_ACC_RDONLY, fapl); }
    H5E_END_TRY;
    H5Pclose(fapl);
    const bool opened = file >= 0;
    if (opened) H5Fclose(file);
    return opened;
  };
  // Without a token the open fails (and the driver keeps no client); with
  // one the driver connects as its principal, and keeps that client for
  // the target.
  EXPECT_FALSE(open());
  setenv("H5DEPOT_TOKEN", reader_token_.c_str(), 1);
  EXPECT_TRUE(open());
  unsetenv("H5DEPOT_TOKEN");
}

INSTANTIATE_TEST_SUITE_P(Paths, AuthToolsTest,
                         ::testing::Values(Path::kGrpc, Path::kLaneUnix),
                         PathName);

TEST(AuthServerTest, AMalformedAuthFileStopsTheServerSayingWhere) {
  auto dir = TempDir::Create();
  ASSERT_TRUE(dir.ok()) << dir.status();
  const std::string auth = dir->File("auth");
  ASSERT_TRUE(testing::WriteFile(auth, "someone superuser sha256:00\n").ok());
  CommandResult started =
      RunCommand({testing::H5depotdPath(), "--listen=127.0.0.1:0",
                  absl::StrCat("--auth-file=", auth)});
  EXPECT_NE(started.exit_code, 0);
  EXPECT_NE(started.stderr_text.find(auth + ", line 1: unknown role"),
            std::string::npos)
      << started.stderr_text;
}

}  // namespace
}  // namespace h5depot
