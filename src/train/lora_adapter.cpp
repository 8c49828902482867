#include <cmath>
#include <fstream>
#include <random>

#include <nlohmann/json.hpp>

#include "slearn/error.hpp"
#include "util/symlink_loop.hpp"
#include "slearn/lora.hpp"
#include "slearn/safetensors.hpp"
#include "util/atomic_file.hpp"

namespace slearn {
namespace {

constexpr std::array<std::string_view, kLoraTargetCount> kNames{"q_proj", "k_proj", "v_proj", "o_proj",
                                                                 "gate_proj", "up_proj", "down_proj"};

std::vector<LoraTarget> targets_of(const LoraSettings& settings) {
  std::vector<LoraTarget> targets;
  for (const auto& name : settings.target_modules) targets.push_back(lora_target_from_name(name));
  return targets;
}

}  // namespace

std::string_view lora_target_name(LoraTarget target) { return kNames[static_cast<std::size_t>(target)]; }

LoraTarget lora_target_from_name(std::string_view name) {
  for (std::size_t i = 0; i < kNames.size(); ++i)
    if (kNames[i] == name) return static_cast<LoraTarget>(i);
  throw InputError("unknown LoRA target module \"" + std::string(name) +
                   "\" (expected q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj or down_proj)");
}

std::pair<std::int64_t, std::int64_t> lora_target_shape(const ModelConfig& c, LoraTarget target) {
  const std::int64_t q = c.num_attention_heads * c.head_dim, kv = c.num_key_value_heads * c.head_dim;
  switch (target) {
    case LoraTarget::QProj: return {q, c.hidden_size};
    case LoraTarget::KProj: return {kv, c.hidden_size};
    case LoraTarget::VProj: return {kv, c.hidden_size};
    case LoraTarget::OProj: return {c.hidden_size, q};
    case LoraTarget::GateProj: return {c.intermediate_size, c.hidden_size};
    case LoraTarget::UpProj: return {c.intermediate_size, c.hidden_size};
    case LoraTarget::DownProj: return {c.hidden_size, c.intermediate_size};
  }
  throw Error("unreachable LoRA target");
}

std::string lora_module_path(std::size_t layer, LoraTarget target) {
  const bool attention = target <= LoraTarget::OProj;
  return "base_model.model.model.layers." + std::to_string(layer) + (attention ? ".self_attn." : ".mlp.") +
         std::string(lora_target_name(target));
}

LoraAdapter LoraAdapter::initialize(const ModelConfig& config, const LoraSettings& settings, std::uint64_t seed,
                                    Backend& backend) {
  LoraAdapter adapter;
  adapter.settings_ = settings;
  adapter.pairs_.resize(static_cast<std::size_t>(config.num_hidden_layers));
  std::mt19937_64 rng(seed);
  const auto targets = targets_of(settings);
  for (std::size_t l = 0; l < adapter.pairs_.size(); ++l) {
    for (LoraTarget target : targets) {
      const auto [out, in] = lora_target_shape(config, target);
      const std::string path = lora_module_path(l, target);
      Tensor a = Tensor::host_f32({settings.r, in}, path + ".lora_A.weight");
      // kaiming_uniform_(a=sqrt(5)) on an [r, in] weight: bound = sqrt(6 / ((1 + 5) * in)) = 1 / sqrt(in).
      const double bound = 1.0 / std::sqrt(static_cast<double>(in));
      float* values = a.f32();
      for (std::int64_t i = 0; i < a.numel(); ++i) {
        const double u = static_cast<double>(rng() >> 11) * 0x1.0p-53;
        values[i] = static_cast<float>((2.0 * u - 1.0) * bound);
      }
      Tensor b = Tensor::host_f32({out, settings.r}, path + ".lora_B.weight");
      adapter.pairs_[l][static_cast<std::size_t>(target)] = LoraPair{backend.upload(std::move(a)), backend.upload(std::move(b))};
    }
  }
  return adapter;
}

const LoraPair* LoraAdapter::find(std::size_t layer, LoraTarget target) const {
  if (layer >= pairs_.size()) return nullptr;
  const auto& slot = pairs_[layer][static_cast<std::size_t>(target)];
  return slot ? &*slot : nullptr;
}

LoraPair* LoraAdapter::find(std::size_t layer, LoraTarget target) {
  return const_cast<LoraPair*>(static_cast<const LoraAdapter*>(this)->find(layer, target));
}

std::vector<LoraAdapter::Parameter> LoraAdapter::parameters() {
  std::vector<Parameter> out;
  for (std::size_t l = 0; l < pairs_.size(); ++l)
    for (std::size_t t = 0; t < kLoraTargetCount; ++t)
      if (auto& pair = pairs_[l][t]) {
        const std::string path = lora_module_path(l, static_cast<LoraTarget>(t));
        out.push_back({path + ".lora_A.weight", &pair->a, l});
        out.push_back({path + ".lora_B.weight", &pair->b, l});
      }
  return out;
}

std::size_t LoraAdapter::parameter_count() const {
  std::size_t count = 0;
  for (const auto& layer : pairs_)
    for (const auto& pair : layer)
      if (pair) count += static_cast<std::size_t>(pair->a.numel() + pair->b.numel());
  return count;
}

LoraAdapter LoraAdapter::load(const std::filesystem::path& dir, const ModelConfig& config, Backend& backend) {
  const auto config_path = dir / "adapter_config.json";
  std::ifstream in(config_path);
  if (!in) throw InputError(config_path.string() + ": cannot open the adapter configuration");
  nlohmann::json json;
  try {
    json = nlohmann::json::parse(in);
  } catch (const nlohmann::json::exception& e) {
    throw InputError(config_path.string() + ": not valid JSON (" + e.what() + ")");
  }
  auto fail = [&](const std::string& what) { throw InputError(config_path.string() + ": " + what); };
  auto get = [&](const char* key) -> const nlohmann::json* {
    auto it = json.find(key);
    return it == json.end() || it->is_null() ? nullptr : &*it;
  };
  if (auto* type = get("peft_type"); type && *type != "LORA") fail("peft_type must be \"LORA\"");
  LoraSettings settings;
  auto* r = get("r");
  if (!r || !r->is_number_integer() || r->get<std::int64_t>() < 1) fail("\"r\" must be a positive integer");
  settings.r = r->get<std::int64_t>();
  auto* alpha = get("lora_alpha");
  if (!alpha || !alpha->is_number()) fail("\"lora_alpha\" must be a number");
  settings.alpha = alpha->get<double>();
  if (auto* d = get("lora_dropout"); d && d->is_number()) settings.dropout = d->get<double>();
  if (auto* rs = get("use_rslora"); rs && rs->is_boolean()) settings.use_rslora = rs->get<bool>();
  auto* targets = get("target_modules");
  settings.target_modules.clear();
  if (targets && targets->is_string()) {
    settings.target_modules.push_back(targets->get<std::string>());
  } else if (targets && targets->is_array()) {
    for (const auto& t : *targets) settings.target_modules.push_back(t.get<std::string>());
  } else {
    fail("\"target_modules\" must be a list of module names");
  }
  std::sort(settings.target_modules.begin(), settings.target_modules.end(), [](const auto& x, const auto& y) {
    return lora_target_from_name(x) < lora_target_from_name(y);
  });
  if (auto* bias = get("bias"); bias && *bias != "none") fail("\"bias\" must be \"none\" (bias training is not supported)");
  for (const char* key : {"use_dora", "fan_in_fan_out", "lora_bias"})
    if (auto* v = get(key); v && v->is_boolean() && v->get<bool>()) fail(std::string("\"") + key + "\" is not supported");
  for (const char* key : {"rank_pattern", "alpha_pattern"})
    if (auto* v = get(key); v && !v->empty()) fail(std::string("\"") + key + "\" (per-layer ranks) is not supported");
  for (const char* key : {"layers_to_transform", "modules_to_save"})
    if (auto* v = get(key); v && !v->empty()) fail(std::string("\"") + key + "\" is not supported");

  const auto weights_path = dir / "adapter_model.safetensors";
  std::error_code ec;
  const bool present = std::filesystem::exists(weights_path, ec);
  refuse_symlink_loop(weights_path, ec, "the adapter's weights");
  if (!present)
    throw InputError(weights_path.string() + ": missing (adapter_model.bin is not read: convert it to safetensors)");
  auto file = SafetensorsFile::open(weights_path);
  LoraAdapter adapter;
  adapter.settings_ = settings;
  adapter.pairs_.resize(static_cast<std::size_t>(config.num_hidden_layers));
  std::size_t used = 0;
  for (std::size_t l = 0; l < adapter.pairs_.size(); ++l) {
    for (LoraTarget target : targets_of(settings)) {
      const auto [out, in_features] = lora_target_shape(config, target);
      const std::string path = lora_module_path(l, target);
      auto read = [&](const std::string& key, std::vector<std::int64_t> shape) {
        const TensorInfo* info = file->find(key);
        if (info == nullptr) throw InputError(weights_path.string() + ": missing tensor \"" + key + "\"");
        if (info->shape != shape)
          throw InputError(weights_path.string() + ": tensor \"" + key + "\" has the wrong shape for this model");
        Tensor t = Tensor::host_f32(shape, key);
        convert_to_f32(info->dtype, file->bytes(*info).data(), static_cast<std::size_t>(t.numel()), t.f32());
        ++used;
        return backend.upload(std::move(t));
      };
      Tensor a = read(path + ".lora_A.weight", {settings.r, in_features});
      Tensor b = read(path + ".lora_B.weight", {out, settings.r});
      adapter.pairs_[l][static_cast<std::size_t>(target)] = LoraPair{std::move(a), std::move(b)};
    }
  }
  if (used != file->tensors().size()) {
    for (const auto& info : file->tensors()) {
      bool known = false;
      for (auto& p : adapter.parameters()) known |= p.key == info.name;
      if (!known) throw InputError(weights_path.string() + ": unexpected tensor \"" + info.name + "\"");
    }
  }
  return adapter;
}

void LoraAdapter::bind_parameters(std::vector<Tensor> tensors) {
  auto parameters = this->parameters();
  if (tensors.size() != parameters.size())
    throw Error("adapter: " + std::to_string(tensors.size()) + " tensors given for " +
                std::to_string(parameters.size()) + " parameters");
  for (std::size_t i = 0; i < parameters.size(); ++i) {
    if (tensors[i].shape() != parameters[i].tensor->shape())
      throw Error("adapter: tensor " + tensors[i].name() + " " + tensors[i].shape_string() + " cannot stand for " +
                  parameters[i].key + " " + parameters[i].tensor->shape_string());
    *parameters[i].tensor = std::move(tensors[i]);
  }
}

void LoraAdapter::save(const std::filesystem::path& dir, const std::string& base_model_name,
                       std::span<const float> values) const {
  nlohmann::json config{{"peft_type", "LORA"},
                        {"task_type", "CAUSAL_LM"},
                        {"base_model_name_or_path", base_model_name},
                        {"r", settings_.r},
                        {"lora_alpha", settings_.alpha},
                        {"lora_dropout", settings_.dropout},
                        {"use_rslora", settings_.use_rslora},
                        {"target_modules", settings_.target_modules},
                        {"bias", "none"},
                        {"fan_in_fan_out", false},
                        {"inference_mode", true},
                        {"init_lora_weights", true},
                        {"use_dora", false},
                        {"modules_to_save", nullptr},
                        {"layers_to_transform", nullptr},
                        {"rank_pattern", nlohmann::json::object()},
                        {"alpha_pattern", nlohmann::json::object()},
                        {"revision", nullptr}};
  std::vector<TensorToWrite> tensors;
  auto* self = const_cast<LoraAdapter*>(this);
  std::size_t at = 0;
  for (const auto& p : self->parameters()) {
    const auto count = static_cast<std::size_t>(p.tensor->numel());
    if (at + count > values.size()) throw Error("adapter save: fewer values than parameters");
    tensors.push_back({p.key, p.tensor->shape(), DType::F32, values.subspan(at, count)});
    at += count;
  }
  if (at != values.size()) throw Error("adapter save: more values than parameters");
  // The two files belong together: the directory is replaced as a whole, so a kill never leaves new weights
  // beside an old configuration, or a directory that looks like an adapter but lacks a file.
  replace_directory_atomically(dir, [&](const std::filesystem::path& tmp) {
    write_safetensors(tmp / "adapter_model.safetensors", tensors, {{"format", "pt"}});
    write_file_atomically(tmp / "adapter_config.json", config.dump(2) + "\n");
  });
}

}  // namespace slearn
