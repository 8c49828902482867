// Decoders: ByteLevel, Replace, ByteFallback, Fuse, Strip, Metaspace and Sequences of them, each acting
// on the list of token strings as the reference's decode chain does.
#include "tokenizer/components.hpp"
#include "tokenizer/unicode.hpp"

namespace slearn::tok {
namespace {

constexpr std::string_view kReplacementChar = "\xEF\xBF\xBD";

int hex_digit(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

// The byte a "<0xXX>" token stands for, or -1.
int fallback_byte(std::string_view token) {
  if (token.size() != 6 || token.compare(0, 3, "<0x") != 0 || token[5] != '>') return -1;
  const int hi = hex_digit(token[3]), lo = hex_digit(token[4]);
  return hi < 0 || lo < 0 ? -1 : hi * 16 + lo;
}

void replace_all(std::string& s, std::string_view pattern, std::string_view content) {
  std::size_t pos = s.find(pattern);
  if (pos == std::string::npos) return;
  std::string out;
  std::size_t start = 0;
  for (; pos != std::string::npos; pos = s.find(pattern, start)) {
    out.append(s, start, pos - start);
    out.append(content);
    start = pos + pattern.size();
  }
  out.append(s, start);
  s = std::move(out);
}

std::string join(const std::vector<std::string>& tokens, std::string_view separator) {
  std::string out;
  for (std::size_t i = 0; i < tokens.size(); ++i) {
    if (i > 0) out.append(separator);
    out.append(tokens[i]);
  }
  return out;
}

}  // namespace

std::string byte_level_token_bytes(std::string_view token) {
  std::string bytes;
  bytes.reserve(token.size());
  for (std::size_t i = 0; i < token.size();) {
    const int b = char_to_byte(next_codepoint(token, i));
    if (b < 0) return std::string(token);
    bytes.push_back(static_cast<char>(b));
  }
  return bytes;
}

void Decoder::load(const json& spec, const JsonFile& file, const std::string& path) {
  steps_.clear();
  none_ = spec.is_null();
  if (!none_) load_step(spec, file, path);
}

void Decoder::load_step(const json& spec, const JsonFile& file, const std::string& path) {
  const std::string type = component_type(file, spec, path);
  Step step{};
  if (type == "Sequence") {
    const json& list = require_member(file, spec, "decoders", path + ".decoders");
    if (!list.is_array()) fail(file, path + ".decoders must be an array");
    for (std::size_t i = 0; i < list.size(); ++i) load_step(list[i], file, path + ".decoders[" + std::to_string(i) + "]");
    return;
  } else if (type == "ByteLevel") {
    step.kind = Kind::ByteLevel;
  } else if (type == "ByteFallback") {
    step.kind = Kind::ByteFallback;
  } else if (type == "Fuse") {
    step.kind = Kind::Fuse;
  } else if (type == "Replace") {
    step.kind = Kind::Replace;
    const json& pattern = require_member(file, spec, "pattern", path + ".pattern");
    step.content = require_string(file, spec, "content", path + ".content");
    if (const json* s = find_member(pattern, "String"); s && s->is_string()) {
      step.pattern = s->get<std::string>();
      if (step.pattern.empty()) fail(file, path + ".pattern.String must not be empty");
    } else if (const json* r = find_member(pattern, "Regex"); r && r->is_string()) {
      step.regex = std::make_shared<Regex>(r->get<std::string>(), file.name + ": " + path + ".pattern.Regex");
    } else {
      fail(file, path + ".pattern must be {\"String\": ...} or {\"Regex\": ...}");
    }
  } else if (type == "Strip") {
    step.kind = Kind::Strip;
    step.strip_char = require_string(file, spec, "content", path + ".content");
    const json* start = find_member(spec, "start");
    const json* stop = find_member(spec, "stop");
    if (!start || !start->is_number_unsigned() || !stop || !stop->is_number_unsigned())
      fail(file, path + ".start and .stop must be non-negative integers");
    step.start = start->get<std::size_t>();
    step.stop = stop->get<std::size_t>();
  } else if (type == "Metaspace") {
    step.kind = Kind::Metaspace;
    step.strip_char = optional_string(file, spec, "replacement", path + ".replacement", "\xE2\x96\x81");
    if (const json* scheme = find_member(spec, "prepend_scheme"); scheme && scheme->is_string()) {
      step.prepend = scheme->get<std::string>() != "never";
    } else {
      step.prepend = optional_bool(file, spec, "add_prefix_space", path + ".add_prefix_space", true);
    }
  } else {
    fail(file, path + ".type " + json_quote(type) +
                   " is not supported (supported: ByteLevel, Replace, ByteFallback, Fuse, Strip, Metaspace, Sequence)");
  }
  steps_.push_back(std::move(step));
}

std::string Decoder::decode(std::vector<std::string>& tokens, bool continuation, bool stream) const {
  if (none_) {
    // Without a decoder tokens are joined with spaces, so a continuation starts with one.
    std::string text = continuation && !tokens.empty() ? std::string(1, ' ') : std::string();
    text += join(tokens, " ");
    return stream ? text : lossy_utf8(text);
  }
  bool fused = false;  // the list is one token that starts where the text starts
  for (const Step& step : steps_) {
    switch (step.kind) {
      case Kind::ByteLevel: {
        std::string bytes;
        for (const std::string& t : tokens) bytes.append(byte_level_token_bytes(t));
        tokens.assign(1, stream ? std::move(bytes) : lossy_utf8(bytes));
        fused = true;
        break;
      }
      case Kind::Replace:
        for (std::string& t : tokens) {
          if (!step.regex) {
            replace_all(t, step.pattern, step.content);
            continue;
          }
          std::string out;
          std::size_t start = 0, pos = 0, begin = 0, end = 0;
          while (pos <= t.size() && step.regex->find(t, pos, begin, end)) {
            if (end == begin) {
              if (begin >= t.size()) break;
              pos = begin + utf8_len(static_cast<unsigned char>(t[begin]));
              continue;
            }
            out.append(t, start, begin - start);
            out.append(step.content);
            start = pos = end;
          }
          if (start > 0) {
            out.append(t, start);
            t = std::move(out);
          }
        }
        break;
      case Kind::ByteFallback: {
        // Runs of <0xXX> tokens become their bytes when those are valid UTF-8, else one U+FFFD per byte.
        std::vector<std::string> out;
        out.reserve(tokens.size());
        std::string run;
        std::size_t run_tokens = 0;
        auto flush = [&](bool at_end) {
          if (run_tokens == 0) return;
          const std::size_t tail = stream && at_end ? incomplete_utf8_tail(run) : 0;
          if (is_valid_utf8(run) || (tail > 0 && is_valid_utf8(std::string_view(run).substr(0, run.size() - tail)))) {
            out.push_back(run);
          } else {
            std::string replaced;
            for (std::size_t i = 0; i < run_tokens; ++i) replaced.append(kReplacementChar);
            out.push_back(std::move(replaced));
          }
          run.clear();
          run_tokens = 0;
        };
        for (std::string& t : tokens) {
          const int b = fallback_byte(t);
          if (b >= 0) {
            run.push_back(static_cast<char>(b));
            ++run_tokens;
          } else {
            flush(false);
            out.push_back(std::move(t));
          }
        }
        flush(true);
        tokens = std::move(out);
        break;
      }
      case Kind::Fuse:
        tokens.assign(1, join(tokens, ""));
        fused = true;
        break;
      case Kind::Strip: {
        const std::string_view c = step.strip_char;
        for (std::size_t i = 0; i < tokens.size(); ++i) {
          std::string& t = tokens[i];
          std::size_t begin = 0, end = t.size();
          const bool keep_start = continuation && fused && i == 0;
          for (std::size_t k = 0; k < step.start && !keep_start && !c.empty() && t.compare(begin, c.size(), c) == 0; ++k)
            begin += c.size();
          for (std::size_t k = 0; k < step.stop && !c.empty() && end >= begin + c.size() &&
                                  t.compare(end - c.size(), c.size(), c) == 0;
               ++k)
            end -= c.size();
          if (begin > 0 || end < t.size()) t = t.substr(begin, end - begin);
        }
        break;
      }
      case Kind::Metaspace:
        for (std::size_t i = 0; i < tokens.size(); ++i) {
          // The reference drops every replacement character of the first token (not only the leading one).
          const bool first = i == 0 && step.prepend && !continuation;
          replace_all(tokens[i], step.strip_char, first ? "" : " ");
        }
        break;
    }
  }
  std::string text = join(tokens, "");
  return stream ? text : lossy_utf8(text);
}

}  // namespace slearn::tok
