// LoRA fine-tuning: the loop over epochs and global batches, with checkpoints that resume a run exactly.
//
// A step takes the next global_batch_size examples of the epoch's shuffled order (seeded by train.seed and the
// epoch). Rank r of R takes every R-th of them; each rank runs them micro_batch_size at a time, adding
// gradients. The loss is the sum over every learned token of the global batch divided by their count, so the
// result does not depend on how the batch is split over ranks and micro-batches (up to rounding).
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>

#include "slearn/backend.hpp"
#include "slearn/communicator.hpp"
#include "slearn/sft_data.hpp"
#include "slearn/train_config.hpp"

namespace slearn {

class Model;

struct TrainRunOptions {
  bool force = false;                       // ignore checkpoints of another run in run_dir and start over
  std::optional<std::int64_t> stop_at_step;  // checkpoint and return once this many steps are done
  bool show_progress = true;                // a progress bar on a terminal, log lines otherwise
  std::string initial_adapter;              // start from this PEFT adapter instead of a fresh one (later rounds)
  std::string stage = "train";              // how a stop on request names this work (the pipeline: "round 2 train")
  // Testing aid (--inject-nan-at-step): rank 0 puts a NaN into one gradient (the middle LoRA parameter's) of
  // step N before the gradients are summed, to exercise train.nan_policy deterministically.
  std::optional<std::int64_t> inject_nan_at_step;
};

struct TrainResult {
  std::int64_t steps_done = 0, total_steps = 0;
  bool finished = false;           // all steps done and the adapter written
  std::int64_t resumed_from = 0;   // step of the checkpoint resumed from (0: a fresh start)
  double last_loss = 0;
  double seconds = 0;              // wall time of this invocation's steps
  double tokens_per_second = 0;    // all ranks' tokens (prompt and answer) per wall second
  std::size_t activation_bytes = 0;  // kept between forward and backward, largest micro-batch
  std::int64_t skipped_steps = 0;    // steps skipped for non-finite values, resumed runs included (rank 0's count)
  ExampleStats examples;
};

// The backend a training job runs on, from the configuration's `backend` (make_backend: "auto" picks cuda when
// a GPU is visible). The trainer's state lives on that backend (train/flat_adapter.hpp); only scalars of a
// step reach the host.
std::unique_ptr<Backend> make_training_backend(std::string_view name, std::string_view cpu_weights = "auto");

// The most optimizer steps a run may take: far beyond any real run, and small enough that every count derived
// from it (steps x batch, the schedule's arithmetic) stays exact.
inline constexpr std::int64_t kMaxTrainingSteps = 1'000'000'000;

// Optimizer steps per epoch: a global batch per step, the last one possibly short.
inline std::int64_t steps_per_epoch(std::int64_t examples, std::int64_t global_batch_size) {
  return examples / global_batch_size + (examples % global_batch_size != 0 ? 1 : 0);
}

// The optimizer steps of a training on `examples` examples (max_steps, or epochs x steps per epoch). Throws
// InputError naming the keys when the count is out of range (above kMaxTrainingSteps), so a product of huge
// sizes is refused before anything runs instead of wrapping to nothing: called up front as a check too (with
// the most examples a run can have). `source` names the data in messages.
std::int64_t training_steps(const TrainSettings& settings, std::int64_t examples, const std::string& source);

// Loads the model, tokenizer and data of `config` and trains.
TrainResult train_lora(const TrainConfig& config, Communicator& comm, const TrainRunOptions& options);

// Trains on prepared examples with a loaded model (the pipeline's entry point). `world` is every rank of the
// job; `data` the data-parallel group the micro-batches are dealt over: the world itself for a whole model,
// Mesh::data_group for a tensor-parallel one (the tensor group is the model's: Model::tensor_parallel).
TrainResult train_lora_on_examples(Model& model, const std::vector<TrainingExample>& examples,
                                   const std::string& data_fingerprint, const TrainConfig& config,
                                   Communicator& world, Communicator& data, const TrainRunOptions& options);
// The same, for a whole model (data = world).
TrainResult train_lora_on_examples(Model& model, const std::vector<TrainingExample>& examples,
                                   const std::string& data_fingerprint, const TrainConfig& config,
                                   Communicator& comm, const TrainRunOptions& options);

}  // namespace slearn
