// Pre-tokenizers: Split (regex or literal, every split behaviour), ByteLevel, Metaspace, Digits and
// Sequences of them. Regexes run on PCRE2 (UTF + UCP, JIT).
#include <algorithm>

#include "tokenizer/components.hpp"
#include "tokenizer/unicode.hpp"

namespace slearn::tok {
namespace {

// The pattern GPT-2's ByteLevel pre-tokenizer splits with when use_regex is true.
constexpr const char* kGpt2Pattern = R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)";

struct Range {
  std::size_t begin, end;
  bool is_match;
};

}  // namespace

void PreTokenizer::load(const json& spec, const JsonFile& file, const std::string& path) {
  steps_.clear();
  byte_level_ = false;
  if (spec.is_null()) return;
  load_step(spec, file, path);
}

void PreTokenizer::load_step(const json& spec, const JsonFile& file, const std::string& path) {
  const std::string type = component_type(file, spec, path);
  if (byte_level_)
    fail(file, path + ": a pre-tokenizer after ByteLevel is not supported (ByteLevel must come last)");
  Step step;
  if (type == "Sequence") {
    const json& list = require_member(file, spec, "pretokenizers", path + ".pretokenizers");
    if (!list.is_array()) fail(file, path + ".pretokenizers must be an array");
    for (std::size_t i = 0; i < list.size(); ++i)
      load_step(list[i], file, path + ".pretokenizers[" + std::to_string(i) + "]");
    return;
  }
  if (type == "Split") {
    const json& pattern = require_member(file, spec, "pattern", path + ".pattern");
    if (const json* r = find_member(pattern, "Regex"); r && r->is_string()) {
      step.regex = std::make_shared<Regex>(r->get<std::string>(), file.name + ": " + path + ".pattern.Regex");
    } else if (const json* s = find_member(pattern, "String"); s && s->is_string()) {
      step.regex = std::make_shared<Regex>(Regex::escape(s->get<std::string>()), file.name + ": " + path + ".pattern");
    } else {
      fail(file, path + ".pattern must be {\"Regex\": ...} or {\"String\": ...}");
    }
    const std::string behavior = require_string(file, spec, "behavior", path + ".behavior");
    if (behavior == "Isolated") step.behavior = Behavior::Isolated;
    else if (behavior == "Removed") step.behavior = Behavior::Removed;
    else if (behavior == "MergedWithPrevious") step.behavior = Behavior::MergedWithPrevious;
    else if (behavior == "MergedWithNext") step.behavior = Behavior::MergedWithNext;
    else if (behavior == "Contiguous") step.behavior = Behavior::Contiguous;
    else fail(file, path + ".behavior " + json_quote(behavior) + " is not supported");
    step.invert = optional_bool(file, spec, "invert", path + ".invert", false);
    steps_.push_back(std::move(step));
  } else if (type == "Digits") {
    const bool individual = optional_bool(file, spec, "individual_digits", path + ".individual_digits", false);
    step.regex = std::make_shared<Regex>(individual ? R"(\p{N})" : R"(\p{N}+)", file.name + ": " + path);
    steps_.push_back(std::move(step));
  } else if (type == "ByteLevel") {
    if (optional_bool(file, spec, "add_prefix_space", path + ".add_prefix_space", true)) {
      Step prefix;
      prefix.kind = Kind::PrefixSpace;
      steps_.push_back(std::move(prefix));
    }
    if (optional_bool(file, spec, "use_regex", path + ".use_regex", true)) {
      step.regex = std::make_shared<Regex>(kGpt2Pattern, file.name + ": " + path);
      steps_.push_back(std::move(step));
    }
    byte_level_ = true;
  } else if (type == "Metaspace") {
    step.kind = Kind::Metaspace;
    step.replacement = optional_string(file, spec, "replacement", path + ".replacement", "\xE2\x96\x81");
    std::size_t end = 0;
    if (step.replacement.empty() || (next_codepoint(step.replacement, end), end != step.replacement.size()))
      fail(file, path + ".replacement must be a single character");
    if (const json* scheme = find_member(spec, "prepend_scheme"); scheme && scheme->is_string()) {
      const std::string s = scheme->get<std::string>();
      if (s == "always") step.prepend = 2;
      else if (s == "first") step.prepend = 1;
      else if (s == "never") step.prepend = 0;
      else fail(file, path + ".prepend_scheme " + json_quote(s) + " is not supported (always, first or never)");
    } else {
      step.prepend = optional_bool(file, spec, "add_prefix_space", path + ".add_prefix_space", true) ? 2 : 0;
    }
    step.split = optional_bool(file, spec, "split", path + ".split", true);
    step.regex = std::make_shared<Regex>(Regex::escape(step.replacement), file.name + ": " + path);
    steps_.push_back(std::move(step));
  } else {
    fail(file, path + ".type " + json_quote(type) +
                   " is not supported (supported: Split, ByteLevel, Metaspace, Digits, Sequence)");
  }
}

void PreTokenizer::run(std::string_view text, bool at_text_start, PieceSink& sink) const {
  run_from(0, text, at_text_start, sink);
}

void PreTokenizer::run_from(std::size_t k, std::string_view text, bool at_start, PieceSink& sink) const {
  if (text.empty()) return;
  if (k == steps_.size()) {
    sink.piece(text);
    return;
  }
  const Step& step = steps_[k];
  switch (step.kind) {
    case Kind::Split:
      run_split(k, step, text, at_start, sink);
      return;
    case Kind::PrefixSpace: {
      if (text.front() == ' ') {
        run_from(k + 1, text, at_start, sink);
        return;
      }
      std::string spaced;
      spaced.reserve(text.size() + 1);
      spaced.push_back(' ');
      spaced.append(text);
      run_from(k + 1, spaced, at_start, sink);
      return;
    }
    case Kind::Metaspace: {
      std::string replaced;
      replaced.reserve(text.size() + text.size() / 4 + step.replacement.size());
      for (const char c : text) {
        if (c == ' ') replaced.append(step.replacement);
        else replaced.push_back(c);
      }
      const bool prepend = step.prepend == 2 || (step.prepend == 1 && at_start);
      if (prepend && replaced.compare(0, step.replacement.size(), step.replacement) != 0)
        replaced.insert(0, step.replacement);
      if (step.split) {
        run_split(k, step, replaced, at_start, sink);
      } else {
        run_from(k + 1, replaced, at_start, sink);
      }
      return;
    }
  }
}

void PreTokenizer::run_split(std::size_t k, const Step& step, std::string_view text, bool at_start,
                             PieceSink& sink) const {
  const Behavior behavior = step.kind == Kind::Metaspace ? Behavior::MergedWithNext : step.behavior;
  const bool stream = behavior == Behavior::Isolated && !step.invert;
  std::vector<Range> ranges;
  std::size_t pos = 0, prev = 0, begin = 0, end = 0;
  auto add = [&](std::size_t b, std::size_t e, bool is_match) {
    if (stream) run_from(k + 1, text.substr(b, e - b), at_start && b == 0, sink);
    else ranges.push_back({b, e, is_match != step.invert});
  };
  while (pos < text.size() && step.regex->find(text, pos, begin, end)) {
    if (end == begin) {  // empty matches split nothing
      pos = begin + utf8_len(static_cast<unsigned char>(text[begin]));
      continue;
    }
    if (begin > prev) add(prev, begin, false);
    add(begin, end, true);
    prev = pos = end;
  }
  if (prev < text.size()) add(prev, text.size(), false);
  if (stream) return;

  // Combine the ranges as the behaviour says, then pass the pieces on.
  std::vector<Range> pieces;
  pieces.reserve(ranges.size());
  bool previous_match = false;
  switch (behavior) {
    case Behavior::Isolated:
      pieces = ranges;
      break;
    case Behavior::Removed:
      for (const Range& r : ranges)
        if (!r.is_match) pieces.push_back(r);
      break;
    case Behavior::MergedWithPrevious:
      for (const Range& r : ranges) {
        if (r.is_match && !previous_match && !pieces.empty()) pieces.back().end = r.end;
        else pieces.push_back(r);
        previous_match = r.is_match;
      }
      break;
    case Behavior::MergedWithNext:
      for (auto it = ranges.rbegin(); it != ranges.rend(); ++it) {
        if (it->is_match && !previous_match && !pieces.empty()) pieces.back().begin = it->begin;
        else pieces.push_back(*it);
        previous_match = it->is_match;
      }
      std::reverse(pieces.begin(), pieces.end());
      break;
    case Behavior::Contiguous:
      for (const Range& r : ranges) {
        if (r.is_match == previous_match && !pieces.empty()) pieces.back().end = r.end;
        else pieces.push_back(r);
        previous_match = r.is_match;
      }
      break;
  }
  for (const Range& r : pieces) run_from(k + 1, text.substr(r.begin, r.end - r.begin), at_start && r.begin == 0, sink);
}

}  // namespace slearn::tok
