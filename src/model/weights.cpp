#include "model/weights.hpp"

#include <cstdint>
#include <limits>
#include <set>
#include <string>

#include "io/io_util.hpp"
#include "slearn/error.hpp"

namespace slearn {
namespace {

// Two passes over the same list of tensors: the first (checking) only compares every tensor's presence, dtype
// and shape with what config.json implies; the second allocates and reads. So a config.json whose sizes
// disagree with the weights (vocab_size: 1099511627776, say) is an InputError naming both, before a single
// buffer of the sizes it claims is allocated, and not "out of memory" after the first few tensors are loaded.
class Loader {
 public:
  Loader(const WeightStore& store, Backend& backend, bool checking)
      : store_(store), backend_(backend), checking_(checking) {}

  Tensor load(const std::string& name, std::vector<std::int64_t> shape) {
    used_.insert(name);
    if (checking_) {
      store_.check_f32(name, shape);
      return Tensor();
    }
    Tensor host = Tensor::host_f32(shape, name);
    store_.read_f32(name, shape, host.f32());
    parameters_ += static_cast<std::size_t>(host.numel());
    return backend_.upload(std::move(host));
  }

  // Several tensors of one width stacked along their rows into one tensor `stacked_name` (one upload).
  Tensor load_stacked(const std::vector<std::pair<std::string, std::vector<std::int64_t>>>& parts,
                      const std::string& stacked_name) {
    std::int64_t rows = 0;
    for (const auto& [name, shape] : parts) {
      used_.insert(name);
      if (checking_) store_.check_f32(name, shape);
      rows += shape[0];
    }
    if (checking_) return Tensor();
    std::vector<std::int64_t> shape = parts.front().second;
    shape[0] = rows;
    Tensor host = Tensor::host_f32(shape, stacked_name);
    float* at = host.f32();
    for (const auto& [name, part] : parts) {
      std::int64_t count = 1;
      for (auto extent : part) count *= extent;
      store_.read_f32(name, part, at);
      at += count;
    }
    parameters_ += static_cast<std::size_t>(host.numel());
    return backend_.upload(std::move(host));
  }

  std::optional<Tensor> load_if(bool wanted, const std::string& name, std::vector<std::int64_t> shape) {
    if (!wanted) return std::nullopt;
    return load(name, std::move(shape));
  }

  // The token embedding and the output head have one row per token id. Their row count is compared with
  // vocab_size first, and said in its own words: a vocab_size the weights do not have is a config.json at fault
  // (or a checkpoint that is not its model's), not a tensor.
  void check_vocab_rows(const std::string& name, const ModelConfig& config) const {
    if (!checking_ || !store_.contains(name)) return;  // a missing tensor is reported by load()
    const TensorInfo& info = store_.info(name);
    if (info.shape.size() != 2 || info.shape[1] != config.hidden_size || info.shape[0] == config.vocab_size) return;
    throw InputError((store_.model_dir() / "config.json").string() + ": vocab_size is " +
                     std::to_string(config.vocab_size) + ", but tensor \"" + name + "\" in " +
                     store_.file_of(name).string() + " has " + std::to_string(info.shape[0]) +
                     " rows (one per token id; shape " + io_detail::shape_to_string(info.shape) +
                     "): config.json and the weights disagree");
  }

  // Everything in the checkpoint must have been consumed, except buffers that older exports carry.
  void refuse_unused(bool tied) const {
    for (const auto& name : store_.names()) {
      if (used_.count(name)) continue;
      if (name.ends_with("rotary_emb.inv_freq")) continue;
      if (tied && name == "lm_head.weight") continue;  // some exports write the tied head anyway
      throw InputError(store_.file_of(name).string() + ": unexpected tensor \"" + name +
                       "\" (not part of this model's architecture)");
    }
  }

  std::size_t parameters() const { return parameters_; }
  bool checking() const { return checking_; }

 private:
  const WeightStore& store_;
  Backend& backend_;
  bool checking_;
  std::set<std::string> used_;
  std::size_t parameters_ = 0;
};

ModelWeights load_with(Loader& loader, const ModelConfig& config) {
  const std::int64_t hidden = config.hidden_size;
  // parse_model_config bounds the sizes, so these products cannot overflow.
  const std::int64_t q_size = config.num_attention_heads * config.head_dim;
  const std::int64_t kv_size = config.num_key_value_heads * config.head_dim;
  const std::int64_t inter = config.intermediate_size;
  const bool qkv_bias = config.attention_bias;
  // Qwen2 puts biases on q/k/v only; LLaMA's attention_bias covers o_proj as well.
  const bool o_bias = config.model_type == "llama" && config.attention_bias;

  ModelWeights w;
  loader.check_vocab_rows("model.embed_tokens.weight", config);
  if (!config.tie_word_embeddings) loader.check_vocab_rows("lm_head.weight", config);
  w.embed_tokens = loader.load("model.embed_tokens.weight", {config.vocab_size, hidden});
  for (std::int64_t l = 0; l < config.num_hidden_layers; ++l) {
    const std::string p = "model.layers." + std::to_string(l) + ".";
    LayerWeights layer;
    layer.input_norm = loader.load(p + "input_layernorm.weight", {hidden});
    layer.qkv_proj = loader.load_stacked({{p + "self_attn.q_proj.weight", {q_size, hidden}},
                                          {p + "self_attn.k_proj.weight", {kv_size, hidden}},
                                          {p + "self_attn.v_proj.weight", {kv_size, hidden}}},
                                         p + "self_attn.qkv_proj.weight");
    layer.o_proj = loader.load(p + "self_attn.o_proj.weight", {hidden, q_size});
    if (qkv_bias)
      layer.qkv_bias = loader.load_stacked({{p + "self_attn.q_proj.bias", {q_size}},
                                            {p + "self_attn.k_proj.bias", {kv_size}},
                                            {p + "self_attn.v_proj.bias", {kv_size}}},
                                           p + "self_attn.qkv_proj.bias");
    layer.o_bias = loader.load_if(o_bias, p + "self_attn.o_proj.bias", {hidden});
    layer.post_attention_norm = loader.load(p + "post_attention_layernorm.weight", {hidden});
    layer.gate_up_proj = loader.load_stacked({{p + "mlp.gate_proj.weight", {inter, hidden}},
                                              {p + "mlp.up_proj.weight", {inter, hidden}}},
                                             p + "mlp.gate_up_proj.weight");
    layer.down_proj = loader.load(p + "mlp.down_proj.weight", {hidden, inter});
    if (!loader.checking()) set_stacked_views(layer, q_size, kv_size, inter);
    w.layers.push_back(std::move(layer));
  }
  w.final_norm = loader.load("model.norm.weight", {hidden});
  w.lm_head = config.tie_word_embeddings ? w.embed_tokens : loader.load("lm_head.weight", {config.vocab_size, hidden});
  loader.refuse_unused(config.tie_word_embeddings);
  w.parameter_count = loader.parameters();
  return w;
}

}  // namespace

void set_stacked_views(LayerWeights& layer, std::int64_t q_size, std::int64_t kv_size, std::int64_t inter) {
  // The names are the checkpoint's, without the "model." prefix (what the adapter and error messages use).
  const std::string prefix = layer.qkv_proj.name().substr(0, layer.qkv_proj.name().rfind("qkv_proj"));
  layer.q_proj = layer.qkv_proj.slice_rows(0, q_size, prefix + "q_proj.weight");
  layer.k_proj = layer.qkv_proj.slice_rows(q_size, kv_size, prefix + "k_proj.weight");
  layer.v_proj = layer.qkv_proj.slice_rows(q_size + kv_size, kv_size, prefix + "v_proj.weight");
  if (layer.qkv_bias) {
    layer.q_bias = layer.qkv_bias->slice_rows(0, q_size, prefix + "q_proj.bias");
    layer.k_bias = layer.qkv_bias->slice_rows(q_size, kv_size, prefix + "k_proj.bias");
    layer.v_bias = layer.qkv_bias->slice_rows(q_size + kv_size, kv_size, prefix + "v_proj.bias");
  }
  const std::string mlp = layer.gate_up_proj.name().substr(0, layer.gate_up_proj.name().rfind("gate_up_proj"));
  layer.gate_proj = layer.gate_up_proj.slice_rows(0, inter, mlp + "gate_proj.weight");
  layer.up_proj = layer.gate_up_proj.slice_rows(inter, inter, mlp + "up_proj.weight");
}

ModelWeights load_model_weights(const WeightStore& store, const ModelConfig& config, Backend& backend) {
  Loader checker(store, backend, true);
  load_with(checker, config);
  // Token ids are 32-bit. Checked once the embedding is known to have vocab_size rows, so that a vocab_size the
  // weights do not have is reported as that, the likelier fault.
  if (config.vocab_size > std::numeric_limits<TokenId>::max())
    throw InputError((store.model_dir() / "config.json").string() + ": vocab_size " +
                     std::to_string(config.vocab_size) + " is more than 32-bit token ids can number (at most " +
                     std::to_string(std::numeric_limits<TokenId>::max()) + ")");
  Loader loader(store, backend, false);
  return load_with(loader, config);
}

}  // namespace slearn
