// Chat formats: exact renderings (checked against the reference chat templates of the fixture
// tokenizers), role-order errors, names, and the default format per model family.
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include <algorithm>
#include <fstream>

#include "slearn/chat_format.hpp"
#include "slearn/error.hpp"
#include "slearn/tokenizer.hpp"
#include "test_paths.hpp"

namespace slearn {
namespace {

const std::vector<ChatMessage> kConversation = {
    {"system", "You are helpful."},
    {"user", "Hi"},
    {"assistant", "Hello!"},
    {"user", "How are you?"},
};

TEST(ChatFormat, ChatMLMatchesTemplate) {
  EXPECT_EQ(render_chat(ChatFormat::ChatML, kConversation, true),
            "<|im_start|>system\nYou are helpful.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n"
            "<|im_start|>assistant\nHello!<|im_end|>\n<|im_start|>user\nHow are you?<|im_end|>\n"
            "<|im_start|>assistant\n");
  const std::vector<ChatMessage> turn(kConversation.begin() + 1, kConversation.begin() + 3);
  EXPECT_EQ(render_chat(ChatFormat::ChatML, turn, false),
            "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\nHello!<|im_end|>\n");
}

TEST(ChatFormat, Llama2FoldsSystemIntoFirstUserTurn) {
  EXPECT_EQ(render_chat(ChatFormat::Llama2, kConversation, true),
            "<s>[INST] <<SYS>>\nYou are helpful.\n<</SYS>>\n\nHi [/INST] Hello! </s><s>[INST] How are you? [/INST]");
  const std::vector<ChatMessage> turn(kConversation.begin() + 1, kConversation.begin() + 3);
  EXPECT_EQ(render_chat(ChatFormat::Llama2, turn, false), "<s>[INST] Hi [/INST] Hello! </s>");
  // Contents are stripped, as in Meta's reference.
  EXPECT_EQ(render_chat(ChatFormat::Llama2, {{"user", "  Hi\n"}}, true), "<s>[INST] Hi [/INST]");
}

TEST(ChatFormat, Llama3Headers) {
  EXPECT_EQ(render_chat(ChatFormat::Llama3, kConversation, true),
            "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nYou are helpful.<|eot_id|>"
            "<|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>"
            "<|start_header_id|>assistant<|end_header_id|>\n\nHello!<|eot_id|>"
            "<|start_header_id|>user<|end_header_id|>\n\nHow are you?<|eot_id|>"
            "<|start_header_id|>assistant<|end_header_id|>\n\n");
  EXPECT_EQ(render_chat(ChatFormat::Llama3, {{"user", "Hi"}, {"assistant", "Yes"}}, false),
            "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>"
            "<|start_header_id|>assistant<|end_header_id|>\n\nYes<|eot_id|>");
}

TEST(ChatFormat, BadRoleOrderIsInputError) {
  for (const ChatFormat format : {ChatFormat::ChatML, ChatFormat::Llama2, ChatFormat::Llama3}) {
    EXPECT_THROW(render_chat(format, {}, true), InputError);
    EXPECT_THROW(render_chat(format, {{"system", "s"}}, true), InputError);
    EXPECT_THROW(render_chat(format, {{"assistant", "a"}}, false), InputError);
    EXPECT_THROW(render_chat(format, {{"user", "u"}, {"user", "u"}}, true), InputError);
    EXPECT_THROW(render_chat(format, {{"user", "u"}, {"system", "s"}}, true), InputError);
    EXPECT_THROW(render_chat(format, {{"user", "u"}, {"tool", "t"}}, false), InputError);
    EXPECT_THROW(render_chat(format, {{"user", "u"}, {"assistant", "a"}}, true), InputError);
    EXPECT_NO_THROW(render_chat(format, {{"user", "u"}, {"assistant", "a"}}, false));
  }
}

TEST(ChatFormat, NamesAndEndTokens) {
  for (const ChatFormat format : {ChatFormat::ChatML, ChatFormat::Llama2, ChatFormat::Llama3})
    EXPECT_EQ(chat_format_from_name(chat_format_name(format)), format);
  EXPECT_EQ(chat_format_name(ChatFormat::Llama3), "llama3");
  EXPECT_THROW(chat_format_from_name("vicuna"), InputError);
  EXPECT_EQ(chat_end_token(ChatFormat::ChatML), "<|im_end|>");
  EXPECT_EQ(chat_end_token(ChatFormat::Llama2), "</s>");
  EXPECT_EQ(chat_end_token(ChatFormat::Llama3), "<|eot_id|>");
}

using slearn::testing::read_file;

TEST(ChatFormat, DefaultFormatPerModelFamily) {
  const auto byte_level = testing::fixtures_dir() / "tokenizers" / "bytelevel-tiny";
  const auto sentencepiece = testing::fixtures_dir() / "tokenizers" / "spbpe-tiny";
  if (!std::filesystem::exists(byte_level / "tokenizer.json") || !std::filesystem::exists(sentencepiece / "tokenizer.json")) {
    GTEST_SKIP() << "fixture tokenizers missing under " << testing::fixtures_dir().string();
  }
  const Tokenizer chatml = Tokenizer::from_dir(byte_level);
  const Tokenizer llama2 = Tokenizer::from_dir(sentencepiece);
  EXPECT_EQ(default_chat_format("qwen2", chatml), ChatFormat::ChatML);
  EXPECT_EQ(default_chat_format("llama", llama2), ChatFormat::Llama2);
  EXPECT_THROW(default_chat_format("gpt_neox", chatml), InputError);

  // A LLaMA-3 style vocabulary knows the header tokens.
  nlohmann::json spec = nlohmann::json::parse(read_file(byte_level / "tokenizer.json"));
  int id = 480;
  for (const char* token : {"<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"}) {
    spec["added_tokens"].push_back({{"id", id++}, {"content", token}, {"single_word", false}, {"lstrip", false},
                                    {"rstrip", false}, {"normalized", false}, {"special", true}});
  }
  const Tokenizer llama3 = Tokenizer::from_json(spec.dump(), "", "llama3-like");
  EXPECT_EQ(default_chat_format("llama", llama3), ChatFormat::Llama3);

  // Rendered special tokens encode as single ids.
  const std::vector<TokenId> ids = llama3.encode(render_chat(ChatFormat::Llama3, {{"user", "Hi"}}, true));
  EXPECT_EQ(ids.front(), 480);
  EXPECT_EQ(ids[1], 481);
  EXPECT_EQ(std::count(ids.begin(), ids.end(), 482), 2);
  EXPECT_EQ(std::count(ids.begin(), ids.end(), 483), 1);
  EXPECT_EQ(llama3.decode(ids), render_chat(ChatFormat::Llama3, {{"user", "Hi"}}, true));
}

TEST(ChatFormat, ChatMLTokensAreSingleIdsInQwen) {
  const auto dir = testing::shared_data_dir() / "qwen-tokenizer";
  if (!std::filesystem::exists(dir / "tokenizer.json")) {
    GTEST_SKIP() << "shared Qwen tokenizer missing at " << dir.string();
  }
  const Tokenizer tok = Tokenizer::from_dir(dir);
  const std::string text = render_chat(ChatFormat::ChatML, {{"user", "hi"}}, true);
  const std::vector<TokenId> ids = tok.encode(text);
  EXPECT_EQ(ids, (std::vector<TokenId>{151644, 872, 198, 6023, 151645, 198, 151644, 77091, 198}));
  EXPECT_EQ(tok.decode(ids), text);
}

}  // namespace
}  // namespace slearn
