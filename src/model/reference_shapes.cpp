#include <string>

#include "slearn/error.hpp"
#include "slearn/model_config.hpp"

namespace slearn {

ModelConfig reference_shape(std::string_view name) {
  ModelConfig c;
  c.model_type = "qwen2";
  c.rms_norm_eps = 1e-6;
  c.rope_theta = 1000000.0;
  c.max_position_embeddings = 32768;
  c.attention_bias = true;
  c.torch_dtype = "bfloat16";
  if (name == "qwen2.5-0.5b") {
    c.vocab_size = 151936, c.hidden_size = 896, c.intermediate_size = 4864, c.num_hidden_layers = 24;
    c.num_attention_heads = 14, c.num_key_value_heads = 2, c.head_dim = 64, c.tie_word_embeddings = true;
  } else if (name == "qwen2.5-7b") {
    c.vocab_size = 152064, c.hidden_size = 3584, c.intermediate_size = 18944, c.num_hidden_layers = 28;
    c.num_attention_heads = 28, c.num_key_value_heads = 4, c.head_dim = 128, c.tie_word_embeddings = false;
  } else if (name == "qwen1.5-32b") {  // Qwen1.5-32B(-Chat)'s config.json: grouped-query attention, 8 kv heads
    c.vocab_size = 152064, c.hidden_size = 5120, c.intermediate_size = 27392, c.num_hidden_layers = 64;
    c.num_attention_heads = 40, c.num_key_value_heads = 8, c.head_dim = 128, c.tie_word_embeddings = false;
  } else if (name == "qwen2.5-72b") {
    c.vocab_size = 152064, c.hidden_size = 8192, c.intermediate_size = 29568, c.num_hidden_layers = 80;
    c.num_attention_heads = 64, c.num_key_value_heads = 8, c.head_dim = 128, c.tie_word_embeddings = false;
  } else if (name == "tiny") {
    c.vocab_size = 1024, c.hidden_size = 64, c.intermediate_size = 128, c.num_hidden_layers = 2;
    c.num_attention_heads = 4, c.num_key_value_heads = 2, c.head_dim = 16, c.tie_word_embeddings = true;
  } else {
    throw InputError("unknown shape \"" + std::string(name) + "\" (expected qwen2.5-0.5b, qwen2.5-7b, qwen1.5-32b, qwen2.5-72b or tiny)");
  }
  return c;
}

}  // namespace slearn
