// Domain SFT data sets (include/slearn/dataset.hpp).
//
// The file is read whole. A walker cuts it into record texts (the lines of JSONL, or the elements of a JSON
// array, found by a scan that tracks strings and nesting without parsing), and each text is then checked on
// its own: UTF-8, JSON, an object, the fields of the format, the id. A record that fails gets a reason; the
// reason is thrown (on_bad_record: error) or kept in Dataset::bad (skip). Damage to the array itself (it is
// never closed, or text follows it) cannot be skipped and is always an error.
//
// Records are walked lazily, so reading stops at max_records (or at the first bad record under error) without
// looking at the rest of the file. One thread: JSON parsing is nearly all of the time (MedQuAD's 24 MB take
// about 0.2 s of CPU), and parsing on OpenMP threads gained nothing on a loaded machine while spinning
// threads cost up to half as much again.
#include "slearn/dataset.hpp"

#include <algorithm>
#include <cstring>
#include <fstream>
#include <optional>
#include <string_view>
#include <unordered_map>
#include <unordered_set>

#include "slearn/error.hpp"
#include "tokenizer/unicode.hpp"

namespace slearn {
namespace {

using nlohmann::json;

enum class Format { Auto, Qa, Alpaca, ShareGpt };

const char* format_name(Format format) {
  switch (format) {
    case Format::Qa: return "qa";
    case Format::Alpaca: return "alpaca";
    case Format::ShareGpt: return "sharegpt";
    case Format::Auto: break;
  }
  return "auto";
}

// One record's text as the walker found it.
struct RawRecord {
  std::size_t number = 0;     // 1-based line (JSONL) or array element
  std::size_t file_line = 0;  // the line of the file where the text starts
  std::size_t offset = 0;     // byte offset in the file of the text's first byte
  std::string_view text;
};

// A record on its way through the reader.
struct Item {
  RawRecord raw;
  json object;
  std::optional<std::string> reason;  // why it is bad
  DatasetRecord record;               // question, answer, id (the rest is filled when it is kept)
};

bool is_json_space(char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r'; }

// A record nesting arrays and objects deeper than this is bad: json::dump (records are written back) and
// json copies recurse, so a deeper one could overflow the stack.
constexpr std::size_t kMaxNesting = 512;

// True when the JSON text nests arrays and objects deeper than kMaxNesting (brackets in strings do not count).
bool nests_too_deep(std::string_view text) {
  // Cheap first: nearly every record holds fewer brackets than that in all.
  if (static_cast<std::size_t>(std::count(text.begin(), text.end(), '[') + std::count(text.begin(), text.end(), '{')) <=
      kMaxNesting)
    return false;
  std::size_t depth = 0;
  bool in_string = false;
  for (std::size_t i = 0; i < text.size(); ++i) {
    const char c = text[i];
    if (in_string) {
      if (c == '\\') ++i;
      else if (c == '"') in_string = false;
    } else if (c == '"') {
      in_string = true;
    } else if (c == '[' || c == '{') {
      if (++depth > kMaxNesting) return true;
    } else if ((c == ']' || c == '}') && depth > 0) {
      --depth;
    }
  }
  return false;
}

// Offset of the first byte that is not part of well-formed UTF-8 (no overlong forms, no surrogates), or nothing.
std::optional<std::size_t> first_invalid_utf8(std::string_view s) {
  std::size_t i = 0;
  const std::size_t n = s.size();
  while (i < n) {
    // ASCII runs are most of English text: skip them eight bytes at a time.
    while (i + 8 <= n) {
      std::uint64_t word;
      std::memcpy(&word, s.data() + i, 8);
      if (word & 0x8080808080808080ull) break;
      i += 8;
    }
    if (i >= n) break;
    const auto b0 = static_cast<unsigned char>(s[i]);
    if (b0 < 0x80) {
      ++i;
      continue;
    }
    std::size_t length = 0;
    char32_t cp = 0;
    char32_t min = 0;
    if (b0 >= 0xC2 && b0 <= 0xDF) {
      length = 2, cp = b0 & 0x1Fu, min = 0x80;
    } else if (b0 >= 0xE0 && b0 <= 0xEF) {
      length = 3, cp = b0 & 0x0Fu, min = 0x800;
    } else if (b0 >= 0xF0 && b0 <= 0xF4) {
      length = 4, cp = b0 & 0x07u, min = 0x10000;
    } else {
      return i;
    }
    if (i + length > n) return i;
    for (std::size_t k = 1; k < length; ++k) {
      const auto b = static_cast<unsigned char>(s[i + k]);
      if ((b & 0xC0u) != 0x80u) return i;
      cp = (cp << 6) | (b & 0x3Fu);
    }
    if (cp < min || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) return i;
    i += length;
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

std::string hex_byte(unsigned char b) {
  static const char* const digits = "0123456789ABCDEF";
  return std::string("0x") + digits[b >> 4] + digits[b & 0xF];
}

const std::string kNotUtf8Hint =
    "; the data file is not UTF-8 text (convert one in another encoding, such as GB18030/GBK or Latin-1, to UTF-8, "
    "e.g. with iconv -f GB18030 -t UTF-8)";

// JSON leaves repeated keys to the reader, and nlohmann keeps the last one silently: a record with two
// "question"s (a botched merge of two files, say) would train on one of them without a word. As a parser
// callback, this tracks the keys of every open object (arrays hold no keys; objects inside them get frames of
// their own) and stops the parse at the first key given twice in one object.
class DuplicateKeyCheck {
 public:
  struct Found {
    std::string reason;
  };

  void reset() { open_ = 0; }  // before each record (a parse stopped by Found leaves objects open)

  bool operator()(int, json::parse_event_t event, json& parsed) {
    if (event == json::parse_event_t::object_start) {
      if (open_ == frames_.size()) frames_.emplace_back();
      Frame& frame = frames_[open_++];
      frame.keys.clear();
      frame.last_key.clear();
    } else if (event == json::parse_event_t::object_end) {
      if (open_ > 0) --open_;
    } else if (event == json::parse_event_t::key && open_ > 0) {
      Frame& frame = frames_[open_ - 1];
      const auto& key = parsed.get_ref<const std::string&>();
      if (!frame.keys.insert(key).second) throw Found{reason(key)};
      frame.last_key = key;
    }
    return true;
  }

 private:
  struct Frame {
    std::unordered_set<std::string> keys;
    std::string last_key;  // the key whose value is being read: names a nested object in messages
  };

  std::string reason(const std::string& key) const {
    std::string text = "duplicate key " + json(key).dump();
    if (open_ == 1) return text + " (a key may appear once in a record; which of its values is meant is unknown)";
    std::string path;
    for (std::size_t i = 0; i + 1 < open_; ++i) path += (i > 0 ? "." : "") + frames_[i].last_key;
    return text + " in an object inside " + json(path).dump() + " (a key may appear once in an object)";
  }

  std::vector<Frame> frames_;  // the open objects first; the vector keeps closed ones' sets for reuse
  std::size_t open_ = 0;
};

class Reader {
 public:
  explicit Reader(const DatasetSettings& settings) : settings_(settings), path_(settings.path) {}

  Dataset read() {
    check_settings();
    load_file();
    std::string_view content(text_);
    content.remove_prefix(content_start_);
    const std::size_t first = content.find_first_not_of(" \t\n\r");
    array_ = first != std::string_view::npos && content[first] == '[';
    pos_ = content_start_;
    RawRecord raw;
    while (next(raw) && take(raw)) {
    }
    if (dataset_.records.empty()) {
      if (dataset_.bad.empty()) throw InputError(path_ + ": the data file holds no records");
      const BadRecord& first_bad = dataset_.bad.front();
      std::string message = path_ + ": no usable records: all " + std::to_string(dataset_.bad.size()) +
                            (dataset_.bad.size() == 1 ? " was" : " were") + " bad (first: " +
                            (array_ ? "array element " : "line ") + std::to_string(first_bad.line) + ": " +
                            first_bad.reason + ")";
      if (first_bad.reason.rfind("invalid UTF-8", 0) == 0) message += kNotUtf8Hint;
      throw InputError(message);
    }
    dataset_.format = format_name(format_);
    dataset_.json_array = array_;
    return std::move(dataset_);
  }

 private:
  void check_settings() {
    const std::string& f = settings_.format;
    if (f == "auto") {
      format_ = Format::Auto;
    } else if (f == "qa") {
      format_ = Format::Qa;
    } else if (f == "alpaca") {
      format_ = Format::Alpaca;
    } else if (f == "sharegpt") {
      format_ = Format::ShareGpt;
    } else {
      throw InputError("unknown data set format \"" + f + "\" (expected auto, qa, alpaca or sharegpt)");
    }
    if (settings_.on_bad_record == "skip") {
      skip_ = true;
    } else if (settings_.on_bad_record != "error") {
      throw InputError("unknown on_bad_record \"" + settings_.on_bad_record + "\" (expected error or skip)");
    }
    if (settings_.max_records == 0 || settings_.max_records < -1)
      throw InputError("max_records must be positive, or -1 for all records, got " +
                       std::to_string(settings_.max_records));
    const std::pair<const char*, const std::string*> required[] = {
        {"question_field", &settings_.question_field},       {"answer_field", &settings_.answer_field},
        {"instruction_field", &settings_.instruction_field}, {"output_field", &settings_.output_field},
        {"conversations_field", &settings_.conversations_field}};
    for (const auto& [key, value] : required)
      if (value->empty()) throw InputError(std::string(key) + " must not be empty");
    if (path_.empty()) throw InputError("the data set path is empty");
  }

  void load_file() {
    std::error_code error;
    if (!std::filesystem::exists(path_, error)) {
      // A path whose links go round in a circle exists as far as the user can see: say what is wrong with it.
      if (error == std::errc::too_many_symbolic_link_levels)
        throw InputError(path_ + ": a symlink loop (too many levels of symbolic links) where the data file was "
                                 "expected");
      std::string message = path_ + ": the data file does not exist";
      if (std::filesystem::path(path_).is_relative()) {
        const auto cwd = std::filesystem::current_path(error);
        message += " (a relative path is relative to the working directory" +
                   (error ? std::string() : ", " + cwd.string()) + ")";
      }
      throw InputError(message);
    }
    if (!std::filesystem::is_regular_file(path_, error)) throw InputError(path_ + ": the data file is not a regular file");
    std::ifstream in(path_, std::ios::binary);
    if (!in) throw InputError(path_ + ": cannot open the data file");
    in.seekg(0, std::ios::end);
    const std::streamoff size = in.tellg();
    if (size < 0) throw InputError(path_ + ": cannot read the data file");
    in.seekg(0, std::ios::beg);
    text_.resize(static_cast<std::size_t>(size));
    if (size > 0 && !in.read(text_.data(), static_cast<std::streamsize>(size)))
      throw InputError(path_ + ": cannot read the data file");
    if (text_.compare(0, 3, "\xEF\xBB\xBF") == 0) content_start_ = 3;
  }

  // The next record's text, or false at the end of the file.
  bool next(RawRecord& raw) { return array_ ? next_element(raw) : next_line(raw); }

  // Lines of JSONL: a '\r' before each '\n' is dropped; lines of ASCII white space are skipped.
  bool next_line(RawRecord& raw) {
    const std::size_t n = text_.size();
    while (pos_ < n) {
      ++line_;
      const void* newline = std::memchr(text_.data() + pos_, '\n', n - pos_);
      const std::size_t end = newline ? static_cast<std::size_t>(static_cast<const char*>(newline) - text_.data()) : n;
      std::string_view view(text_.data() + pos_, end - pos_);
      const std::size_t start = pos_;
      pos_ = end + 1;
      if (!view.empty() && view.back() == '\r') view.remove_suffix(1);
      if (view.find_first_not_of(" \t\r\f\v") != std::string_view::npos) {
        raw = RawRecord{line_, line_, start, view};
        return true;
      }
    }
    return false;
  }

  // The elements of a JSON array, each cut at the ',' or ']' that follows it outside strings and brackets.
  bool next_element(RawRecord& raw) {
    const std::string_view text(text_);
    const std::size_t n = text.size();
    const auto skip_space = [&] {
      for (; pos_ < n && is_json_space(text[pos_]); ++pos_)
        if (text[pos_] == '\n') ++line_;
    };
    if (elements_ == 0 && !closed_) {  // the opening '['
      line_ = 1;
      skip_space();
      ++pos_;
      skip_space();
      if (pos_ < n && text[pos_] == ']') {
        ++pos_;
        closed_ = true;
      }
    }
    if (closed_) {
      skip_space();
      if (pos_ < n) array_error(line_, "unexpected text after the end of the JSON array");
      return false;
    }
    skip_space();
    const std::size_t start = pos_;
    const std::size_t start_line = line_;
    std::size_t depth = 0;
    bool in_string = false;
    for (; pos_ < n; ++pos_) {
      const char c = text[pos_];
      if (c == '\n') ++line_;
      if (in_string) {
        if (c == '\\' && pos_ + 1 < n) {
          ++pos_;
          if (text[pos_] == '\n') ++line_;
        } else if (c == '"') {
          in_string = false;
        }
      } else if (c == '"') {
        in_string = true;
      } else if (c == '[' || c == '{') {
        ++depth;
      } else if (c == '}') {
        if (depth > 0) --depth;  // a stray '}' stays in the element, which then fails to parse
      } else if (c == ']') {
        if (depth == 0) break;
        --depth;
      } else if (c == ',' && depth == 0) {
        break;
      }
    }
    ++elements_;
    if (pos_ >= n)
      array_error(start_line, "the JSON array is not closed: the file ends inside array element " +
                                  std::to_string(elements_) + " (an unterminated string, or a missing ']' or '}')");
    std::string_view element = text.substr(start, pos_ - start);
    while (!element.empty() && is_json_space(element.back())) element.remove_suffix(1);
    closed_ = text[pos_++] == ']';
    raw = RawRecord{elements_, start_line, start, element};
    return true;
  }

  // Damage to the array itself. A file that is not UTF-8 can look like one, so that is said instead.
  [[noreturn]] void array_error(std::size_t line, const std::string& reason) const {
    if (const auto bad = first_invalid_utf8(std::string_view(text_).substr(content_start_))) {
      const std::size_t offset = content_start_ + *bad;
      const std::size_t bad_line =
          1 + static_cast<std::size_t>(std::count(text_.begin(), text_.begin() + static_cast<std::ptrdiff_t>(offset), '\n'));
      throw InputError(path_ + ":" + std::to_string(bad_line) + ": " + utf8_reason(offset) + kNotUtf8Hint);
    }
    throw InputError(path_ + ":" + std::to_string(line) + ": " + reason);
  }

  // Column (1-based, in bytes) of a byte of the file within its line.
  std::size_t column_of(std::size_t offset) const {
    std::size_t start = content_start_;
    if (offset > start) {
      const std::size_t newline = std::string_view(text_).rfind('\n', offset - 1);
      if (newline != std::string_view::npos && newline >= start) start = newline + 1;
    }
    return offset - start + 1;
  }

  std::string utf8_reason(std::size_t offset) const {
    return "invalid UTF-8 (byte " + hex_byte(static_cast<unsigned char>(text_[offset])) + " at column " +
           std::to_string(column_of(offset)) + ", byte offset " + std::to_string(offset) + " in the file)";
  }

  // "column C: what" (JSONL) or "line L, column C: what" (an element of an array), from nlohmann's error.
  std::string json_reason(const RawRecord& raw, const json::parse_error& e) const {
    std::string what = e.what();
    // "[json.exception.parse_error.101] parse error at line 1, column 5: syntax error ..." -> "syntax error ..."
    if (const auto bracket = what.find("] "); bracket != std::string::npos) what.erase(0, bracket + 2);
    if (const auto colon = what.find(": "); colon != std::string::npos) what.erase(0, colon + 2);
    const std::size_t consumed = std::min<std::size_t>(e.byte > 0 ? e.byte - 1 : 0, raw.text.size());
    const std::size_t offset = raw.offset + consumed;
    std::string where = "column " + std::to_string(column_of(offset));
    if (array_) {
      const auto begin = text_.begin() + static_cast<std::ptrdiff_t>(raw.offset);
      const auto line =
          raw.file_line + static_cast<std::size_t>(std::count(begin, begin + static_cast<std::ptrdiff_t>(consumed), '\n'));
      where = "line " + std::to_string(line) + ", " + where;
    }
    return "invalid JSON (" + where + ": " + what + ")";
  }

  std::string location(const RawRecord& raw) const {
    std::string where = path_ + ":" + std::to_string(raw.file_line) + ": ";
    if (array_) where += "array element " + std::to_string(raw.number) + ": ";
    return where;
  }

  // Deals with a record; false when max_records is reached.
  bool take(const RawRecord& raw) {
    Item item{raw, {}, {}, {}};
    parse(item);
    if (!item.reason && format_ == Format::Auto) {
      format_ = detect(item.object);
      format_from_ = raw.number;
    }
    if (!item.reason) extract(item);
    if (!item.reason) {
      const auto [it, inserted] = id_numbers_.emplace(item.record.id, raw.number);
      if (!inserted)
        item.reason = "duplicate id \"" + item.record.id + "\" (also " + (array_ ? "array element " : "line ") +
                      std::to_string(it->second) + ")";
    }
    if (item.reason) {
      bad(raw, std::move(*item.reason));
      return true;
    }
    item.record.line = raw.number;
    item.record.original = std::move(item.object);
    dataset_.records.push_back(std::move(item.record));
    return settings_.max_records < 0 || dataset_.records.size() < static_cast<std::size_t>(settings_.max_records);
  }

  void bad(const RawRecord& raw, std::string reason) {
    if (!skip_) {
      std::string message = location(raw) + reason;
      if (reason.rfind("invalid UTF-8", 0) == 0) message += kNotUtf8Hint;
      if (settings_.format == "auto" && reason.rfind("missing ", 0) == 0)
        message += " (format \"" + std::string(format_name(format_)) + "\" was detected from the fields of " +
                   (array_ ? "array element " : "line ") + std::to_string(format_from_) + ")";
      throw InputError(message);
    }
    dataset_.bad.push_back(BadRecord{raw.number, std::move(reason)});
  }

  // UTF-8, JSON, an object.
  void parse(Item& item) const {
    const RawRecord& raw = item.raw;
    if (const auto bad = first_invalid_utf8(raw.text)) {
      item.reason = utf8_reason(raw.offset + *bad);
      return;
    }
    if (raw.text.empty()) {
      item.reason = "invalid JSON (an empty array element)";
      return;
    }
    if (nests_too_deep(raw.text)) {
      item.reason = "JSON arrays and objects nested deeper than " + std::to_string(kMaxNesting) + " levels";
      return;
    }
    try {
      duplicates_.reset();
      item.object = json::parse(raw.text.data(), raw.text.data() + raw.text.size(),
                                [this](int depth, json::parse_event_t event, json& parsed) {
                                  return duplicates_(depth, event, parsed);
                                });
    } catch (const DuplicateKeyCheck::Found& e) {
      item.reason = e.reason;
      return;
    } catch (const json::parse_error& e) {
      item.reason = json_reason(raw, e);
      return;
    } catch (const json::exception& e) {  // e.g. a number too large for a double
      std::string what = e.what();
      if (const auto bracket = what.find("] "); bracket != std::string::npos) what.erase(0, bracket + 2);
      item.reason = "invalid JSON (" + what + ")";
      return;
    }
    if (!item.object.is_object()) item.reason = "expected a JSON object, got " + json_kind(item.object);
  }

  // The fields of the format and the id.
  void extract(Item& item) const {
    switch (format_) {
      case Format::Qa: item.reason = read_qa(item.object, item.record); break;
      case Format::Alpaca: item.reason = read_alpaca(item.object, item.record); break;
      case Format::ShareGpt: item.reason = read_sharegpt(item.object, item.record); break;
      case Format::Auto: break;
    }
    if (!item.reason) item.reason = read_id(item.object, item.raw.number, item.record.id);
  }

  Format detect(const json& object) const {
    if (object.contains(settings_.conversations_field)) return Format::ShareGpt;
    if (object.contains(settings_.instruction_field) && object.contains(settings_.output_field)) return Format::Alpaca;
    return Format::Qa;
  }

  // A required string field: `role` names it in messages ("question field \"q\"").
  static std::optional<std::string> text_field(const json& object, const std::string& name, const char* role,
                                               const char* setting, std::string& out) {
    const auto it = object.find(name);
    if (it == object.end())
      return "missing " + std::string(role) + " field \"" + name + "\" (" + setting + ")";
    if (!it->is_string()) return std::string(role) + " field \"" + name + "\" must be a string, got " + json_kind(*it);
    out = it->get<std::string>();
    if (is_blank(out)) return std::string(role) + " field \"" + name + "\" is empty";
    return std::nullopt;
  }

  std::optional<std::string> read_qa(const json& object, DatasetRecord& record) const {
    if (auto reason = text_field(object, settings_.question_field, "question", "question_field", record.question))
      return reason;
    return text_field(object, settings_.answer_field, "answer", "answer_field", record.answer);
  }

  // question = instruction, plus "\n" + input when the input is not blank; answer = output.
  std::optional<std::string> read_alpaca(const json& object, DatasetRecord& record) const {
    if (auto reason =
            text_field(object, settings_.instruction_field, "instruction", "instruction_field", record.question))
      return reason;
    if (!settings_.input_field.empty()) {
      const auto it = object.find(settings_.input_field);
      if (it != object.end() && !it->is_null()) {
        if (!it->is_string())
          return "input field \"" + settings_.input_field + "\" must be a string, got " + json_kind(*it);
        const auto& input = it->get_ref<const std::string&>();
        if (!is_blank(input)) record.question += "\n" + input;
      }
    }
    return text_field(object, settings_.output_field, "output", "output_field", record.answer);
  }

  // question = the first human/user turn, answer = the first gpt/assistant turn after it; system turns are
  // ignored. Turns are {"from", "value"} or {"role", "content"}; those after the answer are not looked at.
  std::optional<std::string> read_sharegpt(const json& object, DatasetRecord& record) const {
    const std::string& field = settings_.conversations_field;
    const auto conversations = object.find(field);
    if (conversations == object.end())
      return "missing conversations field \"" + field + "\" (conversations_field)";
    if (!conversations->is_array())
      return "conversations field \"" + field + "\" must be an array, got " + json_kind(*conversations);
    std::optional<std::size_t> question_turn;
    for (std::size_t t = 0; t < conversations->size(); ++t) {
      const json& turn = (*conversations)[t];
      const std::string where = field + "[" + std::to_string(t) + "]: ";
      if (!turn.is_object()) return where + "expected an object, got " + json_kind(turn);
      const char* role_key = "from";
      auto role = turn.find(role_key);
      if (role == turn.end()) role = turn.find(role_key = "role");
      if (role == turn.end()) return where + "missing \"from\" (or \"role\")";
      if (!role->is_string()) return where + "\"" + role_key + "\" must be a string, got " + json_kind(*role);
      const auto& name = role->get_ref<const std::string&>();
      if (name == "system") continue;
      const bool human = name == "human" || name == "user";
      const bool gpt = name == "gpt" || name == "assistant";
      if (!human && !gpt)
        return where + "unknown role \"" + name + "\" (expected human/user, gpt/assistant or system)";
      if (gpt != question_turn.has_value()) continue;  // a reply before the question, or a second question
      const char* text_key = "value";
      auto text = turn.find(text_key);
      if (text == turn.end()) text = turn.find(text_key = "content");
      if (text == turn.end()) return where + "missing \"value\" (or \"content\")";
      if (!text->is_string()) return where + "\"" + text_key + "\" must be a string, got " + json_kind(*text);
      std::string& out = human ? record.question : record.answer;
      out = text->get<std::string>();
      if (is_blank(out))
        return where + (human ? "empty question" : "empty answer") + " (\"" + text_key + "\" is blank)";
      if (gpt) return std::nullopt;
      question_turn = t;
    }
    if (!question_turn) return "no human/user turn in \"" + field + "\"";
    return "no gpt/assistant turn after the question (" + field + "[" + std::to_string(*question_turn) + "])";
  }

  // The id field (a string or an integer; null or absent: the record's number).
  std::optional<std::string> read_id(const json& object, std::size_t number, std::string& id) const {
    const std::string& name = settings_.id_field;
    const auto it = name.empty() ? object.end() : object.find(name);
    if (it == object.end() || it->is_null()) {
      id = std::to_string(number);
    } else if (it->is_string()) {
      id = it->get<std::string>();
      if (id.empty()) return "id field \"" + name + "\" is empty";
    } else if (it->is_number_integer()) {
      id = it->dump();
    } else {
      return "id field \"" + name + "\" must be a string or an integer, got " + json_kind(*it);
    }
    return std::nullopt;
  }

  const DatasetSettings& settings_;
  const std::string& path_;
  Format format_ = Format::Auto;
  std::size_t format_from_ = 0;  // the record auto detection looked at
  bool skip_ = false;
  bool array_ = false;
  std::string text_;
  std::size_t content_start_ = 0;  // after a UTF-8 byte-order mark
  // The walk: where it is, the line there; for an array, the elements so far and whether ']' was seen.
  std::size_t pos_ = 0;
  std::size_t line_ = 0;
  std::size_t elements_ = 0;
  bool closed_ = false;
  Dataset dataset_;
  std::unordered_map<std::string, std::size_t> id_numbers_;  // id -> record number
  mutable DuplicateKeyCheck duplicates_;  // kept across records: its key sets are reused, not reallocated
};

}  // namespace

Dataset load_dataset(const DatasetSettings& settings) { return Reader(settings).read(); }

}  // namespace slearn
