// The tensors of a Qwen2 / LLaMA checkpoint, loaded by their Hugging Face names.
#pragma once

#include <optional>
#include <vector>

#include "slearn/backend.hpp"
#include "slearn/model_config.hpp"
#include "slearn/safetensors.hpp"

namespace slearn {

struct LayerWeights {
  Tensor input_norm, post_attention_norm;
  Tensor q_proj, k_proj, v_proj, o_proj;
  std::optional<Tensor> q_bias, k_bias, v_bias, o_bias;
  Tensor gate_proj, up_proj, down_proj;
};

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
