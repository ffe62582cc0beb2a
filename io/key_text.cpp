#include "io/key_text.h"

#include <cstdint>

#include "core/error.h"

namespace shardload {
namespace {

/// Length of the well-formed UTF-8 sequence at `text[i]` and its code point; 0 when broken.
size_t utf8_sequence(std::string_view text, size_t i, uint32_t* code_point) {
  const auto c = static_cast<uint8_t>(text[i]);
  size_t n = 0;
  uint32_t cp = 0;
  if (c < 0x80) {
    *code_point = c;
    return 1;
  } else if ((c & 0xE0) == 0xC0) {
    n = 1, cp = c & 0x1F;
  } else if ((c & 0xF0) == 0xE0) {
    n = 2, cp = c & 0x0F;
  } else if ((c & 0xF8) == 0xF0) {
    n = 3, cp = c & 0x07;
  } else {
    return 0;
  }
  if (text.size() - i <= n) return 0;
  for (size_t j = 1; j <= n; ++j) {
    const auto cc = static_cast<uint8_t>(text[i + j]);
    if ((cc & 0xC0) != 0x80) return 0;
    cp = (cp << 6) | (cc & 0x3F);
  }
  constexpr uint32_t kMin[] = {0, 0x80, 0x800, 0x10000};
  if (cp < kMin[n] || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) return 0;
  *code_point = cp;
  return n + 1;
}

void append_hex(std::string& out, uint8_t b) {
  constexpr char kDigits[] = "0123456789abcdef";
  out += "\\x";
  out += kDigits[b >> 4];
  out += kDigits[b & 15];
}

}  // namespace

bool is_valid_utf8(std::string_view text) {
  uint32_t cp = 0;
  for (size_t i = 0; i < text.size();) {
    const size_t n = utf8_sequence(text, i, &cp);
    if (n == 0) return false;
    i += n;
  }
  return true;
}

std::optional<std::string> utf8_to_latin1(std::string_view text) {
  std::string out;
  out.reserve(text.size());
  uint32_t cp = 0;
  for (size_t i = 0; i < text.size();) {
    const size_t n = utf8_sequence(text, i, &cp);
    if (n == 0 || cp > 0xFF) return std::nullopt;
    out.push_back(static_cast<char>(cp));
    i += n;
  }
  return out;
}

std::string quote_text(std::string_view text, size_t max_bytes) {
  std::string out = "'";
  uint32_t cp = 0;
  size_t i = 0;
  while (i < text.size() && i < max_bytes) {
    const size_t n = utf8_sequence(text, i, &cp);
    if (n == 0 || cp < 0x20 || cp == 0x7F) {
      append_hex(out, static_cast<uint8_t>(text[i]));
      ++i;
    } else {
      out.append(text.substr(i, n));
      i += n;
    }
  }
  if (i < text.size()) out += "...";
  out += "'";
  return out;
}

void check_tensor_key(std::string_view key) {
  if (key.find('\0') != std::string_view::npos) {
    throw FormatError("key " + quote_text(key) + ": contains a NUL character");
  }
  if (!is_valid_utf8(key)) throw FormatError("key " + quote_text(key) + ": is not valid UTF-8");
}

}  // namespace shardload
