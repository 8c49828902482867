// The decoder layer loop, written once against the Backend ops:
//   x = embed(ids)
//   per layer: x += o_proj(attention(rope(q), rope(k), v)) over rms_norm(x);  x += down(silu(gate) * up) over rms_norm(x)
//   logits = lm_head(rms_norm(x)) for the rows asked for.
#include "slearn/model.hpp"

#include <cmath>
#include <string>

#include "model/rope_table.hpp"
#include "model/weights.hpp"
#include "slearn/error.hpp"
#include "slearn/lora.hpp"

namespace slearn {

struct Model::Weights {
  ModelConfig config;
  Backend* backend = nullptr;
  ModelWeights tensors;
  std::vector<float> inverse_frequencies;
  Tensor rope_cos, rope_sin;  // grown to the largest cache made so far
  std::int64_t rope_positions = 0;
  TensorObserver observer;
  const LoraAdapter* adapter = nullptr;
};

// Activation buffers sized for the largest batch seen so far; smaller batches use their leading rows.
struct Model::Workspace {
  std::int64_t capacity = 0;
  Tensor x, normed, q, k, v, attn, proj, gate, up, act;
  Tensor last_rows, logits;
  Tensor lora_tmp;  // [tokens, r] for the adapter path
  std::int64_t logits_capacity = 0;
};

Model::Model() = default;
Model::Model(Model&&) noexcept = default;
Model& Model::operator=(Model&&) noexcept = default;
Model::~Model() = default;

Model Model::load(const std::filesystem::path& dir, Backend& backend) {
  Model model;
  model.weights_ = std::make_unique<Weights>();
  model.workspace_ = std::make_unique<Workspace>();
  Weights& w = *model.weights_;
  w.config = load_model_config(dir);
  w.backend = &backend;
  w.tensors = load_model_weights(WeightStore::open(dir), w.config, backend);
  w.inverse_frequencies = rope_inverse_frequencies(w.config);
  return model;
}

const ModelConfig& Model::config() const { return weights_->config; }
Backend& Model::backend() const { return *weights_->backend; }
std::size_t Model::parameter_count() const { return weights_->tensors.parameter_count; }
void Model::set_observer(TensorObserver observer) { weights_->observer = std::move(observer); }
void Model::set_adapter(const LoraAdapter* adapter) {
  if (adapter != nullptr && adapter->layers() != weights_->tensors.layers.size())
    throw InputError("the adapter has " + std::to_string(adapter->layers()) + " layers; the model has " +
                     std::to_string(weights_->tensors.layers.size()));
  weights_->adapter = adapter;
}
const LoraAdapter* Model::adapter() const { return weights_->adapter; }
const ModelWeights& Model::weights() const { return weights_->tensors; }

std::pair<const Tensor*, const Tensor*> Model::rope_tables(std::int64_t positions) {
  if (positions > weights_->rope_positions) {
    const std::int64_t half = weights_->config.head_dim / 2;
    RopeTables tables = make_rope_tables(weights_->inverse_frequencies, positions);
    Tensor cos = Tensor::host_f32({positions, half}, "rope.cos");
    Tensor sin = Tensor::host_f32({positions, half}, "rope.sin");
    std::copy(tables.cos.begin(), tables.cos.end(), cos.f32());
    std::copy(tables.sin.begin(), tables.sin.end(), sin.f32());
    weights_->rope_cos = weights_->backend->upload(std::move(cos));
    weights_->rope_sin = weights_->backend->upload(std::move(sin));
    weights_->rope_positions = positions;
  }
  return {&weights_->rope_cos, &weights_->rope_sin};
}

std::size_t KVCache::bytes() const {
  std::size_t total = 0;
  for (const auto& t : keys_) total += t.bytes();
  for (const auto& t : values_) total += t.bytes();
  return total;
}

KVCache Model::make_cache(std::int32_t slots, std::int32_t capacity) {
  const ModelConfig& c = weights_->config;
  if (slots <= 0 || capacity <= 0) throw Error("KV cache needs at least one slot and one position");
  if (capacity > c.context_length())
    throw InputError("KV cache of " + std::to_string(capacity) + " positions exceeds the model's context of " +
                     std::to_string(c.context_length()));
  Backend& backend = *weights_->backend;
  KVCache cache;
  cache.slots_ = slots;
  cache.capacity_ = capacity;
  for (std::int64_t l = 0; l < c.num_hidden_layers; ++l) {
    const std::string layer = "layers." + std::to_string(l);
    cache.keys_.push_back(backend.zeros({slots, capacity, c.num_key_value_heads, c.head_dim}, layer + ".k_cache"));
    cache.values_.push_back(backend.zeros({slots, capacity, c.num_key_value_heads, c.head_dim}, layer + ".v_cache"));
  }
  rope_tables(capacity);
  return cache;
}

std::vector<float> Model::forward(std::span<const TokenId> tokens, std::span<const SequenceChunk> chunks,
                                  KVCache& cache, Logits which) {
  const ModelConfig& c = weights_->config;
  const ModelWeights& w = weights_->tensors;
  Backend& b = *weights_->backend;
  Workspace& ws = *workspace_;
  const auto n = static_cast<std::int64_t>(tokens.size());

  TokenLayout layout;
  layout.slots.reserve(tokens.size());
  layout.positions.reserve(tokens.size());
  std::vector<std::int64_t> last_rows;
  for (const auto& chunk : chunks) {
    if (chunk.length <= 0) throw Error("forward: empty chunk for slot " + std::to_string(chunk.slot));
    if (chunk.slot < 0 || chunk.slot >= cache.slots() || chunk.start < 0 ||
        chunk.start + chunk.length > cache.capacity())
      throw Error("forward: chunk at slot " + std::to_string(chunk.slot) + " positions [" +
                  std::to_string(chunk.start) + ", " + std::to_string(chunk.start + chunk.length) +
                  ") does not fit the KV cache of " + std::to_string(cache.slots()) + " x " +
                  std::to_string(cache.capacity()));
    for (std::int32_t i = 0; i < chunk.length; ++i) {
      layout.slots.push_back(chunk.slot);
      layout.positions.push_back(chunk.start + i);
    }
    last_rows.push_back(static_cast<std::int64_t>(layout.slots.size()) - 1);
  }
  if (static_cast<std::int64_t>(layout.tokens()) != n)
    throw Error("forward: chunks cover " + std::to_string(layout.tokens()) + " tokens but " + std::to_string(n) +
                " were given");
  if (n == 0) return {};

  const std::int64_t hidden = c.hidden_size, heads = c.num_attention_heads, kv_heads = c.num_key_value_heads;
  const std::int64_t head_dim = c.head_dim, inter = c.intermediate_size;
  if (n > ws.capacity) {
    ws.x = b.zeros({n, hidden}, "x");
    ws.normed = b.zeros({n, hidden}, "normed");
    ws.q = b.zeros({n, heads, head_dim}, "q");
    ws.k = b.zeros({n, kv_heads, head_dim}, "k");
    ws.v = b.zeros({n, kv_heads, head_dim}, "v");
    ws.attn = b.zeros({n, heads, head_dim}, "attn");
    ws.proj = b.zeros({n, hidden}, "proj");
    ws.gate = b.zeros({n, inter}, "gate");
    ws.up = b.zeros({n, inter}, "up");
    ws.act = b.zeros({n, inter}, "act");
    ws.capacity = n;
  }
  Tensor x = ws.x.rows(n), normed = ws.normed.rows(n), q = ws.q.rows(n), k = ws.k.rows(n), v = ws.v.rows(n);
  Tensor attn = ws.attn.rows(n), proj = ws.proj.rows(n), gate = ws.gate.rows(n), up = ws.up.rows(n);
  Tensor act = ws.act.rows(n);
  auto observe = [&](const Tensor& t, const std::string& name) {
    if (weights_->observer) weights_->observer(Tensor(nullptr, const_cast<void*>(t.data()), t.dtype(), t.device(), t.shape(), name));
  };
  const float eps = static_cast<float>(c.rms_norm_eps);
  const float scale = 1.0f / std::sqrt(static_cast<float>(head_dim));
  auto bias = [](const std::optional<Tensor>& t) { return t ? &*t : nullptr; };
  const LoraAdapter* adapter = weights_->adapter;
  if (adapter != nullptr && ws.lora_tmp.numel() < n * adapter->settings().r)
    ws.lora_tmp = b.zeros({n, adapter->settings().r}, "lora_tmp");
  // y = x W^T + bias, plus the adapter's scaling * (x A^T) B^T when the projection has one.
  auto project = [&](std::size_t layer, LoraTarget target, const Tensor& in, const Tensor& weight,
                     const Tensor* b_bias, Tensor& out) {
    b.linear(in, weight, b_bias, out);
    const LoraPair* pair = adapter ? adapter->find(layer, target) : nullptr;
    if (pair == nullptr) return;
    Tensor tmp = ws.lora_tmp.reshaped({ws.lora_tmp.numel()}).rows(n * adapter->settings().r).reshaped({n, adapter->settings().r});
    b.matmul(in, false, pair->a, true, 1.0f, 0.0f, tmp);
    b.matmul(tmp, false, pair->b, true, adapter->scaling(), 1.0f, out);
  };

  b.embedding(w.embed_tokens, tokens, x);
  observe(x, "embed");
  for (std::size_t l = 0; l < w.layers.size(); ++l) {
    const LayerWeights& lw = w.layers[l];
    const std::string name = "layers." + std::to_string(l);
    b.rms_norm(x, lw.input_norm, eps, normed);
    project(l, LoraTarget::QProj, normed, lw.q_proj, bias(lw.q_bias), q);
    project(l, LoraTarget::KProj, normed, lw.k_proj, bias(lw.k_bias), k);
    project(l, LoraTarget::VProj, normed, lw.v_proj, bias(lw.v_bias), v);
    b.rope(q, layout, weights_->rope_cos, weights_->rope_sin);
    b.rope(k, layout, weights_->rope_cos, weights_->rope_sin);
    observe(q, name + ".q_rope");
    observe(k, name + ".k_rope");
    b.kv_store(k, v, layout, cache.keys(l), cache.values(l));
    b.attention(q, cache.keys(l), cache.values(l), layout, scale, attn);
    observe(attn, name + ".attn");
    project(l, LoraTarget::OProj, attn.reshaped({n, heads * head_dim}), lw.o_proj, bias(lw.o_bias), proj);
    b.add_inplace(x, proj);
    observe(x, name + ".attn_residual");
    b.rms_norm(x, lw.post_attention_norm, eps, normed);
    project(l, LoraTarget::GateProj, normed, lw.gate_proj, nullptr, gate);
    project(l, LoraTarget::UpProj, normed, lw.up_proj, nullptr, up);
    b.swiglu(gate, up, act);
    project(l, LoraTarget::DownProj, act, lw.down_proj, nullptr, proj);
    b.add_inplace(x, proj);
    observe(x, name + ".out");
  }
  b.rms_norm(x, w.final_norm, eps, normed);
  observe(normed, "norm");

  const bool all = which == Logits::AllTokens;
  const std::int64_t rows = all ? n : static_cast<std::int64_t>(last_rows.size());
  if (rows > ws.logits_capacity) {
    ws.last_rows = b.zeros({rows, hidden}, "last_rows");
    ws.logits = b.zeros({rows, c.vocab_size}, "logits");
    ws.logits_capacity = rows;
  }
  Tensor logits = ws.logits.rows(rows);
  if (all) {
    b.linear(normed, w.lm_head, nullptr, logits);
  } else {
    Tensor selected = ws.last_rows.rows(rows);
    b.gather_rows(normed, last_rows, selected);
    b.linear(selected, w.lm_head, nullptr, logits);
  }
  observe(logits, "logits");
  std::vector<float> out(static_cast<std::size_t>(logits.numel()));
  b.to_host(logits, out);
  return out;
}

}  // namespace slearn
