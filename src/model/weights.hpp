// The tensors of a Qwen2 / LLaMA checkpoint, loaded by their Hugging Face names.
#pragma once

#include <optional>
#include <vector>

#include "slearn/backend.hpp"
#include "slearn/model_config.hpp"
#include "slearn/safetensors.hpp"

namespace slearn {

// q, k and v (and gate and up) are stored stacked, one tensor each, so inference runs one GEMM over the
// concatenated weights; the per-projection tensors are row views into the stacked ones (no copy), for the
// adapter paths and the trainer.
struct LayerWeights {
  Tensor input_norm, post_attention_norm;
  Tensor qkv_proj;                // [q + 2 kv, hidden]: q_proj, k_proj, v_proj stacked
  std::optional<Tensor> qkv_bias; // [q + 2 kv]
  Tensor gate_up_proj;            // [2 intermediate, hidden]: gate_proj, up_proj stacked
  Tensor q_proj, k_proj, v_proj, o_proj;
  std::optional<Tensor> q_bias, k_bias, v_bias, o_bias;
  Tensor gate_proj, up_proj, down_proj;
};

// Sets the view members (q_proj, k_proj, v_proj, their biases, gate_proj, up_proj) from the stacked ones.
void set_stacked_views(LayerWeights& layer, std::int64_t q_size, std::int64_t kv_size, std::int64_t inter);

struct ModelWeights {
  Tensor embed_tokens;
  std::vector<LayerWeights> layers;
  Tensor final_norm;
  Tensor lm_head;  // the embedding itself when tie_word_embeddings
  std::size_t parameter_count = 0;
};

// Reads every tensor the config calls for, checks its shape, and refuses tensors the model does not use.
ModelWeights load_model_weights(const WeightStore& store, const ModelConfig& config, Backend& backend);

}  // namespace slearn
