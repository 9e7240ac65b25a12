// Which process of a line of fork()s the caller runs in.
#ifndef H5DEPOT_COMMON_FORK_GENERATION_H_
#define H5DEPOT_COMMON_FORK_GENERATION_H_

#include <cstdint>

namespace h5depot::internal {

// How many fork()s separate this process from the first one that called
// this: 0 there, one more in each child of fork() (a pthread_atfork child
// handler counts it). An object that remembers the value it was made with
// can tell, with one atomic load, whether it is being used in the process
// that made it or in a child that inherited a copy of it: a copy whose
// threads, locks and connections belong to another process. Siblings may
// share a value; they share no memory either.
//
// Cheap (an atomic load) and async-signal-safe after the first call, which
// registers the handler; call it once before any fork() that matters.
uint64_t ForkGeneration();

}  // namespace h5depot::internal

#endif  // H5DEPOT_COMMON_FORK_GENERATION_H_
