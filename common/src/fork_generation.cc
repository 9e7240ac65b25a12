#include "h5depot/internal/fork_generation.h"

#include <pthread.h>

#include <atomic>

namespace h5depot::internal {
namespace {

std::atomic<uint64_t> generation{0};

void CountChild() { generation.fetch_add(1, std::memory_order_relaxed); }

}  // namespace

uint64_t ForkGeneration() {
  // The child handler runs in the child before fork() returns there, so
  // every thread the child ever has sees the new value.
  static const bool registered =
      (pthread_atfork(nullptr, nullptr, &CountChild), true);
  (void)registered;
  return generation.load(std::memory_order_relaxed);
}

}  // namespace h5depot::internal
