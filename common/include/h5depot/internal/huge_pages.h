// Getting fresh memory ready to receive an image.
#ifndef H5DEPOT_COMMON_HUGE_PAGES_H_
#define H5DEPOT_COMMON_HUGE_PAGES_H_

#include <cstddef>

namespace h5depot::internal {

// Asks for transparent huge pages under the whole 2 MiB pages of a buffer
// about to be filled. Filled 4 KiB page by page, a fresh buffer costs more
// in page faults than in moving the bytes (docs/PERFORMANCE.md). Only a
// hint: harmless where the kernel has huge pages off or unavailable.
void AdviseHugePages(void* data, size_t size);

}  // namespace h5depot::internal

#endif  // H5DEPOT_COMMON_HUGE_PAGES_H_
