// The built-in "expert teacher" judge templates and render_judge_prompt.
#include <array>
#include <string>
#include <vector>

#include "slearn/error.hpp"
#include "slearn/judge.hpp"

namespace slearn {
namespace {

// Both templates end by asking for the two lines parse_judge_reply reads (docs/judging.md, "The reply
// form"). The format lines show angle-bracket stand-ins rather than real values, so a reply that quotes the
// instructions back is never mistaken for a verdict.
constexpr std::string_view kEnglishTemplate =
    R"(You are an experienced teacher and an expert in the subject of the question below. A student has answered it. Mark the student's answer by comparing it with the reference answer.

### Question
{question}

### Reference answer
{reference}

### Student's answer
{answer}

### How to mark
Think it through step by step before you decide:
1. Consistency: which key points of the reference answer does the student's answer cover, which does it leave out, and does anything in it contradict the reference answer?
2. Accuracy: check the facts, numbers, names and conclusions the student gives against the reference answer. Judge the meaning rather than the wording. An answer that says the same thing in other words is correct, and extra detail is acceptable as long as it is not wrong.
3. Give a score from 0 to 10 (0 means wrong or off the point, 5 means partly right but missing or misstating something essential, 10 means fully correct and consistent with the reference answer) and explain briefly why you chose it.
4. Decide whether the student's answer is incorrect. It is incorrect when it contradicts the reference answer, gets an essential fact wrong or misses the main point. It is not incorrect when it agrees with the reference answer in substance.

Write your reasoning first. Then end your reply with exactly the two lines below, with Yes on the second line when the student's answer is wrong and No when it is right. Write nothing after them.
Score: <whole number from 0 to 10>
Incorrect: <Yes or No>
)";

constexpr std::string_view kChineseTemplate =
    R"(你是一位经验丰富的教师，也是下面这道题所属领域的专家。一名学生回答了这道题，请对照参考答案批改学生的回答。

### 题目
{question}

### 参考答案
{reference}

### 学生的回答
{answer}

### 批改方法
请先逐步分析，再下结论：
1. 一致性：学生的回答涵盖了参考答案的哪些要点，遗漏了哪些？其中有没有与参考答案相矛盾的内容？
2. 准确性：对照参考答案，逐项核对学生回答中的事实、数字、名称和结论。请根据意思而不是措辞来判断：换一种说法表达相同意思的回答是正确的；补充的细节只要没有错误，就不算问题。
3. 给出 0 到 10 的分数（0 分表示错误或答非所问，5 分表示部分正确但遗漏或说错了关键内容，10 分表示完全正确且与参考答案一致），并简要说明打分理由。
4. 判断学生的回答是否错误。与参考答案相矛盾、关键事实有误或没有答到要点时，属于错误；与参考答案实质一致时，不属于错误。

请先写出分析过程，最后严格用下面两行结束回复，之后不要再写任何内容。两行的标签保持英文；学生的回答错误时第二行填 Yes，正确时填 No。
Score: <0 到 10 的整数>
Incorrect: <Yes 或 No>
)";

constexpr std::array<std::string_view, 3> kPlaceholders = {"question", "reference", "answer"};

bool is_identifier(std::string_view name) {
  if (name.empty()) return false;
  for (std::size_t i = 0; i < name.size(); ++i) {
    const char c = name[i];
    const bool alpha = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_';
    if (!alpha && !(i > 0 && c >= '0' && c <= '9')) return false;
  }
  return true;
}

std::string join_names(const std::vector<std::string>& names) {
  std::string out;
  for (std::size_t i = 0; i < names.size(); ++i) {
    if (i > 0) out += i + 1 == names.size() ? " and " : ", ";
    out += "{" + names[i] + "}";
  }
  return out;
}

}  // namespace

std::string_view default_judge_template(JudgeLanguage language) {
  return language == JudgeLanguage::Chinese ? kChineseTemplate : kEnglishTemplate;
}

std::string render_judge_prompt(std::string_view judge_template, std::string_view question,
                                std::string_view reference, std::string_view answer) {
  const std::array<std::string_view, 3> values = {question, reference, answer};
  std::array<bool, 3> used = {false, false, false};
  std::vector<std::string> unknown;
  std::string out;
  out.reserve(judge_template.size() + question.size() + reference.size() + answer.size());

  for (std::size_t i = 0; i < judge_template.size();) {
    const char c = judge_template[i];
    if (c == '}') {
      if (i + 1 < judge_template.size() && judge_template[i + 1] == '}') {
        out += '}';
        i += 2;
        continue;
      }
      throw InputError("judge template: a single '}' at byte " + std::to_string(i) +
                       "; write '}}' for a literal brace");
    }
    if (c != '{') {
      out += c;
      ++i;
      continue;
    }
    if (i + 1 < judge_template.size() && judge_template[i + 1] == '{') {
      out += '{';
      i += 2;
      continue;
    }
    const std::size_t close = judge_template.find('}', i + 1);
    const std::string_view name =
        close == std::string_view::npos ? std::string_view{} : judge_template.substr(i + 1, close - i - 1);
    if (!is_identifier(name))
      throw InputError("judge template: a '{' at byte " + std::to_string(i) +
                       " does not start a placeholder; write '{{' for a literal brace");
    bool known = false;
    for (std::size_t k = 0; k < kPlaceholders.size(); ++k) {
      if (name != kPlaceholders[k]) continue;
      out += values[k];
      used[k] = true;
      known = true;
    }
    if (!known) {
      const std::string n(name);
      bool listed = false;
      for (const std::string& u : unknown) listed = listed || u == n;
      if (!listed) unknown.push_back(n);
    }
    i = close + 1;
  }

  std::vector<std::string> missing;
  for (std::size_t k = 0; k < kPlaceholders.size(); ++k)
    if (!used[k]) missing.emplace_back(kPlaceholders[k]);
  if (!unknown.empty() || !missing.empty()) {
    std::string message = "judge template:";
    if (!unknown.empty())
      message += std::string(" unknown placeholder") + (unknown.size() > 1 ? "s " : " ") + join_names(unknown) + ";";
    if (!missing.empty())
      message += std::string(" missing placeholder") + (missing.size() > 1 ? "s " : " ") + join_names(missing) + ";";
    message += " a template must use each of {question}, {reference} and {answer} and no other placeholder "
               "(write '{{' and '}}' for literal braces)";
    throw InputError(message);
  }
  return out;
}

}  // namespace slearn
