// Text read from untrusted files: UTF-8 validation, state-dict key rules, quoting for messages.
#pragma once

#include <optional>
#include <string>
#include <string_view>

namespace shardload {

/// True when `text` is well-formed UTF-8 (no overlong forms, surrogates or code points above
/// U+10FFFF).
bool is_valid_utf8(std::string_view text);

/// The Latin-1 bytes of UTF-8 `text` whose code points are all below U+0100 (how Python's
/// pickle protocol 2 carries `bytes`: `_codecs.encode(str, 'latin1')`); nullopt otherwise.
std::optional<std::string> utf8_to_latin1(std::string_view text);

/// `text` for an error message: quoted with single quotes; bytes that are not printable ASCII
/// or valid UTF-8 (control characters, NUL, broken sequences) as \xNN; cut after `max_bytes`.
std::string quote_text(std::string_view text, size_t max_bytes = 200);

/// Throws FormatError "key 'K': ..." when a state-dict key read from a file contains a NUL
/// character or is not valid UTF-8 (both break HDF5 names, Python's str and safetensors JSON).
void check_tensor_key(std::string_view key);

}  // namespace shardload
