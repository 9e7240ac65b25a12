// Images in sealed memory: memfd_create(2) files holding one HDF5 file image
// each, so that processes on one host hand an image over as a file
// descriptor (SCM_RIGHTS on a Unix socket) instead of sending its bytes.
//
// A receiver maps such a file only once its seals say the sender can no
// longer change what the receiver sees: an unsealed memfd could be written
// or truncated under the receiver's mapping (a truncated one raises SIGBUS
// on the next touch). Which seals each end requires is written here once:
//
//   kSealsFromClient  a client's push: nobody may write, shrink or grow it
//                     (F_SEAL_WRITE), which the kernel grants only once no
//                     writable shared mapping is left
//   kSealsFromServer  the server's stored images: no new writes, and no
//                     shrink or grow; the server's own mapping, which
//                     received the bytes, stays writable (F_SEAL_FUTURE_WRITE)
//                     and the server never writes through it again
//   kSealsOfStepBuffer a stream writer's step buffer (docs/STREAMS.md,
//                     "Step buffers"): its size is fixed, so that no
//                     mapping of it can fault, but its writer keeps it
//                     writable to fill it again once every holder let go
//
// Both include F_SEAL_SEAL, so that nobody can take a seal back.
#ifndef H5DEPOT_COMMON_MEMFD_H_
#define H5DEPOT_COMMON_MEMFD_H_

#include <fcntl.h>

#include <cstddef>
#include <cstdint>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace h5depot::internal {

inline constexpr int kSealsFromClient =
    F_SEAL_WRITE | F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL;
inline constexpr int kSealsFromServer =
    F_SEAL_FUTURE_WRITE | F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL;
inline constexpr int kSealsOfStepBuffer =
    F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL;

// Whether `fd` is sealed against writes (F_SEAL_WRITE or
// F_SEAL_FUTURE_WRITE); false for anything else, a step buffer included.
bool IsWriteSealed(int fd);

// An owned file descriptor; closed on destruction.
class UniqueFd {
 public:
  UniqueFd() = default;
  explicit UniqueFd(int fd) : fd_(fd) {}
  ~UniqueFd() { Reset(); }
  UniqueFd(UniqueFd&& other) noexcept : fd_(other.Release()) {}
  UniqueFd& operator=(UniqueFd&& other) noexcept {
    if (this != &other) Reset(other.Release());
    return *this;
  }
  UniqueFd(const UniqueFd&) = delete;
  UniqueFd& operator=(const UniqueFd&) = delete;

  int get() const { return fd_; }
  explicit operator bool() const { return fd_ >= 0; }
  // Gives up ownership.
  int Release() {
    int fd = fd_;
    fd_ = -1;
    return fd;
  }
  void Reset(int fd = -1);

 private:
  int fd_ = -1;
};

// A new memfd of `size` bytes (no page touched yet), close-on-exec and
// sealable; `name` shows in /proc/PID/fd. RESOURCE_EXHAUSTED when out of
// descriptors or memory, naming the cause.
absl::StatusOr<UniqueFd> CreateMemfd(const char* name, uint64_t size);

// Adds `seals` (kSealsFromClient or kSealsFromServer) to the memfd `fd`.
// FAILED_PRECONDITION if F_SEAL_WRITE is asked while a writable shared
// mapping of it exists, or if it is already sealed against sealing;
// INVALID_ARGUMENT if it is not a sealable memfd.
absl::Status AddSeals(int fd, int seals);

// Checks that `fd` is a memfd carrying at least `seals` (F_SEAL_WRITE
// standing in for F_SEAL_FUTURE_WRITE) and holding at least `size` bytes,
// and returns its length. INVALID_ARGUMENT saying what
// is missing (not a memfd, a seal, or bytes) otherwise.
absl::StatusOr<uint64_t> CheckSealedImage(int fd, int seals, uint64_t size);

// A mapping of a file's first bytes; unmapped on destruction.
class Mapping {
 public:
  enum class Access {
    kReadOnly,     // PROT_READ, MAP_SHARED
    kCopyOnWrite,  // PROT_READ|PROT_WRITE, MAP_PRIVATE: writes stay private
    kReadWrite,    // PROT_READ|PROT_WRITE, MAP_SHARED
  };

  // When the mapping's page table entries are made.
  enum class Pages {
    kOnFirstTouch,  // a page fault for each page (or run of pages) touched
    kAtOnce,        // MAP_POPULATE: all in the mmap call, no faults later
  };

  Mapping() = default;
  // Maps the first `length` (> 0) bytes of `fd`. RESOURCE_EXHAUSTED or
  // INVALID_ARGUMENT with mmap's reason.
  static absl::StatusOr<Mapping> Map(int fd, size_t length, Access access,
                                     Pages pages = Pages::kOnFirstTouch);

  ~Mapping() { Reset(); }
  Mapping(Mapping&& other) noexcept;
  Mapping& operator=(Mapping&& other) noexcept;
  Mapping(const Mapping&) = delete;
  Mapping& operator=(const Mapping&) = delete;

  void* data() const { return data_; }
  size_t length() const { return length_; }
  explicit operator bool() const { return data_ != nullptr; }
  void Reset();
  // Gives up the mapping: the caller munmaps `length()` bytes at `data()`.
  void* Release();

 private:
  Mapping(void* data, size_t length) : data_(data), length_(length) {}
  void* data_ = nullptr;
  size_t length_ = 0;
};

}  // namespace h5depot::internal

#endif  // H5DEPOT_COMMON_MEMFD_H_
