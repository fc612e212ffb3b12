#include "tokenizer/unicode.h"

#include <array>

#include "tokenizer/regex.h"

namespace moe::utf8 {

Decoded decode_at(std::string_view text, size_t pos) {
  const auto byte = [&](size_t i) { return static_cast<uint8_t>(text[i]); };
  const uint8_t lead = byte(pos);
  if (lead < 0x80) return {lead, 1};
  int length;
  char32_t cp;
  uint8_t lower = 0x80, upper = 0xBF;  // bounds for the second byte (rejects overlongs and surrogates)
  if (lead >= 0xC2 && lead <= 0xDF) {
    length = 2, cp = lead & 0x1F;
  } else if (lead >= 0xE0 && lead <= 0xEF) {
    length = 3, cp = lead & 0x0F;
    if (lead == 0xE0) lower = 0xA0;
    if (lead == 0xED) upper = 0x9F;
  } else if (lead >= 0xF0 && lead <= 0xF4) {
    length = 4, cp = lead & 0x07;
    if (lead == 0xF0) lower = 0x90;
    if (lead == 0xF4) upper = 0x8F;
  } else {
    return {kInvalidCodePoint, 1};
  }
  if (pos + length > text.size()) return {kInvalidCodePoint, 1};
  for (int i = 1; i < length; ++i) {
    const uint8_t b = byte(pos + i);
    if (i == 1 ? (b < lower || b > upper) : (b < 0x80 || b > 0xBF)) return {kInvalidCodePoint, 1};
    cp = (cp << 6) | (b & 0x3F);
  }
  return {cp, length};
}

size_t previous_start(std::string_view text, size_t pos) {
  // A well-formed character is at most 4 bytes long; try the longest candidate start first.
  for (size_t back = 4; back >= 2; --back) {
    if (pos < back) continue;
    const Decoded d = decode_at(text, pos - back);
    if (d.code_point != kInvalidCodePoint && static_cast<size_t>(d.length) == back) return pos - back;
  }
  return pos - 1;
}

void append(std::string& out, char32_t cp) {
  if (cp < 0x80) {
    out += static_cast<char>(cp);
  } else if (cp < 0x800) {
    out += static_cast<char>(0xC0 | (cp >> 6));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  } else if (cp < 0x10000) {
    out += static_cast<char>(0xE0 | (cp >> 12));
    out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  } else {
    out += static_cast<char>(0xF0 | (cp >> 18));
    out += static_cast<char>(0x80 | ((cp >> 12) & 0x3F));
    out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  }
}

namespace {
// Bytes of the longest prefix of text[pos..] that could begin a well-formed sequence (1 for a bad lead byte).
size_t maximal_subpart(std::string_view text, size_t pos) {
  const uint8_t lead = static_cast<uint8_t>(text[pos]);
  int length = lead >= 0xF0 && lead <= 0xF4 ? 4 : lead >= 0xE0 && lead <= 0xEF ? 3 : lead >= 0xC2 && lead <= 0xDF ? 2 : 1;
  uint8_t lower = 0x80, upper = 0xBF;
  if (lead == 0xE0) lower = 0xA0;
  if (lead == 0xED) upper = 0x9F;
  if (lead == 0xF0) lower = 0x90;
  if (lead == 0xF4) upper = 0x8F;
  size_t n = 1;
  for (; n < static_cast<size_t>(length) && pos + n < text.size(); ++n) {
    const uint8_t b = static_cast<uint8_t>(text[pos + n]);
    if (n == 1 ? (b < lower || b > upper) : (b < 0x80 || b > 0xBF)) break;
  }
  return n;
}
}  // namespace

std::string lossy(std::string_view bytes) {
  std::string out;
  out.reserve(bytes.size());
  size_t pos = 0;
  while (pos < bytes.size()) {
    const Decoded d = decode_at(bytes, pos);
    if (d.code_point != kInvalidCodePoint) {
      out.append(bytes.substr(pos, d.length));
      pos += d.length;
    } else {
      out += "\xEF\xBF\xBD";
      pos += maximal_subpart(bytes, pos);
    }
  }
  return out;
}

size_t incomplete_tail(std::string_view bytes) {
  const size_t n = bytes.size();
  for (size_t back = 1; back <= 3 && back <= n; ++back) {
    const uint8_t b = static_cast<uint8_t>(bytes[n - back]);
    if (b >= 0x80 && b <= 0xBF) continue;  // continuation byte: keep looking for the lead
    if (b < 0xC2 || b > 0xF4) return 0;
    const size_t needed = b >= 0xF0 ? 4 : b >= 0xE0 ? 3 : 2;
    if (back >= needed) return 0;
    return maximal_subpart(bytes, n - back) == back ? back : 0;
  }
  return 0;
}

bool is_whitespace(char32_t c) {
  if (c < 0x80) return c == ' ' || (c >= 0x09 && c <= 0x0D);
  return c == 0x85 || c == 0xA0 || c == 0x1680 || (c >= 0x2000 && c <= 0x200A) || c == 0x2028 || c == 0x2029 ||
         c == 0x202F || c == 0x205F || c == 0x3000;
}

bool is_word_char(char32_t c) {
  if (c < 0x80) return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_';
  if (c == kInvalidCodePoint) return false;
  static const Regex word(R"(\A[\p{Alphabetic}\p{N}])");
  std::string s;
  append(s, c);
  return word.matches_at_start(s);
}

namespace {
struct ByteLevelTables {
  std::array<char32_t, 256> to_char{};
  std::array<std::string, 256> to_utf8;
  ByteLevelTables() {
    // Printable Latin-1 bytes map to themselves; the rest are numbered from U+0100 upward in byte order.
    char32_t next = 0x100;
    for (int b = 0; b < 256; ++b) {
      const bool printable = (b >= 0x21 && b <= 0x7E) || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
      to_char[b] = printable ? static_cast<char32_t>(b) : next++;
      append(to_utf8[b], to_char[b]);
    }
  }
};
const ByteLevelTables& tables() {
  static const ByteLevelTables t;
  return t;
}
}  // namespace

char32_t byte_to_char(uint8_t byte) { return tables().to_char[byte]; }
const std::string& byte_to_utf8(uint8_t byte) { return tables().to_utf8[byte]; }

int char_to_byte(char32_t c) {
  if ((c >= 0x21 && c <= 0x7E) || (c >= 0xA1 && c <= 0xAC) || (c >= 0xAE && c <= 0xFF)) return static_cast<int>(c);
  if (c < 0x100 || c >= 0x100 + 68) return -1;  // 68 = bytes outside the printable ranges
  static const auto reverse = [] {
    std::array<int, 68> r{};
    for (int b = 0; b < 256; ++b)
      if (tables().to_char[b] >= 0x100) r[tables().to_char[b] - 0x100] = b;
    return r;
  }();
  return reverse[c - 0x100];
}

}  // namespace moe::utf8
