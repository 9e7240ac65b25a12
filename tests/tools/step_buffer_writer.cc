// Test tool: a stream writer that builds every step in place, in the step
// buffers its Client lends (Client::BeginStep, CommitStep), and fills them
// again as fast as they come back. Step N is StepBufferImage(N)
// (hdf5_images.h). Prints "buffers M", the most step buffers this
// process ever had mapped at once (counted in /proc/self/fd), then finishes
// the stream. Usage: step_buffer_writer TARGET STREAM STEPS
#include <dirent.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>

#include "h5depot/client.h"
#include "h5depot/testing/hdf5_images.h"

namespace {

// memfds named as the client names its step buffers.
int StepBuffersOpen() {
  int count = 0;
  DIR* fds = opendir("/proc/self/fd");
  if (fds == nullptr) return -1;
  while (dirent* entry = readdir(fds)) {
    char link[256] = {};
    const std::string path = std::string("/proc/self/fd/") + entry->d_name;
    if (readlink(path.c_str(), link, sizeof(link) - 1) > 0 &&
        std::strstr(link, "memfd:h5depot-step-buffer") != nullptr) {
      ++count;
    }
  }
  closedir(fds);
  return count;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 4) return 2;
  auto client = h5depot::Client::Connect(argv[1]);
  if (!client.ok()) return 1;
  const std::string stream = argv[2];
  const uint64_t steps = std::strtoull(argv[3], nullptr, 10);
  int most_buffers = 0;
  for (uint64_t step = 0; step < steps; ++step) {
    const std::string image = h5depot::testing::StepBufferImage(step);
    auto buffer = (*client)->BeginStep(stream, image.size());
    if (!buffer.ok()) {
      std::fprintf(stderr, "%s\n", buffer.status().ToString().c_str());
      return 1;
    }
    std::memcpy(buffer->data(), image.data(), image.size());
    auto appended = (*client)->CommitStep(*std::move(buffer));
    if (!appended.ok() || appended->step != step) {
      std::fprintf(stderr, "step %llu: %s\n",
                   static_cast<unsigned long long>(step),
                   appended.status().ToString().c_str());
      return 1;
    }
    most_buffers = std::max(most_buffers, StepBuffersOpen());
  }
  std::printf("buffers %d\n", most_buffers);
  if (!(*client)->FinishStream(stream).ok()) return 1;
  return 0;
}
