// The BPE model: vocabulary, merges as a hash table on id pairs, merging over ids (a rank scan for short
// words, a heap over a linked list for long ones) and a per-thread cache of encoded pre-tokens.
#include <algorithm>
#include <atomic>
#include <climits>
#include <cstdio>
#include <cstring>

#include "tokenizer/components.hpp"
#include "tokenizer/unicode.hpp"

namespace slearn::tok {
namespace {

std::uint64_t pair_key(TokenId a, TokenId b) {
  return (static_cast<std::uint64_t>(static_cast<std::uint32_t>(a)) << 32) | static_cast<std::uint32_t>(b);
}

// Encoded pre-tokens, at most kMaxEntries, in flat storage: no allocation once warm. When full it
// starts over, so the cache follows the text. About 2 MB per thread and model; larger than the
// reference's 10,000 entries because English medical text has a long tail of words (measured ~15%
// faster on MedQuAD than with 10,000).
class WordCache {
 public:
  static constexpr std::size_t kSlots = 65536;
  static constexpr std::size_t kMaxEntries = 40000;
  static constexpr std::size_t kMaxKey = 255;  // longer pre-tokens are not cached

  WordCache() : slots_(kSlots) {}

  const TokenId* find(std::string_view key, std::uint64_t hash, std::size_t& count) const {
    for (std::size_t i = hash & (kSlots - 1);; i = (i + 1) & (kSlots - 1)) {
      const Slot& slot = slots_[i];
      if (slot.hash == 0) return nullptr;
      if (slot.hash == hash && slot.key_len == key.size() &&
          std::memcmp(keys_.data() + slot.key_off, key.data(), key.size()) == 0) {
        count = slot.val_len;
        return values_.data() + slot.val_off;
      }
    }
  }

  void insert(std::string_view key, std::uint64_t hash, const TokenId* ids, std::size_t count) {
    if (count > 0xFFFF) return;
    if (entries_ >= kMaxEntries) {
      std::fill(slots_.begin(), slots_.end(), Slot{});
      keys_.clear();
      values_.clear();
      entries_ = 0;
    }
    std::size_t i = hash & (kSlots - 1);
    while (slots_[i].hash != 0) i = (i + 1) & (kSlots - 1);
    slots_[i] = Slot{hash, static_cast<std::uint32_t>(keys_.size()), static_cast<std::uint32_t>(values_.size()),
                     static_cast<std::uint16_t>(key.size()), static_cast<std::uint16_t>(count)};
    keys_.append(key);
    values_.insert(values_.end(), ids, ids + count);
    ++entries_;
  }

 private:
  struct Slot {
    std::uint64_t hash = 0;
    std::uint32_t key_off = 0, val_off = 0;
    std::uint16_t key_len = 0, val_len = 0;
  };
  std::vector<Slot> slots_;
  std::string keys_;
  std::vector<TokenId> values_;
  std::size_t entries_ = 0;
};

// Each thread keeps caches for the few models it used last (a model is identified by its serial).
WordCache& thread_cache(std::uint64_t serial) {
  struct Entry {
    std::uint64_t serial;
    std::unique_ptr<WordCache> cache;
  };
  thread_local std::vector<Entry> entries;
  if (!entries.empty() && entries.front().serial == serial) return *entries.front().cache;
  for (std::size_t i = 1; i < entries.size(); ++i) {
    if (entries[i].serial == serial) {
      std::rotate(entries.begin(), entries.begin() + static_cast<std::ptrdiff_t>(i),
                  entries.begin() + static_cast<std::ptrdiff_t>(i) + 1);
      return *entries.front().cache;
    }
  }
  if (entries.size() >= 4) entries.pop_back();
  entries.insert(entries.begin(), Entry{serial, std::make_unique<WordCache>()});
  return *entries.front().cache;
}

std::atomic<std::uint64_t> next_serial{1};

constexpr std::size_t kScanLimit = 64;  // words up to this many symbols merge by scanning ranks

}  // namespace

// Open-addressing table from an id pair to (rank, merged id).
struct BpeModel::PairTable {
  struct Entry {
    std::uint64_t key = kEmpty;
    std::int32_t rank = 0;
    TokenId id = 0;
  };
  static constexpr std::uint64_t kEmpty = ~0ull;

  explicit PairTable(std::size_t n) {
    std::size_t capacity = 16;
    while (capacity < n + n / 2) capacity *= 2;  // load factor at most 2/3
    slots.resize(capacity);
    shift = 64;
    for (std::size_t c = capacity; c > 1; c >>= 1) --shift;
  }
  std::size_t index(std::uint64_t key) const {
    return static_cast<std::size_t>((key * 0x9E3779B97F4A7C15ull) >> shift);
  }
  void insert_or_assign(std::uint64_t key, std::int32_t rank, TokenId id) {
    const std::size_t mask = slots.size() - 1;
    std::size_t i = index(key);
    while (slots[i].key != kEmpty && slots[i].key != key) i = (i + 1) & mask;
    slots[i] = Entry{key, rank, id};
  }
  void prefetch(TokenId a, TokenId b) const { __builtin_prefetch(&slots[index(pair_key(a, b))]); }
  const Entry* find(TokenId a, TokenId b) const {
    const std::uint64_t key = pair_key(a, b);
    const std::size_t mask = slots.size() - 1;
    for (std::size_t i = index(key);; i = (i + 1) & mask) {
      const Entry& e = slots[i];
      if (e.key == key) return &e;
      if (e.key == kEmpty) return nullptr;
    }
  }
  std::vector<Entry> slots;
  int shift;
};

struct BpeModel::Scratch {
  std::vector<TokenId> syms;
  std::vector<std::int32_t> ranks;
  std::vector<TokenId> merged;
  struct Node {
    TokenId id;
    std::int32_t prev, next;
  };
  struct Candidate {
    std::int32_t rank, pos;
    TokenId left, right, merged;
  };
  std::vector<Node> nodes;
  std::vector<Candidate> heap;
  std::string mapped;  // byte-level words mapped to characters (slow path)
  std::string key;     // vocabulary lookups with a subword prefix/suffix
};

namespace {
BpeModel::Scratch& thread_scratch() {
  thread_local BpeModel::Scratch scratch;
  return scratch;
}
}  // namespace

BpeModel::BpeModel() = default;
BpeModel::~BpeModel() = default;
BpeModel::BpeModel(BpeModel&&) noexcept = default;
BpeModel& BpeModel::operator=(BpeModel&&) noexcept = default;

std::optional<TokenId> BpeModel::unk_id() const {
  if (unk_ < 0) return std::nullopt;
  return unk_;
}

void BpeModel::load(const json& model, const JsonFile& file, bool byte_level) {
  if (!model.is_object()) fail(file, "model must be an object");
  if (const json* type = find_member(model, "type")) {
    if (!type->is_string()) fail(file, "model.type must be a string");
    if (type->get<std::string>() != "BPE")
      fail(file, "model.type " + json_quote(type->get<std::string>()) + " is not supported (expected \"BPE\")");
  }
  if (const json* dropout = find_member(model, "dropout"); dropout && !dropout->is_null()) {
    if (!dropout->is_number()) fail(file, "model.dropout must be a number or null");
    if (dropout->get<double>() > 0.0) fail(file, "model.dropout is not supported (BPE dropout is for training)");
  }
  const json& vocab = require_member(file, model, "vocab", "model.vocab");
  if (!vocab.is_object()) fail(file, "model.vocab must be an object mapping tokens to ids");
  vocab_.clear();
  vocab_.reserve(vocab.size());
  for (auto it = vocab.begin(); it != vocab.end(); ++it) {
    if (!it.value().is_number_integer() || it.value().get<std::int64_t>() < 0 ||
        it.value().get<std::int64_t>() > INT32_MAX)
      fail(file, "model.vocab[" + json_quote(it.key()) + "] must be a non-negative integer id");
    vocab_.set(it.key(), static_cast<TokenId>(it.value().get<std::int64_t>()));
  }
  auto lookup = [&](const std::string& token, const std::string& where) {
    const TokenId* found = vocab_.get(token);
    if (!found) fail(file, where + ": token " + json_quote(token) + " is not in model.vocab");
    return *found;
  };

  prefix_ = optional_string(file, model, "continuing_subword_prefix", "model.continuing_subword_prefix", "");
  suffix_ = optional_string(file, model, "end_of_word_suffix", "model.end_of_word_suffix", "");
  fuse_unk_ = optional_bool(file, model, "fuse_unk", "model.fuse_unk", false);
  byte_fallback_ = optional_bool(file, model, "byte_fallback", "model.byte_fallback", false);
  ignore_merges_ = optional_bool(file, model, "ignore_merges", "model.ignore_merges", false);
  const std::string unk = optional_string(file, model, "unk_token", "model.unk_token", "");
  unk_ = unk.empty() ? -1 : lookup(unk, "model.unk_token");

  // Required, as Hugging Face's tokenizers requires it ("Missing vocab/merges"): a BPE model without its merge
  // rules would split every word into single characters, so a file that lost them is refused rather than
  // encoding text nothing like the model's training data. An empty list is a valid (merge-free) model.
  const json* merges = find_member(model, "merges");
  if (!merges)
    fail(file, "model.merges is missing: a BPE model needs its merge rules (an empty list [] if it has none)");
  if (!merges->is_array()) fail(file, "model.merges must be an array, got " + std::string(merges->type_name()));
  const std::size_t n_merges = merges->size();
  merges_ = std::make_unique<PairTable>(n_merges);
  for (std::size_t r = 0; r < n_merges; ++r) {
    const json& m = (*merges)[r];
    const std::string where = "model.merges[" + std::to_string(r) + "]";
    std::string a, b;
    if (m.is_string()) {
      const std::string& s = m.get_ref<const std::string&>();
      const std::size_t space = s.find(' ');
      if (space == std::string::npos || s.find(' ', space + 1) != std::string::npos)
        fail(file, where + " must be two tokens separated by one space, got " + json_quote(s));
      a = s.substr(0, space);
      b = s.substr(space + 1);
    } else if (m.is_array() && m.size() == 2 && m[0].is_string() && m[1].is_string()) {
      a = m[0].get<std::string>();
      b = m[1].get<std::string>();
    } else {
      fail(file, where + " must be \"a b\" or [\"a\", \"b\"]");
    }
    const TokenId ia = lookup(a, where), ib = lookup(b, where);
    const bool prefixed = !prefix_.empty() && b.compare(0, prefix_.size(), prefix_) == 0;
    const TokenId merged = lookup(a + (prefixed ? b.substr(prefix_.size()) : b), where);
    merges_->insert_or_assign(pair_key(ia, ib), static_cast<std::int32_t>(r), merged);
  }

  byte_level_ = byte_level;
  fast_bytes_ = byte_level && prefix_.empty() && suffix_.empty();
  byte_ids_.fill(-1);
  fallback_ids_.fill(-1);
  raw_vocab_.clear();
  if (byte_level) {
    for (int b = 0; b < 256; ++b) {
      std::string ch;
      append_utf8(ch, byte_to_char(static_cast<unsigned char>(b)));
      if (const TokenId* id = vocab_.get(ch)) byte_ids_[static_cast<std::size_t>(b)] = *id;
    }
    if (ignore_merges_) {
      vocab_.for_each([&](std::string_view token, TokenId id) {
        std::string raw;
        bool mappable = true;
        for (std::size_t i = 0; i < token.size() && mappable;) {
          const int byte = char_to_byte(next_codepoint(token, i));
          if (byte < 0) mappable = false;
          else raw.push_back(static_cast<char>(byte));
        }
        if (mappable) raw_vocab_.set(raw, id);
      });
    }
  }
  if (byte_fallback_) {
    for (int b = 0; b < 256; ++b) {
      char name[8];
      std::snprintf(name, sizeof name, "<0x%02X>", b);
      if (const TokenId* id = vocab_.get(name)) fallback_ids_[static_cast<std::size_t>(b)] = *id;
    }
  }
  serial_ = next_serial.fetch_add(1);
}

void BpeModel::encode_word(std::string_view word, std::vector<TokenId>& out) const {
  if (word.empty()) return;
  if (word.size() > WordCache::kMaxKey) {
    compute(word, out);
    return;
  }
  WordCache& cache = thread_cache(serial_);
  const std::uint64_t hash = hash_bytes(word);
  std::size_t count = 0;
  if (const TokenId* ids = cache.find(word, hash, count)) {
    out.insert(out.end(), ids, ids + count);
    return;
  }
  const std::size_t start = out.size();
  compute(word, out);
  cache.insert(word, hash, out.data() + start, out.size() - start);
}

void BpeModel::compute(std::string_view word, std::vector<TokenId>& out) const {
  Scratch& scratch = thread_scratch();
  std::string_view units = word;
  if (byte_level_ && !fast_bytes_) {
    scratch.mapped.clear();
    for (const char c : word) append_utf8(scratch.mapped, byte_to_char(static_cast<unsigned char>(c)));
    units = scratch.mapped;
  }
  if (ignore_merges_) {
    const StringMap& map = fast_bytes_ ? raw_vocab_ : vocab_;
    if (const TokenId* id = map.get(units)) {
      out.push_back(*id);
      return;
    }
  }
  scratch.syms.clear();
  initial_symbols(units, scratch.syms);
  merge(scratch.syms, scratch);
  out.insert(out.end(), scratch.syms.begin(), scratch.syms.end());
}

void BpeModel::initial_symbols(std::string_view word, std::vector<TokenId>& syms) const {
  bool pending_unk = false;
  auto add_known = [&](TokenId id) {
    if (pending_unk) syms.push_back(unk_);
    pending_unk = false;
    syms.push_back(id);
  };
  // A unit with no token of its own: its bytes' <0xXX> tokens, else <unk> (fused when asked), else dropped.
  auto add_unknown = [&](std::string_view unit) {
    if (byte_fallback_) {
      bool all = true;
      for (const char c : unit) all = all && fallback_ids_[static_cast<unsigned char>(c)] >= 0;
      if (all) {
        for (const char c : unit) syms.push_back(fallback_ids_[static_cast<unsigned char>(c)]);
        return;
      }
    }
    if (unk_ < 0) return;
    if (pending_unk && !fuse_unk_) syms.push_back(unk_);
    pending_unk = true;
  };

  if (fast_bytes_) {
    for (const char c : word) {
      const TokenId id = byte_ids_[static_cast<unsigned char>(c)];
      if (id >= 0) {
        add_known(id);
      } else {
        std::string ch;
        append_utf8(ch, byte_to_char(static_cast<unsigned char>(c)));
        add_unknown(ch);
      }
    }
  } else {
    std::string& key = thread_scratch().key;
    for (std::size_t i = 0; i < word.size();) {
      const std::size_t begin = i;
      i = std::min(word.size(), i + utf8_len(static_cast<unsigned char>(word[i])));
      std::string_view unit = word.substr(begin, i - begin);
      const bool add_prefix = !prefix_.empty() && begin > 0;
      const bool add_suffix = !suffix_.empty() && i == word.size();
      if (add_prefix || add_suffix) {
        key.assign(add_prefix ? prefix_ : std::string());
        key.append(unit);
        if (add_suffix) key.append(suffix_);
        unit = key;
      }
      if (const TokenId* id = vocab_.get(unit)) add_known(*id);
      else add_unknown(unit);
    }
  }
  if (pending_unk) syms.push_back(unk_);
}

void BpeModel::merge(std::vector<TokenId>& syms, Scratch& scratch) const {
  const std::size_t n = syms.size();
  if (n < 2) return;
  const PairTable& table = *merges_;
  if (n <= kScanLimit) {
    // Short words: keep the rank of each adjacent pair and merge the lowest (leftmost on ties).
    auto& ranks = scratch.ranks;
    auto& merged = scratch.merged;
    ranks.resize(n - 1);
    merged.resize(n - 1);
    auto rate = [&](std::size_t i) {
      const PairTable::Entry* e = table.find(syms[i], syms[i + 1]);
      ranks[i] = e ? e->rank : INT32_MAX;
      merged[i] = e ? e->id : -1;
    };
    // The table is large: start every first lookup's memory access before waiting on any.
    for (std::size_t i = 0; i + 1 < n; ++i) table.prefetch(syms[i], syms[i + 1]);
    for (std::size_t i = 0; i + 1 < n; ++i) rate(i);
    while (!ranks.empty()) {
      // The minimum first, then its first position: two simple loops the compiler vectorizes.
      std::int32_t lowest = INT32_MAX;
      for (const std::int32_t r : ranks) lowest = std::min(lowest, r);
      if (lowest == INT32_MAX) break;
      const auto best = static_cast<std::size_t>(std::find(ranks.begin(), ranks.end(), lowest) - ranks.begin());
      syms[best] = merged[best];
      syms.erase(syms.begin() + static_cast<std::ptrdiff_t>(best) + 1);
      ranks.erase(ranks.begin() + static_cast<std::ptrdiff_t>(best));
      merged.erase(merged.begin() + static_cast<std::ptrdiff_t>(best));
      if (best > 0) table.prefetch(syms[best - 1], syms[best]);
      if (best < ranks.size()) table.prefetch(syms[best], syms[best + 1]);
      if (best > 0) rate(best - 1);
      if (best < ranks.size()) rate(best);
    }
    return;
  }

  // Long words: a min-heap of candidate merges over a linked list of symbols. A candidate is stale
  // when either of its symbols has changed since it was pushed.
  auto& nodes = scratch.nodes;
  auto& heap = scratch.heap;
  nodes.resize(n);
  heap.clear();
  const auto later = [](const Scratch::Candidate& x, const Scratch::Candidate& y) {
    return x.rank != y.rank ? x.rank > y.rank : x.pos > y.pos;
  };
  auto consider = [&](std::int32_t pos) {
    if (pos < 0) return;
    const std::int32_t next = nodes[static_cast<std::size_t>(pos)].next;
    if (next < 0) return;
    const TokenId left = nodes[static_cast<std::size_t>(pos)].id, right = nodes[static_cast<std::size_t>(next)].id;
    if (const PairTable::Entry* e = table.find(left, right)) {
      heap.push_back({e->rank, pos, left, right, e->id});
      std::push_heap(heap.begin(), heap.end(), later);
    }
  };
  for (std::size_t i = 0; i < n; ++i)
    nodes[i] = {syms[i], static_cast<std::int32_t>(i) - 1, i + 1 < n ? static_cast<std::int32_t>(i + 1) : -1};
  for (std::size_t i = 0; i + 1 < n; ++i) table.prefetch(syms[i], syms[i + 1]);
  for (std::size_t i = 0; i + 1 < n; ++i) consider(static_cast<std::int32_t>(i));
  while (!heap.empty()) {
    std::pop_heap(heap.begin(), heap.end(), later);
    const Scratch::Candidate c = heap.back();
    heap.pop_back();
    Scratch::Node& left = nodes[static_cast<std::size_t>(c.pos)];
    if (left.id != c.left || left.next < 0) continue;
    Scratch::Node& right = nodes[static_cast<std::size_t>(left.next)];
    if (right.id != c.right) continue;
    left.id = c.merged;
    right.id = -1;
    left.next = right.next;
    if (right.next >= 0) nodes[static_cast<std::size_t>(right.next)].prev = c.pos;
    if (left.prev >= 0) consider(left.prev);
    consider(c.pos);
  }
  syms.clear();
  for (std::int32_t i = 0; i >= 0; i = nodes[static_cast<std::size_t>(i)].next) syms.push_back(nodes[static_cast<std::size_t>(i)].id);
}

}  // namespace slearn::tok
