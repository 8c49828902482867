// parse_judge_reply: finds the score and the verdict in a judge model's free-form reply.
//
// The reply is cut into segments (lines, and within a line the pieces between ',', ';', '|', '. ' and their
// full-width forms) so that "Score: 8, Incorrect: No" is two segments. Each segment is NFKC-normalized
// (full-width colons and digits become ASCII) and stripped of markdown before its start is matched against
// the score and verdict labels. The last verdict wins; its score is the nearest score segment before it (or,
// failing that, the first one after it). docs/judging.md lists every form.
#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <optional>
#include <string>
#include <vector>

#include "judge/judge_text.hpp"
#include "slearn/judge.hpp"

namespace slearn {
namespace {

using judge_detail::Pattern;

struct Segment {
  std::size_t offset = 0;     // where the segment starts in the reply
  bool ends_line = false;     // nothing but white space follows it on its line
  bool before_cell = false;   // a '|' ends it (the next segment is the neighbouring table cell)
  std::string text;           // NFKC, markdown removed, trimmed
  std::string_view tail;      // the rest of its line from the separator on, for "Yes | No"
};

// The byte length of a segment separator starting at line[i], or 0.
std::size_t separator_at(std::string_view line, std::size_t i) {
  const char c = line[i];
  if (c == ',' || c == ';' || c == '|') return 1;
  if (c == '.' && i + 1 < line.size() && (line[i + 1] == ' ' || line[i + 1] == '\t')) return 1;
  static constexpr std::string_view kWide[] = {"\xEF\xBC\x8C" /* ， */, "\xEF\xBC\x9B" /* ； */,
                                               "\xE3\x80\x82" /* 。 */, "\xEF\xBD\x9C" /* ｜ */};
  for (std::string_view wide : kWide)
    if (line.substr(i, wide.size()) == wide) return wide.size();
  return 0;
}

// NFKC, then markdown and list decoration removed: emphasis marks anywhere, heading, quote and bullet
// marks and list numbers at the start.
std::string clean_segment(std::string_view raw) {
  static const Pattern kLeading(R"(^(?:[\s#>+•·|=]+|-(?!\d)|\d{1,2}[.)]\s+)+)");
  std::string text;
  for (char c : judge_detail::nfkc(raw))
    if (c != '*' && c != '`' && c != '_') text += c;
  if (const auto m = kLeading.find(text)) text.erase(0, m->end);
  return std::string(judge_detail::trim(text));
}

std::vector<Segment> split_segments(std::string_view reply) {
  std::vector<Segment> segments;
  std::size_t line_start = 0;
  while (line_start <= reply.size()) {
    std::size_t line_end = reply.find('\n', line_start);
    if (line_end == std::string_view::npos) line_end = reply.size();
    const std::string_view line = reply.substr(line_start, line_end - line_start);
    std::size_t piece_start = 0;
    const std::size_t first = segments.size();
    for (std::size_t i = 0; i <= line.size();) {
      const std::size_t sep = i < line.size() ? separator_at(line, i) : 1;
      if (sep == 0) {
        ++i;
        continue;
      }
      Segment segment;
      // The first segment of a line starts at the line's start ("| Score | 8 |" leaves no '|' behind).
      segment.offset = line_start + (segments.size() == first ? 0 : piece_start);
      segment.before_cell = i < line.size() && line[i] == '|';
      segment.text = clean_segment(line.substr(piece_start, i - piece_start));
      segment.tail = line.substr(i);
      // The separator itself stays with the text before it for offsets; an empty piece is dropped.
      if (!segment.text.empty()) segments.push_back(std::move(segment));
      i += sep;
      piece_start = i;
    }
    if (segments.size() > first) segments.back().ends_line = true;
    if (line_end == reply.size()) break;
    line_start = line_end + 1;
  }
  return segments;
}

// --- scores ---------------------------------------------------------------------------------------------

// The label, an optional parenthetical such as "(0-10)", an optional separator; group 1 is the value.
const Pattern& score_label() {
  static const Pattern pattern(
      R"(^(?:(?:(?:final|overall|total)\s+)?(?:score|rating|grade)\b|(?:最终|最后|总|综合)?(?:评分|分数|得分|打分)(?:结果)?))"
      R"((?:\s*\([^)]{0,40}\)|\s*\[[^\]]{0,40}\])?\s*(?:[:=]|\bis\b|为|是)?\s*(.*)$)");
  return pattern;
}

struct ScoreValue {
  std::optional<double> score;  // nullopt: outside 0..10 (or a zero denominator)
  std::size_t end = 0;          // where the value's text ends
};

// "8", "8.5", "8/10", "8 out of 10", "8分", "[8]"; a range such as "0-10" restates the instructions and is
// not a score.
std::optional<ScoreValue> read_score_value(std::string_view value) {
  static const Pattern pattern(
      R"(^[\[(]?\s*([-+]?\d++(?:\.\d++)?+)(?!\s*(?:-|–|—|~|to\b|至|到)\s*\d)\s*分?\s*)"
      R"((?:(?:/|out\s+of\b|of\b)\s*(\d++(?:\.\d++)?+))?)");
  const auto m = pattern.find(value);
  if (!m) return std::nullopt;
  double score = std::strtod(std::string(m->group(value, 1)).c_str(), nullptr);
  ScoreValue out;
  out.end = m->end;
  if (m->has(2)) {
    const double denominator = std::strtod(std::string(m->group(value, 2)).c_str(), nullptr);
    if (!(denominator > 0)) return out;
    score = score * 10.0 / denominator;
  }
  if (std::isfinite(score) && score >= 0.0 && score <= 10.0) out.score = score;
  return out;
}

// --- verdicts -------------------------------------------------------------------------------------------

enum class Polarity { Incorrect, Correct, Neutral };

struct VerdictLabel {
  Polarity polarity;
  std::string value;
  bool separator;  // a ':' '=' or '?' follows the label
};

std::optional<VerdictLabel> verdict_label(std::string_view text) {
  // Group 1: the separator, group 2: the value.
  static constexpr std::string_view kTail =
      R"((?:\s*\([^)]{0,40}\)|\s*\[[^\]]{0,40}\])?\s*((?:\?\s*)?[:=]|\?)?\s*(.*)$)";
  static const Pattern incorrect(
      std::string(R"(^(?:(?:is\s+(?:the\s+)?(?:student'?s?\s+)?(?:answer|response)\s+)?incorrect\b|)") +
      R"((?:学生的?)?(?:回答|答案)?(?:是否)?(?:错误|有误|不正确|答错)))" + std::string(kTail));
  static const Pattern correct(
      std::string(R"(^(?:(?:is\s+(?:the\s+)?(?:student'?s?\s+)?(?:answer|response)\s+)?correct\b|)") +
      R"((?:学生的?)?(?:回答|答案)?(?:是否)?(?:正确|答对)))" + std::string(kTail));
  static const Pattern neutral(
      std::string(R"(^(?:(?:final\s+)?(?:verdict|judge?ment|conclusion|decision)\b|)") +
      R"((?:最终)?(?:结论|判断|判定|评判)(?:结果)?))" + std::string(kTail));
  const std::pair<const Pattern*, Polarity> labels[] = {
      {&incorrect, Polarity::Incorrect}, {&correct, Polarity::Correct}, {&neutral, Polarity::Neutral}};
  for (const auto& [pattern, polarity] : labels) {
    if (const auto m = pattern->find(text))
      return VerdictLabel{polarity, std::string(m->group(text, 2)), m->has(1)};
  }
  return std::nullopt;
}

enum class Word { Yes, No, Correct, Wrong };

// The verdict a label's value gives, or nullopt: not a verdict word, or a stand-in such as "<Yes or No>",
// "Yes/No" or "是/否" quoted from the instructions. `tail` is what follows the value on its line.
std::optional<bool> read_verdict_value(std::string_view value, std::string_view tail, Polarity polarity) {
  static const Pattern opening(R"(^[\s"'“”‘’「」『』【】\[\]()]*)");
  // A subject may come first: "the student's answer is correct", "回答是错误的".
  static const Pattern word(
      R"(^(?:(?:the\s+)?(?:student'?s?\s+)?(?:answer|response)\s+is\s+)?)"
      R"((?:(yes|true)|(no|false)|(correct|right)|(incorrect|wrong))\b|)"
      R"(^(?:学生的?)?(?:回答|答案)?(?:是|为)?)"
      R"((?:(是的|是(?!否)|确实是)|(不是|否(?!则))|(正确|对(?!于|比|照|应))|(不正确|不对|错误|错(?!过))))");
  static const Pattern alternative(
      R"(^\s*["'”’」』】\])]*\s*(?:\([^)]*\)\s*)?(?:/|\||\bor\b|或者?|还是)\s*["'“‘「『【\[(]*\s*)"
      R"((?:yes|no|true|false|correct|incorrect|wrong|right|是|否|正确|错误|对|错))");
  std::string_view rest = value;
  if (const auto m = opening.find(rest)) rest.remove_prefix(m->end);
  if (!rest.empty() && rest.front() == '<') return std::nullopt;
  const auto m = word.find(rest);
  if (!m) return std::nullopt;
  if (alternative.find(std::string(rest.substr(m->end)) + std::string(tail))) return std::nullopt;
  std::optional<Word> w;
  for (std::size_t g = 1; g <= 8 && !w; ++g)
    if (m->has(g)) w = static_cast<Word>((g - 1) % 4);
  switch (*w) {
    case Word::Correct: return false;
    case Word::Wrong: return true;
    case Word::Yes:
      if (polarity == Polarity::Neutral) return std::nullopt;
      return polarity == Polarity::Incorrect;
    case Word::No:
      if (polarity == Polarity::Neutral) return std::nullopt;
      return polarity == Polarity::Correct;
  }
  return std::nullopt;
}

// --- the reply ------------------------------------------------------------------------------------------

struct Item {
  bool is_verdict = false;
  std::size_t offset = 0;
  std::optional<double> score;  // score items
  bool incorrect = false;       // verdict items
};

// The segment holding the value of the label in segment i: itself when it has a value, else the next
// segment when the label ends its line (a heading such as "### Score", or "Incorrect:" with the value
// below) or is a table cell; nullopt when there is none.
std::optional<std::size_t> value_segment(const std::vector<Segment>& segments, std::size_t i, bool has_value) {
  if (has_value) return i;
  if ((segments[i].ends_line || segments[i].before_cell) && i + 1 < segments.size()) return i + 1;
  return std::nullopt;
}

// A verdict label's value, read as a verdict (nullopt when it is none). A value that is itself a labelled
// verdict ("Final verdict: Incorrect: No") is read as that one.
std::optional<bool> labelled_verdict(const std::vector<Segment>& segments, std::size_t i, const VerdictLabel& label) {
  // Without a ':', '=' or '?' the label must stand alone (a heading or a table cell) with its value in the
  // next segment: "correct no matter what" is prose, not a verdict.
  if (!label.separator && !label.value.empty()) return std::nullopt;
  if (const auto inner = verdict_label(label.value); inner && inner->separator && !inner->value.empty())
    return labelled_verdict(segments, i, *inner);
  const auto at = value_segment(segments, i, !label.value.empty());
  if (!at) return std::nullopt;
  const std::string_view value = *at == i ? std::string_view(label.value) : segments[*at].text;
  return read_verdict_value(value, judge_detail::nfkc(segments[*at].tail), label.polarity);
}

// The items segment i holds: a verdict, a score, or a score followed by a verdict on the same segment
// ("Score: 8 Incorrect: No"). `text` is the segment's text or, for "Final answer: Score: 8", its part after
// a short lead-in.
bool read_items(const std::vector<Segment>& segments, std::size_t i, std::string_view text, std::vector<Item>& items) {
  Item item;
  item.offset = segments[i].offset;
  if (const auto label = verdict_label(text)) {
    const auto incorrect = labelled_verdict(segments, i, *label);
    if (!incorrect) return false;
    item.is_verdict = true;
    item.incorrect = *incorrect;
    items.push_back(item);
    return true;
  }
  const auto m = score_label().find(text);
  if (!m) return false;
  const bool has_value = m->has(1) && m->groups[0].second > m->groups[0].first;
  const auto at = value_segment(segments, i, has_value);
  if (!at) return false;
  const std::string_view value = *at == i ? m->group(text, 1) : std::string_view(segments[*at].text);
  const auto score = read_score_value(value);
  if (!score) return false;
  item.score = score->score;
  items.push_back(item);
  if (*at == i) {
    static const Pattern separators(R"(^[\s\-–—/|,;.]+)");
    std::string_view rest = value.substr(score->end);
    if (const auto sep = separators.find(rest)) rest.remove_prefix(sep->end);
    const auto label = verdict_label(rest);
    if (label && label->separator) {
      if (const auto incorrect = labelled_verdict(segments, i, *label)) {
        Item verdict = item;
        verdict.is_verdict = true;
        verdict.score.reset();
        verdict.incorrect = *incorrect;
        items.push_back(verdict);
      }
    }
  }
  return true;
}

std::vector<Item> find_items(const std::vector<Segment>& segments) {
  // A lead-in of at most four words before a colon: "Final answer: Incorrect: No".
  static const Pattern lead_in(R"(^[^\s:\d]+(?:\s+[^\s:\d]+){0,3}\s*:\s*)");
  std::vector<Item> items;
  for (std::size_t i = 0; i < segments.size(); ++i) {
    const std::string& text = segments[i].text;
    if (read_items(segments, i, text, items)) continue;
    if (const auto m = lead_in.find(text); m && m->end < text.size())
      read_items(segments, i, std::string_view(text).substr(m->end), items);
  }
  return items;
}

}  // namespace

ParsedJudgement parse_judge_reply(std::string_view raw_reply) {
  const std::string reply = judge_detail::valid_utf8(raw_reply);
  ParsedJudgement out;
  if (judge_detail::trim(reply).empty()) {
    out.problem = "empty reply";
    return out;
  }
  const std::vector<Item> items = find_items(split_segments(reply));

  std::optional<std::size_t> verdict;
  std::optional<std::size_t> previous_verdict;
  for (std::size_t i = 0; i < items.size(); ++i) {
    if (!items[i].is_verdict) continue;
    previous_verdict = verdict;
    verdict = i;
  }

  std::size_t boundary = reply.size();  // the rationale is the text before this offset
  if (verdict) {
    out.ok = true;
    out.incorrect = items[*verdict].incorrect;
    boundary = items[*verdict].offset;
    // The score of this verdict: the nearest one before it, else the first one after it. The rationale
    // stops at that score only when it belongs to this verdict's block (after the previous verdict).
    std::optional<std::size_t> score;
    for (std::size_t i = 0; i < *verdict; ++i)
      if (!items[i].is_verdict) score = i;
    if (score) {
      if (!previous_verdict || *score > *previous_verdict) boundary = std::min(boundary, items[*score].offset);
    } else {
      for (std::size_t i = *verdict + 1; i < items.size() && !score; ++i)
        if (!items[i].is_verdict) score = i;
    }
    if (score) out.score = items[*score].score;
  } else {
    std::optional<std::size_t> score;
    for (std::size_t i = 0; i < items.size(); ++i)
      if (!items[i].is_verdict) score = i;
    if (score) {
      out.score = items[*score].score;
      boundary = items[*score].offset;
      out.problem = "no verdict: the reply gives a score but no \"Incorrect: Yes\" or \"Incorrect: No\" line "
                    "(was it cut off by max_new_tokens?)";
    } else {
      out.problem = "no verdict: the reply has no \"Incorrect: Yes\" or \"Incorrect: No\" line";
    }
  }
  out.rationale = std::string(judge_detail::trim(std::string_view(reply).substr(0, boundary)));
  return out;
}

}  // namespace slearn
