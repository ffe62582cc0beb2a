// The memory that reading one untrusted file may take, and the one check that keeps it there.
// Every foreign reader (.pt, .safetensors, Hugging Face index) charges what it is about to
// allocate from the file's declarations before allocating it: parsed state (a pickle's values
// and memo, a JSON header's entries) against parse_budget() of the bytes it parses, tensor bytes
// against what the file really holds. No LibTorch here.
#pragma once

#include <cstdint>
#include <string>

namespace shardload {

/// Parsed state (pickle values, stack, memo and strings; a JSON header's keys, entries and
/// shapes) may take kParseFloorBytes + kParseBytesPerInputByte per byte of the file it comes
/// from: a torch.save file needs about 25 bytes of state per byte of its pickle (and its
/// storages add bytes to the file), a safetensors header about 4 per byte of its JSON.
inline constexpr uint64_t kParseFloorBytes = uint64_t{64} << 20;
inline constexpr uint64_t kParseBytesPerInputByte = 32;

/// The parse budget for a file (or a JSON header) of `input_bytes` bytes.
uint64_t parse_budget(uint64_t input_bytes);

/// Views of a .pt file that are materialized contiguous (a slice, a transpose, a stride-0
/// expansion) may take, all together, the file's size plus this many bytes beyond the storages
/// they view.
inline constexpr uint64_t kViewFloorBytes = uint64_t{256} << 20;

/// A budget of bytes, charged before each allocation it covers.
class ReadBudget {
 public:
  /// `what` names the budget in messages ("the parsed pickle", "materialized views").
  ReadBudget(uint64_t limit, std::string what) : limit_(limit), what_(std::move(what)) {}

  /// Counts `bytes` more; throws FormatError "<what>: <bytes> more bytes for <item> would
  /// exceed the limit of <limit> bytes (<why>)" when the total would pass the limit. Nothing
  /// is counted then.
  void charge(uint64_t bytes, const char* item) {
    if (bytes > limit_ - used_) fail(bytes, item);
    used_ += bytes;
  }
  /// Gives back `bytes` charged before (memory freed).
  void release(uint64_t bytes) { used_ -= bytes < used_ ? bytes : used_; }
  uint64_t used() const { return used_; }
  uint64_t limit() const { return limit_; }

 private:
  [[noreturn]] void fail(uint64_t bytes, const char* item) const;

  uint64_t limit_;
  uint64_t used_ = 0;
  std::string what_;
};

}  // namespace shardload
