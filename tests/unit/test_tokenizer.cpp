// Tokenizer tests: the reference's encode cases for the real Qwen tokenizer and the two fixture
// tokenizers (byte-level and SentencePiece-style BPE), decoding, streaming, added tokens and errors.
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include <filesystem>
#include <fstream>
#include <string>
#include <thread>
#include <vector>

#include "slearn/error.hpp"
#include "slearn/tokenizer.hpp"
#include "test_paths.hpp"
#include "tokenizer/unicode.hpp"

namespace slearn {
namespace {

using nlohmann::json;

struct EncodeCase {
  std::string text;
  std::vector<TokenId> ids;
  bool decoded_equals_text = false;
  bool add_special_tokens = false;
};

std::vector<EncodeCase> read_cases(const std::filesystem::path& path) {
  std::vector<EncodeCase> cases;
  std::ifstream in(path);
  std::string line;
  while (std::getline(in, line)) {
    if (line.empty()) continue;
    const json j = json::parse(line);
    EncodeCase c;
    c.text = j.at("text").get<std::string>();
    c.ids = j.at("ids").get<std::vector<TokenId>>();
    c.decoded_equals_text = j.value("decoded_equals_text", false);
    c.add_special_tokens = j.value("add_special_tokens", false);
    cases.push_back(std::move(c));
  }
  return cases;
}

using slearn::testing::read_file;

std::filesystem::path qwen_dir() { return testing::shared_data_dir() / "qwen-tokenizer"; }
std::filesystem::path fixture_dir(const char* name) { return testing::fixtures_dir() / "tokenizers" / name; }

#define SKIP_WITHOUT(dir)                                                                        \
  if (!std::filesystem::exists((dir) / "tokenizer.json")) {                                      \
    GTEST_SKIP() << "tokenizer not found at " << (dir).string() << " (shared data or fixtures missing)"; \
  }                                                                                              \
  static_assert(true)

std::string stream_decode(const Tokenizer& tok, const std::vector<TokenId>& ids, bool skip_special = false) {
  StreamDecoder stream(tok, skip_special);
  std::string out;
  for (const TokenId id : ids) {
    const std::string piece = stream.push(id);
    EXPECT_TRUE(tok::is_valid_utf8(piece)) << "stream emitted invalid UTF-8";
    out += piece;
  }
  out += stream.finish();
  return out;
}

// Every case encodes to exactly the reference ids, decodes back where the reference does, and
// streams to the same text as a full decode. Returns how many cases passed.
int check_cases(const Tokenizer& tok, const std::filesystem::path& file) {
  const std::vector<EncodeCase> cases = read_cases(file);
  EXPECT_FALSE(cases.empty()) << file;
  int passed = 0;
  for (const EncodeCase& c : cases) {
    const std::vector<TokenId> ids = tok.encode(c.text, c.add_special_tokens);
    EXPECT_EQ(ids, c.ids) << "text: " << json(c.text).dump();
    const std::string decoded = tok.decode(c.ids);
    if (c.decoded_equals_text) {
      EXPECT_EQ(decoded, c.text) << "text: " << json(c.text).dump();
    }
    EXPECT_EQ(stream_decode(tok, c.ids), decoded) << "text: " << json(c.text).dump();
    if (ids == c.ids && (!c.decoded_equals_text || decoded == c.text)) ++passed;
  }
  std::cout << "[ cases    ] " << file.string() << ": " << passed << "/" << cases.size() << " exact\n";
  return passed;
}

TEST(TokenizerQwen, ReproducesReferenceEncodeCases) {
  SKIP_WITHOUT(qwen_dir());
  const Tokenizer tok = Tokenizer::from_dir(qwen_dir());
  check_cases(tok, qwen_dir() / "encode-cases.jsonl");
}

TEST(TokenizerQwen, VocabularyAndSpecialTokens) {
  SKIP_WITHOUT(qwen_dir());
  const Tokenizer tok = Tokenizer::from_dir(qwen_dir());
  EXPECT_EQ(tok.vocab_size(), 151669u);
  EXPECT_EQ(tok.token_to_id("<|im_start|>"), 151644);
  EXPECT_EQ(tok.token_to_id("Hello"), 9707);
  EXPECT_EQ(tok.token_to_id("no such token at all"), std::nullopt);
  EXPECT_EQ(tok.id_to_token(151645), "<|im_end|>");
  EXPECT_EQ(tok.id_to_token(9707), "Hello");
  EXPECT_THROW(tok.id_to_token(-1), InputError);
  EXPECT_THROW(tok.id_to_token(151669), InputError);
  EXPECT_TRUE(tok.is_special(151643));
  EXPECT_FALSE(tok.is_special(151657));  // <tool_call> is added but not special
  EXPECT_FALSE(tok.is_special(9707));
  EXPECT_EQ(tok.bos_id(), std::nullopt);
  EXPECT_EQ(tok.eos_id(), 151645);
  // Qwen's post-processor is ByteLevel and add_bos_token is false: nothing is added.
  EXPECT_EQ(tok.encode("Hello", true), tok.encode("Hello", false));
}

TEST(TokenizerQwen, AddedTokensInTextAreSingleIds) {
  SKIP_WITHOUT(qwen_dir());
  const Tokenizer tok = Tokenizer::from_dir(qwen_dir());
  const std::vector<TokenId> ids = tok.encode("<|im_start|>user\nhi<|im_end|>");
  EXPECT_EQ(ids, (std::vector<TokenId>{151644, 872, 198, 6023, 151645}));
  EXPECT_EQ(tok.decode(ids), "<|im_start|>user\nhi<|im_end|>");
  EXPECT_EQ(tok.decode(ids, true), "user\nhi");
  // Non-special added tokens survive skip_special_tokens; unknown ids are skipped.
  EXPECT_EQ(tok.decode(std::vector<TokenId>{151657, 9707, 999999}, true), "<tool_call>Hello");
}

TEST(TokenizerQwen, DecodeRepairsInvalidUtf8) {
  SKIP_WITHOUT(qwen_dir());
  const Tokenizer tok = Tokenizer::from_dir(qwen_dir());
  // "小" is E5 B0 8F; its first two bytes alone are one incomplete sequence -> one U+FFFD.
  std::vector<TokenId> bytes;
  for (const unsigned char b : {0xE5, 0xB0}) {
    std::string ch;
    tok::append_utf8(ch, tok::byte_to_char(b));
    bytes.push_back(*tok.token_to_id(ch));
  }
  bytes.push_back(9707);
  EXPECT_EQ(tok.decode(bytes), "\xEF\xBF\xBDHello");
  // Invalid input text is repaired before encoding instead of failing.
  EXPECT_EQ(tok.encode("a\xFF" "b"), tok.encode("a\xEF\xBF\xBD" "b"));
}

TEST(TokenizerQwen, StreamingHoldsIncompleteCharacters) {
  SKIP_WITHOUT(qwen_dir());
  const Tokenizer tok = Tokenizer::from_dir(qwen_dir());
  const std::string text = "小麦条锈病🌾🚜👩\u200d⚕️💊 ✅ done";
  const std::vector<TokenId> ids = tok.encode(text);
  EXPECT_EQ(ids.size(), 15u);  // the emoji are split across byte tokens
  EXPECT_EQ(stream_decode(tok, ids), text);

  // Byte by byte: nothing comes out until the character is complete.
  std::vector<TokenId> bytes;
  for (const unsigned char b : std::string("小")) {
    std::string ch;
    tok::append_utf8(ch, tok::byte_to_char(b));
    bytes.push_back(*tok.token_to_id(ch));
  }
  StreamDecoder stream(tok);
  EXPECT_EQ(stream.push(bytes[0]), "");
  EXPECT_EQ(stream.push(bytes[1]), "");
  EXPECT_EQ(stream.push(bytes[2]), "小");
  // A dangling lead byte is flushed as U+FFFD by finish().
  EXPECT_EQ(stream.push(bytes[0]), "");
  EXPECT_EQ(stream.finish(), "\xEF\xBF\xBD");

  // Special tokens can be skipped while streaming.
  const std::vector<TokenId> chat = tok.encode("<|im_start|>assistant\n好的<|im_end|>");
  EXPECT_EQ(stream_decode(tok, chat, true), "assistant\n好的");
}

TEST(TokenizerQwen, LongGenerationStreamsInBoundedWindow) {
  SKIP_WITHOUT(qwen_dir());
  const Tokenizer tok = Tokenizer::from_dir(qwen_dir());
  std::string text;
  for (int i = 0; i < 2000; ++i) text += "症状包括发热、咳嗽 and fatigue 🌡️. ";
  const std::vector<TokenId> ids = tok.encode(text);
  EXPECT_EQ(stream_decode(tok, ids), text);
}

TEST(TokenizerQwen, ConcurrentEncodeIsConsistent) {
  SKIP_WITHOUT(qwen_dir());
  const Tokenizer tok = Tokenizer::from_dir(qwen_dir());
  std::vector<std::string> texts;
  for (int i = 0; i < 200; ++i)
    texts.push_back("Patient " + std::to_string(i) + " 患者第" + std::to_string(i * 7) + "天 reported symptom_" +
                    std::to_string(i % 13) + " 🌾");
  std::vector<std::vector<TokenId>> expected;
  for (const auto& t : texts) expected.push_back(tok.encode(t));
  std::vector<std::thread> threads;
  std::vector<int> mismatches(4, 0);
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&, t] {
      for (int round = 0; round < 20; ++round)
        for (std::size_t i = 0; i < texts.size(); ++i)
          if (tok.encode(texts[(i + static_cast<std::size_t>(t)) % texts.size()]) !=
              expected[(i + static_cast<std::size_t>(t)) % texts.size()])
            ++mismatches[static_cast<std::size_t>(t)];
    });
  }
  for (auto& th : threads) th.join();
  for (const int m : mismatches) EXPECT_EQ(m, 0);
}

TEST(TokenizerFixtures, ByteLevelTinyReproducesReference) {
  SKIP_WITHOUT(fixture_dir("bytelevel-tiny"));
  const Tokenizer tok = Tokenizer::from_dir(fixture_dir("bytelevel-tiny"));
  check_cases(tok, fixture_dir("bytelevel-tiny") / "encode-cases.jsonl");
  check_cases(tok, fixture_dir("bytelevel-tiny") / "encode-cases-special.jsonl");
  EXPECT_EQ(tok.vocab_size(), 480u);
  EXPECT_EQ(tok.eos_id(), 479);
}

TEST(TokenizerFixtures, SentencePieceTinyReproducesReference) {
  SKIP_WITHOUT(fixture_dir("spbpe-tiny"));
  const Tokenizer tok = Tokenizer::from_dir(fixture_dir("spbpe-tiny"));
  check_cases(tok, fixture_dir("spbpe-tiny") / "encode-cases.jsonl");
  check_cases(tok, fixture_dir("spbpe-tiny") / "encode-cases-special.jsonl");
  EXPECT_EQ(tok.vocab_size(), 512u);
  EXPECT_EQ(tok.bos_id(), 1);
  EXPECT_EQ(tok.eos_id(), 2);
  EXPECT_EQ(tok.token_to_id("<0x0A>"), 13);
}

TEST(TokenizerFixtures, SentencePieceByteFallbackAndDecoder) {
  SKIP_WITHOUT(fixture_dir("spbpe-tiny"));
  const Tokenizer tok = Tokenizer::from_dir(fixture_dir("spbpe-tiny"));
  // Reference: 小麦 and 8 fall back to bytes; "<s>" is matched before the Prepend normalizer runs.
  const std::vector<TokenId> ids = tok.encode("小麦 8 hello <s>x", true);
  EXPECT_EQ(ids, (std::vector<TokenId>{1, 322, 232, 179, 146, 236, 189, 169, 322, 59, 476, 307, 411, 322, 1, 322, 319}));
  EXPECT_EQ(tok.decode(ids), "<s> 小麦 8 hello <s> x");
  EXPECT_EQ(tok.decode(ids, true), "小麦 8 hello  x");
  EXPECT_EQ(stream_decode(tok, ids, true), "小麦 8 hello  x");
  // An invalid byte run becomes one U+FFFD per byte, as the reference's ByteFallback does.
  EXPECT_EQ(tok.decode(std::vector<TokenId>{232, 179, 476}), "\xEF\xBF\xBD\xEF\xBF\xBD he");
  // Emoji outside the vocabulary stream byte by byte.
  const std::string text = "fever 🌡️ and 咳嗽";
  EXPECT_EQ(stream_decode(tok, tok.encode(text)), text);
}

// ---- synthetic tokenizers ----

// A small byte-level tokenizer.json with the given merges and extra vocabulary.
json tiny_byte_level(const json& merges, bool ignore_merges) {
  json vocab = json::object();
  int next = 0;
  for (int b = 0; b < 256; ++b) {
    std::string ch;
    tok::append_utf8(ch, tok::byte_to_char(static_cast<unsigned char>(b)));
    vocab[ch] = next++;
  }
  for (const char* extra : {"ab", "abc", "xyz"}) vocab[extra] = next++;
  return json{{"version", "1.0"},
              {"normalizer", nullptr},
              {"pre_tokenizer", {{"type", "ByteLevel"}, {"add_prefix_space", false}, {"use_regex", true}}},
              {"model",
               {{"type", "BPE"}, {"vocab", vocab}, {"merges", merges}, {"ignore_merges", ignore_merges}}},
              {"decoder", {{"type", "ByteLevel"}}}};
}

TEST(TokenizerSynthetic, MergesAsStringsOrPairs) {
  const Tokenizer a = Tokenizer::from_json(tiny_byte_level(json::array({"a b", "ab c"}), false).dump(), "", "");
  const Tokenizer b = Tokenizer::from_json(
      tiny_byte_level(json::array({json::array({"a", "b"}), json::array({"ab", "c"})}), false).dump(), "", "");
  EXPECT_EQ(a.encode("abc abx"), (std::vector<TokenId>{257, 32, 256, 120}));
  EXPECT_EQ(b.encode("abc abx"), a.encode("abc abx"));
  EXPECT_EQ(a.decode(a.encode("abc abx")), "abc abx");
}

TEST(TokenizerSynthetic, IgnoreMergesEmitsWholeVocabularyWords) {
  const Tokenizer plain = Tokenizer::from_json(tiny_byte_level(json::array({"a b"}), false).dump(), "", "");
  const Tokenizer ignoring = Tokenizer::from_json(tiny_byte_level(json::array({"a b"}), true).dump(), "", "");
  EXPECT_EQ(plain.encode("xyz"), (std::vector<TokenId>{'x', 'y', 'z'}));
  EXPECT_EQ(ignoring.encode("xyz"), (std::vector<TokenId>{258}));
  EXPECT_EQ(ignoring.encode("abc"), (std::vector<TokenId>{257}));
}

TEST(TokenizerSynthetic, AddedTokenStripAndSingleWord) {
  SKIP_WITHOUT(fixture_dir("bytelevel-tiny"));
  json spec = json::parse(read_file(fixture_dir("bytelevel-tiny") / "tokenizer.json"));
  auto add = [&](int id, const char* content, bool lstrip, bool rstrip, bool single_word) {
    spec["added_tokens"].push_back({{"id", id}, {"content", content}, {"single_word", single_word}, {"lstrip", lstrip},
                                    {"rstrip", rstrip}, {"normalized", false}, {"special", false}});
  };
  add(480, "[L]", true, false, false);
  add(481, "[R]", false, true, false);
  add(482, "cat", false, false, true);
  add(483, "[LONG]", false, false, false);
  add(484, "[LO", false, false, false);
  const Tokenizer tok = Tokenizer::from_json(spec.dump(), "", "");
  // Expected ids from the reference with the same added tokens.
  EXPECT_EQ(tok.encode("a  [L]  b"), (std::vector<TokenId>{64, 480, 220, 285}));
  EXPECT_EQ(tok.encode("a  [R]  b"), (std::vector<TokenId>{64, 261, 481, 65}));
  EXPECT_EQ(tok.encode("cat concat cats cat."), (std::vector<TokenId>{482, 372, 66, 263, 268, 263, 82, 220, 482, 13}));
  EXPECT_EQ(tok.encode("x[LONG]y[LOz"), (std::vector<TokenId>{87, 483, 88, 484, 89}));
  EXPECT_EQ(tok.encode(" [L][R] "), (std::vector<TokenId>{480, 481}));
}

// ---- errors ----

std::string error_of(const std::string& tokenizer_json, const std::string& config = "") {
  try {
    Tokenizer::from_json(tokenizer_json, config, "models/demo");
  } catch (const InputError& e) {
    return e.what();
  }
  return "(no error)";
}

TEST(TokenizerErrors, UnsupportedComponentsAreNamed) {
  json spec = tiny_byte_level(json::array(), false);
  spec["model"]["type"] = "WordPiece";
  std::string message = error_of(spec.dump());
  EXPECT_NE(message.find("models/demo/tokenizer.json"), std::string::npos) << message;
  EXPECT_NE(message.find("model.type \"WordPiece\" is not supported"), std::string::npos) << message;

  spec = tiny_byte_level(json::array(), false);
  spec["normalizer"] = {{"type", "Sequence"}, {"normalizers", json::array({{{"type", "NFC"}}, {{"type", "Lowercase"}}})}};
  message = error_of(spec.dump());
  EXPECT_NE(message.find("normalizer.normalizers[1].type \"Lowercase\""), std::string::npos) << message;

  spec = tiny_byte_level(json::array(), false);
  spec["pre_tokenizer"] = {{"type", "BertPreTokenizer"}};
  EXPECT_NE(error_of(spec.dump()).find("pre_tokenizer.type \"BertPreTokenizer\""), std::string::npos);

  spec = tiny_byte_level(json::array(), false);
  spec["decoder"] = {{"type", "WordPiece"}};
  EXPECT_NE(error_of(spec.dump()).find("decoder.type \"WordPiece\""), std::string::npos);

  spec = tiny_byte_level(json::array(), false);
  spec["post_processor"] = {{"type", "SomethingElse"}};
  EXPECT_NE(error_of(spec.dump()).find("post_processor.type \"SomethingElse\""), std::string::npos);

  spec = tiny_byte_level(json::array({"a q_not_in_vocab"}), false);
  EXPECT_NE(error_of(spec.dump()).find("model.merges[0]"), std::string::npos);

  spec = tiny_byte_level(json::array(), false);
  spec["pre_tokenizer"] = {{"type", "Split"}, {"pattern", {{"Regex", "(unclosed"}}}, {"behavior", "Isolated"}};
  EXPECT_NE(error_of(spec.dump()).find("pre_tokenizer.pattern.Regex"), std::string::npos);
}

TEST(TokenizerErrors, MalformedFilesNameTheFile) {
  std::string message = error_of("{ this is not json");
  EXPECT_NE(message.find("models/demo/tokenizer.json"), std::string::npos) << message;
  EXPECT_NE(message.find("not valid JSON"), std::string::npos) << message;

  json spec = tiny_byte_level(json::array(), false);
  spec["model"].erase("vocab");
  message = error_of(spec.dump());
  EXPECT_NE(message.find("models/demo/tokenizer.json: model.vocab is missing"), std::string::npos) << message;

  // Not a tokenizers file at all (no "model"): said first, whatever else the file holds; and JSON errors
  // without nlohmann's "[json.exception...]" tag.
  spec = tiny_byte_level(json::array(), false);
  spec.erase("model");
  spec["added_tokens"] = "not an array";
  message = error_of(spec.dump());
  EXPECT_NE(message.find("models/demo/tokenizer.json: the \"model\" section (the vocabulary and merges) is missing"),
            std::string::npos)
      << message;
  message = error_of("<html>");
  EXPECT_NE(message.find("not valid JSON (line 1, column 1: syntax error"), std::string::npos) << message;
  EXPECT_EQ(message.find("json.exception"), std::string::npos) << message;

  message = error_of(tiny_byte_level(json::array(), false).dump(), "[1, 2");
  EXPECT_NE(message.find("models/demo/tokenizer_config.json"), std::string::npos) << message;
  message = error_of(tiny_byte_level(json::array(), false).dump(), R"({"bos_token": {"content": "<nope>"}})");
  EXPECT_NE(message.find("bos_token \"<nope>\""), std::string::npos) << message;

  const auto missing = testing::source_dir() / "tests" / "no-such-tokenizer-dir";
  EXPECT_THROW(Tokenizer::from_dir(missing), InputError);
}

// Hugging Face's tokenizers refuses a BPE model without "merges" ("Missing vocab/merges"); so does this one, while
// an empty list (a model that merges nothing) stays valid.
TEST(TokenizerErrors, MissingMergesIsRefused) {
  json spec = tiny_byte_level(json::array(), false);
  spec["model"].erase("merges");
  std::string message = error_of(spec.dump());
  EXPECT_NE(message.find("models/demo/tokenizer.json: model.merges is missing"), std::string::npos) << message;
  spec["model"]["merges"] = nullptr;
  message = error_of(spec.dump());
  EXPECT_NE(message.find("models/demo/tokenizer.json: model.merges must be an array, got null"), std::string::npos)
      << message;
  spec["model"]["merges"] = "a b";
  EXPECT_NE(error_of(spec.dump()).find("model.merges must be an array, got string"), std::string::npos);
  const Tokenizer empty = Tokenizer::from_json(tiny_byte_level(json::array(), false).dump(), "", "");
  EXPECT_EQ(empty.encode("ab"), (std::vector<TokenId>{'a', 'b'}));
}

// The error of check_tokenizer_fits_vocab ("(no error)" when it passes).
std::string fit_error(const Tokenizer& tok, std::int64_t vocab_size) {
  try {
    check_tokenizer_fits_vocab(tok, vocab_size, "models/demo/tokenizer.json");
  } catch (const InputError& e) {
    return e.what();
  }
  return "(no error)";
}

// Ids 0..258 in the vocabulary ("xyz" is 258): a model with fewer rows has no embedding for the top ones.
TEST(TokenizerFitsVocab, VocabularyIdsAtOrAboveVocabSizeAreNamed) {
  const Tokenizer tok = Tokenizer::from_json(tiny_byte_level(json::array({"a b"}), false).dump(), "", "");
  EXPECT_EQ(fit_error(tok, 259), "(no error)");
  EXPECT_EQ(fit_error(tok, 300), "(no error)");  // models pad their vocabulary
  EXPECT_EQ(fit_error(tok, 258),
            "models/demo/tokenizer.json: token \"xyz\" has id 258, but the model's vocab_size (config.json) is 258: "
            "the model has no embedding for it (1 token id is >= 258); the tokenizer does not belong to this model");
  const std::string message = fit_error(tok, 100);
  EXPECT_NE(message.find("token \"xyz\" has id 258"), std::string::npos) << message;
  EXPECT_NE(message.find("vocab_size (config.json) is 100"), std::string::npos) << message;
  EXPECT_NE(message.find("(159 token ids are >= 100)"), std::string::npos) << message;
}

TEST(TokenizerFitsVocab, AddedAndPostProcessorTokensCount) {
  json spec = tiny_byte_level(json::array({"a b"}), false);
  spec["added_tokens"] = json::array({{{"id", 300}, {"content", "<|im_end|>"}, {"special", true}}});
  const Tokenizer added = Tokenizer::from_json(spec.dump(), "", "");
  EXPECT_EQ(fit_error(added, 301), "(no error)");
  std::string message = fit_error(added, 259);
  EXPECT_NE(message.find("added token \"<|im_end|>\" has id 300, but the model's vocab_size (config.json) is 259"),
            std::string::npos)
      << message;

  // A post-processor may add an id that no token of the file has.
  spec = tiny_byte_level(json::array({"a b"}), false);
  spec["post_processor"] = {
      {"type", "TemplateProcessing"},
      {"single", json::array({{{"SpecialToken", {{"id", "<bos>"}, {"type_id", 0}}}},
                              {{"Sequence", {{"id", "A"}, {"type_id", 0}}}}})},
      {"special_tokens",
       {{"<bos>", {{"id", "<bos>"}, {"ids", json::array({400})}, {"tokens", json::array({"<bos>"})}}}}}};
  const Tokenizer templated = Tokenizer::from_json(spec.dump(), "", "");
  message = fit_error(templated, 259);
  EXPECT_NE(message.find("post_processor special token \"<bos>\" has id 400"), std::string::npos) << message;
  EXPECT_EQ(fit_error(templated, 401), "(no error)");
}

// A tokenizer.json (or its directory) whose symbolic links go round in a circle is said to be that, not missing.
TEST(TokenizerErrors, SymlinkLoopIsNamed) {
  const auto dir = std::filesystem::temp_directory_path() /
                   ("slearn_tok_loop_" + std::to_string(::testing::UnitTest::GetInstance()->random_seed()));
  std::filesystem::remove_all(dir);
  std::filesystem::create_directories(dir);
  std::filesystem::create_symlink(dir / "tokenizer.json", dir / "tokenizer.json");
  std::string message;
  try {
    Tokenizer::from_dir(dir);
  } catch (const InputError& e) {
    message = e.what();
  } catch (const std::exception& e) {
    message = std::string("not an InputError: ") + e.what();
  }
  EXPECT_EQ(message, (dir / "tokenizer.json").string() +
                         ": a symlink loop (too many levels of symbolic links) where tokenizer.json was expected");
  std::filesystem::create_symlink(dir / "loop", dir / "loop");
  message.clear();
  try {
    Tokenizer::from_dir(dir / "loop");
  } catch (const InputError& e) {
    message = e.what();
  } catch (const std::exception& e) {
    message = std::string("not an InputError: ") + e.what();
  }
  EXPECT_EQ(message, (dir / "loop").string() +
                         ": a symlink loop (too many levels of symbolic links) where a directory was expected");
  std::filesystem::remove_all(dir);
}

TEST(TokenizerConfig, BosEosFromConfig) {
  const std::string spec = tiny_byte_level(json::array({"a b"}), false).dump();
  const Tokenizer tok = Tokenizer::from_json(
      spec, R"({"bos_token": {"content": "ab"}, "eos_token": "xyz", "add_bos_token": true, "add_eos_token": true})",
      "demo");
  EXPECT_EQ(tok.bos_id(), 256);
  EXPECT_EQ(tok.eos_id(), 258);
  EXPECT_EQ(tok.encode("c", true), (std::vector<TokenId>{256, 'c', 258}));
  EXPECT_EQ(tok.encode("c"), (std::vector<TokenId>{'c'}));
}

}  // namespace
}  // namespace slearn
