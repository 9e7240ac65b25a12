// Process-wide gRPC runtime lifetime.
#ifndef H5DEPOT_RPC_GRPC_RUNTIME_H_
#define H5DEPOT_RPC_GRPC_RUNTIME_H_

namespace h5depot::internal {

// Keeps gRPC's runtime initialised until the process exits. When the last
// gRPC object of a process is destroyed, gRPC shuts its runtime down and
// joins its executor threads, which can stall for up to ten seconds on a
// busy machine: a CLI would linger after its work is done, a server after
// it stopped. Holding one reference forever avoids that teardown. Cheap and
// idempotent; call before creating channels or servers.
void KeepGrpcRuntimeAlive();

}  // namespace h5depot::internal

#endif  // H5DEPOT_RPC_GRPC_RUNTIME_H_
