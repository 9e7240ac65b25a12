// Raw wire messages for tests that talk to h5depotd below h5depot::Client:
// the bytes of a gRPC message as they cross the wire, and the header message
// that opens a Push.
#ifndef H5DEPOT_TESTS_WIRE_MESSAGES_H_
#define H5DEPOT_TESTS_WIRE_MESSAGES_H_

#include <grpcpp/support/byte_buffer.h>

#include <cstdint>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "h5depot/internal/checksum.h"
#include "h5depot/v1/depot.pb.h"

namespace h5depot::testing {

// The bytes of `buffer`, all its slices in order.
inline std::string WireBytes(const grpc::ByteBuffer& buffer) {
  std::vector<grpc::Slice> slices;
  EXPECT_TRUE(buffer.Dump(&slices).ok());
  std::string bytes;
  for (const grpc::Slice& slice : slices) {
    bytes.append(reinterpret_cast<const char*>(slice.begin()), slice.size());
  }
  return bytes;
}

// The first message of a Push of `bytes` as `image_id`, declaring their
// true size and checksum.
inline v1::PushRequest PushHeaderFor(const std::string& image_id,
                                     const std::vector<uint8_t>& bytes) {
  v1::PushRequest request;
  request.mutable_header()->set_image_id(image_id);
  request.mutable_header()->set_size(bytes.size());
  request.mutable_header()->set_checksum(
      internal::Checksum(bytes.data(), bytes.size()));
  return request;
}

}  // namespace h5depot::testing

#endif  // H5DEPOT_TESTS_WIRE_MESSAGES_H_
