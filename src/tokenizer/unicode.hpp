// UTF-8 helpers for the tokenizer: decoding, lossy repair, incomplete tails, character classes and
// Unicode normalization (all character data comes from utf8proc).
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

namespace slearn::tok {

// Length of the UTF-8 sequence a lead byte announces (1 for ASCII and for invalid lead bytes).
inline std::size_t utf8_len(unsigned char lead) {
  if (lead < 0xC0) return 1;
  if (lead < 0xE0) return 2;
  if (lead < 0xF0) return 3;
  return 4;
}

// Decodes the character at s[i] (s must be valid UTF-8) and advances i past it.
inline char32_t next_codepoint(std::string_view s, std::size_t& i) {
  const auto b0 = static_cast<unsigned char>(s[i]);
  if (b0 < 0x80) {
    ++i;
    return b0;
  }
  const std::size_t n = utf8_len(b0);
  char32_t cp = n == 2 ? (b0 & 0x1Fu) : n == 3 ? (b0 & 0x0Fu) : (b0 & 0x07u);
  for (std::size_t k = 1; k < n && i + k < s.size(); ++k) cp = (cp << 6) | (static_cast<unsigned char>(s[i + k]) & 0x3Fu);
  i += n;
  return cp;
}

// The last character of s (valid UTF-8, non-empty) and where it starts.
char32_t last_codepoint(std::string_view s, std::size_t* start = nullptr);

void append_utf8(std::string& out, char32_t cp);

bool is_valid_utf8(std::string_view s);
// Appends `bytes`, replacing each maximal invalid subsequence by U+FFFD (like Rust's from_utf8_lossy).
void append_lossy_utf8(std::string& out, std::string_view bytes);
std::string lossy_utf8(std::string_view bytes);
// Number of bytes at the end of `s` that start a valid UTF-8 sequence which is not complete yet (0 to 3).
std::size_t incomplete_utf8_tail(std::string_view s);

// Unicode White_Space (what Rust's char::is_whitespace tests).
bool is_unicode_whitespace(char32_t cp);
// Letters, numbers and '_' (the word characters of added tokens' single_word rule).
bool is_word_char(char32_t cp);

// GPT-2's reversible byte <-> character mapping used by byte-level BPE: printable Latin-1 bytes stand
// for themselves, the others are shifted to U+0100 and up.
char32_t byte_to_char(unsigned char b);
// The byte a mapped character stands for, or -1.
int char_to_byte(char32_t cp);

enum class NormalForm { NFC, NFD, NFKC, NFKD };
// True when `s` is certainly already in NFC (so normalizing can be skipped).
bool nfc_quick_check(std::string_view s);
// Normalizes valid UTF-8 text.
std::string normalize_unicode(std::string_view s, NormalForm form);

}  // namespace slearn::tok
