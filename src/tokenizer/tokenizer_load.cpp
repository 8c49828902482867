// Reading tokenizer.json and tokenizer_config.json into a Tokenizer::Impl.
#include <algorithm>
#include <climits>

#include "io/io_util.hpp"
#include "slearn/error.hpp"
#include "tokenizer/tokenizer_impl.hpp"

namespace slearn {

using tok::fail;
using tok::find_member;
using tok::json;
using tok::JsonFile;
using tok::json_quote;

namespace {

json parse_json(const std::string& text, const JsonFile& file) {
  try {
    return json::parse(text);
  } catch (const json::parse_error& e) {
    fail(file, "not valid JSON (" + io_detail::json_error_text(e) + ")");
  }
}

TokenId read_id(const JsonFile& file, const json& value, const std::string& path) {
  if (!value.is_number_integer() || value.get<std::int64_t>() < 0 || value.get<std::int64_t>() > INT32_MAX)
    fail(file, path + " must be a non-negative integer id");
  return static_cast<TokenId>(value.get<std::int64_t>());
}

}  // namespace

void Tokenizer::Impl::load(const std::string& tokenizer_json, const std::string& config_json) {
  const JsonFile file{tokenizer_file};
  const json root = parse_json(tokenizer_json, file);
  if (!root.is_object()) fail(file, "the top level must be a JSON object");
  // Checked first: without it the file is not a tokenizers file at all (a slow tokenizer's
  // vocab.json, an HTML error page saved by a download, ...), and that is the message that helps.
  if (!find_member(root, "model"))
    fail(file, "the \"model\" section (the vocabulary and merges) is missing; a Hugging Face tokenizer.json "
               "(from the tokenizers library) is needed");

  if (const json* list = find_member(root, "added_tokens"); list && !list->is_null()) {
    if (!list->is_array()) fail(file, "added_tokens must be an array");
    for (std::size_t i = 0; i < list->size(); ++i) {
      const json& entry = (*list)[i];
      const std::string path = "added_tokens[" + std::to_string(i) + "]";
      if (!entry.is_object()) fail(file, path + " must be an object");
      tok::AddedToken token;
      token.id = read_id(file, tok::require_member(file, entry, "id", path + ".id"), path + ".id");
      token.content = tok::require_string(file, entry, "content", path + ".content");
      if (token.content.empty()) fail(file, path + ".content must not be empty");
      token.special = tok::optional_bool(file, entry, "special", path + ".special", false);
      token.single_word = tok::optional_bool(file, entry, "single_word", path + ".single_word", false);
      token.lstrip = tok::optional_bool(file, entry, "lstrip", path + ".lstrip", false);
      token.rstrip = tok::optional_bool(file, entry, "rstrip", path + ".rstrip", false);
      token.normalized = tok::optional_bool(file, entry, "normalized", path + ".normalized", !token.special);
      added.push_back(std::move(token));
    }
  }

  static const json null_json;
  auto part = [&](const char* key) -> const json& {
    const json* value = find_member(root, key);
    return value ? *value : null_json;
  };
  normalizer.load(part("normalizer"), file, "normalizer");
  pre_tokenizer.load(part("pre_tokenizer"), file, "pre_tokenizer");
  model.load(tok::require_member(file, root, "model", "model"), file, pre_tokenizer.byte_level());
  decoder.load(part("decoder"), file, "decoder");
  load_post_processor(part("post_processor"), file, "post_processor");
  build_tables();
  load_config(config_json);
}

void Tokenizer::Impl::load_post_processor(const json& spec, const JsonFile& file, const std::string& path) {
  if (spec.is_null()) return;
  const std::string type = tok::component_type(file, spec, path);
  if (type == "Sequence") {
    const json& list = tok::require_member(file, spec, "processors", path + ".processors");
    if (!list.is_array()) fail(file, path + ".processors must be an array");
    for (std::size_t i = 0; i < list.size(); ++i)
      load_post_processor(list[i], file, path + ".processors[" + std::to_string(i) + "]");
  } else if (type == "ByteLevel") {
    // Only adjusts offsets, which this tokenizer does not report.
  } else if (type == "TemplateProcessing") {
    const json& single = tok::require_member(file, spec, "single", path + ".single");
    if (!single.is_array()) fail(file, path + ".single must be an array");
    const json* specials = find_member(spec, "special_tokens");
    std::vector<TemplatePiece> pieces;
    for (std::size_t i = 0; i < single.size(); ++i) {
      const std::string where = path + ".single[" + std::to_string(i) + "]";
      if (find_member(single[i], "Sequence")) {
        pieces.push_back({true, {}, {}});
      } else if (const json* special = find_member(single[i], "SpecialToken")) {
        const std::string name = tok::require_string(file, *special, "id", where + ".SpecialToken.id");
        const json* entry = specials ? find_member(*specials, name) : nullptr;
        if (!entry) fail(file, where + ": special token " + json_quote(name) + " is not in " + path + ".special_tokens");
        const json& ids = tok::require_member(file, *entry, "ids", path + ".special_tokens[" + json_quote(name) + "].ids");
        if (!ids.is_array()) fail(file, path + ".special_tokens[" + json_quote(name) + "].ids must be an array");
        TemplatePiece piece;
        piece.name = name;
        for (const json& id : ids) piece.ids.push_back(read_id(file, id, path + ".special_tokens[" + json_quote(name) + "].ids"));
        pieces.push_back(std::move(piece));
      } else {
        fail(file, where + " must be {\"Sequence\": ...} or {\"SpecialToken\": ...}");
      }
    }
    templates.push_back(std::move(pieces));
  } else if (type == "RobertaProcessing" || type == "BertProcessing") {
    auto token = [&](const char* key) {
      const json& pair = tok::require_member(file, spec, key, path + "." + key);
      if (!pair.is_array() || pair.size() != 2) fail(file, path + "." + key + " must be [token, id]");
      return TemplatePiece{false, {read_id(file, pair[1], path + "." + key + "[1]")},
                           pair[0].is_string() ? pair[0].get<std::string>() : std::string(key)};
    };
    templates.push_back({token("cls"), TemplatePiece{true, {}, {}}, token("sep")});
  } else {
    fail(file, path + ".type " + json_quote(type) +
                   " is not supported (supported: TemplateProcessing, ByteLevel, RobertaProcessing, BertProcessing, "
                   "Sequence)");
  }
}

void Tokenizer::Impl::build_tables() {
  // As in the reference, an added token the model's vocabulary already has keeps the model's id.
  for (tok::AddedToken& t : added)
    if (const TokenId* id = model.vocab().get(t.content)) t.id = *id;
  TokenId max_id = -1;
  model.vocab().for_each([&](std::string_view, TokenId id) { max_id = std::max(max_id, id); });
  for (const tok::AddedToken& t : added) max_id = std::max(max_id, t.id);
  const auto size = static_cast<std::size_t>(max_id + 1);
  tokens.assign(size, std::string());
  flags.assign(size, 0);
  model.vocab().for_each([&](std::string_view text, TokenId id) {
    tokens[static_cast<std::size_t>(id)] = text;
    flags[static_cast<std::size_t>(id)] = kHasToken;
  });
  std::vector<std::string> raw_patterns, normalized_patterns;
  std::vector<int> raw_which, normalized_which;
  for (std::size_t i = 0; i < added.size(); ++i) {
    const tok::AddedToken& t = added[i];
    tokens[static_cast<std::size_t>(t.id)] = t.content;
    flags[static_cast<std::size_t>(t.id)] = static_cast<std::uint8_t>(kHasToken | (t.special ? kSpecial : 0));
    added_ids.set(t.content, t.id);
    if (t.normalized) {
      // Matched against normalized text, so it is normalized too; the reference also decodes it
      // (and reports it from id_to_token) in its normalized form.
      std::string storage;
      normalized_patterns.emplace_back(normalizer.apply(t.content, storage));
      normalized_which.push_back(static_cast<int>(i));
      tokens[static_cast<std::size_t>(t.id)] = normalized_patterns.back();
    } else {
      raw_patterns.push_back(t.content);
      raw_which.push_back(static_cast<int>(i));
    }
  }
  raw_matcher.build(&added, std::move(raw_patterns), std::move(raw_which));
  normalized_matcher.build(&added, std::move(normalized_patterns), std::move(normalized_which));

  fast_byte_decode = decoder.byte_level_only();
  if (fast_byte_decode) {
    id_bytes.clear();
    id_bytes_offset.assign(1, 0);
    for (std::size_t id = 0; id < size; ++id) {
      id_bytes.append(tok::byte_level_token_bytes(tokens[id]));
      id_bytes_offset.push_back(static_cast<std::uint32_t>(id_bytes.size()));
    }
  }
}

void Tokenizer::Impl::load_config(const std::string& config_json) {
  if (config_json.empty()) return;
  const JsonFile file{config_file};
  const json root = parse_json(config_json, file);
  if (!root.is_object()) fail(file, "the top level must be a JSON object");
  auto special = [&](const char* key) -> std::optional<TokenId> {
    const json* value = find_member(root, key);
    if (!value || value->is_null()) return std::nullopt;
    std::string content;
    if (value->is_string()) {
      content = value->get<std::string>();
    } else if (const json* c = find_member(*value, "content"); c && c->is_string()) {
      content = c->get<std::string>();
    } else {
      fail(file, std::string(key) + " must be a string, {\"content\": ...} or null");
    }
    if (const TokenId* id = added_ids.get(content)) return *id;
    if (const TokenId* id = model.vocab().get(content)) return *id;
    fail(file, std::string(key) + " " + json_quote(content) + " is not a token of " + tokenizer_file);
  };
  bos = special("bos_token");
  eos = special("eos_token");
  add_bos = tok::optional_bool(file, root, "add_bos_token", "add_bos_token", false);
  add_eos = tok::optional_bool(file, root, "add_eos_token", "add_eos_token", false);
  if (add_bos && !bos) fail(file, "add_bos_token is true but bos_token is not set");
  if (add_eos && !eos) fail(file, "add_eos_token is true but eos_token is not set");
}

}  // namespace slearn
