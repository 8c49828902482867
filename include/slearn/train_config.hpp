// The training configuration: a YAML file (yaml-cpp) checked against a schema. Unknown keys and wrong types
// are errors naming the key; `overrides` ("a.b=value", as given to --set) apply on top. Every key, its type,
// default and meaning is listed in docs/configuration.md, generated from the same schema table.
#pragma once

#include <cstdint>
#include <filesystem>
#include <optional>
#include <string>
#include <vector>

namespace slearn {

struct LoraSettings {
  std::int64_t r = 64;
  double alpha = 16.0;
  double dropout = 0.05;
  bool use_rslora = false;  // scaling alpha / sqrt(r) instead of alpha / r
  std::vector<std::string> target_modules{"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"};
  double scaling() const;
};

struct DataSettings {
  std::string path;                      // JSONL of question/answer records (required)
  std::string question_field = "question";
  std::string answer_field = "answer";
  std::string id_field = "id";           // optional in the records; the line number otherwise
  std::string system_prompt;             // empty: no system turn
  std::string chat_format = "auto";      // auto | chatml | llama2 | llama3
  std::int64_t max_length = 512;
  bool train_on_prompt = false;
};

struct OptimizerSettings {
  double learning_rate = 3e-4;
  double weight_decay = 0.01;
  double adam_beta1 = 0.9;
  double adam_beta2 = 0.999;
  double adam_epsilon = 1e-8;
  double max_grad_norm = 1.0;            // 0 disables clipping
  std::string lr_schedule = "cosine";    // cosine | linear | constant
  double warmup_ratio = 0.03;            // of the total steps; ignored when warmup_steps >= 0
  std::int64_t warmup_steps = -1;
};

struct TrainSettings {
  std::int64_t epochs = 5;
  std::int64_t global_batch_size = 64;   // examples per optimizer step, over all ranks
  std::string micro_batch_size = "4";    // examples per forward/backward on one rank, or "auto" (memory_fraction)
  double memory_fraction = 0.8;          // with micro_batch_size auto: share of free memory for activations
  bool gradient_checkpointing = false;
  std::uint64_t seed = 42;
  std::int64_t max_steps = -1;           // stop after this many steps (-1: run all epochs)
  std::string nan_policy = "stop";       // non-finite loss or gradient: stop | skip_step
};

struct CheckpointSettings {
  std::int64_t every_steps = 50;
  std::int64_t keep_last = 3;
};

// How the ranks share the model: world = T x D, the T ranks of a tensor group are consecutive and hold one
// copy of the model between them, a 1/T slice of every layer each (see include/slearn/mesh.hpp). T does not
// change the trained weights (beyond rounding), so it is not among the settings that shape them.
struct ParallelSettings {
  std::int64_t tensor = 1;               // T: ranks per tensor-parallel group; the world size is a multiple
};

struct TrainConfig {
  std::string model;                     // Hugging Face model directory (required)
  std::string run_dir;                   // outputs: adapter/, checkpoints/, metrics.jsonl (required)
  std::string backend = "auto";
  std::string cpu_weights = "auto";      // auto | f32 | bf16: weight matrices on the cpu backend (CpuWeights)
  std::optional<int> threads;
  std::int64_t log_every_steps = 10;
  ParallelSettings parallel;
  DataSettings data;
  LoraSettings lora;
  OptimizerSettings optimizer;
  TrainSettings train;
  CheckpointSettings checkpoint;
  std::string source_text;               // the YAML as read, after overrides, for checkpoints
};

TrainConfig load_train_config(const std::filesystem::path& path, const std::vector<std::string>& overrides = {});
TrainConfig parse_train_config(const std::string& yaml_text, const std::string& source_name,
                               const std::vector<std::string>& overrides = {});
// Markdown table of every key: name, type, default, meaning (docs/configuration.md is this output).
std::string train_config_reference();

}  // namespace slearn
