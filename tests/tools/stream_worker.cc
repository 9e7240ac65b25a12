// Test tool: a member of a stream's reader group that takes one step and
// dies holding it. Takes the next step of STREAM for GROUP, leased for
// LEASE_MS, prints "took N" and waits to be killed, as a worker that
// crashes mid-step would. Usage: stream_worker TARGET STREAM GROUP LEASE_MS
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <string>

#include "absl/time/time.h"
#include "h5depot/client.h"

int main(int argc, char** argv) {
  if (argc != 5) return 2;
  auto client = h5depot::Client::Connect(argv[1]);
  if (!client.ok()) return 1;
  h5depot::NextOptions options;
  options.wait = absl::Seconds(60);
  options.lease = absl::Milliseconds(std::atoll(argv[4]));
  auto step = (*client)->Next(argv[2], argv[3], options);
  if (!step.ok()) {
    std::fprintf(stderr, "%s\n", std::string(step.status().message()).c_str());
    return 1;
  }
  std::printf("took %llu\n", static_cast<unsigned long long>(step->step));
  std::fflush(stdout);
  pause();  // until killed
  return 0;
}
