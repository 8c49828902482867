// Matching added tokens in text: leftmost-longest, then the single_word / lstrip / rstrip rules.
#include <algorithm>
#include <cstring>

#include "tokenizer/components.hpp"
#include "tokenizer/unicode.hpp"

namespace slearn::tok {

void AddedMatcher::build(const std::vector<AddedToken>* tokens, std::vector<std::string> patterns,
                         std::vector<int> which) {
  tokens_ = tokens;
  patterns_ = std::move(patterns);
  which_ = std::move(which);
  for (auto& list : by_first_) list.clear();
  single_first_ = -1;
  int distinct = 0;
  for (std::size_t i = 0; i < patterns_.size(); ++i) {
    if (patterns_[i].empty()) continue;
    auto& list = by_first_[static_cast<unsigned char>(patterns_[i][0])];
    if (list.empty()) {
      ++distinct;
      single_first_ = static_cast<unsigned char>(patterns_[i][0]);
    }
    list.push_back(static_cast<int>(i));
  }
  if (distinct != 1) single_first_ = -1;
  for (auto& list : by_first_) {
    std::stable_sort(list.begin(), list.end(), [&](int a, int b) {
      return patterns_[static_cast<std::size_t>(a)].size() > patterns_[static_cast<std::size_t>(b)].size();
    });
  }
}

bool AddedMatcher::find(std::string_view text, std::size_t from, std::size_t& begin, std::size_t& end,
                        int& token) const {
  const char* data = text.data();
  std::size_t i = from;
  while (i < text.size()) {
    if (single_first_ >= 0) {
      const void* hit = std::memchr(data + i, single_first_, text.size() - i);
      if (!hit) return false;
      i = static_cast<std::size_t>(static_cast<const char*>(hit) - data);
    }
    // Candidates at i are sorted longest first, so the first that fits is the longest match.
    for (const int p : by_first_[static_cast<unsigned char>(data[i])]) {
      const std::string& pattern = patterns_[static_cast<std::size_t>(p)];
      if (pattern.size() <= text.size() - i && std::memcmp(data + i, pattern.data(), pattern.size()) == 0) {
        begin = i;
        end = i + pattern.size();
        token = which_[static_cast<std::size_t>(p)];
        return true;
      }
    }
    ++i;
  }
  return false;
}

void AddedMatcher::split(std::string_view text, std::vector<Segment>& out) const {
  out.clear();
  std::size_t done = 0;  // text before this is already in `out`
  std::size_t pos = 0;   // where the search continues
  std::size_t begin = 0, end = 0;
  int token = -1;
  while (!empty() && find(text, pos, begin, end, token)) {
    pos = end;  // a rejected match is not searched again, as with the reference's automaton
    const AddedToken& added = (*tokens_)[static_cast<std::size_t>(token)];
    if (added.single_word) {
      const bool word_before = begin > 0 && is_word_char(last_codepoint(text.substr(0, begin)));
      std::size_t after = end;
      const bool word_after = end < text.size() && is_word_char(next_codepoint(text, after));
      if (word_before || word_after) continue;
    }
    if (begin < done) continue;  // inside whitespace an rstrip already took
    if (added.lstrip) {
      std::size_t start = begin;
      while (start > done) {
        std::size_t prev = 0;
        if (!is_unicode_whitespace(last_codepoint(text.substr(0, start), &prev))) break;
        start = prev;
      }
      begin = start;
    }
    if (added.rstrip) {
      while (end < text.size()) {
        std::size_t next = end;
        if (!is_unicode_whitespace(next_codepoint(text, next))) break;
        end = next;
      }
      pos = end;
    }
    if (done < begin) out.push_back({done, begin, -1});
    out.push_back({begin, end, token});
    done = end;
  }
  if (done < text.size()) out.push_back({done, text.size(), -1});
}

}  // namespace slearn::tok
