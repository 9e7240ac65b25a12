// Process-wide gRPC runtime: its lifetime, and gRPC in children of fork().
#ifndef H5DEPOT_RPC_GRPC_RUNTIME_H_
#define H5DEPOT_RPC_GRPC_RUNTIME_H_

#include <chrono>

#include "absl/status/status.h"

namespace h5depot::internal {

// Keeps gRPC's runtime initialised until the process exits. When the last
// gRPC object of a process is destroyed, gRPC shuts its runtime down and
// joins its executor threads, which can stall for up to ten seconds on a
// busy machine: a CLI would linger after its work is done, a server after
// it stopped. Holding one reference forever avoids that teardown. Cheap and
// idempotent; call before creating channels or servers.
//
// gRPC's threads therefore still run while the process exits, finishing
// the teardown of channels destroyed just before. So that they are not
// caught by the destruction of gRPC's statics, exit() first waits until
// no GrpcUse ended for 200 ms, at most a second in all; a
// process that never called through a GrpcUse does not wait.
//
// The first call starts gRPC the way children of fork() need it (below):
// with gRPC's fork support on (GRPC_ENABLE_FORK_SUPPORT=1 unless the
// environment says otherwise or DisableGrpcInForkedChildren came first;
// the variable is only set for gRPC to read it, then removed again) and
// with this file's fork handlers registered.
void KeepGrpcRuntimeAlive();

// Registers this file's fork handlers without starting gRPC, for a process
// that starts it later, at its first call over gRPC (the client, whose
// calls may all take the data lane): a fork() while a thread holds a
// GrpcUse then follows the rules below even if that call had not started
// gRPC yet. Idempotent; KeepGrpcRuntimeAlive does it too.
void WatchForksForGrpc();

// Sends gRPC's own log lines nowhere, unless GRPC_VERBOSITY asks for them:
// for programs (h5depotd, the h5depot CLI) that report every failure
// themselves, in their users' terms, and would otherwise print gRPC's
// account of it, meant for gRPC's developers, beside theirs. A library
// never calls it: the log belongs to the application.
void SilenceGrpcLogUnlessAsked();

// gRPC across fork().
//
// A child of fork() inherits a copy of gRPC's state, not its threads:
// objects made by the parent must never be used or destroyed there (the
// client keeps everything per process: client/src/process_transports.cc),
// and gRPC itself is only usable in the child if it was idle at the fork.
// Debian's gRPC 1.51 registers no fork handlers of its own, so the ones
// here drive gRPC's (grpc_prefork() and friends), under these rules:
//
// * A fork() while a thread holds a GrpcUse (a call to h5depotd under way)
//   leaves gRPC alone; the child cannot use gRPC (CheckGrpcUsable).
// * Otherwise the fork waits until no GrpcUse has ended for
//   kGrpcQuietBeforeFork (gRPC finishes a call's teardown on threads of its
//   own after the call returned, and grpc_prefork() deadlocks if that
//   teardown runs while it stops those threads), blocks new GrpcUses until
//   the fork is done, and lets gRPC stop and restart its threads around it.
//   The child restarts gRPC (a fresh poller, the parent's sockets closed,
//   new threads) when it first uses it, so that children which never do,
//   or exec at once, pay nothing.
// * gRPC's fork support must be on, and this process must have started
//   gRPC through KeepGrpcRuntimeAlive; a process that runs a gRPC server
//   (DisableGrpcInForkedChildren) never hands gRPC on.
//
// The parent keeps working in every case: its calls under way at the fork
// continue, its other threads wait at most kGrpcQuietBeforeFork plus the
// fork before starting a call.

// How long after the last GrpcUse ended a fork() lets gRPC quiesce.
inline constexpr std::chrono::milliseconds kGrpcQuietBeforeFork{50};

// Marks the lifetime of one use of gRPC by this thread: a call, or the
// creation or destruction of a channel, stream or reader. Nests. Waits
// while another thread forks.
class GrpcUse {
 public:
  GrpcUse();
  ~GrpcUse();
  GrpcUse(const GrpcUse&) = delete;
  GrpcUse& operator=(const GrpcUse&) = delete;
};

// How many GrpcUses are alive in this process now (for tests).
int GrpcUsesUnderWay();

// OK if this process can use gRPC. In a child of fork() that cannot,
// FAILED_PRECONDITION saying why (and so what to do instead); never blocks
// for long. The first call in a child that can restarts gRPC there.
absl::Status CheckGrpcUsable();

// Children forked from now on do not use gRPC, for the reason given (a
// static string, shown to their callers): for a process that uses gRPC
// outside GrpcUse, such as a server, whose threads are in gRPC at any time.
// Called before KeepGrpcRuntimeAlive, gRPC also starts without its fork
// support, which such a process does not need.
void DisableGrpcInForkedChildren(const char* reason);

}  // namespace h5depot::internal

#endif  // H5DEPOT_RPC_GRPC_RUNTIME_H_
