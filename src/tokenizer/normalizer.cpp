// Normalizers: Unicode normal forms (utf8proc), Prepend, Replace, Strip and Sequences of them.
#include "tokenizer/components.hpp"
#include "tokenizer/unicode.hpp"

namespace slearn::tok {
namespace {

// Replace's pattern: {"String": "..."} or {"Regex": "..."}.
struct PatternSpec {
  bool is_regex = false;
  std::string text;
};

PatternSpec read_pattern(const JsonFile& file, const json& spec, const std::string& path) {
  const json& pattern = require_member(file, spec, "pattern", path);
  if (const json* s = find_member(pattern, "String"); s && s->is_string()) return {false, s->get<std::string>()};
  if (const json* r = find_member(pattern, "Regex"); r && r->is_string()) return {true, r->get<std::string>()};
  fail(file, path + " must be {\"String\": ...} or {\"Regex\": ...}");
}

}  // namespace

void Normalizer::load(const json& spec, const JsonFile& file, const std::string& path) {
  steps_.clear();
  if (spec.is_null()) return;
  load_step(spec, file, path);
}

void Normalizer::load_step(const json& spec, const JsonFile& file, const std::string& path) {
  const std::string type = component_type(file, spec, path);
  Step step{};
  if (type == "Sequence") {
    const json& list = require_member(file, spec, "normalizers", path + ".normalizers");
    if (!list.is_array()) fail(file, path + ".normalizers must be an array");
    for (std::size_t i = 0; i < list.size(); ++i)
      load_step(list[i], file, path + ".normalizers[" + std::to_string(i) + "]");
    return;
  } else if (type == "NFC") {
    step.kind = Kind::NFC;
  } else if (type == "NFD") {
    step.kind = Kind::NFD;
  } else if (type == "NFKC") {
    step.kind = Kind::NFKC;
  } else if (type == "NFKD") {
    step.kind = Kind::NFKD;
  } else if (type == "Prepend") {
    step.kind = Kind::Prepend;
    step.text = require_string(file, spec, "prepend", path + ".prepend");
  } else if (type == "Replace") {
    const PatternSpec pattern = read_pattern(file, spec, path + ".pattern");
    step.content = require_string(file, spec, "content", path + ".content");
    if (pattern.is_regex) {
      step.kind = Kind::ReplaceRegex;
      step.regex = std::make_shared<Regex>(pattern.text, file.name + ": " + path + ".pattern.Regex");
    } else {
      step.kind = Kind::ReplaceString;
      step.text = pattern.text;
      if (step.text.empty()) fail(file, path + ".pattern.String must not be empty");
    }
  } else if (type == "Strip") {
    step.kind = Kind::Strip;
    step.left = optional_bool(file, spec, "strip_left", path + ".strip_left", true);
    step.right = optional_bool(file, spec, "strip_right", path + ".strip_right", true);
  } else {
    fail(file, path + ".type " + json_quote(type) +
                   " is not supported (supported: NFC, NFD, NFKC, NFKD, Prepend, Replace, Strip, Sequence)");
  }
  steps_.push_back(std::move(step));
}

bool Normalizer::apply_step(const Step& step, std::string_view in, std::string& out) {
  switch (step.kind) {
    case Kind::NFC:
      if (nfc_quick_check(in)) return false;
      out = normalize_unicode(in, NormalForm::NFC);
      return true;
    case Kind::NFD:
    case Kind::NFKC:
    case Kind::NFKD: {
      bool ascii = true;
      for (const char c : in) ascii = ascii && static_cast<unsigned char>(c) < 0x80;
      if (ascii) return false;
      out = normalize_unicode(in, step.kind == Kind::NFD    ? NormalForm::NFD
                                  : step.kind == Kind::NFKC ? NormalForm::NFKC
                                                            : NormalForm::NFKD);
      return true;
    }
    case Kind::Prepend:
      if (in.empty()) return false;
      out.reserve(step.text.size() + in.size());
      out.assign(step.text);
      out.append(in);
      return true;
    case Kind::ReplaceString: {
      std::size_t pos = in.find(step.text);
      if (pos == std::string_view::npos) return false;
      out.clear();
      out.reserve(in.size() + in.size() / 4);
      std::size_t start = 0;
      for (; pos != std::string_view::npos; pos = in.find(step.text, start)) {
        out.append(in.substr(start, pos - start));
        out.append(step.content);
        start = pos + step.text.size();
      }
      out.append(in.substr(start));
      return true;
    }
    case Kind::ReplaceRegex: {
      std::size_t start = 0, pos = 0, begin = 0, end = 0;
      bool changed = false;
      out.clear();
      while (pos <= in.size() && step.regex->find(in, pos, begin, end)) {
        if (end == begin) {  // empty matches replace nothing
          if (begin >= in.size()) break;
          pos = begin + utf8_len(static_cast<unsigned char>(in[begin]));
          continue;
        }
        out.append(in.substr(start, begin - start));
        out.append(step.content);
        start = pos = end;
        changed = true;
      }
      if (!changed) return false;
      out.append(in.substr(start));
      return true;
    }
    case Kind::Strip: {
      std::size_t begin = 0, end = in.size();
      if (step.left) {
        while (begin < end) {
          std::size_t next = begin;
          if (!is_unicode_whitespace(next_codepoint(in, next))) break;
          begin = next;
        }
      }
      if (step.right) {
        while (end > begin) {
          std::size_t start = 0;
          if (!is_unicode_whitespace(last_codepoint(in.substr(0, end), &start))) break;
          end = start;
        }
      }
      if (begin == 0 && end == in.size()) return false;
      out.assign(in.substr(begin, end - begin));
      return true;
    }
  }
  return false;
}

std::string_view Normalizer::apply(std::string_view in, std::string& storage) const {
  std::string_view current = in;
  for (const Step& step : steps_) {
    std::string next;
    if (apply_step(step, current, next)) {
      storage = std::move(next);
      current = storage;
    }
  }
  return current;
}

}  // namespace slearn::tok
