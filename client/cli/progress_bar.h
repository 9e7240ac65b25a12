// A one-line progress bar on stderr for long transfers.
#ifndef H5DEPOT_CLI_PROGRESS_BAR_H_
#define H5DEPOT_CLI_PROGRESS_BAR_H_

#include <cstdint>
#include <string>

#include "absl/time/time.h"
#include "h5depot/client.h"

namespace h5depot::cli {

// Draws nothing unless stderr is a terminal and the transfer is still going
// after a moment (short transfers stay silent), and redraws at most ten
// times a second. Not thread-safe; used from the thread that transfers.
class ProgressBar {
 public:
  explicit ProgressBar(std::string label);
  // Erases the bar if one was drawn.
  ~ProgressBar();
  ProgressBar(const ProgressBar&) = delete;
  ProgressBar& operator=(const ProgressBar&) = delete;

  // A callback for PushOptions/FetchOptions that updates this bar; valid
  // while the bar lives.
  ProgressCallback Callback();

  void Update(uint64_t done, uint64_t total);

 private:
  void Draw(uint64_t done, uint64_t total, absl::Time now);

  const std::string label_;
  const bool enabled_;
  const absl::Time start_;
  absl::Time last_draw_ = absl::InfinitePast();
  bool drawn_ = false;
};

// "1.5 GiB", "300 B": sizes for people.
std::string HumanBytes(uint64_t bytes);

}  // namespace h5depot::cli

#endif  // H5DEPOT_CLI_PROGRESS_BAR_H_
