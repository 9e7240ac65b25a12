// What HTTP means for h5depot's gateway (--http-listen), apart from the
// library that carries it: how a Range header selects an image's bytes,
// how an image's ETag is made and compared, which HTTP status each of the
// service's error codes is, and how a listing and an error are written as
// JSON. Internal to the server; the gateway (http_gateway.cc) is the only
// user, the unit tests the other.
//
// The rules are RFC 9110's, cut to what an image service needs: one byte
// range per request (a request for several is answered with the whole
// image, as the RFC lets a server do), strong ETags only.
#ifndef H5DEPOT_SERVER_HTTP_SEMANTICS_INTERNAL_H_
#define H5DEPOT_SERVER_HTTP_SEMANTICS_INTERNAL_H_

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "server/src/depot_operations_internal.h"

namespace h5depot::server::http {

// What a Range header asks of an image of a given size.
struct RangeSelection {
  enum class Kind {
    kWhole,          // no Range header, or one this gateway ignores: 200
    kPartial,        // `range`, within the image: 206
    kUnsatisfiable,  // no byte of it is in the image: 416
  };
  Kind kind = Kind::kWhole;
  ByteRange range;  // kPartial: non-empty, within the image
};

// The selection `header` (a Range header's value; empty if absent) makes
// of an image of `size` bytes: "bytes=FIRST-LAST", "bytes=FIRST-" or
// "bytes=-SUFFIX". A LAST past the end is cut to the end, a suffix longer
// than the image is the whole image (206 all the same). A header that
// is not one byte range (another unit, several ranges, a malformed one)
// is ignored: the whole image, as RFC 9110 section 14.2 says.
RangeSelection SelectRange(std::string_view header, uint64_t size);

// "bytes FIRST-LAST/SIZE" for a 206 answer, "bytes */SIZE" for a 416.
std::string ContentRange(const RangeSelection& selection, uint64_t size);

// The strong entity tag of one generation of an image, quotes included:
// "GENERATION-CHECKSUM" (decimal, then 16 hex digits). A new generation
// always has a new tag, even with the same bytes, so that a cache never
// takes one generation for another.
std::string EntityTag(const ImageDescription& image);

// The generation an entity tag made by EntityTag names; nullopt for any
// other text (a weak tag, a list, "*").
std::optional<uint64_t> GenerationOfTag(std::string_view tag);

// Whether an If-Match or If-None-Match header's value `header` names
// `tag`: "*" names every tag; otherwise a comma-separated list of tags.
// If-None-Match compares weakly (a W/ tag matches its strong twin),
// If-Match strongly (a W/ tag matches nothing).
enum class Comparison { kStrong, kWeak };
bool TagListMatches(std::string_view header, std::string_view tag,
                    Comparison comparison);

// The HTTP status of a failed call's code, chosen, like the code, by what
// the client should do next: 400 a malformed request, 401 no or unknown
// token, 403 not allowed, 404 unknown id, 409/412 a generation
// precondition, 413 too large, 416 a range past the end, 429 over a quota,
// 503 try again, 504 a wait ran out, 500 the server's fault.
int StatusFor(absl::StatusCode code);

// The HTTP reason phrase of `status` ("Not Found").
std::string_view ReasonPhrase(int status);

// The body of an error answer:
//   {"error":{"code":"NOT_FOUND","message":"..."}}
std::string ErrorJson(const absl::Status& status);

// One image's description, as the listing shows each:
//   {"id":"a.h5","size":123,"generation":4,"checksum":"0123456789abcdef",
//    "created":"2026-12-06T12:00:00.123456Z","expires":null}
std::string ImageJson(const ImageDescription& image);

// One page of a listing:
//   {"images":[{"id":"a.h5","size":123,"generation":4,
//               "checksum":"0123456789abcdef",
//               "created":"2026-12-06T12:00:00.123456Z",
//               "expires":null},...],
//    "next_page_token":""}
// Sizes and generations are JSON numbers (exact in every JSON parser
// below 2^53, which a size and a generation stay below); the checksum, a
// full 64-bit value, is hex text; times are RFC 3339 in UTC, null for an
// image that never expires.
std::string ListingJson(const std::vector<ImageDescription>& images,
                        std::string_view next_page_token);

// The server's state for a status panel:
//   {"images":3,"stored_bytes":...,"reserved_bytes":...,
//    "max_memory_bytes":...,"pushes":12,"fetches":40}
// `pushes` and `fetches`: the calls that succeeded since the server
// started, over every transport (a rate is the difference of two).
std::string StatusJson(const StoreLimits& limits, uint64_t pushes,
                       uint64_t fetches);

// `text` as a JSON string, quotes included.
std::string JsonString(std::string_view text);

// The unsigned decimal number `text` is, if it is one (no sign, no
// space, at most 2^64 - 1).
std::optional<uint64_t> ParseDecimal(std::string_view text);

// A request path with its %XX escapes decoded; nullopt if an escape is
// malformed or decodes to a control character (a %00 would otherwise cut
// the path short in C code that reads it). '+' is left alone: it means a
// space only in forms.
std::optional<std::string> DecodePath(std::string_view path);
// A query parameter's value decoded as a form's: DecodePath's rules, and
// '+' is a space.
std::optional<std::string> DecodeQueryValue(std::string_view value);

// The bearer token of an Authorization header's value: the text after
// "Bearer " (the scheme in any case); empty if the header is absent or
// of another scheme.
std::string_view BearerToken(std::string_view authorization);

}  // namespace h5depot::server::http

#endif  // H5DEPOT_SERVER_HTTP_SEMANTICS_INTERNAL_H_
