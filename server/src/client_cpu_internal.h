// Serving a local client's small requests on the CPU it waits on.
//
// A client and its connection's thread hand each small request and answer
// to one another, one of them running at a time. On one CPU every handoff
// is a cheap local wake-up, with the bytes still in that CPU's cache; on
// two, each is a cross-CPU wake-up. The kernel's scheduler pairs such
// threads on its own only while it sees spare capacity: once every CPU is
// busy, pairs it has split stay split. With 16 clients pushing 4 KiB images
// over a Unix socket, about half the wake-ups crossed CPUs and following
// the client's CPU served a third more pushes (docs/PERFORMANCE.md).
// Internal to the server.
#ifndef H5DEPOT_SERVER_CLIENT_CPU_INTERNAL_H_
#define H5DEPOT_SERVER_CLIENT_CPU_INTERNAL_H_

#include <sched.h>

#include <cstdint>

namespace h5depot::server {

// Moves the thread that made it onto a given CPU, within the CPUs it was
// allowed when made (an operator's taskset or cpuset holds). The move is a
// nudge, not a pin: the thread stays free to be moved again by the
// scheduler. One per connection thread, used by that thread alone.
class ClientCpuFollower {
 public:
  ClientCpuFollower();

  // Moves the calling thread onto `cpu` unless it runs there already or
  // may not run there. Costs nothing when it runs there already, two
  // system calls when it moves.
  void MoveTo(uint32_t cpu);

 private:
  cpu_set_t allowed_;
  bool usable_ = false;  // false: allowed_ unknown, or restoring it failed
};

}  // namespace h5depot::server

#endif  // H5DEPOT_SERVER_CLIENT_CPU_INTERNAL_H_
