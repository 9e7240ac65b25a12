// The gRPC service h5depot.v1.Depot, translating calls into ImageStore
// operations. Internal to the server.
#ifndef H5DEPOT_SERVER_DEPOT_SERVICE_INTERNAL_H_
#define H5DEPOT_SERVER_DEPOT_SERVICE_INTERNAL_H_

#include <cstdint>

#include "h5depot/server/image_store.h"
#include "h5depot/v1/depot.grpc.pb.h"

namespace h5depot::server {

class DepotService final : public h5depot::v1::Depot::Service {
 public:
  // `store` must outlive the service.
  DepotService(ImageStore* store, uint64_t max_chunk_bytes,
               uint64_t send_chunk_bytes);

  grpc::Status Push(grpc::ServerContext* context,
                    grpc::ServerReader<h5depot::v1::PushRequest>* reader,
                    h5depot::v1::PushResponse* response) override;
  grpc::Status Fetch(
      grpc::ServerContext* context, const h5depot::v1::FetchRequest* request,
      grpc::ServerWriter<h5depot::v1::FetchResponse>* writer) override;
  grpc::Status Read(
      grpc::ServerContext* context, const h5depot::v1::ReadRequest* request,
      grpc::ServerWriter<h5depot::v1::ReadResponse>* writer) override;
  grpc::Status OpenReader(
      grpc::ServerContext* context,
      grpc::ServerReaderWriter<h5depot::v1::ReaderResponse,
                               h5depot::v1::ReaderRequest>* stream) override;
  grpc::Status Stat(grpc::ServerContext* context,
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
  ImageStore* const store_;
  const uint64_t max_chunk_bytes_;
  const uint64_t send_chunk_bytes_;
};

}  // namespace h5depot::server

#endif  // H5DEPOT_SERVER_DEPOT_SERVICE_INTERNAL_H_
