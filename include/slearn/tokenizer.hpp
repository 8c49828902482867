// Tokenizers read from Hugging Face's tokenizer.json. Two BPE families are supported:
//  - byte-level BPE (Qwen, LLaMA-3, GPT-2): NFC normalizer, Split-regex and ByteLevel pre-tokenizers;
//  - SentencePiece-style BPE (LLaMA-2): Prepend/Replace normalizers, byte_fallback, and the
//    Replace/ByteFallback/Fuse/Strip decoder.
// Added tokens (special or not) are matched in the raw text before normalization and BPE.
#pragma once

#include <cstdint>
#include <filesystem>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace slearn {

using TokenId = std::int32_t;

class Tokenizer {
 public:
  // Reads `dir/tokenizer.json` and, when present, `dir/tokenizer_config.json` (bos/eos tokens,
  // add_bos_token / add_eos_token). Malformed or unsupported files throw InputError naming the file and key.
  static Tokenizer from_dir(const std::filesystem::path& dir);
  static Tokenizer from_json(const std::string& tokenizer_json, const std::string& tokenizer_config_json,
                             const std::string& source_name);
  Tokenizer(Tokenizer&&) noexcept;
  Tokenizer& operator=(Tokenizer&&) noexcept;
  ~Tokenizer();

  // add_special_tokens applies the post-processor's / tokenizer_config's BOS/EOS rules (off by default).
  std::vector<TokenId> encode(std::string_view text, bool add_special_tokens = false) const;
  // Invalid UTF-8 produced by byte tokens is replaced by U+FFFD, as the reference does.
  std::string decode(std::span<const TokenId> ids, bool skip_special_tokens = false) const;

  std::optional<TokenId> token_to_id(std::string_view token) const;
  std::string id_to_token(TokenId id) const;  // throws InputError for an id out of range
  bool is_special(TokenId id) const;
  std::size_t vocab_size() const;  // highest id + 1, added tokens included
  std::optional<TokenId> bos_id() const;
  std::optional<TokenId> eos_id() const;

  struct Impl;

 private:
  explicit Tokenizer(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
  friend class StreamDecoder;
  friend void check_tokenizer_fits_vocab(const Tokenizer&, std::int64_t, const std::filesystem::path&);
};

// Refuses a tokenizer that can produce an id the model has no embedding row for: any id of its vocabulary,
// its added tokens or its post-processor's special tokens that is >= the model's `vocab_size` (config.json).
// Such an id would otherwise pass every input check and fail in the middle of a run. The InputError names
// `tokenizer_json`, the token with the highest id, that id and vocab_size. Call it wherever a model and its
// tokenizer are loaded together. (Chat formats name their special tokens by text, which the tokenizer maps
// to ids of its own vocabulary or added tokens, so those are covered.)
void check_tokenizer_fits_vocab(const Tokenizer& tokenizer, std::int64_t vocab_size,
                                const std::filesystem::path& tokenizer_json);

// Incremental decoding for streamed output: push() returns only text that is final. A byte sequence that is
// an incomplete UTF-8 character is held back until it completes; finish() flushes what remains.
class StreamDecoder {
 public:
  explicit StreamDecoder(const Tokenizer& tokenizer, bool skip_special_tokens = false);
  std::string push(TokenId id);
  std::string finish();

 private:
  const Tokenizer& tokenizer_;
  bool skip_special_tokens_;
  std::vector<TokenId> ids_;
  std::size_t emitted_ = 0;  // bytes of decode(ids_) already returned
  bool continued_ = false;   // text was returned before ids_ began, so ids_ decode as a continuation
};

}  // namespace slearn
