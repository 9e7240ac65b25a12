#include "server/src/client_cpu_internal.h"

namespace h5depot::server {

ClientCpuFollower::ClientCpuFollower() {
  CPU_ZERO(&allowed_);
  usable_ = sched_getaffinity(0, sizeof(allowed_), &allowed_) == 0;
}

void ClientCpuFollower::MoveTo(uint32_t cpu) {
  if (!usable_ || cpu >= CPU_SETSIZE || !CPU_ISSET(cpu, &allowed_) ||
      sched_getcpu() == static_cast<int>(cpu)) {
    return;
  }
  cpu_set_t just_there;
  CPU_ZERO(&just_there);
  CPU_SET(cpu, &just_there);
  // Narrowing the thread's CPUs to one moves it there at once; widening
  // them again leaves it there, free to go.
  if (sched_setaffinity(0, sizeof(just_there), &just_there) != 0) return;
  if (sched_setaffinity(0, sizeof(allowed_), &allowed_) != 0) {
    // The allowed CPUs changed under us (a cpuset was edited): let the
    // kernel apply whatever is allowed now, and stop moving.
    cpu_set_t any;
    CPU_ZERO(&any);
    for (int i = 0; i < CPU_SETSIZE; ++i) CPU_SET(i, &any);
    sched_setaffinity(0, sizeof(any), &any);
    usable_ = false;
  }
}

}  // namespace h5depot::server
