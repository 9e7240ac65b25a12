// Byte counts as people write and read them: "512M", "8G", "1.5 GiB".
#ifndef H5DEPOT_COMMON_BYTE_SIZE_H_
#define H5DEPOT_COMMON_BYTE_SIZE_H_

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

namespace h5depot::internal {

// Parses a plain byte count or one with a K, M, G or T suffix (powers of
// 1024; "KiB", "MB" and the like are accepted too). nullopt when malformed
// or out of range.
std::optional<uint64_t> ParseByteSize(std::string_view text);

// "0 B", "812 B", "4.0 KiB", "1.5 GiB": for messages and listings.
std::string HumanSize(uint64_t bytes);

}  // namespace h5depot::internal

#endif  // H5DEPOT_COMMON_BYTE_SIZE_H_
