// A streaming XXH3 hash that owns its state: fingerprints (128 bits, fingerprint.cpp) and checkpoint checksums
// (64 bits, checkpoint_file.cpp). Integers are fed as little-endian bytes, so a digest is the same on every host.
#pragma once

#include <xxhash.h>

#include <cstdint>
#include <string_view>

#include "slearn/error.hpp"

namespace slearn {

class Xxh3Stream {
 public:
  enum class Width { Bits64, Bits128 };

  explicit Xxh3Stream(Width width) : width_(width), state_(XXH3_createState()) {
    if (state_ == nullptr) throw Error("xxh3: cannot allocate the hash state");
    const XXH_errorcode rc = width == Width::Bits64 ? XXH3_64bits_reset(state_) : XXH3_128bits_reset(state_);
    if (rc != XXH_OK) {
      XXH3_freeState(state_);
      throw Error("xxh3: cannot initialise the hash state");
    }
  }
  ~Xxh3Stream() { XXH3_freeState(state_); }
  Xxh3Stream(const Xxh3Stream&) = delete;
  Xxh3Stream& operator=(const Xxh3Stream&) = delete;

  void update(const void* data, std::size_t size) {
    if (size == 0) return;
    const XXH_errorcode rc =
        width_ == Width::Bits64 ? XXH3_64bits_update(state_, data, size) : XXH3_128bits_update(state_, data, size);
    if (rc != XXH_OK) throw Error("xxh3: hash update failed");
  }
  void update(std::string_view text) { update(text.data(), text.size()); }
  void update_u64(std::uint64_t value) {
    unsigned char bytes[8];
    for (int i = 0; i < 8; ++i) bytes[i] = static_cast<unsigned char>((value >> (8 * i)) & 0xffu);
    update(bytes, sizeof bytes);
  }

  std::uint64_t digest64() const { return XXH3_64bits_digest(state_); }      // Width::Bits64
  XXH128_hash_t digest128() const { return XXH3_128bits_digest(state_); }    // Width::Bits128

 private:
  Width width_;
  XXH3_state_t* state_;
};

}  // namespace slearn
