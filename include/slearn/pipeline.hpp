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

struct PipelineSummary {
  std::int64_t records = 0, bad_records = 0, incorrect = 0, trained_on = 0;
  std::int64_t skipped_steps = 0;  // training steps skipped for non-finite values (nan_policy skip_step), all rounds
  double incorrect_rate = 0;
  int world_size = 1;
  int tensor_parallel = 1;  // T of the T x D mesh (parallel.tensor)
  std::string backend = "cpu";  // what every stage ran on: device-hours are GPU-hours on cuda, rank-hours on cpu
  std::vector<StageTime> stages;
  std::optional<double> accuracy_before, accuracy_after;
};

PipelineSummary run_pipeline(const RunConfig& config, Communicator& comm, const PipelineOptions& options);

}  // namespace slearn
