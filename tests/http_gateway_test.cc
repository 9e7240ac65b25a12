// h5depotd --http-listen: a real server's HTTP gateway, spoken to over raw
// sockets as any HTTP client would, and read by real HDF5 programs: h5py
// and HDF5's own ROS3 driver.
#include <arpa/inet.h>
#include <netinet/in.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstdint>
#include <cstring>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/string_view.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "gtest/gtest.h"
#include "h5depot/client.h"
#include "h5depot/internal/token.h"
#include "h5depot/testing/hdf5_images.h"
#include "h5depot/testing/server_paths.h"
#include "h5depot/testing/server_process.h"
#include "h5depot/testing/subprocess.h"
#include "h5depot/testing/temp_dir.h"
#include "h5depot/testing/test_pki.h"
#include "hdf5.h"
#include "server/src/access_rules_internal.h"
#include "server/src/http_semantics_internal.h"
#include "tests/h5py_images.h"

namespace h5depot {
namespace {

using ::h5depot::testing::MakeHdf5Image;
using ::h5depot::testing::ServerProcess;
using ::h5depot::testing::ServerProcessOptions;
using ::h5depot::testing::TempDir;

// A TCP connection to 127.0.0.1:`port`; -1 if it cannot be made.
int ConnectTcp(int port) {
  const int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return -1;
  sockaddr_in address{};
  address.sin_family = AF_INET;
  address.sin_port = htons(static_cast<uint16_t>(port));
  address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (connect(fd, reinterpret_cast<const sockaddr*>(&address),
              sizeof(address)) != 0) {
    close(fd);
    return -1;
  }
  return fd;
}

bool SendAll(int fd, absl::string_view bytes) {
  while (!bytes.empty()) {
    const ssize_t sent = send(fd, bytes.data(), bytes.size(), MSG_NOSIGNAL);
    if (sent <= 0) return false;
    bytes.remove_prefix(static_cast<size_t>(sent));
  }
  return true;
}

struct Answer {
  int status = 0;                              // 0: no answer
  std::map<std::string, std::string> headers;  // names in lower case
  std::map<std::string, int> header_lines;     // how often each came
  std::string body;

  std::string header(const std::string& name) const {
    auto found = headers.find(name);
    return found == headers.end() ? "" : found->second;
  }
};

// Reads one answer's status line and headers from `fd` into `answer`;
// leaves in `rest` what came after them.
bool ReadHead(int fd, Answer& answer, std::string& rest) {
  std::string received;
  size_t end;
  while ((end = received.find("\r\n\r\n")) == std::string::npos) {
    char buffer[4096];
    const ssize_t got = recv(fd, buffer, sizeof buffer, 0);
    if (got <= 0) return false;
    received.append(buffer, static_cast<size_t>(got));
  }
  rest = received.substr(end + 4);
  std::vector<std::string> lines =
      absl::StrSplit(received.substr(0, end), "\r\n");
  std::vector<std::string> status_line = absl::StrSplit(lines[0], ' ');
  if (status_line.size() < 2 ||
      !absl::SimpleAtoi(status_line[1], &answer.status)) {
    return false;
  }
  for (size_t i = 1; i < lines.size(); ++i) {
    const size_t colon = lines[i].find(':');
    if (colon == std::string::npos) continue;
    const std::string name = absl::AsciiStrToLower(lines[i].substr(0, colon));
    answer.headers[name] =
        std::string(absl::StripAsciiWhitespace(lines[i].substr(colon + 1)));
    ++answer.header_lines[name];
  }
  return true;
}

// The answer's body: what came after its head (`rest`), then everything
// until the server closes the connection.
void ReadBodyToEnd(int fd, std::string rest, Answer& answer) {
  answer.body = std::move(rest);
  char buffer[65536];
  ssize_t got;
  while ((got = recv(fd, buffer, sizeof buffer, 0)) > 0) {
    answer.body.append(buffer, static_cast<size_t>(got));
  }
}

// One request on a connection of its own: `method` of `target` with
// `headers` ("Name: value\r\n" each) and `body`; the whole answer, read to
// its end.
Answer Request(int port, const std::string& method, const std::string& target,
               const std::string& headers = "", const std::string& body = "") {
  Answer answer;
  const int fd = ConnectTcp(port);
  if (fd < 0) return answer;
  const std::string request =
      absl::StrCat(method, " ", target, " HTTP/1.1\r\nHost: 127.0.0.1\r\n",
                   headers, "Connection: close\r\n\r\n", body);
  std::string rest;
  if (SendAll(fd, request) && ReadHead(fd, answer, rest)) {
    ReadBodyToEnd(fd, std::move(rest), answer);
  }
  close(fd);
  return answer;
}

Answer Get(int port, const std::string& target,
           const std::string& headers = "") {
  return Request(port, "GET", target, headers);
}

// A PUT of `body` (with its Content-Length) to `target`, as careful
// clients send one: the body only once the server said 100 Continue, so
// that a refusal comes before it.
Answer Put(int port, const std::string& target, const std::string& body,
           const std::string& headers = "") {
  Answer answer;
  const int fd = ConnectTcp(port);
  if (fd < 0) return answer;
  std::string rest;
  if (SendAll(fd,
              absl::StrCat("PUT ", target, " HTTP/1.1\r\nHost: 127.0.0.1\r\n",
                           headers, "Content-Length: ", body.size(),
                           "\r\nExpect: 100-continue\r\n"
                           "Connection: close\r\n\r\n")) &&
      ReadHead(fd, answer, rest)) {
    if (answer.status == 100) {
      answer = Answer();
      if (!SendAll(fd, body) || !ReadHead(fd, answer, rest)) {
        close(fd);
        return Answer();
      }
    }
    ReadBodyToEnd(fd, std::move(rest), answer);
  }
  close(fd);
  return answer;
}

// --- HTTP's rules, apart from any server ----------------------------------

TEST(HttpSemanticsTest, RangesAreCutToTheImage) {
  using Kind = server::http::RangeSelection::Kind;
  auto select = [](const char* header, uint64_t size) {
    return server::http::SelectRange(header, size);
  };
  EXPECT_EQ(select("", 10).kind, Kind::kWhole);
  EXPECT_EQ(select("bytes=0-4", 10).range.length, 5u);
  EXPECT_EQ(select("BYTES=2-", 10).range.offset, 2u);
  EXPECT_EQ(select("bytes=-3", 10).range.offset, 7u);
  EXPECT_EQ(select("bytes=-0", 10).kind, Kind::kUnsatisfiable);
  EXPECT_EQ(select("bytes=10-", 10).kind, Kind::kUnsatisfiable);
  EXPECT_EQ(select("bytes=0-", 0).kind, Kind::kUnsatisfiable);
  EXPECT_EQ(select("bytes=-5", 0).kind, Kind::kUnsatisfiable);
  EXPECT_EQ(select("bytes=5-2", 10).kind, Kind::kWhole);  // invalid
  EXPECT_EQ(select("bytes=x-2", 10).kind, Kind::kWhole);
  EXPECT_EQ(select("bytes=-", 10).kind, Kind::kWhole);
  EXPECT_EQ(select("bytes=99999999999999999999-", 10).kind, Kind::kWhole);
  EXPECT_EQ(select("bytes=18446744073709551615-", 10).kind,
            Kind::kUnsatisfiable);
}

TEST(HttpSemanticsTest, TagsCompareStronglyForIfMatchOnly) {
  using server::http::Comparison;
  using server::http::TagListMatches;
  EXPECT_TRUE(TagListMatches("\"1-a\"", "\"1-a\"", Comparison::kStrong));
  EXPECT_TRUE(
      TagListMatches(" \"2-b\" , \"1-a\"", "\"1-a\"", Comparison::kStrong));
  EXPECT_FALSE(TagListMatches("W/\"1-a\"", "\"1-a\"", Comparison::kStrong));
  EXPECT_TRUE(TagListMatches("W/\"1-a\"", "\"1-a\"", Comparison::kWeak));
  EXPECT_TRUE(TagListMatches("*", "\"1-a\"", Comparison::kStrong));
  EXPECT_FALSE(TagListMatches("\"1-ab\"", "\"1-a\"", Comparison::kWeak));
}

TEST(HttpSemanticsTest, AWritesIfMatchNamesOneGenerationOfThisServer) {
  using server::http::GenerationOfTag;
  server::ImageDescription image;
  image.generation = 42;
  image.checksum = 0x0123456789abcdefULL;
  EXPECT_EQ(GenerationOfTag(server::http::EntityTag(image)), 42u);
  EXPECT_EQ(GenerationOfTag(" \"7-0123456789ABCDEF\" "), 7u);
  EXPECT_EQ(GenerationOfTag("\"7-0123456789abcdeg\""), std::nullopt);
  EXPECT_EQ(GenerationOfTag("\"7-0123\""), std::nullopt);
  EXPECT_EQ(GenerationOfTag("W/\"7-0123456789abcdef\""), std::nullopt);
  EXPECT_EQ(GenerationOfTag("\"7-0123456789abcdef\", \"8-0123456789abcdef\""),
            std::nullopt);
  EXPECT_EQ(GenerationOfTag("*"), std::nullopt);
  EXPECT_EQ(GenerationOfTag("\"x-0123456789abcdef\""), std::nullopt);
}

TEST(HttpSemanticsTest, PathsDecodeStrictly) {
  using server::http::DecodePath;
  using server::http::DecodeQueryValue;
  EXPECT_EQ(DecodePath("/a%2Fb%2e"), "/a/b.");
  EXPECT_EQ(DecodePath("/a+b"), "/a+b");
  EXPECT_EQ(DecodeQueryValue("a+b%2B"), "a b+");
  EXPECT_EQ(DecodePath("/a%00b"), std::nullopt);
  EXPECT_EQ(DecodePath("/a%0a"), std::nullopt);
  EXPECT_EQ(DecodePath("/a%"), std::nullopt);
  EXPECT_EQ(DecodePath("/a%4"), std::nullopt);
  EXPECT_EQ(DecodePath("/a%g1"), std::nullopt);
}

TEST(HttpSemanticsTest, ListingsAndErrorsAreJson) {
  server::ImageDescription image;
  image.image_id = "a\"b";
  image.size = 5;
  image.generation = 7;
  image.checksum = 0xabc;
  image.created_unix_micros = 1'000'000;
  EXPECT_EQ(server::http::ListingJson({image}, "t"),
            "{\"images\":[{\"id\":\"a\\\"b\",\"size\":5,\"generation\":7,"
            "\"checksum\":\"0000000000000abc\","
            "\"created\":\"1970-01-01T00:00:01.000000Z\",\"expires\":null}],"
            "\"next_page_token\":\"t\"}\n");
  EXPECT_EQ(
      server::http::ErrorJson(absl::NotFoundError("no\nimage")),
      "{\"error\":{\"code\":\"NOT_FOUND\",\"message\":\"no\\nimage\"}}\n");
  EXPECT_EQ(server::http::StatusFor(absl::StatusCode::kPermissionDenied), 403);
  EXPECT_EQ(server::http::StatusFor(absl::StatusCode::kUnauthenticated), 401);
  EXPECT_EQ(server::http::StatusFor(absl::StatusCode::kResourceExhausted), 429);
  EXPECT_EQ(server::http::BearerToken("bearer  abc "), "abc");
  EXPECT_EQ(server::http::BearerToken("Basic abc"), "");
}

TEST(HttpSemanticsTest, ThePublicPrincipalOnlyReadsNamedPrefixes) {
  auto parse = [](const std::string& text) {
    return server::AccessRules::Parse(text, "auth");
  };
  absl::StatusOr<std::unique_ptr<server::AccessRules>> rules =
      parse("everyone read public pub/ open/\n");
  ASSERT_TRUE(rules.ok()) << rules.status();
  ASSERT_NE((*rules)->FindPublic(), nullptr);
  EXPECT_TRUE((*rules)->FindPublic()->MayTouch("pub/x"));
  EXPECT_FALSE((*rules)->FindPublic()->MayTouch("secret/x"));
  EXPECT_EQ((*rules)->Find(""), nullptr);
  EXPECT_EQ(parse("everyone write public pub/\n").status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(parse("everyone read public\n").status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(parse("a read public x/\nb read public y/\n").status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(parse("everyone read public *\n").ok());
}

// --- A real h5depotd ------------------------------------------------------

class HttpGatewayTest : public ::testing::Test {
 protected:
  void SetUp() override { Start({}); }

  void Start(std::vector<std::string> flags) {
    server_.reset();
    ServerProcessOptions options;
    options.extra_flags = {"--http-listen=127.0.0.1:0"};
    options.extra_flags.insert(options.extra_flags.end(), flags.begin(),
                               flags.end());
    auto server = ServerProcess::Start(options);
    ASSERT_TRUE(server.ok()) << server.status();
    server_ = *std::move(server);
    port_ = server_->ReportedPort("h5depotd HTTP gateway on http");
    ASSERT_NE(port_, 0) << server_->startup_output();
  }

  std::unique_ptr<Client> Connect(const std::string& token = "") {
    ClientOptions options;
    options.token = token;
    auto client = Client::Connect(server_->target(), options);
    EXPECT_TRUE(client.ok()) << client.status();
    return client.ok() ? *std::move(client) : nullptr;
  }

  // Pushes `bytes` as `id`; its generation.
  uint64_t Push(const std::string& id, const std::string& bytes,
                const std::string& token = "") {
    std::unique_ptr<Client> client = Connect(token);
    if (client == nullptr) return 0;
    absl::StatusOr<ImageInfo> pushed =
        client->Push(id, bytes.data(), bytes.size());
    EXPECT_TRUE(pushed.ok()) << pushed.status();
    return pushed.ok() ? pushed->generation : 0;
  }

  std::string Url(const std::string& id) const {
    return absl::StrCat("http://127.0.0.1:", port_, "/v1/images/", id);
  }

  std::unique_ptr<ServerProcess> server_;
  int port_ = 0;
};

TEST_F(HttpGatewayTest, AGetIsTheWholeImageWithItsDescription) {
  const std::string image = MakeHdf5Image(100000, 1);
  const uint64_t generation = Push("runs/a.h5", image);

  const Answer got = Get(port_, "/v1/images/runs/a.h5");
  ASSERT_EQ(got.status, 200);
  EXPECT_EQ(got.body, image);
  EXPECT_EQ(got.header("content-length"), absl::StrCat(image.size()));
  EXPECT_EQ(got.header("content-type"), "application/x-hdf5");
  EXPECT_EQ(got.header("accept-ranges"), "bytes");
  EXPECT_EQ(got.header("x-h5depot-generation"), absl::StrCat(generation));
  EXPECT_EQ(got.header("etag").rfind(absl::StrCat("\"", generation, "-"), 0),
            0u)
      << got.header("etag");

  const Answer head = Request(port_, "HEAD", "/v1/images/runs/a.h5");
  ASSERT_EQ(head.status, 200);
  EXPECT_EQ(head.body, "");
  EXPECT_EQ(head.header("content-length"), absl::StrCat(image.size()));
  EXPECT_EQ(head.header("etag"), got.header("etag"));
}

TEST_F(HttpGatewayTest, RangesSelectTheirBytes) {
  const std::string image = MakeHdf5Image(50000, 2);
  Push("r.h5", image);
  const std::string size = absl::StrCat(image.size());
  struct Case {
    std::string range;
    uint64_t first;
    uint64_t length;
  };
  const uint64_t n = image.size();
  for (const Case& c : std::vector<Case>{
           {"bytes=0-0", 0, 1},                                    // first byte
           {"bytes=1000-1999", 1000, 1000},                        // middle
           {absl::StrCat("bytes=", n - 1, "-", n - 1), n - 1, 1},  // last byte
           {"bytes=-100", n - 100, 100},                           // suffix
           {absl::StrCat("bytes=", n - 10, "-"), n - 10, 10},      // open end
           {absl::StrCat("bytes=", n - 10, "-", n + 500), n - 10, 10},
           {absl::StrCat("bytes=-", n + 5), 0, n},  // suffix past the start
       }) {
    SCOPED_TRACE(c.range);
    const Answer got =
        Get(port_, "/v1/images/r.h5", absl::StrCat("Range: ", c.range, "\r\n"));
    ASSERT_EQ(got.status, 206);
    EXPECT_EQ(got.body, image.substr(c.first, c.length));
    EXPECT_EQ(got.header("content-range"),
              absl::StrCat("bytes ", c.first, "-", c.first + c.length - 1, "/",
                           size));
  }
  // Past the end: 416, saying how long the image is.
  const Answer past =
      Get(port_, "/v1/images/r.h5", absl::StrCat("Range: bytes=", n, "-\r\n"));
  EXPECT_EQ(past.status, 416);
  EXPECT_EQ(past.header("content-range"), absl::StrCat("bytes */", size));
  // Several ranges, or a malformed one: the whole image.
  for (const std::string& ignored :
       {std::string("bytes=0-1,5-6"), std::string("bytes=abc"),
        std::string("items=0-1")}) {
    const Answer whole =
        Get(port_, "/v1/images/r.h5", absl::StrCat("Range: ", ignored, "\r\n"));
    EXPECT_EQ(whole.status, 200) << ignored;
    EXPECT_EQ(whole.body.size(), image.size()) << ignored;
  }
}

TEST_F(HttpGatewayTest, BadIdsAreRefusedAndUnknownOnesNotFound) {
  Push("dir/a.h5", MakeHdf5Image(4096, 3));
  EXPECT_EQ(Get(port_, "/v1/images/dir/none.h5").status, 404);
  EXPECT_EQ(Request(port_, "HEAD", "/v1/images/dir/none.h5").status, 404);
  // Percent-encoded ids are the ids they spell.
  EXPECT_EQ(Get(port_, "/v1/images/dir%2Fa%2Eh5").status, 200);
  EXPECT_EQ(Get(port_, "/v1/images/dir/%61.h5").status, 200);
  // A %00 must not cut the id short into one that exists.
  EXPECT_EQ(Get(port_, "/v1/images/dir/a.h5%00.x").status, 400);
  EXPECT_EQ(Get(port_, "/v1/images/dir/a.h5%2").status, 400);
  EXPECT_EQ(Get(port_, "/v1/images/dir/a.h5%zz").status, 400);
  // '..' is no way out of an id: no id has a '..' segment.
  EXPECT_EQ(Get(port_, "/v1/images/dir/../dir/a.h5").status, 400);
  EXPECT_EQ(Get(port_, "/v1/images/dir/%2E%2E/dir/a.h5").status, 400);
  EXPECT_EQ(Get(port_, "/v1/images/").status, 200);  // the listing
  EXPECT_EQ(Get(port_, "/v1/images/a%20b").status, 400);
  const Answer unknown = Get(port_, "/v2/other");
  EXPECT_EQ(unknown.status, 404);
  EXPECT_NE(unknown.body.find("\"code\":\"NOT_FOUND\""), std::string::npos)
      << unknown.body;
  // The listing is only read.
  const Answer post = Request(port_, "POST", "/v1/images");
  EXPECT_EQ(post.status, 405);
  EXPECT_EQ(post.header("allow"), "GET, HEAD");
  EXPECT_EQ(Request(port_, "POST", "/v1/images/dir/a.h5").header("allow"),
            "GET, HEAD, PUT, DELETE");
  EXPECT_EQ(Get(port_, "/v1/images/dir/a.h5?generation=x").status, 400);
}

TEST_F(HttpGatewayTest, EntityTagsMakeRequestsConditional) {
  const std::string first = MakeHdf5Image(8192, 4);
  Push("c.h5", first);
  const std::string tag = Get(port_, "/v1/images/c.h5").header("etag");
  ASSERT_FALSE(tag.empty());

  const Answer not_modified = Get(port_, "/v1/images/c.h5",
                                  absl::StrCat("If-None-Match: ", tag, "\r\n"));
  EXPECT_EQ(not_modified.status, 304);
  EXPECT_TRUE(not_modified.body.empty());
  // A 304 may give only the length the 200 has (RFC 9110 section 8.6): a
  // cache that took "0" would think the image empty.
  EXPECT_EQ(not_modified.header("content-length"), absl::StrCat(first.size()));
  EXPECT_EQ(not_modified.header_lines.at("content-length"), 1);
  EXPECT_EQ(not_modified.header_lines.count("transfer-encoding"), 0u);
  EXPECT_EQ(Get(port_, "/v1/images/c.h5",
                absl::StrCat("If-None-Match: \"1-0\", W/", tag, "\r\n"))
                .status,
            304);
  EXPECT_EQ(Get(port_, "/v1/images/c.h5", "If-None-Match: \"1-0\"\r\n").status,
            200);
  EXPECT_EQ(
      Get(port_, "/v1/images/c.h5", absl::StrCat("If-Match: ", tag, "\r\n"))
          .status,
      200);
  EXPECT_EQ(Get(port_, "/v1/images/c.h5", "If-Match: \"1-0\"\r\n").status, 412);

  // A new generation has a new tag: old conditions now say so.
  Push("c.h5", MakeHdf5Image(8192, 5));
  EXPECT_EQ(Get(port_, "/v1/images/c.h5",
                absl::StrCat("If-None-Match: ", tag, "\r\n"))
                .status,
            200);
  EXPECT_EQ(
      Get(port_, "/v1/images/c.h5", absl::StrCat("If-Match: ", tag, "\r\n"))
          .status,
      412);
  // If-Range with the old tag: the whole new image, not a piece of it.
  const Answer changed =
      Get(port_, "/v1/images/c.h5",
          absl::StrCat("Range: bytes=0-9\r\nIf-Range: ", tag, "\r\n"));
  EXPECT_EQ(changed.status, 200);
  const std::string new_tag = changed.header("etag");
  EXPECT_NE(new_tag, tag);
  EXPECT_EQ(Get(port_, "/v1/images/c.h5",
                absl::StrCat("Range: bytes=0-9\r\nIf-Range: ", new_tag, "\r\n"))
                .status,
            206);
  // ?generation=N names one generation: the current one is served, one
  // nobody holds any more is gone.
  const std::string generation = changed.header("x-h5depot-generation");
  EXPECT_EQ(Get(port_, absl::StrCat("/v1/images/c.h5?generation=", generation))
                .status,
            200);
  EXPECT_EQ(Get(port_, "/v1/images/c.h5?generation=1").status, 404);
}

TEST_F(HttpGatewayTest, AReplaceMidDownloadDoesNotMixGenerations) {
  const std::string first = MakeHdf5Image(64 << 20, 6);
  Push("big.h5", first);
  const int fd = ConnectTcp(port_);
  ASSERT_GE(fd, 0);
  ASSERT_TRUE(SendAll(fd,
                      "GET /v1/images/big.h5 HTTP/1.1\r\nHost: x\r\n"
                      "Connection: close\r\n\r\n"));
  Answer answer;
  std::string body;
  ASSERT_TRUE(ReadHead(fd, answer, body));
  ASSERT_EQ(answer.status, 200);
  // The download is under way; the image is replaced under it.
  const std::string second = MakeHdf5Image(64 << 20, 7);
  Push("big.h5", second);
  char buffer[1 << 16];
  ssize_t got;
  while ((got = recv(fd, buffer, sizeof buffer, 0)) > 0) {
    body.append(buffer, static_cast<size_t>(got));
  }
  close(fd);
  EXPECT_TRUE(body == first) << "a download begun on one generation ended "
                                "with other bytes ("
                             << body.size() << " bytes)";
  EXPECT_EQ(Get(port_, "/v1/images/big.h5").body, second);
}

TEST_F(HttpGatewayTest, TheListingIsJsonAPageAtATime) {
  Push("l/a.h5", MakeHdf5Image(4096, 8));
  Push("l/b.h5", MakeHdf5Image(4096, 9));
  Push("other.h5", MakeHdf5Image(4096, 10));
  const Answer all = Get(port_, "/v1/images?prefix=l/");
  ASSERT_EQ(all.status, 200);
  EXPECT_EQ(all.header("content-type"), "application/json");
  EXPECT_NE(all.body.find("\"id\":\"l/a.h5\""), std::string::npos) << all.body;
  EXPECT_NE(all.body.find("\"id\":\"l/b.h5\""), std::string::npos) << all.body;
  EXPECT_EQ(all.body.find("other.h5"), std::string::npos) << all.body;
  EXPECT_NE(all.body.find("\"expires\":null"), std::string::npos) << all.body;

  const Answer first = Get(port_, "/v1/images?prefix=l%2F&page_size=1");
  ASSERT_EQ(first.status, 200);
  EXPECT_NE(first.body.find("l/a.h5"), std::string::npos) << first.body;
  const std::string key = "\"next_page_token\":\"";
  const size_t at = first.body.find(key);
  ASSERT_NE(at, std::string::npos) << first.body;
  const std::string token = first.body.substr(
      at + key.size(), first.body.find('"', at + key.size()) - at - key.size());
  ASSERT_FALSE(token.empty()) << first.body;
  const Answer second =
      Get(port_,
          absl::StrCat("/v1/images?prefix=l/&page_size=1&page_token=", token));
  EXPECT_NE(second.body.find("l/b.h5"), std::string::npos) << second.body;
  EXPECT_EQ(Get(port_, "/v1/images?page_size=-1").status, 400);
}

TEST_F(HttpGatewayTest, OversizedHeadersAreRefused) {
  Start({"--http-max-header-size=4K"});
  Push("h.h5", MakeHdf5Image(4096, 11));
  const Answer big =
      Get(port_, "/v1/images/h.h5",
          absl::StrCat("X-Filler: ", std::string(8000, 'x'), "\r\n"));
  EXPECT_EQ(big.status, 431);
  // The gateway still serves everyone else.
  EXPECT_EQ(Get(port_, "/v1/images/h.h5").status, 200);
}

TEST_F(HttpGatewayTest, AnIdleConnectionIsClosed) {
  Start({"--http-idle-timeout=1s"});
  // One that never sends a request, and one idle after its answer (a
  // keep-alive connection): the server closes both.
  const int silent = ConnectTcp(port_);
  const int kept = ConnectTcp(port_);
  ASSERT_GE(silent, 0);
  ASSERT_GE(kept, 0);
  ASSERT_TRUE(SendAll(kept, "GET /v1/images HTTP/1.1\r\nHost: x\r\n\r\n"));
  Answer answer;
  std::string rest;
  ASSERT_TRUE(ReadHead(kept, answer, rest));
  EXPECT_EQ(answer.status, 200);
  for (const int fd : {silent, kept}) {
    // Reads until the server closes the connection; a server that kept it
    // open would leave this waiting until the deadline.
    pollfd ready{fd, POLLIN, 0};
    bool closed = false;
    const absl::Time deadline = absl::Now() + absl::Seconds(60);
    while (!closed && absl::Now() < deadline) {
      if (poll(&ready, 1, 1000) <= 0) continue;
      char buffer[4096];
      closed = recv(fd, buffer, sizeof buffer, 0) <= 0;
    }
    EXPECT_TRUE(closed) << "an idle connection was kept open for 60 s";
    close(fd);
  }
}

TEST_F(HttpGatewayTest, AClientThatStopsReadingLetsItsGenerationGo) {
  Start({"--http-idle-timeout=10s"});
  const std::string image = MakeHdf5Image(64 << 20, 12);
  Push("slow.h5", image);
  const int fd = ConnectTcp(port_);
  ASSERT_GE(fd, 0);
  // A small receive buffer, never read: the server's send stalls.
  ASSERT_TRUE(
      SendAll(fd, "GET /v1/images/slow.h5 HTTP/1.1\r\nHost: x\r\n\r\n"));
  // The download holds its generation; a replace leaves that generation
  // held until the gateway gives up on the client.
  std::unique_ptr<Client> client = Connect();
  ASSERT_NE(client, nullptr);
  ASSERT_TRUE(client->Push("slow.h5", image.data(), image.size()).ok());
  absl::StatusOr<ServerLimits> held = client->GetLimits();
  ASSERT_TRUE(held.ok()) << held.status();
  EXPECT_EQ(held->reserved_bytes, 2 * image.size())
      << "the download should hold the generation it began with";
  const absl::Time deadline = absl::Now() + absl::Seconds(60);
  uint64_t reserved = 0;
  while (absl::Now() < deadline) {
    absl::StatusOr<ServerLimits> limits = client->GetLimits();
    ASSERT_TRUE(limits.ok()) << limits.status();
    reserved = limits->reserved_bytes;
    if (reserved == image.size()) break;
    // Polling the server's own account of what it holds; nothing to wait
    // on but the gateway's timeout.
    absl::SleepFor(absl::Milliseconds(100));
  }
  close(fd);
  EXPECT_EQ(reserved, image.size())
      << "the stalled download still holds the replaced generation";
  EXPECT_EQ(Get(port_, "/v1/images/slow.h5").status, 200);
}

TEST(HttpGatewayStartTest, AnAddressBeyondThisHostNeedsTlsAndTokens) {
  const testing::CommandResult daemon =
      testing::RunCommand({testing::H5depotdPath(), "--listen=127.0.0.1:0",
                           "--http-listen=0.0.0.0:0"});
  EXPECT_NE(daemon.exit_code, 0);
  EXPECT_NE(daemon.stderr_text.find("refusing to listen on 0.0.0.0:0"),
            std::string::npos)
      << daemon.stderr_text;
}

TEST_F(HttpGatewayTest, TheStatusCountsImagesMemoryAndCalls) {
  const std::string image = MakeHdf5Image(4096, 16);
  Push("s/a.h5", image);
  Push("s/b.h5", image);
  ASSERT_EQ(Get(port_, "/v1/images/s/a.h5").status, 200);
  // A download is counted once its last byte has gone out, which the
  // server learns after the client may already have read it: bounded wait.
  Answer status;
  const absl::Time give_up = absl::Now() + absl::Seconds(30);
  do {
    status = Get(port_, "/v1/status");
    ASSERT_EQ(status.status, 200);
  } while (status.body.find("\"fetches\":1}") == std::string::npos &&
           absl::Now() < give_up);
  EXPECT_EQ(status.header("content-type"), "application/json");
  EXPECT_NE(status.body.find("\"images\":2,"), std::string::npos)
      << status.body;
  EXPECT_NE(status.body.find(
                absl::StrCat("\"stored_bytes\":", 2 * image.size(), ",")),
            std::string::npos)
      << status.body;
  EXPECT_NE(status.body.find("\"pushes\":2,"), std::string::npos)
      << status.body;
  EXPECT_NE(status.body.find("\"fetches\":1}"), std::string::npos)
      << status.body;
  EXPECT_EQ(Request(port_, "DELETE", "/v1/status").status, 405);
}

TEST_F(HttpGatewayTest, TheConsolesFilesAreServedAtTheRoot) {
  auto dir = TempDir::Create();
  ASSERT_TRUE(dir.ok()) << dir.status();
  ASSERT_EQ(::mkdir(dir->File("assets").c_str(), 0755), 0);
  ASSERT_TRUE(
      testing::WriteFile(dir->File("index.html"), "<p>console</p>").ok());
  ASSERT_TRUE(
      testing::WriteFile(dir->File("assets/app-1234.js"), "let x = 1;").ok());
  Start({absl::StrCat("--http-console-dir=", dir->path())});
  const Answer index = Get(port_, "/");
  EXPECT_EQ(index.status, 200);
  EXPECT_EQ(index.body, "<p>console</p>");
  EXPECT_EQ(index.header("content-type"), "text/html; charset=utf-8");
  EXPECT_EQ(index.header("cache-control"), "no-cache");
  const Answer script = Get(port_, "/assets/app-1234.js");
  EXPECT_EQ(script.status, 200);
  EXPECT_EQ(script.header("content-type"), "text/javascript; charset=utf-8");
  EXPECT_NE(script.header("cache-control").find("immutable"),
            std::string::npos);
  // Only what the directory held at start: nothing else of the file
  // system, however the path is written.
  EXPECT_EQ(Get(port_, "/assets/none.js").status, 404);
  EXPECT_EQ(Get(port_, "/assets/../index.html").status, 404);
  EXPECT_EQ(Get(port_, "/../../etc/passwd").status, 404);
  EXPECT_EQ(Get(port_, "/%2E%2E/%2E%2E/etc/passwd").status, 404);
  // The API is beside it, unchanged.
  EXPECT_EQ(Get(port_, "/v1/images").status, 200);
  EXPECT_EQ(Get(port_, "/v1/other").status, 404);
}

TEST(HttpGatewayStartTest, AConsoleDirectoryThatIsNotOneStopsTheServer) {
  const testing::CommandResult daemon = testing::RunCommand(
      {testing::H5depotdPath(), "--listen=127.0.0.1:0",
       "--http-listen=127.0.0.1:0", "--http-console-dir=/nonexistent/dist"});
  EXPECT_NE(daemon.exit_code, 0);
  EXPECT_NE(daemon.stderr_text.find("/nonexistent/dist"), std::string::npos)
      << daemon.stderr_text;
}

// --- Writing -----------------------------------------------------------------

TEST_F(HttpGatewayTest, APutIsAPushAndADeleteADelete) {
  const std::string image = MakeHdf5Image(200000, 20);
  const Answer put = Put(port_, "/v1/images/w/a.h5?ttl=1h", image);
  ASSERT_EQ(put.status, 200) << put.body;
  EXPECT_NE(put.body.find("\"id\":\"w/a.h5\""), std::string::npos) << put.body;
  EXPECT_EQ(put.body.find("\"expires\":null"), std::string::npos) << put.body;
  const std::string tag = put.header("etag");
  ASSERT_FALSE(tag.empty());
  // Readable on every path, with the checksum of its bytes.
  const Answer got = Get(port_, "/v1/images/w/a.h5");
  EXPECT_TRUE(got.body == image);
  EXPECT_EQ(got.header("etag"), tag);
  std::unique_ptr<Client> client = Connect();
  ASSERT_NE(client, nullptr);
  absl::StatusOr<FetchedImage> fetched = client->Fetch("w/a.h5");
  ASSERT_TRUE(fetched.ok()) << fetched.status();
  EXPECT_EQ(fetched->info.size, image.size());

  // Conditional: create-only, and only over a given generation.
  EXPECT_EQ(
      Put(port_, "/v1/images/w/a.h5", image, "If-None-Match: *\r\n").status,
      409);
  const Answer second = Put(port_, "/v1/images/w/a.h5", image,
                            absl::StrCat("If-Match: ", tag, "\r\n"));
  ASSERT_EQ(second.status, 200) << second.body;
  EXPECT_EQ(Put(port_, "/v1/images/w/a.h5", image,
                absl::StrCat("If-Match: ", tag, "\r\n"))
                .status,
            412);
  EXPECT_EQ(Request(port_, "DELETE", "/v1/images/w/a.h5",
                    absl::StrCat("If-Match: ", tag, "\r\n"))
                .status,
            412);
  EXPECT_EQ(Request(port_, "DELETE", "/v1/images/w/a.h5").status, 204);
  EXPECT_EQ(Get(port_, "/v1/images/w/a.h5").status, 404);
  EXPECT_EQ(Request(port_, "DELETE", "/v1/images/w/a.h5").status, 404);
}

TEST_F(HttpGatewayTest, ABadPutChangesNothing) {
  const std::string image = MakeHdf5Image(100000, 21);
  // Not HDF5; the wrong checksum; no length; a bad TTL or condition.
  EXPECT_EQ(Put(port_, "/v1/images/bad.h5", std::string(5000, 'x')).status,
            400);
  EXPECT_EQ(Put(port_, "/v1/images/bad.h5", image,
                "X-H5depot-Checksum: 0123456789abcdef\r\n")
                .status,
            400);
  EXPECT_EQ(Request(port_, "PUT", "/v1/images/bad.h5",
                    "Transfer-Encoding: chunked\r\n", "0\r\n\r\n")
                .status,
            411);
  EXPECT_EQ(Put(port_, "/v1/images/bad.h5?ttl=soon", image).status, 400);
  EXPECT_EQ(Put(port_, "/v1/images/bad.h5", image, "If-Match: 7\r\n").status,
            400);
  EXPECT_EQ(Get(port_, "/v1/images/bad.h5").status, 404);

  // A body cut short by a client that leaves: nothing is published, and
  // what the push reserved is freed.
  const int fd = ConnectTcp(port_);
  ASSERT_GE(fd, 0);
  ASSERT_TRUE(
      SendAll(fd, absl::StrCat("PUT /v1/images/cut.h5 HTTP/1.1\r\nHost: x\r\n"
                               "Content-Length: ",
                               image.size(), "\r\n\r\n",
                               image.substr(0, image.size() / 2))));
  std::unique_ptr<Client> client = Connect();
  ASSERT_NE(client, nullptr);
  // The push is under way: its reservation shows.
  auto reserved_now = [&client] {
    absl::StatusOr<ServerLimits> limits = client->GetLimits();
    EXPECT_TRUE(limits.ok()) << limits.status();
    return limits.ok() ? limits->reserved_bytes : ~uint64_t{0};
  };
  absl::Time deadline = absl::Now() + absl::Seconds(60);
  uint64_t reserved = 0;
  while (reserved == 0 && absl::Now() < deadline) reserved = reserved_now();
  EXPECT_EQ(reserved, image.size());
  close(fd);
  deadline = absl::Now() + absl::Seconds(60);
  while (reserved != 0 && absl::Now() < deadline) reserved = reserved_now();
  EXPECT_EQ(reserved, 0u) << "a push cut short still holds its memory";
  EXPECT_EQ(Get(port_, "/v1/images/cut.h5").status, 404);
}

// --- Who may read ----------------------------------------------------------

class HttpGatewayAuthTest : public HttpGatewayTest {
 protected:
  void SetUp() override {
    unsetenv("H5DEPOT_TOKEN");
    unsetenv("H5DEPOT_TOKEN_FILE");
    auto dir = TempDir::Create();
    ASSERT_TRUE(dir.ok()) << dir.status();
    dir_ = std::make_unique<TempDir>(*std::move(dir));
    writer_ = internal::NewToken();
    reader_ = internal::NewToken();
    const std::string auth = dir_->File("auth");
    ASSERT_TRUE(
        testing::WriteFile(
            auth,
            absl::StrCat("writer write ", internal::TokenHash(writer_), " *\n",
                         "reader read ", internal::TokenHash(reader_),
                         " runs/\n", "everyone read public pub/\n"))
            .ok());
    Start({absl::StrCat("--auth-file=", auth)});
  }

  std::unique_ptr<TempDir> dir_;
  std::string writer_;
  std::string reader_;
};

TEST_F(HttpGatewayAuthTest, TokensAndPublicPrefixesDecide) {
  const std::string image = MakeHdf5Image(4096, 13);
  Push("runs/a.h5", image, writer_);
  Push("secret/a.h5", image, writer_);
  Push("pub/a.h5", image, writer_);
  auto bearer = [](const std::string& token) {
    return absl::StrCat("Authorization: Bearer ", token, "\r\n");
  };
  // No token: only the public prefixes.
  EXPECT_EQ(Get(port_, "/v1/images/pub/a.h5").status, 200);
  const Answer anonymous = Get(port_, "/v1/images/runs/a.h5");
  EXPECT_EQ(anonymous.status, 401);
  EXPECT_EQ(anonymous.header("www-authenticate").rfind("Bearer", 0), 0u);
  // An unknown token is no one, not the public.
  EXPECT_EQ(Get(port_, "/v1/images/pub/a.h5", bearer("nobody")).status, 401);
  // A token: its prefixes. The refusal is the same whether or not the
  // image exists.
  EXPECT_EQ(Get(port_, "/v1/images/runs/a.h5", bearer(reader_)).status, 200);
  EXPECT_EQ(Get(port_, "/v1/images/secret/a.h5", bearer(reader_)).status, 403);
  EXPECT_EQ(Get(port_, "/v1/images/secret/none.h5", bearer(reader_)).status,
            403);
  EXPECT_EQ(Get(port_, "/v1/images/secret/none.h5").status, 401);
  EXPECT_EQ(Get(port_, "/v1/images/secret/a.h5", bearer(writer_)).status, 200);
  // Listings show what the caller may see.
  const Answer public_listing = Get(port_, "/v1/images");
  ASSERT_EQ(public_listing.status, 200);
  EXPECT_NE(public_listing.body.find("pub/a.h5"), std::string::npos);
  EXPECT_EQ(public_listing.body.find("runs/a.h5"), std::string::npos);
  const Answer reader_listing = Get(port_, "/v1/images", bearer(reader_));
  EXPECT_NE(reader_listing.body.find("runs/a.h5"), std::string::npos);
  EXPECT_EQ(reader_listing.body.find("secret/a.h5"), std::string::npos);
  // Writing takes the write role, within its prefixes.
  const std::string pushed = MakeHdf5Image(4096, 22);
  EXPECT_EQ(Put(port_, "/v1/images/runs/b.h5", pushed, bearer(reader_)).status,
            403);
  EXPECT_EQ(Put(port_, "/v1/images/pub/b.h5", pushed).status, 401);
  EXPECT_EQ(Put(port_, "/v1/images/runs/b.h5", pushed, bearer(writer_)).status,
            200);
  EXPECT_EQ(
      Request(port_, "DELETE", "/v1/images/runs/b.h5", bearer(reader_)).status,
      403);
  EXPECT_EQ(Request(port_, "DELETE", "/v1/images/pub/a.h5").status, 401);
  EXPECT_EQ(
      Request(port_, "DELETE", "/v1/images/runs/b.h5", bearer(writer_)).status,
      204);
  // The public may read, never write, on every transport.
  std::unique_ptr<Client> tokenless = Connect();
  ASSERT_NE(tokenless, nullptr);
  EXPECT_TRUE(tokenless->Stat("pub/a.h5").ok());
  EXPECT_EQ(
      tokenless->Push("pub/b.h5", image.data(), image.size()).status().code(),
      absl::StatusCode::kUnauthenticated);
}

// --- HTTPS -----------------------------------------------------------------

// One HTTPS request, on a connection of its own, trusting `ca_file` and
// presenting `client` if it names a certificate. `subject` is set to the
// server certificate's subject. The answer, or status 0 if TLS failed.
Answer HttpsGet(int port, const std::string& target, const std::string& ca_file,
                const testing::CertificateFiles& client = {},
                std::string* subject = nullptr) {
  Answer answer;
  SSL_CTX* context = SSL_CTX_new(TLS_client_method());
  SSL_CTX_set_verify(context, SSL_VERIFY_PEER, nullptr);
  SSL_CTX_load_verify_locations(context, ca_file.c_str(), nullptr);
  if (!client.cert_file.empty()) {
    SSL_CTX_use_certificate_chain_file(context, client.cert_file.c_str());
    SSL_CTX_use_PrivateKey_file(context, client.key_file.c_str(),
                                SSL_FILETYPE_PEM);
  }
  const int fd = ConnectTcp(port);
  SSL* ssl = SSL_new(context);
  SSL_set_fd(ssl, fd);
  SSL_set1_host(ssl, "127.0.0.1");
  if (fd >= 0 && SSL_connect(ssl) == 1) {
    if (subject != nullptr) {
      X509* peer = SSL_get1_peer_certificate(ssl);
      char name[256] = "";
      X509_NAME_oneline(X509_get_subject_name(peer), name, sizeof name);
      *subject = name;
      X509_free(peer);
    }
    const std::string request = absl::StrCat(
        "GET ", target,
        " HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n");
    SSL_write(ssl, request.data(), static_cast<int>(request.size()));
    std::string received;
    char buffer[65536];
    int got;
    while ((got = SSL_read(ssl, buffer, sizeof buffer)) > 0) {
      received.append(buffer, static_cast<size_t>(got));
    }
    const size_t end = received.find("\r\n\r\n");
    if (received.rfind("HTTP/1.1 ", 0) == 0 && end != std::string::npos &&
        absl::SimpleAtoi(absl::string_view(received).substr(9, 3),
                         &answer.status)) {
      answer.body = received.substr(end + 4);
    }
  }
  ERR_clear_error();
  SSL_free(ssl);
  if (fd >= 0) close(fd);
  SSL_CTX_free(context);
  return answer;
}

class HttpsGatewayTest : public HttpGatewayTest {
 protected:
  void SetUp() override {
    auto dir = TempDir::Create();
    ASSERT_TRUE(dir.ok()) << dir.status();
    dir_ = std::make_unique<TempDir>(*std::move(dir));
    auto pki = testing::MakeTestPki(dir_->path());
    ASSERT_TRUE(pki.ok()) << pki.status();
    pki_ = *std::move(pki);
  }

  // Copies `from` over `to` the way certificates are renewed: whole, by a
  // rename.
  static void Replace(const std::string& from, const std::string& to) {
    auto text = testing::ReadFile(from);
    ASSERT_TRUE(text.ok()) << text.status();
    const std::string next = to + ".next";
    ASSERT_TRUE(testing::WriteFile(next, *text).ok());
    ASSERT_EQ(::rename(next.c_str(), to.c_str()), 0);
  }

  std::unique_ptr<TempDir> dir_;
  testing::TestPki pki_;
};

TEST_F(HttpsGatewayTest, ImagesAreServedOverTlsOnly) {
  Start({absl::StrCat("--tls-cert-file=", pki_.server.cert_file),
         absl::StrCat("--tls-key-file=", pki_.server.key_file)});
  EXPECT_NE(server_->startup_output().find("HTTP gateway on https://"),
            std::string::npos)
      << server_->startup_output();
  ClientOptions options;
  options.tls_ca_file = pki_.ca_file;
  auto client = Client::Connect(server_->target(), options);
  ASSERT_TRUE(client.ok()) << client.status();
  const std::string image = MakeHdf5Image(300000, 14);
  ASSERT_TRUE((*client)->Push("tls/a.h5", image.data(), image.size()).ok());

  const Answer got = HttpsGet(port_, "/v1/images/tls/a.h5", pki_.ca_file);
  EXPECT_EQ(got.status, 200);
  EXPECT_TRUE(got.body == image) << got.body.size() << " bytes";
  // Not to a client that trusts another CA, nor in plain HTTP.
  EXPECT_EQ(HttpsGet(port_, "/v1/images/tls/a.h5", pki_.other_ca_file).status,
            0);
  EXPECT_NE(Get(port_, "/v1/images/tls/a.h5").status, 200);
}

TEST_F(HttpsGatewayTest, MutualTlsWantsTheClientCasCertificate) {
  Start({absl::StrCat("--tls-cert-file=", pki_.server.cert_file),
         absl::StrCat("--tls-key-file=", pki_.server.key_file),
         absl::StrCat("--tls-client-ca-file=", pki_.ca_file)});
  ClientOptions options;
  options.tls_ca_file = pki_.ca_file;
  options.tls_cert_file = pki_.client.cert_file;
  options.tls_key_file = pki_.client.key_file;
  auto client = Client::Connect(server_->target(), options);
  ASSERT_TRUE(client.ok()) << client.status();
  const std::string image = MakeHdf5Image(4096, 15);
  ASSERT_TRUE((*client)->Push("m.h5", image.data(), image.size()).ok());

  EXPECT_EQ(
      HttpsGet(port_, "/v1/images/m.h5", pki_.ca_file, pki_.client).status,
      200);
  const Answer anonymous = HttpsGet(port_, "/v1/images/m.h5", pki_.ca_file);
  EXPECT_EQ(anonymous.status, 403);
  EXPECT_EQ(anonymous.body.find("HDF"), std::string::npos);
  EXPECT_NE(HttpsGet(port_, "/v1/images/m.h5", pki_.ca_file, pki_.other_client)
                .status,
            200);
}

TEST_F(HttpsGatewayTest, ACertificateReplacedOnDiskIsServedWithoutARestart) {
  const std::string cert = dir_->File("live.crt");
  const std::string key = dir_->File("live.key");
  Replace(pki_.other_server.cert_file, cert);
  Replace(pki_.other_server.key_file, key);
  Start({absl::StrCat("--tls-cert-file=", cert),
         absl::StrCat("--tls-key-file=", key)});
  std::string first;
  HttpsGet(port_, "/v1/images", pki_.other_ca_file, {}, &first);
  ASSERT_FALSE(first.empty());

  Replace(pki_.server.key_file, key);
  Replace(pki_.server.cert_file, cert);
  // The files are looked at every second or so; until then a new
  // connection still gets the old certificate.
  const absl::Time give_up = absl::Now() + absl::Seconds(60);
  int status = 0;
  while (status != 200 && absl::Now() < give_up) {
    status = HttpsGet(port_, "/v1/images", pki_.ca_file).status;
  }
  EXPECT_EQ(status, 200);
}

TEST_F(HttpsGatewayTest, AClientCaReplacedOnDiskHoldsWithoutARestart) {
  const std::string client_cas = dir_->File("clients.crt");
  Replace(pki_.ca_file, client_cas);
  Start({absl::StrCat("--tls-cert-file=", pki_.server.cert_file),
         absl::StrCat("--tls-key-file=", pki_.server.key_file),
         absl::StrCat("--tls-client-ca-file=", client_cas)});
  ASSERT_EQ(HttpsGet(port_, "/v1/images", pki_.ca_file, pki_.client).status,
            200);
  ASSERT_EQ(
      HttpsGet(port_, "/v1/images", pki_.ca_file, pki_.other_client).status,
      403);

  // The other CA's clients instead, as the lane and gRPC take it.
  Replace(pki_.other_ca_file, client_cas);
  const absl::Time give_up = absl::Now() + absl::Seconds(60);
  int status = 0;
  while (status != 200 && absl::Now() < give_up) {
    status =
        HttpsGet(port_, "/v1/images", pki_.ca_file, pki_.other_client).status;
  }
  EXPECT_EQ(status, 200);
  EXPECT_EQ(HttpsGet(port_, "/v1/images", pki_.ca_file, pki_.client).status,
            403);
}

// --- Unmodified HDF5 programs ----------------------------------------------

TEST_F(HttpGatewayTest, HdfFivesRos3DriverReadsEveryValue) {
  for (const char* low : {"earliest", "latest"}) {
    SCOPED_TRACE(low);
    const std::vector<unsigned char>& file = testing::H5pyWritten(low);
    ASSERT_FALSE(file.empty());
    Push(absl::StrCat("corpus/", low, ".h5"),
         std::string(file.begin(), file.end()));
    hid_t fapl = H5Pcreate(H5P_FILE_ACCESS);
    H5FD_ros3_fapl_t config;
    std::memset(&config, 0, sizeof config);
    config.version = H5FD_CURR_ROS3_FAPL_T_VERSION;
    config.authenticate = 0;
    ASSERT_GE(H5Pset_fapl_ros3(fapl, &config), 0);
    const hid_t opened = H5Fopen(
        Url(absl::StrCat("corpus/", low, ".h5")).c_str(), H5F_ACC_RDONLY, fapl);
    H5Pclose(fapl);
    ASSERT_GE(opened, 0);
    testing::ExpectH5pyContents(opened);
    H5Fclose(opened);
  }
}

TEST_F(HttpGatewayTest, H5pyReadsEveryValueThroughTheRos3Driver) {
  if (!testing::HaveH5py()) GTEST_SKIP() << "no Python with h5py";
  for (const char* low : {"earliest", "v108", "latest"}) {
    SCOPED_TRACE(low);
    const std::vector<unsigned char>& file = testing::H5pyWritten(low);
    ASSERT_FALSE(file.empty());
    Push(absl::StrCat("corpus/", low, ".h5"),
         std::string(file.begin(), file.end()));
    const testing::H5pyReport report =
        testing::ReadWithH5py(Url(absl::StrCat("corpus/", low, ".h5")));
    EXPECT_EQ(report.exit_code, 0) << report.output;
  }
}

}  // namespace
}  // namespace h5depot
