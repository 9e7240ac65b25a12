// Fuzzes the client's superblock reader (client/src/superblock_internal.h):
// ParseSuperblock, Superblock::ImageDataEnd, RepairSuperblockChecksum and
// the lookup3 checksum it writes, on whatever bytes claim to be an HDF5
// file image. An input is the image. Besides not reading or writing past
// it, the reader must agree with the signature scan, describe only fields
// that lie inside the image, and the repair must touch nothing but the
// checksum, leave it correct, and find nothing more to do the second time.
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <optional>
#include <vector>

#include "client/src/superblock_internal.h"
#include "fuzz/fuzz_check.h"
#include "h5depot/internal/hdf5_signature.h"

namespace h5depot::internal {
namespace {

uint32_t LoadLittleEndian32(const uint8_t* bytes) {
  return uint32_t{bytes[0]} | uint32_t{bytes[1]} << 8 |
         uint32_t{bytes[2]} << 16 | uint32_t{bytes[3]} << 24;
}

bool SameSuperblock(const Superblock& a, const Superblock& b) {
  return a.offset == b.offset && a.version == b.version &&
         a.offset_size == b.offset_size && a.base_address == b.base_address &&
         a.end_of_file_address == b.end_of_file_address &&
         a.checksum_offset == b.checksum_offset &&
         a.checksummed_size == b.checksummed_size;
}

void CheckParsed(const Superblock& sb, const uint8_t* image, size_t size) {
  FUZZ_CHECK(FindSuperblock(image, size) == sb.offset);
  FUZZ_CHECK(sb.version >= 0 && sb.version <= 3);
  FUZZ_CHECK(sb.offset_size == 2 || sb.offset_size == 4 || sb.offset_size == 8);
  FUZZ_CHECK(sb.checksum_offset.has_value() == (sb.version >= 2));
  if (sb.checksum_offset.has_value()) {
    FUZZ_CHECK(*sb.checksum_offset == sb.offset + sb.checksummed_size);
    FUZZ_CHECK(*sb.checksum_offset <= size && size - *sb.checksum_offset >= 4);
  }
  // The data begins with the superblock and spans the stored end of file
  // less the base address.
  if (const std::optional<uint64_t> end = sb.ImageDataEnd()) {
    FUZZ_CHECK(sb.end_of_file_address >= sb.base_address);
    FUZZ_CHECK(*end >= sb.offset);
    FUZZ_CHECK(*end - sb.offset == sb.end_of_file_address - sb.base_address);
  }
}

void CheckRepair(const std::optional<Superblock>& sb, const uint8_t* data,
                 size_t size) {
  std::vector<uint8_t> image(data, data + size);
  const bool changed = RepairSuperblockChecksum(image.data(), image.size());
  if (!sb.has_value() || !sb->checksum_offset.has_value()) {
    FUZZ_CHECK(!changed);
    FUZZ_CHECK(size == 0 || std::memcmp(image.data(), data, size) == 0);
    return;
  }
  const uint64_t at = *sb->checksum_offset;
  for (size_t i = 0; i < size; ++i) {
    if (i < at || i >= at + 4) FUZZ_CHECK(image[i] == data[i]);
  }
  FUZZ_CHECK(changed == (std::memcmp(image.data() + at, data + at, 4) != 0));
  FUZZ_CHECK(LoadLittleEndian32(image.data() + at) ==
             MetadataChecksum(image.data() + sb->offset, sb->checksummed_size));
  FUZZ_CHECK(!RepairSuperblockChecksum(image.data(), image.size()));
  const std::optional<Superblock> repaired =
      ParseSuperblock(image.data(), image.size());
  FUZZ_CHECK(repaired.has_value() && SameSuperblock(*repaired, *sb));
}

// "The same value for any alignment": the checksum of the bytes one byte
// further into a buffer.
void CheckChecksumIgnoresAlignment(const uint8_t* data, size_t size) {
  std::vector<uint8_t> shifted(size + 1);
  if (size > 0) std::memcpy(shifted.data() + 1, data, size);
  FUZZ_CHECK(MetadataChecksum(shifted.data() + 1, size, 7) ==
             MetadataChecksum(data, size, 7));
}

}  // namespace
}  // namespace h5depot::internal

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  namespace internal = ::h5depot::internal;
  const std::optional<internal::Superblock> sb =
      internal::ParseSuperblock(data, size);
  if (sb.has_value()) internal::CheckParsed(*sb, data, size);
  internal::CheckRepair(sb, data, size);
  internal::CheckChecksumIgnoresAlignment(data, size);
  return 0;
}
