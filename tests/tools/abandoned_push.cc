// Test tool: starts a push of a large image to TARGET, sends the header and
// one chunk, prints "streaming" and then waits to be killed, as a client
// that dies mid-stream would. Usage: abandoned_push TARGET IMAGE_ID [append]
// ("append": the push appends a step to the stream IMAGE_ID).
#include <grpcpp/grpcpp.h>
#include <unistd.h>

#include <cstdio>
#include <string>
#include <vector>

#include "h5depot/internal/hdf5_signature.h"
#include "h5depot/v1/depot.grpc.pb.h"

int main(int argc, char** argv) {
  if (argc != 3 && argc != 4) return 2;
  auto stub = h5depot::v1::Depot::NewStub(
      grpc::CreateChannel(argv[1], grpc::InsecureChannelCredentials()));
  grpc::ClientContext context;
  h5depot::v1::PushResponse response;
  auto writer = stub->Push(&context, &response);
  h5depot::v1::PushRequest request;
  request.mutable_header()->set_image_id(argv[2]);
  request.mutable_header()->set_size(uint64_t{64} << 20);
  request.mutable_header()->set_checksum(1);
  request.mutable_header()->set_stream_append(argc == 4 &&
                                              std::string(argv[3]) == "append");
  if (!writer->Write(request)) return 1;
  writer->WaitForInitialMetadata();
  std::string chunk(1 << 20, 'x');
  chunk.replace(
      0, sizeof(h5depot::internal::kHdf5Signature),
      reinterpret_cast<const char*>(h5depot::internal::kHdf5Signature),
      sizeof(h5depot::internal::kHdf5Signature));
  request.set_chunk(chunk);
  if (!writer->Write(request)) return 1;
  std::printf("streaming\n");
  std::fflush(stdout);
  pause();  // until killed
  return 0;
}
