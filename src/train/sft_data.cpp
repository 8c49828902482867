// SFT data: JSONL question/answer records and the token sequences built from them.
//
// The reader is split in two: read_lines() walks the file's lines, and parse_qa_line() turns one line into a
// record or a reason it cannot. load_qa_records() throws on the first reason; other input formats and a
// "skip bad records" policy slot in at those two points.
#include "slearn/sft_data.hpp"

#include <nlohmann/json.hpp>

#include <algorithm>
#include <fstream>
#include <functional>
#include <optional>
#include <unordered_map>
#include <variant>

#include "slearn/error.hpp"
#include "tokenizer/unicode.hpp"

namespace slearn {
namespace {

using nlohmann::json;

constexpr TokenId kNoTarget = -100;

// Offset of the first byte that is not part of valid UTF-8, or nothing.
std::optional<std::size_t> first_invalid_utf8(std::string_view s) {
  std::size_t i = 0;
  while (i < s.size()) {
    const auto b0 = static_cast<unsigned char>(s[i]);
    std::size_t n = 0;
    char32_t cp = 0;
    char32_t min = 0;
    if (b0 < 0x80) {
      ++i;
      continue;
    } else if (b0 >= 0xC2 && b0 <= 0xDF) {
      n = 2, cp = b0 & 0x1Fu, min = 0x80;
    } else if (b0 >= 0xE0 && b0 <= 0xEF) {
      n = 3, cp = b0 & 0x0Fu, min = 0x800;
    } else if (b0 >= 0xF0 && b0 <= 0xF4) {
      n = 4, cp = b0 & 0x07u, min = 0x10000;
    } else {
      return i;
    }
    if (i + n > s.size()) return i;
    for (std::size_t k = 1; k < n; ++k) {
      const auto b = static_cast<unsigned char>(s[i + k]);
      if ((b & 0xC0u) != 0x80u) return i;
      cp = (cp << 6) | (b & 0x3Fu);
    }
    if (cp < min || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) return i;
    i += n;
  }
  return std::nullopt;
}

// True when the (valid UTF-8) text holds nothing but Unicode white space.
bool is_blank(std::string_view text) {
  std::size_t i = 0;
  while (i < text.size()) {
    if (!tok::is_unicode_whitespace(tok::next_codepoint(text, i))) return false;
  }
  return true;
}

std::string json_kind(const json& value) {
  if (value.is_null()) return "null";
  if (value.is_boolean()) return "a boolean";
  if (value.is_number()) return "a number";
  if (value.is_array()) return "an array";
  if (value.is_object()) return "an object";
  return "a string";
}

// Calls `handle(line_number, text)` for each line that is not blank; a UTF-8 byte-order mark at the start
// of the file and a '\r' before each '\n' are dropped.
void read_lines(const std::string& path, const std::function<void(std::size_t, std::string_view)>& handle) {
  std::error_code error;
  if (!std::filesystem::exists(path, error))
    throw InputError(path + ": the data file does not exist (data.path is relative to the working directory)");
  if (!std::filesystem::is_regular_file(path, error)) throw InputError(path + ": the data file is not a regular file");
  std::ifstream in(path, std::ios::binary);
  if (!in) throw InputError(path + ": cannot open the data file");
  std::string text;
  std::size_t line = 0;
  while (std::getline(in, text)) {
    ++line;
    std::string_view view = text;
    if (line == 1 && view.substr(0, 3) == "\xEF\xBB\xBF") view.remove_prefix(3);
    if (!view.empty() && view.back() == '\r') view.remove_suffix(1);
    if (view.find_first_not_of(" \t\r\f\v") == std::string_view::npos) continue;
    handle(line, view);
  }
  if (in.bad()) throw InputError(path + ": cannot read the data file");
}

// A record, or why the line does not hold one (without the file:line prefix).
using ParsedLine = std::variant<QaRecord, std::string>;

ParsedLine parse_qa_line(std::string_view text, std::size_t line, const DataSettings& settings) {
  if (const auto bad = first_invalid_utf8(text))
    return "invalid UTF-8 (byte 0x" + [&] {
      static const char* const hex = "0123456789ABCDEF";
      const auto b = static_cast<unsigned char>(text[*bad]);
      return std::string{hex[b >> 4], hex[b & 0xF]};
    }() + " at column " + std::to_string(*bad + 1) + ")";
  json object;
  try {
    object = json::parse(text);
  } catch (const json::exception& e) {
    return std::string("invalid JSON (") + e.what() + ")";
  }
  if (!object.is_object()) return "expected a JSON object, got " + json_kind(object);

  QaRecord record;
  const auto text_field = [&](const std::string& name, const char* role, std::string& out) -> std::optional<std::string> {
    const auto it = object.find(name);
    if (it == object.end())
      return "missing " + std::string(role) + " field \"" + name + "\" (data." + role + "_field)";
    if (!it->is_string()) return std::string(role) + " field \"" + name + "\" must be a string, got " + json_kind(*it);
    out = it->get<std::string>();
    if (is_blank(out)) return std::string(role) + " field \"" + name + "\" is empty";
    return std::nullopt;
  };
  if (auto reason = text_field(settings.question_field, "question", record.question)) return *reason;
  if (auto reason = text_field(settings.answer_field, "answer", record.answer)) return *reason;

  const auto id = settings.id_field.empty() ? object.end() : object.find(settings.id_field);
  if (id == object.end() || id->is_null()) {
    record.id = std::to_string(line);
  } else if (id->is_string()) {
    record.id = id->get<std::string>();
    if (record.id.empty()) return "id field \"" + settings.id_field + "\" is empty";
  } else if (id->is_number_integer()) {
    record.id = id->dump();
  } else {
    return "id field \"" + settings.id_field + "\" must be a string or an integer, got " + json_kind(*id);
  }
  return record;
}

}  // namespace

std::vector<QaRecord> load_qa_records(const DataSettings& settings) {
  const std::string& path = settings.path;
  std::vector<QaRecord> records;
  std::unordered_map<std::string, std::size_t> id_lines;  // id -> line
  read_lines(path, [&](std::size_t line, std::string_view text) {
    const std::string where = path + ":" + std::to_string(line) + ": ";
    ParsedLine parsed = parse_qa_line(text, line, settings);
    if (auto* reason = std::get_if<std::string>(&parsed)) throw InputError(where + *reason);
    QaRecord& record = std::get<QaRecord>(parsed);
    const auto [it, inserted] = id_lines.emplace(record.id, line);
    if (!inserted)
      throw InputError(where + "duplicate id \"" + record.id + "\" (also on line " + std::to_string(it->second) + ")");
    records.push_back(std::move(record));
  });
  if (records.empty()) throw InputError(path + ": the data file holds no records");
  return records;
}

std::vector<TrainingExample> build_examples(const std::vector<QaRecord>& records, const Tokenizer& tokenizer,
                                            ChatFormat format, const DataSettings& settings, ExampleStats& stats) {
  if (settings.max_length < 2)
    throw InputError("data.max_length must be at least 2, got " + std::to_string(settings.max_length));
  const auto max_length = static_cast<std::size_t>(settings.max_length);
  const std::string end_token(chat_end_token(format));
  stats = ExampleStats{};

  std::vector<TrainingExample> examples;
  examples.reserve(records.size());
  for (std::size_t r = 0; r < records.size(); ++r) {
    const QaRecord& record = records[r];
    std::vector<ChatMessage> messages;
    if (!settings.system_prompt.empty()) messages.push_back({"system", settings.system_prompt});
    messages.push_back({"user", record.question});
    const std::vector<TokenId> prompt = tokenizer.encode(render_chat(format, messages, true), false);
    const std::vector<TokenId> answer = tokenizer.encode(record.answer + end_token, false);

    // No answer token left within max_length: nothing to learn the answer from.
    if (prompt.size() >= max_length) {
      ++stats.dropped_no_answer;
      continue;
    }
    TrainingExample example;
    example.record = r;
    example.tokens = prompt;
    example.tokens.insert(example.tokens.end(), answer.begin(), answer.end());
    if (example.tokens.size() > max_length) {
      example.tokens.resize(max_length);
      ++stats.truncated;
    }
    const std::size_t n = example.tokens.size();
    // Row i predicts tokens[i + 1]; it is learned from when that token is in the answer (or always, with
    // train_on_prompt). The last row has nothing to predict.
    const std::size_t first_learned = settings.train_on_prompt ? 1 : prompt.size();
    example.targets.assign(n, kNoTarget);
    for (std::size_t i = 0; i + 1 < n; ++i) {
      if (i + 1 >= first_learned) example.targets[i] = example.tokens[i + 1];
    }
    example.answer_tokens = static_cast<std::int64_t>(
        std::count_if(example.targets.begin(), example.targets.end(), [](TokenId t) { return t >= 0; }));
    ++stats.examples;
    stats.tokens += static_cast<std::int64_t>(n);
    stats.learned_tokens += example.answer_tokens;
    examples.push_back(std::move(example));
  }
  return examples;
}

}  // namespace slearn
