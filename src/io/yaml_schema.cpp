#include <sstream>
#include <fstream>
#include "io/yaml_schema.hpp"
#include "tokenizer/unicode.hpp"

#include <yaml-cpp/eventhandler.h>
#include <yaml-cpp/yaml.h>

#include <algorithm>
#include <charconv>
#include <cmath>
#include <optional>
#include <set>
#include <stdexcept>
#include <utility>

#include "slearn/error.hpp"

namespace slearn::yaml_schema {
namespace {

std::string quoted(const std::string& text) {
  std::string out = "\"";
  for (const char c : text) {
    if (c == '"' || c == '\\') {
      out += '\\';
      out += c;
    } else if (c == '\n') {
      out += "\\n";
    } else if (c == '\t') {
      out += "\\t";
    } else if (c == '\0') {
      out += "\\0";  // as YAML writes it: a raw NUL would end the message for whatever prints it
    } else if (static_cast<unsigned char>(c) < 0x20 || c == 0x7f) {
      static const char* const digits = "0123456789abcdef";
      out += "\\x";
      out += digits[static_cast<unsigned char>(c) >> 4];
      out += digits[static_cast<unsigned char>(c) & 0xF];
    } else {
      out += c;
    }
  }
  return out + "\"";
}

// A scalar as shown in messages, cut when long.
std::string shown(const std::string& text) {
  constexpr std::size_t kMax = 60;
  if (text.size() <= kMax) return quoted(text);
  std::size_t cut = kMax;
  while (cut > 0 && (static_cast<unsigned char>(text[cut]) & 0xC0u) == 0x80u) --cut;  // not inside a character
  return quoted(text.substr(0, cut) + "...");
}

std::string trim(const std::string& text) {
  const auto first = text.find_first_not_of(" \t\r\n");
  if (first == std::string::npos) return "";
  const auto last = text.find_last_not_of(" \t\r\n");
  return text.substr(first, last - first + 1);
}

std::vector<std::string> split_path(const std::string& path) {
  std::vector<std::string> parts;
  std::size_t start = 0;
  while (true) {
    const auto dot = path.find('.', start);
    parts.push_back(path.substr(start, dot == std::string::npos ? std::string::npos : dot - start));
    if (dot == std::string::npos) return parts;
    start = dot + 1;
  }
}

std::string join(const std::vector<std::string>& items, const std::string& separator) {
  std::string out;
  for (std::size_t i = 0; i < items.size(); ++i) {
    if (i > 0) out += separator;
    out += items[i];
  }
  return out;
}

std::string parent_of(const std::string& path) {
  const auto dot = path.rfind('.');
  return dot == std::string::npos ? std::string() : path.substr(0, dot);
}

std::string child_path(const std::string& section, const std::string& name) {
  return section.empty() ? name : section + "." + name;
}

// What a node holds, for "got ..." in messages.
std::string describe(const YAML::Node& node) {
  switch (node.Type()) {
    case YAML::NodeType::Null: return "null";
    case YAML::NodeType::Sequence: return "a list";
    case YAML::NodeType::Map: return "a mapping";
    case YAML::NodeType::Scalar:
      return node.Tag() == "!" ? shown(node.Scalar()) + " (quoted, so a string)" : shown(node.Scalar());
    default: return "nothing";
  }
}

bool is_plain_scalar(const YAML::Node& node) { return node.IsScalar() && node.Tag() != "!"; }

std::optional<std::int64_t> parse_int(const std::string& text) {
  std::string_view digits = text;
  if (!digits.empty() && digits.front() == '+') digits.remove_prefix(1);
  if (digits.empty() || digits.front() == '+') return std::nullopt;
  std::int64_t value = 0;
  const auto [end, error] = std::from_chars(digits.data(), digits.data() + digits.size(), value);
  if (error != std::errc() || end != digits.data() + digits.size()) return std::nullopt;
  return value;
}

bool looks_like_int(const std::string& text) {
  std::size_t i = (!text.empty() && (text[0] == '+' || text[0] == '-')) ? 1 : 0;
  if (i == text.size()) return false;
  for (; i < text.size(); ++i)
    if (text[i] < '0' || text[i] > '9') return false;
  return true;
}

std::optional<double> parse_float(const std::string& text) {
  std::string_view digits = text;
  if (!digits.empty() && digits.front() == '+') digits.remove_prefix(1);
  if (digits.empty() || !(std::isdigit(static_cast<unsigned char>(digits.back())) || digits.back() == '.'))
    return std::nullopt;  // refuses "inf", "nan"
  double value = 0;
  const auto [end, error] =
      std::from_chars(digits.data(), digits.data() + digits.size(), value, std::chars_format::general);
  if (error != std::errc() || end != digits.data() + digits.size() || !std::isfinite(value)) return std::nullopt;
  return value;
}

// YAML's "\0" escape puts a NUL into a string, but no path, name or text here can hold one: paths and C strings
// end at it, so "a\0b" would quietly become "a". Refused instead.
std::string nul_in(const std::string& text) {
  return "must not contain a NUL character (\\0), got " + shown(text);
}

// YAML text is Unicode: a string that is not valid UTF-8 (a stray byte from a binary paste or another
// encoding) cannot be written back faithfully (yaml-cpp then emits it unquoted, and a carriage return after
// such a byte is lost on reading the effective configuration again). Refused, as a NUL is.
std::optional<std::string> bad_text(const std::string& text) {
  if (text.find('\0') != std::string::npos) return nul_in(text);
  if (!tok::is_valid_utf8(text)) return "must be valid UTF-8 text, got " + shown(tok::lossy_utf8(text));
  return std::nullopt;
}

// Converts a node to the key's type, or returns why it cannot.
std::variant<Value, std::string> convert(Kind kind, const YAML::Node& node) {
  const auto wrong = [&](const std::string& expected) -> std::variant<Value, std::string> {
    return "must be " + expected + ", got " + describe(node);
  };
  switch (kind) {
    case Kind::String:
      if (!node.IsScalar()) return wrong("a string");
      if (const auto bad = bad_text(node.Scalar())) return *bad;
      return Value(node.Scalar());
    case Kind::OptionalInt:
      if (node.IsNull()) return Value(std::monostate{});
      [[fallthrough]];
    case Kind::Int: {
      const std::string expected = kind == Kind::Int ? "an integer" : "an integer or null";
      if (!is_plain_scalar(node)) return wrong(expected);
      if (looks_like_int(node.Scalar())) {
        const auto value = parse_int(node.Scalar());
        if (!value) return "is out of range, got " + describe(node);
        return Value(*value);
      }
      return wrong(expected);
    }
    case Kind::Float: {
      if (!is_plain_scalar(node)) return wrong("a number");
      const auto value = parse_float(node.Scalar());
      if (!value) return wrong("a finite number");
      return Value(*value);
    }
    case Kind::Bool: {
      if (!is_plain_scalar(node)) return wrong("true or false");
      const std::string& text = node.Scalar();
      if (text == "true" || text == "True" || text == "TRUE") return Value(true);
      if (text == "false" || text == "False" || text == "FALSE") return Value(false);
      return wrong("true or false");
    }
    case Kind::StringList: {
      if (!node.IsSequence()) return wrong("a list of strings");
      std::vector<std::string> items;
      for (std::size_t i = 0; i < node.size(); ++i) {
        const YAML::Node item = node[i];
        if (!item.IsScalar())
          return "must be a list of strings, but item " + std::to_string(i + 1) + " is " + describe(item);
        if (const auto bad = bad_text(item.Scalar())) return "item " + std::to_string(i + 1) + ": " + *bad;
        items.push_back(item.Scalar());
      }
      return Value(std::move(items));
    }
  }
  return wrong("a value");
}

// The sections and keys of a schema.
struct Layout {
  std::map<std::string, const Key*> leaves;
  std::map<std::string, std::vector<std::string>> children;  // section ("" = top level) -> names, schema order

  explicit Layout(const Schema& schema) {
    for (const Key& key : schema) {
      leaves[key.path] = &key;
      std::string path = key.path;
      while (true) {
        const std::string section = parent_of(path);
        const std::string name = section.empty() ? path : path.substr(section.size() + 1);
        auto& names = children[section];
        if (std::find(names.begin(), names.end(), name) == names.end()) names.push_back(name);
        if (section.empty()) break;
        path = section;
      }
    }
  }

  bool is_section(const std::string& path) const { return children.count(path) != 0 && !path.empty(); }
  bool is_leaf(const std::string& path) const { return leaves.count(path) != 0; }

  std::string known_keys(const std::string& section) const {
    const auto it = children.find(section);
    const std::string names = it == children.end() ? std::string() : join(it->second, ", ");
    return section.empty() ? "known top-level keys: " + names : "known keys in " + section + ": " + names;
  }
};

// YAML::LoadAll, except that it fails instead of looping: yaml-cpp 0.7's LoadAll never returns (and allocates
// without end) when a document starts with a token its parser cannot place, such as a ',' outside brackets
// (jbeder/yaml-cpp#1040): the parser hands out the same empty document again and again without moving on.
// A first pass counts the documents and stops at one that starts where the one before it did; then
// YAML::Load reads the first document. Only documents.size() and documents[0] are used, so the rest are nulls.
class DocumentCounter final : public YAML::EventHandler {
 public:
  std::size_t documents = 0;
  std::optional<YAML::Mark> stuck;  // where a document started again without the parser moving on
  void OnDocumentStart(const YAML::Mark& mark) override {
    if (documents > 0 && mark.pos <= last_.pos) stuck = mark;
    last_ = mark;
  }
  void OnDocumentEnd() override {}
  void OnNull(const YAML::Mark&, YAML::anchor_t) override {}
  void OnAlias(const YAML::Mark&, YAML::anchor_t) override {}
  void OnScalar(const YAML::Mark&, const std::string&, YAML::anchor_t, const std::string&) override {}
  void OnSequenceStart(const YAML::Mark&, const std::string&, YAML::anchor_t, YAML::EmitterStyle::value) override {}
  void OnSequenceEnd() override {}
  void OnMapStart(const YAML::Mark&, const std::string&, YAML::anchor_t, YAML::EmitterStyle::value) override {}
  void OnMapEnd() override {}

 private:
  YAML::Mark last_ = YAML::Mark::null_mark();
};

std::vector<YAML::Node> load_all(const std::string& yaml_text) {
  std::istringstream stream(yaml_text);
  YAML::Parser parser(stream);
  DocumentCounter counter;
  while (parser.HandleNextDocument(counter)) {
    if (counter.stuck) {
      const auto pos = static_cast<std::size_t>(counter.stuck->pos);
      const std::string token = pos < yaml_text.size() ? std::string(1, yaml_text[pos]) : std::string();
      throw YAML::ParserException(*counter.stuck, token == "," ? "unexpected ',' (a ',' belongs inside [...] or {...})"
                                                                : "unexpected '" + token + "'");
    }
    ++counter.documents;
  }
  std::vector<YAML::Node> documents(counter.documents);
  if (!documents.empty()) documents[0] = YAML::Load(yaml_text);
  return documents;
}

std::string line_text(const YAML::Node& key) {
  return "(line " + std::to_string(key.Mark().line + 1) + ")";
}

// Checks the file's layout: mappings where sections are, known keys only, no key twice.
void check_layout(const YAML::Node& map, const std::string& section, const Layout& layout, const std::string& source,
                  std::map<std::string, std::string>& where) {
  std::map<std::string, int> seen;  // name -> line
  for (auto it = map.begin(); it != map.end(); ++it) {
    const YAML::Node key = it->first;
    const YAML::Node value = it->second;
    if (!key.IsScalar())
      throw InputError(source + ": a key " + line_text(key) + " is " + describe(key) + ", not a name" +
                       (section.empty() ? std::string() : " (in " + section + ")"));
    const std::string path = child_path(section, key.Scalar());
    const int line = key.Mark().line + 1;
    if (const auto previous = seen.find(key.Scalar()); previous != seen.end())
      throw InputError(source + ": key \"" + path + "\" is given twice (lines " + std::to_string(previous->second) +
                       " and " + std::to_string(line) + ")");
    seen.emplace(key.Scalar(), line);
    if (layout.is_section(path)) {
      if (!value.IsMap() && !value.IsNull())
        throw InputError(source + ": key \"" + path + "\" " + line_text(key) +
                         " must be a section (a mapping of keys), got " + describe(value) + "; " +
                         layout.known_keys(path));
      where[path] = line_text(key);
      if (value.IsMap()) check_layout(value, path, layout, source, where);
    } else if (layout.is_leaf(path)) {
      where[path] = line_text(key);
    } else {
      throw InputError(source + ": unknown key \"" + path + "\" " + line_text(key) + "; " +
                       layout.known_keys(section));
    }
  }
}

// node[parts[i]]...[parts.back()] = value, creating (or replacing null) sections on the way.
void set_at(YAML::Node node, const std::vector<std::string>& parts, std::size_t i, const YAML::Node& value) {
  if (i + 1 == parts.size()) {
    node[parts[i]] = value;
    return;
  }
  if (!node[parts[i]].IsMap()) node[parts[i]] = YAML::Node(YAML::NodeType::Map);
  set_at(node[parts[i]], parts, i + 1, value);
}

// The node at a dotted path, or nothing when a part is missing (a null section holds no keys).
std::optional<YAML::Node> find_at(const YAML::Node& root, const std::vector<std::string>& parts) {
  YAML::Node node;
  node.reset(root);
  for (const std::string& part : parts) {
    if (!node.IsMap()) return std::nullopt;
    const YAML::Node& map = node;
    const YAML::Node child = map[part];  // const lookup: adds nothing
    if (!child.IsDefined()) return std::nullopt;
    node.reset(child);
  }
  return node;
}

std::string format_double(double value) {
  char buffer[64];
  const auto result = std::to_chars(buffer, buffer + sizeof buffer, value);
  std::string text(buffer, result.ptr);
  // 1e-08 -> 1e-8
  if (const auto e = text.find('e'); e != std::string::npos) {
    std::size_t digits = e + 1;
    if (digits < text.size() && (text[digits] == '-' || text[digits] == '+')) ++digits;
    while (digits + 1 < text.size() && text[digits] == '0') text.erase(digits, 1);
    if (text[e + 1] == '+') text.erase(e + 1, 1);
  } else if (text.find('.') == std::string::npos) {
    text += ".0";
  }
  return text;
}

// A bound in a rule: 0 and 1 rather than 0.0 and 1.0.
std::string format_bound(double value) {
  if (std::abs(value) < 1e15 && value == std::trunc(value)) return std::to_string(static_cast<std::int64_t>(value));
  return format_double(value);
}

std::string table_cell(const std::string& text) {
  std::string out;
  for (const char c : text) {
    if (c == '|') out += "\\|";
    else if (c == '\n') out += ' ';
    else out += c;
  }
  return out;
}

}  // namespace

std::string kind_name(Kind kind) {
  switch (kind) {
    case Kind::String: return "string";
    case Kind::Int: return "int";
    case Kind::Float: return "float";
    case Kind::Bool: return "bool";
    case Kind::StringList: return "string list";
    case Kind::OptionalInt: return "int or null";
  }
  return "value";
}

std::string format_value(const Value& value) {
  struct Visitor {
    std::string operator()(std::monostate) const { return "null"; }
    std::string operator()(bool b) const { return b ? "true" : "false"; }
    std::string operator()(std::int64_t i) const { return std::to_string(i); }
    std::string operator()(double d) const { return format_double(d); }
    std::string operator()(const std::string& s) const { return quoted(s); }
    std::string operator()(const std::vector<std::string>& items) const { return "[" + join(items, ", ") + "]"; }
  };
  return std::visit(Visitor{}, value);
}

Rule int_at_least(std::int64_t min) {
  return {">= " + std::to_string(min), [min](const Value& v) -> std::optional<std::string> {
            if (const auto* i = std::get_if<std::int64_t>(&v); i != nullptr && *i < min)
              return "must be >= " + std::to_string(min);
            return std::nullopt;
          }};
}

Rule int_in_range(std::int64_t min, std::int64_t max) {
  return {std::to_string(min) + " to " + std::to_string(max), [min, max](const Value& v) -> std::optional<std::string> {
            if (const auto* i = std::get_if<std::int64_t>(&v); i != nullptr && (*i < min || *i > max))
              return "must be between " + std::to_string(min) + " and " + std::to_string(max);
            return std::nullopt;
          }};
}

Rule auto_or_int_in_range(std::int64_t min, std::int64_t max) {
  const std::string description = "auto or " + std::to_string(min) + " to " + std::to_string(max);
  return {description, [min, max](const Value& v) -> std::optional<std::string> {
            const auto* text = std::get_if<std::string>(&v);
            if (text == nullptr || *text == "auto") return std::nullopt;
            std::int64_t n = 0;
            const auto [end, error] = std::from_chars(text->data(), text->data() + text->size(), n);
            if (error != std::errc() || end != text->data() + text->size() || n < min || n > max)
              return "must be auto or a whole number between " + std::to_string(min) + " and " + std::to_string(max);
            return std::nullopt;
          }};
}

Rule int_minus_one_or_at_least(std::int64_t min) {
  const std::string description = "-1 or >= " + std::to_string(min);
  return {description, [min, description](const Value& v) -> std::optional<std::string> {
            if (const auto* i = std::get_if<std::int64_t>(&v); i != nullptr && *i != -1 && *i < min)
              return "must be " + description;
            return std::nullopt;
          }};
}

Rule float_greater_than(double min) {
  return {"> " + format_bound(min), [min](const Value& v) -> std::optional<std::string> {
            if (const auto* d = std::get_if<double>(&v); d != nullptr && !(*d > min))
              return "must be > " + format_bound(min);
            return std::nullopt;
          }};
}

Rule float_at_least(double min) {
  return {">= " + format_bound(min), [min](const Value& v) -> std::optional<std::string> {
            if (const auto* d = std::get_if<double>(&v); d != nullptr && !(*d >= min))
              return "must be >= " + format_bound(min);
            return std::nullopt;
          }};
}

Rule float_in_half_open(double min, double max) {
  const std::string description = "[" + format_bound(min) + ", " + format_bound(max) + ")";
  return {">= " + format_bound(min) + " and < " + format_bound(max),
          [min, max, description](const Value& v) -> std::optional<std::string> {
            if (const auto* d = std::get_if<double>(&v); d != nullptr && !(*d >= min && *d < max))
              return "must be in " + description;
            return std::nullopt;
          }};
}

Rule one_of(std::vector<std::string> choices) {
  const std::string list = join(choices, ", ");
  return {list, [choices = std::move(choices), list](const Value& v) -> std::optional<std::string> {
            if (const auto* s = std::get_if<std::string>(&v);
                s != nullptr && std::find(choices.begin(), choices.end(), *s) == choices.end())
              return "must be one of " + list;
            return std::nullopt;
          }};
}

Rule subset_of(std::vector<std::string> choices) {
  const std::string list = join(choices, ", ");
  return {"a non-empty list of distinct names from: " + list,
          [choices = std::move(choices), list](const Value& v) -> std::optional<std::string> {
            const auto* items = std::get_if<std::vector<std::string>>(&v);
            if (items == nullptr) return std::nullopt;
            if (items->empty()) return "must name at least one of " + list;
            for (std::size_t i = 0; i < items->size(); ++i) {
              const std::string& item = (*items)[i];
              if (std::find(choices.begin(), choices.end(), item) == choices.end())
                return "may only hold " + list + "; " + quoted(item) + " is not one of them";
              if (std::find(items->begin(), items->begin() + static_cast<std::ptrdiff_t>(i), item) !=
                  items->begin() + static_cast<std::ptrdiff_t>(i))
                return "names " + quoted(item) + " twice";
            }
            return std::nullopt;
          }};
}

Document::Document(const std::string& yaml_text, std::string source_name, const Schema& schema,
                   const std::vector<std::string>& overrides)
    : source_(std::move(source_name)) {
  const Layout layout(schema);

  std::vector<YAML::Node> documents;
  try {
    documents = load_all(yaml_text);  // not YAML::LoadAll: see load_all
  } catch (const YAML::ParserException& e) {
    throw InputError(source_ + ": invalid YAML (line " + std::to_string(e.mark.line + 1) + ", column " +
                     std::to_string(e.mark.column + 1) + "): " + e.msg);
  } catch (const YAML::Exception& e) {
    throw InputError(source_ + ": invalid YAML: " + e.msg);
  }
  if (documents.size() > 1)
    throw InputError(source_ + ": holds " + std::to_string(documents.size()) +
                     " YAML documents (separated by ---); expected one");
  YAML::Node root = documents.empty() || documents[0].IsNull() ? YAML::Node(YAML::NodeType::Map) : documents[0];
  if (!root.IsMap())
    throw InputError(source_ + ": must be a mapping of keys (such as \"model: DIR\"), got " + describe(root));
  check_layout(root, "", layout, source_, where_);

  for (const std::string& override_text : overrides) {
    const std::string where = "(--set " + override_text + ")";
    const auto eq = override_text.find('=');
    const std::string path = eq == std::string::npos ? std::string() : trim(override_text.substr(0, eq));
    if (path.empty())
      throw InputError(source_ + ": --set " + quoted(override_text) + " must be KEY=VALUE, such as lora.r=16");
    if (layout.is_section(path))
      throw InputError(source_ + ": --set " + quoted(override_text) + ": \"" + path +
                       "\" is a section; set its keys one at a time; " + layout.known_keys(path));
    if (!layout.is_leaf(path)) {
      // Name the first part of the path that is not a known section.
      const std::vector<std::string> parts = split_path(path);
      std::string section;
      std::size_t i = 0;
      while (i + 1 < parts.size() && layout.is_section(child_path(section, parts[i]))) section = child_path(section, parts[i++]);
      const std::string unknown = child_path(section, parts[i]);
      if (layout.is_leaf(unknown))
        throw InputError(source_ + ": --set " + quoted(override_text) + ": \"" + unknown + "\" is a key, not a section");
      throw InputError(source_ + ": unknown key \"" + unknown + "\" " + where + "; " + layout.known_keys(section));
    }
    const std::string raw = override_text.substr(eq + 1);
    const Key& key = *layout.leaves.at(path);
    YAML::Node value;
    try {
      value = YAML::Load(raw);
    } catch (const YAML::Exception& e) {
      if (key.kind != Kind::String)
        throw InputError(source_ + ": --set " + quoted(override_text) + ": the value is not valid YAML (" + e.msg + ")");
      value = YAML::Node(raw);
    }
    if (key.kind == Kind::String) {
      // A string key takes a YAML scalar ("x", 'x', x) as its text, anything else as written.
      value = YAML::Node(value.IsScalar() ? value.Scalar() : raw);
    }
    set_at(root, split_path(path), 0, value);
    where_[path] = where;
  }

  for (const Key& key : schema) {
    const std::optional<YAML::Node> node = find_at(root, split_path(key.path));
    if (!node) {
      if (key.required)
        throw InputError(source_ + ": missing required key \"" + key.path + "\" (" + key.meaning + ")");
      continue;
    }
    auto converted = convert(key.kind, *node);
    if (auto* reason = std::get_if<std::string>(&converted)) fail(key.path, *reason);
    Value value = std::get<Value>(std::move(converted));
    if (key.rule) {
      if (const auto reason = key.rule->test(value)) {
        // A number as written (0, not 0.0); other values as YAML shows them.
        const bool number = std::holds_alternative<double>(value) || std::holds_alternative<std::int64_t>(value);
        fail(key.path, *reason + ", got " + (number ? node->Scalar() : format_value(value)));
      }
    }
    values_[key.path] = std::move(value);
  }

  YAML::Emitter emitter;
  emitter << root;
  if (!emitter.good())
    throw InputError(source_ + ": cannot write the configuration back as YAML (" + emitter.GetLastError() + ")");
  effective_text_ = std::string(emitter.c_str()) + "\n";
}

const Value& Document::value(const std::string& path) const {
  const auto it = values_.find(path);
  if (it == values_.end()) throw std::logic_error("yaml_schema: key \"" + path + "\" was not given");
  return it->second;
}

std::string Document::where(const std::string& path) const {
  const auto it = where_.find(path);
  return it == where_.end() ? std::string() : it->second;
}

void Document::fail(const std::string& path, const std::string& what) const {
  const std::string location = where(path);
  throw InputError(source_ + ": key \"" + path + "\" " + (location.empty() ? "" : location + " ") + what);
}

std::string reference_table(const Schema& schema) {
  std::string out = "| key | type | default | accepted values | meaning |\n| --- | --- | --- | --- | --- |\n";
  for (const Key& key : schema) {
    out += "| `" + key.path + "` | " + kind_name(key.kind) + " | ";
    out += key.required ? std::string("required") : "`" + table_cell(format_value(key.default_value)) + "`";
    out += " | " + (key.rule ? table_cell(key.rule->description) : std::string()) + " | " + table_cell(key.meaning) +
           " |\n";
  }
  return out;
}

std::string read_config_file(const std::filesystem::path& path) {
  std::error_code error;
  if (!std::filesystem::is_regular_file(path, error)) {
    // A symlink loop cannot be resolved, so it "does not exist" to exists(): name what it is instead.
    const bool loop = error == std::errc::too_many_symbolic_link_levels;
    throw InputError(path.string() + ": cannot read the configuration file (" +
                     (loop ? "a symlink loop: too many levels of symbolic links"
                           : std::filesystem::exists(path, error) ? "not a regular file" : "no such file") +
                     ")");
  }
  std::ifstream in(path, std::ios::binary);
  if (!in) throw InputError(path.string() + ": cannot open the configuration file");
  std::ostringstream text;
  text << in.rdbuf();
  if (in.bad()) throw InputError(path.string() + ": cannot read the configuration file");
  return text.str();
}

}  // namespace slearn::yaml_schema
