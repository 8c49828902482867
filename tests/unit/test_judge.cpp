// Judging: the reply parser on the committed corpus of judge replies (tests/fixtures/judge/replies.jsonl),
// the rule judges, the templates and language detection.
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include <filesystem>
#include <fstream>
#include <optional>
#include <string>
#include <vector>

#include "slearn/error.hpp"
#include "slearn/judge.hpp"
#include "test_paths.hpp"

namespace slearn {
namespace {

namespace fs = std::filesystem;

// --- the reply corpus -----------------------------------------------------------------------------------

std::vector<nlohmann::json> load_replies() {
  const fs::path path = testing::fixtures_dir() / "judge" / "replies.jsonl";
  std::ifstream in(path);
  EXPECT_TRUE(in.good()) << path;
  std::vector<nlohmann::json> cases;
  std::string line;
  for (int number = 1; std::getline(in, line); ++number) {
    if (line.empty()) continue;
    cases.push_back(nlohmann::json::parse(line));
    for (const char* key : {"reply", "score", "incorrect", "ok", "note"})
      EXPECT_TRUE(cases.back().contains(key)) << path << ":" << number << " has no " << key;
  }
  return cases;
}

bool has_han(const std::string& text) { return detect_language(text) == JudgeLanguage::Chinese; }

TEST(JudgeReplyCorpus, EveryCaseParsesAsRecorded) {
  const std::vector<nlohmann::json> cases = load_replies();
  ASSERT_GE(cases.size(), 40u);
  for (const nlohmann::json& c : cases) {
    const std::string note = c["note"].get<std::string>();
    SCOPED_TRACE(note);
    const ParsedJudgement parsed = parse_judge_reply(c["reply"].get<std::string>());
    EXPECT_EQ(parsed.ok, c["ok"].get<bool>());
    if (c["score"].is_null()) {
      EXPECT_FALSE(parsed.score.has_value()) << *parsed.score;
    } else {
      ASSERT_TRUE(parsed.score.has_value());
      EXPECT_DOUBLE_EQ(*parsed.score, c["score"].get<double>());
    }
    if (c["incorrect"].is_null()) {
      EXPECT_FALSE(parsed.incorrect.has_value());
    } else {
      ASSERT_TRUE(parsed.incorrect.has_value());
      EXPECT_EQ(*parsed.incorrect, c["incorrect"].get<bool>());
    }
    // ok means exactly "a verdict was found"; a problem is given when and only when it was not.
    EXPECT_EQ(parsed.ok, parsed.incorrect.has_value());
    EXPECT_EQ(parsed.ok, parsed.problem.empty()) << parsed.problem;
    if (c.contains("rationale")) {
      EXPECT_EQ(parsed.rationale, c["rationale"].get<std::string>());
    }
  }
}

TEST(JudgeReplyCorpus, CoversBothLanguagesAndEveryOutcome) {
  int chinese = 0, english = 0, not_ok = 0, wrong = 0, right = 0, no_score = 0;
  for (const nlohmann::json& c : load_replies()) {
    const std::string reply = c["reply"].get<std::string>();
    (has_han(reply) ? chinese : english) += 1;
    if (!c["ok"].get<bool>()) ++not_ok;
    if (c["incorrect"] == true) ++wrong;
    if (c["incorrect"] == false) ++right;
    if (c["score"].is_null()) ++no_score;
  }
  EXPECT_GE(chinese, 12);
  EXPECT_GE(english, 25);
  EXPECT_GE(not_ok, 8);
  EXPECT_GE(wrong, 10);
  EXPECT_GE(right, 10);
  EXPECT_GE(no_score, 5);
}

// --- the parser beyond the corpus -----------------------------------------------------------------------

TEST(JudgeReplies, RationaleIsTheTextBeforeTheFinalLinesTrimmed) {
  const ParsedJudgement parsed = parse_judge_reply("\n\n  The answers agree on the dose.  \n\nScore: 9\nIncorrect: No\n");
  EXPECT_TRUE(parsed.ok);
  EXPECT_EQ(parsed.rationale, "The answers agree on the dose.");
}

TEST(JudgeReplies, WindowsLineEndings) {
  const ParsedJudgement parsed = parse_judge_reply("Wrong drug.\r\nScore: 1\r\nIncorrect: Yes\r\n");
  ASSERT_TRUE(parsed.ok);
  EXPECT_TRUE(*parsed.incorrect);
  EXPECT_EQ(*parsed.score, 1.0);
  EXPECT_EQ(parsed.rationale, "Wrong drug.");
}

TEST(JudgeReplies, InvalidUtf8IsRepairedNotFatal) {
  const ParsedJudgement parsed = parse_judge_reply("Bad bytes \xC3\x28 here.\nScore: 5\nIncorrect: \xE4\xB8");
  EXPECT_FALSE(parsed.ok);  // the verdict was cut inside a character
  EXPECT_EQ(*parsed.score, 5.0);
}

TEST(JudgeReplies, VerdictWordsAndLabelPolarity) {
  struct Case {
    const char* reply;
    bool incorrect;
  };
  const Case cases[] = {
      {"Incorrect: Yes", true},     {"Incorrect: No", false},    {"Incorrect: 是", true},
      {"Incorrect: 否", false},     {"Incorrect: 是的", true},   {"Incorrect: 不是", false},
      {"Incorrect: 错误", true},    {"Incorrect: 正确", false},  {"是否错误：否", false},
      {"是否错误：是", true},       {"是否错误: 不正确", true},  {"Correct: Yes", false},
      {"Correct: No", true},        {"是否正确：否", true},      {"Verdict: Incorrect", true},
      {"Verdict: correct", false},  {"结论：错误", true},        {"最终判断：正确", false},
      {"Incorrect = TRUE", true},   {"> **Incorrect:** _No_", false}, {"1. Incorrect: yes", true},
      // Nested labels, lead-ins and a subject before the word.
      {"Final verdict: Incorrect: No", false}, {"Final answer: Incorrect: Yes", true},
      {"Verdict: The student's answer is incorrect.", true}, {"结论：回答错误", true},
      {"结论：学生的回答是正确的。", false}, {"是否错误：是错误的", true}, {"是否错误：是的", true},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.reply);
    const ParsedJudgement parsed = parse_judge_reply(c.reply);
    ASSERT_TRUE(parsed.ok) << parsed.problem;
    EXPECT_EQ(*parsed.incorrect, c.incorrect);
    EXPECT_FALSE(parsed.score.has_value());
  }
}

TEST(JudgeReplies, StandInsAndNeutralLabelsWithYesNoAreNotVerdicts) {
  for (const char* reply : {"Incorrect: <Yes or No>", "Incorrect: Yes or No", "Incorrect: [Yes/No]",
                            "Incorrect: yes | no", "是否错误：是或否", "是否错误：是还是否", "Verdict: Yes",
                            "结论：是", "Incorrect: maybe", "Incorrect", "The answer is incorrect: the dose",
                            "Note: the student's answer is correct", "准确性：对照参考答案，学生回答基本准确。",
                            "End with Incorrect: Yes or Incorrect: No"}) {
    SCOPED_TRACE(reply);
    EXPECT_FALSE(parse_judge_reply(reply).ok);
  }
}

TEST(JudgeReplies, ScoreForms) {
  struct Case {
    const char* line;
    std::optional<double> score;
  };
  const Case cases[] = {
      {"Score: 7", 7.0},        {"score:7/10", 7.0},           {"Score = 8", 8.0},
      {"Score is 6", 6.0},      {"Overall score: 4", 4.0},     {"Score (0-10): 5", 5.0},
      {"Score: [3]", 3.0},      {"Score: 9 out of 10", 9.0},   {"Score: 4/5", 8.0},
      {"评分：7分", 7.0},        {"得分为 6", 6.0},              {"最终评分: 8.5 分", 8.5},
      {"Score: 0", 0.0},        {"Score: 10", 10.0},           {"Score: 10.5", std::nullopt},
      {"Score: 11", std::nullopt}, {"Score: 8/0", std::nullopt},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.line);
    const ParsedJudgement parsed = parse_judge_reply(std::string(c.line) + "\nIncorrect: No");
    ASSERT_TRUE(parsed.ok);
    EXPECT_EQ(parsed.score, c.score);
  }
  // Not scores: stand-ins and ranges restating the instructions, sub-scores, letter grades.
  for (const char* line : {"Score: N", "Score: <0-10>", "Score: 0-10", "Score: 0 to 10", "评分：0 到 10",
                           "Score for accuracy: 4", "Grade: B", "Scores vary"}) {
    SCOPED_TRACE(line);
    EXPECT_FALSE(parse_judge_reply(std::string(line) + "\nIncorrect: No").score.has_value());
  }
}

TEST(JudgeReplies, ScoreAndVerdictOnOneLine) {
  for (const char* reply : {"Score: 8 Incorrect: No", "Score: 8 - Incorrect: No", "**Score: 8** **Incorrect: No**",
                            "Score: 8, Incorrect: No", "Score: 8; Incorrect: No", "评分：8，是否错误：否"}) {
    SCOPED_TRACE(reply);
    const ParsedJudgement parsed = parse_judge_reply(reply);
    ASSERT_TRUE(parsed.ok);
    EXPECT_FALSE(*parsed.incorrect);
    EXPECT_EQ(*parsed.score, 8.0);
    EXPECT_EQ(parsed.rationale, "");
  }
}

TEST(JudgeReplies, TheScoreOfTheLastVerdictIsTheNearestBeforeIt) {
  // The earlier block's score does not leak past a later one's.
  ParsedJudgement parsed = parse_judge_reply("Score: 2\nIncorrect: Yes\nScore: 9\nIncorrect: No");
  EXPECT_EQ(*parsed.score, 9.0);
  EXPECT_FALSE(*parsed.incorrect);
  // A verdict with no score of its own keeps the nearest earlier one.
  parsed = parse_judge_reply("Score: 6\nIncorrect: No\nOn reflection the dose is wrong.\nIncorrect: Yes");
  EXPECT_EQ(*parsed.score, 6.0);
  EXPECT_TRUE(*parsed.incorrect);
  EXPECT_EQ(parsed.rationale, "Score: 6\nIncorrect: No\nOn reflection the dose is wrong.");
}

TEST(JudgeReplies, ParrotingTheTemplateGivesNoVerdict) {
  // A model that repeats its prompt back must not be read as having judged.
  for (JudgeLanguage language : {JudgeLanguage::English, JudgeLanguage::Chinese}) {
    const std::string prompt =
        render_judge_prompt(default_judge_template(language), "What is the dose?", "5 mg", "5 mg");
    const ParsedJudgement parsed = parse_judge_reply(prompt);
    EXPECT_FALSE(parsed.ok);
    EXPECT_FALSE(parsed.score.has_value());
    // ... while the same text followed by a real answer is read normally.
    const ParsedJudgement answered = parse_judge_reply(prompt + "\nThe doses agree.\nScore: 10\nIncorrect: No");
    ASSERT_TRUE(answered.ok);
    EXPECT_FALSE(*answered.incorrect);
    EXPECT_EQ(*answered.score, 10.0);
  }
}

// --- templates ------------------------------------------------------------------------------------------

TEST(JudgeTemplates, DefaultsAskForTheDocumentedForm) {
  for (JudgeLanguage language : {JudgeLanguage::English, JudgeLanguage::Chinese}) {
    const std::string text(default_judge_template(language));
    for (const char* needle : {"{question}", "{reference}", "{answer}", "\nScore: ", "\nIncorrect: "})
      EXPECT_NE(text.find(needle), std::string::npos) << needle;
    EXPECT_EQ(detect_language(text), language);
    EXPECT_NO_THROW(render_judge_prompt(text, "q", "r", "a"));
  }
}

TEST(JudgeTemplates, RenderFillsPlaceholdersVerbatim) {
  const std::string out = render_judge_prompt("Q={question}\nR={reference}\nA={answer}\nQ again={question}",
                                              "Is it {x}?", "yes }}", "{answer}");
  EXPECT_EQ(out, "Q=Is it {x}?\nR=yes }}\nA={answer}\nQ again=Is it {x}?");
}

TEST(JudgeTemplates, DoubledBracesAreLiteral) {
  EXPECT_EQ(render_judge_prompt("{{\"score\": 8}} {question}|{reference}|{answer} {{{{x}}}}", "q", "r", "a"),
            "{\"score\": 8} q|r|a {{x}}");
}

std::string error_of(const std::string& judge_template) {
  try {
    render_judge_prompt(judge_template, "q", "r", "a");
  } catch (const InputError& e) {
    return e.what();
  }
  return "";
}

TEST(JudgeTemplates, UnknownPlaceholdersAreNamed) {
  const std::string message = error_of("{question} {reference} {answer} {student} {context} {student}");
  EXPECT_NE(message.find("unknown placeholders {student} and {context}"), std::string::npos) << message;
}

TEST(JudgeTemplates, MissingPlaceholdersAreNamed) {
  std::string message = error_of("Question: {question}\nReference: {reference}");
  EXPECT_NE(message.find("missing placeholder {answer}"), std::string::npos) << message;
  message = error_of("no placeholders at all");
  EXPECT_NE(message.find("missing placeholders {question}, {reference} and {answer}"), std::string::npos) << message;
  message = error_of("{question} {reference} {Answer}");
  EXPECT_NE(message.find("unknown placeholder {Answer}"), std::string::npos) << message;
  EXPECT_NE(message.find("missing placeholder {answer}"), std::string::npos) << message;
}

TEST(JudgeTemplates, UnescapedBracesAreErrors) {
  for (const char* bad : {"{question} {reference} {answer} {", "{question} {reference} {answer} }",
                          "{question} {reference} {answer} {\"score\": 8}", "{question} {reference} {answer} { }"}) {
    SCOPED_TRACE(bad);
    EXPECT_NE(error_of(bad).find("literal brace"), std::string::npos);
  }
}

// --- language -------------------------------------------------------------------------------------------

// Real records: Huatuo-26M (Chinese) and MedQuAD (English), as in the shared data sets.
constexpr const char* kHuatuoQuestion = "一个患者的卵巢小细胞癌转移至其它部位，是否有必要进行手术治疗？";
constexpr const char* kHuatuoAnswer =
    "当卵巢小细胞癌转移至其它部位时，手术治疗的效果可能不理想，因此一般不推荐进行手术治疗。针对转移病灶，可以采用化疗、"
    "放疗等治疗手段进行综合治疗。";
constexpr const char* kMedquadQuestion = "What is (are) Age-related Macular Degeneration ?";
constexpr const char* kMedquadAnswer =
    "Wet AMD occurs when abnormal blood vessels behind the retina start to grow under the macula. With wet AMD, "
    "loss of central vision can occur quickly.";

TEST(JudgeLanguage, RealRecords) {
  EXPECT_EQ(detect_language(kHuatuoQuestion), JudgeLanguage::Chinese);
  EXPECT_EQ(detect_language(kHuatuoAnswer), JudgeLanguage::Chinese);
  EXPECT_EQ(detect_language(kMedquadQuestion), JudgeLanguage::English);
  EXPECT_EQ(detect_language(kMedquadAnswer), JudgeLanguage::English);
}

TEST(JudgeLanguage, SharedDataSetsWhenPresent) {
  const fs::path zh = testing::shared_data_dir() / "datasets" / "huatuo-med-zh.jsonl";
  const fs::path en = testing::shared_data_dir() / "datasets" / "medquad-en.jsonl";
  if (!fs::exists(zh) || !fs::exists(en)) GTEST_SKIP() << "shared data sets not found";
  auto check = [](const fs::path& path, const char* question_key, JudgeLanguage expected) {
    std::ifstream in(path);
    std::string line;
    for (int i = 0; i < 20 && std::getline(in, line); ++i) {
      const nlohmann::json record = nlohmann::json::parse(line);
      EXPECT_EQ(detect_language(record[question_key].get<std::string>()), expected) << path << ":" << i + 1;
    }
  };
  check(zh, "instruction", JudgeLanguage::Chinese);
  check(en, "question", JudgeLanguage::English);
}

TEST(JudgeLanguage, MixedAndEdgeCases) {
  // A Chinese question with an English drug name, an English question about a Chinese term.
  EXPECT_EQ(detect_language("患者服用 metformin 后出现乳酸酸中毒，应如何处理？"), JudgeLanguage::Chinese);
  EXPECT_EQ(detect_language("What is 高血压?"), JudgeLanguage::Chinese);  // 3 of 9 letters are Han
  // One Chinese term in a long English sentence stays English (2 of 69 letters).
  EXPECT_EQ(detect_language("Patients with hypertension, which is called 血压 in Chinese, should limit salt intake."),
            JudgeLanguage::English);
  EXPECT_EQ(detect_language(""), JudgeLanguage::English);
  EXPECT_EQ(detect_language("120 / 80 mmHg?"), JudgeLanguage::English);
  EXPECT_EQ(detect_language("12345，。？"), JudgeLanguage::English);  // no letters at all
  EXPECT_EQ(detect_language("\xFF\xFE 中文"), JudgeLanguage::Chinese);  // invalid bytes are skipped
}

// --- rules ----------------------------------------------------------------------------------------------

// "right", "wrong" or "undecided", and which rule decided.
std::string judge(const std::string& rule, const std::string& reference, const std::string& answer,
                  double tolerance = 1e-6) {
  JudgeSettings settings;
  settings.rule = rule;
  settings.numeric_tolerance = tolerance;
  const std::optional<RuleDecision> decision = rule_judge(settings, reference, answer);
  if (!decision) return "undecided";
  return std::string(decision->incorrect ? "wrong" : "right") + " by " + decision->rule;
}

TEST(JudgeRules, Exact) {
  EXPECT_EQ(judge("exact", "Paris", "  Paris\n"), "right by exact");
  EXPECT_EQ(judge("exact", "Paris", "paris"), "wrong by exact");
  EXPECT_EQ(judge("exact", "巴黎", "巴黎。"), "wrong by exact");
  EXPECT_EQ(judge("exact", "Paris", ""), "wrong by exact");
}

TEST(JudgeRules, Normalized) {
  EXPECT_EQ(judge("normalized", "Type 2 diabetes", "  TYPE-2   diabetes."), "right by normalized");
  EXPECT_EQ(judge("normalized", "Ｐａｒｉｓ", "paris"), "right by normalized");  // NFKC: full-width letters
  EXPECT_EQ(judge("normalized", "Crohn's disease", "Crohns disease"), "right by normalized");
  EXPECT_EQ(judge("normalized", "高血压", "高血压。"), "right by normalized");
  // A short reference counts when the answer contains it as whole words ...
  EXPECT_EQ(judge("normalized", "Paris", "The capital is Paris."), "right by normalized");
  EXPECT_EQ(judge("normalized", "vitamin B12", "It is caused by a lack of Vitamin B12, mostly."), "right by normalized");
  EXPECT_EQ(judge("normalized", "高血压", "患者可能患有高血压。"), "right by normalized");
  // ... but not inside a longer word, nor right after a negation.
  EXPECT_EQ(judge("normalized", "Paris", "Parisian food"), "wrong by normalized");
  EXPECT_EQ(judge("normalized", "B12", "vitamin B123"), "wrong by normalized");
  EXPECT_EQ(judge("normalized", "Paris", "It is not Paris."), "wrong by normalized");
  EXPECT_EQ(judge("normalized", "高血压", "可以排除高血压"), "wrong by normalized");
  EXPECT_EQ(judge("normalized", "反应性关节炎", "类风湿关节炎"), "wrong by normalized");
  EXPECT_EQ(judge("normalized", "Paris", "Lyon"), "wrong by normalized");
  // A long reference only matches as a whole.
  const std::string long_reference = "AMD blurs the sharp central vision you need for reading and driving.";
  EXPECT_EQ(judge("normalized", long_reference, "amd blurs the sharp central vision you need for reading and driving"),
            "right by normalized");
  EXPECT_EQ(judge("normalized", long_reference, "Yes: " + long_reference), "wrong by normalized");
  // Undecidable: a reference with nothing but punctuation.
  EXPECT_EQ(judge("normalized", "...", "anything"), "undecided");
}

TEST(JudgeRules, Choice) {
  EXPECT_EQ(judge("choice", "B", "B"), "right by choice");
  EXPECT_EQ(judge("choice", "(B)", "The answer is B."), "right by choice");
  EXPECT_EQ(judge("choice", "B.", "Answer: (b)"), "right by choice");
  EXPECT_EQ(judge("choice", "B", "B. Streptococcus pneumoniae"), "right by choice");
  EXPECT_EQ(judge("choice", "C", "The correct answer is C because the others are wrong"), "right by choice");
  EXPECT_EQ(judge("choice", "A", "Option A is correct"), "right by choice");
  EXPECT_EQ(judge("choice", "B", "The answer is B, not C"), "right by choice");
  EXPECT_EQ(judge("choice", "B", "选B"), "right by choice");
  EXPECT_EQ(judge("choice", "Ｅ", "正确答案是 Ｅ。"), "right by choice");
  EXPECT_EQ(judge("choice", "D", "I would pick (D) here."), "right by choice");
  // Negative.
  EXPECT_EQ(judge("choice", "B", "我选择 C。"), "wrong by choice");
  EXPECT_EQ(judge("choice", "B", "(A)"), "wrong by choice");
  EXPECT_EQ(judge("choice", "B", "Answer: D"), "wrong by choice");
  // Undecidable: no letter, several letters, an article rather than a choice, a non-letter reference.
  EXPECT_EQ(judge("choice", "B", "Both are plausible"), "undecided");
  EXPECT_EQ(judge("choice", "B", "A or B"), "undecided");
  EXPECT_EQ(judge("choice", "B", "(A) and (C) are both possible"), "undecided");
  EXPECT_EQ(judge("choice", "B", "答案：A和C"), "undecided");
  EXPECT_EQ(judge("choice", "B", "The answer is (A) or (C)."), "undecided");
  EXPECT_EQ(judge("choice", "B", "The answer is A, B or C"), "undecided");
  EXPECT_EQ(judge("choice", "A", "A bacterial infection causes this."), "undecided");
  EXPECT_EQ(judge("choice", "Paris", "B"), "undecided");
}

TEST(JudgeRules, YesNoMaybe) {
  // PubMedQA-style references and answers.
  EXPECT_EQ(judge("yesno", "yes", "Yes, mitochondria play a role in remodelling lace plant leaves."), "right by yesno");
  EXPECT_EQ(judge("yesno", "no", "No. The differences were small."), "right by yesno");
  EXPECT_EQ(judge("yesno", "maybe", "Maybe; the evidence is mixed."), "right by yesno");
  EXPECT_EQ(judge("yesno", "no", "There is no evidence of a difference."), "right by yesno");
  EXPECT_EQ(judge("yesno", "Yes.", "The answer is yes"), "right by yesno");
  EXPECT_EQ(judge("yesno", "是", "是的，线粒体参与了这一过程。"), "right by yesno");
  EXPECT_EQ(judge("yesno", "否", "不是。"), "right by yesno");
  EXPECT_EQ(judge("yesno", "可能", "可能，目前证据不足。"), "right by yesno");
  EXPECT_EQ(judge("yesno", "yes", "是"), "right by yesno");
  // Negative.
  EXPECT_EQ(judge("yesno", "yes", "No."), "wrong by yesno");
  EXPECT_EQ(judge("yesno", "maybe", "Yes, it does."), "wrong by yesno");
  EXPECT_EQ(judge("yesno", "否", "可能，证据不足。"), "wrong by yesno");
  // Undecidable: no yes/no/maybe word, both words, a reference that is not yes/no/maybe.
  EXPECT_EQ(judge("yesno", "yes", "The results suggest that mitochondria play a role."), "undecided");
  EXPECT_EQ(judge("yesno", "yes", "Yes and no."), "undecided");
  EXPECT_EQ(judge("yesno", "yes", "There is no doubt; yes it does."), "undecided");
  EXPECT_EQ(judge("yesno", "可能", "这取决于患者的情况"), "undecided");
  EXPECT_EQ(judge("yesno", "Mitochondria play a role.", "Yes."), "undecided");
}

TEST(JudgeRules, Numeric) {
  EXPECT_EQ(judge("numeric", "1,000", "About 1000 cells"), "right by numeric");
  EXPECT_EQ(judge("numeric", "1000", "1,000,000"), "wrong by numeric");
  EXPECT_EQ(judge("numeric", "3.5%", "The rate was 3.5 percent"), "right by numeric");
  EXPECT_EQ(judge("numeric", "35%", "0.35"), "right by numeric");
  EXPECT_EQ(judge("numeric", "-4", "It changed by -4 points"), "right by numeric");
  EXPECT_EQ(judge("numeric", "-4", "It changed by −4 points"), "right by numeric");  // U+2212 minus
  EXPECT_EQ(judge("numeric", "4", "It changed by -4 points"), "wrong by numeric");
  EXPECT_EQ(judge("numeric", "19", "COVID-19"), "right by numeric");  // a hyphen after a word is no minus
  EXPECT_EQ(judge("numeric", "120 mg", "The dose is 120 mg daily"), "right by numeric");
  EXPECT_EQ(judge("numeric", "120 mg", "The dose is 100 mg daily"), "wrong by numeric");
  EXPECT_EQ(judge("numeric", "3天", "大约3天"), "right by numeric");
  EXPECT_EQ(judge("numeric", "3天", "大约５天"), "wrong by numeric");  // full-width digit
  // Relative tolerance.
  EXPECT_EQ(judge("numeric", "42", "42.0000001"), "right by numeric");
  EXPECT_EQ(judge("numeric", "42", "42.1"), "wrong by numeric");
  EXPECT_EQ(judge("numeric", "42", "42.1", 0.01), "right by numeric");
  EXPECT_EQ(judge("numeric", "0", "0.0"), "right by numeric");
  // Undecidable: no number on one side.
  EXPECT_EQ(judge("numeric", "120 mg", "one hundred twenty"), "undecided");
  EXPECT_EQ(judge("numeric", "a lot", "42"), "undecided");
}

TEST(JudgeRules, AutoPicksByTheReference) {
  EXPECT_EQ(judge("auto", "Paris", "Paris"), "right by exact");
  EXPECT_EQ(judge("auto", "(B)", "The answer is B."), "right by choice");
  EXPECT_EQ(judge("auto", "yes", "No, it does not."), "wrong by yesno");
  EXPECT_EQ(judge("auto", "是", "是的。"), "right by yesno");
  EXPECT_EQ(judge("auto", "3.5%", "3.5 percent"), "right by numeric");
  EXPECT_EQ(judge("auto", "120 mg", "100 mg"), "wrong by numeric");
  EXPECT_EQ(judge("auto", "Paris", "The capital is Paris."), "right by normalized");
  EXPECT_EQ(judge("auto", "Paris", "Lyon"), "wrong by normalized");
  EXPECT_EQ(judge("auto", "反应性关节炎", "考虑为反应性关节炎"), "right by normalized");
  // Undecidable inside a rule stays undecidable.
  EXPECT_EQ(judge("auto", "B", "A or B"), "undecided");
  EXPECT_EQ(judge("auto", "maybe", "The evidence points both ways."), "undecided");
  // Free-text references (more than six words) need a model unless they match after normalization.
  EXPECT_EQ(judge("auto", kMedquadAnswer, "Wet AMD is caused by abnormal blood vessels."), "undecided");
  EXPECT_EQ(judge("auto", kMedquadAnswer, std::string(kMedquadAnswer) + " "), "right by exact");
  EXPECT_EQ(judge("auto", "The macula is part of the retina.", "the macula is part of the retina"),
            "right by normalized");
  EXPECT_EQ(judge("auto", kHuatuoAnswer, "建议手术治疗。"), "undecided");
  // An empty answer is wrong; an empty reference cannot decide anything.
  EXPECT_EQ(judge("auto", "Paris", "   "), "wrong by normalized");
  EXPECT_EQ(judge("yesno", "yes", ""), "wrong by yesno");
  EXPECT_EQ(judge("auto", "", "Paris"), "undecided");
}

TEST(JudgeRules, BadSettingsAreInputErrors) {
  JudgeSettings settings;
  settings.rule = "fuzzy";
  EXPECT_THROW(rule_judge(settings, "a", "a"), InputError);
  settings.rule = "numeric";
  settings.numeric_tolerance = -1;
  EXPECT_THROW(rule_judge(settings, "1", "1"), InputError);
}

}  // namespace
}  // namespace slearn
