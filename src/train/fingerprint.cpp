// Fingerprints for checkpoints: xxh3-128 (hex) of a model directory's identity, of a file's bytes and of a
// string. A model is identified by config.json and, for every safetensors file, its name, size and header:
// cheap even for very large models, since the tensor data itself is never read.
#include <algorithm>
#include <array>
#include <cerrno>
#include <cstdint>
#include <cstring>
#include <fstream>
#include <string>
#include <system_error>
#include <vector>

#include "slearn/checkpoint.hpp"
#include "slearn/error.hpp"
#include "util/symlink_loop.hpp"
#include "util/xxh3_stream.hpp"

namespace slearn {

namespace {

namespace fs = std::filesystem;

// The safetensors reference implementation refuses headers above this size.
constexpr std::uint64_t kMaxSafetensorsHeader = 100'000'000;
constexpr std::size_t kChunk = 1 << 20;

// XXH3-128 with length-prefixed fields and a hex digest.
class Hasher : public Xxh3Stream {
 public:
  Hasher() : Xxh3Stream(Width::Bits128) {}
  using Xxh3Stream::update;
  // A length-prefixed field, so that concatenations of different fields cannot collide.
  void field(const std::string& text) {
    update_u64(text.size());
    update(text);
  }
  std::string hex() const { return to_hex(digest128()); }

  static std::string to_hex(XXH128_hash_t hash) {
    XXH128_canonical_t canonical;
    XXH128_canonicalFromHash(&canonical, hash);
    static constexpr char kDigits[] = "0123456789abcdef";
    std::string text;
    text.reserve(32);
    for (unsigned char byte : canonical.digest) {
      text += kDigits[byte >> 4];
      text += kDigits[byte & 0x0f];
    }
    return text;
  }
};

std::uint64_t size_of(const fs::path& file) {
  std::error_code ec;
  const auto size = fs::file_size(file, ec);
  if (ec) throw Error(file.string() + ": cannot read the file size: " + ec.message());
  return size;
}

std::ifstream open_input(const fs::path& file) {
  std::error_code ec;
  const bool present = fs::exists(file, ec);
  refuse_symlink_loop(file, ec, "a file");
  if (!present) throw InputError(file.string() + ": file not found");
  if (fs::is_directory(file, ec)) throw InputError(file.string() + ": is a directory, expected a file");
  std::ifstream in(file, std::ios::binary);
  if (!in) throw Error(file.string() + ": cannot open: " + std::strerror(errno));
  return in;
}

// Reads exactly `size` bytes from `in` into `buffer`; false at a premature end of file.
bool read_exact(std::ifstream& in, char* buffer, std::size_t size) {
  in.read(buffer, static_cast<std::streamsize>(size));
  return static_cast<std::size_t>(in.gcount()) == size;
}

// Hashes every byte of `file` into `hasher`, in chunks.
void hash_contents(Hasher& hasher, const fs::path& file) {
  std::ifstream in = open_input(file);
  std::vector<char> buffer(kChunk);
  while (in) {
    in.read(buffer.data(), static_cast<std::streamsize>(buffer.size()));
    const auto got = in.gcount();
    if (got > 0) hasher.update(buffer.data(), static_cast<std::size_t>(got));
  }
  if (in.bad()) throw Error(file.string() + ": read error while computing its fingerprint");
}

// Hashes the name, size and header (8-byte length + JSON) of one safetensors file.
void hash_safetensors_header(Hasher& hasher, const fs::path& file) {
  const std::uint64_t file_size = size_of(file);
  std::ifstream in = open_input(file);
  std::array<char, 8> prefix{};
  if (file_size < 8 || !read_exact(in, prefix.data(), prefix.size())) {
    throw InputError(file.string() + ": not a safetensors file (shorter than its 8-byte header length)");
  }
  std::uint64_t header_size = 0;
  for (std::size_t i = 0; i < 8; ++i) {
    header_size |= static_cast<std::uint64_t>(static_cast<unsigned char>(prefix[i])) << (8 * i);
  }
  if (header_size > kMaxSafetensorsHeader || header_size > file_size - 8) {
    throw InputError(file.string() + ": corrupt safetensors file (header length " + std::to_string(header_size) +
                     " does not fit in the file of " + std::to_string(file_size) + " bytes)");
  }
  std::string header(static_cast<std::size_t>(header_size), '\0');
  if (!read_exact(in, header.data(), header.size())) {
    throw InputError(file.string() + ": truncated safetensors header");
  }
  hasher.field(file.filename().string());
  hasher.update_u64(file_size);
  hasher.update(prefix.data(), prefix.size());
  hasher.update(header);
}

}  // namespace

std::string fingerprint_model(const fs::path& model_dir) {
  std::error_code ec;
  if (!fs::is_directory(model_dir, ec)) {
    throw InputError(model_dir.string() + ": model directory not found");
  }
  const fs::path config = model_dir / "config.json";
  if (!fs::is_regular_file(config, ec)) {
    throw InputError(config.string() + ": not found; a model directory needs a config.json");
  }

  std::vector<fs::path> shards;
  fs::directory_iterator it(model_dir, ec);
  if (ec) throw Error(model_dir.string() + ": cannot list the directory: " + ec.message());
  for (const fs::directory_entry& entry : it) {
    if (entry.path().extension() == ".safetensors" && entry.is_regular_file(ec)) shards.push_back(entry.path());
  }
  std::sort(shards.begin(), shards.end(),
            [](const fs::path& a, const fs::path& b) { return a.filename().string() < b.filename().string(); });

  Hasher hasher;
  hasher.update(std::string("slearn-model-fingerprint-v1"));
  hasher.update_u64(size_of(config));
  hash_contents(hasher, config);
  hasher.update_u64(shards.size());
  for (const fs::path& shard : shards) hash_safetensors_header(hasher, shard);
  return hasher.hex();
}

std::string fingerprint_file(const fs::path& file) {
  Hasher hasher;
  hash_contents(hasher, file);
  return hasher.hex();
}

std::string fingerprint_tokenizer(const fs::path& model_dir) {
  Hasher hasher;
  hasher.update(std::string("slearn-tokenizer-fingerprint-v1"));
  for (const char* name : {"tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "generation_config.json"}) {
    const fs::path file = model_dir / name;
    std::error_code ec;
    const bool present = fs::exists(file, ec);
    if (ec && ec != std::errc::no_such_file_or_directory)
      throw InputError(file.string() + ": cannot read: " + ec.message());
    hasher.field(name);
    hasher.update_u64(present ? 1 : 0);
    if (present) hash_contents(hasher, file);
  }
  return hasher.hex();
}

std::string fingerprint_text(const std::string& text) {
  return Hasher::to_hex(XXH3_128bits(text.data(), text.size()));
}

}  // namespace slearn
