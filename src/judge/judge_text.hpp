// Private helpers of the judging module: a PCRE2 pattern with capture groups, and the UTF-8 text
// operations the reply parser and the rule judges share (repair, NFKC, case folding, trimming, scripts).
#pragma once

#include <cstddef>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace slearn::judge_detail {

// A compiled PCRE2 pattern (UTF + UCP), optionally caseless, that reports capture groups. Immutable after
// construction, so one instance may be shared between threads (each match uses its own match data).
class Pattern {
 public:
  // Throws slearn::Error when the pattern does not compile (the patterns are ours, not the user's).
  explicit Pattern(std::string_view pattern, bool caseless = true);
  ~Pattern();
  Pattern(const Pattern&) = delete;
  Pattern& operator=(const Pattern&) = delete;

  struct Match {
    std::size_t begin = 0;
    std::size_t end = 0;
    // Group i (1-based) as [begin, end); npos/npos when the group did not take part.
    std::vector<std::pair<std::size_t, std::size_t>> groups;

    bool has(std::size_t i) const { return i >= 1 && i <= groups.size() && groups[i - 1].first != npos; }
    std::string_view group(std::string_view subject, std::size_t i) const {
      if (!has(i)) return {};
      return subject.substr(groups[i - 1].first, groups[i - 1].second - groups[i - 1].first);
    }
    static constexpr std::size_t npos = static_cast<std::size_t>(-1);
  };

  // The first match in subject[from..]; subject must be valid UTF-8.
  std::optional<Match> find(std::string_view subject, std::size_t from = 0) const;
  // Every non-overlapping match, left to right.
  std::vector<Match> find_all(std::string_view subject) const;

 private:
  void* code_ = nullptr;  // pcre2_code_8*
};

// `bytes` with every invalid UTF-8 sequence replaced by U+FFFD.
std::string valid_utf8(std::string_view bytes);
// NFKC (full-width letters, digits and punctuation become their ASCII forms). Input must be valid UTF-8.
std::string nfkc(std::string_view text);
// NFKC plus Unicode case folding, default-ignorable characters removed. Input must be valid UTF-8.
std::string fold(std::string_view text);
// `text` without leading and trailing Unicode white space.
std::string_view trim(std::string_view text);

bool is_letter(char32_t cp);       // \p{L}
bool is_punctuation(char32_t cp);  // \p{P}
bool is_han(char32_t cp);          // \p{Han}, as PCRE2 defines it

}  // namespace slearn::judge_detail
