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

// The slices one rank of a tensor group holds (Megatron style), in rows or columns of the checkpoint's tensors:
// q_proj rows of its query heads, k_proj / v_proj rows of its kv heads (with their biases), o_proj the matching
// input columns; gate_proj / up_proj rows of its part of the intermediate size, down_proj those columns; the
// LM head its vocabulary rows. Norms and the token embedding are replicated. The stacked qkv and gate_up
// tensors stack the local slices, so set_stacked_views holds for them with the local sizes.
struct WeightShard {
  Slice q_rows, kv_rows, intermediate, vocab;
  bool o_bias = true;  // LLaMA's o_proj bias, on one rank only: the partial outputs are summed over the group
};

// Reads every tensor the config calls for, checks its shape, and refuses tensors the model does not use.
// With a shard, every tensor is checked whole first, then only the shard's slices are read.
ModelWeights load_model_weights(const WeightStore& store, const ModelConfig& config, Backend& backend,
                                const WeightShard* shard = nullptr);

}  // namespace slearn
