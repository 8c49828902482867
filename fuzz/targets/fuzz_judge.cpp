// Fuzz target: the judge-verdict parser (parse_judge_reply) and the language detection that picks the judge
// template, on replies in English and Chinese (the corpus holds both); also the rule judges on a reference
// and an answer split at the first NUL.
#include <cmath>

#include "fuzz_common.hpp"
#include "slearn/judge.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const std::string_view input(reinterpret_cast<const char*>(data), size);

  slearn_fuzz::expect_slearn_errors_only([&] {
    const slearn::ParsedJudgement parsed = slearn::parse_judge_reply(input);
    if (parsed.ok != parsed.incorrect.has_value()) slearn_fuzz::fail("ok and the verdict disagree");
    if (parsed.ok != parsed.problem.empty()) slearn_fuzz::fail("ok and the problem disagree");
    if (parsed.score && !(std::isfinite(*parsed.score) && *parsed.score >= 0.0 && *parsed.score <= 10.0))
      slearn_fuzz::fail("score outside 0..10: " + std::to_string(*parsed.score));
    if (!slearn_fuzz::is_valid_utf8(parsed.rationale)) slearn_fuzz::fail("the rationale is not valid UTF-8");
  });

  slearn_fuzz::expect_slearn_errors_only([&] {
    const slearn::JudgeLanguage language = slearn::detect_language(input);
    (void)slearn::default_judge_template(language);
  });

  // Rule judges: "reference\0answer", rule by the last byte.
  const std::size_t nul = input.find('\0');
  if (nul != std::string_view::npos) {
    static const char* const kRules[] = {"auto", "exact", "normalized", "choice", "yesno", "numeric"};
    slearn::JudgeSettings settings;
    settings.kind = "rule";
    settings.rule = kRules[data[size - 1] % 6];
    const std::string_view reference = input.substr(0, nul);
    const std::string_view answer = input.substr(nul + 1);
    slearn_fuzz::expect_slearn_errors_only([&] { (void)slearn::rule_judge(settings, reference, answer); });
    slearn_fuzz::expect_slearn_errors_only([&] {
      (void)slearn::render_judge_prompt(slearn::default_judge_template(slearn::JudgeLanguage::Chinese), reference,
                                        answer, reference);
    });
  }
  return 0;
}
