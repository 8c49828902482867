// config.json and generation_config.json: real-world examples, defaults, rotary scaling, sliding window,
// and the errors for missing, mistyped or unsupported values.
#include <gtest/gtest.h>
#include <unistd.h>

#include <atomic>
#include <filesystem>
#include <fstream>
#include <functional>
#include <iterator>
#include <string>

#include <nlohmann/json.hpp>

#include "slearn/backend.hpp"
#include "slearn/error.hpp"
#include "slearn/model.hpp"
#include "slearn/model_config.hpp"
#include "test_paths.hpp"
#include "test_helpers.hpp"

namespace {

using namespace slearn;
namespace fs = std::filesystem;

using slearn::testing::input_error;

// Modelled on Qwen2.5-7B-Instruct's config.json.
const char* const kQwen2Config = R"({
  "architectures": ["Qwen2ForCausalLM"],
  "attention_dropout": 0.0,
  "bos_token_id": 151643,
  "eos_token_id": 151645,
  "hidden_act": "silu",
  "hidden_size": 3584,
  "initializer_range": 0.02,
  "intermediate_size": 18944,
  "max_position_embeddings": 32768,
  "max_window_layers": 28,
  "model_type": "qwen2",
  "num_attention_heads": 28,
  "num_hidden_layers": 28,
  "num_key_value_heads": 4,
  "rms_norm_eps": 1e-06,
  "rope_scaling": null,
  "rope_theta": 1000000.0,
  "sliding_window": 131072,
  "tie_word_embeddings": false,
  "torch_dtype": "bfloat16",
  "transformers_version": "4.43.1",
  "use_cache": true,
  "use_sliding_window": false,
  "vocab_size": 152064
})";

// Modelled on Llama-3.1-8B-Instruct's config.json.
const char* const kLlamaConfig = R"({
  "architectures": ["LlamaForCausalLM"],
  "attention_bias": false,
  "attention_dropout": 0.0,
  "bos_token_id": 128000,
  "eos_token_id": [128001, 128008, 128009],
  "hidden_act": "silu",
  "hidden_size": 4096,
  "initializer_range": 0.02,
  "intermediate_size": 14336,
  "max_position_embeddings": 131072,
  "mlp_bias": false,
  "model_type": "llama",
  "num_attention_heads": 32,
  "num_hidden_layers": 32,
  "num_key_value_heads": 8,
  "pretraining_tp": 1,
  "rms_norm_eps": 1e-05,
  "rope_scaling": {
    "factor": 8.0,
    "high_freq_factor": 4.0,
    "low_freq_factor": 1.0,
    "original_max_position_embeddings": 8192,
    "rope_type": "llama3"
  },
  "rope_theta": 500000.0,
  "tie_word_embeddings": false,
  "torch_dtype": "bfloat16",
  "transformers_version": "4.42.3",
  "use_cache": true,
  "vocab_size": 128256
})";

// The smallest config that parses: only the required keys.
const char* const kMinimalLlama = R"({
  "model_type": "llama", "vocab_size": 1000, "hidden_size": 64, "intermediate_size": 128,
  "num_hidden_layers": 2, "num_attention_heads": 4, "max_position_embeddings": 512
})";

// `base` with `key` set to the raw JSON `value`, or removed when `value` is empty.
std::string with(const std::string& base, const std::string& key, const std::string& value) {
  auto j = nlohmann::json::parse(base);
  if (value.empty()) {
    j.erase(key);
  } else {
    j[key] = nlohmann::json::parse(value);
  }
  return j.dump();
}

std::string without(const std::string& base, const std::string& key) { return with(base, key, ""); }

ModelConfig parse(const std::string& text) { return parse_model_config(text, "config.json"); }

std::string parse_error(const std::string& text) {
  return input_error([&] { parse(text); });
}

#define EXPECT_CONTAINS(text, needle) \
  EXPECT_NE(std::string(text).find(needle), std::string::npos) << "message: " << (text) << "\nlacks: " << (needle)

class TempDir {
 public:
  TempDir() {
    static std::atomic<int> counter{0};
    path_ = fs::temp_directory_path() /
            ("slearn_cfg_" + std::to_string(::getpid()) + "_" + std::to_string(counter++));
    fs::remove_all(path_);
    fs::create_directories(path_);
  }
  ~TempDir() {
    std::error_code ec;
    fs::remove_all(path_, ec);
  }
  const fs::path& path() const { return path_; }
  void write(const std::string& name, const std::string& text) const {
    std::ofstream out(path_ / name, std::ios::binary | std::ios::trunc);
    out << text;
  }

 private:
  fs::path path_;
};

// ---- real-world examples -----------------------------------------------------------------------------------

TEST(ModelConfig, Qwen2Example) {
  const ModelConfig c = parse(kQwen2Config);
  EXPECT_EQ(c.model_type, "qwen2");
  EXPECT_EQ(c.vocab_size, 152064);
  EXPECT_EQ(c.hidden_size, 3584);
  EXPECT_EQ(c.intermediate_size, 18944);
  EXPECT_EQ(c.num_hidden_layers, 28);
  EXPECT_EQ(c.num_attention_heads, 28);
  EXPECT_EQ(c.num_key_value_heads, 4);
  EXPECT_EQ(c.head_dim, 128);
  EXPECT_DOUBLE_EQ(c.rms_norm_eps, 1e-6);
  EXPECT_DOUBLE_EQ(c.rope_theta, 1e6);
  EXPECT_EQ(c.max_position_embeddings, 32768);
  EXPECT_FALSE(c.tie_word_embeddings);
  EXPECT_TRUE(c.attention_bias);  // always for qwen2
  EXPECT_FALSE(c.mlp_bias);
  EXPECT_EQ(c.torch_dtype, "bfloat16");
  EXPECT_EQ(c.hidden_act, "silu");
  EXPECT_EQ(c.rope_scaling, RopeScaling::None);
  EXPECT_FALSE(c.use_sliding_window);
  EXPECT_EQ(c.sliding_window, 131072);
  EXPECT_EQ(c.context_length(), 32768);
  EXPECT_EQ(c.eos_token_id, (std::vector<std::int64_t>{151645}));
  EXPECT_EQ(c.bos_token_id, 151643);
}

TEST(ModelConfig, LlamaExample) {
  const ModelConfig c = parse(kLlamaConfig);
  EXPECT_EQ(c.model_type, "llama");
  EXPECT_EQ(c.vocab_size, 128256);
  EXPECT_EQ(c.hidden_size, 4096);
  EXPECT_EQ(c.intermediate_size, 14336);
  EXPECT_EQ(c.num_hidden_layers, 32);
  EXPECT_EQ(c.num_attention_heads, 32);
  EXPECT_EQ(c.num_key_value_heads, 8);
  EXPECT_EQ(c.head_dim, 128);
  EXPECT_DOUBLE_EQ(c.rms_norm_eps, 1e-5);
  EXPECT_DOUBLE_EQ(c.rope_theta, 500000.0);
  EXPECT_EQ(c.max_position_embeddings, 131072);
  EXPECT_EQ(c.context_length(), 131072);
  EXPECT_FALSE(c.attention_bias);
  EXPECT_EQ(c.rope_scaling, RopeScaling::Llama3);
  EXPECT_DOUBLE_EQ(c.rope_factor, 8.0);
  EXPECT_DOUBLE_EQ(c.rope_low_freq_factor, 1.0);
  EXPECT_DOUBLE_EQ(c.rope_high_freq_factor, 4.0);
  EXPECT_EQ(c.rope_original_max_position_embeddings, 8192);
  EXPECT_EQ(c.eos_token_id, (std::vector<std::int64_t>{128001, 128008, 128009}));
  EXPECT_EQ(c.bos_token_id, 128000);
  EXPECT_EQ(c.torch_dtype, "bfloat16");
}

TEST(ModelConfig, Defaults) {
  const ModelConfig c = parse(kMinimalLlama);
  EXPECT_EQ(c.num_key_value_heads, 4);
  EXPECT_EQ(c.head_dim, 16);
  EXPECT_DOUBLE_EQ(c.rms_norm_eps, 1e-6);
  EXPECT_DOUBLE_EQ(c.rope_theta, 10000.0);
  EXPECT_FALSE(c.tie_word_embeddings);
  EXPECT_FALSE(c.attention_bias);
  EXPECT_FALSE(c.mlp_bias);
  EXPECT_EQ(c.hidden_act, "silu");
  EXPECT_EQ(c.torch_dtype, "float32");
  EXPECT_EQ(c.rope_scaling, RopeScaling::None);
  EXPECT_FALSE(c.use_sliding_window);
  EXPECT_EQ(c.context_length(), 512);
  EXPECT_TRUE(c.eos_token_id.empty());
  EXPECT_FALSE(c.bos_token_id.has_value());

  const ModelConfig q = parse(with(with(kMinimalLlama, "model_type", R"("qwen2")"), "rms_norm_eps", ""));
  EXPECT_DOUBLE_EQ(q.rms_norm_eps, 1e-6);
  EXPECT_TRUE(q.attention_bias);
}

TEST(ModelConfig, NullOptionalsTakeDefaults) {
  std::string text = with(kMinimalLlama, "head_dim", "null");
  text = with(text, "num_key_value_heads", "null");
  text = with(text, "bos_token_id", "null");
  text = with(text, "eos_token_id", "null");
  text = with(text, "rope_scaling", "null");
  const ModelConfig c = parse(text);
  EXPECT_EQ(c.head_dim, 16);
  EXPECT_EQ(c.num_key_value_heads, 4);
  EXPECT_FALSE(c.bos_token_id.has_value());
  EXPECT_TRUE(c.eos_token_id.empty());
}

TEST(ModelConfig, ExplicitHeadDimAndFlags) {
  std::string text = with(kMinimalLlama, "head_dim", "32");
  text = with(text, "attention_bias", "true");
  text = with(text, "tie_word_embeddings", "true");
  text = with(text, "num_key_value_heads", "2");
  const ModelConfig c = parse(text);
  EXPECT_EQ(c.head_dim, 32);
  EXPECT_TRUE(c.attention_bias);
  EXPECT_TRUE(c.tie_word_embeddings);
  EXPECT_EQ(c.num_key_value_heads, 2);
}

TEST(ModelConfig, DtypeKeys) {
  EXPECT_EQ(parse(with(kMinimalLlama, "dtype", R"("bfloat16")")).torch_dtype, "bfloat16");
  EXPECT_EQ(parse(with(kMinimalLlama, "torch_dtype", R"("float16")")).torch_dtype, "float16");
  EXPECT_EQ(parse(with(with(kMinimalLlama, "torch_dtype", R"("float16")"), "dtype", R"("bfloat16")")).torch_dtype,
            "bfloat16");
}

// ---- rotary scaling ----------------------------------------------------------------------------------------

TEST(ModelConfig, RopeScalingDefaultAndLinear) {
  EXPECT_EQ(parse(with(kMinimalLlama, "rope_scaling", R"({"rope_type":"default"})")).rope_scaling, RopeScaling::None);
  EXPECT_EQ(parse(with(kMinimalLlama, "rope_scaling", R"({"type":"default"})")).rope_scaling, RopeScaling::None);
  const ModelConfig c = parse(with(kMinimalLlama, "rope_scaling", R"({"type":"linear","factor":2.0})"));
  EXPECT_EQ(c.rope_scaling, RopeScaling::Linear);
  EXPECT_DOUBLE_EQ(c.rope_factor, 2.0);
  const auto message = parse_error(with(kMinimalLlama, "rope_scaling", R"({"type":"linear"})"));
  EXPECT_CONTAINS(message, "rope_scaling.factor");
}

TEST(ModelConfig, RopeScalingLlama3Accepted) {
  const ModelConfig c = parse(with(kMinimalLlama, "rope_scaling",
                                   R"({"rope_type":"llama3","factor":32.0,"low_freq_factor":1.0,)"
                                   R"("high_freq_factor":4.0,"original_max_position_embeddings":8192})"));
  EXPECT_EQ(c.rope_scaling, RopeScaling::Llama3);
  EXPECT_DOUBLE_EQ(c.rope_factor, 32.0);
  EXPECT_EQ(c.rope_original_max_position_embeddings, 8192);
  const auto message = parse_error(
      with(kMinimalLlama, "rope_scaling", R"({"rope_type":"llama3","factor":8.0,"low_freq_factor":1.0})"));
  EXPECT_CONTAINS(message, "high_freq_factor");
}

TEST(ModelConfig, RopeScalingYarnAndOthersRejected) {
  for (const char* type : {"yarn", "dynamic", "longrope", "su"}) {
    const auto message = parse_error(with(kQwen2Config, "rope_scaling",
                                          std::string(R"({"type":")") + type +
                                              R"(","factor":4.0,"original_max_position_embeddings":32768})"));
    EXPECT_CONTAINS(message, "config.json");
    EXPECT_CONTAINS(message, std::string("\"") + type + "\"");
    EXPECT_CONTAINS(message, "cannot honour");
  }
  EXPECT_CONTAINS(parse_error(with(kMinimalLlama, "rope_scaling", R"({"factor":2.0})")), "rope_scaling");
  EXPECT_CONTAINS(parse_error(with(kMinimalLlama, "rope_scaling", R"("linear")")), "rope_scaling");
}

TEST(ModelConfig, RopeParametersNewFormat) {
  // Newer transformers writes rope_parameters instead of rope_theta / rope_scaling.
  std::string text = without(kLlamaConfig, "rope_theta");
  text = without(text, "rope_scaling");
  text = with(text, "rope_parameters",
              R"({"factor":8.0,"high_freq_factor":4.0,"low_freq_factor":1.0,)"
              R"("original_max_position_embeddings":8192,"rope_theta":500000.0,"rope_type":"llama3"})");
  const ModelConfig c = parse(text);
  EXPECT_DOUBLE_EQ(c.rope_theta, 500000.0);
  EXPECT_EQ(c.rope_scaling, RopeScaling::Llama3);
  EXPECT_DOUBLE_EQ(c.rope_factor, 8.0);

  std::string qwen = without(kQwen2Config, "rope_theta");
  qwen = without(qwen, "rope_scaling");
  qwen = with(qwen, "rope_parameters", R"({"rope_theta":1000000.0,"rope_type":"default"})");
  const ModelConfig q = parse(qwen);
  EXPECT_DOUBLE_EQ(q.rope_theta, 1e6);
  EXPECT_EQ(q.rope_scaling, RopeScaling::None);

  // Both forms present and agreeing is fine; disagreeing is an error.
  EXPECT_DOUBLE_EQ(parse(with(kQwen2Config, "rope_parameters", R"({"rope_theta":1000000.0,"rope_type":"default"})"))
                       .rope_theta,
                   1e6);
  EXPECT_CONTAINS(parse_error(with(kQwen2Config, "rope_parameters", R"({"rope_theta":10000.0,"rope_type":"default"})")),
                  "rope_theta");
  EXPECT_CONTAINS(parse_error(with(kQwen2Config, "rope_parameters", R"({"rope_type":"yarn","factor":4.0})")),
                  "cannot honour");
}

// ---- sliding window ----------------------------------------------------------------------------------------

TEST(ModelConfig, SlidingWindowCapsContext) {
  std::string text = with(kQwen2Config, "use_sliding_window", "true");
  text = with(text, "sliding_window", "4096");
  const ModelConfig c = parse(text);
  EXPECT_TRUE(c.use_sliding_window);
  EXPECT_EQ(c.sliding_window, 4096);
  EXPECT_EQ(c.context_length(), 4096);

  // A window larger than the context changes nothing.
  const ModelConfig wide = parse(with(kQwen2Config, "use_sliding_window", "true"));
  EXPECT_EQ(wide.context_length(), 32768);

  // Qwen2 configs may write "sliding_window": null when the window is off.
  EXPECT_EQ(parse(with(kQwen2Config, "sliding_window", "null")).context_length(), 32768);
  const auto message =
      parse_error(with(with(kQwen2Config, "sliding_window", "null"), "use_sliding_window", "true"));
  EXPECT_CONTAINS(message, "sliding_window");
}

// ---- errors ------------------------------------------------------------------------------------------------

TEST(ModelConfig, MissingRequiredKey) {
  for (const char* key : {"vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                          "num_attention_heads", "max_position_embeddings", "model_type"}) {
    const auto message = parse_error(without(kQwen2Config, key));
    EXPECT_CONTAINS(message, "config.json");
    EXPECT_CONTAINS(message, std::string("\"") + key + "\"");
    EXPECT_CONTAINS(message, "missing");
  }
}

TEST(ModelConfig, WrongTypes) {
  const struct {
    const char* key;
    const char* value;
    const char* expected;
  } cases[] = {
      {"hidden_size", R"("3584")", "integer"},
      {"hidden_size", "3584.5", "integer"},
      {"hidden_size", "null", "integer"},
      {"num_key_value_heads", "true", "integer"},
      {"rms_norm_eps", R"("1e-6")", "number"},
      {"rope_theta", "[1]", "number"},
      {"tie_word_embeddings", "0", "boolean"},
      {"use_sliding_window", R"("no")", "boolean"},
      {"torch_dtype", "16", "string"},
      {"model_type", "2", "string"},
      {"eos_token_id", R"("</s>")", "integer or a list of integers"},
      {"eos_token_id", R"([1, "x"])", "integer or a list of integers"},
      {"bos_token_id", "1.5", "integer"},
  };
  for (const auto& c : cases) {
    const auto message = parse_error(with(kQwen2Config, c.key, c.value));
    EXPECT_CONTAINS(message, "config.json");
    EXPECT_CONTAINS(message, std::string("\"") + c.key + "\"");
    EXPECT_CONTAINS(message, c.expected);
  }
}

TEST(ModelConfig, UnsupportedModelType) {
  const auto message = parse_error(with(kQwen2Config, "model_type", R"("mistral")"));
  EXPECT_EQ(message, R"(config.json: model_type "mistral" is not supported (supported: qwen2, llama))");
}

TEST(ModelConfig, MlpBiasRejected) {
  const auto message = parse_error(with(kLlamaConfig, "mlp_bias", "true"));
  EXPECT_CONTAINS(message, "config.json");
  EXPECT_CONTAINS(message, "mlp_bias");
}

TEST(ModelConfig, HiddenActMustBeSilu) {
  const auto message = parse_error(with(kLlamaConfig, "hidden_act", R"("gelu")"));
  EXPECT_CONTAINS(message, "hidden_act");
  EXPECT_CONTAINS(message, "\"gelu\"");
}

TEST(ModelConfig, ConsistencyChecks) {
  EXPECT_CONTAINS(parse_error(with(kQwen2Config, "num_key_value_heads", "5")), "multiple of num_key_value_heads");
  EXPECT_CONTAINS(parse_error(with(kQwen2Config, "head_dim", "127")), "even");
  EXPECT_CONTAINS(parse_error(with(kQwen2Config, "hidden_size", "0")), "positive");
  EXPECT_CONTAINS(parse_error(with(kQwen2Config, "num_hidden_layers", "-1")), "positive");
  EXPECT_CONTAINS(parse_error(with(kQwen2Config, "rms_norm_eps", "0")), "rms_norm_eps");
  EXPECT_CONTAINS(parse_error(with(with(kQwen2Config, "num_attention_heads", "27"), "num_key_value_heads", "1")),
                  "not a multiple of num_attention_heads");
  EXPECT_CONTAINS(parse_error(with(kQwen2Config, "eos_token_id", "-1")), "eos_token_id");
}

TEST(ModelConfig, UnknownKeysIgnored) {
  const ModelConfig c = parse(with(kLlamaConfig, "some_future_key", R"({"nested":[1,2,3]})"));
  EXPECT_EQ(c.hidden_size, 4096);
}

TEST(ModelConfig, InvalidJson) {
  EXPECT_CONTAINS(parse_error("{\"model_type\": \"llama\","), "config.json");
  EXPECT_CONTAINS(parse_error("[1, 2]"), "object");
}

TEST(ModelConfig, LoadFromDirectory) {
  TempDir dir;
  auto message = input_error([&] { load_model_config(dir.path()); });
  EXPECT_CONTAINS(message, (dir.path() / "config.json").string());
  dir.write("config.json", kLlamaConfig);
  EXPECT_EQ(load_model_config(dir.path()).hidden_size, 4096);
  dir.write("config.json", with(kLlamaConfig, "model_type", R"("gemma")"));
  message = input_error([&] { load_model_config(dir.path()); });
  EXPECT_CONTAINS(message, (dir.path() / "config.json").string());
  EXPECT_CONTAINS(message, "\"gemma\"");
}

// Sizes far beyond any model are refused while parsing, so that no product of them can overflow 64 bits.
TEST(ModelConfig, SizesAreBounded) {
  EXPECT_EQ(parse_error(with(kQwen2Config, "hidden_size", "1099511627776")),
            "config.json: key \"hidden_size\" must be at most 16777216 (far beyond any real model), found "
            "1099511627776");
  EXPECT_CONTAINS(parse_error(with(kQwen2Config, "intermediate_size", "16777217")),
                  "\"intermediate_size\" must be at most");
  EXPECT_CONTAINS(parse_error(with(kQwen2Config, "num_hidden_layers", "65537")),
                  "\"num_hidden_layers\" must be at most");
  EXPECT_CONTAINS(parse_error(with(kQwen2Config, "num_attention_heads", "4294967296")),
                  "\"num_attention_heads\" must be at most 65536");
  EXPECT_CONTAINS(parse_error(with(kQwen2Config, "num_key_value_heads", "131072")),
                  "\"num_key_value_heads\" must be at most");
  EXPECT_CONTAINS(parse_error(with(kQwen2Config, "head_dim", "9223372036854775806")), "\"head_dim\" must be at most");
  EXPECT_EQ(parse_error(with(kQwen2Config, "max_position_embeddings", "4294967296")),
            "config.json: key \"max_position_embeddings\" must be at most 2147483647 (positions are 32-bit), found "
            "4294967296");
  // vocab_size is compared with the weights first (ConfigAgainstWeights.VocabSizeAgainstTheEmbedding).
  EXPECT_EQ(parse(with(kQwen2Config, "vocab_size", "1099511627776")).vocab_size, 1099511627776);
}

// A symlink loop where config.json, generation_config.json or the model directory should be: said as such, not
// "not found" (stat fails with ELOOP and exists() says false).
TEST(ModelConfig, SymlinkLoopIsNamed) {
  TempDir dir;
  fs::create_symlink(dir.path() / "config.json", dir.path() / "config.json");
  EXPECT_EQ(input_error([&] { load_model_config(dir.path()); }),
            (dir.path() / "config.json").string() +
                ": a symlink loop (too many levels of symbolic links) where config.json was expected");
  fs::create_symlink(dir.path() / "generation_config.json", dir.path() / "generation_config.json");
  EXPECT_EQ(input_error([&] { load_generation_defaults(dir.path()); }),
            (dir.path() / "generation_config.json").string() +
                ": a symlink loop (too many levels of symbolic links) where generation_config.json was expected");
  fs::create_symlink(dir.path() / "model", dir.path() / "model");
  EXPECT_EQ(input_error([&] { load_model_config(dir.path() / "model"); }),
            (dir.path() / "model").string() +
                ": a symlink loop (too many levels of symbolic links) where the model directory was expected");
}

// ---- config.json against the weights -----------------------------------------------------------------------

// A copy of the tiny fixture model whose config.json is edited by `edit`.
class ConfigAgainstWeights : public ::testing::Test {
 protected:
  void SetUp() override {
    fs::copy(slearn::testing::fixtures_dir() / "models" / "qwen2-gqa-tied", dir_.path(), fs::copy_options::recursive);
  }
  void edit_config(const std::string& key, const std::string& value) {
    const fs::path path = dir_.path() / "config.json";
    std::ifstream in(path);
    const std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    in.close();
    dir_.write("config.json", with(text, key, value));
  }
  std::string load_error() {
    auto backend = make_cpu_backend();
    return input_error([&] { Model::load(dir_.path(), *backend); });
  }
  TempDir dir_;
};

// vocab_size 2^40 used to allocate the embedding it implies (4 TiB) and fail with "out of memory" (exit 1);
// the disagreement with the embedding's rows is said before anything is allocated.
TEST_F(ConfigAgainstWeights, VocabSizeAgainstTheEmbedding) {
  const std::string dir = dir_.path().string();
  edit_config("vocab_size", "1099511627776");
  EXPECT_EQ(load_error(), dir + "/config.json: vocab_size is 1099511627776, but tensor \"model.embed_tokens.weight\" "
                                "in " + dir + "/model.safetensors has 480 rows (one per token id; shape [480, 64]): "
                                "config.json and the weights disagree");
  edit_config("vocab_size", "479");
  EXPECT_CONTAINS(load_error(), "vocab_size is 479, but tensor \"model.embed_tokens.weight\"");
}

// Every tensor is checked before any is allocated: a size that disagrees with a later tensor is found first.
TEST_F(ConfigAgainstWeights, ConfigSizesAgainstTheWeights) {
  const std::string dir = dir_.path().string();
  edit_config("hidden_size", "16777216");
  EXPECT_EQ(load_error(), dir + "/model.safetensors: tensor \"model.embed_tokens.weight\" has shape [480, 64], "
                                "expected [480, 16777216]");
  edit_config("hidden_size", "64");
  edit_config("intermediate_size", "16777216");
  EXPECT_EQ(load_error(), dir + "/model.safetensors: tensor \"model.layers.0.mlp.gate_proj.weight\" has shape "
                                "[176, 64], expected [16777216, 64]");
  edit_config("intermediate_size", "176");
  edit_config("num_hidden_layers", "65536");
  EXPECT_EQ(load_error(), dir + ": tensor \"model.layers.2.input_layernorm.weight\" is missing from the weights (" +
                              dir + "/model.safetensors)");
  edit_config("num_hidden_layers", "2");
  edit_config("head_dim", "65536");
  EXPECT_EQ(load_error(), dir + "/model.safetensors: tensor \"model.layers.0.self_attn.q_proj.weight\" has shape "
                                "[64, 64], expected [262144, 64]");
  edit_config("head_dim", "16");
  auto backend = make_cpu_backend();
  EXPECT_EQ(Model::load(dir_.path(), *backend).config().vocab_size, 480);
}

// ---- generation_config.json --------------------------------------------------------------------------------

TEST(ModelConfigGeneration, AbsentFileGivesEmptyDefaults) {
  TempDir dir;
  const GenerationDefaults g = load_generation_defaults(dir.path());
  EXPECT_TRUE(g.eos_token_id.empty());
  EXPECT_FALSE(g.bos_token_id || g.pad_token_id || g.temperature || g.top_p || g.top_k || g.do_sample);
}

TEST(ModelConfigGeneration, ReadsAllFields) {
  TempDir dir;
  dir.write("generation_config.json", R"({
    "bos_token_id": 128000, "do_sample": true, "eos_token_id": [128001, 128008, 128009],
    "pad_token_id": 128004, "temperature": 0.6, "top_p": 0.9, "top_k": 20,
    "transformers_version": "4.42.3"})");
  const GenerationDefaults g = load_generation_defaults(dir.path());
  EXPECT_EQ(g.eos_token_id, (std::vector<std::int64_t>{128001, 128008, 128009}));
  EXPECT_EQ(g.bos_token_id, 128000);
  EXPECT_EQ(g.pad_token_id, 128004);
  EXPECT_DOUBLE_EQ(*g.temperature, 0.6);
  EXPECT_DOUBLE_EQ(*g.top_p, 0.9);
  EXPECT_EQ(g.top_k, 20);
  EXPECT_EQ(g.do_sample, true);

  dir.write("generation_config.json", R"({"eos_token_id": 151645, "temperature": 1})");
  const GenerationDefaults single = load_generation_defaults(dir.path());
  EXPECT_EQ(single.eos_token_id, (std::vector<std::int64_t>{151645}));
  EXPECT_DOUBLE_EQ(*single.temperature, 1.0);
  EXPECT_FALSE(single.top_k.has_value());
}

TEST(ModelConfigGeneration, MalformedFileNamed) {
  TempDir dir;
  dir.write("generation_config.json", "{ not json");
  auto message = input_error([&] { load_generation_defaults(dir.path()); });
  EXPECT_CONTAINS(message, "generation_config.json");
  dir.write("generation_config.json", R"({"top_k": "many"})");
  message = input_error([&] { load_generation_defaults(dir.path()); });
  EXPECT_CONTAINS(message, "generation_config.json");
  EXPECT_CONTAINS(message, "\"top_k\"");
}

}  // namespace

// A value nested 100,000 deep where a number belongs: the message would show it with json::dump, which
// recurses once per level (found by reading the code after the fuzzer found the same in safetensors headers).
TEST(ModelConfig, DeeplyNestedValueIsRefusedNotAStackOverflow) {
  TempDir dir;
  const std::string nested = std::string(100000, '[') + std::string(100000, ']');
  std::string text = kLlamaConfig;  // spliced by hand: the with() helper would dump the value itself
  const std::string key = "\"hidden_size\": 4096";
  ASSERT_NE(text.find(key), std::string::npos);
  text.replace(text.find(key), key.size(), "\"hidden_size\": " + nested);
  dir.write("config.json", text);
  const auto message = input_error([&] { load_model_config(dir.path()); });
  EXPECT_CONTAINS(message, "nested deeper than 128 levels");
}
