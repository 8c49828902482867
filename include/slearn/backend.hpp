// The ops the model calls. A backend owns memory and implements every op; the model definition
// (src/model/model.cpp) is written once against this interface. `cpu` computes in fp32 and is the numerical
// reference; `cuda` (a later issue) computes in bf16 with custom kernels.
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "slearn/tensor.hpp"

namespace slearn {

using TokenId = std::int32_t;

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
  virtual Tensor upload(Tensor host) = 0;
  virtual void to_host(const Tensor& tensor, std::span<float> out) = 0;

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

  // ---- Training. Tensors are seen as matrices [dim(0), numel / dim(0)]. ----
  // c = alpha * op(a) op(b) + beta * c, op transposing when asked.
  virtual void matmul(const Tensor& a, bool transpose_a, const Tensor& b, bool transpose_b, float alpha, float beta,
                      Tensor& c) = 0;
  virtual void scale(Tensor& x, float factor) = 0;
  // Inverted dropout with a counter-based mask: element i of `x` is kept when hash(key, i) >= p, and scaled by
  // 1 / (1 - p). The same key gives the same mask, so recomputation (checkpointing) needs no stored mask.
  virtual void dropout(const Tensor& x, float p, std::uint64_t key, Tensor& out) = 0;
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

std::unique_ptr<Backend> make_cpu_backend();
// "cpu" (or "auto" on a build or machine without CUDA); anything else is an InputError.
std::unique_ptr<Backend> make_backend(std::string_view name);

}  // namespace slearn
