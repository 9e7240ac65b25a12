// Running the project's real binaries from tests: RunCommand() runs one
// process to completion and captures what it printed; H5depotdPath() and
// H5depotCliPath() locate the binaries built alongside the tests.
//
// Example:
//   CommandResult result = RunCommand(
//       {H5depotCliPath(), "--server", server->target(), "ls"});
//   EXPECT_EQ(result.exit_code, 0) << result.stderr_text;
#ifndef H5DEPOT_TESTING_SUBPROCESS_H_
#define H5DEPOT_TESTING_SUBPROCESS_H_

#include <sys/types.h>

#include <map>
#include <optional>
#include <string>
#include <vector>

#include "absl/time/time.h"

namespace h5depot::testing {

// Absolute paths of the h5depotd server and the h5depot command-line tool of
// this build.
const std::string& H5depotdPath();
const std::string& H5depotCliPath();

// How many memfds named `name` (memfd_create's name) process `pid` holds
// open, from /proc/PID/fd: which process holds whose memory.
int MemfdsOf(pid_t pid, const std::string& name);

struct CommandOptions {
  // Written to the child's standard input, which is then closed. The child
  // may exit without reading it all.
  std::string stdin_data;
  // Changes to the child's environment, which is otherwise this process's:
  // a value sets the variable, nullopt removes it.
  std::map<std::string, std::optional<std::string>> env;
  // Directory the child starts in; empty: this process's.
  std::string working_dir;
  // A child still running after this long is killed with SIGKILL and the
  // result says timed_out. A safety net against hung tests, not a
  // measurement: keep it generous.
  absl::Duration timeout = absl::Seconds(120);
};

struct CommandResult {
  // The exit status; -1 if the child was killed by a signal, 127 if it
  // could not be started at all (stderr_text then says why).
  int exit_code = -1;
  int term_signal = 0;  // the signal that killed the child, else 0
  bool timed_out = false;
  std::string stdout_text;  // everything written to stdout, byte for byte
  std::string stderr_text;  // everything written to stderr, byte for byte
};

// Runs argv[0] (a path, or a name looked up in $PATH) with arguments
// argv[1..] and waits for it to exit. The child gets its own stdin, stdout
// and stderr pipes (never a terminal) and is killed if this process dies.
// Thread-safe: concurrent calls run concurrent children.
CommandResult RunCommand(const std::vector<std::string>& argv,
                         const CommandOptions& options = {});

}  // namespace h5depot::testing

#endif  // H5DEPOT_TESTING_SUBPROCESS_H_
