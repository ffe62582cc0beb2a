// A bounded reader of a zip file's central directory, to check a torch.save archive before
// LibTorch's zip reader (miniz) allocates anything from sizes the file declares. It locates the
// directory the way miniz does (the last end-of-directory record, its ZIP64 record when one is
// present), so both see the same members. No LibTorch here.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

namespace shardload {

/// One member of a zip archive as its central directory describes it, checked.
struct ZipMember {
  std::string name;
  uint16_t method = 0;           ///< 0 stored, 8 deflated
  uint64_t compressed_size = 0;  ///< bytes in the file
  uint64_t size = 0;             ///< bytes once extracted
  uint64_t data_offset = 0;      ///< where its (compressed) bytes start in the file
};

/// Bounds of scan_zip_directory.
struct ZipLimits {
  /// Members in all (a torch.save file has one per storage plus about six).
  uint64_t max_members = uint64_t{1} << 21;
  /// Extracted bytes per compressed byte of a deflated member: deflate's own limit is 1032.
  uint64_t max_deflate_ratio = 1032;
};

/// Reads exactly `n` bytes at `offset` into `buf`; throws FormatError when it cannot.
using ZipReadAt = std::function<void(uint64_t offset, char* buf, size_t n)>;

/// Reads and checks the central directory of the zip archive of `file_size` bytes: the number
/// of members, that each member's header and data lie inside the file (before the directory),
/// that a stored member's size equals its compressed size and a deflated one's stays within the
/// deflate ratio, no encryption, no other compression method, no two names that differ only
/// in case (miniz looks names up ignoring case). Throws FormatError "zip: ..." otherwise.
std::vector<ZipMember> scan_zip_directory(uint64_t file_size, const ZipReadAt& read_at,
                                          const ZipLimits& limits = {});

}  // namespace shardload
