// detect_language: Chinese when Han characters are at least a fifth of the letters.
#include "judge/judge_text.hpp"
#include "slearn/judge.hpp"
#include "tokenizer/unicode.hpp"

namespace slearn {

JudgeLanguage detect_language(std::string_view text) {
  const std::string valid = judge_detail::valid_utf8(text);
  std::size_t letters = 0;
  std::size_t han = 0;
  for (std::size_t i = 0; i < valid.size();) {
    const char32_t cp = tok::next_codepoint(valid, i);
    if (!judge_detail::is_letter(cp)) continue;
    ++letters;
    if (judge_detail::is_han(cp)) ++han;
  }
  // An English word takes about five letters and a Chinese word one or two characters, so Han characters
  // making up a fifth of the letters means roughly half of the words are Chinese.
  return letters > 0 && han * 5 >= letters ? JudgeLanguage::Chinese : JudgeLanguage::English;
}

}  // namespace slearn
