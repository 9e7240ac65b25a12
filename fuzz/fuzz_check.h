// What every fuzz target here shares: FUZZ_CHECK, for the promises of the
// code under test that are cheap to check on each input.
#ifndef H5DEPOT_FUZZ_FUZZ_CHECK_H_
#define H5DEPOT_FUZZ_FUZZ_CHECK_H_

#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <vector>

namespace h5depot::fuzz {

// Prints the broken promise and aborts: libFuzzer reports that as a crash
// and writes the input that caused it to a file.
[[noreturn]] inline void FailCheck(const char* condition, const char* file,
                                   int line) {
  std::fprintf(stderr, "%s:%d: FUZZ_CHECK failed: %s\n", file, line, condition);
  std::abort();
}

// The first `size` bytes of `data` (zeros where `data` is shorter) in an
// allocation of exactly `size` bytes, so that ASan reports any read past
// them even when the input is longer.
inline std::vector<uint8_t> ExactBytes(const uint8_t* data, size_t available,
                                       size_t size) {
  std::vector<uint8_t> bytes(size, 0);
  for (size_t i = 0; i < size && i < available; ++i) bytes[i] = data[i];
  return bytes;
}

}  // namespace h5depot::fuzz

// Aborts the run, naming `condition`, unless it holds. Unlike assert(), it
// is never compiled out.
#define FUZZ_CHECK(condition)         \
  ((condition) ? static_cast<void>(0) \
               : ::h5depot::fuzz::FailCheck(#condition, __FILE__, __LINE__))

#endif  // H5DEPOT_FUZZ_FUZZ_CHECK_H_
