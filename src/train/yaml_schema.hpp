// A small schema for YAML configuration files: a table of dotted keys, each with a type, a default, the
// values it accepts and a one-line meaning. One table drives parsing, type checks, range checks, "--set"
// overrides and the Markdown reference in the docs. Sections are the prefixes of the dotted keys
// ("lora" for "lora.r"); keys may nest to any depth.
//
// Errors are InputErrors that name the source, the key and where its value came from:
//   run.yaml: unknown key "lora.rank" (line 7); known keys in lora: r, alpha, ...
//   run.yaml: key "train.epochs" (line 12) must be an integer, got "five"
//   run.yaml: key "lora.r" (--set lora.r=0) must be >= 1, got 0
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <optional>
#include <string>
#include <variant>
#include <vector>

namespace slearn::yaml_schema {

enum class Kind { String, Int, Float, Bool, StringList, OptionalInt };

// "string", "int", "float", "bool", "string list", "int or null".
std::string kind_name(Kind kind);

// A typed value. std::monostate is null (only an OptionalInt can be null).
using Value = std::variant<std::monostate, bool, std::int64_t, double, std::string, std::vector<std::string>>;

// The value as YAML would show it: 64, 0.0003, true, "text", [a, b], null.
std::string format_value(const Value& value);

// What a key accepts beyond its type: a description for the docs ("> 0", "cosine, linear or constant")
// and a test returning the reason a value is refused ("must be > 0") or nothing.
struct Rule {
  std::string description;
  std::function<std::optional<std::string>(const Value&)> test;
};

// Common rules. Integer rules apply to Int and OptionalInt (null passes); float rules to Float.
Rule int_at_least(std::int64_t min);
Rule int_in_range(std::int64_t min, std::int64_t max);
Rule int_minus_one_or_at_least(std::int64_t min);  // -1 (meaning "off") or >= min
Rule float_greater_than(double min);
Rule float_at_least(double min);
Rule float_in_half_open(double min, double max);   // [min, max)
Rule one_of(std::vector<std::string> choices);     // strings
Rule subset_of(std::vector<std::string> choices);  // string lists: non-empty, no repeats

struct Key {
  std::string path;  // "lora.r"
  Kind kind = Kind::String;
  bool required = false;
  Value default_value;  // shown in the docs; not applied by the parser (the caller's struct holds defaults)
  std::optional<Rule> rule;
  std::string meaning;
};

using Schema = std::vector<Key>;

// A document read against a schema. Only keys given in the file or by an override have values.
class Document {
 public:
  // Parses `yaml_text`, checks its layout (sections are mappings, no unknown or repeated keys), applies
  // `overrides` ("a.b=value", the value read by YAML's scalar rules; for string keys a value that is not a
  // YAML scalar is taken as written), then checks types, rules and required keys.
  Document(const std::string& yaml_text, std::string source_name, const Schema& schema,
           const std::vector<std::string>& overrides);

  bool has(const std::string& path) const { return values_.count(path) != 0; }
  // The value of a given key; std::logic_error if it was not given.
  const Value& value(const std::string& path) const;
  // "(line 7)" or "(--set lora.r=16)": where the key's value came from; empty if not given.
  std::string where(const std::string& path) const;
  // Throws InputError "<source>: key "<path>" <where> <what>", for checks across keys.
  [[noreturn]] void fail(const std::string& path, const std::string& what) const;

  // The effective YAML: the file after the overrides, as YAML::Emitter writes it (comments are not kept).
  const std::string& effective_text() const { return effective_text_; }
  const std::string& source_name() const { return source_; }

 private:
  std::string source_;
  std::map<std::string, Value> values_;
  std::map<std::string, std::string> where_;
  std::string effective_text_;
};

// Markdown table of the schema: key, type, default, accepted values, meaning.
std::string reference_table(const Schema& schema);

}  // namespace slearn::yaml_schema
