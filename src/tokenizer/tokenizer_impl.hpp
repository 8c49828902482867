// The tokenizer's state: the pipeline read from tokenizer.json plus tokenizer_config.json's BOS/EOS rules.
#pragma once

#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "slearn/tokenizer.hpp"
#include "tokenizer/components.hpp"

namespace slearn {

struct Tokenizer::Impl {
  std::string tokenizer_file;  // names used in error messages
  std::string config_file;

  tok::Normalizer normalizer;
  tok::PreTokenizer pre_tokenizer;
  tok::BpeModel model;
  tok::Decoder decoder;

  std::vector<tok::AddedToken> added;
  tok::AddedMatcher raw_matcher;         // added tokens with normalized=false, matched in the raw text
  tok::AddedMatcher normalized_matcher;  // normalized=true, matched in the normalized text

  // Per id: the token text (added tokens win over the model's vocabulary, as in the reference).
  static constexpr std::uint8_t kHasToken = 1, kSpecial = 2;
  std::vector<std::string> tokens;
  std::vector<std::uint8_t> flags;
  tok::StringMap added_ids;  // added token content -> id

  // With a lone ByteLevel decoder, decoding is a concatenation of precomputed bytes per id.
  bool fast_byte_decode = false;
  std::string id_bytes;
  std::vector<std::uint32_t> id_bytes_offset;  // size tokens.size() + 1

  // Post-processing for add_special_tokens: template pieces, applied in order, each either the
  // sequence itself (sequence == true) or fixed ids.
  struct TemplatePiece {
    bool sequence = false;
    std::vector<TokenId> ids;
    std::string name;  // the special token's name in tokenizer.json, for messages
  };
  std::vector<std::vector<TemplatePiece>> templates;
  bool add_bos = false, add_eos = false;
  std::optional<TokenId> bos, eos;

  void load(const std::string& tokenizer_json, const std::string& config_json);
  void load_post_processor(const tok::json& spec, const tok::JsonFile& file, const std::string& path);
  void load_config(const std::string& config_json);
  void build_tables();

  void encode_into(std::string_view text, std::vector<TokenId>& out) const;
  void encode_segment(std::string_view text, bool at_text_start, std::vector<TokenId>& out) const;
  // `continuation` and `stream` as for tok::Decoder::decode; `used_any` tells whether any id produced a token.
  std::string decode(std::span<const TokenId> ids, bool skip_special, bool continuation, bool stream,
                     bool* used_any = nullptr) const;
};

}  // namespace slearn
