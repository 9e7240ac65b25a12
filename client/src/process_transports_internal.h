// A Client's transports, kept per process so that a child of fork() never
// uses its parent's (docs/ARCHITECTURE.md, "fork()"). Internal to the
// client.
#ifndef H5DEPOT_CLIENT_PROCESS_TRANSPORTS_INTERNAL_H_
#define H5DEPOT_CLIENT_PROCESS_TRANSPORTS_INTERNAL_H_

#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>

#include "absl/status/statusor.h"
#include "client/src/grpc_transport_internal.h"
#include "client/src/image_transport_internal.h"
#include "h5depot/client.h"

namespace h5depot::internal {

// What connects one process to the server.
struct Transports {
  // Every call that is not a push or fetch.
  std::shared_ptr<GrpcTransport> grpc;
  // Push, fetch and reads (readers' too): the data lane or gRPC, per call.
  // Shared with the readers, which may outlive the Client.
  std::shared_ptr<ImageTransport> images;
};

// A child of fork() inherits its parent's Transports as a copy that it must
// never use nor destroy: the gRPC objects belong to threads that are not in
// the child (destroying them there hangs, using them writes on the
// parent's connection), and the pooled data lane connections are the
// parent's sockets, on which the two processes' bytes would interleave.
// So each process calls through transports of its own, made on its first
// call, and abandons (never frees) the ones it inherited. Thread-safe.
class PerProcessTransports {
 public:
  // Makes one process's transports: the same server, the same options.
  using Connect = std::function<absl::StatusOr<std::unique_ptr<Transports>>()>;

  // `made`: this process's, already connected.
  PerProcessTransports(std::unique_ptr<Transports> made, Connect connect);
  // Destroys what this process made, and only that.
  ~PerProcessTransports();
  PerProcessTransports(const PerProcessTransports&) = delete;
  PerProcessTransports& operator=(const PerProcessTransports&) = delete;

  // The calling process's transports: in a child of fork(), made on its
  // first call, once, by the first thread to need them (others wait). An
  // error is the one connecting gave (FAILED_PRECONDITION if the process
  // cannot use gRPC, CheckGrpcUsable), and the next call tries again.
  absl::StatusOr<Transports*> ForThisProcess();

 private:
  struct Slot;
  Slot* SlotOfThisProcess(Slot* inherited, uint64_t fork_generation);

  const Connect connect_;
  std::atomic<Slot*> slot_;  // owned, unless inherited
};

// `reader` wrapped to read in this process only: in a child of fork() it
// is the parent's stream, so there its reads fail with FAILED_PRECONDITION
// and destroying it leaves the stream alone.
std::unique_ptr<ImageReader> BindReaderToThisProcess(
    std::unique_ptr<ImageReader> reader);

}  // namespace h5depot::internal

#endif  // H5DEPOT_CLIENT_PROCESS_TRANSPORTS_INTERNAL_H_
