// Fuzzes byte sizes as people write them (h5depot/internal/byte_size.h),
// which the server and the CLI read from their command lines. An input is
// the text for ParseByteSize; its first 8 bytes are also a count for
// HumanSize. Checked:
//   - an accepted text is a run of decimal digits worth what std::from_chars
//     reads, times 1 or a power of 1024 (K to T), without overflow;
//   - plain digits are accepted exactly when they fit in 64 bits;
//   - a count written in decimal, alone or with each suffix, parses back to
//     the count times the suffix's power (nullopt where that overflows);
//   - HumanSize writes "N B" below 1 KiB, and above a number below 1024
//     with one decimal that is within rounding of the count in its unit.
#include <charconv>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <optional>
#include <string>
#include <string_view>

#include "fuzz/fuzz_check.h"
#include "h5depot/internal/byte_size.h"

namespace h5depot::internal {
namespace {

std::optional<uint64_t> ReadDecimal(std::string_view digits) {
  uint64_t value = 0;
  const auto [end, error] =
      std::from_chars(digits.data(), digits.data() + digits.size(), value);
  if (error != std::errc() || end != digits.data() + digits.size()) {
    return std::nullopt;
  }
  return value;
}

void CheckParse(std::string_view text) {
  const std::optional<uint64_t> parsed = ParseByteSize(text);
  const size_t digits_end = text.find_first_not_of("0123456789");
  const std::string_view digits = text.substr(0, digits_end);
  if (digits_end == std::string_view::npos) {
    FUZZ_CHECK(parsed == ReadDecimal(text));
    return;
  }
  if (!parsed.has_value()) return;
  const std::optional<uint64_t> number = ReadDecimal(digits);
  FUZZ_CHECK(number.has_value());
  bool is_number_times_a_unit = false;
  for (int shift : {0, 10, 20, 30, 40}) {
    is_number_times_a_unit |=
        (*parsed >> shift) == *number && (*parsed >> shift << shift) == *parsed;
  }
  FUZZ_CHECK(is_number_times_a_unit);
  FUZZ_CHECK(ParseByteSize(std::to_string(*parsed)) == parsed);
}

void CheckSuffixes(uint64_t count) {
  const std::string decimal = std::to_string(count);
  FUZZ_CHECK(ParseByteSize(decimal) == count);
  FUZZ_CHECK(ParseByteSize(decimal + "B") == count);
  struct Unit {
    const char* letter;
    int shift;
  };
  for (const Unit unit :
       {Unit{"K", 10}, Unit{"M", 20}, Unit{"G", 30}, Unit{"T", 40}}) {
    const std::optional<uint64_t> expected =
        count > (UINT64_MAX >> unit.shift)
            ? std::nullopt
            : std::optional<uint64_t>(count << unit.shift);
    for (const char* spelling : {"", "B", "iB"}) {
      FUZZ_CHECK(ParseByteSize(decimal + unit.letter + spelling) == expected);
    }
  }
}

void CheckHumanSize(uint64_t count) {
  const std::string text = HumanSize(count);
  if (count < 1024) {
    FUZZ_CHECK(text == std::to_string(count) + " B");
    return;
  }
  static constexpr const char* kUnits[] = {"KiB", "MiB", "GiB",
                                           "TiB", "PiB", "EiB"};
  double number = 0;
  char unit_name[8] = {};
  FUZZ_CHECK(std::sscanf(text.c_str(), "%lf %7s", &number, unit_name) == 2);
  const size_t point = text.find('.');
  FUZZ_CHECK(point != std::string::npos && text[point + 2] == ' ');
  int unit = 0;
  while (unit < 6 && std::strcmp(unit_name, kUnits[unit]) != 0) ++unit;
  FUZZ_CHECK(unit < 6);
  // A larger unit would have been chosen for 1024 or more of this one.
  FUZZ_CHECK(number >= 1.0 && (number < 1024.0 || unit == 5));
  const double in_unit =
      static_cast<double>(count) / std::ldexp(1.0, 10 * (unit + 1));
  FUZZ_CHECK(std::fabs(in_unit - number) <= 0.05 + 1e-9 * in_unit);
}

}  // namespace
}  // namespace h5depot::internal

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  namespace internal = ::h5depot::internal;
  internal::CheckParse(
      std::string_view(reinterpret_cast<const char*>(data), size));
  uint64_t count = 0;
  std::memcpy(&count, data, size < sizeof(count) ? size : sizeof(count));
  internal::CheckSuffixes(count);
  internal::CheckHumanSize(count);
  return 0;
}
