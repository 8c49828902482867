// Tokenizer: loading entry points, encoding (added tokens -> normalizer -> pre-tokenizer -> BPE ->
// post-processor), decoding, and streamed decoding.
//
// Behaviour follows Hugging Face `tokenizers` (checked against 0.23), including these details:
//  - added tokens with normalized=false are matched in the raw text; those with normalized=true are
//    matched in each normalized segment against their normalized content, and (as the reference does)
//    id_to_token/decode give that normalized content. An added token whose content is already in the
//    model's vocabulary takes the vocabulary's id.
//  - encode() of text that is not valid UTF-8 first replaces invalid bytes by U+FFFD (the reference
//    only accepts valid strings); decode() skips ids that have no token.
//  - StreamDecoder output equals decode() whenever the ids' bytes form valid UTF-8. For invalid byte
//    runs of SentencePiece byte-fallback tokens, the reference turns the whole run into one U+FFFD per
//    byte, which a stream cannot know in advance; the stream replaces each invalid sequence instead.
#include <algorithm>
#include <fstream>
#include <set>
#include <sstream>

#include "slearn/error.hpp"
#include "util/symlink_loop.hpp"
#include "tokenizer/tokenizer_impl.hpp"
#include "tokenizer/unicode.hpp"

namespace slearn {
namespace {

std::string read_file(const std::filesystem::path& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw InputError(path.string() + ": cannot open the file");
  std::ostringstream buffer;
  buffer << in.rdbuf();
  if (in.bad()) throw InputError(path.string() + ": cannot read the file");
  return buffer.str();
}

// Feeds pre-tokens to the BPE model.
class ModelSink final : public tok::PieceSink {
 public:
  ModelSink(const tok::BpeModel& model, std::vector<TokenId>& out) : model_(model), out_(out) {}
  void piece(std::string_view text) override { model_.encode_word(text, out_); }

 private:
  const tok::BpeModel& model_;
  std::vector<TokenId>& out_;
};

}  // namespace

// ---- construction ----

Tokenizer::Tokenizer(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
Tokenizer::Tokenizer(Tokenizer&&) noexcept = default;
Tokenizer& Tokenizer::operator=(Tokenizer&&) noexcept = default;
Tokenizer::~Tokenizer() = default;

Tokenizer Tokenizer::from_dir(const std::filesystem::path& dir) {
  const std::filesystem::path tokenizer_path = dir / "tokenizer.json";
  const std::filesystem::path config_path = dir / "tokenizer_config.json";
  // With an error_code: without one, a path that cannot be resolved (a symlink loop) throws filesystem_error,
  // which is no InputError and would not name the file the way the user knows it.
  std::error_code error;
  if (!std::filesystem::is_regular_file(tokenizer_path, error)) {
    refuse_symlink_loop(tokenizer_path, error, "tokenizer.json", dir);
    throw InputError(tokenizer_path.string() + ": no such file (a Hugging Face tokenizer.json is needed)");
  }
  const std::string tokenizer_json = read_file(tokenizer_path);
  // tokenizer_config.json is optional, but one that cannot be reached is not the same as none.
  const bool has_config = std::filesystem::is_regular_file(config_path, error);
  if (!has_config) refuse_symlink_loop(config_path, error, "tokenizer_config.json", dir);
  const std::string config_json = has_config ? read_file(config_path) : "";
  return from_json(tokenizer_json, config_json, dir.string());
}

// `source_name` names the files in error messages: a directory ("<dir>/tokenizer.json"), a path to the
// tokenizer.json itself, or empty ("tokenizer.json"). An empty config means there is none.
Tokenizer Tokenizer::from_json(const std::string& tokenizer_json, const std::string& tokenizer_config_json,
                               const std::string& source_name) {
  auto impl = std::make_unique<Impl>();
  const std::filesystem::path source(source_name);
  if (source_name.empty()) {
    impl->tokenizer_file = "tokenizer.json";
    impl->config_file = "tokenizer_config.json";
  } else if (source.extension() == ".json") {
    impl->tokenizer_file = source.string();
    impl->config_file = (source.parent_path() / "tokenizer_config.json").string();
  } else {
    impl->tokenizer_file = (source / "tokenizer.json").string();
    impl->config_file = (source / "tokenizer_config.json").string();
  }
  impl->load(tokenizer_json, tokenizer_config_json);
  return Tokenizer(std::move(impl));
}

// ---- encoding ----

void Tokenizer::Impl::encode_segment(std::string_view text, bool at_text_start, std::vector<TokenId>& out) const {
  std::string storage;
  const std::string_view normalized = normalizer.apply(text, storage);
  ModelSink sink(model, out);
  if (normalized_matcher.empty()) {
    pre_tokenizer.run(normalized, at_text_start, sink);
    return;
  }
  std::vector<tok::AddedMatcher::Segment> segments;
  normalized_matcher.split(normalized, segments);
  for (const auto& s : segments) {
    if (s.token >= 0) out.push_back(added[static_cast<std::size_t>(s.token)].id);
    else pre_tokenizer.run(normalized.substr(s.begin, s.end - s.begin), at_text_start && s.begin == 0, sink);
  }
}

void Tokenizer::Impl::encode_into(std::string_view text, std::vector<TokenId>& out) const {
  if (raw_matcher.empty()) {
    encode_segment(text, true, out);
    return;
  }
  std::vector<tok::AddedMatcher::Segment> segments;
  raw_matcher.split(text, segments);
  for (const auto& s : segments) {
    if (s.token >= 0) out.push_back(added[static_cast<std::size_t>(s.token)].id);
    else encode_segment(text.substr(s.begin, s.end - s.begin), s.begin == 0, out);
  }
}

std::vector<TokenId> Tokenizer::encode(std::string_view text, bool add_special_tokens) const {
  std::vector<TokenId> ids;
  ids.reserve(text.size() / 3 + 8);
  // Input that is not valid UTF-8 is repaired (U+FFFD) first; the reference only accepts valid text.
  if (tok::is_valid_utf8(text)) {
    impl_->encode_into(text, ids);
  } else {
    impl_->encode_into(tok::lossy_utf8(text), ids);
  }
  if (!add_special_tokens) return ids;
  if (!impl_->templates.empty()) {
    for (const auto& pieces : impl_->templates) {
      std::vector<TokenId> next;
      next.reserve(ids.size() + 4);
      for (const Impl::TemplatePiece& piece : pieces) {
        if (piece.sequence) next.insert(next.end(), ids.begin(), ids.end());
        else next.insert(next.end(), piece.ids.begin(), piece.ids.end());
      }
      ids = std::move(next);
    }
  } else {
    if (impl_->add_bos) ids.insert(ids.begin(), *impl_->bos);
    if (impl_->add_eos) ids.push_back(*impl_->eos);
  }
  return ids;
}

// ---- decoding ----

std::string Tokenizer::Impl::decode(std::span<const TokenId> ids, bool skip_special, bool continuation, bool stream,
                                    bool* used_any) const {
  // Ids without a token (out of range, e.g. a model's padded vocabulary) are skipped, as in the reference.
  auto usable = [&](TokenId id) {
    if (id < 0 || static_cast<std::size_t>(id) >= flags.size()) return false;
    const std::uint8_t f = flags[static_cast<std::size_t>(id)];
    return (f & kHasToken) && !(skip_special && (f & kSpecial));
  };
  bool any = false;
  std::string text;
  if (fast_byte_decode) {
    std::string bytes;
    for (const TokenId id : ids) {
      if (!usable(id)) continue;
      any = true;
      const auto i = static_cast<std::size_t>(id);
      bytes.append(id_bytes, id_bytes_offset[i], id_bytes_offset[i + 1] - id_bytes_offset[i]);
    }
    text = stream ? std::move(bytes) : tok::lossy_utf8(bytes);
  } else {
    std::vector<std::string> pieces;
    pieces.reserve(ids.size());
    for (const TokenId id : ids)
      if (usable(id)) pieces.push_back(tokens[static_cast<std::size_t>(id)]);
    any = !pieces.empty();
    text = decoder.decode(pieces, continuation, stream);
  }
  if (used_any) *used_any = any;
  return text;
}

std::string Tokenizer::decode(std::span<const TokenId> ids, bool skip_special_tokens) const {
  return impl_->decode(ids, skip_special_tokens, false, false);
}

// ---- vocabulary ----

std::optional<TokenId> Tokenizer::token_to_id(std::string_view token) const {
  if (const TokenId* id = impl_->added_ids.get(token)) return *id;
  if (const TokenId* id = impl_->model.vocab().get(token)) return *id;
  return std::nullopt;
}

std::string Tokenizer::id_to_token(TokenId id) const {
  if (id < 0 || static_cast<std::size_t>(id) >= impl_->tokens.size())
    throw InputError("token id " + std::to_string(id) + " is out of range (vocabulary size " +
                     std::to_string(impl_->tokens.size()) + ")");
  if (!(impl_->flags[static_cast<std::size_t>(id)] & Impl::kHasToken))
    throw InputError("token id " + std::to_string(id) + " has no token in " + impl_->tokenizer_file);
  return impl_->tokens[static_cast<std::size_t>(id)];
}

bool Tokenizer::is_special(TokenId id) const {
  return id >= 0 && static_cast<std::size_t>(id) < impl_->flags.size() &&
         (impl_->flags[static_cast<std::size_t>(id)] & Impl::kSpecial);
}

std::size_t Tokenizer::vocab_size() const { return impl_->tokens.size(); }
std::optional<TokenId> Tokenizer::bos_id() const { return impl_->bos; }
std::optional<TokenId> Tokenizer::eos_id() const { return impl_->eos; }

void check_tokenizer_fits_vocab(const Tokenizer& tokenizer, std::int64_t vocab_size,
                                const std::filesystem::path& tokenizer_json) {
  const Tokenizer::Impl& impl = *tokenizer.impl_;
  // The id table spans the vocabulary and the added tokens; the post-processor's ids may lie beyond it.
  struct Offender {
    TokenId id = -1;
    std::string text;
    const char* kind = "";
  };
  Offender worst;
  std::int64_t count = 0;
  for (std::size_t id = impl.tokens.size(); id-- > 0 && static_cast<std::int64_t>(id) >= vocab_size;) {
    if (!(impl.flags[id] & Tokenizer::Impl::kHasToken)) continue;
    ++count;
    if (worst.id < 0) worst = {static_cast<TokenId>(id), impl.tokens[id], "token"};
  }
  if (worst.id >= 0) {
    // Added tokens show their content as written in the file (the table may hold it normalized).
    for (const tok::AddedToken& t : impl.added)
      if (t.id == worst.id) worst = {t.id, t.content, "added token"};
  }
  std::set<TokenId> beyond_table;  // post-processor ids that no token of the table has
  for (const auto& pieces : impl.templates)
    for (const Tokenizer::Impl::TemplatePiece& piece : pieces)
      for (const TokenId id : piece.ids) {
        if (id < vocab_size) continue;
        const auto index = static_cast<std::size_t>(id);
        if (index >= impl.tokens.size() || !(impl.flags[index] & Tokenizer::Impl::kHasToken)) beyond_table.insert(id);
        if (id > worst.id) worst = {id, piece.name, "post_processor special token"};
      }
  count += static_cast<std::int64_t>(beyond_table.size());
  if (worst.id < 0) return;
  throw InputError(tokenizer_json.string() + ": " + worst.kind + " " + tok::json_quote(worst.text) + " has id " +
                   std::to_string(worst.id) + ", but the model's vocab_size (config.json) is " +
                   std::to_string(vocab_size) + ": the model has no embedding for it (" + std::to_string(count) +
                   (count == 1 ? " token id is" : " token ids are") + " >= " + std::to_string(vocab_size) +
                   "); the tokenizer does not belong to this model");
}

// ---- streamed decoding ----
//
// ids_ is a short window of recent ids; emitted_ counts the bytes of its decoded text already returned.
// Text is returned up to the last complete UTF-8 character; when the window's text is all returned
// the window starts over (decoding continues with `continued_` set), so the work per id stays small.
// When a tail is held back, the window shrinks to the ids that produce the tail.

StreamDecoder::StreamDecoder(const Tokenizer& tokenizer, bool skip_special_tokens)
    : tokenizer_(tokenizer), skip_special_tokens_(skip_special_tokens) {}

std::string StreamDecoder::push(TokenId id) {
  const Tokenizer::Impl& impl = *tokenizer_.impl_;
  ids_.push_back(id);
  bool used = false;
  const std::string text = impl.decode(ids_, skip_special_tokens_, continued_, true, &used);
  const std::size_t tail = tok::incomplete_utf8_tail(text);
  const std::size_t ready = text.size() - tail;
  std::string out;
  if (ready > emitted_) out = tok::lossy_utf8(std::string_view(text).substr(emitted_, ready - emitted_));
  emitted_ = std::max(emitted_, ready);
  if (tail == 0) {
    continued_ = continued_ || used;
    ids_.clear();
    emitted_ = 0;
    return out;
  }
  // Keep only the shortest suffix of ids whose text (as a continuation) covers the held tail.
  for (std::size_t start = ids_.size() - 1; start > 0; --start) {
    const std::span<const TokenId> suffix(ids_.data() + start, ids_.size() - start);
    const std::string part = impl.decode(suffix, skip_special_tokens_, true, true);
    if (part.size() < tail || part.size() > text.size()) continue;
    if (text.compare(text.size() - part.size(), part.size(), part) != 0) break;
    ids_.erase(ids_.begin(), ids_.begin() + static_cast<std::ptrdiff_t>(start));
    emitted_ = part.size() - tail;
    continued_ = true;
    break;
  }
  return out;
}

std::string StreamDecoder::finish() {
  std::string out;
  if (!ids_.empty()) {
    bool used = false;
    const std::string text = tokenizer_.impl_->decode(ids_, skip_special_tokens_, continued_, true, &used);
    if (text.size() > emitted_) out = tok::lossy_utf8(std::string_view(text).substr(emitted_));
    continued_ = continued_ || used;
  }
  ids_.clear();
  emitted_ = 0;
  return out;
}

}  // namespace slearn
