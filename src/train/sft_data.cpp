// SFT data: question/answer records and the token sequences built from them.
//
// Records are read by the data-set reader (src/io/dataset.cpp, "qa" format, every bad record an error);
// load_qa_records() only maps the training configuration's field names onto it.
#include "slearn/sft_data.hpp"

#include <algorithm>

#include "slearn/dataset.hpp"
#include "slearn/error.hpp"

namespace slearn {
namespace {

constexpr TokenId kNoTarget = -100;

}  // namespace

std::vector<QaRecord> load_qa_records(const DataSettings& settings) {
  DatasetSettings dataset_settings;
  dataset_settings.path = settings.path;
  dataset_settings.format = "qa";
  dataset_settings.question_field = settings.question_field;
  dataset_settings.answer_field = settings.answer_field;
  dataset_settings.id_field = settings.id_field;
  dataset_settings.on_bad_record = "error";
  Dataset dataset = load_dataset(dataset_settings);
  std::vector<QaRecord> records;
  records.reserve(dataset.records.size());
  for (DatasetRecord& record : dataset.records)
    records.push_back({std::move(record.id), std::move(record.question), std::move(record.answer)});
  return records;
}

std::vector<TrainingExample> build_examples(const std::vector<QaRecord>& records, const Tokenizer& tokenizer,
                                            ChatFormat format, const DataSettings& settings, ExampleStats& stats) {
  if (settings.max_length < 2)
    throw InputError("data.max_length must be at least 2, got " + std::to_string(settings.max_length));
  const auto max_length = static_cast<std::size_t>(settings.max_length);
  const std::string end_token(chat_end_token(format));
  stats = ExampleStats{};

  std::vector<TrainingExample> examples;
  examples.reserve(records.size());
  for (std::size_t r = 0; r < records.size(); ++r) {
    const QaRecord& record = records[r];
    std::vector<ChatMessage> messages;
    if (!settings.system_prompt.empty()) messages.push_back({"system", settings.system_prompt});
    messages.push_back({"user", record.question});
    const std::vector<TokenId> prompt = tokenizer.encode(render_chat(format, messages, true), false);
    const std::vector<TokenId> answer = tokenizer.encode(record.answer + end_token, false);

    // No answer token left within max_length: nothing to learn the answer from.
    if (prompt.size() >= max_length) {
      ++stats.dropped_no_answer;
      continue;
    }
    TrainingExample example;
    example.record = r;
    example.tokens = prompt;
    example.tokens.insert(example.tokens.end(), answer.begin(), answer.end());
    if (example.tokens.size() > max_length) {
      example.tokens.resize(max_length);
      ++stats.truncated;
    }
    const std::size_t n = example.tokens.size();
    // Row i predicts tokens[i + 1]; it is learned from when that token is in the answer (or always, with
    // train_on_prompt). The last row has nothing to predict.
    const std::size_t first_learned = settings.train_on_prompt ? 1 : prompt.size();
    example.targets.assign(n, kNoTarget);
    for (std::size_t i = 0; i + 1 < n; ++i) {
      if (i + 1 >= first_learned) example.targets[i] = example.tokens[i + 1];
    }
    example.answer_tokens = static_cast<std::int64_t>(
        std::count_if(example.targets.begin(), example.targets.end(), [](TokenId t) { return t >= 0; }));
    ++stats.examples;
    stats.tokens += static_cast<std::int64_t>(n);
    stats.learned_tokens += example.answer_tokens;
    examples.push_back(std::move(example));
  }
  return examples;
}

}  // namespace slearn
