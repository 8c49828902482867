// The ops the model calls. A backend owns memory and implements every op; the model definition
// (src/model/model.cpp) is written once against this interface. `cpu` computes in fp32 and is the numerical
// reference; `cuda` (a later issue) computes in bf16 with custom kernels.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "slearn/gradient_sum.hpp"
#include "slearn/group_sum.hpp"
#include "slearn/sampling.hpp"
#include "slearn/tensor.hpp"

namespace slearn {

class Communicator;

// Where each token of a packed batch belongs: its sequence's KV-cache slot and its position in that sequence.
struct TokenLayout {
  std::vector<std::int32_t> slots;
  std::vector<std::int32_t> positions;
  std::size_t tokens() const { return slots.size(); }
};

class Backend {
 public:
  virtual ~Backend() = default;
  virtual std::string_view name() const = 0;

  // A zero-filled activation tensor in this backend's memory and compute dtype.
  virtual Tensor zeros(std::vector<std::int64_t> shape, std::string name) = 0;
  // Moves an fp32 host tensor (weights after loading) into this backend's memory and dtype.
  // A zero-filled fp32 tensor whatever the compute dtype: attention's log-sum-exp, logits.
  virtual Tensor zeros_f32(std::vector<std::int64_t> shape, std::string name) = 0;
  // Moves an fp32 host tensor (weights after loading) into this backend's memory and dtype.
  virtual Tensor upload(Tensor host) = 0;
  // A weight matrix (a projection, the embedding, the LM head) read from a checkpoint that stores it as
  // `stored`: by default as upload; the cpu backend keeps it in bf16 when its CpuWeights say so.
  virtual Tensor upload_weight(Tensor host, DType stored) {
    (void)stored;
    return upload(std::move(host));
  }
  virtual void to_host(const Tensor& tensor, std::span<float> out) = 0;
  // Fills `t` with values uniform in [-scale, scale] rounded to bf16, element i a function of (key, i) only:
  // bit-identical on every backend, so a random model (tests, benchmarks) needs no file and no host copy.
  virtual void fill_random(Tensor& t, std::uint64_t key, float scale) = 0;
  // Memory this backend may still allocate, in bytes (the device's free memory; the host's available memory).
  virtual std::size_t free_memory_bytes() = 0;

  virtual void embedding(const Tensor& table, std::span<const TokenId> ids, Tensor& out) = 0;
  virtual void rms_norm(const Tensor& x, const Tensor& weight, float eps, Tensor& out) = 0;
  // out = x W^T + bias, W in PyTorch's [out_features, in_features] layout.
  virtual void linear(const Tensor& x, const Tensor& weight, const Tensor* bias, Tensor& out) = 0;
  // x: [tokens, heads, head_dim], rotated in place with the cos/sin tables [positions, head_dim/2].
  virtual void rope(Tensor& x, const TokenLayout& layout, const Tensor& cos, const Tensor& sin) = 0;
  virtual void kv_store(const Tensor& k, const Tensor& v, const TokenLayout& layout, Tensor& k_cache,
                        Tensor& v_cache) = 0;
  virtual void attention(const Tensor& q, const Tensor& k_cache, const Tensor& v_cache, const TokenLayout& layout,
                         float scale, Tensor& out) = 0;
  virtual void swiglu(const Tensor& gate, const Tensor& up, Tensor& out) = 0;
  virtual void add_inplace(Tensor& x, const Tensor& y) = 0;
  // out[i] = x[rows[i]]
  virtual void gather_rows(const Tensor& x, std::span<const std::int64_t> rows, Tensor& out) = 0;

  // ---- Fused inference ops (one kernel where the CPU backend runs the plain ops in sequence). ----
  // x += y, then out = rms_norm(x): the residual add and the next layer's norm in one pass.
  virtual void add_rms_norm(Tensor& x, const Tensor& y, const Tensor& weight, float eps, Tensor& out) = 0;
  // Splits a fused projection qkv [tokens, (heads + 2 kv_heads) head_dim] into q [tokens, heads, head_dim],
  // k and v [tokens, kv_heads, head_dim], rotating q and k by RoPE at the layout's positions.
  virtual void rope_split_qkv(const Tensor& qkv, const TokenLayout& layout, const Tensor& cos, const Tensor& sin,
                              Tensor& q, Tensor& k, Tensor& v) = 0;
  // out = silu(gate) * up over a fused projection gate_up [tokens, 2 intermediate] (gate columns first).
  virtual void swiglu_fused(const Tensor& gate_up, Tensor& out) = 0;
  // One token per row of fp32 logits [rows, vocab], by sample_token's rules (slearn/sampling.hpp); row r
  // draws with (options.seed, streams[r], steps[r]). Only the ids leave the device.
  virtual void sample(const Tensor& logits, const SamplingOptions& options, std::span<const std::uint64_t> streams,
                      std::span<const std::uint64_t> steps, std::span<TokenId> out) = 0;

  // ---- Recorded steps (CUDA graphs). ----
  // A forward's host inputs, bound once per forward: the backend validates them (ids against the vocabulary,
  // the layout against the cache, rows against the tokens) and uploads them once into fixed device buffers;
  // ops later given these same spans use those instead of copying again.
  struct StepInputs {
    std::span<const TokenId> ids;
    const TokenLayout* layout = nullptr;
    std::span<const std::int64_t> rows;  // the rows whose logits are wanted (empty: all)
    std::int64_t cache_slots = 0, cache_capacity = 0, vocab = 0;
  };
  virtual void bind_step(const StepInputs& inputs) { (void)inputs; }
  // Runs `ops`, the device work of one step whose every address and shape is summed up by `key`. A backend
  // that can replay records the ops once a key repeats and replays them afterwards (reading the inputs
  // bind_step uploaded); the others just run them.
  virtual void run_recorded(std::uint64_t key, const std::function<void()>& ops) {
    (void)key;
    ops();
  }

  // ---- Training. Tensors are seen as matrices [dim(0), numel / dim(0)]. ----
  // c = alpha * op(a) op(b) + beta * c, op transposing when asked. `c` may be an fp32 tensor (zeros_f32) while
  // a and b are in the compute dtype: the gradients of the adapter accumulate in fp32 that way, never in bf16.
  virtual void matmul(const Tensor& a, bool transpose_a, const Tensor& b, bool transpose_b, float alpha, float beta,
                      Tensor& c) = 0;
  virtual void scale(Tensor& x, float factor) = 0;
  // Inverted dropout with a counter-based mask: element i of `x` is kept when hash(key, i) >= p, and scaled by
  // 1 / (1 - p). The same key gives the same mask, so recomputation (checkpointing) needs no stored mask.
  // With mask.columns set, `x` is a column slice [rows, width] of a wider matrix [rows, columns] starting at
  // mask.first_column, and element (r, c) takes the wider matrix's draw, index r * columns + first_column + c:
  // a tensor-parallel rank drops exactly the elements the whole-model run drops in its slice.
  struct DropoutMask {
    DropoutMask(std::uint64_t mask_key) : key(mask_key) {}  // NOLINT: a plain key is the common case
    DropoutMask(std::uint64_t mask_key, std::int64_t whole_columns, std::int64_t first)
        : key(mask_key), columns(whole_columns), first_column(first) {}
    std::uint64_t key = 0;
    std::int64_t columns = 0;  // 0: x is the whole matrix
    std::int64_t first_column = 0;
  };
  virtual void dropout(const Tensor& x, float p, const DropoutMask& mask, Tensor& out) = 0;
  virtual void rms_norm_backward(const Tensor& x, const Tensor& weight, const Tensor& dy, float eps, Tensor& dx) = 0;
  virtual void rope_backward(Tensor& grad, std::span<const std::int32_t> positions, const Tensor& cos,
                             const Tensor& sin) = 0;
  virtual void swiglu_backward(const Tensor& gate, const Tensor& up, const Tensor& dout, Tensor& dgate,
                               Tensor& dup) = 0;
  // Causal attention over packed sequences (rows seq_starts[i] .. seq_starts[i+1]); `lse` keeps each query
  // row's log-sum-exp for the backward.
  virtual void attention_train(const Tensor& q, const Tensor& k, const Tensor& v,
                               std::span<const std::int64_t> seq_starts, float scale, Tensor& out, Tensor& lse) = 0;
  virtual void attention_backward(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& out,
                                  const Tensor& lse, const Tensor& dout, std::span<const std::int64_t> seq_starts,
                                  float scale, Tensor& dq, Tensor& dk, Tensor& dv) = 0;
  // ---- Training state: the adapter, its gradients and AdamW's moments, each one flat fp32 buffer. ----
  // (src/train/flat_adapter.hpp lays the adapter out in it; the trainer calls only these ops, on any backend.)
  // Host fp32 values into `t` (an fp32 or compute-dtype tensor of this backend), converted as upload converts.
  virtual void write(Tensor& t, std::span<const float> values) = 0;
  // Zeroes `t` in place.
  virtual void zero(Tensor& t) = 0;
  // A copy of the fp32 `master` in the compute dtype, for the matmuls (bf16 on cuda). A backend that computes
  // in fp32 returns `master` itself: the same memory, so there is nothing to refresh.
  virtual Tensor compute_copy(const Tensor& master, std::string name) = 0;
  // Brings `copy` (from compute_copy) up to date with `master` after an update; nothing when they share memory.
  virtual void refresh_compute_copy(const Tensor& master, Tensor& copy) = 0;
  // One pass over an fp32 buffer cut into segments (segment_ends: each segment's end, ascending, the last one
  // numel): the sum of squares, accumulated in double within a segment and then over the segments in order
  // on cpu (as the trainer always did), in any fixed order elsewhere (deterministic); and the first element
  // that is not finite (-1: none). Only these scalars reach the host.
  struct FlatCheck {
    double sum_squares = 0;
    std::int64_t first_non_finite = -1;
  };
  virtual FlatCheck check_flat(const Tensor& flat, std::span<const std::int64_t> segment_ends) = 0;
  // One fused AdamW update over the flat buffers (all fp32, same size), torch's single-tensor AdamW in fp32
  // with the gradient first scaled by grad_scale (clipping): per element
  //   g = grad * grad_scale; p *= decay; m += one_minus_beta1 (g - m); v = v beta2 + one_minus_beta2 g g;
  //   p += -step_size (m / (sqrt(v) / correction2_sqrt + eps)).
  struct AdamWScalars {
    float decay = 1, one_minus_beta1 = 0, beta2 = 0, one_minus_beta2 = 0, correction2_sqrt = 1, step_size = 0,
          eps = 0, grad_scale = 1;
  };
  virtual void adamw_update(Tensor& params, const Tensor& grads, Tensor& m, Tensor& v, const AdamWScalars& s) = 0;
  // The gradient sum across the ranks of `comm` for a flat buffer of `elements` (slearn/gradient_sum.hpp).
  // Collective: every rank of `comm` calls it (the cuda backend creates its NCCL communicator here).
  virtual std::unique_ptr<GradientSum> make_gradient_sum(Communicator& comm, std::int64_t elements,
                                                         const GradientSumOptions& options) = 0;
  // The sum over a tensor group of a sharded model's partial results (slearn/group_sum.hpp). Collective: every
  // rank of `group` calls it (the cuda backend creates its NCCL communicator here); `group` must outlive it.
  virtual std::unique_ptr<GroupSum> make_group_sum(Communicator& group, double timeout_seconds) = 0;

  struct CrossEntropyResult {
    double loss_sum = 0;      // summed over rows with a target >= 0
    std::int64_t counted = 0;
  };
  // Cross-entropy of hidden lm_head^T against targets (-100 skips a row), in row chunks so the full logits
  // are never held; with `dhidden`, writes grad_scale * d(loss_sum)/d(hidden).
  virtual CrossEntropyResult cross_entropy(const Tensor& hidden, const Tensor& lm_head,
                                           std::span<const std::int32_t> targets, float grad_scale,
                                           Tensor* dhidden) = 0;
};

// How the cpu backend stores weight matrices (cpu_weights in the configurations): Auto keeps them in the
// checkpoint's bf16 when it is bf16 (exact: every op widens them to fp32 and computes in fp32, so the results
// are those of fp32 weights holding the same values, at half the bytes a decode step reads) and in fp32
// otherwise; BF16 rounds any checkpoint to bf16; F32 widens every checkpoint to fp32.
enum class CpuWeights { Auto, F32, BF16 };
CpuWeights cpu_weights_from_name(std::string_view name);  // "auto" | "f32" | "bf16", else InputError
std::unique_ptr<Backend> make_cpu_backend(CpuWeights weights = CpuWeights::Auto);
// "cpu" (or "auto" on a build or machine without CUDA); anything else is an InputError. `cpu_weights`
// applies when the backend is the cpu one.
std::unique_ptr<Backend> make_backend(std::string_view name, CpuWeights cpu_weights = CpuWeights::Auto);

}  // namespace slearn
