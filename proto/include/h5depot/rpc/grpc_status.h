// The one place where h5depot's absl::Status meets grpc::Status.
//
// absl::StatusCode and grpc::StatusCode share their numbering, so a status
// crosses the wire with its code and message intact in both directions.
#ifndef H5DEPOT_RPC_GRPC_STATUS_H_
#define H5DEPOT_RPC_GRPC_STATUS_H_

#include <grpcpp/support/status.h>

#include "absl/status/status.h"

namespace h5depot::internal {

grpc::Status ToGrpcStatus(const absl::Status& status);

absl::Status FromGrpcStatus(const grpc::Status& status);

}  // namespace h5depot::internal

#endif  // H5DEPOT_RPC_GRPC_STATUS_H_
