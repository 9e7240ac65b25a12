// h5depotd serves the standard gRPC health and reflection services, so that
// ordinary gRPC tooling (grpc_health_probe, grpcurl, grpc_cli) works. These
// tests speak to them as such tools do: raw bytes, no h5depot code.
#include <grpcpp/generic/generic_stub.h>
#include <grpcpp/grpcpp.h>

#include <chrono>
#include <future>
#include <string>
#include <thread>

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "h5depot/testing/in_process_depot.h"
#include "wire_messages.h"

namespace h5depot {
namespace {

using ::h5depot::testing::WireBytes;

grpc::ByteBuffer BytesToBuffer(const std::string& bytes) {
  grpc::Slice slice(bytes);
  return grpc::ByteBuffer(&slice, 1);
}

class StandardServicesTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto depot = testing::InProcessDepot::Start();
    ASSERT_TRUE(depot.ok()) << depot.status();
    depot_ = *std::move(depot);
    stub_ = std::make_unique<grpc::GenericStub>(grpc::CreateChannel(
        depot_->target(), grpc::InsecureChannelCredentials()));
  }

  std::unique_ptr<testing::InProcessDepot> depot_;
  std::unique_ptr<grpc::GenericStub> stub_;
};

TEST_F(StandardServicesTest, HealthCheckReportsServing) {
  grpc::ClientContext context;
  grpc::ByteBuffer request = BytesToBuffer("");  // service "" = whole server
  grpc::ByteBuffer response;
  std::promise<grpc::Status> done;
  stub_->UnaryCall(&context, "/grpc.health.v1.Health/Check",
                   grpc::StubOptions(), &request, &response,
                   [&](grpc::Status status) { done.set_value(status); });
  grpc::Status status = done.get_future().get();
  ASSERT_TRUE(status.ok()) << status.error_message();
  // HealthCheckResponse{status: SERVING (1)}: field 1, varint 1.
  EXPECT_EQ(WireBytes(response), std::string("\x08\x01", 2));
}

TEST_F(StandardServicesTest, ReflectionListsTheDepotService) {
  grpc::CompletionQueue queue;
  grpc::ClientContext context;
  auto call = stub_->PrepareCall(
      &context,
      "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo", &queue);
  void* tag = nullptr;
  bool ok = false;
  auto step = [&](void* expected) {
    ASSERT_TRUE(queue.Next(&tag, &ok));
    ASSERT_EQ(tag, expected);
    ASSERT_TRUE(ok);
  };
  call->StartCall(reinterpret_cast<void*>(1));
  step(reinterpret_cast<void*>(1));
  // ServerReflectionRequest{list_services: ""}: field 7, empty string.
  call->Write(BytesToBuffer(std::string("\x3a\x00", 2)),
              reinterpret_cast<void*>(2));
  step(reinterpret_cast<void*>(2));
  grpc::ByteBuffer response;
  call->Read(&response, reinterpret_cast<void*>(3));
  step(reinterpret_cast<void*>(3));
  call->WritesDone(reinterpret_cast<void*>(4));
  step(reinterpret_cast<void*>(4));
  grpc::Status status;
  call->Finish(&status, reinterpret_cast<void*>(5));
  ASSERT_TRUE(queue.Next(&tag, &ok));
  EXPECT_TRUE(status.ok()) << status.error_message();
  const std::string bytes = WireBytes(response);
  EXPECT_NE(bytes.find("h5depot.v1.Depot"), std::string::npos);
  EXPECT_NE(bytes.find("grpc.health.v1.Health"), std::string::npos);
}

// The plaintext health listener (--health-listen), for probes that cannot
// speak TLS: SERVING while the server runs, and nothing else served there.
TEST(HealthListenerTest, AnswersHealthAndNothingElse) {
  server::ServerOptions options;
  options.health_listen = "127.0.0.1:0";
  auto depot = testing::InProcessDepot::Start(options);
  ASSERT_TRUE(depot.ok()) << depot.status();
  const int port = (*depot)->server().health_port();
  ASSERT_NE(port, 0);
  grpc::GenericStub stub(grpc::CreateChannel(
      absl::StrCat("127.0.0.1:", port), grpc::InsecureChannelCredentials()));
  const auto call = [&stub](const std::string& method,
                            grpc::ByteBuffer* response) {
    grpc::ClientContext context;
    context.set_deadline(std::chrono::system_clock::now() +
                         std::chrono::seconds(30));
    grpc::ByteBuffer request = BytesToBuffer("");
    std::promise<grpc::Status> done;
    stub.UnaryCall(&context, method, grpc::StubOptions(), &request, response,
                   [&](grpc::Status status) { done.set_value(status); });
    return done.get_future().get();
  };
  grpc::ByteBuffer response;
  grpc::Status status = call("/grpc.health.v1.Health/Check", &response);
  ASSERT_TRUE(status.ok()) << status.error_message();
  EXPECT_EQ(WireBytes(response), std::string("\x08\x01", 2));  // SERVING
  status = call("/h5depot.v1.Depot/GetLimits", &response);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::UNIMPLEMENTED);
}

}  // namespace
}  // namespace h5depot
