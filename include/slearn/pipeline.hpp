// The self-learning run (slearn_dist run): answer every question (the data set sharded over the ranks),
// judge each answer against its reference, gather the incorrectly answered records on every rank with a
// collective, fine-tune LoRA data-parallel on only those (or on all, the full-data baseline), and evaluate
// a validation set before and after. Every stage resumes: running the same command again skips what is done.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "slearn/communicator.hpp"
#include "slearn/run_config.hpp"

namespace slearn {

struct PipelineOptions {
  bool force = false;          // run even if run_dir was started with another configuration, model or data set
  bool show_progress = true;
  std::optional<std::int64_t> inject_nan_at_step;  // testing aid: see TrainRunOptions
  std::string config_path;     // the configuration file: never inside what --force clears
};

struct StageTime {
  std::string stage;
  double seconds = 0;
  double device_hours = 0;  // ranks x seconds / 3600 (a rank is one GPU on cuda): the unit of the paper's tables
};

// How a model judge (kind self or model) graded against the rule judge (judge.rule) on the records the rule
// could decide as well (closed-form references: a class name, yes/no/maybe, a choice letter, a number; a
// free-text reference rarely). "Positive" is the judge's "Incorrect: Yes": a false positive is an answer the
// rule finds correct that the model calls incorrect. An unparseable reply counts as incorrect, as in the run.
struct JudgeQuality {
  std::int64_t compared = 0;        // records both graded
  std::int64_t agree = 0;
  std::int64_t false_positive = 0;  // model incorrect, rule correct
  std::int64_t false_negative = 0;  // model correct, rule incorrect
  std::int64_t rule_correct = 0, rule_incorrect = 0;
  std::int64_t unparseable = 0;     // of the compared records, replies without a verdict
  double agreement() const { return compared ? static_cast<double>(agree) / static_cast<double>(compared) : 0.0; }
  double false_positive_rate() const {
    return rule_correct ? static_cast<double>(false_positive) / static_cast<double>(rule_correct) : 0.0;
  }
  double false_negative_rate() const {
    return rule_incorrect ? static_cast<double>(false_negative) / static_cast<double>(rule_incorrect) : 0.0;
  }
};

struct PipelineSummary {
  std::int64_t records = 0, bad_records = 0, incorrect = 0, trained_on = 0;
  std::int64_t skipped_steps = 0;  // training steps skipped for non-finite values (nan_policy skip_step), all rounds
  double incorrect_rate = 0;
  int world_size = 1;
  int tensor_parallel = 1;  // T of the T x D mesh (parallel.tensor)
  std::string backend = "cpu";  // what every stage ran on: device-hours are GPU-hours on cuda, rank-hours on cpu
  std::vector<StageTime> stages;
  std::optional<double> accuracy_before, accuracy_after;
  JudgeQuality judge_quality;  // round 1's judge stage (compared 0: no record the rule could decide too)
  std::int64_t unparseable_replies = 0;  // round 1's judge replies without a verdict, of every record
};

PipelineSummary run_pipeline(const RunConfig& config, Communicator& comm, const PipelineOptions& options);

}  // namespace slearn
