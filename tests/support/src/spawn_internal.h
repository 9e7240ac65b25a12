// Starting child processes for the test support library: fork + execve with
// the pipes, environment and signal state a test wants, and the small POSIX
// pieces RunCommand and ServerProcess share.
#ifndef H5DEPOT_TESTING_SPAWN_INTERNAL_H_
#define H5DEPOT_TESTING_SPAWN_INTERNAL_H_

#include <sys/types.h>

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"

namespace h5depot::testing::internal {

struct SpawnRequest {
  std::vector<std::string> argv;  // argv[0]: a path or a name in $PATH
  std::map<std::string, std::optional<std::string>> env_changes;
  std::string working_dir;  // empty: inherit
  // Descriptors that become the child's 0, 1 and 2; -1: inherit ours.
  int stdin_fd = -1;
  int stdout_fd = -1;
  int stderr_fd = -1;
  // The child's soft limit on open descriptors (RLIMIT_NOFILE); 0: ours.
  uint64_t max_open_files = 0;
};

struct Child {
  pid_t pid = -1;
  int pid_fd = -1;  // a pidfd for the child, owned by the caller
};

// Starts the child. It gets default signal dispositions and an empty signal
// mask, and is SIGKILLed if the calling thread exits. Returns once execve
// succeeded; INTERNAL (with errno's text) if it failed.
absl::StatusOr<Child> Spawn(const SpawnRequest& request);

// A pipe whose both ends are close-on-exec; {read end, write end}.
absl::StatusOr<std::pair<int, int>> MakePipe();

// Waits up to `timeout` (InfiniteDuration: forever) for the child to exit,
// then reaps it and returns its wait status; nullopt on timeout.
std::optional<int> WaitForExit(const Child& child, absl::Duration timeout);

// Milliseconds from now until `deadline`, rounded up, as poll() takes them;
// -1 (no timeout) for InfiniteFuture.
int PollTimeoutMs(absl::Time deadline);

// "exited with status 3" / "was killed by signal 9 (Killed)".
std::string DescribeWaitStatus(int wait_status);

// Closes `fd` if it is >= 0 and sets it to -1.
void CloseFd(int& fd);

}  // namespace h5depot::testing::internal

#endif  // H5DEPOT_TESTING_SPAWN_INTERNAL_H_
