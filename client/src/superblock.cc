#include <cstring>

#include "client/src/superblock_internal.h"
#include "h5depot/internal/hdf5_signature.h"

namespace h5depot::internal {
namespace {

uint32_t Rotate(uint32_t x, int k) { return (x << k) | (x >> (32 - k)); }

// Little-endian word from up to 4 bytes, missing high bytes taken as zero.
uint32_t LoadWord(const unsigned char* bytes, size_t count) {
  uint32_t word = 0;
  for (size_t i = 0; i < count && i < 4; ++i) {
    word |= static_cast<uint32_t>(bytes[i]) << (8 * i);
  }
  return word;
}

// clang-format off
void Mix(uint32_t& a, uint32_t& b, uint32_t& c) {
  a -= c; a ^= Rotate(c, 4);  c += b;
  b -= a; b ^= Rotate(a, 6);  a += c;
  c -= b; c ^= Rotate(b, 8);  b += a;
  a -= c; a ^= Rotate(c, 16); c += b;
  b -= a; b ^= Rotate(a, 19); a += c;
  c -= b; c ^= Rotate(b, 4);  b += a;
}

void Final(uint32_t& a, uint32_t& b, uint32_t& c) {
  c ^= b; c -= Rotate(b, 14);
  a ^= c; a -= Rotate(c, 11);
  b ^= a; b -= Rotate(a, 25);
  c ^= b; c -= Rotate(b, 16);
  a ^= c; a -= Rotate(c, 4);
  b ^= a; b -= Rotate(a, 14);
  c ^= b; c -= Rotate(b, 24);
}
// clang-format on

uint64_t LoadAddress(const unsigned char* bytes, int size) {
  uint64_t value = 0;
  for (int i = 0; i < size; ++i) {
    value |= static_cast<uint64_t>(bytes[i]) << (8 * i);
  }
  return value;
}

}  // namespace

uint32_t MetadataChecksum(const void* data, size_t size, uint32_t initval) {
  // Byte-at-a-time form of lookup3's hashlittle(): the same value for any
  // alignment and host byte order.
  const auto* k = static_cast<const unsigned char*>(data);
  uint32_t a = 0xdeadbeef + static_cast<uint32_t>(size) + initval;
  uint32_t b = a;
  uint32_t c = a;
  while (size > 12) {
    a += LoadWord(k, 4);
    b += LoadWord(k + 4, 4);
    c += LoadWord(k + 8, 4);
    Mix(a, b, c);
    size -= 12;
    k += 12;
  }
  if (size == 0) return c;
  a += LoadWord(k, size);
  if (size > 4) b += LoadWord(k + 4, size - 4);
  if (size > 8) c += LoadWord(k + 8, size - 8);
  Final(a, b, c);
  return c;
}

std::optional<uint64_t> Superblock::ImageDataEnd() const {
  if (end_of_file_address < base_address) return std::nullopt;
  const uint64_t data_bytes = end_of_file_address - base_address;
  if (data_bytes > UINT64_MAX - offset) return std::nullopt;
  return offset + data_bytes;
}

std::optional<Superblock> ParseSuperblock(const void* image, size_t size) {
  std::optional<uint64_t> found = FindSuperblock(image, size);
  if (!found) return std::nullopt;
  const auto* bytes = static_cast<const unsigned char*>(image) + *found;
  const uint64_t available = size - *found;

  Superblock sb;
  sb.offset = *found;
  if (available < 16) return std::nullopt;
  sb.version = bytes[8];
  // Where the addresses start: after the fixed-size fields of each version.
  uint64_t addresses;
  switch (sb.version) {
    case 0:
      sb.offset_size = bytes[13];
      addresses = 24;
      break;
    case 1:
      sb.offset_size = bytes[13];
      addresses = 28;
      break;
    case 2:
    case 3:
      sb.offset_size = bytes[9];
      addresses = 12;
      break;
    default:
      return std::nullopt;
  }
  if (sb.offset_size != 2 && sb.offset_size != 4 && sb.offset_size != 8) {
    return std::nullopt;
  }
  const uint64_t o = static_cast<uint64_t>(sb.offset_size);
  // Base address, then (free-space info | superblock extension), then the
  // end of file address; versions 2 and 3 end with the root object header
  // address and the checksum.
  const uint64_t needed =
      sb.version >= 2 ? addresses + 4 * o + 4 : addresses + 3 * o;
  if (available < needed) return std::nullopt;
  sb.base_address = LoadAddress(bytes + addresses, sb.offset_size);
  sb.end_of_file_address =
      LoadAddress(bytes + addresses + 2 * o, sb.offset_size);
  if (sb.version >= 2) {
    sb.checksummed_size = addresses + 4 * o;
    sb.checksum_offset = sb.offset + sb.checksummed_size;
  }
  return sb;
}

bool RepairSuperblockChecksum(void* image, size_t size) {
  std::optional<Superblock> sb = ParseSuperblock(image, size);
  if (!sb || !sb->checksum_offset) return false;
  auto* bytes = static_cast<unsigned char*>(image);
  const uint32_t checksum =
      MetadataChecksum(bytes + sb->offset, sb->checksummed_size);
  unsigned char encoded[4];
  for (int i = 0; i < 4; ++i) encoded[i] = (checksum >> (8 * i)) & 0xff;
  if (std::memcmp(bytes + *sb->checksum_offset, encoded, 4) == 0) return false;
  std::memcpy(bytes + *sb->checksum_offset, encoded, 4);
  return true;
}

}  // namespace h5depot::internal
