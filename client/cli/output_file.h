// Where `h5depot get -o FILE` puts an image: a regular file is replaced
// whole or not at all; anything else (a device, a FIFO) is written through,
// as `cp` and `curl -o` do.
#ifndef H5DEPOT_CLI_OUTPUT_FILE_H_
#define H5DEPOT_CLI_OUTPUT_FILE_H_

#include <cstddef>
#include <memory>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace h5depot::cli {

// One destination for the bytes of one image. Not thread-safe.
class OutputFile {
 public:
  // Opens `path` for writing, choosing by what it names once symlinks are
  // followed:
  //
  //  - Nothing, or a regular file: the image is *replaced* all or nothing.
  //    Writes go to a hidden temporary file beside the file the symlinks
  //    lead to, which Commit() renames over it, so a link stays a link and
  //    the name shows either the old contents (or nothing) or the whole
  //    image, even if the process is killed. A destroyed, uncommitted
  //    file -- or a process stopped by SIGINT, SIGTERM or SIGHUP meanwhile
  //    -- removes the temporary file (one replacing OutputFile per process
  //    at a time: the signal cleanup knows one path). The new file keeps the
  //    old one's mode and, where permitted, owner and group; a new file gets
  //    0666 & ~umask. It is a new inode: other hard links keep the old
  //    contents, and ACLs or extended attributes are not carried over.
  //  - A character or block device or a FIFO: the image is *written
  //    through* into the existing object, never replaced, because renaming
  //    a file over it would destroy the device node or pipe that other
  //    processes rely on. Nothing is atomic about it. Opening a FIFO waits
  //    for a reader.
  //  - A regular file that only a magic link reaches (/proc/PID/fd/N of a
  //    deleted file): truncated and written through, as the link's text
  //    names no path to rename over.
  //  - A directory: INVALID_ARGUMENT.
  //
  // Opens or creates what it needs now, so that an unwritable destination is
  // reported before any data is fetched. Errors carry errno's text:
  // NOT_FOUND (a directory on the way is missing or not a directory),
  // PERMISSION_DENIED, RESOURCE_EXHAUSTED (no space), FAILED_PRECONDITION
  // (the path turned into a regular file while being opened), INTERNAL
  // otherwise.
  //
  // With `sync`, Commit() also makes the result durable, so that it
  // survives a crash of the machine too: the file is synced before the
  // rename and its directory after (a written-through regular file or
  // block device before it is closed). Without it the data reaches the
  // disk when the kernel writes it back, as after `cp` or `curl -o`; the
  // rename is still all or nothing for every process on the machine.
  //
  // Where the file system would write the new file back before the rename
  // anyway -- ext4 does for a rename over an existing file (auto_da_alloc),
  // so that a crash cannot leave the name empty -- and with `sync`, the
  // writeback is started as the bytes are written, 8 MiB at a time, so that
  // it runs beside the transfer instead of after it. A new file without
  // `sync` is left to the kernel's own writeback.
  static absl::StatusOr<std::unique_ptr<OutputFile>> Open(
      const std::string& path, bool sync);

  virtual ~OutputFile() = default;
  OutputFile(const OutputFile&) = delete;
  OutputFile& operator=(const OutputFile&) = delete;

  // Appends `size` bytes.
  virtual absl::Status Write(const void* data, size_t size) = 0;

  // Makes what was written final: renames a replacement into place, or
  // closes a written-through file; durable too if opened with `sync`. Call at
  // most once. Errors as for Open(); FAILED_PRECONDITION if the file to replace
  // was turned into something else meanwhile, which is then left alone.
  virtual absl::Status Commit() = 0;

 protected:
  OutputFile() = default;
};

// Writes all of `data` to `fd`, retrying short writes and EINTR. An error's
// message is `what` followed by errno's text.
absl::Status WriteAll(int fd, const void* data, size_t size,
                      const std::string& what);

}  // namespace h5depot::cli

#endif  // H5DEPOT_CLI_OUTPUT_FILE_H_
