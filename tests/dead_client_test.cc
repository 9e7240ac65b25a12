// A client process that dies in the middle of a push leaves nothing behind:
// no image, no memory reservation.
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <string>
#include <thread>

#include "gtest/gtest.h"
#include "h5depot/client.h"
#include "h5depot/testing/in_process_depot.h"

extern char** environ;

namespace h5depot {
namespace {

TEST(DeadClientTest, ClientKilledMidPushLeavesNothingBehind) {
  auto depot = testing::InProcessDepot::Start();
  ASSERT_TRUE(depot.ok()) << depot.status();
  const std::string target = (*depot)->target();

  int out[2];
  ASSERT_EQ(pipe(out), 0);
  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  posix_spawn_file_actions_adddup2(&actions, out[1], STDOUT_FILENO);
  posix_spawn_file_actions_addclose(&actions, out[0]);
  std::string tool = ABANDONED_PUSH_PATH;
  std::string id = "dying/client";
  char* argv[] = {tool.data(), const_cast<char*>(target.c_str()), id.data(),
                  nullptr};
  pid_t pid = 0;
  ASSERT_EQ(posix_spawn(&pid, tool.c_str(), &actions, nullptr, argv, environ),
            0);
  posix_spawn_file_actions_destroy(&actions);
  close(out[1]);

  // Wait until the tool is mid-stream: the server holds its reservation.
  char line[64] = {};
  FILE* from_tool = fdopen(out[0], "r");
  ASSERT_NE(std::fgets(line, sizeof(line), from_tool), nullptr);
  EXPECT_STREQ(line, "streaming\n");
  EXPECT_EQ((*depot)->store().Stats().reserved_bytes, uint64_t{64} << 20);

  kill(pid, SIGKILL);
  int status = 0;
  ASSERT_EQ(waitpid(pid, &status, 0), pid);
  std::fclose(from_tool);

  // The server learns of the death from the connection; bounded wait.
  const absl::Time give_up = absl::Now() + absl::Seconds(20);
  while ((*depot)->store().Stats().reserved_bytes != 0 &&
         absl::Now() < give_up) {
    std::this_thread::yield();
  }
  EXPECT_EQ((*depot)->store().Stats().reserved_bytes, 0u);
  auto client = Client::Connect(target);
  ASSERT_TRUE(client.ok());
  EXPECT_EQ((*client)->Stat(id).status().code(), absl::StatusCode::kNotFound);
}

}  // namespace
}  // namespace h5depot
