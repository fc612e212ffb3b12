#pragma once
// UTF-8 helpers shared by the tokenizer stages. Invalid UTF-8 is never rejected: a byte that does not start a
// well-formed sequence is treated as a one-byte "character" (code point kInvalidCodePoint), so it flows through
// every stage untouched and byte-level encoding turns it into its byte token.
#include <cstdint>
#include <string>
#include <string_view>

namespace moe::utf8 {

inline constexpr char32_t kInvalidCodePoint = 0xFFFFFFFF;

struct Decoded {
  char32_t code_point;  // kInvalidCodePoint for an ill-formed byte
  int length;           // bytes consumed, 1..4
};

// Decodes the character starting at text[pos] (pos < text.size()).
Decoded decode_at(std::string_view text, size_t pos);

// Start of the character ending just before `pos` (pos > 0), consistent with decode_at's view of the text.
size_t previous_start(std::string_view text, size_t pos);

void append(std::string& out, char32_t code_point);

// Valid-UTF-8 copy: each maximal ill-formed subpart becomes U+FFFD (the same substitution Rust's
// String::from_utf8_lossy and Python's errors="replace" make).
std::string lossy(std::string_view bytes);

// Length of a trailing, well-formed but unfinished sequence (0..3): bytes that may still be completed by more input.
size_t incomplete_tail(std::string_view bytes);

bool is_whitespace(char32_t c);  // Unicode White_Space (Rust char::is_whitespace)
bool is_word_char(char32_t c);   // alphanumeric or '_' (what HF's single_word checks)

// GPT-2 byte-level alphabet: every byte maps to a printable code point.
char32_t byte_to_char(uint8_t byte);
int char_to_byte(char32_t c);  // -1 when c is not in the alphabet
const std::string& byte_to_utf8(uint8_t byte);  // byte_to_char, encoded

}  // namespace moe::utf8
