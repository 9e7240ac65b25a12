#include "h5depot/rpc/grpc_runtime.h"

#include <grpc/grpc.h>

namespace h5depot::internal {

void KeepGrpcRuntimeAlive() {
  // The matching grpc_shutdown() is deliberately never called.
  static const bool initialised = (grpc_init(), true);
  (void)initialised;
}

}  // namespace h5depot::internal
