#include <cstdio>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/time/time.h"
#include "server/src/http_semantics_internal.h"

namespace h5depot::server::http {
namespace {

// Debian's Abseil has a string_view of its own.
absl::string_view ToAbsl(std::string_view text) {
  return absl::string_view(text.data(), text.size());
}

std::string_view Trim(std::string_view text) {
  while (!text.empty() && (text.front() == ' ' || text.front() == '\t')) {
    text.remove_prefix(1);
  }
  while (!text.empty() && (text.back() == ' ' || text.back() == '\t')) {
    text.remove_suffix(1);
  }
  return text;
}

// Whether `text` starts with `prefix`, in any case (ASCII).
bool StartsWithIgnoringCase(std::string_view text, std::string_view prefix) {
  return text.size() >= prefix.size() &&
         absl::EqualsIgnoreCase(ToAbsl(text.substr(0, prefix.size())),
                                ToAbsl(prefix));
}

// An RFC 3339 time in UTC with microseconds, quoted:
// "2026-12-06T12:00:00.123456Z".
std::string JsonTime(int64_t unix_micros) {
  return absl::StrCat(
      "\"",
      absl::FormatTime("%Y-%m-%dT%H:%M:%E6SZ",
                       absl::FromUnixMicros(unix_micros), absl::UTCTimeZone()),
      "\"");
}

}  // namespace

std::optional<uint64_t> ParseDecimal(std::string_view text) {
  if (text.empty() || text.size() > 20) return std::nullopt;
  for (char c : text) {
    if (c < '0' || c > '9') return std::nullopt;
  }
  uint64_t value = 0;
  if (!absl::SimpleAtoi(ToAbsl(text), &value))
    return std::nullopt;  // past 2^64 - 1
  return value;
}

RangeSelection SelectRange(std::string_view header, uint64_t size) {
  RangeSelection whole;
  std::string_view spec = Trim(header);
  // The unit is case-insensitive (RFC 9110 section 14.1).
  if (!StartsWithIgnoringCase(spec, "bytes=")) return whole;
  spec = Trim(spec.substr(6));
  if (spec.find(',') != std::string_view::npos) return whole;  // several
  const size_t dash = spec.find('-');
  if (dash == std::string_view::npos) return whole;
  const std::string_view first_text = Trim(spec.substr(0, dash));
  const std::string_view last_text = Trim(spec.substr(dash + 1));

  RangeSelection selection;
  selection.kind = RangeSelection::Kind::kPartial;
  if (first_text.empty()) {  // bytes=-SUFFIX: the last SUFFIX bytes
    const std::optional<uint64_t> suffix = ParseDecimal(last_text);
    if (!suffix) return whole;
    if (*suffix == 0 || size == 0) {
      selection.kind = RangeSelection::Kind::kUnsatisfiable;
      return selection;
    }
    const uint64_t length = std::min(*suffix, size);
    selection.range = ByteRange{size - length, length};
    return selection;
  }
  const std::optional<uint64_t> first = ParseDecimal(first_text);
  if (!first) return whole;
  uint64_t last = ~uint64_t{0};
  if (!last_text.empty()) {
    const std::optional<uint64_t> parsed = ParseDecimal(last_text);
    if (!parsed || *parsed < *first) return whole;  // invalid: ignored
    last = *parsed;
  }
  if (*first >= size) {
    selection.kind = RangeSelection::Kind::kUnsatisfiable;
    return selection;
  }
  last = std::min(last, size - 1);
  selection.range = ByteRange{*first, last - *first + 1};
  return selection;
}

std::string ContentRange(const RangeSelection& selection, uint64_t size) {
  if (selection.kind != RangeSelection::Kind::kPartial) {
    return absl::StrCat("bytes */", size);
  }
  return absl::StrCat("bytes ", selection.range.offset, "-",
                      selection.range.offset + selection.range.length - 1, "/",
                      size);
}

std::string EntityTag(const ImageDescription& image) {
  return absl::StrCat("\"", image.generation, "-",
                      absl::Hex(image.checksum, absl::kZeroPad16), "\"");
}

std::optional<uint64_t> GenerationOfTag(std::string_view tag) {
  tag = Trim(tag);
  if (tag.size() < 4 || tag.front() != '"' || tag.back() != '"') {
    return std::nullopt;
  }
  tag = tag.substr(1, tag.size() - 2);
  const size_t dash = tag.find('-');
  if (dash == std::string_view::npos || tag.size() - dash - 1 != 16) {
    return std::nullopt;
  }
  for (char c : tag.substr(dash + 1)) {
    if (!absl::ascii_isxdigit(static_cast<unsigned char>(c))) {
      return std::nullopt;
    }
  }
  return ParseDecimal(tag.substr(0, dash));
}

bool TagListMatches(std::string_view header, std::string_view tag,
                    Comparison comparison) {
  if (Trim(header) == "*") return true;
  while (!header.empty()) {
    const size_t comma = std::min(header.find(','), header.size());
    std::string_view candidate = Trim(header.substr(0, comma));
    header.remove_prefix(std::min(comma + 1, header.size()));
    if (candidate.substr(0, 2) == "W/") {
      if (comparison == Comparison::kStrong) continue;
      candidate.remove_prefix(2);
    }
    if (candidate == tag) return true;
  }
  return false;
}

int StatusFor(absl::StatusCode code) {
  switch (code) {
    case absl::StatusCode::kOk:
      return 200;
    // A malformed request, or a body that is not what it says (the wrong
    // checksum).
    case absl::StatusCode::kInvalidArgument:
    case absl::StatusCode::kDataLoss:
      return 400;
    case absl::StatusCode::kUnauthenticated:
      return 401;
    case absl::StatusCode::kPermissionDenied:
      return 403;
    case absl::StatusCode::kNotFound:
      return 404;
    case absl::StatusCode::kAlreadyExists:
      return 409;
    // A generation precondition that does not hold (ABORTED) and a
    // request the server's state refuses (FAILED_PRECONDITION).
    case absl::StatusCode::kAborted:
    case absl::StatusCode::kFailedPrecondition:
      return 412;
    case absl::StatusCode::kOutOfRange:
      return 416;
    case absl::StatusCode::kResourceExhausted:
      return 429;
    case absl::StatusCode::kUnavailable:
    case absl::StatusCode::kCancelled:
      return 503;
    case absl::StatusCode::kDeadlineExceeded:
      return 504;
    case absl::StatusCode::kUnimplemented:
      return 501;
    default:
      return 500;
  }
}

std::string_view ReasonPhrase(int status) {
  switch (status) {
    case 200:
      return "OK";
    case 204:
      return "No Content";
    case 206:
      return "Partial Content";
    case 304:
      return "Not Modified";
    case 400:
      return "Bad Request";
    case 401:
      return "Unauthorized";
    case 403:
      return "Forbidden";
    case 404:
      return "Not Found";
    case 405:
      return "Method Not Allowed";
    case 409:
      return "Conflict";
    case 411:
      return "Length Required";
    case 412:
      return "Precondition Failed";
    case 413:
      return "Content Too Large";
    case 416:
      return "Range Not Satisfiable";
    case 429:
      return "Too Many Requests";
    case 431:
      return "Request Header Fields Too Large";
    case 501:
      return "Not Implemented";
    case 503:
      return "Service Unavailable";
    case 504:
      return "Gateway Timeout";
    default:
      return "Internal Server Error";
  }
}

std::string JsonString(std::string_view text) {
  std::string quoted = "\"";
  quoted.reserve(text.size() + 2);
  for (char c : text) {
    switch (c) {
      case '"':
        quoted += "\\\"";
        break;
      case '\\':
        quoted += "\\\\";
        break;
      case '\n':
        quoted += "\\n";
        break;
      case '\r':
        quoted += "\\r";
        break;
      case '\t':
        quoted += "\\t";
        break;
      default:
        if (static_cast<unsigned char>(c) < 0x20) {
          char escaped[7];
          std::snprintf(escaped, sizeof escaped, "\\u%04x", c);
          quoted += escaped;
        } else {
          quoted += c;
        }
    }
  }
  quoted += '"';
  return quoted;
}

std::string ErrorJson(const absl::Status& status) {
  return absl::StrCat("{\"error\":{\"code\":",
                      JsonString(absl::StatusCodeToString(status.code())),
                      ",\"message\":",
                      JsonString(std::string_view(status.message().data(),
                                                  status.message().size())),
                      "}}\n");
}

std::string ImageJson(const ImageDescription& image) {
  return absl::StrCat(
      "{\"id\":", JsonString(image.image_id), ",\"size\":", image.size,
      ",\"generation\":", image.generation, ",\"checksum\":\"",
      absl::Hex(image.checksum, absl::kZeroPad16),
      "\",\"created\":", JsonTime(image.created_unix_micros), ",\"expires\":",
      image.expires_unix_micros == 0 ? std::string("null")
                                     : JsonTime(image.expires_unix_micros),
      "}");
}

std::string ListingJson(const std::vector<ImageDescription>& images,
                        std::string_view next_page_token) {
  std::string json = "{\"images\":[";
  for (size_t i = 0; i < images.size(); ++i) {
    absl::StrAppend(&json, i == 0 ? "" : ",", ImageJson(images[i]));
  }
  absl::StrAppend(&json, "],\"next_page_token\":", JsonString(next_page_token),
                  "}\n");
  return json;
}

namespace {

// `text` with its %XX escapes decoded (and '+' as a space if
// `plus_is_space`); nullopt for a malformed escape or a control character.
std::optional<std::string> Unescape(std::string_view text, bool plus_is_space) {
  auto hex_digit = [](char c) -> int {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
  };
  std::string decoded;
  decoded.reserve(text.size());
  for (size_t i = 0; i < text.size(); ++i) {
    char c = text[i];
    if (c == '%') {
      if (i + 2 >= text.size()) return std::nullopt;
      const int high = hex_digit(text[i + 1]);
      const int low = hex_digit(text[i + 2]);
      if (high < 0 || low < 0) return std::nullopt;
      c = static_cast<char>(high * 16 + low);
      i += 2;
    } else if (c == '+' && plus_is_space) {
      c = ' ';
    }
    if (static_cast<unsigned char>(c) < 0x20 || c == 0x7f) return std::nullopt;
    decoded += c;
  }
  return decoded;
}

}  // namespace

std::optional<std::string> DecodePath(std::string_view path) {
  return Unescape(path, /*plus_is_space=*/false);
}

std::optional<std::string> DecodeQueryValue(std::string_view value) {
  return Unescape(value, /*plus_is_space=*/true);
}

std::string StatusJson(const StoreLimits& limits, uint64_t pushes,
                       uint64_t fetches) {
  return absl::StrCat("{\"images\":", limits.image_count,
                      ",\"stored_bytes\":", limits.stored_bytes,
                      ",\"reserved_bytes\":", limits.reserved_bytes,
                      ",\"max_memory_bytes\":", limits.max_memory_bytes,
                      ",\"pushes\":", pushes, ",\"fetches\":", fetches, "}\n");
}

std::string_view BearerToken(std::string_view authorization) {
  std::string_view value = Trim(authorization);
  if (!StartsWithIgnoringCase(value, "bearer ")) return {};
  return Trim(value.substr(7));
}

}  // namespace h5depot::server::http
