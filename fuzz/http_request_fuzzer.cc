// Fuzzes what the HTTP gateway reads from a request's text
// (server/src/http_semantics_internal.h): the Range header against an
// image size, If-Match / If-None-Match lists, %-escaped paths and query
// values, the generation an If-Match tag names, and the Authorization
// header. An input is an 8-byte image size
// followed by the header text. A selected range must lie within the image
// and be non-empty; a decoded path must hold no control character and be
// no longer than its text; a bearer token must be a piece of its header.
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <string>
#include <string_view>

#include "fuzz/fuzz_check.h"
#include "server/src/http_semantics_internal.h"

namespace h5depot::server::http {
namespace {

void CheckDecoded(const std::optional<std::string>& decoded,
                  std::string_view text) {
  if (!decoded.has_value()) return;
  FUZZ_CHECK(decoded->size() <= text.size());
  for (char c : *decoded) {
    FUZZ_CHECK(static_cast<unsigned char>(c) >= 0x20 && c != 0x7f);
  }
}

void Check(const uint8_t* data, size_t size) {
  uint64_t image_size = 0;
  if (size >= sizeof image_size) {
    std::memcpy(&image_size, data, sizeof image_size);
    data += sizeof image_size;
    size -= sizeof image_size;
  }
  const std::string_view text(reinterpret_cast<const char*>(data), size);

  const RangeSelection selection = SelectRange(text, image_size);
  if (selection.kind == RangeSelection::Kind::kPartial) {
    FUZZ_CHECK(selection.range.length > 0);
    FUZZ_CHECK(selection.range.offset < image_size);
    FUZZ_CHECK(selection.range.length <= image_size - selection.range.offset);
    FUZZ_CHECK(!ContentRange(selection, image_size).empty());
  }

  ImageDescription image;
  image.generation = image_size;
  image.checksum = ~image_size;
  const std::string tag = EntityTag(image);
  // A list always matches its own tag when the tag is all of it.
  FUZZ_CHECK(TagListMatches(tag, tag, Comparison::kStrong));
  TagListMatches(text, tag, Comparison::kWeak);
  // The tag names its generation back; any other text names at most one.
  const std::optional<uint64_t> named = GenerationOfTag(tag);
  FUZZ_CHECK(named.has_value() && *named == image.generation);
  if (const std::optional<uint64_t> other = GenerationOfTag(text)) {
    FUZZ_CHECK(text.find(std::to_string(*other)) != std::string_view::npos);
  }

  CheckDecoded(DecodePath(text), text);
  CheckDecoded(DecodeQueryValue(text), text);

  const std::string_view token = BearerToken(text);
  FUZZ_CHECK(token.empty() ||
             (token.data() >= text.data() &&
              token.data() + token.size() <= text.data() + text.size()));
  FUZZ_CHECK(!JsonString(text).empty());
}

}  // namespace
}  // namespace h5depot::server::http

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  h5depot::server::http::Check(data, size);
  return 0;
}
