// Reading and repairing the HDF5 superblock of a file image, without HDF5.
//
// HDF5 1.10.8's H5Fget_file_image clears the superblock's status flags in
// the copy it returns but leaves the checksum that version 2 and 3
// superblocks carry unchanged, so such images fail to open ("incorrect
// metadata checksum"). RepairSuperblockChecksum recomputes it.
#ifndef H5DEPOT_CLIENT_SUPERBLOCK_INTERNAL_H_
#define H5DEPOT_CLIENT_SUPERBLOCK_INTERNAL_H_

#include <cstddef>
#include <cstdint>
#include <optional>

namespace h5depot::internal {

// Bob Jenkins' lookup3 hashlittle() of `size` bytes: the checksum HDF5
// computes over its metadata (H5_checksum_metadata uses initval 0).
uint32_t MetadataChecksum(const void* data, size_t size, uint32_t initval = 0);

// The fields of a superblock that h5depot needs.
struct Superblock {
  uint64_t offset = 0;  // of the signature within the image
  int version = 0;      // 0 to 3
  int offset_size = 0;  // "size of offsets" in bytes: 2, 4 or 8
  uint64_t base_address = 0;
  uint64_t end_of_file_address = 0;  // absolute, like base_address
  // Versions 2 and 3 only: where the 4-byte checksum is, and how many bytes
  // from `offset` it covers.
  std::optional<uint64_t> checksum_offset;
  uint64_t checksummed_size = 0;

  // Bytes of HDF5 data in an image whose superblock is at `offset`: the
  // stored end of file, less the base address the superblock was written
  // with (images taken with H5Fget_file_image drop the user block).
  // nullopt if the end of file lies before the base address, or so far
  // past it that the end would not fit in 64 bits (a corrupt superblock).
  std::optional<uint64_t> ImageDataEnd() const;
};

// The superblock of `image`, or nullopt if there is no signature (see
// FindSuperblock) or the superblock is cut off or of an unknown version.
std::optional<Superblock> ParseSuperblock(const void* image, size_t size);

// Recomputes the checksum of a version 2 or 3 superblock in place. Returns
// true if bytes changed; false for versions 0 and 1 (no checksum), correct
// checksums, and images without a readable superblock.
bool RepairSuperblockChecksum(void* image, size_t size);

}  // namespace h5depot::internal

#endif  // H5DEPOT_CLIENT_SUPERBLOCK_INTERNAL_H_
