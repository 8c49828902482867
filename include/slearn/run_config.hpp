// The configuration of a self-learning run (slearn_dist run): YAML checked against a schema like the training
// configuration (unknown keys and wrong types are errors naming the key; --set overrides any key), documented
// key by key in docs/configuration.md.
#pragma once

#include <cstdint>
#include <filesystem>
#include <optional>
#include <string>
#include <vector>

#include "slearn/dataset.hpp"
#include "slearn/judge.hpp"
#include "slearn/train_config.hpp"

namespace slearn {

struct AnswerSettings {
  std::int64_t max_new_tokens = 256;
  double temperature = 0.0;
  double top_p = 1.0;
  std::int64_t top_k = 0;
  std::uint64_t seed = 0;
  std::string batch_size = "16";        // sequences decoded together, or "auto": as many as fit (kv_memory_fraction)
  double kv_memory_fraction = 0.9;     // with batch_size auto: the share of free device memory for KV cache + activations
  std::string system_prompt;           // the system turn when answering (empty: none)
  std::string chat_format = "auto";    // auto | chatml | llama2 | llama3
  std::string long_prompt = "error";   // error | truncate-left
};

struct EvalSettings {
  DatasetSettings data;                // data.path empty: no evaluation
  bool before = true;                  // evaluate the base model
  bool after = true;                   // evaluate with the trained adapter
};

struct ReportSettings {
  bool plots = true;                   // draw the report's PNGs at the end of the run (matplotlib)
};

struct RunConfig {
  std::string model;                   // required
  std::string run_dir;                 // required
  std::string backend = "auto";
  std::string cpu_weights = "auto";      // auto | f32 | bf16: weight matrices on the cpu backend (CpuWeights)
  std::optional<int> threads;
  std::int64_t log_every_seconds = 30; // plain log lines when stdout is not a terminal
  ParallelSettings parallel;           // tensor parallelism, as in TrainConfig (every stage)
  DatasetSettings data;                // the domain SFT set (data.path required)
  AnswerSettings answer;
  JudgeSettings judge;
  std::string train_on = "incorrect";  // incorrect | all (the paper's full-data baseline)
  std::int64_t rounds = 1;             // answer, judge and train again on what is still wrong
  // Training, as in TrainConfig: lora, optimizer, train, checkpoint, and the example settings below.
  LoraSettings lora;
  OptimizerSettings optimizer;
  TrainSettings train;
  CheckpointSettings checkpoint;
  std::int64_t max_length = 512;       // training sequence length
  bool train_on_prompt = false;
  EvalSettings eval;
  ReportSettings report;
  std::string source_text;             // effective YAML after overrides
};

RunConfig load_run_config(const std::filesystem::path& path, const std::vector<std::string>& overrides = {});
RunConfig parse_run_config(const std::string& yaml_text, const std::string& source_name,
                           const std::vector<std::string>& overrides = {});
std::string run_config_reference();  // markdown table of every key (docs/configuration.md)

// The TrainConfig the trainer takes for one round: run_dir/round-N, data from the selected records.
TrainConfig to_train_config(const RunConfig& config, const std::string& round_dir);

}  // namespace slearn
