// A second process for the remote driver tests: creates, rewrites or checks
// an image through the driver, as another application would.
//
//   remote_driver_helper create TARGET IMAGE_ID SEED
//   remote_driver_helper overwrite-ints TARGET IMAGE_ID SEED
//   remote_driver_helper check TARGET IMAGE_ID SEED INTS_SEED
//
// Exit status: 0 done, 1 usage, 2 open/create failed, 3 content wrong,
// 4 writing or committing failed. The HDF5 error stack goes to stderr.
#include <cstdio>
#include <cstdlib>
#include <string>

#include "H5FDremote.h"
#include "remote_driver_content.h"

namespace {

int Usage() {
  std::fprintf(stderr,
               "usage: remote_driver_helper create|overwrite-ints|check "
               "TARGET IMAGE_ID SEED [INTS_SEED]\n");
  return 1;
}

// Commits and closes `file` as an application should: H5Fflush reports a
// failed commit; H5Fclose cannot (see H5FDremote.h).
bool Commit(hid_t file) {
  const bool flushed = H5Fflush(file, H5F_SCOPE_GLOBAL) >= 0;
  const bool closed = H5Fclose(file) >= 0;
  return flushed && closed;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 5) return Usage();
  const std::string command = argv[1];
  const char* target = argv[2];
  const char* image_id = argv[3];
  const int seed = std::atoi(argv[4]);

  hid_t fapl = H5Pcreate(H5P_FILE_ACCESS);
  if (H5Pset_fapl_remote(fapl, target, nullptr) < 0) return 2;

  if (command == "create") {
    hid_t file = H5Fcreate(image_id, H5F_ACC_EXCL, H5P_DEFAULT, fapl);
    if (file < 0) return 2;
    const bool written = h5depot::testing::WriteContent(file, seed);
    return Commit(file) && written ? 0 : 4;
  }
  if (command == "overwrite-ints") {
    hid_t file = H5Fopen(image_id, H5F_ACC_RDWR, fapl);
    if (file < 0) return 2;
    const bool written = h5depot::testing::OverwriteInts(file, seed);
    return Commit(file) && written ? 0 : 4;
  }
  if (command == "check" && argc == 6) {
    hid_t file = H5Fopen(image_id, H5F_ACC_RDONLY, fapl);
    if (file < 0) return 2;
    const std::string problem =
        h5depot::testing::CheckContent(file, seed, std::atoi(argv[5]));
    H5Fclose(file);
    if (!problem.empty()) {
      std::fprintf(stderr, "%s\n", problem.c_str());
      return 3;
    }
    return 0;
  }
  return Usage();
}
