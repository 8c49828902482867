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
};

std::unique_ptr<Backend> make_cpu_backend();
// "cpu" (or "auto" on a build or machine without CUDA); anything else is an InputError.
std::unique_ptr<Backend> make_backend(std::string_view name);

}  // namespace slearn
