// The pieces of a Hugging Face tokenizer pipeline: normalizer, pre-tokenizer, BPE model, added-token
// matcher and decoder. Each is read from its part of tokenizer.json; anything unsupported is an
// InputError that names the file and the key.
#pragma once

#include <nlohmann/json.hpp>

#include <array>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "slearn/tokenizer.hpp"
#include "tokenizer/regex.hpp"
#include "tokenizer/string_map.hpp"

namespace slearn::tok {

using json = nlohmann::json;

// ---- reading JSON with errors that name the file and key ----

struct JsonFile {
  std::string name;  // as shown in messages, e.g. "models/qwen/tokenizer.json"
};

[[noreturn]] void fail(const JsonFile& file, const std::string& message);
// obj[key], or nullptr when obj is not an object or lacks the key.
const json* find_member(const json& obj, std::string_view key);
const json& require_member(const JsonFile& file, const json& obj, std::string_view key, const std::string& path);
std::string require_string(const JsonFile& file, const json& obj, std::string_view key, const std::string& path);
std::string optional_string(const JsonFile& file, const json& obj, std::string_view key, const std::string& path,
                            const std::string& fallback);
bool optional_bool(const JsonFile& file, const json& obj, std::string_view key, const std::string& path, bool fallback);
// The "type" of a component object (error when missing or not a string).
std::string component_type(const JsonFile& file, const json& obj, const std::string& path);
// `"quoted"` JSON rendering for messages.
std::string json_quote(std::string_view s);


// ---- normalizer ----

class Normalizer {
 public:
  void load(const json& spec, const JsonFile& file, const std::string& path);
  bool empty() const { return steps_.empty(); }
  // The normalized text: `in` itself when nothing changed, else a view of `storage`.
  std::string_view apply(std::string_view in, std::string& storage) const;

 private:
  enum class Kind { NFC, NFD, NFKC, NFKD, Prepend, ReplaceString, ReplaceRegex, Strip };
  struct Step {
    Kind kind;
    std::string text;     // Prepend: the prefix; Replace: the pattern literal
    std::string content;  // Replace: the replacement
    std::shared_ptr<Regex> regex;
    bool left = false, right = false;
  };
  void load_step(const json& spec, const JsonFile& file, const std::string& path);
  static bool apply_step(const Step& step, std::string_view in, std::string& out);
  std::vector<Step> steps_;
};

// ---- pre-tokenizer ----

class PieceSink {
 public:
  virtual void piece(std::string_view text) = 0;

 protected:
  ~PieceSink() = default;
};

class PreTokenizer {
 public:
  void load(const json& spec, const JsonFile& file, const std::string& path);
  // True when the last step is ByteLevel: the model then works on raw bytes (mapped by the model).
  bool byte_level() const { return byte_level_; }
  // Splits one segment of normalized text into pre-tokens. `at_text_start`: the segment begins the input.
  void run(std::string_view text, bool at_text_start, PieceSink& sink) const;

 private:
  enum class Kind { Split, PrefixSpace, Metaspace };
  enum class Behavior { Removed, Isolated, MergedWithPrevious, MergedWithNext, Contiguous };
  struct Step {
    Kind kind = Kind::Split;
    std::shared_ptr<Regex> regex;
    Behavior behavior = Behavior::Isolated;
    bool invert = false;
    std::string replacement;  // Metaspace
    int prepend = 0;          // Metaspace: 0 never, 1 first, 2 always
    bool split = true;        // Metaspace
  };
  void load_step(const json& spec, const JsonFile& file, const std::string& path);
  void run_from(std::size_t k, std::string_view text, bool at_start, PieceSink& sink) const;
  void run_split(std::size_t k, const Step& step, std::string_view text, bool at_start, PieceSink& sink) const;
  std::vector<Step> steps_;
  bool byte_level_ = false;
};

// ---- BPE model ----

class BpeModel {
 public:
  BpeModel();
  ~BpeModel();
  BpeModel(BpeModel&&) noexcept;
  BpeModel& operator=(BpeModel&&) noexcept;

  // `byte_level`: pre-tokens arrive as raw bytes and are mapped with GPT-2's byte table.
  void load(const json& model, const JsonFile& file, bool byte_level);
  // Appends the ids of one pre-token (results are cached per thread).
  void encode_word(std::string_view word, std::vector<TokenId>& out) const;

  const StringMap& vocab() const { return vocab_; }
  std::optional<TokenId> unk_id() const;

  struct PairTable;
  struct Scratch;

 private:
  void compute(std::string_view word, std::vector<TokenId>& out) const;
  void initial_symbols(std::string_view word, std::vector<TokenId>& syms) const;
  void merge(std::vector<TokenId>& syms, Scratch& scratch) const;

  StringMap vocab_;
  StringMap raw_vocab_;  // byte-level with ignore_merges: vocab keyed by raw bytes
  std::unique_ptr<PairTable> merges_;
  std::array<TokenId, 256> byte_ids_{};      // byte-level: id of each byte's character, -1 if none
  std::array<TokenId, 256> fallback_ids_{};  // byte_fallback: id of "<0xXX>", -1 if none
  TokenId unk_ = -1;
  bool byte_level_ = false;
  bool fast_bytes_ = false;  // byte-level without subword prefix/suffix: symbols straight from bytes
  bool fuse_unk_ = false;
  bool byte_fallback_ = false;
  bool ignore_merges_ = false;
  std::string prefix_, suffix_;
  std::uint64_t serial_ = 0;  // identifies this model's per-thread caches
};

// ---- added tokens ----

struct AddedToken {
  TokenId id = 0;
  std::string content;
  bool special = false;
  bool single_word = false;
  bool lstrip = false;
  bool rstrip = false;
  bool normalized = false;
};

class AddedMatcher {
 public:
  struct Segment {
    std::size_t begin, end;
    int token;  // index into the token list, or -1 for plain text
  };
  // `patterns[i]` is what token `which[i]` looks like in the text it is matched against.
  void build(const std::vector<AddedToken>* tokens, std::vector<std::string> patterns, std::vector<int> which);
  bool empty() const { return patterns_.empty(); }
  // Splits text into plain runs and added tokens: leftmost-longest matches, then single_word,
  // lstrip and rstrip as Hugging Face applies them.
  void split(std::string_view text, std::vector<Segment>& out) const;

 private:
  bool find(std::string_view text, std::size_t from, std::size_t& begin, std::size_t& end, int& token) const;
  const std::vector<AddedToken>* tokens_ = nullptr;
  std::vector<std::string> patterns_;
  std::vector<int> which_;
  std::array<std::vector<int>, 256> by_first_;  // pattern indices by first byte, longest first
  int single_first_ = -1;                       // the only first byte in use, or -1
};

// ---- decoder ----

class Decoder {
 public:
  void load(const json& spec, const JsonFile& file, const std::string& path);
  bool none() const { return none_; }
  bool byte_level_only() const { return steps_.size() == 1 && steps_[0].kind == Kind::ByteLevel; }
  // Turns token strings into text. `continuation`: the text follows earlier output, so rules for
  // the start of the text (Strip after Fuse, Metaspace's first token) do not apply. `stream`: a
  // trailing incomplete UTF-8 sequence is left as raw bytes for the caller to hold back.
  std::string decode(std::vector<std::string>& tokens, bool continuation, bool stream) const;

 private:
  enum class Kind { ByteLevel, Replace, ByteFallback, Fuse, Strip, Metaspace };
  struct Step {
    Kind kind;
    std::string pattern, content;  // Replace (string pattern)
    std::shared_ptr<Regex> regex;  // Replace (regex pattern)
    std::string strip_char;        // Strip content; Metaspace replacement
    std::size_t start = 0, stop = 0;
    bool prepend = true;  // Metaspace: prepend_scheme != never
  };
  void load_step(const json& spec, const JsonFile& file, const std::string& path);
  std::vector<Step> steps_;
  bool none_ = true;
};

// Bytes a token stands for under the ByteLevel decoder: its mapped characters, or the token's own
// UTF-8 when some character is outside the byte map (as the reference does).
std::string byte_level_token_bytes(std::string_view token);

}  // namespace slearn::tok
