// Judging answers against reference answers: the model grading itself with a chain-of-thought "expert
// teacher" prompt (kind self, the SLearnLLM method), an auxiliary judge model (kind model), rules (kind rule),
// or rules where they can decide and the model elsewhere (kind cascade).
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

namespace slearn {

struct JudgeSettings {
  std::string kind = "self";          // self | model | rule | cascade
  std::string rule = "auto";          // auto | exact | normalized | choice | yesno | numeric
  double numeric_tolerance = 1e-6;    // relative, for the numeric rule
  std::string language = "auto";      // auto (by the question's script) | en | zh
  std::string template_en;            // empty: the built-in English template
  std::string template_zh;            // empty: the built-in Chinese template
  std::string model;                  // the judge model directory for kind "model" (and cascade's fallback)
  std::int64_t max_new_tokens = 384;  // for the judge's reply
};

enum class JudgeLanguage { English, Chinese };
// Chinese when Han characters make up a noticeable share of the letters, else English.
JudgeLanguage detect_language(std::string_view text);

// The built-in templates; placeholders {question}, {reference}, {answer}. The reply form they ask for is
// documented in docs/judging.md: reasoning, then a line "Score: N" (0-10), then a line "Incorrect: Yes" or
// "Incorrect: No" (Chinese templates ask for the same two lines, in Chinese labels accepted too).
std::string_view default_judge_template(JudgeLanguage language);
// Fills a template; unknown placeholders are an InputError naming them; a template missing any of the three
// placeholders is an InputError.
std::string render_judge_prompt(std::string_view judge_template, std::string_view question,
                                std::string_view reference, std::string_view answer);

struct ParsedJudgement {
  std::optional<double> score;      // 0..10 when found
  std::optional<bool> incorrect;    // the verdict when found
  std::string rationale;            // the reasoning text before the verdict lines
  bool ok = false;                  // a verdict was found (an unparseable reply counts as incorrect)
  std::string problem;              // why not ok
};
// Reads a judge reply robustly: English and Chinese labels, full-width colons, markdown bold, "8/10",
// trailing text; the LAST verdict line wins. No verdict -> ok false.
ParsedJudgement parse_judge_reply(std::string_view reply);

struct RuleDecision {
  bool incorrect = false;
  std::string rule;  // which rule decided: "exact", "normalized", "choice", "yesno", "numeric"
};
// Applies settings.rule; `auto` picks by the reference: a single choice letter (A-E) -> choice, yes/no/maybe
// -> yesno, a number -> numeric, else normalized match. nullopt when the rule cannot decide (e.g. the
// reference is a free-text paragraph under `auto` and the answer does not match it exactly), which sends the
// record to the model in cascade mode and counts as incorrect in rule mode.
std::optional<RuleDecision> rule_judge(const JudgeSettings& settings, std::string_view reference,
                                       std::string_view answer);

}  // namespace slearn
