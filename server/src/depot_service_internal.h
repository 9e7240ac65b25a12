// The gRPC service h5depot.v1.Depot: the gRPC codec over DepotOperations.
// It parses each call's messages, calls one operation and encodes its
// answer; the service's rules (validation, clamps, authorisation, how an
// image is described) are the operations'. Internal to the server.
#ifndef H5DEPOT_SERVER_DEPOT_SERVICE_INTERNAL_H_
#define H5DEPOT_SERVER_DEPOT_SERVICE_INTERNAL_H_

#include <cstdint>
#include <string>

#include "h5depot/v1/depot.grpc.pb.h"
#include "server/src/depot_operations_internal.h"

namespace h5depot::server {

// Push, Fetch, Read and OpenReader, which move image bytes, use the
// callback API with raw byte buffers: chunks are sent from slices that
// reference the stored image and received straight into the pending one,
// never through a protobuf string. Stat uses the callback API too, so that
// a Stat waiting for its image holds no thread (nor does a waiting Fetch).
// The other methods are ordinary synchronous handlers.
using DepotServiceBase = h5depot::v1::Depot::WithRawCallbackMethod_Push<
    h5depot::v1::Depot::WithRawCallbackMethod_Fetch<
        h5depot::v1::Depot::WithRawCallbackMethod_Read<
            h5depot::v1::Depot::WithRawCallbackMethod_OpenReader<
                h5depot::v1::Depot::WithCallbackMethod_Stat<
                    h5depot::v1::Depot::Service>>>>>;

// Where the data lane listens, as GetLimits tells clients.
struct DataLaneAddresses {
  int tcp_port = 0;       // 0: no TCP lane
  std::string unix_path;  // empty: no Unix lane
};

class DepotService final : public DepotServiceBase {
 public:
  // `operations` must outlive the service.
  DepotService(DepotOperations* operations, uint64_t max_chunk_bytes,
               uint64_t send_chunk_bytes, DataLaneAddresses data_lane);

  grpc::ServerReadReactor<grpc::ByteBuffer>* Push(
      grpc::CallbackServerContext* context,
      grpc::ByteBuffer* response) override;
  grpc::ServerWriteReactor<grpc::ByteBuffer>* Fetch(
      grpc::CallbackServerContext* context,
      const grpc::ByteBuffer* request) override;
  grpc::ServerWriteReactor<grpc::ByteBuffer>* Read(
      grpc::CallbackServerContext* context,
      const grpc::ByteBuffer* request) override;
  grpc::ServerBidiReactor<grpc::ByteBuffer, grpc::ByteBuffer>* OpenReader(
      grpc::CallbackServerContext* context) override;
  grpc::ServerUnaryReactor* Stat(grpc::CallbackServerContext* context,
                                 const h5depot::v1::StatRequest* request,
                                 h5depot::v1::ImageInfo* response) override;
  grpc::Status List(grpc::ServerContext* context,
                    const h5depot::v1::ListRequest* request,
                    h5depot::v1::ListResponse* response) override;
  grpc::Status Delete(grpc::ServerContext* context,
                      const h5depot::v1::DeleteRequest* request,
                      h5depot::v1::DeleteResponse* response) override;
  grpc::Status GetLimits(grpc::ServerContext* context,
                         const h5depot::v1::GetLimitsRequest* request,
                         h5depot::v1::ServerLimits* response) override;

 private:
  DepotOperations* const operations_;
  const uint64_t max_chunk_bytes_;
  const uint64_t send_chunk_bytes_;
  const DataLaneAddresses data_lane_;
};

}  // namespace h5depot::server

#endif  // H5DEPOT_SERVER_DEPOT_SERVICE_INTERNAL_H_
