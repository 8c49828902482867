#include "tokenizer/unicode.hpp"

#include <utf8proc.h>

#include <cstdlib>
#include <cstring>
#include <memory>
#include <mutex>
#include <vector>

#include "slearn/error.hpp"

namespace slearn::tok {
namespace {

// For the lead byte b, the number of continuation bytes and the allowed range of the first one
// (the narrower ranges exclude overlong forms, surrogates and code points above U+10FFFF).
struct LeadInfo {
  int need;
  unsigned char lo;
  unsigned char hi;
};

LeadInfo lead_info(unsigned char b) {
  if (b >= 0xC2 && b <= 0xDF) return {1, 0x80, 0xBF};
  if (b == 0xE0) return {2, 0xA0, 0xBF};
  if ((b >= 0xE1 && b <= 0xEC) || b == 0xEE || b == 0xEF) return {2, 0x80, 0xBF};
  if (b == 0xED) return {2, 0x80, 0x9F};
  if (b == 0xF0) return {3, 0x90, 0xBF};
  if (b >= 0xF1 && b <= 0xF3) return {3, 0x80, 0xBF};
  if (b == 0xF4) return {3, 0x80, 0x8F};
  return {-1, 0, 0};
}

// Length of the longest valid prefix of a sequence starting at s[i] (which is a non-ASCII byte), and
// whether it is a complete character.
std::size_t scan_sequence(std::string_view s, std::size_t i, bool& complete) {
  const LeadInfo info = lead_info(static_cast<unsigned char>(s[i]));
  complete = false;
  if (info.need < 0) return 1;
  std::size_t j = i + 1;
  if (j >= s.size()) return 1;
  const auto b1 = static_cast<unsigned char>(s[j]);
  if (b1 < info.lo || b1 > info.hi) return 1;
  ++j;
  for (int k = 1; k < info.need; ++k) {
    if (j >= s.size()) return j - i;
    const auto b = static_cast<unsigned char>(s[j]);
    if (b < 0x80 || b > 0xBF) return j - i;
    ++j;
  }
  complete = true;
  return j - i;
}

constexpr char kReplacement[] = "\xEF\xBF\xBD";

bool all_ascii(std::string_view s) {
  std::size_t i = 0;
  for (; i + 8 <= s.size(); i += 8) {
    std::uint64_t w;
    std::memcpy(&w, s.data() + i, 8);
    if (w & 0x8080808080808080ull) return false;
  }
  for (; i < s.size(); ++i)
    if (static_cast<unsigned char>(s[i]) >= 0x80) return false;
  return true;
}

// One bit per code point: set when the character may change under NFC or make its neighbours change
// (non-zero combining class, second element of a composition, not NFC-stable on its own, Hangul
// vowel/trailing jamo which compose algorithmically). Built once from utf8proc's data.
class NfcUnsafeSet {
 public:
  NfcUnsafeSet() : bits_(0x110000 / 64, 0) {
    for (utf8proc_int32_t cp = 0x300; cp < 0x110000; ++cp) {
      if (!utf8proc_codepoint_valid(cp)) continue;
      const utf8proc_property_t* p = utf8proc_get_property(cp);
      bool unsafe = p->combining_class != 0;
      if (p->comb_index != 0xFFFF && (p->comb_index & 0x8000)) unsafe = true;
      if ((cp >= 0x1161 && cp <= 0x1175) || (cp >= 0x11A8 && cp <= 0x11C2)) unsafe = true;
      if (!unsafe && p->decomp_type == 0 && p->decomp_seqindex != 0xFFFF) unsafe = !stable_alone(cp);
      if (unsafe) bits_[static_cast<std::size_t>(cp) >> 6] |= 1ull << (cp & 63);
    }
  }
  bool contains(char32_t cp) const { return (bits_[cp >> 6] >> (cp & 63)) & 1u; }

 private:
  static bool stable_alone(utf8proc_int32_t cp) {
    utf8proc_uint8_t buf[8];
    const utf8proc_ssize_t n = utf8proc_encode_char(cp, buf);
    utf8proc_uint8_t* out = nullptr;
    const utf8proc_ssize_t m = utf8proc_map(buf, n, &out, static_cast<utf8proc_option_t>(UTF8PROC_STABLE | UTF8PROC_COMPOSE));
    const bool same = m == n && out != nullptr && std::memcmp(out, buf, static_cast<std::size_t>(n)) == 0;
    std::free(out);
    return same;
  }
  std::vector<std::uint64_t> bits_;
};

const NfcUnsafeSet& nfc_unsafe_set() {
  static const NfcUnsafeSet set;
  return set;
}

}  // namespace

char32_t last_codepoint(std::string_view s, std::size_t* start) {
  std::size_t i = s.size() - 1;
  while (i > 0 && (static_cast<unsigned char>(s[i]) & 0xC0) == 0x80 && s.size() - i < 4) --i;
  if (start) *start = i;
  std::size_t j = i;
  return next_codepoint(s, j);
}

void append_utf8(std::string& out, char32_t cp) {
  if (cp < 0x80) {
    out.push_back(static_cast<char>(cp));
  } else if (cp < 0x800) {
    out.push_back(static_cast<char>(0xC0 | (cp >> 6)));
    out.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  } else if (cp < 0x10000) {
    out.push_back(static_cast<char>(0xE0 | (cp >> 12)));
    out.push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
    out.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  } else {
    out.push_back(static_cast<char>(0xF0 | (cp >> 18)));
    out.push_back(static_cast<char>(0x80 | ((cp >> 12) & 0x3F)));
    out.push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
    out.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  }
}

bool is_valid_utf8(std::string_view s) {
  std::size_t i = 0;
  while (i < s.size()) {
    if (i + 8 <= s.size()) {
      std::uint64_t w;
      std::memcpy(&w, s.data() + i, 8);
      if (!(w & 0x8080808080808080ull)) {
        i += 8;
        continue;
      }
    }
    if (static_cast<unsigned char>(s[i]) < 0x80) {
      ++i;
      continue;
    }
    bool complete = false;
    const std::size_t n = scan_sequence(s, i, complete);
    if (!complete) return false;
    i += n;
  }
  return true;
}

void append_lossy_utf8(std::string& out, std::string_view bytes) {
  std::size_t i = 0;
  std::size_t run = 0;  // start of the pending valid run
  while (i < bytes.size()) {
    if (static_cast<unsigned char>(bytes[i]) < 0x80) {
      ++i;
      continue;
    }
    bool complete = false;
    const std::size_t n = scan_sequence(bytes, i, complete);
    if (!complete) {
      out.append(bytes.substr(run, i - run));
      out.append(kReplacement);
      run = i + n;
    }
    i += n;
  }
  out.append(bytes.substr(run));
}

std::string lossy_utf8(std::string_view bytes) {
  std::string out;
  out.reserve(bytes.size());
  append_lossy_utf8(out, bytes);
  return out;
}

std::size_t incomplete_utf8_tail(std::string_view s) {
  const std::size_t n = s.size();
  for (std::size_t back = 1; back <= 3 && back <= n; ++back) {
    const auto b = static_cast<unsigned char>(s[n - back]);
    if ((b & 0xC0) == 0x80) continue;  // continuation byte: look further back
    if (b < 0x80) return 0;
    bool complete = false;
    const std::size_t len = scan_sequence(s, n - back, complete);
    // The sequence reaches the end without error but is cut short.
    return (!complete && len == back && lead_info(b).need >= static_cast<int>(back)) ? back : 0;
  }
  return 0;
}

bool is_unicode_whitespace(char32_t cp) {
  if (cp < 0x80) return cp == ' ' || (cp >= 0x09 && cp <= 0x0D);
  if (cp == 0x85) return true;
  const auto cat = utf8proc_category(static_cast<utf8proc_int32_t>(cp));
  return cat == UTF8PROC_CATEGORY_ZS || cat == UTF8PROC_CATEGORY_ZL || cat == UTF8PROC_CATEGORY_ZP;
}

bool is_word_char(char32_t cp) {
  if (cp < 0x80) return (cp >= '0' && cp <= '9') || (cp >= 'a' && cp <= 'z') || (cp >= 'A' && cp <= 'Z') || cp == '_';
  const auto cat = utf8proc_category(static_cast<utf8proc_int32_t>(cp));
  return (cat >= UTF8PROC_CATEGORY_LU && cat <= UTF8PROC_CATEGORY_LO) ||
         (cat >= UTF8PROC_CATEGORY_ND && cat <= UTF8PROC_CATEGORY_NO);
}

namespace {
struct ByteMap {
  char32_t to_char[256];
  int to_byte[324];
  ByteMap() {
    for (int& b : to_byte) b = -1;
    char32_t next = 256;
    for (int b = 0; b < 256; ++b) {
      const bool printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
      to_char[b] = printable ? static_cast<char32_t>(b) : next++;
      to_byte[to_char[b]] = b;
    }
  }
};
const ByteMap& byte_map() {
  static const ByteMap map;
  return map;
}
}  // namespace

char32_t byte_to_char(unsigned char b) { return byte_map().to_char[b]; }

int char_to_byte(char32_t cp) { return cp < 324 ? byte_map().to_byte[cp] : -1; }

bool nfc_quick_check(std::string_view s) {
  if (all_ascii(s)) return true;
  const NfcUnsafeSet& unsafe = nfc_unsafe_set();
  std::size_t i = 0;
  while (i < s.size()) {
    const auto b = static_cast<unsigned char>(s[i]);
    // Everything below U+0300 is NFC-stable and never composes with what precedes it.
    if (b < 0xCC) {
      i += utf8_len(b);
      continue;
    }
    if (unsafe.contains(next_codepoint(s, i))) return false;
  }
  return true;
}

std::string normalize_unicode(std::string_view s, NormalForm form) {
  int options = UTF8PROC_STABLE;
  switch (form) {
    case NormalForm::NFC: options |= UTF8PROC_COMPOSE; break;
    case NormalForm::NFD: options |= UTF8PROC_DECOMPOSE; break;
    case NormalForm::NFKC: options |= UTF8PROC_COMPOSE | UTF8PROC_COMPAT; break;
    case NormalForm::NFKD: options |= UTF8PROC_DECOMPOSE | UTF8PROC_COMPAT; break;
  }
  utf8proc_uint8_t* out = nullptr;
  const utf8proc_ssize_t n = utf8proc_map(reinterpret_cast<const utf8proc_uint8_t*>(s.data()),
                                          static_cast<utf8proc_ssize_t>(s.size()), &out,
                                          static_cast<utf8proc_option_t>(options));
  if (n < 0) {
    std::free(out);
    throw Error(std::string("unicode normalization failed: ") + utf8proc_errmsg(n));
  }
  std::string result(reinterpret_cast<const char*>(out), static_cast<std::size_t>(n));
  std::free(out);
  return result;
}

}  // namespace slearn::tok
