// Training checkpoints in HDF5 under <run>/checkpoints/: step-NNNNNNNN.h5 files written to a temporary name,
// flushed and renamed, then a `latest` pointer file updated last (also atomically); only the last K are kept.
#pragma once

#include <cstdint>
#include <filesystem>
#include <optional>
#include <string>
#include <vector>

namespace slearn {

struct NamedArray {
  std::string name;
  std::vector<std::int64_t> shape;
  std::vector<float> values;
};

struct TrainState {
  std::int64_t step = 0;               // optimizer steps done
  std::int64_t epoch = 0;              // current epoch (0-based)
  std::int64_t position = 0;           // examples of the current epoch's order already consumed
  std::vector<NamedArray> adapter;     // LoRA weights, PEFT key names
  std::vector<NamedArray> adam_m;      // first moments, same names and shapes
  std::vector<NamedArray> adam_v;      // second moments
  std::string rng_state;               // the trainer's RNG (dropout), as text
  std::string config_yaml;             // the run's configuration
  std::string fingerprint;             // of base model + data + the config keys that shape the run
  // The mesh of the run that wrote it (world = T x D; 1 x 1 for a checkpoint written before tensor
  // parallelism). The arrays are whole (PEFT shapes) whatever T was, so any T can resume them.
  std::int64_t tensor_parallel = 1, data_parallel = 1;
};

// Writes <dir>/step-<step>.h5 atomically, points <dir>/latest at it, and removes all but the newest keep_last.
std::filesystem::path save_checkpoint(const std::filesystem::path& dir, const TrainState& state, std::int64_t keep_last);

// The checkpoint `latest` names, or nullopt when there is none. A checkpoint whose fingerprint differs from
// `expected_fingerprint` is refused with an InputError that says what differs (model, data or config).
std::optional<TrainState> load_latest_checkpoint(const std::filesystem::path& dir, const std::string& expected_fingerprint);
TrainState load_checkpoint(const std::filesystem::path& file);

// Fingerprints (hex xxh3-128) of a model directory (config.json and every safetensors header and size) and
// of a file's bytes; combined as "model:<hex> data:<hex> config:<hex>" so a refusal can name the part.
std::string fingerprint_model(const std::filesystem::path& model_dir);
std::string fingerprint_file(const std::filesystem::path& file);
// Of what turns text into tokens and back and where generation stops, in a model directory: tokenizer.json,
// tokenizer_config.json, special_tokens_map.json and generation_config.json (each by name and bytes; absent
// ones count as absent).
std::string fingerprint_tokenizer(const std::filesystem::path& model_dir);
std::string fingerprint_text(const std::string& text);

}  // namespace slearn
