// Process A to process B: the example pair (examples/packet_producer.c and
// packet_consumer.c) run as separate processes against a real h5depotd.
// B starts first and says when it is about to wait; only then does A build
// and push the image. B must print exactly what A wrote.
#include <sys/wait.h>

#include <cstdio>
#include <string>

#include "absl/strings/str_cat.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "h5depot/testing/server_process.h"
#include "h5depot/testing/subprocess.h"

namespace {

using ::h5depot::testing::CommandResult;
using ::h5depot::testing::RunCommand;
using ::h5depot::testing::ServerProcess;
using ::h5depot::testing::ServerProcessOptions;
using ::testing::MatchesRegex;

constexpr char kExpectedPacket[] =
    "opened run-42/packet\n"
    "/ @run = 42\n"
    "/ @source = packet_producer\n"
    "/detector @name = calorimeter\n"
    "/detector/adc [4 x 6]:\n"
    "     0    1    2    3    4    5\n"
    "   100  101  102  103  104  105\n"
    "   200  201  202  203  204  205\n"
    "   300  301  302  303  304  305\n"
    "/detector/energy [1000]: first 0, last 249.75, sum 124875\n"
    "/detector/energy @units = GeV\n";

// The rest of what `stream` says, up to its end.
std::string ReadToEnd(FILE* stream) {
  std::string text;
  char chunk[4096];
  size_t n;
  while ((n = std::fread(chunk, 1, sizeof chunk, stream)) > 0) {
    text.append(chunk, n);
  }
  return text;
}

TEST(ExamplesTest, TheConsumerWaitsThenPrintsWhatTheProducerPushed) {
  ServerProcessOptions options;
  options.tcp = false;
  options.unix_socket = true;
  auto server = ServerProcess::Start(options);
  ASSERT_TRUE(server.ok()) << server.status();
  const std::string target = (*server)->unix_target();

  // B runs while A starts, and its output is needed as it comes, which
  // RunCommand (run to completion) cannot give: read B through a pipe. Its
  // own timeout ends it if the image never arrives.
  const std::string consumer_command = absl::StrCat(
      "'", PACKET_CONSUMER_PATH, "' '", target, "' run-42/packet 120");
  FILE* consumer = popen(consumer_command.c_str(), "r");
  ASSERT_NE(consumer, nullptr) << consumer_command;
  char first_line[256] = {};
  const bool started =
      std::fgets(first_line, sizeof first_line, consumer) != nullptr;
  // B is connected and about to wait for an image nobody has pushed yet.
  EXPECT_TRUE(started);
  EXPECT_STREQ(first_line, "waiting for run-42/packet\n");

  CommandResult producer =
      RunCommand({PACKET_PRODUCER_PATH, target, "run-42/packet"});
  EXPECT_EQ(producer.exit_code, 0) << producer.stderr_text;
  EXPECT_THAT(producer.stdout_text,
              MatchesRegex("pushed run-42/packet as generation [0-9]+\n"));

  const std::string packet = ReadToEnd(consumer);
  const int status = pclose(consumer);
  ASSERT_TRUE(WIFEXITED(status)) << status;
  EXPECT_EQ(WEXITSTATUS(status), 0) << packet;
  EXPECT_EQ(packet, kExpectedPacket);
}

TEST(ExamplesTest, TheConsumerGivesUpWhenNothingIsPushedInTime) {
  ServerProcessOptions options;
  auto server = ServerProcess::Start(options);
  ASSERT_TRUE(server.ok()) << server.status();
  CommandResult consumer = RunCommand(
      {PACKET_CONSUMER_PATH, (*server)->target(), "run-42/never", "1"});
  EXPECT_EQ(consumer.exit_code, 3);
  EXPECT_EQ(consumer.stdout_text, "waiting for run-42/never\n");
  EXPECT_THAT(consumer.stderr_text, ::testing::HasSubstr("run-42/never"));
}

}  // namespace
