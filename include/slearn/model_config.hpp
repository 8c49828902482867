// The architecture of a Hugging Face checkpoint, read from config.json; field names as in config.json.
#pragma once

#include <cstdint>
#include <filesystem>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace slearn {

enum class RopeScaling { None, Linear, Llama3 };

struct ModelConfig {
  std::string model_type;  // "qwen2" or "llama"
  std::int64_t vocab_size = 0;
  std::int64_t hidden_size = 0;
  std::int64_t intermediate_size = 0;
  std::int64_t num_hidden_layers = 0;
  std::int64_t num_attention_heads = 0;
  std::int64_t num_key_value_heads = 0;  // defaults to num_attention_heads
  std::int64_t head_dim = 0;             // defaults to hidden_size / num_attention_heads
  double rms_norm_eps = 1e-6;
  double rope_theta = 10000.0;
  std::int64_t max_position_embeddings = 0;  // required: transformers' defaults differ by architecture
  bool tie_word_embeddings = false;
  bool attention_bias = false;  // q/k/v biases: always true for qwen2, the config flag for llama
  bool mlp_bias = false;        // llama's mlp_bias; an error when true (not supported yet)
  std::string torch_dtype = "float32";  // "torch_dtype" or the newer "dtype"; storage type of the weights
  std::string hidden_act = "silu";      // anything else is an error

  // rope_scaling: null / "default" -> None; "linear" (factor); "llama3" (factor, low_freq_factor,
  // high_freq_factor, original_max_position_embeddings). Any other type is an InputError.
  RopeScaling rope_scaling = RopeScaling::None;
  double rope_factor = 1.0;
  double rope_low_freq_factor = 1.0;
  double rope_high_freq_factor = 4.0;
  std::int64_t rope_original_max_position_embeddings = 0;

  // Qwen2's sliding window: honoured by capping the usable context at `sliding_window` when
  // `use_sliding_window` is true, so the window never has to slide. See context_length().
  bool use_sliding_window = false;
  std::int64_t sliding_window = 0;

  std::vector<std::int64_t> eos_token_id;  // config.json's, possibly a list
  std::optional<std::int64_t> bos_token_id;

  std::int64_t context_length() const;  // the most positions a sequence may use
};

// Reads and validates `dir/config.json`: missing file, bad JSON, a missing or mistyped key, an unsupported
// model_type, activation, rope_scaling or inconsistent sizes each throw InputError naming the file and key.
ModelConfig load_model_config(const std::filesystem::path& model_dir);

// The architectures of real checkpoints, for random models of their shape (Model::random: tests and
// benchmarks with no file): "qwen2.5-0.5b" and "qwen2.5-7b" as their config.json give them, and "tiny" (2
// layers, hidden 64, head_dim 16) for runs on the CPU. Any other name is an InputError listing these.
ModelConfig reference_shape(std::string_view name);
ModelConfig parse_model_config(const std::string& json_text, const std::string& source_name);

// Defaults from generation_config.json (all optional; absent file -> all empty).
struct GenerationDefaults {
  std::vector<std::int64_t> eos_token_id;
  std::optional<std::int64_t> bos_token_id;
  std::optional<std::int64_t> pad_token_id;
  std::optional<double> temperature;
  std::optional<double> top_p;
  std::optional<std::int64_t> top_k;
  std::optional<bool> do_sample;
};
GenerationDefaults load_generation_defaults(const std::filesystem::path& model_dir);

}  // namespace slearn
