// Writes a randomly initialised Qwen2 checkpoint of a given shape (BF16), for benchmarks that need no
// downloaded weights. The same shapes as transformers' Qwen2ForCausalLM with q/k/v biases.
#pragma once

#include <filesystem>
#include <fstream>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "slearn/safetensors.hpp"

namespace slearn::perf {

struct Qwen2Shape {
  std::int64_t hidden = 896, intermediate = 4864, layers = 24, heads = 14, kv_heads = 2, vocab = 151936;
  bool tied = true;
  double rope_theta = 1000000.0;
};

inline void write_random_qwen2(const std::filesystem::path& dir, const Qwen2Shape& s) {
  std::filesystem::create_directories(dir);
  const std::int64_t head_dim = s.hidden / s.heads;
  nlohmann::json config{{"model_type", "qwen2"}, {"vocab_size", s.vocab}, {"hidden_size", s.hidden},
                        {"intermediate_size", s.intermediate}, {"num_hidden_layers", s.layers},
                        {"num_attention_heads", s.heads}, {"num_key_value_heads", s.kv_heads},
                        {"rms_norm_eps", 1e-6}, {"rope_theta", s.rope_theta}, {"max_position_embeddings", 32768},
                        {"tie_word_embeddings", s.tied}, {"hidden_act", "silu"}, {"torch_dtype", "bfloat16"},
                        {"use_sliding_window", false}};
  std::ofstream(dir / "config.json") << config.dump(2);
  std::vector<std::pair<std::string, std::vector<std::int64_t>>> shapes{{"model.embed_tokens.weight", {s.vocab, s.hidden}},
                                                                        {"model.norm.weight", {s.hidden}}};
  if (!s.tied) shapes.push_back({"lm_head.weight", {s.vocab, s.hidden}});
  for (std::int64_t l = 0; l < s.layers; ++l) {
    const std::string p = "model.layers." + std::to_string(l) + ".";
    shapes.push_back({p + "input_layernorm.weight", {s.hidden}});
    shapes.push_back({p + "post_attention_layernorm.weight", {s.hidden}});
    shapes.push_back({p + "self_attn.q_proj.weight", {s.heads * head_dim, s.hidden}});
    shapes.push_back({p + "self_attn.q_proj.bias", {s.heads * head_dim}});
    shapes.push_back({p + "self_attn.k_proj.weight", {s.kv_heads * head_dim, s.hidden}});
    shapes.push_back({p + "self_attn.k_proj.bias", {s.kv_heads * head_dim}});
    shapes.push_back({p + "self_attn.v_proj.weight", {s.kv_heads * head_dim, s.hidden}});
    shapes.push_back({p + "self_attn.v_proj.bias", {s.kv_heads * head_dim}});
    shapes.push_back({p + "self_attn.o_proj.weight", {s.hidden, s.heads * head_dim}});
    shapes.push_back({p + "mlp.gate_proj.weight", {s.intermediate, s.hidden}});
    shapes.push_back({p + "mlp.up_proj.weight", {s.intermediate, s.hidden}});
    shapes.push_back({p + "mlp.down_proj.weight", {s.hidden, s.intermediate}});
  }
  std::mt19937 rng(0);
  std::uniform_real_distribution<float> dist(-0.035f, 0.035f);
  std::vector<std::vector<float>> storage;
  storage.reserve(shapes.size());
  std::vector<TensorToWrite> tensors;
  for (auto& [name, shape] : shapes) {
    std::int64_t count = 1;
    for (auto e : shape) count *= e;
    std::vector<float> values(static_cast<std::size_t>(count));
    const bool norm = name.find("norm") != std::string::npos;
    for (auto& v : values) v = norm ? 1.0f : dist(rng);
    storage.push_back(std::move(values));
    tensors.push_back({name, shape, DType::BF16, storage.back()});
  }
  write_safetensors(dir / "model.safetensors", tensors);
}

}  // namespace slearn::perf
