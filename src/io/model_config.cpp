// config.json and generation_config.json of a Hugging Face checkpoint.
#include "slearn/model_config.hpp"

#include <algorithm>
#include <cmath>
#include <fstream>
#include <limits>
#include <nlohmann/json.hpp>
#include <sstream>
#include <utility>

#include "io/io_util.hpp"
#include "slearn/error.hpp"
#include "util/symlink_loop.hpp"

namespace slearn {

namespace {

using nlohmann::json;
using io_detail::json_type_name;

// Bounds on config.json's sizes: 2^24 elements per row or column and 2^16 layers, heads or head dimensions are
// hundreds of times what the largest models have, and keep every product of sizes well inside 64 bits.
constexpr std::int64_t kMaxWidth = std::int64_t{1} << 24;
constexpr std::int64_t kMaxCount = std::int64_t{1} << 16;
constexpr const char* kBeyondAnyModel = "far beyond any real model";

// Typed access to the keys of one JSON object; every error names the source and the key. A key whose value
// is null counts as absent (config.json writes null for unset optional values, e.g. "head_dim": null).
class Keys {
 public:
  Keys(const json& object, std::string source, std::string prefix = "")
      : object_(object), source_(std::move(source)), prefix_(std::move(prefix)) {}

  const std::string& source() const { return source_; }

  [[noreturn]] void fail(const std::string& what) const { throw InputError(source_ + ": " + what); }
  [[noreturn]] void fail_key(const std::string& key, const std::string& what) const {
    fail("key \"" + prefix_ + key + "\" " + what);
  }

  bool has(const std::string& key) const { return get(key) != nullptr; }

  const json* get(const std::string& key) const {
    const auto it = object_.find(key);
    return it == object_.end() || it->is_null() ? nullptr : &*it;
  }

  std::optional<std::int64_t> opt_int(const std::string& key) const {
    const json* value = get(key);
    if (value == nullptr) return std::nullopt;
    return to_int(key, *value);
  }

  std::int64_t req_int(const std::string& key) const {
    const auto value = opt_int(key);
    if (!value) missing(key, "an integer");
    return *value;
  }

  std::optional<double> opt_number(const std::string& key) const {
    const json* value = get(key);
    if (value == nullptr) return std::nullopt;
    if (!value->is_number()) wrong_type(key, "a number", *value);
    return value->get<double>();
  }

  double req_number(const std::string& key) const {
    const auto value = opt_number(key);
    if (!value) missing(key, "a number");
    return *value;
  }

  std::optional<bool> opt_bool(const std::string& key) const {
    const json* value = get(key);
    if (value == nullptr) return std::nullopt;
    if (!value->is_boolean()) wrong_type(key, "a boolean", *value);
    return value->get<bool>();
  }

  std::optional<std::string> opt_string(const std::string& key) const {
    const json* value = get(key);
    if (value == nullptr) return std::nullopt;
    if (!value->is_string()) wrong_type(key, "a string", *value);
    return value->get<std::string>();
  }

  // A token id or a list of them (eos_token_id may be either); absent or null -> empty.
  std::vector<std::int64_t> token_ids(const std::string& key) const {
    std::vector<std::int64_t> ids;
    const json* value = get(key);
    if (value == nullptr) return ids;
    if (value->is_array()) {
      for (const auto& element : *value) {
        if (!element.is_number_integer()) wrong_type(key, "an integer or a list of integers", *value);
        ids.push_back(non_negative(key, to_int(key, element)));
      }
    } else if (value->is_number_integer()) {
      ids.push_back(non_negative(key, to_int(key, *value)));
    } else {
      wrong_type(key, "an integer or a list of integers", *value);
    }
    return ids;
  }

  std::optional<std::int64_t> token_id(const std::string& key) const {
    const auto id = opt_int(key);
    if (id) non_negative(key, *id);
    return id;
  }

  std::int64_t positive(const std::string& key, std::int64_t value) const {
    if (value <= 0) fail_key(key, "must be positive, found " + std::to_string(value));
    return value;
  }

  // Positive and at most `max`: `why` says where the bound comes from.
  std::int64_t bounded(const std::string& key, std::int64_t value, std::int64_t max, const char* why) const {
    positive(key, value);
    if (value > max) fail_key(key, "must be at most " + std::to_string(max) + " (" + why + "), found " +
                                       std::to_string(value));
    return value;
  }

  double positive(const std::string& key, double value) const {
    if (!(value > 0.0) || !std::isfinite(value)) {
      fail_key(key, "must be a positive finite number, found " + json(value).dump());
    }
    return value;
  }

 private:
  std::int64_t to_int(const std::string& key, const json& value) const {
    if (!value.is_number_integer()) wrong_type(key, "an integer", value);
    if (value.is_number_unsigned() &&
        value.get<std::uint64_t>() > static_cast<std::uint64_t>(std::numeric_limits<std::int64_t>::max())) {
      fail_key(key, "is out of range: " + value.dump());
    }
    return value.get<std::int64_t>();
  }

  std::int64_t non_negative(const std::string& key, std::int64_t id) const {
    if (id < 0) fail_key(key, "must hold non-negative token ids, found " + std::to_string(id));
    return id;
  }

  [[noreturn]] void missing(const std::string& key, const std::string& type) const {
    const auto it = object_.find(key);
    if (it != object_.end()) wrong_type(key, type, *it);  // present but null
    fail("required key \"" + prefix_ + key + "\" (" + type + ") is missing");
  }

  [[noreturn]] void wrong_type(const std::string& key, const std::string& expected, const json& found) const {
    std::string shown = found.dump();
    if (shown.size() > 60) shown = shown.substr(0, 57) + "...";
    fail_key(key, "must be " + expected + ", found " + json_type_name(found) +
                      (found.is_null() ? std::string() : " (" + shown + ")"));
  }

  const json& object_;
  std::string source_;
  std::string prefix_;
};

std::string read_text(const std::filesystem::path& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw InputError(path.string() + ": cannot open");
  std::ostringstream text;
  text << in.rdbuf();
  if (in.bad()) throw InputError(path.string() + ": cannot read");
  return text.str();
}

json parse_object(const std::string& text, const std::string& source) {
  // Messages show offending values with json::dump, which recurses: a value nested absurdly deep (as a fuzzer
  // or a corrupted file makes) would overflow the stack there, so such files are refused while parsing.
  constexpr int kMaxDepth = 128;
  json root;
  try {
    root = json::parse(text, [&source](int depth, json::parse_event_t, json&) {
      if (depth > kMaxDepth)
        throw InputError(source + ": JSON nested deeper than " + std::to_string(kMaxDepth) + " levels");
      return true;
    });
  } catch (const json::exception& e) {
    throw InputError(source + ": not valid JSON (" + io_detail::json_error_text(e) + ")");
  }
  if (!root.is_object()) throw InputError(source + ": expected a JSON object, found " + json_type_name(root));
  return root;
}

// The rotary scaling of one rope_scaling (or rope_parameters) object.
struct RopeSpec {
  RopeScaling kind = RopeScaling::None;
  double factor = 1.0;
  double low_freq_factor = 1.0;
  double high_freq_factor = 4.0;
  std::int64_t original_max_position_embeddings = 0;

  bool operator==(const RopeSpec&) const = default;
};

// `type_optional`: rope_parameters may omit the type (meaning "default"); rope_scaling must name one.
RopeSpec parse_rope_spec(const json& object, const std::string& source, const std::string& name,
                         bool type_optional) {
  if (!object.is_object()) {
    throw InputError(source + ": key \"" + name + "\" must be an object or null, found " + json_type_name(object));
  }
  const Keys keys(object, source, name + ".");
  // transformers reads "rope_type" first and falls back to the older "type".
  auto type = keys.opt_string("rope_type");
  if (!type) type = keys.opt_string("type");
  if (!type) {
    if (!type_optional) keys.fail("key \"" + name + "\" has neither \"rope_type\" nor \"type\"");
    type = "default";
  }
  RopeSpec spec;
  if (*type == "default") return spec;
  if (*type == "linear") {
    spec.kind = RopeScaling::Linear;
    spec.factor = keys.positive("factor", keys.req_number("factor"));
    return spec;
  }
  if (*type == "llama3") {
    spec.kind = RopeScaling::Llama3;
    spec.factor = keys.positive("factor", keys.req_number("factor"));
    spec.low_freq_factor = keys.positive("low_freq_factor", keys.req_number("low_freq_factor"));
    spec.high_freq_factor = keys.positive("high_freq_factor", keys.req_number("high_freq_factor"));
    spec.original_max_position_embeddings =
        keys.positive("original_max_position_embeddings", keys.req_int("original_max_position_embeddings"));
    if (!(spec.high_freq_factor > spec.low_freq_factor)) {
      keys.fail("key \"" + name + "\": llama3 scaling needs high_freq_factor > low_freq_factor, found " +
                json(spec.high_freq_factor).dump() + " and " + json(spec.low_freq_factor).dump());
    }
    return spec;
  }
  throw InputError(source + ": " + name + " type \"" + *type +
                   "\" is not supported: this code cannot honour it (supported: default, linear, llama3)");
}

// rope_theta and the rotary scaling. Older configs write "rope_theta" and "rope_scaling"; newer transformers
// writes one "rope_parameters" object holding rope_theta, rope_type and the scaling parameters. Both forms
// are read; where a config holds both and they disagree it is an error rather than a guess.
void read_rope(const Keys& keys, ModelConfig& config) {
  std::optional<RopeSpec> from_parameters;
  std::optional<double> theta_from_parameters;
  if (const json* parameters = keys.get("rope_parameters")) {
    if (parameters->is_object()) {
      for (const auto& [key, value] : parameters->items()) {
        if (value.is_object()) {
          keys.fail("key \"rope_parameters\" holds per-layer-type parameters (\"" + key +
                    "\"), which this code cannot honour for " + config.model_type);
        }
      }
      const Keys parameter_keys(*parameters, keys.source(), "rope_parameters.");
      theta_from_parameters = parameter_keys.opt_number("rope_theta");
    }
    from_parameters = parse_rope_spec(*parameters, keys.source(), "rope_parameters", true);
  }
  std::optional<RopeSpec> from_scaling;
  if (const json* scaling = keys.get("rope_scaling")) {
    from_scaling = parse_rope_spec(*scaling, keys.source(), "rope_scaling", false);
  }
  if (from_parameters && from_scaling && !(*from_parameters == *from_scaling)) {
    keys.fail("keys \"rope_scaling\" and \"rope_parameters\" describe different rotary scalings");
  }
  const RopeSpec spec = from_parameters ? *from_parameters : from_scaling.value_or(RopeSpec{});
  config.rope_scaling = spec.kind;
  config.rope_factor = spec.factor;
  config.rope_low_freq_factor = spec.low_freq_factor;
  config.rope_high_freq_factor = spec.high_freq_factor;
  config.rope_original_max_position_embeddings = spec.original_max_position_embeddings;

  const auto theta = keys.opt_number("rope_theta");
  if (theta && theta_from_parameters && *theta != *theta_from_parameters) {
    keys.fail("keys \"rope_theta\" (" + json(*theta).dump() + ") and \"rope_parameters.rope_theta\" (" +
              json(*theta_from_parameters).dump() + ") disagree");
  }
  if (theta_from_parameters) {
    config.rope_theta = keys.positive("rope_parameters.rope_theta", *theta_from_parameters);
  } else if (theta) {
    config.rope_theta = keys.positive("rope_theta", *theta);
  }
}

}  // namespace

std::int64_t ModelConfig::context_length() const {
  // Qwen2's sliding-window attention is honoured by never letting a sequence outgrow the window: with at
  // most `sliding_window` positions, every layer attends to all earlier positions either way, so full
  // attention computes exactly what the sliding window would and the window never has to slide.
  if (use_sliding_window && sliding_window > 0) return std::min(max_position_embeddings, sliding_window);
  return max_position_embeddings;
}

ModelConfig parse_model_config(const std::string& json_text, const std::string& source_name) {
  const json root = parse_object(json_text, source_name);
  const Keys keys(root, source_name);
  ModelConfig config;

  const auto model_type = keys.opt_string("model_type");
  if (!model_type) keys.fail("required key \"model_type\" (a string) is missing");
  if (*model_type != "qwen2" && *model_type != "llama") {
    keys.fail("model_type \"" + *model_type + "\" is not supported (supported: qwen2, llama)");
  }
  config.model_type = *model_type;
  const bool qwen2 = config.model_type == "qwen2";

  // Sizes are bounded far above any real model so that the products of them that shape the tensors (heads x
  // head_dim, rows x columns, in elements and in bytes) cannot overflow 64 bits. vocab_size is compared with the
  // embedding's rows before it is bounded (load_model_weights): a vocab_size the weights do not have is a config
  // at fault, and that is the more useful thing to say.
  config.vocab_size = keys.positive("vocab_size", keys.req_int("vocab_size"));
  config.hidden_size = keys.bounded("hidden_size", keys.req_int("hidden_size"), kMaxWidth, kBeyondAnyModel);
  config.intermediate_size =
      keys.bounded("intermediate_size", keys.req_int("intermediate_size"), kMaxWidth, kBeyondAnyModel);
  config.num_hidden_layers =
      keys.bounded("num_hidden_layers", keys.req_int("num_hidden_layers"), kMaxCount, kBeyondAnyModel);
  config.num_attention_heads =
      keys.bounded("num_attention_heads", keys.req_int("num_attention_heads"), kMaxCount, kBeyondAnyModel);
  config.num_key_value_heads =
      keys.bounded("num_key_value_heads", keys.opt_int("num_key_value_heads").value_or(config.num_attention_heads),
                   kMaxCount, kBeyondAnyModel);
  if (config.num_attention_heads % config.num_key_value_heads != 0) {
    keys.fail("num_attention_heads (" + std::to_string(config.num_attention_heads) +
              ") must be a multiple of num_key_value_heads (" + std::to_string(config.num_key_value_heads) + ")");
  }
  if (const auto head_dim = keys.opt_int("head_dim")) {
    config.head_dim = keys.bounded("head_dim", *head_dim, kMaxCount, kBeyondAnyModel);
  } else {
    if (config.hidden_size % config.num_attention_heads != 0) {
      keys.fail("head_dim is absent and hidden_size (" + std::to_string(config.hidden_size) +
                ") is not a multiple of num_attention_heads (" + std::to_string(config.num_attention_heads) + ")");
    }
    config.head_dim = config.hidden_size / config.num_attention_heads;
  }
  if (config.head_dim % 2 != 0) {
    keys.fail("head_dim (" + std::to_string(config.head_dim) + ") must be even (rotary embeddings rotate pairs)");
  }

  // Both Qwen2Config and LlamaConfig default to 1e-6.
  config.rms_norm_eps = keys.positive("rms_norm_eps", keys.opt_number("rms_norm_eps").value_or(1e-6));
  read_rope(keys, config);
  // Required rather than defaulted: transformers' own defaults differ between the architectures (2048 for
  // llama, 32768 for qwen2) and every real config.json states it, so a missing value is not guessed.
  config.max_position_embeddings =
      keys.bounded("max_position_embeddings", keys.req_int("max_position_embeddings"),
                   std::numeric_limits<std::int32_t>::max(), "positions are 32-bit");
  config.tie_word_embeddings = keys.opt_bool("tie_word_embeddings").value_or(false);

  // Qwen2 always has q/k/v biases (its config has no flag for them); llama has the attention_bias flag.
  config.attention_bias = qwen2 ? true : keys.opt_bool("attention_bias").value_or(false);
  config.mlp_bias = keys.opt_bool("mlp_bias").value_or(false);
  if (config.mlp_bias) keys.fail("mlp_bias true is not supported (MLP projections without bias only)");

  config.hidden_act = keys.opt_string("hidden_act").value_or("silu");
  if (config.hidden_act != "silu") {
    keys.fail("hidden_act \"" + config.hidden_act + "\" is not supported (supported: silu)");
  }
  // Newer transformers writes "dtype", older "torch_dtype"; "dtype" wins when both are there.
  if (auto dtype = keys.opt_string("dtype")) {
    config.torch_dtype = *dtype;
  } else if (auto torch_dtype = keys.opt_string("torch_dtype")) {
    config.torch_dtype = *torch_dtype;
  }

  if (qwen2) {
    config.use_sliding_window = keys.opt_bool("use_sliding_window").value_or(false);
    const auto window = keys.opt_int("sliding_window");
    if (config.use_sliding_window) {
      if (!window) keys.fail("use_sliding_window is true but key \"sliding_window\" is missing or null");
      config.sliding_window = keys.positive("sliding_window", *window);
    } else {
      config.sliding_window = window.value_or(0);
    }
  }

  config.eos_token_id = keys.token_ids("eos_token_id");
  config.bos_token_id = keys.token_id("bos_token_id");
  return config;
}

ModelConfig load_model_config(const std::filesystem::path& model_dir) {
  const auto path = model_dir / "config.json";
  std::error_code ec;
  if (!std::filesystem::exists(path, ec)) {
    refuse_symlink_loop(path, ec, "config.json", model_dir, "the model directory");
    throw InputError(path.string() + ": not found (a Hugging Face model directory holds a config.json)");
  }
  return parse_model_config(read_text(path), path.string());
}

GenerationDefaults load_generation_defaults(const std::filesystem::path& model_dir) {
  const auto path = model_dir / "generation_config.json";
  std::error_code ec;
  if (!std::filesystem::exists(path, ec)) {
    refuse_symlink_loop(path, ec, "generation_config.json", model_dir, "the model directory");  // optional, but not unreachable
    return {};
  }
  const json root = parse_object(read_text(path), path.string());
  const Keys keys(root, path.string());
  GenerationDefaults defaults;
  defaults.eos_token_id = keys.token_ids("eos_token_id");
  defaults.bos_token_id = keys.token_id("bos_token_id");
  defaults.pad_token_id = keys.token_id("pad_token_id");
  defaults.temperature = keys.opt_number("temperature");
  defaults.top_p = keys.opt_number("top_p");
  defaults.top_k = keys.opt_int("top_k");
  defaults.do_sample = keys.opt_bool("do_sample");
  return defaults;
}

}  // namespace slearn
