// What a report reads from a finished run directory: summary.json, run.json, each round's metrics.jsonl and
// judgements.jsonl, and the evaluation sets' judgements. Every file is checked as it is read; a missing or
// damaged one is an InputError naming it (and its line), never a guess.
#pragma once

#include <cstdint>
#include <filesystem>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

namespace slearn::report {

struct StageRow {
  std::string stage;
  double wall_seconds = 0, device_hours = 0;
};

// One round's training log (metrics.jsonl): per optimizer step.
struct TrainingPart {
  std::int64_t round = 1;
  std::vector<std::int64_t> step;
  std::vector<std::optional<double>> loss;  // null: a step skipped for a non-finite value
  std::vector<double> learning_rate;
  std::int64_t tokens = 0;  // through forward and backward, all steps: the training work
};

// Round r answered the records still wrong after round r-1 (round 1: all of them).
struct RoundCount {
  std::int64_t round = 1, answered = 0, incorrect = 0;
};

// The judgements of one set of answers (the training data's round 1, the validation set before/after).
struct JudgeSet {
  std::string name;
  std::vector<double> scores;  // the judgements that carry a score (0-10)
  std::int64_t correct = 0, incorrect = 0, unscored = 0;
  std::vector<std::string> judged_by;  // the distinct judged_by values, in order of appearance
};

struct RunData {
  std::filesystem::path dir;
  nlohmann::json summary;
  std::string fingerprint;  // run.json
  std::string train_on, backend;
  std::int64_t records = 0, bad_records = 0, incorrect = 0, trained_on = 0, skipped_steps = 0;
  std::int64_t rounds_configured = 1, world_size = 1, tensor_parallel = 1, eval_records = 0;
  double incorrect_rate = 0;
  std::optional<double> accuracy_before, accuracy_after;
  std::vector<StageRow> stages;  // in the pipeline's order: answer, judge, train, eval (those that ran)
  std::vector<TrainingPart> training;
  std::vector<RoundCount> rounds;
  std::vector<JudgeSet> judge_sets;

  std::optional<StageRow> stage(const std::string& name) const;
  std::int64_t trained_tokens() const;
  std::string unit() const { return backend == "cuda" ? "GPU-hours" : "device-hours"; }
};

// Reads a finished run directory; `role` ("run directory", "baseline") names it in errors.
RunData read_run(const std::filesystem::path& dir, const std::string& role);

// The parts of two runs' fingerprints (model, tokenizer, data, eval, judge) that differ: a comparison of the
// two runs is only one of training choices when these are the same.
std::vector<std::string> differing_inputs(const RunData& a, const RunData& b);

}  // namespace slearn::report
