// Fast hashing of byte strings and an open-addressing map from strings to token ids (keys live in
// one arena; no allocation per entry).
#pragma once

#include <cstdint>
#include <cstring>
#include <string>
#include <string_view>
#include <vector>

#include "slearn/tokenizer.hpp"

namespace slearn::tok {

// 64-bit hash of a short byte string; never 0.
inline std::uint64_t hash_bytes(std::string_view s) {
  std::uint64_t h = 0x9E3779B97F4A7C15ull ^ s.size();
  std::size_t i = 0;
  for (; i + 8 <= s.size(); i += 8) {
    std::uint64_t w;
    std::memcpy(&w, s.data() + i, 8);
    h = (h ^ w) * 0xFF51AFD7ED558CCDull;
    h ^= h >> 32;
  }
  if (i < s.size()) {
    std::uint64_t w = 0;
    std::memcpy(&w, s.data() + i, s.size() - i);
    h = (h ^ w) * 0xFF51AFD7ED558CCDull;
    h ^= h >> 32;
  }
  h ^= h >> 29;
  h *= 0xC4CEB9FE1A85EC53ull;
  h ^= h >> 32;
  return h | 1;
}

class StringMap {
 public:
  void reserve(std::size_t n) {
    std::size_t capacity = 16;
    while (capacity * 2 < n * 3) capacity *= 2;
    if (capacity > slots_.size()) rehash(capacity);
  }
  void clear() {
    slots_.clear();
    arena_.clear();
    count_ = 0;
  }
  std::size_t size() const { return count_; }

  // Inserts the key, or replaces its id.
  void set(std::string_view key, TokenId id) {
    if ((count_ + 1) * 3 > slots_.size() * 2) rehash(slots_.empty() ? 16 : slots_.size() * 2);
    const std::uint64_t hash = hash_bytes(key);
    const std::size_t mask = slots_.size() - 1;
    for (std::size_t i = hash & mask;; i = (i + 1) & mask) {
      Slot& slot = slots_[i];
      if (slot.hash == 0) {
        slot = Slot{hash, static_cast<std::uint32_t>(arena_.size()), static_cast<std::uint32_t>(key.size()), id};
        arena_.append(key);
        ++count_;
        return;
      }
      if (slot.hash == hash && key_of(slot) == key) {
        slot.id = id;
        return;
      }
    }
  }

  // The id of `key`, or nullptr.
  const TokenId* get(std::string_view key) const {
    if (slots_.empty()) return nullptr;
    const std::uint64_t hash = hash_bytes(key);
    const std::size_t mask = slots_.size() - 1;
    for (std::size_t i = hash & mask;; i = (i + 1) & mask) {
      const Slot& slot = slots_[i];
      if (slot.hash == 0) return nullptr;
      if (slot.hash == hash && key_of(slot) == key) return &slot.id;
    }
  }

  template <class F>
  void for_each(F&& f) const {
    for (const Slot& slot : slots_)
      if (slot.hash != 0) f(key_of(slot), slot.id);
  }

 private:
  struct Slot {
    std::uint64_t hash = 0;  // 0: empty
    std::uint32_t offset = 0, length = 0;
    TokenId id = 0;
  };
  std::string_view key_of(const Slot& slot) const { return std::string_view(arena_).substr(slot.offset, slot.length); }
  void rehash(std::size_t capacity) {
    std::vector<Slot> old = std::move(slots_);
    slots_.assign(capacity, Slot{});
    for (const Slot& slot : old) {
      if (slot.hash == 0) continue;
      std::size_t i = slot.hash & (capacity - 1);
      while (slots_[i].hash != 0) i = (i + 1) & (capacity - 1);
      slots_[i] = slot;
    }
  }
  std::vector<Slot> slots_;
  std::string arena_;
  std::size_t count_ = 0;
};

}  // namespace slearn::tok
