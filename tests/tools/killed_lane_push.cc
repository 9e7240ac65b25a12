// Test tool: pushes an image of SIZE bytes to TARGET with h5depot::Client
// and SIGKILLs itself from the progress callback once half of it was sent,
// as a client process that dies mid-push would. Exits 1 if the push ended
// before that, 2 on bad usage or if the server cannot be reached.
// Usage: killed_lane_push TARGET IMAGE_ID SIZE
#include <signal.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "h5depot/client.h"
#include "h5depot/internal/hdf5_signature.h"

int main(int argc, char** argv) {
  if (argc != 4) return 2;
  const size_t size = std::strtoull(argv[3], nullptr, 10);
  auto client = h5depot::Client::Connect(argv[1]);
  if (!client.ok()) {
    std::fprintf(stderr, "%s\n", client.status().ToString().c_str());
    return 2;
  }
  std::vector<uint8_t> image(size, 0x5a);
  std::memcpy(image.data(), h5depot::internal::kHdf5Signature,
              std::min(size, sizeof(h5depot::internal::kHdf5Signature)));
  h5depot::PushOptions options;
  options.progress = [](uint64_t done, uint64_t total) {
    if (done >= total / 2) raise(SIGKILL);
  };
  auto pushed = (*client)->Push(argv[2], image.data(), image.size(), options);
  std::fprintf(stderr, "the push ended before it was half done: %s\n",
               pushed.status().ToString().c_str());
  return 1;
}
