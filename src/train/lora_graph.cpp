// The training forward mirrors Model::forward op for op (so its logits equal inference's), over packed
// sequences. Each adapted projection keeps t = dropout(x) A^T ([tokens, r], small) for its backward; the
// dropout mask is counter-based and recomputed, never stored.
//
// Backward of one adapted projection y = x W^T + s (d(x) A^T) B^T, given dy:
//   dx += dy W                      (the frozen base)
//   dB += s dy^T t,   u = dy B,   dA += s u^T d(x),   dx += d'(s u A)    (d' = the same dropout mask)
//
// On a tensor-parallel model (Model::tensor_parallel) each rank runs this on its shard with the same batch:
// the layer sizes are the local ones, the row-parallel outputs (o_proj, down_proj) are partial sums added up
// over the group before the residual (as in Model::forward), the input gradients of the column-parallel
// projections (q/k/v, gate/up) are partial sums added up over the group before the norm's backward, and the
// LM head is vocabulary-parallel (vocab_parallel_cross_entropy, whose input gradient is a partial sum too):
// four allreduces of [tokens, hidden] per layer and one after the head. The adapter is the rank's share
// (train/adapter_shard.hpp); the formulas above, run on the local tensors, give each split part its exact
// gradient and each replicated part a partial one, which the trainer sums over the group. Dropout on a
// row-parallel input (a column slice) draws the whole input's mask at its columns.
#include "train/lora_graph.hpp"

#include <cmath>
#include <string>

#include "dist/vocab_parallel.hpp"
#include "model/weights.hpp"
#include "slearn/error.hpp"
#include "train/adapter_shard.hpp"

namespace slearn {

void PackedBatch::add(std::span<const TokenId> sequence_tokens, std::span<const TokenId> sequence_targets) {
  if (sequence_tokens.size() != sequence_targets.size() || sequence_tokens.empty())
    throw Error("packed batch: a sequence needs as many targets as tokens, and at least one");
  tokens.insert(tokens.end(), sequence_tokens.begin(), sequence_tokens.end());
  targets.insert(targets.end(), sequence_targets.begin(), sequence_targets.end());
  for (std::size_t i = 0; i < sequence_tokens.size(); ++i) positions.push_back(static_cast<std::int32_t>(i));
  seq_starts.push_back(static_cast<std::int64_t>(tokens.size()));
}

struct LoraTrainingGraph::LayerActivations {
  Tensor normed1, q, k, v, attn, lse, x_mid, normed2, gate, up, act;
  std::array<Tensor, kLoraTargetCount> lora_t;
  std::size_t bytes() const {
    std::size_t total = 0;
    for (const Tensor* t : {&normed1, &q, &k, &v, &attn, &lse, &x_mid, &normed2, &gate, &up, &act}) total += t->bytes();
    for (const auto& t : lora_t) total += t.bytes();
    return total;
  }
};

namespace {

std::uint64_t projection_key(std::uint64_t key, std::size_t layer, LoraTarget target) {
  std::uint64_t z = key ^ (0x9e3779b97f4a7c15ull * (layer * kLoraTargetCount + static_cast<std::size_t>(target) + 1));
  z = (z ^ (z >> 33)) * 0xff51afd7ed558ccdull;
  return z ^ (z >> 33);
}

const Tensor* bias_of(const std::optional<Tensor>& t) { return t ? &*t : nullptr; }

// The dropout mask of a projection's input: on a row-parallel projection of a sharded model the input is
// this rank's column slice of the whole input, and takes the whole input's draws at its columns.
Backend::DropoutMask input_mask(const Model& model, LoraTarget target, std::uint64_t key) {
  const TensorParallel& tp = model.tensor_parallel();
  if (tp.size == 1 || !AdapterSharding::row_parallel(target)) return key;
  const ModelConfig& whole = model.config();
  const ModelConfig& local = model.local_config();
  const bool o = target == LoraTarget::OProj;
  const std::int64_t columns = o ? whole.num_attention_heads * whole.head_dim : whole.intermediate_size;
  const std::int64_t width = o ? local.num_attention_heads * local.head_dim : local.intermediate_size;
  return Backend::DropoutMask(key, columns, width * tp.rank);  // the splits are even (check_tensor_parallel)
}

// The vocabulary-parallel cross-entropy of `normed` against the rank's LM-head rows, in row chunks so no rank
// holds more than a chunk of its slice's logits; `d_normed` receives this rank's partial input gradient.
BatchLoss sharded_cross_entropy(Model& model, const Tensor& normed, std::span<const std::int32_t> targets,
                                float grad_scale, Tensor* d_normed) {
  constexpr std::int64_t kChunkRows = 256;
  Backend& b = model.backend();
  const Tensor& head = model.weights().lm_head;
  const VocabShard shard{model.local_vocab_first(), model.local_vocab_size(), model.config().vocab_size};
  const std::int64_t n = normed.dim(0);
  BatchLoss total;
  std::vector<float> logits_host, grad_host;
  // The host reads the logits below: first a bounded wait for the forward's sums (a peer may be gone).
  model.wait_for_tensor_group("the forward's sums over the tensor group");
  for (std::int64_t first = 0; first < n; first += kChunkRows) {
    const std::int64_t rows = std::min(kChunkRows, n - first);
    const Tensor h = normed.slice_rows(first, rows, "norm.chunk");
    Tensor logits = b.zeros_f32({rows, shard.count}, "logits.chunk");
    b.matmul(h, false, head, true, 1.0f, 0.0f, logits);
    logits_host.resize(static_cast<std::size_t>(rows * shard.count));
    b.to_host(logits, logits_host);
    grad_host.assign(d_normed ? logits_host.size() : 0, 0.0f);
    const BatchLossParallel ce = vocab_parallel_cross_entropy(
        logits_host, shard, targets.subspan(static_cast<std::size_t>(first), static_cast<std::size_t>(rows)),
        grad_scale, grad_host, *model.tensor_parallel().group);
    total.loss_sum += ce.loss_sum;
    total.counted += ce.counted;
    if (d_normed == nullptr) continue;
    Tensor grad = b.zeros({rows, shard.count}, "d_logits.chunk");
    b.write(grad, grad_host);
    Tensor d_chunk = d_normed->slice_rows(first, rows, "d_norm.chunk");
    b.matmul(grad, false, head, false, 1.0f, 0.0f, d_chunk);
  }
  return total;
}

// The loss of the final hidden states and, with d_normed, its input gradient: the backend's fused kernel on
// a whole model, the vocabulary-parallel one on a sharded model (its partial gradients summed here).
BatchLoss head_cross_entropy(Model& model, const Tensor& normed, std::span<const std::int32_t> targets,
                             float grad_scale, Tensor* d_normed) {
  if (model.tensor_parallel().size == 1) {
    const Backend::CrossEntropyResult ce =
        model.backend().cross_entropy(normed, model.weights().lm_head, targets, grad_scale, d_normed);
    return {ce.loss_sum, ce.counted};
  }
  const BatchLoss loss = sharded_cross_entropy(model, normed, targets, grad_scale, d_normed);
  if (d_normed != nullptr) model.sum_over_tensor_group(*d_normed);
  return loss;
}

}  // namespace

LoraTrainingGraph::LoraTrainingGraph(Model& model, LoraAdapter& adapter, bool recompute)
    : model_(model), adapter_(adapter), recompute_(recompute) {
  if (adapter.layers() != static_cast<std::size_t>(model.config().num_hidden_layers))
    throw InputError("the adapter's layer count does not match the model");
  gradient_index_.assign(adapter.layers(), {});
  std::int64_t index = 0;
  for (std::size_t l = 0; l < adapter.layers(); ++l)
    for (std::size_t t = 0; t < kLoraTargetCount; ++t) {
      gradient_index_[l][t] = adapter.find(l, static_cast<LoraTarget>(t)) ? index : -1;
      if (gradient_index_[l][t] >= 0) index += 2;
    }
}

std::vector<Tensor> LoraTrainingGraph::make_gradients() const {
  std::vector<Tensor> gradients;
  for (const auto& p : adapter_.parameters())
    gradients.push_back(model_.backend().zeros(p.tensor->shape(), "grad." + p.key));
  return gradients;
}

void LoraTrainingGraph::layer_forward(std::size_t l, const PackedBatch& batch, const Tensor& x_in,
                                      LayerActivations& a, Tensor& x_out, std::uint64_t dropout_key, bool training) {
  const ModelConfig& c = model_.local_config();  // this rank's heads and intermediate size
  const LayerWeights& w = model_.weights().layers[l];
  Backend& b = model_.backend();
  const std::int64_t n = batch.rows(), hidden = c.hidden_size, inter = c.intermediate_size;
  const std::int64_t heads = c.num_attention_heads, kv_heads = c.num_key_value_heads, dim = c.head_dim;
  const float eps = static_cast<float>(c.rms_norm_eps);
  const std::string name = "layers." + std::to_string(l);
  const float dropout = training ? static_cast<float>(adapter_.settings().dropout) : 0.0f;

  auto project = [&](LoraTarget target, const Tensor& in, const Tensor& weight, const Tensor* bias, Tensor& out) {
    b.linear(in, weight, bias, out);
    const LoraPair* pair = adapter_.find(l, target);
    if (pair == nullptr) return;
    Tensor& t = a.lora_t[static_cast<std::size_t>(target)];
    t = b.zeros({n, adapter_.settings().r}, name + "." + std::string(lora_target_name(target)) + ".lora_t");
    if (dropout > 0.0f) {
      Tensor dropped = b.zeros(in.shape(), "dropout_in");
      b.dropout(in, dropout, input_mask(model_, target, projection_key(dropout_key, l, target)), dropped);
      b.matmul(dropped, false, pair->a, true, 1.0f, 0.0f, t);
    } else {
      b.matmul(in, false, pair->a, true, 1.0f, 0.0f, t);
    }
    b.matmul(t, false, pair->b, true, adapter_.scaling(), 1.0f, out);
  };

  TokenLayout layout;
  layout.positions = batch.positions;
  layout.slots.assign(batch.positions.size(), 0);
  auto [cos, sin] = model_.rope_tables(static_cast<std::int64_t>(batch.positions.empty() ? 1 : 1 + *std::max_element(batch.positions.begin(), batch.positions.end())));

  a.normed1 = b.zeros({n, hidden}, name + ".normed1");
  b.rms_norm(x_in, w.input_norm, eps, a.normed1);
  a.q = b.zeros({n, heads, dim}, name + ".q_rope");
  a.k = b.zeros({n, kv_heads, dim}, name + ".k_rope");
  a.v = b.zeros({n, kv_heads, dim}, name + ".v");
  project(LoraTarget::QProj, a.normed1, w.q_proj, bias_of(w.q_bias), a.q);
  project(LoraTarget::KProj, a.normed1, w.k_proj, bias_of(w.k_bias), a.k);
  project(LoraTarget::VProj, a.normed1, w.v_proj, bias_of(w.v_bias), a.v);
  b.rope(a.q, layout, *cos, *sin);
  b.rope(a.k, layout, *cos, *sin);
  a.attn = b.zeros({n, heads, dim}, name + ".attn");
  a.lse = b.zeros_f32({n, heads}, name + ".lse");
  b.attention_train(a.q, a.k, a.v, batch.seq_starts, 1.0f / std::sqrt(static_cast<float>(dim)), a.attn, a.lse);
  a.x_mid = b.zeros({n, hidden}, name + ".attn_residual");
  project(LoraTarget::OProj, a.attn.reshaped({n, heads * dim}), w.o_proj, bias_of(w.o_bias), a.x_mid);
  model_.sum_over_tensor_group(a.x_mid);
  b.add_inplace(a.x_mid, x_in);
  a.normed2 = b.zeros({n, hidden}, name + ".normed2");
  b.rms_norm(a.x_mid, w.post_attention_norm, eps, a.normed2);
  a.gate = b.zeros({n, inter}, name + ".gate");
  a.up = b.zeros({n, inter}, name + ".up");
  a.act = b.zeros({n, inter}, name + ".act");
  project(LoraTarget::GateProj, a.normed2, w.gate_proj, nullptr, a.gate);
  project(LoraTarget::UpProj, a.normed2, w.up_proj, nullptr, a.up);
  b.swiglu(a.gate, a.up, a.act);
  project(LoraTarget::DownProj, a.act, w.down_proj, nullptr, x_out);
  model_.sum_over_tensor_group(x_out);
  b.add_inplace(x_out, a.x_mid);
}

void LoraTrainingGraph::layer_backward(std::size_t l, const PackedBatch& batch, const Tensor& x_in,
                                       LayerActivations& a, const Tensor& d_out, Tensor& d_in,
                                       std::uint64_t dropout_key, std::vector<Tensor>& gradients) {
  const ModelConfig& c = model_.local_config();
  const LayerWeights& w = model_.weights().layers[l];
  Backend& b = model_.backend();
  const std::int64_t n = batch.rows(), hidden = c.hidden_size, inter = c.intermediate_size;
  const std::int64_t heads = c.num_attention_heads, kv_heads = c.num_key_value_heads, dim = c.head_dim;
  const float eps = static_cast<float>(c.rms_norm_eps);
  const float dropout = static_cast<float>(adapter_.settings().dropout);
  const float s = adapter_.scaling();

  // dx (+)= dy W for the frozen base, and the adapter's gradients and input gradient when it has one.
  auto project_back = [&](LoraTarget target, const Tensor& dy, const Tensor& in, const Tensor& weight, float beta,
                          Tensor& dx) {
    b.matmul(dy, false, weight, false, 1.0f, beta, dx);
    const std::int64_t index = gradient_index_[l][static_cast<std::size_t>(target)];
    if (index < 0) return;
    const LoraPair& pair = *adapter_.find(l, target);
    const Tensor& t = a.lora_t[static_cast<std::size_t>(target)];
    Tensor& grad_a = gradients[static_cast<std::size_t>(index)];
    Tensor& grad_b = gradients[static_cast<std::size_t>(index) + 1];
    b.matmul(dy, true, t, false, s, 1.0f, grad_b);
    Tensor u = b.zeros({n, adapter_.settings().r}, "lora_u");
    b.matmul(dy, false, pair.b, false, 1.0f, 0.0f, u);
    if (dropout > 0.0f) {
      const Backend::DropoutMask key = input_mask(model_, target, projection_key(dropout_key, l, target));
      Tensor dropped = b.zeros(in.shape(), "dropout_in");
      b.dropout(in, dropout, key, dropped);
      b.matmul(u, true, dropped, false, s, 1.0f, grad_a);
      Tensor through = b.zeros(in.shape(), "lora_dx");
      b.matmul(u, false, pair.a, false, s, 0.0f, through);
      b.dropout(through, dropout, key, dropped);  // the mask and 1/(1-p) again: d(dropout)/dx
      b.add_inplace(dx, dropped);
    } else {
      b.matmul(u, true, in, false, s, 1.0f, grad_a);
      b.matmul(u, false, pair.a, false, s, 1.0f, dx);
    }
  };

  // MLP block: x_out = x_mid + down(silu(gate(n2)) * up(n2)), n2 = rms_norm(x_mid).
  Tensor d_act = b.zeros({n, inter}, "d_act");
  project_back(LoraTarget::DownProj, d_out, a.act, w.down_proj, 0.0f, d_act);
  Tensor d_gate = b.zeros({n, inter}, "d_gate"), d_up = b.zeros({n, inter}, "d_up");
  b.swiglu_backward(a.gate, a.up, d_act, d_gate, d_up);
  Tensor d_normed = b.zeros({n, hidden}, "d_normed2");
  project_back(LoraTarget::GateProj, d_gate, a.normed2, w.gate_proj, 0.0f, d_normed);
  project_back(LoraTarget::UpProj, d_up, a.normed2, w.up_proj, 1.0f, d_normed);
  model_.sum_over_tensor_group(d_normed);  // gate and up are column-parallel: each rank's part of dx
  Tensor d_mid = b.zeros({n, hidden}, "d_mid");
  b.rms_norm_backward(a.x_mid, w.post_attention_norm, d_normed, eps, d_mid);
  b.add_inplace(d_mid, d_out);

  // Attention block: x_mid = x_in + o(attention(rope(q(n1)), rope(k(n1)), v(n1))), n1 = rms_norm(x_in).
  Tensor d_attn = b.zeros({n, heads, dim}, "d_attn");
  Tensor d_attn_flat = d_attn.reshaped({n, heads * dim});
  project_back(LoraTarget::OProj, d_mid, a.attn.reshaped({n, heads * dim}), w.o_proj, 0.0f, d_attn_flat);
  Tensor dq = b.zeros({n, heads, dim}, "dq"), dk = b.zeros({n, kv_heads, dim}, "dk"), dv = b.zeros({n, kv_heads, dim}, "dv");
  b.attention_backward(a.q, a.k, a.v, a.attn, a.lse, d_attn, batch.seq_starts,
                       1.0f / std::sqrt(static_cast<float>(dim)), dq, dk, dv);
  auto [cos, sin] = model_.rope_tables(1);
  b.rope_backward(dq, batch.positions, *cos, *sin);
  b.rope_backward(dk, batch.positions, *cos, *sin);
  d_normed = b.zeros({n, hidden}, "d_normed1");
  project_back(LoraTarget::QProj, dq.reshaped({n, heads * dim}), a.normed1, w.q_proj, 0.0f, d_normed);
  project_back(LoraTarget::KProj, dk.reshaped({n, kv_heads * dim}), a.normed1, w.k_proj, 1.0f, d_normed);
  project_back(LoraTarget::VProj, dv.reshaped({n, kv_heads * dim}), a.normed1, w.v_proj, 1.0f, d_normed);
  model_.sum_over_tensor_group(d_normed);  // q, k and v are column-parallel too
  b.rms_norm_backward(x_in, w.input_norm, d_normed, eps, d_in);
  b.add_inplace(d_in, d_mid);
}

BatchLoss LoraTrainingGraph::forward_backward(const PackedBatch& batch, float grad_scale, std::uint64_t dropout_key,
                                              std::vector<Tensor>& gradients,
                                              const std::function<void(std::size_t layer)>& layer_done) {
  const ModelConfig& c = model_.config();
  const ModelWeights& w = model_.weights();
  Backend& b = model_.backend();
  const std::int64_t n = batch.rows(), hidden = c.hidden_size;
  const std::size_t layers = w.layers.size();
  const float eps = static_cast<float>(c.rms_norm_eps);
  if (n == 0) return {};

  // xs[l] is layer l's input; xs[layers] the last layer's output.
  std::vector<Tensor> xs;
  xs.push_back(b.zeros({n, hidden}, "embed"));
  b.embedding(w.embed_tokens, batch.tokens, xs[0]);
  std::vector<LayerActivations> kept(recompute_ ? 1 : layers);
  std::size_t kept_bytes = 0;
  for (std::size_t l = 0; l < layers; ++l) {
    xs.push_back(b.zeros({n, hidden}, "layers." + std::to_string(l) + ".out"));
    LayerActivations& acts = kept[recompute_ ? 0 : l];
    layer_forward(l, batch, xs[l], acts, xs[l + 1], dropout_key, true);
    if (!recompute_) kept_bytes += acts.bytes();
  }
  for (const auto& x : xs) kept_bytes += x.bytes();
  if (recompute_) kept = std::vector<LayerActivations>(1);  // drop the last layer's: it is recomputed too

  Tensor normed = b.zeros({n, hidden}, "norm");
  b.rms_norm(xs[layers], w.final_norm, eps, normed);
  Tensor d_normed = b.zeros({n, hidden}, "d_norm");
  const BatchLoss ce = head_cross_entropy(model_, normed, batch.targets, grad_scale, &d_normed);
  activation_bytes_ = kept_bytes + normed.bytes();

  Tensor d_x = b.zeros({n, hidden}, "d_x");
  b.rms_norm_backward(xs[layers], w.final_norm, d_normed, eps, d_x);
  Tensor d_prev = b.zeros({n, hidden}, "d_x_prev");
  Tensor scratch_out = recompute_ ? b.zeros({n, hidden}, "recomputed_out") : Tensor();
  for (std::size_t l = layers; l-- > 0;) {
    LayerActivations& acts = kept[recompute_ ? 0 : l];
    if (recompute_) layer_forward(l, batch, xs[l], acts, scratch_out, dropout_key, true);
    layer_backward(l, batch, xs[l], acts, d_x, d_prev, dropout_key, gradients);
    if (layer_done) layer_done(l);
    std::swap(d_x, d_prev);
    if (!recompute_) acts = LayerActivations{};  // free as we go
  }
  model_.wait_for_tensor_group("the backward's sums over the tensor group");
  return {ce.loss_sum, ce.counted};
}

std::size_t LoraTrainingGraph::activation_bytes_per_token() const {
  const ModelConfig& c = model_.local_config();
  const auto element = static_cast<std::int64_t>(dtype_size(model_.weights().final_norm.dtype()));  // activations
  const std::int64_t q = c.num_attention_heads * c.head_dim, kv = c.num_key_value_heads * c.head_dim;
  std::int64_t lora = 0;
  for (std::size_t t = 0; t < kLoraTargetCount; ++t)
    lora += adapter_.find(0, static_cast<LoraTarget>(t)) ? adapter_.settings().r : 0;
  // LayerActivations: normed1, q, k, v, attn, x_mid, normed2, gate, up, act, the LoRA t's; lse in fp32.
  const std::int64_t layer_kept = element * (3 * c.hidden_size + 2 * q + 2 * kv + 3 * c.intermediate_size + lora) +
                                  4 * c.num_attention_heads;
  // The backward's transients of one layer: d_act, d_gate, d_up, dq, dk, dv, d_attn, the norms' gradients,
  // a dropout copy of the widest input.
  const std::int64_t layer_transient = element * (4 * c.intermediate_size + 2 * q + 2 * kv + 4 * c.hidden_size);
  const std::int64_t layers = c.num_hidden_layers;
  const std::int64_t inputs = element * c.hidden_size * (layers + 1);  // every layer's input (xs)
  const std::int64_t kept = recompute_ ? layer_kept : layers * layer_kept;
  return static_cast<std::size_t>(inputs + kept + layer_transient);
}

BatchLoss LoraTrainingGraph::loss(const PackedBatch& batch) {
  const ModelConfig& c = model_.config();
  const ModelWeights& w = model_.weights();
  Backend& b = model_.backend();
  const std::int64_t n = batch.rows();
  if (n == 0) return {};
  Tensor x = b.zeros({n, c.hidden_size}, "embed"), next = b.zeros({n, c.hidden_size}, "out");
  b.embedding(w.embed_tokens, batch.tokens, x);
  LayerActivations acts;
  for (std::size_t l = 0; l < w.layers.size(); ++l) {
    layer_forward(l, batch, x, acts, next, 0, false);
    std::swap(x, next);
  }
  Tensor normed = b.zeros({n, c.hidden_size}, "norm");
  b.rms_norm(x, w.final_norm, static_cast<float>(c.rms_norm_eps), normed);
  return head_cross_entropy(model_, normed, batch.targets, 1.0f, nullptr);
}

}  // namespace slearn
