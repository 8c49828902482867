// LoRA adapters: y = W x + scaling * B (A dropout(x)) on chosen projections, stored in PEFT's layout
// (adapter_config.json + adapter_model.safetensors with keys like
// base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight) so the ecosystem reads what we write.
#pragma once

#include <array>
#include <cstdint>
#include <filesystem>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "slearn/backend.hpp"
#include "slearn/model_config.hpp"
#include "slearn/train_config.hpp"

namespace slearn {

enum class LoraTarget { QProj, KProj, VProj, OProj, GateProj, UpProj, DownProj };
inline constexpr std::size_t kLoraTargetCount = 7;
std::string_view lora_target_name(LoraTarget target);  // "q_proj", ...
LoraTarget lora_target_from_name(std::string_view name);  // InputError for anything else
// The [out_features, in_features] of a projection in this model.
std::pair<std::int64_t, std::int64_t> lora_target_shape(const ModelConfig& config, LoraTarget target);
// "base_model.model.model.layers.<layer>.self_attn.q_proj"
std::string lora_module_path(std::size_t layer, LoraTarget target);

struct LoraPair {
  Tensor a;  // [r, in_features]
  Tensor b;  // [out_features, r]
};

class Model;

class LoraAdapter {
 public:
  // PEFT's default initialisation from a seeded RNG: A Kaiming-uniform (bound 1/sqrt(in_features)), B zero.
  static LoraAdapter initialize(const ModelConfig& config, const LoraSettings& settings, std::uint64_t seed,
                                Backend& backend);
  // Reads a PEFT adapter directory; the shapes must fit `config`. Unsupported PEFT options (DoRA, bias
  // training, per-layer rank patterns, fan_in_fan_out, ...) are InputErrors naming the key.
  static LoraAdapter load(const std::filesystem::path& dir, const ModelConfig& config, Backend& backend);
  // The same for `model`, whole or sharded: an adapter is saved whole (PEFT's layout, whatever the tensor
  // parallelism it was trained at); on a model sharded over a tensor group (Model::load with TensorParallel)
  // the whole adapter is read on the host and this rank's share of it (src/train/adapter_shard.hpp) uploaded.
  static LoraAdapter load_for(const Model& model, const std::filesystem::path& dir, Backend& backend);
  // Writes adapter_config.json and adapter_model.safetensors (fp32) atomically into `dir` from `values`: every
  // parameter's values in parameters() order, end to end (a trainer's fp32 master copy, whatever its backend
  // computes in; the pairs themselves may be a bf16 copy on a device).
  void save(const std::filesystem::path& dir, const std::string& base_model_name, std::span<const float> values) const;
  // Replaces every pair's tensors by `tensors` (parameters() order, same shapes): views of a trainer's
  // flat buffer (src/train/flat_adapter.hpp).
  void bind_parameters(std::vector<Tensor> tensors);

  const LoraSettings& settings() const { return settings_; }
  float scaling() const { return static_cast<float>(settings_.scaling()); }
  std::size_t layers() const { return pairs_.size(); }
  // The adapter on a layer's projection, or nullptr when that projection is not a target.
  const LoraPair* find(std::size_t layer, LoraTarget target) const;
  LoraPair* find(std::size_t layer, LoraTarget target);

  // Every trainable tensor with its PEFT key, in a fixed order (layer, projection, A then B).
  struct Parameter {
    std::string key;
    Tensor* tensor;
    std::size_t layer;
  };
  std::vector<Parameter> parameters();
  std::size_t parameter_count() const;

 private:
  LoraSettings settings_;
  std::vector<std::array<std::optional<LoraPair>, kLoraTargetCount>> pairs_;
};

}  // namespace slearn
