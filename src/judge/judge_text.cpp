#include "judge/judge_text.hpp"

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>
#include <utf8proc.h>

#include <cstdlib>
#include <memory>

#include "slearn/error.hpp"
#include "tokenizer/unicode.hpp"

namespace slearn::judge_detail {
namespace {

std::string pcre2_message(int code) {
  PCRE2_UCHAR buffer[256];
  const int n = pcre2_get_error_message(code, buffer, sizeof buffer);
  return n < 0 ? "error " + std::to_string(code) : std::string(reinterpret_cast<const char*>(buffer));
}

struct MatchDataDeleter {
  void operator()(pcre2_match_data* data) const { pcre2_match_data_free(data); }
};

std::string utf8proc_transform(std::string_view text, int options) {
  utf8proc_uint8_t* out = nullptr;
  const utf8proc_ssize_t n = utf8proc_map(reinterpret_cast<const utf8proc_uint8_t*>(text.data()),
                                          static_cast<utf8proc_ssize_t>(text.size()), &out,
                                          static_cast<utf8proc_option_t>(options));
  if (n < 0) {
    std::free(out);
    throw Error(std::string("judge: unicode normalization failed: ") + utf8proc_errmsg(n));
  }
  std::string result(reinterpret_cast<const char*>(out), static_cast<std::size_t>(n));
  std::free(out);
  return result;
}

}  // namespace

Pattern::Pattern(std::string_view pattern, bool caseless) {
  int error = 0;
  PCRE2_SIZE offset = 0;
  const std::uint32_t options = PCRE2_UTF | PCRE2_UCP | (caseless ? PCRE2_CASELESS : 0u);
  pcre2_code* code = pcre2_compile(reinterpret_cast<PCRE2_SPTR>(pattern.data()), pattern.size(), options,
                                   &error, &offset, nullptr);
  if (!code)
    throw Error("judge: internal pattern does not compile at offset " + std::to_string(offset) + ": " +
                pcre2_message(error) + " in " + std::string(pattern));
  code_ = code;
}

Pattern::~Pattern() { pcre2_code_free(static_cast<pcre2_code*>(code_)); }

std::optional<Pattern::Match> Pattern::find(std::string_view subject, std::size_t from) const {
  const auto* code = static_cast<const pcre2_code*>(code_);
  std::unique_ptr<pcre2_match_data, MatchDataDeleter> data(pcre2_match_data_create_from_pattern(code, nullptr));
  if (!data) throw Error("judge: out of memory creating PCRE2 match data");
  const int rc = pcre2_match(code, reinterpret_cast<PCRE2_SPTR>(subject.data()), subject.size(), from, 0,
                             data.get(), nullptr);
  if (rc == PCRE2_ERROR_NOMATCH) return std::nullopt;
  if (rc < 0) throw Error("judge: PCRE2 match failed: " + pcre2_message(rc));
  const PCRE2_SIZE* ovector = pcre2_get_ovector_pointer(data.get());
  const std::uint32_t pairs = pcre2_get_ovector_count(data.get());
  Match match;
  match.begin = ovector[0];
  match.end = ovector[1];
  for (std::uint32_t i = 1; i < pairs; ++i) {
    if (ovector[2 * i] == PCRE2_UNSET)
      match.groups.emplace_back(Match::npos, Match::npos);
    else
      match.groups.emplace_back(ovector[2 * i], ovector[2 * i + 1]);
  }
  return match;
}

std::vector<Pattern::Match> Pattern::find_all(std::string_view subject) const {
  std::vector<Match> matches;
  std::size_t from = 0;
  while (from <= subject.size()) {
    std::optional<Match> match = find(subject, from);
    if (!match) break;
    from = match->end;
    if (match->end == match->begin) {
      // An empty match: step over one whole character.
      if (from >= subject.size()) {
        matches.push_back(std::move(*match));
        break;
      }
      from += tok::utf8_len(static_cast<unsigned char>(subject[from]));
    }
    matches.push_back(std::move(*match));
  }
  return matches;
}

std::string valid_utf8(std::string_view bytes) {
  return tok::is_valid_utf8(bytes) ? std::string(bytes) : tok::lossy_utf8(bytes);
}

std::string nfkc(std::string_view text) { return tok::normalize_unicode(text, tok::NormalForm::NFKC); }

std::string fold(std::string_view text) {
  return utf8proc_transform(text, UTF8PROC_STABLE | UTF8PROC_COMPOSE | UTF8PROC_COMPAT | UTF8PROC_CASEFOLD |
                                      UTF8PROC_IGNORE);
}

std::string_view trim(std::string_view text) {
  std::size_t begin = 0;
  while (begin < text.size()) {
    std::size_t next = begin;
    if (!tok::is_unicode_whitespace(tok::next_codepoint(text, next))) break;
    begin = next;
  }
  std::size_t end = text.size();
  while (end > begin) {
    std::size_t start = 0;
    if (!tok::is_unicode_whitespace(tok::last_codepoint(text.substr(0, end), &start))) break;
    end = start;
  }
  return text.substr(begin, end - begin);
}

bool is_letter(char32_t cp) {
  if (cp < 0x80) return (cp >= 'a' && cp <= 'z') || (cp >= 'A' && cp <= 'Z');
  const auto category = utf8proc_category(static_cast<utf8proc_int32_t>(cp));
  return category >= UTF8PROC_CATEGORY_LU && category <= UTF8PROC_CATEGORY_LO;
}

bool is_punctuation(char32_t cp) {
  const auto category = utf8proc_category(static_cast<utf8proc_int32_t>(cp));
  return category >= UTF8PROC_CATEGORY_PC && category <= UTF8PROC_CATEGORY_PO;
}

bool is_han(char32_t cp) {
  if (cp < 0x2E80) return false;  // no Han character lies below the CJK radicals block
  // Fast paths: CJK Unified Ideographs, Extension A and Extension B are Han throughout.
  if ((cp >= 0x4E00 && cp <= 0x9FFF) || (cp >= 0x3400 && cp <= 0x4DBF) || (cp >= 0x20000 && cp <= 0x2A6DF))
    return true;
  static const Pattern han("^\\p{Han}$", false);
  std::string encoded;
  tok::append_utf8(encoded, cp);
  return han.find(encoded).has_value();
}

}  // namespace slearn::judge_detail
