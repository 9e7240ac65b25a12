// h5depot: the command-line client of h5depotd.
//
// Every failure ends with exactly one line on stderr,
// "h5depot: <what failed>: <why>", and an exit code a script can test
// (see kUsageText). Standard output carries only results: image bytes for
// `get`, image info for `put`, `stat` and `ls`, changes for `watch`.
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_replace.h"
#include "absl/strings/str_split.h"
#include "absl/time/time.h"
#include "command_line.h"
#include "h5depot/client.h"
#include "h5depot/internal/image_id.h"
#include "h5depot/internal/token.h"
#include "h5depot/rpc/grpc_runtime.h"
#include "output_file.h"
#include "progress_bar.h"

#if defined(__SANITIZE_ADDRESS__)
#define H5DEPOT_HAS_LEAK_CHECKER 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer) || __has_feature(leak_sanitizer)
#define H5DEPOT_HAS_LEAK_CHECKER 1
#endif
#endif
#ifndef H5DEPOT_HAS_LEAK_CHECKER
#define H5DEPOT_HAS_LEAK_CHECKER 0
#endif
#if H5DEPOT_HAS_LEAK_CHECKER
#include <sanitizer/lsan_interface.h>
#endif

namespace h5depot::cli {
namespace {

constexpr char kDefaultServer[] = "127.0.0.1:7878";
constexpr absl::Duration kDefaultConnectTimeout = absl::Seconds(5);
constexpr absl::Duration kDefaultCallTimeout = absl::Seconds(30);
// What `get` asks of a pipe it writes to (WidenIfPipe).
constexpr int kWidePipeBytes = 1 << 20;

// Exit codes, so that scripts can tell what happened without parsing text:
// one per next step of the error table (docs/ARCHITECTURE.md "Errors"),
// mapped from the failure's code by ExitCodeFor alone.
enum ExitCode : int {
  kExitOk = 0,
  kExitFailed = 1,       // anything not listed below
  kExitUsage = 2,        // the command line is wrong (a malformed id too)
  kExitNotFound = 3,     // NOT_FOUND: no such image (or file)
  kExitConflict = 4,     // ALREADY_EXISTS, ABORTED: exists already, or
                         // the generation did not match (a lost race)
  kExitUnavailable = 5,  // UNAVAILABLE: the server cannot be reached
  kExitTimedOut = 6,     // DEADLINE_EXCEEDED: a --wait or call timed out
  kExitOverLimit = 7,    // RESOURCE_EXHAUSTED: over the server's limits
  kExitCorrupted = 8,    // DATA_LOSS: the bytes failed their checksum
  kExitDenied = 9,       // UNAUTHENTICATED, PERMISSION_DENIED: no token the
                         // server knows, or one that may not do this
  kExitFinished = 10,    // OUT_OF_RANGE: the stream is finished and the
                         // reader group has had every step
};

constexpr char kUsageText[] = R"(usage: h5depot [--server=TARGET] COMMAND [ARGS]

Push, fetch and manage HDF5 file images held in RAM by h5depotd.

Commands:
  put FILE [--id ID] [--ttl DURATION] [--if-generation-match N]
      Push FILE (or stdin if FILE is -, which then needs --id) as a new
      generation of image ID (default: FILE's base name). Prints its info.
      --ttl: delete the image this long after the push (e.g. 30s, 2h).
      --if-generation-match: push only if generation N is current; 0 means
      only if the image does not exist yet.
  get ID [-o FILE|-] [--wait DURATION] [--newer-than N] [--sync]
      Fetch image ID into FILE or to stdout. A regular FILE is replaced
      whole or not at all; a device or FIFO is written into.
      --wait: if ID does not exist yet, wait this long for it to be pushed.
      --newer-than: only a generation newer than N will do: the current
      one if it is, else the next pushed within --wait (without --wait,
      fail at once).
      --sync: make FILE durable (fsync) before exiting, so that it also
      survives a crash of the machine.
  ls [PREFIX]
      List the images whose ids start with PREFIX (default: all).
  stat ID [--wait DURATION] [--newer-than N]
      Print the info of image ID (with --newer-than, of a generation newer
      than N, as for get).
  rm ID [--if-generation-match N]
      Delete image ID (only if generation N is current, when given).
  watch [PREFIX] [--after N] [--count N] [--for DURATION]
      Print each change to the images whose ids start with PREFIX (default:
      all) as it happens, one line each, until interrupted:
        SEQUENCE published|replaced ID generation=G size=S [replaced=G0]
        SEQUENCE deleted|expired|evicted ID generation=G size=S
        SEQUENCE lost first=F
      Every change has the next sequence of the server's counter, and a
      publish's sequence is its generation. --after: start with the changes
      after sequence N (e.g. a generation you hold) instead of from now;
      "lost" says the server no longer kept changes F to SEQUENCE (look
      again with ls or stat). --count: stop after N changes. --for: stop
      after this long (exit 0). Ends with exit 5 if the server stops.
  rebalance [PREFIX] [--drain TARGET,...]
      For a cluster target (--server=cluster:...): put every copy of the
      images whose ids start with PREFIX where placement now says, after
      servers were added or removed, while clients keep working. --drain:
      servers leaving the cluster; their images are moved onto it and
      deleted from them, after which they can be stopped. Prints what it
      did; exit 1 if some image could not be placed.
  stream create STREAM [--max-steps N] [--max-bytes N] [--when-full POLICY]
                [--reserve N] [--keep-first]
      Create a stream (docs/STREAMS.md) with its queue limits (default 8
      steps, 256 MiB) and what a full queue does: block (the writer waits,
      the default), discard-oldest or refuse. --reserve: keep this many
      acknowledged steps for readers that join late; --keep-first: keep
      step 0 for every new reader. Optional: a first append creates the
      stream with the defaults.
  stream append STREAM FILE [--wait DURATION]
      Append FILE (or stdin if FILE is -) as the stream's next step; prints
      the step number and its info. --wait: how long to wait for room in a full stream that
      blocks (default 30s).
  stream next STREAM --group G [-o FILE|-] [--wait DURATION]
              [--start oldest|latest|N] [--lease DURATION]
      Take the next step for reader group G, write it to FILE (replaced
      whole or not at all) or stdout, and acknowledge it. Prints the step
      number and its info (with -o FILE). Exit 6 if no step came within
      --wait (default: answer at once), exit 10 once the stream is
      finished and G has had every step. --start: where G starts if it is
      new (default oldest). Steps the group lost to discard-oldest are
      reported on stderr.
  stream finish STREAM
      End the stream: readers get the steps appended, then the end.
  stream stat STREAM
      Print the stream's policy, queue and reader groups.
  stream delete STREAM [--group G]
      Delete the stream: its steps are freed, its reader groups
      forgotten. With --group, delete only reader group G (steps no other
      group needs are freed). Exit 3 if there is no such stream or group;
      refused (exit 1) while an append is under way: finish it first.
  new-token NAME ROLE [PREFIX ...]
      Make a random token for a principal NAME of ROLE (read, write or
      admin) that may touch the image ids starting with a PREFIX (none or
      *: all). Prints the token, then the line for h5depotd's --auth-file,
      which holds only the token's hash. Contacts no server.

Options:
  --server=TARGET           h5depotd to talk to: HOST:PORT or unix:/PATH
                            (default: $H5DEPOT_SERVER, else 127.0.0.1:7878)
  --connect-timeout=DURATION  give up connecting after this long (default 5s)
  --timeout=DURATION        give up on a call the server does not answer
                            after this long (default 30s; transfers get 1s
                            more per 32 MiB, and --wait is added to it)
  --tls                     encrypt the connection (TLS) and check the
                            server's certificate against the system's CAs
  --tls-ca-file=PATH        the same, against the CAs in this PEM file
  --tls-cert-file=PATH, --tls-key-file=PATH
                            this client's certificate and key (PEM), for a
                            server that requires one (mutual TLS)
  -h, --help                print this help
  --version                 print the version

Image ids: 1 to 255 characters from A-Z a-z 0-9 . _ - /, as '/'-separated
segments that are neither empty nor "." nor "..".

Environment: H5DEPOT_SERVER (above); H5DEPOT_TOKEN, or H5DEPOT_TOKEN_FILE
naming a file whose first line is the token, for a server that needs one
(sent only encrypted or to a server on this host); H5DEPOT_TLS_CA_FILE,
H5DEPOT_TLS_CERT_FILE and H5DEPOT_TLS_KEY_FILE, or H5DEPOT_TLS=1, when no
--tls option is given.

Exit status: 0 success, 1 failure, 2 bad command line or malformed image
id, 3 image or file not found, 4 image exists / generation did not match
(fetch again and redo), 5 server unreachable, 6 timed out (--wait,
--timeout), 7 over the server's limits, 8 bytes failed their checksum
(send again), 9 no token the server knows, or not allowed to do this,
10 the stream is finished (stream next).
)";

// Options every command accepts, before or after the command name.
const std::vector<OptionSpec>& GlobalOptions() {
  static const auto* const options = new std::vector<OptionSpec>{
      {"server", true},       {"connect-timeout", true},
      {"timeout", true},      {"tls", false},
      {"tls-ca-file", true},  {"tls-cert-file", true},
      {"tls-key-file", true}, {"help", false, 'h'},
      {"version", false},
  };
  return *options;
}

// A status message as one line, so that errors stay one line on stderr.
std::string OneLine(const absl::Status& status) {
  std::string message = status.message().empty()
                            ? absl::StatusCodeToString(status.code())
                            : std::string(status.message());
  return absl::StrReplaceAll(message,
                             {{"\r\n", " "}, {"\n", " "}, {"\r", " "}});
}

int ExitCodeFor(absl::StatusCode code) {
  switch (code) {
    case absl::StatusCode::kOk:
      return kExitOk;
    case absl::StatusCode::kNotFound:
      return kExitNotFound;
    case absl::StatusCode::kAlreadyExists:
    case absl::StatusCode::kAborted:
      return kExitConflict;
    case absl::StatusCode::kUnavailable:
      return kExitUnavailable;
    case absl::StatusCode::kDeadlineExceeded:
      return kExitTimedOut;
    case absl::StatusCode::kResourceExhausted:
      return kExitOverLimit;
    case absl::StatusCode::kDataLoss:
      return kExitCorrupted;
    case absl::StatusCode::kUnauthenticated:
    case absl::StatusCode::kPermissionDenied:
      return kExitDenied;
    case absl::StatusCode::kOutOfRange:
      return kExitFinished;
    default:
      return kExitFailed;
  }
}

// Prints "h5depot: <what>: <why>" and returns the matching exit code. The
// client library's messages already name the operation, the image id and
// the server, so <what> is just the command that failed.
int Fail(const std::string& what, const absl::Status& status) {
  const std::string line = OneLine(status);
  // The library's message may name the operation already ("watch 'p/':",
  // "rebalance:"): once is enough.
  const bool named = absl::StartsWith(line, absl::StrCat(what, ":")) ||
                     absl::StartsWith(line, absl::StrCat(what, " "));
  std::fprintf(stderr, "h5depot: %s\n",
               named ? line.c_str() : absl::StrCat(what, ": ", line).c_str());
  return ExitCodeFor(status.code());
}

int UsageError(const std::string& message) {
  std::fprintf(stderr, "h5depot: %s (see h5depot --help)\n", message.c_str());
  return kExitUsage;
}

std::string Quoted(const std::string& text) {
  return absl::StrCat("\"", text, "\"");
}

std::string TimeText(absl::Time time) {
  if (time == absl::InfiniteFuture()) return "never";
  if (time == absl::InfinitePast()) return "-";
  return absl::FormatTime("%Y-%m-%dT%H:%M:%SZ", time, absl::UTCTimeZone());
}

std::string FormatChecksum(uint64_t checksum) {
  return absl::StrFormat("%016x", checksum);
}

// The `stat` (and `put`) format: one "key: value" per line, stable order.
void PrintInfo(const ImageInfo& info) {
  std::printf(
      "id:          %s\n"
      "size:        %s\n"
      "generation:  %s\n"
      "checksum:    %s\n"
      "created:     %s\n"
      "expires:     %s\n",
      info.image_id.c_str(), absl::StrCat(info.size).c_str(),
      absl::StrCat(info.generation).c_str(),
      FormatChecksum(info.checksum).c_str(), TimeText(info.created).c_str(),
      TimeText(info.expires).c_str());
}

// The `ls` format: a header, then one image per line in columns.
void PrintTable(const std::vector<ImageInfo>& images) {
  std::vector<std::vector<std::string>> rows = {
      {"ID", "SIZE", "GENERATION", "CHECKSUM", "CREATED", "EXPIRES"}};
  for (const ImageInfo& info : images) {
    rows.push_back({info.image_id, absl::StrCat(info.size),
                    absl::StrCat(info.generation),
                    FormatChecksum(info.checksum), TimeText(info.created),
                    TimeText(info.expires)});
  }
  std::vector<size_t> widths(rows[0].size(), 0);
  for (const auto& row : rows) {
    for (size_t i = 0; i < row.size(); ++i) {
      widths[i] = std::max(widths[i], row[i].size());
    }
  }
  for (const auto& row : rows) {
    std::string line;
    for (size_t i = 0; i < row.size(); ++i) {
      const bool last = i + 1 == row.size();
      // Numbers are right-aligned, text left-aligned.
      const bool right = i == 1 || i == 2;
      const std::string pad(widths[i] - row[i].size(), ' ');
      absl::StrAppend(&line, right ? pad : "", row[i], right || last ? "" : pad,
                      last ? "" : "  ");
    }
    std::printf("%s\n", line.c_str());
  }
}

// What a command needs besides its own arguments.
struct Invocation {
  std::string command;  // "get", "put", ...
  std::string server;
  absl::Duration connect_timeout = kDefaultConnectTimeout;
  absl::Duration call_timeout = kDefaultCallTimeout;
  ParsedArgs args;  // the command's positionals and options
};

absl::StatusOr<std::unique_ptr<Client>> Connect(const Invocation& call) {
  ClientOptions options;
  options.connect_timeout = call.connect_timeout;
  options.call_timeout = call.call_timeout;
  // Unset, they leave TLS to the environment (client.h).
  options.use_tls = call.args.Has("tls");
  options.tls_ca_file = call.args.Get("tls-ca-file").value_or("");
  options.tls_cert_file = call.args.Get("tls-cert-file").value_or("");
  options.tls_key_file = call.args.Get("tls-key-file").value_or("");
  return Client::Connect(call.server, options);
}

// Refuses a malformed id locally: the message the server would give, without
// a round trip, and the exit code of a bad command line.
int BadImageId(const Invocation& call, const std::string& id,
               const std::string& hint = "") {
  std::fprintf(stderr, "h5depot: %s: %s%s\n", call.command.c_str(),
               OneLine(internal::ValidateImageId(id)).c_str(), hint.c_str());
  return kExitUsage;
}

// Reads the optional generation option --`name` N into `out`; false (after
// printing the usage error into `exit_code`) if it is malformed.
bool OptionalGeneration(const ParsedArgs& args, const std::string& name,
                        std::optional<uint64_t>* out, int* exit_code) {
  std::optional<std::string> text = args.Get(name);
  if (!text.has_value()) return true;
  absl::StatusOr<uint64_t> value =
      ParseUint64Arg(absl::StrCat("--", name), *text);
  if (!value.ok()) {
    *exit_code = UsageError(OneLine(value.status()));
    return false;
  }
  *out = *value;
  return true;
}

bool OptionalDuration(const ParsedArgs& args, const std::string& name,
                      absl::Duration* out, int* exit_code) {
  std::optional<std::string> text = args.Get(name);
  if (!text.has_value()) return true;
  absl::StatusOr<absl::Duration> value =
      ParseDurationArg(absl::StrCat("--", name), *text);
  if (!value.ok()) {
    *exit_code = UsageError(OneLine(value.status()));
    return false;
  }
  *out = *value;
  return true;
}

absl::StatusOr<std::string> ReadStdin() {
  std::string data;
  char buffer[1 << 16];
  while (true) {
    const ssize_t got = read(STDIN_FILENO, buffer, sizeof(buffer));
    if (got == 0) return data;
    if (got < 0) {
      if (errno == EINTR) continue;
      return absl::InternalError(
          absl::StrCat("cannot read stdin: ", std::strerror(errno)));
    }
    data.append(buffer, static_cast<size_t>(got));
  }
}

std::string BaseName(const std::string& path) {
  std::string trimmed = path;
  while (trimmed.size() > 1 && trimmed.back() == '/') trimmed.pop_back();
  const size_t slash = trimmed.rfind('/');
  return slash == std::string::npos ? trimmed : trimmed.substr(slash + 1);
}

int RunPut(const Invocation& call) {
  const auto& pos = call.args.positionals;
  if (pos.size() != 1) return UsageError("put takes exactly one FILE");
  const std::string& file = pos[0];
  const std::optional<std::string> given_id = call.args.Get("id");
  if (file == "-" && !given_id.has_value()) {
    return UsageError("put - (from stdin) needs --id ID");
  }
  const std::string id = given_id.value_or(BaseName(file));
  if (!internal::ValidateImageId(id).ok()) {
    return BadImageId(call, id,
                      given_id.has_value()
                          ? ""
                          : " (the id is the file's name; give one with --id)");
  }
  PushOptions options;
  int exit_code = kExitOk;
  if (!OptionalGeneration(call.args, "if-generation-match",
                          &options.if_generation_match, &exit_code) ||
      !OptionalDuration(call.args, "ttl", &options.ttl, &exit_code)) {
    return exit_code;
  }
  std::string data;
  if (file == "-") {
    absl::StatusOr<std::string> read = ReadStdin();
    if (!read.ok()) return Fail(call.command, read.status());
    data = *std::move(read);
  }

  absl::StatusOr<std::unique_ptr<Client>> client = Connect(call);
  if (!client.ok()) return Fail(call.command, client.status());
  absl::StatusOr<ImageInfo> info;
  {
    ProgressBar bar(absl::StrCat("put ", id));
    options.progress = bar.Callback();
    info = file == "-" ? (*client)->Push(id, data.data(), data.size(), options)
                       : (*client)->PushFile(id, file, options);
  }
  if (!info.ok()) {
    return Fail(call.command, info.status());
  }
  PrintInfo(*info);
  return kExitOk;
}

// A pipe holds 64 KiB by default: an image written into one moves a
// quarter of a piece at a time, with a switch to the reader and back each
// time. A larger pipe (what the system allows an unprivileged process, 1 MiB
// by default) lets each write go at once. Anything but a pipe is left as
// it is, and so is a pipe that cannot be widened.
void WidenIfPipe(int fd) {
  struct stat st;
  if (fstat(fd, &st) != 0 || !S_ISFIFO(st.st_mode)) return;
  fcntl(fd, F_SETPIPE_SZ, kWidePipeBytes);
}

int RunGet(const Invocation& call) {
  const auto& pos = call.args.positionals;
  if (pos.size() != 1) return UsageError("get takes exactly one image ID");
  const std::string& id = pos[0];
  if (!internal::ValidateReadableId(id).ok()) return BadImageId(call, id);
  FetchOptions options;
  int exit_code = kExitOk;
  std::optional<uint64_t> newer_than;
  if (!OptionalDuration(call.args, "wait", &options.wait, &exit_code) ||
      !OptionalGeneration(call.args, "newer-than", &newer_than, &exit_code)) {
    return exit_code;
  }
  options.newer_than = newer_than.value_or(0);
  const std::optional<std::string> output = call.args.Get("output");
  const bool to_stdout = !output.has_value() || *output == "-";
  if (to_stdout) WidenIfPipe(STDOUT_FILENO);
  if (!output.has_value() && isatty(STDOUT_FILENO) == 1) {
    return UsageError(
        "not writing an image to a terminal; use -o FILE, or -o - to insist");
  }
  // Opened before the fetch so that an unwritable destination fails fast.
  std::unique_ptr<OutputFile> file;
  if (!to_stdout) {
    absl::StatusOr<std::unique_ptr<OutputFile>> opened =
        OutputFile::Open(*output, /*sync=*/call.args.Has("sync"));
    if (!opened.ok()) {
      return Fail(call.command, opened.status());
    }
    file = *std::move(opened);
  }

  absl::StatusOr<std::unique_ptr<Client>> client = Connect(call);
  if (!client.ok()) return Fail(call.command, client.status());
  // The bytes are written as they arrive, so that the CLI holds a piece of
  // the image at a time, whatever its size (into a pipe, none at all:
  // FetchToDescriptor moves them there by reference where it can). A file
  // is renamed into place only once all of it arrived intact (an OutputFile
  // destroyed uncommitted leaves the old one); what went to stdout cannot
  // be taken back, so a failure there is only said, with the exit status.
  absl::StatusOr<ImageInfo> image;
  {
    ProgressBar bar(absl::StrCat("get ", id));
    options.progress = bar.Callback();
    image = to_stdout ? (*client)->FetchToDescriptor(id, STDOUT_FILENO, options)
                      : (*client)->FetchTo(
                            id,
                            [&](const void* data, size_t size) {
                              return file->Write(data, size);
                            },
                            options);
  }
  absl::Status done = image.status();
  if (done.ok() && file) done = file->Commit();
  if (!done.ok()) {
    if (to_stdout && absl::IsDataLoss(done)) {
      done = absl::DataLossError(absl::StrCat(
          done.message(), "; the bytes written to stdout are not the image"));
    }
    return Fail(call.command, done);
  }
  return kExitOk;
}

int RunNewToken(const Invocation& call) {
  const auto& pos = call.args.positionals;
  if (pos.size() < 2) {
    return UsageError("new-token takes a NAME, a ROLE and optional PREFIXes");
  }
  const std::string& role = pos[1];
  if (role != "read" && role != "write" && role != "admin") {
    return UsageError(absl::StrCat("new-token: unknown role ", Quoted(role),
                                   " (read, write or admin)"));
  }
  const std::string token = internal::NewToken();
  std::string line =
      absl::StrCat(pos[0], " ", role, " ", internal::TokenHash(token));
  for (size_t i = 2; i < pos.size(); ++i) absl::StrAppend(&line, " ", pos[i]);
  std::printf("%s\n%s\n", token.c_str(), line.c_str());
  return kExitOk;
}

int RunLs(const Invocation& call) {
  const auto& pos = call.args.positionals;
  if (pos.size() > 1) return UsageError("ls takes at most one PREFIX");
  absl::StatusOr<std::unique_ptr<Client>> client = Connect(call);
  if (!client.ok()) return Fail(call.command, client.status());
  ListOptions options;
  if (!pos.empty()) options.prefix = pos[0];
  std::vector<ImageInfo> images;
  do {
    absl::StatusOr<ListPage> page = (*client)->List(options);
    if (!page.ok()) {
      return Fail(call.command, page.status());
    }
    images.insert(images.end(), page->images.begin(), page->images.end());
    options.page_token = page->next_page_token;
  } while (!options.page_token.empty());
  PrintTable(images);
  return kExitOk;
}

int RunStat(const Invocation& call) {
  const auto& pos = call.args.positionals;
  if (pos.size() != 1) return UsageError("stat takes exactly one image ID");
  const std::string& id = pos[0];
  if (!internal::ValidateReadableId(id).ok()) return BadImageId(call, id);
  absl::Duration wait = absl::ZeroDuration();
  std::optional<uint64_t> newer_than;
  int exit_code = kExitOk;
  if (!OptionalDuration(call.args, "wait", &wait, &exit_code) ||
      !OptionalGeneration(call.args, "newer-than", &newer_than, &exit_code)) {
    return exit_code;
  }
  absl::StatusOr<std::unique_ptr<Client>> client = Connect(call);
  if (!client.ok()) return Fail(call.command, client.status());
  absl::StatusOr<ImageInfo> info =
      (*client)->Stat(id, wait, newer_than.value_or(0));
  if (!info.ok()) {
    return Fail(call.command, info.status());
  }
  PrintInfo(*info);
  return kExitOk;
}

int RunRm(const Invocation& call) {
  const auto& pos = call.args.positionals;
  if (pos.size() != 1) return UsageError("rm takes exactly one image ID");
  const std::string& id = pos[0];
  if (!internal::ValidateImageId(id).ok()) return BadImageId(call, id);
  std::optional<uint64_t> generation;
  int exit_code = kExitOk;
  if (!OptionalGeneration(call.args, "if-generation-match", &generation,
                          &exit_code)) {
    return exit_code;
  }
  absl::StatusOr<std::unique_ptr<Client>> client = Connect(call);
  if (!client.ok()) return Fail(call.command, client.status());
  const absl::Status deleted = (*client)->Delete(id, generation);
  if (!deleted.ok()) {
    return Fail(call.command, deleted);
  }
  return kExitOk;
}

// The `watch` format: one line per event (kUsageText).
void PrintEvent(const ImageEvent& event) {
  if (event.kind == ImageEvent::Kind::kLost) {
    std::printf("%s lost first=%s\n", absl::StrCat(event.sequence).c_str(),
                absl::StrCat(event.first_lost_sequence).c_str());
  } else {
    std::string line = absl::StrCat(
        event.sequence, " ", ImageEventKindName(event.kind), " ",
        event.image_id, " generation=", event.generation, " size=", event.size);
    if (event.kind == ImageEvent::Kind::kReplaced) {
      absl::StrAppend(&line, " replaced=", event.replaced_generation);
    }
    std::printf("%s\n", line.c_str());
  }
  // A line at a time, for whoever reads the pipe as changes happen.
  std::fflush(stdout);
}

int RunWatch(const Invocation& call) {
  const auto& pos = call.args.positionals;
  if (pos.size() > 1) return UsageError("watch takes at most one PREFIX");
  WatchOptions options;
  if (!pos.empty()) options.prefix = pos[0];
  std::optional<uint64_t> count;
  absl::Duration duration = absl::InfiniteDuration();
  int exit_code = kExitOk;
  if (!OptionalGeneration(call.args, "after", &options.after, &exit_code) ||
      !OptionalGeneration(call.args, "count", &count, &exit_code) ||
      !OptionalDuration(call.args, "for", &duration, &exit_code)) {
    return exit_code;
  }
  const absl::Time until = absl::Now() + duration;
  absl::StatusOr<std::unique_ptr<Client>> client = Connect(call);
  if (!client.ok()) return Fail(call.command, client.status());
  absl::StatusOr<std::unique_ptr<ImageWatch>> watch = (*client)->Watch(options);
  if (!watch.ok()) return Fail(call.command, watch.status());
  for (uint64_t seen = 0; !count.has_value() || seen < *count; ++seen) {
    absl::StatusOr<ImageEvent> event = (*watch)->Next(until);
    if (absl::IsDeadlineExceeded(event.status())) break;  // --for is over
    if (!event.ok()) return Fail(call.command, event.status());
    PrintEvent(*event);
  }
  return kExitOk;
}

int RunRebalance(const Invocation& call) {
  const auto& pos = call.args.positionals;
  if (pos.size() > 1) return UsageError("rebalance takes at most one PREFIX");
  RebalanceOptions options;
  if (!pos.empty()) options.prefix = pos[0];
  const std::string drain = call.args.Get("drain").value_or("");
  for (absl::string_view drained :
       absl::StrSplit(drain, ',', absl::SkipEmpty())) {
    options.drain.emplace_back(drained);
  }
  absl::StatusOr<std::unique_ptr<Client>> client = Connect(call);
  if (!client.ok()) return Fail(call.command, client.status());
  absl::StatusOr<RebalanceReport> report = (*client)->Rebalance(options);
  if (!report.ok()) return Fail(call.command, report.status());
  std::printf(
      "images: %s\ncopies made: %s\ncopies replaced: %s\ncopies removed: "
      "%s\nchanged meanwhile: %s\nfailed: %s\n",
      absl::StrCat(report->images).c_str(),
      absl::StrCat(report->copies_made).c_str(),
      absl::StrCat(report->copies_replaced).c_str(),
      absl::StrCat(report->copies_removed).c_str(),
      absl::StrCat(report->changed).c_str(),
      absl::StrCat(report->failed).c_str());
  if (report->failed != 0) {
    std::fprintf(stderr, "h5depot: rebalance: %s image(s) not placed: %s\n",
                 absl::StrCat(report->failed).c_str(),
                 report->first_error.c_str());
    return kExitFailed;
  }
  return kExitOk;
}

// The `stream stat` format: "key: value" lines, then one per group.
void PrintStreamInfo(const StreamInfo& info) {
  std::printf(
      "stream:      %s\n"
      "finished:    %s\n"
      "appended:    %s\n"
      "queued:      %s steps, %s bytes\n"
      "kept:        %s steps, %s bytes\n"
      "limits:      %s steps, %s bytes, when full: %s\n"
      "reserve:     %s\n"
      "keep first:  %s\n",
      info.stream.c_str(), info.finished ? "yes" : "no",
      absl::StrCat(info.appended_steps).c_str(),
      absl::StrCat(info.queued_steps).c_str(),
      absl::StrCat(info.queued_bytes).c_str(),
      absl::StrCat(info.kept_steps).c_str(),
      absl::StrCat(info.kept_bytes).c_str(),
      absl::StrCat(info.policy.max_steps).c_str(),
      absl::StrCat(info.policy.max_bytes).c_str(),
      info.policy.when_full == StreamPolicy::WhenFull::kBlock ? "block"
      : info.policy.when_full == StreamPolicy::WhenFull::kRefuse
          ? "refuse"
          : "discard-oldest",
      absl::StrCat(info.policy.reserve_steps).c_str(),
      info.policy.keep_first_step ? "yes" : "no");
  for (const StreamGroupInfo& group : info.groups) {
    std::printf("group:       %s next=%s acked_below=%s leased=%s\n",
                group.name.c_str(), absl::StrCat(group.next_step).c_str(),
                absl::StrCat(group.acked_below).c_str(),
                absl::StrCat(group.leased_steps).c_str());
  }
}

bool OptionalCount(const ParsedArgs& args, const std::string& name,
                   uint64_t* out, int* exit_code) {
  std::optional<uint64_t> value;
  if (!OptionalGeneration(args, name, &value, exit_code)) return false;
  if (value.has_value()) *out = *value;
  return true;
}

int RunStreamCreate(const Invocation& call, const std::string& stream) {
  StreamPolicy policy;
  int exit_code = kExitOk;
  if (!OptionalCount(call.args, "max-steps", &policy.max_steps, &exit_code) ||
      !OptionalCount(call.args, "max-bytes", &policy.max_bytes, &exit_code) ||
      !OptionalCount(call.args, "reserve", &policy.reserve_steps, &exit_code)) {
    return exit_code;
  }
  const std::string when_full = call.args.Get("when-full").value_or("block");
  if (when_full == "block") {
    policy.when_full = StreamPolicy::WhenFull::kBlock;
  } else if (when_full == "discard-oldest") {
    policy.when_full = StreamPolicy::WhenFull::kDiscardOldest;
  } else if (when_full == "refuse") {
    policy.when_full = StreamPolicy::WhenFull::kRefuse;
  } else {
    return UsageError(
        absl::StrCat("--when-full is block, discard-oldest or refuse, not ",
                     Quoted(when_full)));
  }
  policy.keep_first_step = call.args.Has("keep-first");
  absl::StatusOr<std::unique_ptr<Client>> client = Connect(call);
  if (!client.ok()) return Fail(call.command, client.status());
  absl::StatusOr<StreamInfo> info = (*client)->CreateStream(stream, policy);
  if (!info.ok()) return Fail(call.command, info.status());
  PrintStreamInfo(*info);
  return kExitOk;
}

int RunStreamAppend(const Invocation& call, const std::string& stream,
                    const std::string& path) {
  AppendOptions options;
  int exit_code = kExitOk;
  if (!OptionalDuration(call.args, "wait", &options.wait_for_room,
                        &exit_code)) {
    return exit_code;
  }
  std::string data;
  if (path == "-") {
    absl::StatusOr<std::string> read = ReadStdin();
    if (!read.ok()) return Fail(call.command, read.status());
    data = *std::move(read);
  }
  absl::StatusOr<std::unique_ptr<Client>> client = Connect(call);
  if (!client.ok()) return Fail(call.command, client.status());
  absl::StatusOr<AppendedStep> appended =
      path == "-" ? (*client)->Append(stream, data.data(), data.size(), options)
                  : (*client)->AppendFile(stream, path, options);
  if (!appended.ok()) return Fail(call.command, appended.status());
  std::printf("step:        %s\n", absl::StrCat(appended->step).c_str());
  PrintInfo(appended->info);
  return kExitOk;
}

int RunStreamNext(const Invocation& call, const std::string& stream) {
  const std::optional<std::string> group = call.args.Get("group");
  if (!group.has_value()) return UsageError("stream next needs --group G");
  NextOptions options;
  int exit_code = kExitOk;
  if (!OptionalDuration(call.args, "wait", &options.wait, &exit_code) ||
      !OptionalDuration(call.args, "lease", &options.lease, &exit_code)) {
    return exit_code;
  }
  const std::string start = call.args.Get("start").value_or("oldest");
  if (start == "latest") {
    options.start = NextOptions::Start::kLatest;
  } else if (start != "oldest") {
    absl::StatusOr<uint64_t> step = ParseUint64Arg("--start", start);
    if (!step.ok()) {
      return UsageError("--start is oldest, latest or a step number");
    }
    options.start = NextOptions::Start::kStep;
    options.start_step = *step;
  }
  const std::optional<std::string> output = call.args.Get("output");
  const bool to_stdout = !output.has_value() || *output == "-";
  if (!output.has_value() && isatty(STDOUT_FILENO) == 1) {
    return UsageError(
        "not writing a step to a terminal; use -o FILE, or -o - to insist");
  }
  std::unique_ptr<OutputFile> file;
  if (!to_stdout) {
    absl::StatusOr<std::unique_ptr<OutputFile>> opened =
        OutputFile::Open(*output, /*sync=*/false);
    if (!opened.ok()) return Fail(call.command, opened.status());
    file = *std::move(opened);
  }
  absl::StatusOr<std::unique_ptr<Client>> client = Connect(call);
  if (!client.ok()) return Fail(call.command, client.status());
  absl::StatusOr<StreamStep> step = (*client)->Next(stream, *group, options);
  if (!step.ok()) return Fail(call.command, step.status());
  for (const StepRange& lost : step->lost) {
    std::fprintf(stderr, "h5depot: stream next: group %s lost steps %s-%s\n",
                 Quoted(*group).c_str(), absl::StrCat(lost.first).c_str(),
                 absl::StrCat(lost.last).c_str());
  }
  const ImageBuffer& buffer = step->image.buffer;
  absl::Status written = to_stdout
                             ? WriteAll(STDOUT_FILENO, buffer.data(),
                                        buffer.size(), "cannot write to stdout")
                             : file->Write(buffer.data(), buffer.size());
  if (written.ok() && file) written = file->Commit();
  // Not acknowledged unless it was written: the lease then runs out and
  // the step goes to another member of the group.
  if (!written.ok()) return Fail(call.command, written);
  if (absl::Status acked =
          (*client)->Ack(stream, *group, step->step, step->consumer);
      !acked.ok()) {
    return Fail(call.command, acked);
  }
  if (!to_stdout) {
    std::printf("step:        %s\n", absl::StrCat(step->step).c_str());
    PrintInfo(step->image.info);
  }
  return kExitOk;
}

int RunStreamDelete(const Invocation& call, const std::string& stream) {
  const std::optional<std::string> group = call.args.Get("group");
  absl::StatusOr<std::unique_ptr<Client>> client = Connect(call);
  if (!client.ok()) return Fail(call.command, client.status());
  const absl::Status deleted =
      group.has_value() ? (*client)->DeleteStreamGroup(stream, *group)
                        : (*client)->DeleteStream(stream);
  if (!deleted.ok()) return Fail(call.command, deleted);
  return kExitOk;
}

int RunStream(const Invocation& call) {
  const auto& pos = call.args.positionals;
  if (pos.empty()) {
    return UsageError(
        "stream takes create, append, next, finish, stat or delete, then a "
        "STREAM");
  }
  const std::string& verb = pos[0];
  const size_t arguments = verb == "append" ? 3 : 2;
  if (pos.size() != arguments) {
    return UsageError(
        absl::StrCat("stream ", verb, " takes ",
                     verb == "append" ? "a STREAM and a FILE" : "one STREAM"));
  }
  const std::string& stream = pos[1];
  if (!internal::ValidateImageId(stream).ok()) return BadImageId(call, stream);
  if (verb == "create") return RunStreamCreate(call, stream);
  if (verb == "append") return RunStreamAppend(call, stream, pos[2]);
  if (verb == "next") return RunStreamNext(call, stream);
  if (verb == "delete") return RunStreamDelete(call, stream);
  if (verb != "finish" && verb != "stat") {
    return UsageError(absl::StrCat("unknown stream command ", Quoted(verb)));
  }
  absl::StatusOr<std::unique_ptr<Client>> client = Connect(call);
  if (!client.ok()) return Fail(call.command, client.status());
  absl::StatusOr<StreamInfo> info = verb == "finish"
                                        ? (*client)->FinishStream(stream)
                                        : (*client)->StatStream(stream);
  if (!info.ok()) return Fail(call.command, info.status());
  PrintStreamInfo(*info);
  return kExitOk;
}

struct Command {
  const char* name;
  int (*run)(const Invocation&);
  std::vector<OptionSpec> options;  // besides GlobalOptions()
};

const std::vector<Command>& Commands() {
  static const auto* const commands = new std::vector<Command>{
      {"put",
       RunPut,
       {{"id", true}, {"ttl", true}, {"if-generation-match", true}}},
      {"get",
       RunGet,
       {{"output", true, 'o'},
        {"wait", true},
        {"newer-than", true},
        {"sync", false}}},
      {"ls", RunLs, {}},
      {"stat", RunStat, {{"wait", true}, {"newer-than", true}}},
      {"rm", RunRm, {{"if-generation-match", true}}},
      {"watch", RunWatch, {{"after", true}, {"count", true}, {"for", true}}},
      {"rebalance", RunRebalance, {{"drain", true}}},
      {"stream",
       RunStream,
       {{"group", true},
        {"output", true, 'o'},
        {"wait", true},
        {"lease", true},
        {"start", true},
        {"max-steps", true},
        {"max-bytes", true},
        {"when-full", true},
        {"reserve", true},
        {"keep-first", false}}},
      {"new-token", RunNewToken, {}},
  };
  return *commands;
}

int Main(int argc, char** argv) {
  internal::SilenceGrpcLogUnlessAsked();
  const std::vector<std::string> args(argv + 1, argv + argc);
  size_t command_at = 0;
  absl::StatusOr<ParsedArgs> global =
      ParseLeadingOptions(args, GlobalOptions(), &command_at);
  if (!global.ok()) return UsageError(OneLine(global.status()));
  if (global->Has("version")) {
    std::printf("h5depot %s\n", H5DEPOT_VERSION);
    return kExitOk;
  }
  if (global->Has("help") ||
      (command_at < args.size() && args[command_at] == "help")) {
    std::fputs(kUsageText, stdout);
    return kExitOk;
  }
  if (command_at == args.size()) return UsageError("no command given");

  const std::string& name = args[command_at];
  const Command* command = nullptr;
  for (const Command& candidate : Commands()) {
    if (name == candidate.name) command = &candidate;
  }
  if (command == nullptr) {
    return UsageError(absl::StrCat("unknown command ", Quoted(name)));
  }
  std::vector<OptionSpec> specs = GlobalOptions();
  specs.insert(specs.end(), command->options.begin(), command->options.end());
  absl::StatusOr<ParsedArgs> parsed = ParseArgs(
      std::vector<std::string>(args.begin() + command_at + 1, args.end()),
      specs);
  if (!parsed.ok()) {
    return UsageError(absl::StrCat(name, ": ", OneLine(parsed.status())));
  }
  if (parsed->Has("help")) {
    std::fputs(kUsageText, stdout);
    return kExitOk;
  }
  // Options given after the command win over those before it.
  parsed->options.insert(global->options.begin(), global->options.end());

  Invocation call;
  call.command = name;
  const char* env_server = std::getenv("H5DEPOT_SERVER");
  call.server = parsed->Get("server").value_or(
      env_server != nullptr && *env_server != '\0' ? env_server
                                                   : kDefaultServer);
  int exit_code = kExitOk;
  if (!OptionalDuration(*parsed, "connect-timeout", &call.connect_timeout,
                        &exit_code) ||
      !OptionalDuration(*parsed, "timeout", &call.call_timeout, &exit_code)) {
    return exit_code;
  }
  // Zero would time every call out before it is sent.
  if (call.call_timeout == absl::ZeroDuration()) {
    return UsageError("--timeout must be longer than 0");
  }
  call.args = *std::move(parsed);
  return command->run(call);
}

}  // namespace

// Ends the process with `exit_code` once stdout and stderr are written out,
// without destroying static objects: gRPC's threads are still tearing down
// the command's connection then, and gRPC 1.51 can crash when its statics
// are destroyed under them. Nothing of the CLI needs a destructor at exit.
// A failure to write stdout fails a command that had succeeded. Builds
// with the leak checker still run it, as a normal exit would.
[[noreturn]] void Exit(int exit_code) {
  if (std::fflush(stdout) != 0 && exit_code == kExitOk) {
    std::fprintf(stderr, "h5depot: cannot write to stdout: %s\n",
                 std::strerror(errno));
    exit_code = kExitFailed;
  }
  std::fflush(stderr);
#if H5DEPOT_HAS_LEAK_CHECKER
  __lsan_do_leak_check();
#endif
  _exit(exit_code);
}

}  // namespace h5depot::cli

int main(int argc, char** argv) {
  h5depot::cli::Exit(h5depot::cli::Main(argc, argv));
}
