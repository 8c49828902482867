// The decoder layer loop, written once against the Backend ops:
//   x = embed(ids)
//   per layer: x += o_proj(attention(rope(q), rope(k), v)) over rms_norm(x);  x += down(silu(gate) * up) over rms_norm(x)
//   logits = lm_head(rms_norm(x)) for the rows asked for.
// Without an adapter on them, q/k/v and gate/up each run as one GEMM over the stacked weights
// (src/model/weights.hpp), and each residual add is fused with the norm that follows it. A step of single
// tokens (a decode step) runs through Backend::run_recorded, which on the GPU replays it as a CUDA graph.
//
// Tensor parallelism (Megatron style): a sharded model holds its rank's heads and part of the MLP (the layer
// loop sees the local sizes through Weights::local), so q/k/v and gate/up are column-parallel and need no
// communication, o_proj and down_proj are row-parallel and give partial sums, added up over the tensor group
// before the residual; the LM head gives the rank's slice of the vocabulary. Two allreduces of [tokens,
// hidden] per layer, on the host fp32 data.
#include "slearn/model.hpp"

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstdint>
#include <optional>
#include <string>

#include "model/rope_table.hpp"
#include "model/weights.hpp"
#include "slearn/error.hpp"
#include "slearn/group_sum.hpp"
#include "slearn/lora.hpp"
#include "slearn/mesh.hpp"
#include "slearn/safetensors.hpp"
#include "util/trace.hpp"

namespace slearn {

struct Model::Weights {
  ModelConfig config;
  ModelConfig local;  // the layer loop's sizes: config's own unless sharded (see local_config())
  TensorParallel tp;
  std::unique_ptr<GroupSum> group_sum;  // sharded only: the sums of partial results over tp.group
  std::int64_t vocab_first = 0;  // the first id of this rank's LM head rows
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
  Tensor x, normed, qkv, q, k, v, attn, proj, gate_up, gate, up, act;
  Tensor last_rows, logits;
  Tensor logits_view;  // the rows of `logits` the last forward wrote
  Tensor lora_tmp;  // [tokens, r] for the adapter path
  std::int64_t logits_capacity = 0;
};

Model::Model() = default;
Model::Model(Model&&) noexcept = default;
Model& Model::operator=(Model&&) noexcept = default;
Model::~Model() = default;

Model Model::load(const std::filesystem::path& dir, Backend& backend) { return load(dir, backend, TensorParallel{}); }

Model Model::load(const std::filesystem::path& dir, Backend& backend, const TensorParallel& tp) {
  const bool sharded = !(tp.size == 1 && tp.rank == 0);
  if (sharded && (tp.group == nullptr || tp.size < 1 || tp.group->size() != tp.size || tp.group->rank() != tp.rank))
    throw Error("Model::load: tensor-parallel rank " + std::to_string(tp.rank) + " of " + std::to_string(tp.size) +
                (tp.group == nullptr ? std::string(" without a group")
                                     : " on a group where it is rank " + std::to_string(tp.group->rank()) + " of " +
                                           std::to_string(tp.group->size())));
  Model model;
  model.weights_ = std::make_unique<Weights>();
  model.workspace_ = std::make_unique<Workspace>();
  Weights& w = *model.weights_;
  w.config = load_model_config(dir);
  w.local = w.config;
  w.tp = tp;
  w.backend = &backend;
  std::optional<WeightShard> shard;
  if (sharded) {
    const HeadSharding heads = check_tensor_parallel(w.config, tp.size);
    const std::int64_t head_dim = w.config.head_dim;
    shard.emplace();
    shard->q_rows = {heads.first_head(tp.rank) * head_dim, heads.heads_per_rank * head_dim};
    shard->kv_rows = {heads.first_kv_head(tp.rank) * head_dim, heads.kv_heads_per_rank * head_dim};
    shard->intermediate = even_slice(w.config.intermediate_size, tp.size, tp.rank);
    shard->vocab = even_slice(w.config.vocab_size, tp.size, tp.rank);
    // o_proj's bias joins the partial sums once: on rank 0.
    shard->o_bias = tp.rank == 0;
    w.local.num_attention_heads = heads.heads_per_rank;
    w.local.num_key_value_heads = heads.kv_heads_per_rank;
    w.local.intermediate_size = shard->intermediate.count;
    w.vocab_first = shard->vocab.first;
    w.group_sum = backend.make_group_sum(*tp.group, tp.timeout_seconds);
  }
  w.tensors = load_model_weights(WeightStore::open(dir), w.config, backend, shard ? &*shard : nullptr);
  w.inverse_frequencies = rope_inverse_frequencies(w.config);
  return model;
}

const ModelConfig& Model::config() const { return weights_->config; }
Backend& Model::backend() const { return *weights_->backend; }
std::size_t Model::parameter_count() const { return weights_->tensors.parameter_count; }
const TensorParallel& Model::tensor_parallel() const { return weights_->tp; }
const ModelConfig& Model::local_config() const { return weights_->local; }
std::int64_t Model::local_vocab_first() const { return weights_->vocab_first; }
std::int64_t Model::local_vocab_size() const { return weights_->tensors.lm_head.dim(0); }
void Model::set_observer(TensorObserver observer) { weights_->observer = std::move(observer); }
void Model::set_adapter(const LoraAdapter* adapter) {
  if (adapter != nullptr && adapter->layers() != weights_->tensors.layers.size())
    throw InputError("the adapter has " + std::to_string(adapter->layers()) + " layers; the model has " +
                     std::to_string(weights_->tensors.layers.size()));
  // A sharded model takes its rank's share of an adapter (train/adapter_shard.hpp): the local shapes.
  for (std::size_t l = 0; adapter != nullptr && l < adapter->layers(); ++l)
    for (std::size_t t = 0; t < kLoraTargetCount; ++t) {
      const LoraPair* pair = adapter->find(l, static_cast<LoraTarget>(t));
      if (pair == nullptr) continue;
      const auto [out, in] = lora_target_shape(weights_->local, static_cast<LoraTarget>(t));
      if (pair->a.dim(1) != in || pair->b.dim(0) != out)
        throw InputError("adapter " + lora_module_path(l, static_cast<LoraTarget>(t)) + " is " + pair->b.shape_string() +
                         " x " + pair->a.shape_string() + "; this model" +
                         (weights_->tp.size > 1 ? "'s shard (rank " + std::to_string(weights_->tp.rank) + " of " +
                                                      std::to_string(weights_->tp.size) + ")"
                                                : std::string()) +
                         " needs [" + std::to_string(out) + ", r] x [r, " + std::to_string(in) + "]");
    }
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
  const ModelConfig& c = weights_->local;  // a sharded model caches its own kv heads only
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

std::int32_t Model::sequences_that_fit(std::int64_t capacity, std::int64_t prompt_tokens, double fraction) {
  const ModelConfig& c = weights_->local;  // this rank's share of the cache, activations and logits
  Backend& b = *weights_->backend;
  // The activations and the cache are in the backend's compute dtype, as the norms are (not the weights: the cpu
  // backend may keep those in bf16).
  const double element = static_cast<double>(dtype_size(weights_->tensors.final_norm.dtype()));
  const double q = static_cast<double>(c.num_attention_heads * c.head_dim);
  const double kv = static_cast<double>(c.num_key_value_heads * c.head_dim);
  const double hidden = static_cast<double>(c.hidden_size), inter = static_cast<double>(c.intermediate_size);
  // Per sequence: keys and values of every layer; the forward's activations (Workspace) for its prompt
  // tokens, prefilled together; its row of fp32 logits.
  const double kv_cache = 2.0 * static_cast<double>(c.num_hidden_layers) * static_cast<double>(capacity) * kv * element;
  const double activations =
      static_cast<double>(prompt_tokens) * element * (3 * hidden + 3 * q + 4 * kv + 5 * inter);
  const double per_sequence =
      kv_cache + activations + 4.0 * static_cast<double>(local_vocab_size()) + element * hidden;
  const double budget = fraction * static_cast<double>(b.free_memory_bytes());
  const double fit = std::floor(budget / per_sequence);
  return static_cast<std::int32_t>(std::clamp(fit, 1.0, static_cast<double>(kMaxAutoSequences)));
}

std::vector<float> Model::forward(std::span<const TokenId> tokens, std::span<const SequenceChunk> chunks,
                                  KVCache& cache, Logits which) {
  const Tensor& logits = forward_logits(tokens, chunks, cache, which);
  std::vector<float> out(static_cast<std::size_t>(logits.numel()));
  if (!out.empty()) weights_->backend->to_host(logits, out);
  const TensorParallel& tp = weights_->tp;
  if (tp.size == 1) return out;
  // Whole rows from the ranks' slices: the gather is rank-major, [rank][row][slice]; the slices are even and
  // in rank order (even_slice), so row r is every rank's block of row r in turn.
  const auto slice = static_cast<std::size_t>(local_vocab_size());
  const std::size_t rows = slice == 0 ? 0 : out.size() / slice;
  std::vector<float> gathered(out.size() * static_cast<std::size_t>(tp.size));
  tp.group->allgather(out, gathered);
  std::vector<float> full(gathered.size());
  for (std::size_t rank = 0; rank < static_cast<std::size_t>(tp.size); ++rank)
    for (std::size_t r = 0; r < rows; ++r)
      std::copy_n(gathered.begin() + static_cast<std::ptrdiff_t>((rank * rows + r) * slice), slice,
                  full.begin() + static_cast<std::ptrdiff_t>((r * static_cast<std::size_t>(tp.size) + rank) * slice));
  return full;
}

namespace {

// A summary of every address and shape a recorded step uses: equal keys mean a recorded step can be
// replayed as it is. Every tensor is included (not one per group): memory is pooled, so a new cache or a
// reloaded adapter can reuse some of the old addresses and not others.
class StepKey {
 public:
  void add(std::uint64_t part) { key_ = mix64(key_ ^ (part + 0x9e3779b97f4a7c15ull)); }
  void add(const Tensor& t) {
    add(static_cast<std::uint64_t>(reinterpret_cast<std::uintptr_t>(t.data())));
    add(static_cast<std::uint64_t>(t.numel()));
  }
  std::uint64_t value() const { return key_; }

 private:
  std::uint64_t key_ = 0x51ed270b27a5c3d1ull;
};

}  // namespace

void Model::sum_over_tensor_group(Tensor& partial) {
  if (weights_->group_sum) weights_->group_sum->sum(partial);
}

void Model::wait_for_tensor_group(const char* what) {
  if (weights_->group_sum) weights_->group_sum->wait(what);
}

const Tensor& Model::forward_logits(std::span<const TokenId> tokens, std::span<const SequenceChunk> chunks,
                                    KVCache& cache, Logits which) {
  const ModelConfig& c = weights_->local;
  const ModelWeights& w = weights_->tensors;
  Backend& b = *weights_->backend;
  Workspace& ws = *workspace_;
  const auto n = static_cast<std::int64_t>(tokens.size());

  TokenLayout layout;
  layout.slots.reserve(tokens.size());
  layout.positions.reserve(tokens.size());
  std::vector<std::int64_t> last_rows;
  bool single_tokens = true;
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
    single_tokens = single_tokens && chunk.length == 1;
    last_rows.push_back(static_cast<std::int64_t>(layout.slots.size()) - 1);
  }
  if (static_cast<std::int64_t>(layout.tokens()) != n)
    throw Error("forward: chunks cover " + std::to_string(layout.tokens()) + " tokens but " + std::to_string(n) +
                " were given");
  const bool all = which == Logits::AllTokens;
  const std::int64_t rows = all ? n : static_cast<std::int64_t>(last_rows.size());
  const std::int64_t vocab_rows = w.lm_head.dim(0);  // this rank's slice of the vocabulary
  if (n == 0) {
    ws.logits_view = b.zeros_f32({0, vocab_rows}, "logits");
    return ws.logits_view;
  }

  const std::int64_t hidden = c.hidden_size, heads = c.num_attention_heads, kv_heads = c.num_key_value_heads;
  const std::int64_t head_dim = c.head_dim, inter = c.intermediate_size;
  const std::int64_t qkv_width = (heads + 2 * kv_heads) * head_dim;
  if (n > ws.capacity) {
    ws.x = b.zeros({n, hidden}, "x");
    ws.normed = b.zeros({n, hidden}, "normed");
    ws.qkv = b.zeros({n, qkv_width}, "qkv");
    ws.q = b.zeros({n, heads, head_dim}, "q");
    ws.k = b.zeros({n, kv_heads, head_dim}, "k");
    ws.v = b.zeros({n, kv_heads, head_dim}, "v");
    ws.attn = b.zeros({n, heads, head_dim}, "attn");
    ws.proj = b.zeros({n, hidden}, "proj");
    ws.gate_up = b.zeros({n, 2 * inter}, "gate_up");
    ws.gate = b.zeros({n, inter}, "gate");
    ws.up = b.zeros({n, inter}, "up");
    ws.act = b.zeros({n, inter}, "act");
    ws.capacity = n;
  }
  if (rows > ws.logits_capacity) {
    ws.last_rows = b.zeros({rows, hidden}, "last_rows");
    ws.logits = b.zeros_f32({rows, vocab_rows}, "logits");
    ws.logits_capacity = rows;
  }
  const LoraAdapter* adapter = weights_->adapter;
  const TensorParallel& tp = weights_->tp;
  if (adapter != nullptr && ws.lora_tmp.numel() < n * adapter->settings().r)
    ws.lora_tmp = b.zeros({n, adapter->settings().r}, "lora_tmp");

  Tensor x = ws.x.rows(n), normed = ws.normed.rows(n), qkv = ws.qkv.rows(n), q = ws.q.rows(n), k = ws.k.rows(n);
  Tensor v = ws.v.rows(n), attn = ws.attn.rows(n), proj = ws.proj.rows(n), gate_up = ws.gate_up.rows(n);
  Tensor gate = ws.gate.rows(n), up = ws.up.rows(n), act = ws.act.rows(n);
  Tensor logits = ws.logits.rows(rows);
  auto observe = [&](const Tensor& t, const std::string& name) {
    if (weights_->observer)
      weights_->observer(Tensor(nullptr, const_cast<void*>(t.data()), t.dtype(), t.device(), t.shape(), name));
  };
  const float eps = static_cast<float>(c.rms_norm_eps);
  const float scale = 1.0f / std::sqrt(static_cast<float>(head_dim));
  auto bias = [](const std::optional<Tensor>& t) { return t ? &*t : nullptr; };
  // y = x W^T + bias, plus the adapter's scaling * (x A^T) B^T when the projection has one.
  auto project = [&](std::size_t layer, LoraTarget target, const Tensor& in, const Tensor& weight,
                     const Tensor* b_bias, Tensor& out) {
    b.linear(in, weight, b_bias, out);
    const LoraPair* pair = adapter ? adapter->find(layer, target) : nullptr;
    if (pair == nullptr) return;
    const std::int64_t r = adapter->settings().r;
    Tensor tmp = ws.lora_tmp.reshaped({ws.lora_tmp.numel()}).rows(n * r).reshaped({n, r});
    b.matmul(in, false, pair->a, true, 1.0f, 0.0f, tmp);
    b.matmul(tmp, false, pair->b, true, adapter->scaling(), 1.0f, out);
  };
  auto adapted = [&](std::size_t layer, std::initializer_list<LoraTarget> targets) {
    if (adapter == nullptr) return false;
    for (const LoraTarget t : targets)
      if (adapter->find(layer, t) != nullptr) return true;
    return false;
  };

  b.bind_step({tokens, &layout, all ? std::span<const std::int64_t>() : std::span<const std::int64_t>(last_rows),
               cache.slots(), cache.capacity(), c.vocab_size});
  auto layers = [&] {
    const TraceRange trace(single_tokens ? "forward (decode)" : "forward");
    b.embedding(w.embed_tokens, tokens, x);
    observe(x, "embed");
    b.rms_norm(x, w.layers.empty() ? w.final_norm : w.layers[0].input_norm, eps, normed);
    for (std::size_t l = 0; l < w.layers.size(); ++l) {
      const LayerWeights& lw = w.layers[l];
      const std::string name = "layers." + std::to_string(l);
      const TraceRange layer_trace(name);
      // normed holds rms_norm(x) with this layer's input norm.
      if (adapted(l, {LoraTarget::QProj, LoraTarget::KProj, LoraTarget::VProj})) {
        project(l, LoraTarget::QProj, normed, lw.q_proj, bias(lw.q_bias), q);
        project(l, LoraTarget::KProj, normed, lw.k_proj, bias(lw.k_bias), k);
        project(l, LoraTarget::VProj, normed, lw.v_proj, bias(lw.v_bias), v);
        b.rope(q, layout, weights_->rope_cos, weights_->rope_sin);
        b.rope(k, layout, weights_->rope_cos, weights_->rope_sin);
      } else {
        b.linear(normed, lw.qkv_proj, bias(lw.qkv_bias), qkv);
        b.rope_split_qkv(qkv, layout, weights_->rope_cos, weights_->rope_sin, q, k, v);
      }
      observe(q, name + ".q_rope");
      observe(k, name + ".k_rope");
      b.kv_store(k, v, layout, cache.keys(l), cache.values(l));
      b.attention(q, cache.keys(l), cache.values(l), layout, scale, attn);
      observe(attn, name + ".attn");
      project(l, LoraTarget::OProj, attn.reshaped({n, heads * head_dim}), lw.o_proj, bias(lw.o_bias), proj);
      if (tp.size > 1) weights_->group_sum->sum(proj);
      b.add_rms_norm(x, proj, lw.post_attention_norm, eps, normed);
      observe(x, name + ".attn_residual");
      if (adapted(l, {LoraTarget::GateProj, LoraTarget::UpProj})) {
        project(l, LoraTarget::GateProj, normed, lw.gate_proj, nullptr, gate);
        project(l, LoraTarget::UpProj, normed, lw.up_proj, nullptr, up);
        b.swiglu(gate, up, act);
      } else {
        b.linear(normed, lw.gate_up_proj, nullptr, gate_up);
        b.swiglu_fused(gate_up, act);
      }
      project(l, LoraTarget::DownProj, act, lw.down_proj, nullptr, proj);
      if (tp.size > 1) weights_->group_sum->sum(proj);
      // x += down, then the next layer's input norm (the final norm after the last layer) in one pass.
      b.add_rms_norm(x, proj, l + 1 < w.layers.size() ? w.layers[l + 1].input_norm : w.final_norm, eps, normed);
      observe(x, name + ".out");
    }
    observe(normed, "norm");
    if (all) {
      b.linear(normed, w.lm_head, nullptr, logits);
    } else {
      Tensor selected = ws.last_rows.rows(rows);
      b.gather_rows(normed, last_rows, selected);
      b.linear(selected, w.lm_head, nullptr, logits);
    }
    observe(logits, "logits");
  };
  ws.logits_view = logits;
  // Only decode steps are recorded: their shapes repeat step after step; observers see every op run. A sharded
  // model's step is never recorded: its sums over the group are collectives (host ones on cpu).
  if (single_tokens && !all && !weights_->observer && tp.size == 1) {
    StepKey key;
    key.add(static_cast<std::uint64_t>(n));
    for (const Tensor* t : std::initializer_list<const Tensor*>{
             &ws.x, &ws.normed, &ws.qkv, &ws.q, &ws.k, &ws.v, &ws.attn, &ws.proj, &ws.gate_up, &ws.gate, &ws.up, &ws.act,
             &ws.last_rows, &ws.logits, &ws.lora_tmp, &weights_->rope_cos, &weights_->rope_sin, &w.embed_tokens,
             &w.final_norm, &w.lm_head})
      key.add(*t);
    for (std::size_t l = 0; l < w.layers.size(); ++l) {
      const LayerWeights& lw = w.layers[l];
      key.add(cache.keys(l));
      key.add(cache.values(l));
      for (const Tensor* t : {&lw.input_norm, &lw.post_attention_norm, &lw.qkv_proj, &lw.o_proj, &lw.gate_up_proj,
                              &lw.down_proj})
        key.add(*t);
      for (const auto* optional_bias : {&lw.qkv_bias, &lw.o_bias})
        if (*optional_bias) key.add(**optional_bias);
      for (std::size_t target = 0; adapter != nullptr && target < kLoraTargetCount; ++target) {
        const LoraPair* pair = adapter->find(l, static_cast<LoraTarget>(target));
        if (pair == nullptr) continue;
        key.add(pair->a);
        key.add(pair->b);
      }
    }
    if (adapter != nullptr) key.add(static_cast<std::uint64_t>(std::bit_cast<std::uint32_t>(adapter->scaling())));
    b.run_recorded(key.value(),
                   layers);
  } else {
    layers();
  }
  wait_for_tensor_group("the forward's sums over the tensor group");
  return ws.logits_view;
}

namespace {

Tensor random_tensor(Backend& backend, std::vector<std::int64_t> shape, const std::string& name, std::uint64_t key,
                     float scale) {
  Tensor t = backend.zeros(std::move(shape), name);
  backend.fill_random(t, key, scale);
  return t;
}

Tensor ones(Backend& backend, std::int64_t size, const std::string& name) {
  Tensor host = Tensor::host_f32({size}, name);
  std::fill(host.f32(), host.f32() + size, 1.0f);
  return backend.upload(std::move(host));
}

}  // namespace

Model Model::random(const ModelConfig& config, Backend& backend, const RandomInit& init) {
  if (config.hidden_size <= 0 || config.num_hidden_layers < 0 || config.vocab_size <= 0 || config.head_dim <= 0 ||
      config.num_attention_heads <= 0 || config.num_key_value_heads <= 0 ||
      config.num_attention_heads % config.num_key_value_heads != 0)
    throw InputError("Model::random: inconsistent sizes in the config");
  Model model;
  model.weights_ = std::make_unique<Weights>();
  model.workspace_ = std::make_unique<Workspace>();
  Weights& w = *model.weights_;
  w.config = config;
  w.local = config;
  w.backend = &backend;
  ModelWeights& t = w.tensors;
  const std::int64_t hidden = config.hidden_size, inter = config.intermediate_size;
  const std::int64_t q_size = config.num_attention_heads * config.head_dim;
  const std::int64_t kv_size = config.num_key_value_heads * config.head_dim;
  std::uint64_t next_key = mix64(init.seed);
  auto key = [&] { return next_key = mix64(next_key + 1); };
  auto gain = [&](std::int64_t fan_in) { return init.weight_gain / std::sqrt(static_cast<float>(fan_in)); };
  t.embed_tokens = random_tensor(backend, {config.vocab_size, hidden}, "model.embed_tokens.weight", key(),
                                 init.embed_scale);
  for (std::int64_t l = 0; l < config.num_hidden_layers; ++l) {
    const std::string p = "model.layers." + std::to_string(l) + ".";
    LayerWeights layer;
    layer.input_norm = ones(backend, hidden, p + "input_layernorm.weight");
    layer.qkv_proj = random_tensor(backend, {q_size + 2 * kv_size, hidden}, p + "self_attn.qkv_proj.weight", key(),
                                   gain(hidden));
    if (config.attention_bias)
      layer.qkv_bias = random_tensor(backend, {q_size + 2 * kv_size}, p + "self_attn.qkv_proj.bias", key(), 0.1f);
    layer.o_proj = random_tensor(backend, {hidden, q_size}, p + "self_attn.o_proj.weight", key(), gain(q_size));
    if (config.model_type == "llama" && config.attention_bias)
      layer.o_bias = random_tensor(backend, {hidden}, p + "self_attn.o_proj.bias", key(), 0.1f);
    layer.post_attention_norm = ones(backend, hidden, p + "post_attention_layernorm.weight");
    layer.gate_up_proj = random_tensor(backend, {2 * inter, hidden}, p + "mlp.gate_up_proj.weight", key(),
                                       gain(hidden));
    layer.down_proj = random_tensor(backend, {hidden, inter}, p + "mlp.down_proj.weight", key(), gain(inter));
    set_stacked_views(layer, q_size, kv_size, inter);
    t.layers.push_back(std::move(layer));
  }
  t.final_norm = ones(backend, hidden, "model.norm.weight");
  t.lm_head = config.tie_word_embeddings
                  ? t.embed_tokens
                  : random_tensor(backend, {config.vocab_size, hidden}, "lm_head.weight", key(),
                                  init.lm_head_gain / std::sqrt(static_cast<float>(hidden)));
  std::size_t count = static_cast<std::size_t>(t.embed_tokens.numel()) + static_cast<std::size_t>(hidden);
  for (const auto& layer : t.layers) {
    count += static_cast<std::size_t>(layer.qkv_proj.numel() + layer.o_proj.numel() + layer.gate_up_proj.numel() +
                                      layer.down_proj.numel() + 2 * hidden);
    if (layer.qkv_bias) count += static_cast<std::size_t>(layer.qkv_bias->numel());
    if (layer.o_bias) count += static_cast<std::size_t>(layer.o_bias->numel());
  }
  if (!config.tie_word_embeddings) count += static_cast<std::size_t>(t.lm_head.numel());
  t.parameter_count = count;
  w.inverse_frequencies = rope_inverse_frequencies(config);
  return model;
}

}  // namespace slearn
