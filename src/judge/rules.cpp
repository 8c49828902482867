// rule_judge: deciding answers without a model where the reference makes that possible (docs/judging.md,
// "Rule judges"). Every rule returns nullopt rather than guess when it cannot tell.
#include <algorithm>
#include <cctype>
#include <cmath>
#include <cstdlib>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "judge/judge_text.hpp"
#include "slearn/error.hpp"
#include "slearn/judge.hpp"
#include "tokenizer/unicode.hpp"

namespace slearn {
namespace {

using judge_detail::Pattern;

RuleDecision decide(bool incorrect, std::string rule) { return RuleDecision{incorrect, std::move(rule)}; }

// --- normalized -----------------------------------------------------------------------------------------

// NFKC, case folding, punctuation to spaces (apostrophes dropped, so "don't" and "dont" agree), runs of
// white space to one space, trimmed.
std::string normalize_for_match(std::string_view text) {
  const std::string folded = judge_detail::fold(text);
  std::string out;
  bool pending_space = false;
  for (std::size_t i = 0; i < folded.size();) {
    const std::size_t start = i;
    const char32_t cp = tok::next_codepoint(folded, i);
    if (cp == U'\'' || cp == U'\u2019') continue;
    if (tok::is_unicode_whitespace(cp) || judge_detail::is_punctuation(cp)) {
      pending_space = true;
      continue;
    }
    if (pending_space && !out.empty()) out += ' ';
    pending_space = false;
    out.append(folded, start, i - start);
  }
  return out;
}

// Words of normalized text: a run of non-Han letters and digits counts one, a Han character half (Chinese
// has no spaces, and a Chinese word is one to three characters).
double word_count(std::string_view normalized) {
  double words = 0;
  bool in_word = false;
  for (std::size_t i = 0; i < normalized.size();) {
    const char32_t cp = tok::next_codepoint(normalized, i);
    if (cp == U' ') {
      in_word = false;
    } else if (judge_detail::is_han(cp)) {
      words += 0.5;
      in_word = false;
    } else if (!in_word) {
      words += 1;
      in_word = true;
    }
  }
  return words;
}

constexpr double kShortReferenceWords = 6;

bool starts_with_han(std::string_view s) {
  std::size_t i = 0;
  return !s.empty() && judge_detail::is_han(tok::next_codepoint(s, i));
}
bool ends_with_han(std::string_view s) { return !s.empty() && judge_detail::is_han(tok::last_codepoint(s)); }

// Whether the words just before `before`'s end negate what follows ("not Paris", "不是高血压").
bool negated(std::string_view before) {
  static constexpr std::string_view kChinese[] = {"不", "不是", "非", "并非", "没有", "无", "未", "排除"};
  for (std::string_view word : kChinese)
    if (before.ends_with(word)) return true;
  while (!before.empty() && before.back() == ' ') before.remove_suffix(1);
  const std::size_t space = before.rfind(' ');
  const std::string_view last = space == std::string_view::npos ? before : before.substr(space + 1);
  static constexpr std::string_view kEnglish[] = {"not", "no",    "never", "nor",  "neither", "without",
                                                  "isnt", "arent", "wasnt", "dont", "doesnt",  "cannot"};
  for (std::string_view word : kEnglish)
    if (last == word) return true;
  return false;
}

// The normalized reference as a whole-word span of the normalized answer, not directly negated. Next to a
// Han character every position is a word boundary (Chinese is written without spaces).
bool contains_as_words(std::string_view answer, std::string_view reference) {
  for (std::size_t pos = answer.find(reference); pos != std::string_view::npos;
       pos = answer.find(reference, pos + 1)) {
    const std::string_view before = answer.substr(0, pos);
    const std::string_view after = answer.substr(pos + reference.size());
    const bool left = before.empty() || before.back() == ' ' || ends_with_han(before) || starts_with_han(reference);
    const bool right = after.empty() || after.front() == ' ' || starts_with_han(after) || ends_with_han(reference);
    if (left && right && !negated(before)) return true;
  }
  return false;
}

// nullopt only when the reference normalizes to nothing (punctuation alone).
std::optional<RuleDecision> normalized_rule(std::string_view reference, std::string_view answer,
                                            bool allow_containment) {
  const std::string ref = normalize_for_match(reference);
  if (ref.empty()) return std::nullopt;
  const std::string ans = normalize_for_match(answer);
  if (ans == ref) return decide(false, "normalized");
  if (allow_containment && word_count(ref) <= kShortReferenceWords && contains_as_words(ans, ref))
    return decide(false, "normalized");
  return decide(true, "normalized");
}

// --- choice ---------------------------------------------------------------------------------------------

// A letter alone: "B", "(B)", "B.", "b)", "[C]".
const Pattern& lone_letter() {
  static const Pattern pattern(R"(^\s*[(\[]?\s*([A-Ea-e])\s*[)\]]?\s*[.:)、]?\s*$)", false);
  return pattern;
}

char upper(char letter) { return static_cast<char>(std::toupper(static_cast<unsigned char>(letter))); }

std::optional<char> reference_letter(std::string_view reference) {
  const std::string text = judge_detail::nfkc(reference);
  const auto m = lone_letter().find(text);
  if (!m) return std::nullopt;
  return upper(m->group(text, 1)[0]);
}

// Not the first of a list: "A and C", "A, B" or "A/B" names several letters, and none of them counts.
#define SLEARN_CHOICE_NOT_LIST R"((?!\s*(?:(?i:and|or)\b|[,/&]|和|或|及)\s*[(\[]?[A-Ea-e](?![\p{L}\p{N}])))"
// What may follow a bare capital letter for it to be a choice rather than a word ("A bacterial ..."): the
// end, punctuation, a Chinese character or a connecting word.
#define SLEARN_CHOICE_FOLLOW \
  R"((?=\s*$|\s*[^\p{L}\p{N}\s\-]|\s*\p{Han}|\s+(?i:is|was|because|since|as|which|and|but|not|for|here)\b))"
// A letter as an answer: bracketed (any case), or a bare capital followed as above.
#define SLEARN_CHOICE_LETTER R"((?:[(\[]([A-Ea-e])[)\]]|([A-E]))" SLEARN_CHOICE_FOLLOW ")" SLEARN_CHOICE_NOT_LIST

std::optional<char> answer_letter(std::string_view answer) {
  // Tier 1: the answer is a letter, starts with one, or names one as the answer.
  static const Pattern leading(
      R"(^\s*(?:[(\[]([A-Ea-e])[)\]]|([A-E])(?:[.)](?=\s|$)|[:、])))" SLEARN_CHOICE_NOT_LIST, false);
  static const Pattern answer_cue(
      R"((?i:\b(?:correct\s+|right\s+|best\s+|final\s+)?answer\b(?:\s+(?:is|would\s+be|should\s+be|must\s+be))?)"
      R"(\s*[:=]?\s*(?:option\s+|choice\s+)?))" SLEARN_CHOICE_LETTER,
      false);
  static const Pattern chinese_cue(
      R"((?:选择?(?!项)|答案(?:应该|应当|应)?(?:是|为|选)?)\s*:?\s*[(\[]?([A-Ea-e])(?![A-Za-z]))" SLEARN_CHOICE_NOT_LIST,
      false);
  // Tier 2: a letter mentioned as an option that is right.
  static const Pattern option_cue(R"((?i:\b(?:option|choice)\s+))" SLEARN_CHOICE_LETTER, false);
  static const Pattern is_correct(
      R"((?<![\p{L}\p{N}])(?:[(\[]([A-Ea-e])[)\]]|([A-E]))\s+(?i:is\s+(?:the\s+)?(?:correct|right|best|answer)\b))",
      false);
  static const Pattern chinese_option(R"(选项\s*[(\[]?([A-Ea-e])(?![A-Za-z]))" SLEARN_CHOICE_NOT_LIST, false);
  // Tier 3: any bracketed capital letter, "(B)" or "B)".
  static const Pattern bracketed(R"([(\[]([A-E])[)\]]|(?<![\p{L}\p{N}(\[])([A-E])\))", false);

  const std::string text = judge_detail::nfkc(answer);
  const std::vector<std::vector<const Pattern*>> tiers = {
      {&lone_letter(), &leading, &answer_cue, &chinese_cue}, {&option_cue, &is_correct, &chinese_option}, {&bracketed}};
  for (const auto& tier : tiers) {
    std::set<char> letters;
    for (const Pattern* pattern : tier) {
      for (const auto& m : pattern->find_all(text)) {
        for (std::size_t g = 1; g <= m.groups.size(); ++g)
          if (m.has(g)) letters.insert(upper(m.group(text, g)[0]));
      }
    }
    if (letters.size() == 1) return *letters.begin();
    if (letters.size() > 1) return std::nullopt;  // several different letters: undecidable
  }
  return std::nullopt;
}

#undef SLEARN_CHOICE_LETTER
#undef SLEARN_CHOICE_FOLLOW
#undef SLEARN_CHOICE_NOT_LIST

// --- yes / no / maybe -----------------------------------------------------------------------------------

enum class YesNo { Yes, No, Maybe };

std::optional<YesNo> yesno_word(std::string_view word) {
  if (word == "yes" || word == "是" || word == "是的" || word == "对") return YesNo::Yes;
  if (word == "no" || word == "否" || word == "不是" || word == "不对") return YesNo::No;
  if (word == "maybe" || word == "可能") return YesNo::Maybe;
  return std::nullopt;
}

std::optional<YesNo> reference_yesno(std::string_view reference) {
  return yesno_word(normalize_for_match(reference));
}

std::optional<YesNo> answer_yesno(std::string_view answer) {
  // A word followed by punctuation or the end ("Yes, ...", "No.", "是的，...").
#define SLEARN_YESNO_END R"((?=\s*(?:[^\p{L}\p{N}\s]|$)))"
  static const Pattern leading(R"(^[\s"'“‘(\[*]*(yes|no|maybe|是的|不是|不对|是|否|可能|对))" SLEARN_YESNO_END);
  static const Pattern cue(R"(\b(?:answer|conclusion|verdict)\s*(?:is|:)\s*["'“‘]?(yes|no|maybe)\b|)"
                           R"(答案(?:是|为|:)\s*["'“‘]?(是|否|可能))" SLEARN_YESNO_END);
#undef SLEARN_YESNO_END
  static const Pattern any_word(R"(\b(yes|no|maybe)\b)");
  const std::string text = judge_detail::fold(answer);
  for (const Pattern* pattern : {&leading, &cue}) {
    if (const auto m = pattern->find(text)) {
      for (std::size_t g = 1; g <= m->groups.size(); ++g)
        if (m->has(g)) return yesno_word(m->group(text, g));
    }
  }
  std::set<std::string> words;
  for (const auto& m : any_word.find_all(text)) words.emplace(m.group(text, 1));
  if (words.size() == 1) return yesno_word(*words.begin());
  return std::nullopt;  // none, or "yes" and "no" both: ambiguous
}

// --- numeric --------------------------------------------------------------------------------------------

struct Number {
  double value = 0;
  bool percent = false;
};

std::optional<Number> first_number(std::string_view text_in) {
  static const Pattern pattern(
      R"((?<![\p{Latin}\p{Greek}\p{Cyrillic}\p{N}.])(?:([-−])(?=\d))?(\d{1,3}(?:,\d{3})+(?!\d)|\d+)(\.\d+)?(\s*%)?)", false);
  const std::string text = judge_detail::nfkc(text_in);
  const auto m = pattern.find(text);
  if (!m) return std::nullopt;
  std::string digits;
  for (char c : m->group(text, 2))
    if (c != ',') digits += c;
  digits += m->group(text, 3);
  Number number;
  number.value = std::strtod(digits.c_str(), nullptr);
  if (m->has(1)) number.value = -number.value;
  number.percent = m->has(4);
  return number;
}

// The reference is a number, optionally with a percent sign or one short unit ("3.5%", "120 mg", "3天").
bool is_numeric_reference(std::string_view reference) {
  static const Pattern pattern(
      R"(^\s*[-−+]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?\s*(?:%|[\p{L}°][\p{L}\p{N}°/]{0,9})?\s*[.。]?\s*$)", false);
  return pattern.find(judge_detail::nfkc(reference)).has_value();
}

bool close(double a, double b, double tolerance) {
  return a == b || std::fabs(a - b) <= tolerance * std::max(std::fabs(a), std::fabs(b));
}

std::optional<RuleDecision> numeric_rule(std::string_view reference, std::string_view answer, double tolerance) {
  const auto ref = first_number(reference);
  if (!ref) return std::nullopt;
  const auto ans = first_number(answer);
  if (!ans) return std::nullopt;
  bool equal = close(ref->value, ans->value, tolerance);
  // "35%" and "0.35" say the same thing.
  if (!equal && ref->percent != ans->percent)
    equal = ref->percent ? close(ref->value / 100, ans->value, tolerance)
                         : close(ref->value, ans->value / 100, tolerance);
  return decide(!equal, "numeric");
}

// --- the rules ------------------------------------------------------------------------------------------

std::optional<RuleDecision> choice_rule(std::string_view reference, std::string_view answer) {
  const auto ref = reference_letter(reference);
  if (!ref) return std::nullopt;
  const auto ans = answer_letter(answer);
  if (!ans) return std::nullopt;
  return decide(*ans != *ref, "choice");
}

std::optional<RuleDecision> yesno_rule(std::string_view reference, std::string_view answer) {
  const auto ref = reference_yesno(reference);
  if (!ref) return std::nullopt;
  const auto ans = answer_yesno(answer);
  if (!ans) return std::nullopt;
  return decide(*ans != *ref, "yesno");
}

}  // namespace

std::optional<RuleDecision> rule_judge(const JudgeSettings& settings, std::string_view reference_in,
                                       std::string_view answer_in) {
  const std::string& rule = settings.rule;
  if (rule != "auto" && rule != "exact" && rule != "normalized" && rule != "choice" && rule != "yesno" &&
      rule != "numeric")
    throw InputError("judge.rule: unknown rule '" + rule +
                     "' (expected auto, exact, normalized, choice, yesno or numeric)");
  if (!(settings.numeric_tolerance >= 0) || !std::isfinite(settings.numeric_tolerance))
    throw InputError("judge.numeric_tolerance must be a finite number >= 0, got " +
                     std::to_string(settings.numeric_tolerance));

  const std::string reference_text = judge_detail::valid_utf8(reference_in);
  const std::string answer_text = judge_detail::valid_utf8(answer_in);
  const std::string_view reference = judge_detail::trim(reference_text);
  const std::string_view answer = judge_detail::trim(answer_text);

  if (rule == "exact") return decide(answer != reference, "exact");
  if (reference.empty()) return std::nullopt;  // nothing to compare with
  // An empty answer (the model said nothing) is wrong under every rule.
  if (answer.empty()) return decide(true, rule == "auto" ? "normalized" : rule);

  if (rule == "normalized") return normalized_rule(reference, answer, true);
  if (rule == "choice") return choice_rule(reference, answer);
  if (rule == "yesno") return yesno_rule(reference, answer);
  if (rule == "numeric") return numeric_rule(reference, answer, settings.numeric_tolerance);

  // auto
  if (answer == reference) return decide(false, "exact");
  if (reference_letter(reference)) return choice_rule(reference, answer);
  if (reference_yesno(reference)) return yesno_rule(reference, answer);
  if (is_numeric_reference(reference)) return numeric_rule(reference, answer, settings.numeric_tolerance);
  const std::string normalized = normalize_for_match(reference);
  if (normalized.empty()) return std::nullopt;
  if (word_count(normalized) <= kShortReferenceWords) return normalized_rule(reference, answer, true);
  // A free-text paragraph: only a match after normalization decides; anything else needs a model.
  if (normalize_for_match(answer) == normalized) return decide(false, "normalized");
  return std::nullopt;
}

}  // namespace slearn
