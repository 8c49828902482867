// Supervised fine-tuning data: question/answer records, and the token sequences the trainer learns from.
#pragma once

#include <cstdint>
#include <filesystem>
#include <string>
#include <vector>

#include "slearn/chat_format.hpp"
#include "slearn/tokenizer.hpp"
#include "slearn/train_config.hpp"

namespace slearn {

struct QaRecord {
  std::string id;       // the record's id field, or its 1-based line number as text
  std::string question;
  std::string answer;
};

// Reads JSONL records (or a JSON array of them) with the configured field names, through load_dataset. Invalid JSON or UTF-8, a missing or non-string
// field, an empty question or answer and duplicate ids are InputErrors naming the file and line.
std::vector<QaRecord> load_qa_records(const DataSettings& settings);

// One training sequence. `targets[i]` is the token that row i must predict (tokens[i + 1]) when that token
// is learned from, else -100; the last row's target is always -100.
struct TrainingExample {
  std::size_t record = 0;  // index into the records
  std::vector<TokenId> tokens;
  std::vector<TokenId> targets;
  std::int64_t answer_tokens = 0;  // learned-from tokens that remain after truncation
};

struct ExampleStats {
  std::int64_t examples = 0;
  std::int64_t truncated = 0;           // cut at max_length but kept
  std::int64_t dropped_no_answer = 0;   // lost every answer token to truncation: not trained on
  std::int64_t tokens = 0, learned_tokens = 0;
};

// The example of a record: the chat-formatted prompt (system prompt when set, the question as the user turn,
// the generation prompt) tokenized, then the answer followed by the format's end token tokenized on its own.
// Loss is on the answer and end token only, unless train_on_prompt. Sequences longer than max_length are
// cut on the right (the answer's tail goes first); a record left with no answer token is dropped and counted.
std::vector<TrainingExample> build_examples(const std::vector<QaRecord>& records, const Tokenizer& tokenizer,
                                            ChatFormat format, const DataSettings& settings, ExampleStats& stats);

}  // namespace slearn
