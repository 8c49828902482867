// One pass of "answer, then judge" over a set of records, the work split over the ranks. Used for the
// self-learning rounds and for evaluation.
#pragma once

#include <filesystem>
#include <optional>
#include <vector>

#include "slearn/chat_format.hpp"
#include "slearn/communicator.hpp"
#include "slearn/dataset.hpp"
#include "slearn/mesh.hpp"
#include "slearn/pipeline.hpp"
#include "slearn/model.hpp"
#include "slearn/run_config.hpp"
#include "slearn/tokenizer.hpp"

namespace slearn {

struct Judge {
  JudgeSettings settings;
  Model* model = nullptr;  // the grading model (self: the answering model); null for kind rule
  const Tokenizer* tokenizer = nullptr;
  ChatFormat format = ChatFormat::ChatML;
};

struct PassResult {
  std::vector<bool> incorrect;  // per record, identical on every rank (gathered with a collective)
  std::int64_t incorrect_count = 0;
  std::int64_t unparsed = 0;       // judge replies without a verdict (counted as incorrect)
  std::int64_t judged_by_rule = 0, judged_by_model = 0;
  JudgeQuality quality;  // the model judge against the rule, where the rule could decide too (kinds self, model)
  double answer_seconds = 0, judge_seconds = 0;
};

// Left in a stage directory by a rank that stops on request, so the other ranks stop too (see StageStop in
// answer_judge.cpp); removed when the ranks have agreed to stop, and before a run starts.
inline constexpr const char* kStopMarker = ".stop-requested";

// Which rank answers which record: the longest prompts first, each to the rank with the fewest prompt
// tokens so far (ties to the lower rank). Identical on every rank.
std::vector<int> assign_by_prompt_length(const std::vector<std::int64_t>& prompt_tokens, int ranks);

// Checks the prompts (each question in the chat format, with the system prompt) before a run starts, throwing
// InputError naming the data file and what is wrong:
//  - with answer.long_prompt "error", a prompt that leaves no room in the model's context (its line, id and
//    both lengths): generation would refuse it half way through the answer stage, on one rank only, naming
//    neither the record nor the file;
//  - with `for_training`, every prompt filling max_length: no record could become a training example, which
//    would be found only after answering and judging them all.
void check_prompt_lengths(const RunConfig& config, const Tokenizer& tokenizer, ChatFormat format, const Model& model,
                          const DatasetSettings& settings, const Dataset& data, bool for_training);

// Checks, before a run starts, that every record's judge prompt (the template filled with its question and
// reference, in the judge model's chat format) leaves room in the judge model's context for an answer of
// answer.max_new_tokens tokens, with answer.long_prompt "error"; else InputError naming the record, both lengths
// and the settings that would make it fit. Found only after the answer stage (and eval-before) otherwise.
// A cascade judge is checked on every record: which ones its rule leaves to the model depends on the answers.
void check_judge_prompt_lengths(const RunConfig& config, const Judge& judge, const DatasetSettings& settings,
                                const Dataset& data);

// Answers the records that `dir` has no answer for yet (this rank's share), judges those not yet judged,
// gathers the incorrect ones on every rank, and has rank 0 merge answers.jsonl and judgements.jsonl.
// On a T x D mesh (`mesh`, over `comm`, the world) the records are shared among the D data-parallel groups,
// and the T ranks of a tensor group answer and judge the group's share together on their shards of the
// model (the same generation calls, the same tokens: slearn/generate.hpp); the group's first rank writes
// its shard files (answers.rank-<data rank>.jsonl) and counts its records in the gather.
PassResult answer_and_judge(const RunConfig& config, Communicator& comm, const Mesh& mesh, Model& model,
                            const Tokenizer& tokenizer,
                            ChatFormat format, const Judge& judge, const std::vector<DatasetRecord>& records,
                            const std::filesystem::path& dir, const std::string& label, bool show_progress = true);

}  // namespace slearn
