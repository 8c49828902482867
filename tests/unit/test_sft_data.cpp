// SFT data: the JSONL reader (ids, field names, every error with file:line) and the examples built from
// records (prompt/answer split, shifted targets, truncation, dropping), checked token by token against the
// fixture tokenizers and against the batches the PEFT fixture built with Hugging Face's tokenizers.
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include <algorithm>
#include <fstream>
#include <string>
#include <vector>

#include "slearn/chat_format.hpp"
#include "slearn/error.hpp"
#include "slearn/sft_data.hpp"
#include "slearn/tokenizer.hpp"
#include "test_paths.hpp"

namespace slearn {
namespace {

namespace fs = std::filesystem;

class SftData : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() /
           ("slearn_sft_data_" + std::to_string(::testing::UnitTest::GetInstance()->random_seed()) + "_" +
            ::testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::create_directories(dir_);
  }
  void TearDown() override { fs::remove_all(dir_); }

  // Writes `text` to a file and returns settings that read it.
  DataSettings write(const std::string& text, const std::string& name = "data.jsonl") {
    std::ofstream(dir_ / name, std::ios::binary) << text;
    DataSettings settings;
    settings.path = (dir_ / name).string();
    return settings;
  }

  // The message of the InputError load_qa_records throws, without the path ("" when it throws none).
  std::string error(const std::string& text) {
    const DataSettings settings = write(text);
    try {
      load_qa_records(settings);
    } catch (const InputError& e) {
      const std::string message = e.what();
      EXPECT_EQ(message.rfind(settings.path, 0), 0u) << message;
      return message.substr(std::min(message.size(), settings.path.size()));
    }
    return "";
  }

  fs::path dir_;
};

TEST_F(SftData, ReadsRecordsWithIdsFromTheFieldOrTheLine) {
  const DataSettings settings = write(
      "{\"id\": \"a-1\", \"question\": \"What is anemia?\", \"answer\": \"A lack of red cells.\"}\n"
      "\n"
      "   \n"
      "{\"question\": \"Q2\", \"answer\": \"A2\", \"extra\": [1, 2]}\n"
      "{\"id\": 17, \"question\": \"高血压？\", \"answer\": \"  spaces kept  \"}\r\n"
      "{\"id\": null, \"question\": \"Q4\", \"answer\": \"A4\"}");  // no final newline
  const std::vector<QaRecord> records = load_qa_records(settings);
  ASSERT_EQ(records.size(), 4u);
  EXPECT_EQ(records[0].id, "a-1");
  EXPECT_EQ(records[0].question, "What is anemia?");
  EXPECT_EQ(records[0].answer, "A lack of red cells.");
  EXPECT_EQ(records[1].id, "4");  // its line number: blank lines count
  EXPECT_EQ(records[1].question, "Q2");
  EXPECT_EQ(records[2].id, "17");
  EXPECT_EQ(records[2].question, "高血压？");
  EXPECT_EQ(records[2].answer, "  spaces kept  ");
  EXPECT_EQ(records[3].id, "6");
}

TEST_F(SftData, ConfiguredFieldNames) {
  DataSettings settings = write("\xEF\xBB\xBF{\"uid\": \"x\", \"prompt\": \"P\", \"response\": \"R\", \"id\": 1}\n");
  settings.question_field = "prompt";
  settings.answer_field = "response";
  settings.id_field = "uid";
  const auto records = load_qa_records(settings);
  ASSERT_EQ(records.size(), 1u);
  EXPECT_EQ(records[0].id, "x");
  EXPECT_EQ(records[0].question, "P");
  EXPECT_EQ(records[0].answer, "R");
  settings.id_field = "";  // no id field: line numbers
  EXPECT_EQ(load_qa_records(settings)[0].id, "1");
  settings.question_field = "question";
  try {
    load_qa_records(settings);
    ADD_FAILURE() << "no error";
  } catch (const InputError& e) {
    EXPECT_EQ(std::string(e.what()),
              settings.path + ":1: missing question field \"question\" (question_field)");
  }
}

TEST_F(SftData, ErrorsNameFileAndLine) {
  const std::string ok = "{\"question\": \"q\", \"answer\": \"a\"}\n";
  EXPECT_EQ(error(ok + "{\"question\": \"q\", \"answer\": }\n").rfind(":2: invalid JSON (", 0), 0u);
  EXPECT_EQ(error(ok + ok + "{\"question\": \"q\", \"answer\": \"a\"} x\n").rfind(":3: invalid JSON (", 0), 0u);
  const std::string not_utf8 =
      "; the data file is not UTF-8 text (convert one in another encoding, such as GB18030/GBK or Latin-1, to UTF-8, "
      "e.g. with iconv -f GB18030 -t UTF-8)";
  EXPECT_EQ(error(ok + "{\"question\": \"q\xff\", \"answer\": \"a\"}\n"),
            ":2: invalid UTF-8 (byte 0xFF at column 16, byte offset 48 in the file)" + not_utf8);
  EXPECT_EQ(error("{\"question\": \"\xC3\", \"answer\": \"a\"}\n"),
            ":1: invalid UTF-8 (byte 0xC3 at column 15, byte offset 14 in the file)" + not_utf8);
  EXPECT_EQ(error("{\"question\": \"\xED\xA0\x80\", \"answer\": \"a\"}\n"),  // a UTF-16 surrogate
            ":1: invalid UTF-8 (byte 0xED at column 15, byte offset 14 in the file)" + not_utf8);
  EXPECT_EQ(error(ok + "[1, 2]\n"), ":2: expected a JSON object, got an array");
  EXPECT_EQ(error("[1, 2]\n"), ":1: array element 1: expected a JSON object, got a number");  // a JSON array
  EXPECT_EQ(error("\"text\"\n"), ":1: expected a JSON object, got a string");
  EXPECT_EQ(error(ok + "{\"answer\": \"a\"}\n"), ":2: missing question field \"question\" (question_field)");
  EXPECT_EQ(error("{\"question\": \"q\"}\n"), ":1: missing answer field \"answer\" (answer_field)");
  EXPECT_EQ(error("{\"question\": 5, \"answer\": \"a\"}\n"), ":1: question field \"question\" must be a string, got a number");
  EXPECT_EQ(error("{\"question\": \"q\", \"answer\": null}\n"),
            ":1: answer field \"answer\" must be a string, got null");
  EXPECT_EQ(error("{\"question\": \"q\", \"answer\": [\"a\"]}\n"),
            ":1: answer field \"answer\" must be a string, got an array");
  EXPECT_EQ(error("{\"question\": \" \\n\\t\", \"answer\": \"a\"}\n"), ":1: question field \"question\" is empty");
  EXPECT_EQ(error("{\"question\": \"q\", \"answer\": \"\"}\n"), ":1: answer field \"answer\" is empty");
  EXPECT_EQ(error("{\"question\": \"q\", \"answer\": \"\\u3000\"}\n"), ":1: answer field \"answer\" is empty");
  EXPECT_EQ(error("{\"id\": 1.5, \"question\": \"q\", \"answer\": \"a\"}\n"),
            ":1: id field \"id\" must be a string or an integer, got a number");
  EXPECT_EQ(error("{\"id\": \"\", \"question\": \"q\", \"answer\": \"a\"}\n"), ":1: id field \"id\" is empty");
  EXPECT_EQ(error("{\"id\": \"x\", \"question\": \"q\", \"answer\": \"a\"}\n" + ok +
                  "{\"id\": \"x\", \"question\": \"q2\", \"answer\": \"a2\"}\n"),
            ":3: duplicate id \"x\" (also line 1)");
  // An explicit id may collide with another record's line number.
  EXPECT_EQ(error(ok + "{\"id\": 1, \"question\": \"q\", \"answer\": \"a\"}\n"), ":2: duplicate id \"1\" (also line 1)");
  EXPECT_EQ(error("\n  \n"), ": the data file holds no records");
}

TEST_F(SftData, MissingFile) {
  DataSettings settings;
  settings.path = (dir_ / "nope.jsonl").string();
  try {
    load_qa_records(settings);
    ADD_FAILURE() << "no error";
  } catch (const InputError& e) {
    EXPECT_EQ(std::string(e.what()),
              settings.path + ": the data file does not exist");  // an absolute path: no working-directory hint
  }
  settings.path = dir_.string();
  EXPECT_THROW(load_qa_records(settings), InputError);
}

std::vector<TokenId> concat(std::vector<TokenId> a, const std::vector<TokenId>& b) {
  a.insert(a.end(), b.begin(), b.end());
  return a;
}

// Checks the invariants every example holds against its tokens and the prompt length.
void expect_targets(const TrainingExample& example, std::size_t prompt_length, bool train_on_prompt) {
  const std::size_t n = example.tokens.size();
  ASSERT_EQ(example.targets.size(), n);
  std::int64_t learned = 0;
  for (std::size_t i = 0; i < n; ++i) {
    const bool learn = i + 1 < n && (train_on_prompt || i + 1 >= prompt_length);
    EXPECT_EQ(example.targets[i], learn ? example.tokens[i + 1] : -100) << "row " << i;
    learned += learn;
  }
  EXPECT_EQ(example.answer_tokens, learned);
}

TEST(SftDataExamples, ChatMLPromptAnswerAndTargets) {
  const Tokenizer tokenizer = Tokenizer::from_dir(testing::fixtures_dir() / "tokenizers" / "bytelevel-tiny");
  const std::vector<QaRecord> records = {{"1", "What is anemia?", "A lack of red blood cells."},
                                         {"2", "高血压患者应该注意什么？", "少吃盐。"}};
  DataSettings settings;
  settings.system_prompt = "You are a medical expert.";
  ExampleStats stats;
  stats.examples = 99;  // filled from scratch
  const auto examples = build_examples(records, tokenizer, ChatFormat::ChatML, settings, stats);
  ASSERT_EQ(examples.size(), 2u);
  std::int64_t tokens = 0, learned = 0;
  for (std::size_t r = 0; r < records.size(); ++r) {
    const auto prompt = tokenizer.encode("<|im_start|>system\nYou are a medical expert.<|im_end|>\n<|im_start|>user\n" +
                                         records[r].question + "<|im_end|>\n<|im_start|>assistant\n");
    const auto answer = tokenizer.encode(records[r].answer + "<|im_end|>");
    EXPECT_EQ(examples[r].record, r);
    EXPECT_EQ(examples[r].tokens, concat(prompt, answer));
    EXPECT_EQ(examples[r].tokens.back(), *tokenizer.token_to_id("<|im_end|>"));
    expect_targets(examples[r], prompt.size(), false);
    EXPECT_EQ(examples[r].answer_tokens, static_cast<std::int64_t>(answer.size()));
    tokens += static_cast<std::int64_t>(examples[r].tokens.size());
    learned += examples[r].answer_tokens;
  }
  EXPECT_EQ(stats.examples, 2);
  EXPECT_EQ(stats.truncated, 0);
  EXPECT_EQ(stats.dropped_no_answer, 0);
  EXPECT_EQ(stats.tokens, tokens);
  EXPECT_EQ(stats.learned_tokens, learned);
}

TEST(SftDataExamples, NoSystemTurnAndTrainOnPrompt) {
  const Tokenizer tokenizer = Tokenizer::from_dir(testing::fixtures_dir() / "tokenizers" / "bytelevel-tiny");
  DataSettings settings;
  settings.train_on_prompt = true;
  ExampleStats stats;
  const auto examples = build_examples({{"1", "Hi", "Hello"}}, tokenizer, ChatFormat::ChatML, settings, stats);
  ASSERT_EQ(examples.size(), 1u);
  const auto prompt = tokenizer.encode("<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n");
  EXPECT_EQ(examples[0].tokens, concat(prompt, tokenizer.encode("Hello<|im_end|>")));
  expect_targets(examples[0], prompt.size(), true);
  EXPECT_EQ(examples[0].answer_tokens, static_cast<std::int64_t>(examples[0].tokens.size()) - 1);
  EXPECT_EQ(stats.learned_tokens, examples[0].answer_tokens);
}

TEST(SftDataExamples, Llama2WithSentencePieceTokenizer) {
  const Tokenizer tokenizer = Tokenizer::from_dir(testing::fixtures_dir() / "tokenizers" / "spbpe-tiny");
  DataSettings settings;
  settings.system_prompt = "Be brief.";
  ExampleStats stats;
  const auto examples =
      build_examples({{"1", "What is the treatment?", "Rest and fluids."}}, tokenizer, ChatFormat::Llama2, settings, stats);
  ASSERT_EQ(examples.size(), 1u);
  const auto prompt = tokenizer.encode("<s>[INST] <<SYS>>\nBe brief.\n<</SYS>>\n\nWhat is the treatment? [/INST]");
  EXPECT_EQ(examples[0].tokens, concat(prompt, tokenizer.encode("Rest and fluids.</s>")));
  EXPECT_EQ(examples[0].tokens.front(), 1);  // <s>
  EXPECT_EQ(examples[0].tokens.back(), 2);   // </s>
  expect_targets(examples[0], prompt.size(), false);
}

TEST(SftDataExamples, TruncationAndDropping) {
  const Tokenizer tokenizer = Tokenizer::from_dir(testing::fixtures_dir() / "tokenizers" / "bytelevel-tiny");
  const QaRecord record{"1", "What are the symptoms of iron deficiency?", "Tiredness, pale skin and shortness of breath."};
  const auto prompt = tokenizer.encode("<|im_start|>user\n" + record.question + "<|im_end|>\n<|im_start|>assistant\n");
  const auto answer = tokenizer.encode(record.answer + "<|im_end|>");
  const auto full = concat(prompt, answer);
  ASSERT_GT(answer.size(), 3u);
  const std::vector<QaRecord> records = {record};

  for (const bool train_on_prompt : {false, true}) {
    DataSettings settings;
    settings.train_on_prompt = train_on_prompt;
    ExampleStats stats;
    // Exactly fits: not truncated.
    settings.max_length = static_cast<std::int64_t>(full.size());
    auto examples = build_examples(records, tokenizer, ChatFormat::ChatML, settings, stats);
    ASSERT_EQ(examples.size(), 1u);
    EXPECT_EQ(examples[0].tokens, full);
    EXPECT_EQ(stats.truncated, 0);

    // Cut inside the answer: the kept part is learned from, the last row predicts nothing.
    settings.max_length = static_cast<std::int64_t>(prompt.size() + 2);
    examples = build_examples(records, tokenizer, ChatFormat::ChatML, settings, stats);
    ASSERT_EQ(examples.size(), 1u);
    EXPECT_EQ(examples[0].tokens, std::vector<TokenId>(full.begin(), full.begin() + settings.max_length));
    expect_targets(examples[0], prompt.size(), train_on_prompt);
    if (!train_on_prompt) {
      EXPECT_EQ(examples[0].answer_tokens, 2);
    }
    EXPECT_EQ(stats.examples, 1);
    EXPECT_EQ(stats.truncated, 1);
    EXPECT_EQ(stats.dropped_no_answer, 0);
    EXPECT_EQ(stats.tokens, settings.max_length);

    // One answer token left.
    settings.max_length = static_cast<std::int64_t>(prompt.size() + 1);
    examples = build_examples(records, tokenizer, ChatFormat::ChatML, settings, stats);
    ASSERT_EQ(examples.size(), 1u);
    expect_targets(examples[0], prompt.size(), train_on_prompt);
    if (!train_on_prompt) {
      EXPECT_EQ(examples[0].answer_tokens, 1);
    }

    // The prompt fills max_length: no answer token remains, the record is dropped (even with train_on_prompt).
    for (const std::size_t length : {prompt.size(), prompt.size() - 5}) {
      settings.max_length = static_cast<std::int64_t>(length);
      examples = build_examples({record, {"2", "Hi", "Yes"}}, tokenizer, ChatFormat::ChatML, settings, stats);
      ASSERT_EQ(examples.size(), 1u);
      EXPECT_EQ(examples[0].record, 1u);
      EXPECT_EQ(stats.examples, 1);
      EXPECT_EQ(stats.dropped_no_answer, 1);
      EXPECT_EQ(stats.truncated, 0);
    }
  }
  DataSettings bad;
  bad.max_length = 1;
  ExampleStats stats;
  EXPECT_THROW(build_examples(records, tokenizer, ChatFormat::ChatML, bad, stats), InputError);
}

// The batches the PEFT fixture built with Hugging Face's tokenizer and chat template (same policy): the
// same records give the same token ids, and targets are the HF labels shifted by one.
class SftDataFixture : public ::testing::TestWithParam<std::string> {};

TEST_P(SftDataFixture, MatchesHuggingFaceBatch) {
  const fs::path batch_path = testing::fixtures_dir() / "lora" / GetParam() / "batch.json";
  if (!fs::exists(batch_path)) GTEST_SKIP() << "fixture not generated: " << batch_path;
  std::ifstream in(batch_path);
  const nlohmann::json batch = nlohmann::json::parse(in);
  const Tokenizer tokenizer = Tokenizer::from_dir(testing::fixtures_dir() / "models" / GetParam());

  std::vector<QaRecord> records;
  for (const auto& r : batch.at("records"))
    records.push_back({std::to_string(records.size() + 1), r.at("question").get<std::string>(),
                       r.at("answer").get<std::string>()});
  DataSettings settings;
  settings.system_prompt = batch.at("system").get<std::string>();
  settings.max_length = batch.at("max_length").get<std::int64_t>();
  const ChatFormat format = chat_format_from_name(batch.at("chat_format").get<std::string>());
  EXPECT_EQ(chat_end_token(format), batch.at("end_token").get<std::string>());

  ExampleStats stats;
  const auto examples = build_examples(records, tokenizer, format, settings, stats);
  const auto& input_ids = batch.at("input_ids");
  const auto& labels = batch.at("labels");
  ASSERT_EQ(examples.size(), input_ids.size());
  std::int64_t truncated = 0, learned = 0;
  for (std::size_t e = 0; e < examples.size(); ++e) {
    const auto ids = input_ids[e].get<std::vector<TokenId>>();
    const auto hf_labels = labels[e].get<std::vector<TokenId>>();
    ASSERT_EQ(hf_labels.size(), ids.size());
    EXPECT_EQ(examples[e].record, e);
    EXPECT_EQ(examples[e].tokens, ids) << "example " << e;
    std::vector<TokenId> shifted(ids.size(), -100);
    for (std::size_t i = 0; i + 1 < ids.size(); ++i) shifted[i] = hf_labels[i + 1];
    EXPECT_EQ(examples[e].targets, shifted) << "example " << e;
    EXPECT_EQ(examples[e].answer_tokens, std::count_if(shifted.begin(), shifted.end(), [](TokenId t) { return t >= 0; }));
    if (batch.contains("prompt_lengths")) {
      const auto prompt_length = batch["prompt_lengths"][e].get<std::size_t>();
      expect_targets(examples[e], prompt_length, false);
    }
    truncated += batch.contains("truncated") && batch["truncated"][e].get<bool>();
    learned += examples[e].answer_tokens;
  }
  if (batch.contains("truncated")) {
    EXPECT_EQ(stats.truncated, truncated);
  }
  EXPECT_GE(stats.truncated, 1);  // the fixture cuts one example at max_length
  EXPECT_EQ(stats.dropped_no_answer, 0);
  EXPECT_EQ(stats.examples, static_cast<std::int64_t>(examples.size()));
  EXPECT_EQ(stats.learned_tokens, learned);
}

INSTANTIATE_TEST_SUITE_P(SftDataModels, SftDataFixture, ::testing::Values("qwen2-gqa-tied", "llama-bf16"));

}  // namespace
}  // namespace slearn
