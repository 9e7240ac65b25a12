// Large image buffers just freed, kept for a moment for the next image of
// about their size. A fetch needs a fresh buffer the size of the image, and
// the kernel zeroes every new page before the receive can copy into it: a
// third of the time of a large fetch. A process that fetches image after
// image (a consumer of data packets, a job fetching by id) gets the pages
// of the image it just dropped instead.
//
// The rules are the server's store's, kept in the same pool
// (internal::RetainedBuffers; docs/ARCHITECTURE.md): a buffer of
// kRecycleMinBytes or more freed through ~ImageBuffer is kept for
// kRecycleRetainFor, at most kRecycleMaxRetained of them; one taken fits a
// request without wasting over a quarter of it; a request that finds none to
// take frees every kept buffer before allocating, so keeping them never
// raises the process's peak memory.
//
// The client's own policy: a thread of its own, started with the first kept
// buffer and idle while none is kept, frees them when due; it never exits,
// and touches the allocator only under a lock that fork() takes first, so a
// child of fork() never inherits an allocator lock it held. A child of
// fork() starts with none kept and starts its own thread when it keeps one.
// Buffers handed to HDF5 (ImageBuffer::Release) are freed by HDF5 and never
// come back here. Thread-safe. Internal to the client.
#ifndef H5DEPOT_CLIENT_BUFFER_RECYCLER_INTERNAL_H_
#define H5DEPOT_CLIENT_BUFFER_RECYCLER_INTERNAL_H_

#include <cstddef>
#include <cstdint>

#include "absl/time/time.h"

namespace h5depot::internal {

inline constexpr size_t kRecycleMinBytes = size_t{1} << 20;
inline constexpr absl::Duration kRecycleRetainFor = absl::Seconds(1);
inline constexpr size_t kRecycleMaxRetained = 2;

// A kept malloc block of at least `size` bytes (and at most a quarter
// more), or null. A `size` of kRecycleMinBytes or more that finds none
// frees every kept block.
void* TakeRecycledBuffer(size_t size);

// Takes ownership of `data`, a malloc block of at least `size` bytes:
// keeps it if it is large enough, frees it otherwise.
void RecycleBuffer(void* data, size_t size);

// Bytes kept now. For tests and statistics.
uint64_t RecycledBytes();

// Frees the kept blocks due by `now` (the reaper thread's work, callable
// directly so that tests need not wait for it).
void FreeRecycledBuffersDueBy(absl::Time now);

}  // namespace h5depot::internal

#endif  // H5DEPOT_CLIENT_BUFFER_RECYCLER_INTERNAL_H_
