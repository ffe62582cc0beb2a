// The file system as every part of io/ uses it: paths and their parts, flushing files and
// directories to stable storage, small files read bounded and replaced atomically.
#pragma once

#include <cstddef>
#include <optional>
#include <string>

namespace shardload {

/// True when `path` exists (file, directory or symbolic link).
bool path_exists(const std::string& path);

/// The directory holding `path` ("." for a bare name) and `path`'s last component.
std::string parent_dir_of(const std::string& path);
std::string base_name_of(const std::string& path);

/// `name` in the directory that holds `path` (without a leading "./").
std::string sibling_path(const std::string& path, const std::string& name);

/// Flushes a written file to stable storage. Throws FormatError naming it on failure.
void fsync_file(const std::string& path);

/// Flushes a directory's entries (after a rename or unlink in it); best effort.
void fsync_dir(const std::string& dir) noexcept;

/// Reads a small file whole; nullopt when it cannot be read. Reads at most `max_bytes` + 1
/// bytes, so that the caller can tell an oversized file.
std::optional<std::string> read_small_file(const std::string& path, size_t max_bytes);

/// Replaces `path` with `text` atomically: a unique temporary beside it, flushed, renamed over
/// `path`, and the directory flushed. Throws FormatError naming `path`.
void write_small_file_atomically(const std::string& path, const std::string& text);

/// The current UTC time, ISO 8601 ("2026-11-28T16:00:00Z"), as manifests record it.
std::string utc_timestamp();

}  // namespace shardload
