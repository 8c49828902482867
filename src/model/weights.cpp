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
    return load_rows(name, shape, Slice{0, shape[0]});
  }

  // Rows `rows` of the tensor. The checking pass checks the whole tensor.
  Tensor load_rows(const std::string& name, std::vector<std::int64_t> shape, Slice rows) {
    return load_stacked({{name, std::move(shape), rows}}, name);
  }

  // Columns `columns` of every row of a 2-D tensor (a row-parallel weight of a tensor-parallel rank).
  Tensor load_columns(const std::string& name, std::vector<std::int64_t> shape, Slice columns) {
    used_.insert(name);
    if (checking_) {
      store_.check_f32(name, shape);
      return Tensor();
    }
    if (columns.first == 0 && columns.count == shape[1]) return load(name, std::move(shape));
    Tensor host = Tensor::host_f32({shape[0], columns.count}, name);
    store_.read_columns_f32(name, shape, columns.first, columns.count, host.f32());
    parameters_ += static_cast<std::size_t>(host.numel());
    return backend_.upload_weight(std::move(host), store_.info(name).dtype);
  }

  struct Part {
    std::string name;
    std::vector<std::int64_t> shape;  // the whole tensor's, as config.json implies it
    Slice rows;                       // the rows read
  };
  // Row slices of several tensors of one width stacked along their rows into one tensor `stacked_name` (one
  // upload).
  Tensor load_stacked(const std::vector<Part>& parts, const std::string& stacked_name) {
    std::int64_t rows = 0;
    for (const auto& part : parts) {
      used_.insert(part.name);
      if (checking_) store_.check_f32(part.name, part.shape);
      rows += part.rows.count;
    }
    if (checking_) return Tensor();
    std::vector<std::int64_t> shape = parts.front().shape;
    shape[0] = rows;
    Tensor host = Tensor::host_f32(shape, stacked_name);
    float* at = host.f32();
    for (const auto& part : parts) {
      std::int64_t row_size = 1;
      for (std::size_t axis = 1; axis < part.shape.size(); ++axis) row_size *= part.shape[axis];
      store_.read_rows_f32(part.name, part.shape, part.rows.first, part.rows.count, at);
      at += part.rows.count * row_size;
    }
    parameters_ += static_cast<std::size_t>(host.numel());
    // Matrices (projections, the embedding, the LM head) may stay in the checkpoint's bf16 on the cpu
    // backend (CpuWeights); norms and biases are uploaded as the activations are.
    if (shape.size() == 2) return backend_.upload_weight(std::move(host), store_.info(parts.front().name).dtype);
    return backend_.upload(std::move(host));
  }

  // A tensor this rank does not hold (checked, counted as used, not read).
  void skip(const std::string& name, const std::vector<std::int64_t>& shape) {
    used_.insert(name);
    if (checking_) store_.check_f32(name, shape);
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

// The whole model: every slice is the whole tensor.
WeightShard whole_model(const ModelConfig& config) {
  WeightShard whole;
  whole.q_rows = {0, config.num_attention_heads * config.head_dim};
  whole.kv_rows = {0, config.num_key_value_heads * config.head_dim};
  whole.intermediate = {0, config.intermediate_size};
  whole.vocab = {0, config.vocab_size};
  return whole;
}

ModelWeights load_with(Loader& loader, const ModelConfig& config, const WeightShard& shard) {
  const std::int64_t hidden = config.hidden_size;
  // parse_model_config bounds the sizes, so these products cannot overflow.
  const std::int64_t q_size = config.num_attention_heads * config.head_dim;
  const std::int64_t kv_size = config.num_key_value_heads * config.head_dim;
  const std::int64_t inter = config.intermediate_size;
  const bool qkv_bias = config.attention_bias;
  // Qwen2 puts biases on q/k/v only; LLaMA's attention_bias covers o_proj as well.
  const bool o_bias = config.model_type == "llama" && config.attention_bias;
  const Slice q = shard.q_rows, kv = shard.kv_rows, mlp = shard.intermediate;

  ModelWeights w;
  loader.check_vocab_rows("model.embed_tokens.weight", config);
  if (!config.tie_word_embeddings) loader.check_vocab_rows("lm_head.weight", config);
  // Replicated on every rank of a tensor group, even when sharded: a vocabulary-parallel lookup would need a
  // masked gather and one more allreduce of [tokens, hidden] per forward to save vocab x hidden per rank, and
  // the replicated table lets the tied LM head be a view of its rows.
  w.embed_tokens = loader.load("model.embed_tokens.weight", {config.vocab_size, hidden});
  for (std::int64_t l = 0; l < config.num_hidden_layers; ++l) {
    const std::string p = "model.layers." + std::to_string(l) + ".";
    LayerWeights layer;
    layer.input_norm = loader.load(p + "input_layernorm.weight", {hidden});
    layer.qkv_proj = loader.load_stacked({{p + "self_attn.q_proj.weight", {q_size, hidden}, q},
                                          {p + "self_attn.k_proj.weight", {kv_size, hidden}, kv},
                                          {p + "self_attn.v_proj.weight", {kv_size, hidden}, kv}},
                                         p + "self_attn.qkv_proj.weight");
    layer.o_proj = loader.load_columns(p + "self_attn.o_proj.weight", {hidden, q_size}, q);
    if (qkv_bias)
      layer.qkv_bias = loader.load_stacked({{p + "self_attn.q_proj.bias", {q_size}, q},
                                            {p + "self_attn.k_proj.bias", {kv_size}, kv},
                                            {p + "self_attn.v_proj.bias", {kv_size}, kv}},
                                           p + "self_attn.qkv_proj.bias");
    if (o_bias && !shard.o_bias) {
      loader.skip(p + "self_attn.o_proj.bias", {hidden});
    } else {
      layer.o_bias = loader.load_if(o_bias, p + "self_attn.o_proj.bias", {hidden});
    }
    layer.post_attention_norm = loader.load(p + "post_attention_layernorm.weight", {hidden});
    layer.gate_up_proj = loader.load_stacked({{p + "mlp.gate_proj.weight", {inter, hidden}, mlp},
                                              {p + "mlp.up_proj.weight", {inter, hidden}, mlp}},
                                             p + "mlp.gate_up_proj.weight");
    layer.down_proj = loader.load_columns(p + "mlp.down_proj.weight", {hidden, inter}, mlp);
    if (!loader.checking()) set_stacked_views(layer, q.count, kv.count, mlp.count);
    w.layers.push_back(std::move(layer));
  }
  w.final_norm = loader.load("model.norm.weight", {hidden});
  const Slice vocab = shard.vocab;
  if (config.tie_word_embeddings) {
    // A view of the replicated embedding's rows: the tied head costs no memory of its own.
    w.lm_head = loader.checking() || vocab.count == config.vocab_size
                    ? w.embed_tokens
                    : w.embed_tokens.slice_rows(vocab.first, vocab.count, w.embed_tokens.name());
  } else {
    w.lm_head = loader.load_rows("lm_head.weight", {config.vocab_size, hidden}, vocab);
  }
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

ModelWeights load_model_weights(const WeightStore& store, const ModelConfig& config, Backend& backend,
                                const WeightShard* shard) {
  const WeightShard slices = shard != nullptr ? *shard : whole_model(config);
  Loader checker(store, backend, true);
  load_with(checker, config, slices);
  // Token ids are 32-bit. Checked once the embedding is known to have vocab_size rows, so that a vocab_size the
  // weights do not have is reported as that, the likelier fault.
  if (config.vocab_size > std::numeric_limits<TokenId>::max())
    throw InputError((store.model_dir() / "config.json").string() + ": vocab_size " +
                     std::to_string(config.vocab_size) + " is more than 32-bit token ids can number (at most " +
                     std::to_string(std::numeric_limits<TokenId>::max()) + ")");
  Loader loader(store, backend, false);
  return load_with(loader, config, slices);
}

}  // namespace slearn
