// Fuzz target: Tokenizer::encode, Tokenizer::decode and StreamDecoder.
//
// Tokenizers, loaded once: the real Qwen tokenizer from the shared data (byte-level BPE, 151k tokens; left out
// with a note when the shared data is absent), and the two fixtures of tests/fixtures/tokenizers
// (bytelevel-tiny, and spbpe-tiny for the SentencePiece normalizers and the ByteFallback/Strip decoders).
//
// Byte 0: bits 0-1 the tokenizer (0 and 1: Qwen, 2: bytelevel-tiny, 3: spbpe-tiny), bit 2 the mode
// (encode the rest as text, or decode the rest as token ids), bit 3 add_special_tokens / skip_special_tokens.
// Ids are read 4 bytes at a time: when the top two bits are set the int32 as is (mostly negative), else the
// value modulo vocab_size + 16 (every token, and a few ids past the vocabulary).
//
// Properties: encoded ids are in the vocabulary; StreamDecoder's output equals decode() when the ids' bytes
// are valid UTF-8 (decode() holds no U+FFFD); for byte-level tokenizers, ASCII text decodes back to itself.
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <memory>
#include <vector>

#include "fuzz_common.hpp"
#include "slearn/tokenizer.hpp"

namespace {

struct Loaded {
  std::shared_ptr<const slearn::Tokenizer> tokenizer;
  bool byte_level = false;
};

std::shared_ptr<const slearn::Tokenizer> load(const std::filesystem::path& dir) {
  return std::make_shared<const slearn::Tokenizer>(slearn::Tokenizer::from_dir(dir));
}

std::vector<Loaded>& tokenizers() {
  static std::vector<Loaded> all = [] {
    const std::filesystem::path source(SLEARN_SOURCE_DIR);
    const char* shared = std::getenv("SLEARN_SHARED_DATA_DIR");
    const std::filesystem::path qwen =
        (shared ? std::filesystem::path(shared) : source / ".." / "shared" / "data") / "qwen-tokenizer";
    std::vector<Loaded> out(4);
    out[2] = {load(source / "tests/fixtures/tokenizers/bytelevel-tiny"), true};
    out[3] = {load(source / "tests/fixtures/tokenizers/spbpe-tiny"), false};
    if (std::filesystem::is_regular_file(qwen / "tokenizer.json")) {
      out[0] = {load(qwen), true};
    } else {
      std::fprintf(stderr, "fuzz_tokenizer: %s not found; fuzzing the fixture tokenizers only\n",
                   (qwen / "tokenizer.json").c_str());
      out[0] = {load(source / "tests/fixtures/tokenizers/bytelevel-tiny"), true};
    }
    out[1] = out[0];
    return out;
  }();
  return all;
}

const std::string_view kReplacement = "\xEF\xBF\xBD";

std::string stream_decode(const slearn::Tokenizer& tokenizer, const std::vector<slearn::TokenId>& ids, bool skip) {
  slearn::StreamDecoder stream(tokenizer, skip);
  std::string text;
  for (const slearn::TokenId id : ids) {
    const std::string piece = stream.push(id);
    if (!slearn_fuzz::is_valid_utf8(piece)) slearn_fuzz::fail("StreamDecoder::push returned invalid UTF-8");
    text += piece;
  }
  const std::string rest = stream.finish();
  if (!slearn_fuzz::is_valid_utf8(rest)) slearn_fuzz::fail("StreamDecoder::finish returned invalid UTF-8");
  return text + rest;
}

std::string hex_ids(const std::vector<slearn::TokenId>& ids) {
  std::string out;
  for (const auto id : ids) out += std::to_string(id) + " ";
  return out;
}

void check_decode(const slearn::Tokenizer& tokenizer, const std::vector<slearn::TokenId>& ids, bool skip) {
  const std::string text = tokenizer.decode(ids, skip);
  if (!slearn_fuzz::is_valid_utf8(text)) slearn_fuzz::fail("decode returned invalid UTF-8");
  const std::string streamed = stream_decode(tokenizer, ids, skip);
  if (text.find(kReplacement) == std::string::npos && streamed != text)
    slearn_fuzz::fail("StreamDecoder gives \"" + streamed + "\" but decode gives \"" + text + "\" for ids " +
                      hex_ids(ids));
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  tokenizers();
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  if (size < 1) return 0;
  const Loaded& loaded = tokenizers()[data[0] & 3];
  const slearn::Tokenizer& tokenizer = *loaded.tokenizer;
  const bool decode_mode = data[0] & 4;
  const bool special = data[0] & 8;
  const std::string_view rest(reinterpret_cast<const char*>(data) + 1, size - 1);

  slearn_fuzz::expect_slearn_errors_only([&] {
    if (!decode_mode) {
      const std::vector<slearn::TokenId> ids = tokenizer.encode(rest, special);
      for (const auto id : ids)
        if (id < 0 || static_cast<std::size_t>(id) >= tokenizer.vocab_size())
          slearn_fuzz::fail("encode returned id " + std::to_string(id) + " outside the vocabulary");
      check_decode(tokenizer, ids, false);
      if (loaded.byte_level && !special) {
        bool ascii = true;
        for (const char c : rest) ascii = ascii && static_cast<unsigned char>(c) < 0x80;
        if (ascii && tokenizer.decode(ids) != rest)
          slearn_fuzz::fail("ASCII text does not decode back to itself: ids " + hex_ids(ids));
      }
    } else {
      const auto vocab = static_cast<std::uint32_t>(tokenizer.vocab_size()) + 16;
      std::vector<slearn::TokenId> ids;
      for (std::size_t i = 0; i + 4 <= rest.size(); i += 4) {
        std::uint32_t u;
        std::memcpy(&u, rest.data() + i, 4);
        ids.push_back((u >> 30) == 3 ? static_cast<slearn::TokenId>(u) : static_cast<slearn::TokenId>(u % vocab));
      }
      check_decode(tokenizer, ids, special);
      for (const auto id : ids) {
        (void)tokenizer.is_special(id);
        if (id >= 0 && static_cast<std::size_t>(id) < tokenizer.vocab_size()) {
          std::string token;
          if (slearn_fuzz::expect_slearn_errors_only([&] { token = tokenizer.id_to_token(id); })) {
            const auto back = tokenizer.token_to_id(token);
            if (!back) slearn_fuzz::fail("token_to_id(id_to_token(" + std::to_string(id) + ")) finds nothing");
          }
        }
      }
    }
  });
  return 0;
}
