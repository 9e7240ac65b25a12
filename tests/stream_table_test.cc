// The server's stream table on its own, where a case needs more readers
// at once than a test can run as real clients: the bounds on streams that
// only readers have named and on reader groups per stream. (The streams'
// behaviour end to end, through real servers, is tests/stream_test.cc.)
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "gtest/gtest.h"
#include "server/src/stream_table_internal.h"

namespace h5depot::server {
namespace {

constexpr size_t kBound = StreamTable::kMaxStreamsNamedByReaders;

class StreamTableTest : public ::testing::Test {
 protected:
  StreamTable table_{[] { return absl::Now(); },
                     [](std::vector<std::string>) {},
                     /*start_timer=*/false};

  NextRequest Reader(const std::string& stream) {
    NextRequest request;
    request.stream = stream;
    request.group = "g";
    request.consumer = "c";
    return request;
  }

  // A reader of `stream` that gives up at once: the stream stays named.
  absl::StatusCode AskOnce(const std::string& stream) {
    return table_.NextFor(Reader(stream), absl::InfinitePast()).status().code();
  }

  // A reader of `stream` that waits; its answer lands in `*answer`.
  StreamTable::WaitId Wait(const std::string& stream,
                           std::optional<absl::Status>* answer) {
    return table_.Next(Reader(stream), absl::InfiniteFuture(),
                       [answer](absl::StatusOr<TakenStep> taken) {
                         *answer = taken.status();
                       });
  }
};

TEST_F(StreamTableTest, StreamsNamedOnlyByReadersAreBounded) {
  for (size_t i = 0; i < kBound; ++i) {
    ASSERT_EQ(AskOnce(absl::StrCat("s", i)),
              absl::StatusCode::kDeadlineExceeded);
  }
  EXPECT_EQ(table_.DescribeAll().size(), kBound);
  // One more: the stream named longest ago, with no reader waiting, goes.
  EXPECT_EQ(AskOnce("one-more"), absl::StatusCode::kDeadlineExceeded);
  EXPECT_EQ(table_.DescribeAll().size(), kBound);
  EXPECT_EQ(table_.Describe("s0").status().code(), absl::StatusCode::kNotFound);
  EXPECT_TRUE(table_.Describe("s1").ok());
  EXPECT_TRUE(table_.Describe("one-more").ok());
  // Streams that were appended to do not count, and are never forgotten.
  ASSERT_TRUE(table_.Create("made", StreamPolicy{}).ok());
  EXPECT_EQ(AskOnce("yet-another"), absl::StatusCode::kDeadlineExceeded);
  EXPECT_TRUE(table_.Describe("made").ok());
  EXPECT_EQ(table_.Describe("s1").status().code(), absl::StatusCode::kNotFound);
}

TEST_F(StreamTableTest, AReaderNamingOneMoreIsRefusedWhileEveryOneIsWaitedOn) {
  std::vector<std::optional<absl::Status>> answers(kBound);
  std::vector<StreamTable::WaitId> waits;
  for (size_t i = 0; i < kBound; ++i) {
    waits.push_back(Wait(absl::StrCat("w", i), &answers[i]));
    ASSERT_NE(waits.back(), 0u);
  }
  const absl::Status refused =
      table_.NextFor(Reader("one-more"), absl::InfiniteFuture()).status();
  EXPECT_EQ(refused.code(), absl::StatusCode::kResourceExhausted) << refused;
  EXPECT_NE(refused.message().find("only readers have named"),
            std::string::npos)
      << refused;
  EXPECT_EQ(table_.Describe("one-more").status().code(),
            absl::StatusCode::kNotFound);
  // A stream already named still takes readers, and a step ends a wait.
  std::optional<absl::Status> second_reader;
  EXPECT_NE(Wait("w7", &second_reader), 0u);
  for (const std::optional<absl::Status>& answer : answers) {
    EXPECT_FALSE(answer.has_value());
  }

  // Once a reader gives up, its stream makes room.
  ASSERT_TRUE(table_.CancelWait(waits[3], absl::CancelledError("gone")));
  EXPECT_EQ(AskOnce("one-more"), absl::StatusCode::kDeadlineExceeded);
  EXPECT_EQ(table_.Describe("w3").status().code(), absl::StatusCode::kNotFound);
  EXPECT_TRUE(table_.Describe("w2").ok());
  table_.Shutdown();
  EXPECT_EQ(answers[0]->code(), absl::StatusCode::kUnavailable);
  EXPECT_EQ(second_reader->code(), absl::StatusCode::kUnavailable);
}

// Every group holds the steps it has not acknowledged: a stream takes
// kMaxGroupsPerStream of them, and a reader naming one more is refused
// until one is deleted. The groups it has keep reading.
TEST_F(StreamTableTest, ReaderGroupsPerStreamAreBounded) {
  ASSERT_TRUE(table_.Create("busy", StreamPolicy{}).ok());
  NextRequest reader = Reader("busy");
  for (size_t i = 0; i < StreamTable::kMaxGroupsPerStream; ++i) {
    reader.group = absl::StrCat("g", i);
    ASSERT_EQ(table_.NextFor(reader, absl::InfinitePast()).status().code(),
              absl::StatusCode::kDeadlineExceeded);
  }
  reader.group = "one-more";
  const absl::Status refused =
      table_.NextFor(reader, absl::InfiniteFuture()).status();
  EXPECT_EQ(refused.code(), absl::StatusCode::kResourceExhausted) << refused;
  EXPECT_NE(refused.message().find("reader groups"), std::string::npos)
      << refused;
  auto described = table_.Describe("busy");
  ASSERT_TRUE(described.ok()) << described.status();
  EXPECT_EQ(described->groups.size(), StreamTable::kMaxGroupsPerStream);

  reader.group = "g7";
  EXPECT_EQ(table_.NextFor(reader, absl::InfinitePast()).status().code(),
            absl::StatusCode::kDeadlineExceeded);
  ASSERT_TRUE(table_.DeleteGroup("busy", "g7").ok());
  reader.group = "one-more";
  EXPECT_EQ(table_.NextFor(reader, absl::InfinitePast()).status().code(),
            absl::StatusCode::kDeadlineExceeded);
}

}  // namespace
}  // namespace h5depot::server
