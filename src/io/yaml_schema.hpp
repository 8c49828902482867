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

#include <filesystem>

#include <cstdint>
#include <functional>
#include <map>
#include <optional>
#include <string>
#include <type_traits>
#include <utility>
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
// A string field holding "auto" or a whole number in [min, max] (sizes chosen from free memory when auto).
Rule auto_or_int_in_range(std::int64_t min, std::int64_t max);
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

// ---- Binding keys to the members of a configuration struct ----
// A table of Field<Config> ties each key to a member: the key's type follows from the member's type, its
// documented default is the member of a default Config, and apply() sets the members of the keys a
// Document holds. A section struct's table (Fields<LoraSettings>) can be placed under a prefix inside any
// configuration that holds that struct (add_section), so two configurations share one table of a section.

// The Kind of a member type: std::string, bool, std::int32_t, std::int64_t, std::uint64_t, double,
// std::vector<std::string>, std::optional<int>.
template <class T>
constexpr Kind kind_for_member() {
  if constexpr (std::is_same_v<T, std::string>) return Kind::String;
  else if constexpr (std::is_same_v<T, bool>) return Kind::Bool;
  else if constexpr (std::is_same_v<T, std::int32_t> || std::is_same_v<T, std::int64_t> ||
                     std::is_same_v<T, std::uint64_t>)
    return Kind::Int;
  else if constexpr (std::is_same_v<T, double>) return Kind::Float;
  else if constexpr (std::is_same_v<T, std::vector<std::string>>) return Kind::StringList;
  else {
    static_assert(std::is_same_v<T, std::optional<int>>, "unsupported member type");
    return Kind::OptionalInt;
  }
}

template <class T>
Value value_of_member(const T& member) {
  if constexpr (std::is_same_v<T, std::int32_t> || std::is_same_v<T, std::uint64_t>)
    return Value(static_cast<std::int64_t>(member));
  else if constexpr (std::is_same_v<T, std::optional<int>>)
    return member ? Value(static_cast<std::int64_t>(*member)) : Value(std::monostate{});
  else return Value(member);
}

// The key's rule must keep the value in range of the member's type (>= 0 for unsigned, int32 bounds).
template <class T>
T member_of_value(const Value& value) {
  if constexpr (std::is_same_v<T, std::int32_t> || std::is_same_v<T, std::uint64_t>)
    return static_cast<T>(std::get<std::int64_t>(value));
  else if constexpr (std::is_same_v<T, std::optional<int>>) {
    if (std::holds_alternative<std::monostate>(value)) return std::nullopt;
    return static_cast<int>(std::get<std::int64_t>(value));
  } else return std::get<T>(value);
}

template <class Config>
struct Field {
  Key key;
  std::function<Value(const Config&)> get;
  std::function<void(Config&, const Value&)> set;
};

template <class Config>
using Fields = std::vector<Field<Config>>;

// The key `path` bound to `config.*member`; its default is that member of a default-constructed Config.
template <class Config, class T>
Field<Config> field(std::string path, T Config::*member, std::optional<Rule> rule, std::string meaning,
                    bool required = false) {
  Field<Config> out;
  out.key = {std::move(path), kind_for_member<T>(), required, value_of_member<T>(Config{}.*member),
             std::move(rule), std::move(meaning)};
  out.get = [member](const Config& config) { return value_of_member<T>(config.*member); };
  out.set = [member](Config& config, const Value& value) { config.*member = member_of_value<T>(value); };
  return out;
}

// Appends the fields of a section struct, their paths under `prefix` ("lora", "eval.data"), bound to
// `config.*member`. Defaults are those of a default Config's member (which may differ from Section{}).
template <class Config, class Section>
void add_section(Fields<Config>& table, const std::string& prefix, Section Config::*member,
                 const Fields<Section>& section_fields) {
  const Config defaults{};
  for (const Field<Section>& inner : section_fields) {
    Field<Config> out;
    out.key = inner.key;
    out.key.path = prefix + "." + inner.key.path;
    out.key.default_value = inner.get(defaults.*member);
    out.get = [member, get = inner.get](const Config& config) { return get(config.*member); };
    out.set = [member, set = inner.set](Config& config, const Value& value) { set(config.*member, value); };
    table.push_back(std::move(out));
  }
}

template <class Config>
Schema schema_of(const Fields<Config>& table) {
  Schema out;
  out.reserve(table.size());
  for (const Field<Config>& f : table) out.push_back(f.key);
  return out;
}

// Sets the members of the keys `document` holds; the others keep their values.
template <class Config>
void apply(const Document& document, const Fields<Config>& table, Config& config) {
  for (const Field<Config>& f : table)
    if (document.has(f.key.path)) f.set(config, document.value(f.key.path));
}

// The bytes of a configuration file; a missing, unreadable or non-regular file is an InputError naming it.
std::string read_config_file(const std::filesystem::path& path);

}  // namespace slearn::yaml_schema
