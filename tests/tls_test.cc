// TLS end to end, with certificates each test makes afresh (test_pki.h):
// a server with a certificate serves only TLS clients that trust its CA,
// on gRPC and on the data lane alike; mutual TLS refuses clients without a
// certificate from its client CA; certificates replaced on disk are served
// without a restart; plaintext clients, wrong CAs and expired certificates
// get a clear error, not a hang; protected mode keeps an unprotected
// server off the network; the CLI, the C API and the remote driver work
// over TLS with tokens.
#include "h5depot/internal/tls.h"

#include <hdf5.h>
#include <stdio.h>
#include <stdlib.h>

#include <memory>
#include <string>
#include <vector>

#include "H5FDremote.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "client/src/lane_client_internal.h"
#include "gtest/gtest.h"
#include "h5depot/client.h"
#include "h5depot/h5depot.h"
#include "h5depot/internal/lane_protocol.h"
#include "h5depot/internal/lane_socket.h"
#include "h5depot/internal/token.h"
#include "h5depot/server/depot_server.h"
#include "h5depot/testing/hdf5_images.h"
#include "h5depot/testing/in_process_depot.h"
#include "h5depot/testing/server_process.h"
#include "h5depot/testing/subprocess.h"
#include "h5depot/testing/temp_dir.h"
#include "h5depot/testing/test_pki.h"

namespace h5depot {
namespace {

using testing::CommandOptions;
using testing::CommandResult;
using testing::H5depotCliPath;
using testing::InProcessDepot;
using testing::Listeners;
using testing::RunCommand;
using testing::ServerProcess;
using testing::ServerProcessOptions;
using testing::TempDir;
using testing::TestPki;

class TlsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    // The tests say which credentials each client has; the environment
    // does not.
    for (const char* name : {"H5DEPOT_TOKEN", "H5DEPOT_TOKEN_FILE",
                             "H5DEPOT_TLS", "H5DEPOT_TLS_CA_FILE",
                             "H5DEPOT_TLS_CERT_FILE", "H5DEPOT_TLS_KEY_FILE"}) {
      unsetenv(name);
    }
    auto dir = TempDir::Create();
    ASSERT_TRUE(dir.ok()) << dir.status();
    dir_ = std::make_unique<TempDir>(*std::move(dir));
    auto pki = testing::MakeTestPki(dir_->path());
    ASSERT_TRUE(pki.ok()) << pki.status();
    pki_ = *std::move(pki);
  }

  // A server with `cert` (the CA's server certificate by default).
  std::unique_ptr<InProcessDepot> StartServer(
      const testing::CertificateFiles* cert = nullptr,
      const std::string& client_ca_file = "") {
    server::ServerOptions options;
    options.tls_cert_file = (cert ? *cert : pki_.server).cert_file;
    options.tls_key_file = (cert ? *cert : pki_.server).key_file;
    options.tls_client_ca_file = client_ca_file;
    auto depot = InProcessDepot::Start(options, Listeners::kTcp);
    EXPECT_TRUE(depot.ok()) << depot.status();
    return depot.ok() ? *std::move(depot) : nullptr;
  }

  ClientOptions Trusting(const std::string& ca_file) const {
    ClientOptions options;
    options.tls_ca_file = ca_file;
    options.connect_timeout = absl::Seconds(30);
    return options;
  }

  // The client end of the data lane of `depot`, presenting `tls` (null:
  // plain), as Client makes it.
  static std::shared_ptr<internal::DataLane> LaneOf(
      InProcessDepot& depot,
      std::shared_ptr<const internal::tls::Context> tls) {
    return internal::DataLane::ForServer(
        depot.tcp_target(),
        static_cast<uint32_t>(depot.server().data_lane_port()), "",
        {"", std::move(tls)});
  }

  std::shared_ptr<const internal::tls::Context> ClientContext(
      internal::tls::ClientFiles files) const {
    auto context = internal::tls::Context::ForClient(files);
    EXPECT_TRUE(context.ok()) << context.status();
    return context.ok() ? *context : nullptr;
  }

  std::unique_ptr<TempDir> dir_;
  TestPki pki_;
};

TEST_F(TlsTest, ImagesGoBothWaysOverTlsOnGrpcAndOnTheDataLane) {
  std::unique_ptr<InProcessDepot> depot = StartServer();
  ASSERT_NE(depot, nullptr);
  const std::string image = testing::MakeHdf5Image(3 << 20, 11);
  for (bool lane : {false, true}) {
    SCOPED_TRACE(lane ? "data lane" : "gRPC only");
    ClientOptions options = Trusting(pki_.ca_file);
    options.use_data_lane = lane;
    auto client = Client::Connect(depot->tcp_target(), options);
    ASSERT_TRUE(client.ok()) << client.status();
    const std::string id = lane ? "lane.h5" : "grpc.h5";
    auto pushed = (*client)->Push(id, image.data(), image.size());
    ASSERT_TRUE(pushed.ok()) << pushed.status();
    auto fetched = (*client)->Fetch(id);
    ASSERT_TRUE(fetched.ok()) << fetched.status();
    EXPECT_EQ(std::string(reinterpret_cast<const char*>(fetched->buffer.data()),
                          fetched->buffer.size()),
              image);
    // A reader's reads: READs on the lane, or gRPC's Read.
    auto opened = (*client)->OpenReader(id);
    ASSERT_TRUE(opened.ok()) << opened.status();
    std::string range(2 << 20, '\0');
    auto read = (*opened)->Read(4096, range.data(), range.size());
    ASSERT_TRUE(read.ok()) << read.status();
    EXPECT_EQ(*read, range.size());
    EXPECT_TRUE(range == image.substr(4096, range.size()));
  }
}

TEST_F(TlsTest, TheDataLaneSpeaksTlsAndOnlyTls) {
  std::unique_ptr<InProcessDepot> depot = StartServer();
  ASSERT_NE(depot, nullptr);
  const absl::Time deadline = absl::Now() + absl::Seconds(30);

  // The client's lane, as Client makes it, pushes over TLS by itself.
  std::shared_ptr<internal::DataLane> lane =
      LaneOf(*depot, ClientContext({pki_.ca_file, "", ""}));
  ASSERT_NE(lane, nullptr);
  auto connection = lane->ConnectNew(deadline);
  ASSERT_TRUE(connection.ok()) << connection.status();
  EXPECT_TRUE((*connection)->socket().is_tls());
  const std::string image = testing::MakeHdf5Image(1 << 20, 12);
  auto pushed = lane->Push(*std::move(connection), "by-lane.h5",
                           reinterpret_cast<const uint8_t*>(image.data()),
                           image.size(), {}, deadline,
                           /*stream_append=*/false);
  ASSERT_TRUE(pushed.ok()) << pushed.status();
  // And reads a range over TLS, on the connection the push gave back.
  auto pooled = lane->Connect(deadline);
  ASSERT_TRUE(pooled.ok()) << pooled.status();
  EXPECT_TRUE((*pooled)->socket().is_tls());
  EXPECT_TRUE((*pooled)->reads);
  std::string range(100000, '\0');
  auto read =
      lane->Read(*std::move(pooled), "by-lane.h5", pushed->generation,
                 image.size() - 1000, range.data(), range.size(), deadline);
  ASSERT_TRUE(read.ok()) << read.status();
  EXPECT_EQ(read->bytes_read, 1000u);
  EXPECT_EQ(range.substr(0, 1000), image.substr(image.size() - 1000));
  auto reader = Client::Connect(depot->tcp_target(), Trusting(pki_.ca_file));
  ASSERT_TRUE(reader.ok()) << reader.status();
  auto fetched = (*reader)->Fetch("by-lane.h5");
  ASSERT_TRUE(fetched.ok()) << fetched.status();
  EXPECT_EQ(fetched->info.size, image.size());

  // A plain lane client is dropped at its hello: the server answers
  // nothing but the end of the connection, at once.
  auto plain = LaneOf(*depot, nullptr)->ConnectNew(deadline);
  ASSERT_FALSE(plain.ok());
  EXPECT_TRUE(absl::IsUnavailable(plain.status())) << plain.status();

  // A lane client trusting another CA refuses the server itself.
  auto distrustful = LaneOf(*depot, ClientContext({pki_.other_ca_file, "", ""}))
                         ->ConnectNew(deadline);
  ASSERT_FALSE(distrustful.ok());
  EXPECT_NE(distrustful.status().message().find("certificate"),
            std::string::npos)
      << distrustful.status();
}

TEST_F(TlsTest, APlaintextClientIsToldClearlyRatherThanKeptWaiting) {
  std::unique_ptr<InProcessDepot> depot = StartServer();
  ASSERT_NE(depot, nullptr);
  ClientOptions plain;
  // Were the failure a hang, the connect would take this long and say it
  // timed out.
  plain.connect_timeout = absl::Minutes(10);
  auto client = Client::Connect(depot->tcp_target(), plain);
  ASSERT_FALSE(client.ok());
  EXPECT_TRUE(absl::IsUnavailable(client.status())) << client.status();
  EXPECT_NE(client.status().message().find("TLS"), std::string::npos)
      << client.status();
  EXPECT_EQ(client.status().message().find("timed out"), std::string::npos)
      << client.status();
}

TEST_F(TlsTest, AServerCertificateFromAnotherCaOrExpiredIsRefused) {
  {
    std::unique_ptr<InProcessDepot> depot = StartServer(&pki_.other_server);
    ASSERT_NE(depot, nullptr);
    auto client = Client::Connect(depot->tcp_target(), Trusting(pki_.ca_file));
    ASSERT_FALSE(client.ok());
    EXPECT_TRUE(absl::IsUnavailable(client.status())) << client.status();
  }
  {
    std::unique_ptr<InProcessDepot> depot = StartServer(&pki_.expired);
    ASSERT_NE(depot, nullptr);
    auto client = Client::Connect(depot->tcp_target(), Trusting(pki_.ca_file));
    ASSERT_FALSE(client.ok());
    EXPECT_TRUE(absl::IsUnavailable(client.status())) << client.status();
    auto lane = LaneOf(*depot, ClientContext({pki_.ca_file, "", ""}))
                    ->ConnectNew(absl::Now() + absl::Seconds(30));
    ASSERT_FALSE(lane.ok());
    EXPECT_NE(lane.status().message().find("expired"), std::string::npos)
        << lane.status();
  }
}

TEST_F(TlsTest, MutualTlsServesOnlyClientsWithACertificateFromItsCa) {
  std::unique_ptr<InProcessDepot> depot =
      StartServer(nullptr, /*client_ca_file=*/pki_.ca_file);
  ASSERT_NE(depot, nullptr);
  ClientOptions anonymous = Trusting(pki_.ca_file);
  EXPECT_FALSE(Client::Connect(depot->tcp_target(), anonymous).ok());
  ClientOptions foreign = anonymous;
  foreign.tls_cert_file = pki_.other_client.cert_file;
  foreign.tls_key_file = pki_.other_client.key_file;
  EXPECT_FALSE(Client::Connect(depot->tcp_target(), foreign).ok());

  ClientOptions known = anonymous;
  known.tls_cert_file = pki_.client.cert_file;
  known.tls_key_file = pki_.client.key_file;
  auto client = Client::Connect(depot->tcp_target(), known);
  ASSERT_TRUE(client.ok()) << client.status();
  const std::string image = testing::MakeHdf5Image(256 << 10, 13);
  ASSERT_TRUE((*client)->Push("mutual.h5", image.data(), image.size()).ok());

  // The lane asks the same of its clients.
  const absl::Time deadline = absl::Now() + absl::Seconds(30);
  auto lane_without = LaneOf(*depot, ClientContext({pki_.ca_file, "", ""}))
                          ->ConnectNew(deadline);
  EXPECT_FALSE(lane_without.ok());
  auto lane_foreign =
      LaneOf(*depot, ClientContext({pki_.ca_file, pki_.other_client.cert_file,
                                    pki_.other_client.key_file}))
          ->ConnectNew(deadline);
  EXPECT_FALSE(lane_foreign.ok());
  std::shared_ptr<internal::DataLane> lane =
      LaneOf(*depot, ClientContext({pki_.ca_file, pki_.client.cert_file,
                                    pki_.client.key_file}));
  auto connection = lane->ConnectNew(deadline);
  ASSERT_TRUE(connection.ok()) << connection.status();
  auto fetched = lane->Fetch(
      *std::move(connection), "mutual.h5", {},
      internal::CallDeadline::Start(absl::Seconds(30), absl::ZeroDuration()));
  ASSERT_TRUE(fetched.ok()) << fetched.status();
  EXPECT_EQ(fetched->info.size, image.size());
}

TEST_F(TlsTest, ACertificateReplacedOnDiskIsServedWithoutARestart) {
  // The server starts with a certificate its clients do not trust, as a
  // lapsed one would be, and the right one is then written over it.
  const std::string cert = dir_->File("live.crt");
  const std::string key = dir_->File("live.key");
  auto copy = [](const std::string& from, const std::string& to) {
    auto text = testing::ReadFile(from);
    ASSERT_TRUE(text.ok()) << text.status();
    const std::string next = to + ".next";
    ASSERT_TRUE(testing::WriteFile(next, *text).ok());
    ASSERT_EQ(::rename(next.c_str(), to.c_str()), 0);
  };
  copy(pki_.other_server.cert_file, cert);
  copy(pki_.other_server.key_file, key);
  testing::CertificateFiles live{cert, key};
  std::unique_ptr<InProcessDepot> depot = StartServer(&live);
  ASSERT_NE(depot, nullptr);
  ClientOptions options = Trusting(pki_.ca_file);
  options.use_data_lane = false;
  ASSERT_FALSE(Client::Connect(depot->tcp_target(), options).ok());

  copy(pki_.server.key_file, key);
  copy(pki_.server.cert_file, cert);
  // Both transports look at the files every second or so; until then a
  // new connection still gets the old certificate.
  const absl::Time give_up = absl::Now() + absl::Seconds(60);
  absl::Status grpc_status = absl::UnknownError("not tried");
  while (!grpc_status.ok() && absl::Now() < give_up) {
    grpc_status = Client::Connect(depot->tcp_target(), options).status();
  }
  EXPECT_TRUE(grpc_status.ok()) << grpc_status;
  std::shared_ptr<internal::DataLane> lane =
      LaneOf(*depot, ClientContext({pki_.ca_file, "", ""}));
  absl::Status lane_status = absl::UnknownError("not tried");
  while (!lane_status.ok() && absl::Now() < give_up) {
    lane_status = lane->ConnectNew(absl::Now() + absl::Seconds(10)).status();
  }
  EXPECT_TRUE(lane_status.ok()) << lane_status;
}

TEST_F(TlsTest, BadTlsFilesStopTheServerNamingThem) {
  server::ServerOptions options;
  options.listen_address = "127.0.0.1:0";
  options.tls_cert_file = dir_->File("missing.crt");
  options.tls_key_file = pki_.server.key_file;
  auto missing = server::DepotServer::Start(options);
  ASSERT_FALSE(missing.ok());
  EXPECT_TRUE(absl::IsNotFound(missing.status())) << missing.status();
  EXPECT_NE(missing.status().message().find("missing.crt"), std::string::npos);

  options.tls_cert_file = pki_.server.cert_file;
  options.tls_key_file = pki_.client.key_file;  // another certificate's
  auto mismatched = server::DepotServer::Start(options);
  ASSERT_FALSE(mismatched.ok());
  EXPECT_TRUE(absl::IsInvalidArgument(mismatched.status()))
      << mismatched.status();

  options.tls_key_file = "";
  EXPECT_TRUE(
      absl::IsInvalidArgument(server::DepotServer::Start(options).status()));
}

TEST_F(TlsTest, ProtectedModeKeepsAnUnprotectedServerOffTheNetwork) {
  server::ServerOptions options;
  options.listen_address = "0.0.0.0:0";
  auto refused = server::DepotServer::Start(options);
  ASSERT_FALSE(refused.ok());
  EXPECT_TRUE(absl::IsFailedPrecondition(refused.status())) << refused.status();
  EXPECT_NE(refused.status().message().find("--insecure"), std::string::npos)
      << refused.status();

  // TLS alone is not enough: anyone could still do anything.
  options.tls_cert_file = pki_.server.cert_file;
  options.tls_key_file = pki_.server.key_file;
  EXPECT_TRUE(
      absl::IsFailedPrecondition(server::DepotServer::Start(options).status()));

  const std::string auth = dir_->File("auth");
  ASSERT_TRUE(
      testing::WriteFile(
          auth, absl::StrCat("ops admin ",
                             internal::TokenHash(internal::NewToken()), "\n"))
          .ok());
  options.auth_file = auth;
  auto protected_server = server::DepotServer::Start(options);
  EXPECT_TRUE(protected_server.ok()) << protected_server.status();
  if (protected_server.ok())
    (*protected_server)->Shutdown(absl::ZeroDuration());

  server::ServerOptions insecure;
  insecure.listen_address = "0.0.0.0:0";
  insecure.insecure = true;
  auto open = server::DepotServer::Start(insecure);
  EXPECT_TRUE(open.ok()) << open.status();
  if (open.ok()) (*open)->Shutdown(absl::ZeroDuration());

  // The daemon says how to fix it, and exits.
  CommandResult daemon =
      RunCommand({testing::H5depotdPath(), "--listen=0.0.0.0:0"});
  EXPECT_NE(daemon.exit_code, 0);
  EXPECT_NE(daemon.stderr_text.find("--tls-cert-file"), std::string::npos)
      << daemon.stderr_text;
}

TEST_F(TlsTest, ATokenGoesToAnotherHostOnlyOverTls) {
  ClientOptions options;
  options.token = internal::NewToken();
  options.connect_timeout = absl::Milliseconds(200);
  // 192.0.2.0/24 is reserved for documentation: nothing answers there.
  auto plain = Client::Connect("192.0.2.1:7878", options);
  EXPECT_TRUE(absl::IsFailedPrecondition(plain.status())) << plain.status();
  options.tls_ca_file = pki_.ca_file;
  auto encrypted = Client::Connect("192.0.2.1:7878", options);
  EXPECT_TRUE(absl::IsUnavailable(encrypted.status())) << encrypted.status();
}

// --- The tools, over TLS with tokens, against h5depotd as a process ------

class TlsToolsTest : public TlsTest {
 protected:
  void SetUp() override {
    TlsTest::SetUp();
    if (HasFatalFailure()) return;
    token_ = internal::NewToken();
    const std::string auth = dir_->File("auth");
    ASSERT_TRUE(testing::WriteFile(
                    auth, absl::StrCat("tools write ",
                                       internal::TokenHash(token_), " runs/\n"))
                    .ok());
    ServerProcessOptions options;
    options.extra_flags = {
        absl::StrCat("--auth-file=", auth),
        absl::StrCat("--tls-cert-file=", pki_.server.cert_file),
        absl::StrCat("--tls-key-file=", pki_.server.key_file),
        absl::StrCat("--tls-client-ca-file=", pki_.ca_file)};
    auto server = ServerProcess::Start(options);
    ASSERT_TRUE(server.ok()) << server.status();
    server_ = *std::move(server);
    // The address, which the certificate names: a name would go through
    // gRPC's DNS resolver, whose c-ares leaks a few bytes at exit under
    // the leak checker.
    target_ = server_->tcp_target();
  }

  std::string token_;
  std::unique_ptr<ServerProcess> server_;
  std::string target_;
};

TEST_F(TlsToolsTest, TheCommandLineWorksOverMutualTlsWithAToken) {
  const std::string file = dir_->File("in.h5");
  const std::string image = testing::MakeHdf5Image(2 << 20, 14);
  ASSERT_TRUE(testing::WriteFile(file, image).ok());
  CommandOptions env;
  env.env = {{"H5DEPOT_TOKEN", token_}};
  const std::vector<std::string> tls = {
      H5depotCliPath(),
      "--server",
      target_,
      absl::StrCat("--tls-ca-file=", pki_.ca_file),
      absl::StrCat("--tls-cert-file=", pki_.client.cert_file),
      absl::StrCat("--tls-key-file=", pki_.client.key_file)};
  auto with = [&](std::vector<std::string> args) {
    std::vector<std::string> argv = tls;
    argv.insert(argv.end(), args.begin(), args.end());
    return argv;
  };
  CommandResult put =
      RunCommand(with({"put", file, "--id", "runs/in.h5"}), env);
  EXPECT_EQ(put.exit_code, 0) << put.stderr_text;
  const std::string out = dir_->File("out.h5");
  CommandResult get = RunCommand(with({"get", "runs/in.h5", "-o", out}), env);
  EXPECT_EQ(get.exit_code, 0) << get.stderr_text;
  auto fetched = testing::ReadFile(out);
  ASSERT_TRUE(fetched.ok()) << fetched.status();
  EXPECT_EQ(*fetched, image);

  // The same credentials from the environment.
  CommandOptions all_env = env;
  all_env.env["H5DEPOT_TLS_CA_FILE"] = pki_.ca_file;
  all_env.env["H5DEPOT_TLS_CERT_FILE"] = pki_.client.cert_file;
  all_env.env["H5DEPOT_TLS_KEY_FILE"] = pki_.client.key_file;
  CommandResult listed =
      RunCommand({H5depotCliPath(), "--server", target_, "ls"}, all_env);
  EXPECT_EQ(listed.exit_code, 0) << listed.stderr_text;
  EXPECT_NE(listed.stdout_text.find("runs/in.h5"), std::string::npos);

  // Without TLS: a clear error, the server unreachable as far as it can
  // tell, not a hang.
  CommandResult plain =
      RunCommand({H5depotCliPath(), "--server", target_, "ls"}, env);
  EXPECT_EQ(plain.exit_code, 5) << plain.stderr_text;
  EXPECT_NE(plain.stderr_text.find("TLS"), std::string::npos)
      << plain.stderr_text;
}

TEST_F(TlsToolsTest, TheCApiAndTheRemoteDriverWorkOverMutualTlsWithAToken) {
  h5depot_connect_options options{};
  options.token = token_.c_str();
  options.tls_ca_file = pki_.ca_file.c_str();
  h5depot_client* anonymous = h5depot_connect_ex(target_.c_str(), &options);
  EXPECT_EQ(anonymous, nullptr);  // no client certificate
  EXPECT_EQ(h5depot_errcode(), H5DEPOT_UNAVAILABLE) << h5depot_errmsg();

  options.tls_cert_file = pki_.client.cert_file.c_str();
  options.tls_key_file = pki_.client.key_file.c_str();
  h5depot_client* client = h5depot_connect_ex(target_.c_str(), &options);
  ASSERT_NE(client, nullptr) << h5depot_errmsg();
  const std::string image = testing::MakeHdf5Image(64 << 10, 15);
  uint64_t generation = 0;
  EXPECT_EQ(h5depot_push_buffer(client, "runs/c.h5", image.data(), image.size(),
                                &generation),
            H5DEPOT_OK)
      << h5depot_errmsg();
  h5depot_disconnect(client);

  // The remote driver takes TLS and its token from its configuration...
  auto opens = [&](const H5FD_remote_config_t* config) {
    const hid_t fapl = H5Pcreate(H5P_FILE_ACCESS);
    EXPECT_GE(H5Pset_fapl_remote(fapl, target_.c_str(), config), 0);
    hid_t file = H5I_INVALID_HID;
    H5E_BEGIN_TRY { file = H5Fopen("runs/c.h5", H5F_ACC_RDONLY, fapl); }
    H5E_END_TRY;
    H5Pclose(fapl);
    if (file >= 0) H5Fclose(file);
    return file >= 0;
  };
  H5FD_remote_config_t config = H5FD_REMOTE_CONFIG_INIT;
  config.token = token_.c_str();
  config.tls_ca_file = pki_.ca_file.c_str();
  EXPECT_FALSE(opens(&config));  // no client certificate
  config.tls_cert_file = pki_.client.cert_file.c_str();
  config.tls_key_file = pki_.client.key_file.c_str();
  EXPECT_TRUE(opens(&config));

  // ... or from the environment.
  EXPECT_FALSE(opens(nullptr));
  setenv("H5DEPOT_TOKEN", token_.c_str(), 1);
  setenv("H5DEPOT_TLS_CA_FILE", pki_.ca_file.c_str(), 1);
  setenv("H5DEPOT_TLS_CERT_FILE", pki_.client.cert_file.c_str(), 1);
  setenv("H5DEPOT_TLS_KEY_FILE", pki_.client.key_file.c_str(), 1);
  EXPECT_TRUE(opens(nullptr));
  for (const char* name : {"H5DEPOT_TOKEN", "H5DEPOT_TLS_CA_FILE",
                           "H5DEPOT_TLS_CERT_FILE", "H5DEPOT_TLS_KEY_FILE"}) {
    unsetenv(name);
  }
}

}  // namespace
}  // namespace h5depot
