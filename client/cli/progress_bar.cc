#include "progress_bar.h"

#include <sys/ioctl.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"

namespace h5depot::cli {
namespace {

// Transfers that finish sooner than this never show a bar.
constexpr absl::Duration kQuietStart = absl::Milliseconds(500);
constexpr absl::Duration kRedrawEvery = absl::Milliseconds(100);

int TerminalColumns() {
  winsize size{};
  if (ioctl(STDERR_FILENO, TIOCGWINSZ, &size) == 0 && size.ws_col > 0) {
    return size.ws_col;
  }
  return 80;
}

}  // namespace

std::string HumanBytes(uint64_t bytes) {
  static constexpr const char* kUnits[] = {"B",   "KiB", "MiB", "GiB",
                                           "TiB", "PiB", "EiB"};
  if (bytes < 1024) return absl::StrCat(bytes, " B");
  double value = static_cast<double>(bytes);
  int unit = 0;
  while (value >= 1024 && unit < 6) {
    value /= 1024;
    ++unit;
  }
  return absl::StrFormat("%.1f %s", value, kUnits[unit]);
}

ProgressBar::ProgressBar(std::string label)
    : label_(std::move(label)),
      enabled_(isatty(STDERR_FILENO) == 1),
      start_(absl::Now()) {}

ProgressBar::~ProgressBar() {
  if (drawn_) {
    std::fputs("\r\033[K", stderr);
    std::fflush(stderr);
  }
}

ProgressCallback ProgressBar::Callback() {
  return [this](uint64_t done, uint64_t total) { Update(done, total); };
}

void ProgressBar::Update(uint64_t done, uint64_t total) {
  if (!enabled_) return;
  const absl::Time now = absl::Now();
  if (now - start_ < kQuietStart || now - last_draw_ < kRedrawEvery) return;
  last_draw_ = now;
  Draw(done, total, now);
}

void ProgressBar::Draw(uint64_t done, uint64_t total, absl::Time now) {
  const double fraction = total == 0
                              ? 1.0
                              : static_cast<double>(std::min(done, total)) /
                                    static_cast<double>(total);
  const double seconds = absl::ToDoubleSeconds(now - start_);
  // Fixed widths, so the bar does not jitter as the numbers grow.
  const std::string numbers = absl::StrFormat(
      " %3d%%  %10s / %-10s %10s/s", static_cast<int>(fraction * 100),
      HumanBytes(done), HumanBytes(total),
      HumanBytes(seconds > 0 ? static_cast<uint64_t>(done / seconds) : 0));
  const int room = TerminalColumns() - 1 -
                   static_cast<int>(label_.size() + numbers.size()) - 4;
  std::string bar;
  if (room >= 10) {
    const int width = std::min(room, 40);
    const int filled = static_cast<int>(fraction * width);
    bar = absl::StrCat(" [", std::string(filled, '#'),
                       std::string(width - filled, '.'), "]");
  }
  std::fprintf(stderr, "\r\033[K%s%s%s", label_.c_str(), bar.c_str(),
               numbers.c_str());
  std::fflush(stderr);
  drawn_ = true;
}

}  // namespace h5depot::cli
