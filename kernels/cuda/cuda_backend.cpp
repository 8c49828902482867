// The CUDA backend: device tensors in bf16 (fp32 for attention's log-sum-exp), shapes checked as the CPU
// backend checks them, then the launchers of kernels/cuda. Host spans of the Backend interface (token ids,
// slots, positions, sequence starts, targets) are validated on the host, then staged to the device in one
// copy per op.
//
// All work runs on the legacy default stream, so allocation, copies and kernels are ordered with one
// another and a tensor's cudaFree (which synchronises) can never free memory a queued kernel still reads.
// A dedicated stream and CUDA graphs belong to the engine work (docs/cuda.md). Not thread-safe (one
// backend per thread, as for the CPU backend's callers).
//
// NOTE: compiled for sm_80/sm_90 but never run on a GPU in the environment it was written in; tests/gpu
// checks every op against the CPU backend wherever a GPU is present (docs/cuda.md).
#include "cuda/cuda_backend.hpp"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <string>
#include <vector>

#include "cuda/cuda_check.hpp"
#include "cuda/cuda_kernels.hpp"
#include "cuda/gemm.hpp"
#include "slearn/device_binding.hpp"
#include "slearn/error.hpp"

namespace slearn {
namespace {

using cuda::bf16;

void expect(bool condition, const Tensor& tensor, const std::string& what) {
  if (!condition) throw Error("cuda backend: tensor " + tensor.name() + " " + tensor.shape_string() + ": " + what);
}

std::int64_t rows_of(const Tensor& t) { return t.rank() == 0 ? 1 : t.dim(0); }
std::int64_t row_size(const Tensor& t) { return t.numel() / std::max<std::int64_t>(rows_of(t), 1); }

// The device data of a bf16 tensor, refusing host tensors (e.g. one not passed through upload()).
const bf16* dev(const Tensor& t) {
  expect(t.device() == Device::CUDA && t.dtype() == DType::BF16, t, "must be a bf16 tensor of the cuda backend");
  return static_cast<const bf16*>(t.data());
}
bf16* dev(Tensor& t) { return const_cast<bf16*>(dev(static_cast<const Tensor&>(t))); }
float* dev_f32(Tensor& t) {
  expect(t.device() == Device::CUDA && t.dtype() == DType::F32, t,
         "must be an fp32 tensor of the cuda backend (zeros() gives fp32 to tensors named *lse)");
  return static_cast<float*>(t.data());
}
const float* dev_f32(const Tensor& t) { return dev_f32(const_cast<Tensor&>(t)); }

std::shared_ptr<void> device_alloc(std::size_t bytes, const std::string& what) {
  void* memory = nullptr;
  const cudaError_t status = cudaMalloc(&memory, std::max<std::size_t>(bytes, 256));
  if (status != cudaSuccess) {
    (void)cudaGetLastError();
    throw Error("cuda backend: cannot allocate " + std::to_string(bytes) + " bytes of device memory for " + what +
                ": " + cudaGetErrorString(status));
  }
  return std::shared_ptr<void>(memory, [](void* p) { cudaFree(p); });
}

// Growable device memory for scratch data; growing frees the old block (cudaFree synchronises first).
class DeviceBuffer {
 public:
  void* get(std::size_t bytes, const char* what) {
    if (bytes > size_) {
      if (memory_) CUDA_CHECK(cudaDeviceSynchronize());  // queued kernels may still read the old block
      memory_.reset();
      memory_ = device_alloc(bytes, what);
      size_ = bytes;
    }
    return memory_.get();
  }

 private:
  std::shared_ptr<void> memory_;
  std::size_t size_ = 0;
};

// Packs several host arrays into one host block and copies it to the device in one cudaMemcpyAsync. From
// pageable memory that call returns once the bytes are staged, so the host block may be reused at once;
// the device block is reused by the next op, which is stream-ordered after this op's kernels.
class Staging {
 public:
  template <class T>
  std::size_t add(const T* data, std::size_t count) {
    const std::size_t offset = (host_.size() + 15) / 16 * 16;
    host_.resize(offset + count * sizeof(T));
    if (count > 0) std::memcpy(host_.data() + offset, data, count * sizeof(T));
    return offset;
  }
  template <class T>
  std::size_t add(const std::vector<T>& values) { return add(values.data(), values.size()); }
  // Copies everything added since the last upload; returns the device base address.
  char* upload(DeviceBuffer& device, cudaStream_t stream) {
    auto* base = static_cast<char*>(device.get(host_.size(), "staged indices"));
    if (!host_.empty())
      CUDA_CHECK(cudaMemcpyAsync(base, host_.data(), host_.size(), cudaMemcpyHostToDevice, stream));
    host_.clear();
    return base;
  }

 private:
  std::vector<char> host_;
};

template <class T>
T* at(char* base, std::size_t offset) { return reinterpret_cast<T*>(base + offset); }

// Attention's log-sum-exp must stay fp32 (bf16 would put ~0.4% errors into every recomputed probability):
// the one tensor kind zeros() does not make bf16. The name rule is the src/train/lora_graph.cpp naming.
bool keeps_f32(const std::string& name) {
  return name == "lse" || (name.size() > 4 && name.compare(name.size() - 4, 4, ".lse") == 0);
}

void check_positions(const char* what, std::span<const std::int32_t> positions, std::int64_t limit) {
  for (std::size_t t = 0; t < positions.size(); ++t)
    if (positions[t] < 0 || positions[t] >= limit)
      throw Error(std::string(what) + ": position " + std::to_string(positions[t]) + " is outside the table of " +
                  std::to_string(limit) + " positions");
}

void check_cache_layout(const TokenLayout& layout, std::int64_t slots, std::int64_t capacity) {
  if (layout.positions.size() != layout.slots.size()) throw Error("cuda backend: token layout sizes differ");
  for (std::size_t t = 0; t < layout.slots.size(); ++t)
    if (layout.slots[t] < 0 || layout.slots[t] >= slots || layout.positions[t] < 0 ||
        layout.positions[t] >= capacity)
      throw Error("kv cache: slot " + std::to_string(layout.slots[t]) + " position " +
                  std::to_string(layout.positions[t]) + " is outside the cache (" + std::to_string(slots) +
                  " slots x " + std::to_string(capacity) + " positions)");
}

// Per-row sequence bounds of a packed batch, after the checks of kernels/cpu/train_attention.cpp.
void sequence_bounds(const char* what, std::span<const std::int64_t> seq_starts, std::int64_t tokens,
                     std::vector<std::int64_t>& start, std::vector<std::int64_t>& end) {
  const std::string name(what);
  if (seq_starts.empty() || seq_starts.front() != 0 || seq_starts.back() != tokens)
    throw Error(name + ": seq_starts must run from 0 to tokens (" + std::to_string(tokens) + ")");
  start.assign(static_cast<std::size_t>(tokens), 0);
  end.assign(static_cast<std::size_t>(tokens), 0);
  for (std::size_t s = 0; s + 1 < seq_starts.size(); ++s) {
    if (seq_starts[s + 1] < seq_starts[s])
      throw Error(name + ": seq_starts decreases at sequence " + std::to_string(s));
    for (std::int64_t t = seq_starts[s]; t < seq_starts[s + 1]; ++t) {
      start[static_cast<std::size_t>(t)] = seq_starts[s];
      end[static_cast<std::size_t>(t)] = seq_starts[s + 1];
    }
  }
}

std::int32_t index32(std::int64_t value) {
  if (value < 0 || value > 0x7fffffff) throw Error("cuda backend: row index " + std::to_string(value) + " out of range");
  return static_cast<std::int32_t>(value);
}

// Cross-entropy chunking: rows x vocabulary columns of fp32 logits per GEMM (32 MiB at most).
constexpr std::int64_t kCeRows = 512;
constexpr std::int64_t kCeColumns = 16384;

class CudaBackend final : public Backend {
 public:
  std::string_view name() const override { return "cuda"; }

  Tensor zeros(std::vector<std::int64_t> shape, std::string name) override {
    std::int64_t count = 1;
    for (auto extent : shape) {
      if (extent < 0) throw Error("tensor " + name + ": negative extent");
      count *= extent;
    }
    const DType dtype = keeps_f32(name) ? DType::F32 : DType::BF16;
    const std::size_t bytes = static_cast<std::size_t>(count) * dtype_size(dtype);
    auto memory = device_alloc(bytes, "tensor " + name);
    CUDA_CHECK(cudaMemsetAsync(memory.get(), 0, bytes, stream_));
    void* data = memory.get();
    return Tensor(std::move(memory), data, dtype, Device::CUDA, std::move(shape), std::move(name));
  }

  Tensor upload(Tensor host) override {
    const float* values = host.f32();  // throws unless fp32 host memory
    std::vector<std::uint16_t> converted(static_cast<std::size_t>(host.numel()));
    for (std::size_t i = 0; i < converted.size(); ++i) converted[i] = f32_to_bf16(values[i]);
    const std::size_t bytes = converted.size() * sizeof(std::uint16_t);
    auto memory = device_alloc(bytes, "tensor " + host.name());
    CUDA_CHECK(cudaMemcpy(memory.get(), converted.data(), bytes, cudaMemcpyHostToDevice));
    void* data = memory.get();
    return Tensor(std::move(memory), data, DType::BF16, Device::CUDA, host.shape(), host.name());
  }

  void to_host(const Tensor& tensor, std::span<float> out) override {
    expect(out.size() == static_cast<std::size_t>(tensor.numel()), tensor, "host buffer has the wrong size");
    if (tensor.dtype() == DType::F32) {
      CUDA_CHECK(cudaMemcpy(out.data(), dev_f32(tensor), tensor.bytes(), cudaMemcpyDeviceToHost));
      return;
    }
    std::vector<std::uint16_t> bits(out.size());
    CUDA_CHECK(cudaMemcpy(bits.data(), dev(tensor), tensor.bytes(), cudaMemcpyDeviceToHost));
    for (std::size_t i = 0; i < bits.size(); ++i) out[i] = bf16_to_f32(bits[i]);
  }

  void embedding(const Tensor& table, std::span<const TokenId> ids, Tensor& out) override {
    expect(rows_of(out) == static_cast<std::int64_t>(ids.size()) && row_size(out) == table.dim(1), out,
           "embedding output must be [tokens, hidden]");
    for (const TokenId id : ids)
      if (id < 0 || id >= table.dim(0))
        throw InputError("token id " + std::to_string(id) + " is outside the vocabulary [0, " +
                         std::to_string(table.dim(0)) + ")");
    const std::size_t offset = staging_.add(ids.data(), ids.size());
    char* base = staging_.upload(staged_, stream_);
    cuda::launch_gather_rows({dev(table), at<std::int32_t>(base, offset), dev(out),
                              static_cast<std::int64_t>(ids.size()), table.dim(1), stream_});
  }

  void rms_norm(const Tensor& x, const Tensor& weight, float eps, Tensor& out) override {
    expect(row_size(x) == weight.numel() && out.numel() == x.numel(), x, "does not match norm weight " + weight.name());
    cuda::launch_rms_norm({dev(x), dev(weight), dev(out), rows_of(x), row_size(x), eps, stream_});
  }

  void linear(const Tensor& x, const Tensor& weight, const Tensor* bias, Tensor& out) override {
    const std::int64_t m = rows_of(x), k = row_size(x), n = weight.dim(0);
    expect(weight.rank() == 2 && weight.dim(1) == k, x,
           "inner size does not match weight " + weight.name() + " " + weight.shape_string());
    expect(rows_of(out) == m && row_size(out) == n, out,
           "linear output must be [" + std::to_string(m) + ", " + std::to_string(n) + "]");
    if (bias != nullptr) expect(bias->numel() == n, *bias, "bias size must equal the output features");
    gemm_.run({dev(x), false, k, dev(weight), true, k, dev(out), cuda::GemmOut::BF16, n,
               bias ? dev(*bias) : nullptr, m, n, k, 1.0f, 0.0f, stream_});
  }

  void rope(Tensor& x, const TokenLayout& layout, const Tensor& cos, const Tensor& sin) override {
    expect(x.rank() == 3 && x.dim(0) == static_cast<std::int64_t>(layout.tokens()) && cos.dim(1) * 2 == x.dim(2), x,
           "rope input must be [tokens, heads, head_dim]");
    rotate("rope", x, layout.positions, cos, sin, false);
  }

  void kv_store(const Tensor& k, const Tensor& v, const TokenLayout& layout, Tensor& k_cache,
                Tensor& v_cache) override {
    expect(k_cache.rank() == 4 && k.rank() == 3 && k.dim(1) == k_cache.dim(2) && k.dim(2) == k_cache.dim(3), k,
           "does not match the cache " + k_cache.shape_string());
    expect(v.shape() == k.shape() && v_cache.shape() == k_cache.shape(), v, "value and key shapes differ");
    expect(k.dim(0) == static_cast<std::int64_t>(layout.tokens()), k, "one row per token of the layout is needed");
    check_cache_layout(layout, k_cache.dim(0), k_cache.dim(1));
    const std::size_t slots = staging_.add(layout.slots), positions = staging_.add(layout.positions);
    char* base = staging_.upload(staged_, stream_);
    cuda::launch_kv_store({dev(k), dev(v), dev(k_cache), dev(v_cache), at<std::int32_t>(base, slots),
                           at<std::int32_t>(base, positions), k.dim(0), k.dim(1) * k.dim(2), k_cache.dim(1),
                           stream_});
  }

  void attention(const Tensor& q, const Tensor& k_cache, const Tensor& v_cache, const TokenLayout& layout,
                 float scale, Tensor& out) override {
    expect(q.rank() == 3 && k_cache.rank() == 4 && q.dim(2) == k_cache.dim(3) && q.dim(1) % k_cache.dim(2) == 0, q,
           "query heads do not match the cache " + k_cache.shape_string());
    expect(v_cache.shape() == k_cache.shape(), v_cache, "value and key caches differ");
    expect(out.numel() == q.numel(), out, "attention output must match the query");
    expect(q.dim(0) == static_cast<std::int64_t>(layout.tokens()), q, "one row per token of the layout is needed");
    check_cache_layout(layout, k_cache.dim(0), k_cache.dim(1));
    std::vector<std::int64_t> key_row0(layout.tokens());
    std::vector<std::int32_t> context(layout.tokens());
    for (std::size_t t = 0; t < layout.tokens(); ++t) {
      key_row0[t] = static_cast<std::int64_t>(layout.slots[t]) * k_cache.dim(1);
      context[t] = layout.positions[t] + 1;
    }
    const std::size_t rows = staging_.add(key_row0), contexts = staging_.add(context);
    char* base = staging_.upload(staged_, stream_);
    cuda::launch_attention_forward({dev(q), dev(k_cache), dev(v_cache), dev(out), nullptr,
                                    at<std::int64_t>(base, rows), at<std::int32_t>(base, contexts), q.dim(0),
                                    q.dim(1), k_cache.dim(2), q.dim(2), scale, stream_});
  }

  void swiglu(const Tensor& gate, const Tensor& up, Tensor& out) override {
    expect(gate.numel() == up.numel() && out.numel() == gate.numel(), gate, "swiglu operands differ in size");
    cuda::launch_swiglu({dev(gate), dev(up), dev(out), gate.numel(), stream_});
  }

  void add_inplace(Tensor& x, const Tensor& y) override {
    expect(x.numel() == y.numel(), x, "cannot add " + y.name() + " " + y.shape_string());
    cuda::launch_add({dev(x), dev(y), x.numel(), stream_});
  }

  void gather_rows(const Tensor& x, std::span<const std::int64_t> rows, Tensor& out) override {
    expect(rows_of(out) == static_cast<std::int64_t>(rows.size()) && row_size(out) == row_size(x), out,
           "gather output has the wrong shape");
    std::vector<std::int32_t> index(rows.size());
    for (std::size_t i = 0; i < rows.size(); ++i) {
      expect(rows[i] >= 0 && rows[i] < rows_of(x), x, "gather row out of range");
      index[i] = index32(rows[i]);
    }
    const std::size_t offset = staging_.add(index);
    char* base = staging_.upload(staged_, stream_);
    cuda::launch_gather_rows({dev(x), at<std::int32_t>(base, offset), dev(out), static_cast<std::int64_t>(rows.size()),
                              row_size(x), stream_});
  }

  void matmul(const Tensor& a, bool transpose_a, const Tensor& b, bool transpose_b, float alpha, float beta,
              Tensor& c) override {
    const std::int64_t a_rows = rows_of(a), a_cols = row_size(a), b_rows = rows_of(b), b_cols = row_size(b);
    const std::int64_t m = transpose_a ? a_cols : a_rows, k = transpose_a ? a_rows : a_cols;
    const std::int64_t k_b = transpose_b ? b_cols : b_rows, n = transpose_b ? b_rows : b_cols;
    expect(k == k_b, a, "matmul inner sizes differ from " + b.name() + " " + b.shape_string());
    expect(rows_of(c) == m && row_size(c) == n, c,
           "matmul output must be [" + std::to_string(m) + ", " + std::to_string(n) + "]");
    gemm_.run({dev(a), transpose_a, a_cols, dev(b), transpose_b, b_cols, dev(c), cuda::GemmOut::BF16, n, nullptr, m,
               n, k, alpha, beta, stream_});
  }

  void scale(Tensor& x, float factor) override { cuda::launch_scale({dev(x), x.numel(), factor, stream_}); }

  void dropout(const Tensor& x, float p, std::uint64_t key, Tensor& out) override {
    expect(out.numel() == x.numel(), out, "dropout output must match its input");
    cuda::launch_dropout({dev(x), dev(out), x.numel(), p, key, stream_});
  }

  void rms_norm_backward(const Tensor& x, const Tensor& weight, const Tensor& dy, float eps, Tensor& dx) override {
    expect(dy.numel() == x.numel() && dx.numel() == x.numel() && row_size(x) == weight.numel(), x,
           "rms_norm_backward operands differ");
    cuda::launch_rms_norm_backward({dev(x), dev(weight), dev(dy), dev(dx), rows_of(x), row_size(x), eps, stream_});
  }

  void rope_backward(Tensor& grad, std::span<const std::int32_t> positions, const Tensor& cos,
                     const Tensor& sin) override {
    expect(grad.rank() == 3 && grad.dim(0) == static_cast<std::int64_t>(positions.size()) &&
               cos.dim(1) * 2 == grad.dim(2),
           grad, "rope_backward input must be [tokens, heads, head_dim]");
    rotate("rope_backward", grad, positions, cos, sin, true);
  }

  void swiglu_backward(const Tensor& gate, const Tensor& up, const Tensor& dout, Tensor& dgate, Tensor& dup) override {
    expect(gate.numel() == up.numel() && dout.numel() == gate.numel() && dgate.numel() == gate.numel() &&
               dup.numel() == gate.numel(),
           gate, "swiglu_backward operands differ in size");
    cuda::launch_swiglu_backward({dev(gate), dev(up), dev(dout), dev(dgate), dev(dup), gate.numel(), stream_});
  }

  void attention_train(const Tensor& q, const Tensor& k, const Tensor& v, std::span<const std::int64_t> seq_starts,
                       float scale_factor, Tensor& out, Tensor& lse) override {
    check_train_shapes(q, k, v);
    expect(out.numel() == q.numel(), out, "attention_train output must match the query");
    expect(lse.numel() == q.dim(0) * q.dim(1), lse, "lse must be [tokens, heads]");
    std::vector<std::int64_t> start, end;
    sequence_bounds("attention_train", seq_starts, q.dim(0), start, end);
    std::vector<std::int32_t> context(start.size());
    for (std::size_t t = 0; t < start.size(); ++t) context[t] = index32(static_cast<std::int64_t>(t) - start[t] + 1);
    const std::size_t rows = staging_.add(start), contexts = staging_.add(context);
    char* base = staging_.upload(staged_, stream_);
    cuda::launch_attention_forward({dev(q), dev(k), dev(v), dev(out), dev_f32(lse), at<std::int64_t>(base, rows),
                                    at<std::int32_t>(base, contexts), q.dim(0), q.dim(1), k.dim(1), q.dim(2),
                                    scale_factor, stream_});
  }

  void attention_backward(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& out, const Tensor& lse,
                          const Tensor& dout, std::span<const std::int64_t> seq_starts, float scale_factor,
                          Tensor& dq, Tensor& dk, Tensor& dv) override {
    check_train_shapes(q, k, v);
    expect(dq.numel() == q.numel() && dk.numel() == k.numel() && dv.numel() == v.numel(), dq,
           "attention_backward gradients must match their inputs");
    expect(out.numel() == q.numel() && dout.numel() == q.numel() && lse.numel() == q.dim(0) * q.dim(1), out,
           "attention_backward: out, dout and lse must match the query");
    std::vector<std::int64_t> start, end;
    sequence_bounds("attention_backward", seq_starts, q.dim(0), start, end);
    const std::size_t starts = staging_.add(start), ends = staging_.add(end);
    char* base = staging_.upload(staged_, stream_);
    auto* delta = static_cast<float*>(
        scratch_.get(static_cast<std::size_t>(q.dim(0) * q.dim(1)) * sizeof(float), "attention delta"));
    cuda::launch_attention_backward({dev(q), dev(k), dev(v), dev(out), dev_f32(lse), dev(dout), dev(dq), dev(dk),
                                     dev(dv), delta, at<std::int64_t>(base, starts), at<std::int64_t>(base, ends),
                                     q.dim(0), q.dim(1), k.dim(1), q.dim(2), scale_factor, stream_});
  }

  CrossEntropyResult cross_entropy(const Tensor& hidden, const Tensor& lm_head, std::span<const std::int32_t> targets,
                                   float grad_scale, Tensor* dhidden) override;

 private:
  void rotate(const char* what, Tensor& x, std::span<const std::int32_t> positions, const Tensor& cos,
              const Tensor& sin, bool inverse) {
    expect(sin.shape() == cos.shape(), sin, "rope tables differ in shape");
    check_positions(what, positions, cos.dim(0));
    const std::size_t offset = staging_.add(positions.data(), positions.size());
    char* base = staging_.upload(staged_, stream_);
    cuda::launch_rope({dev(x), at<std::int32_t>(base, offset), dev(cos), dev(sin), x.dim(0), x.dim(1), x.dim(2),
                       inverse, stream_});
  }

  static void check_train_shapes(const Tensor& q, const Tensor& k, const Tensor& v) {
    expect(q.rank() == 3 && k.rank() == 3 && q.dim(2) == k.dim(2) && q.dim(1) % k.dim(1) == 0 && k.dim(0) == q.dim(0),
           q, "attention_train: query and key heads do not match");
    expect(v.shape() == k.shape(), v, "attention_train: value and key shapes differ");
  }

  cudaStream_t stream_ = nullptr;  // the legacy default stream (see the top of the file)
  cuda::Gemm gemm_;
  Staging staging_;
  DeviceBuffer staged_, scratch_, ce_scratch_;
};

// Walks the counted rows kCeRows at a time and the vocabulary kCeColumns at a time (cross_entropy.cu has the
// design). Per-row losses come back to the host and are summed in row order, as the CPU backend sums them.
Backend::CrossEntropyResult CudaBackend::cross_entropy(const Tensor& hidden, const Tensor& lm_head,
                                                       std::span<const std::int32_t> targets, float grad_scale,
                                                       Tensor* dhidden) {
  const std::int64_t tokens = rows_of(hidden), width = row_size(hidden), vocab = lm_head.dim(0);
  expect(tokens == static_cast<std::int64_t>(targets.size()) && lm_head.rank() == 2 && width == lm_head.dim(1),
         hidden, "cross_entropy: hidden rows must match the targets and the head's width");
  if (dhidden != nullptr) expect(dhidden->numel() == hidden.numel(), *dhidden, "dhidden must match hidden");
  std::vector<std::int32_t> rows, row_targets;
  for (std::int64_t t = 0; t < tokens; ++t) {
    const std::int32_t target = targets[static_cast<std::size_t>(t)];
    if (target >= vocab)
      throw Error("cross_entropy: target " + std::to_string(target) + " of row " + std::to_string(t) +
                  " is outside the vocabulary of " + std::to_string(vocab));
    if (target >= 0) {
      rows.push_back(index32(t));
      row_targets.push_back(target);
    }
  }
  if (dhidden != nullptr) CUDA_CHECK(cudaMemsetAsync(dev(*dhidden), 0, dhidden->bytes(), stream_));
  const auto counted = static_cast<std::int64_t>(rows.size());
  if (counted == 0) return {};

  const std::size_t rows_at = staging_.add(rows), targets_at = staging_.add(row_targets);
  char* staged = staging_.upload(staged_, stream_);
  const std::int64_t chunk_rows = std::min(kCeRows, counted), chunk_cols = std::min(kCeColumns, vocab);
  // One scratch block, carved into 256-byte aligned pieces.
  std::size_t used = 0;
  const auto carve = [&](std::size_t bytes) {
    const std::size_t offset = used;
    used += (bytes + 255) / 256 * 256;
    return offset;
  };
  const auto r = static_cast<std::size_t>(chunk_rows);
  const std::size_t logits_at = carve(r * static_cast<std::size_t>(chunk_cols) * sizeof(float));
  const std::size_t grad_at = carve(dhidden ? r * static_cast<std::size_t>(chunk_cols) * sizeof(bf16) : 0);
  const std::size_t gathered_at = carve(r * static_cast<std::size_t>(width) * sizeof(bf16));
  const std::size_t dgathered_at = carve(dhidden ? r * static_cast<std::size_t>(width) * sizeof(float) : 0);
  const std::size_t max_at = carve(r * sizeof(float)), target_logit_at = carve(r * sizeof(float));
  const std::size_t sum_at = carve(r * sizeof(double)), lse_at = carve(r * sizeof(double));
  const std::size_t loss_at = carve(r * sizeof(double));
  auto* base = static_cast<char*>(ce_scratch_.get(used, "cross_entropy scratch"));
  auto* logits = at<float>(base, logits_at);
  auto* grad = at<bf16>(base, grad_at);
  auto* gathered = at<bf16>(base, gathered_at);
  auto* dgathered = at<float>(base, dgathered_at);
  auto* running_max = at<float>(base, max_at);
  auto* target_logit = at<float>(base, target_logit_at);
  auto* running_sum = at<double>(base, sum_at);
  auto* lse = at<double>(base, lse_at);
  auto* loss = at<double>(base, loss_at);
  const bf16* head = dev(lm_head);

  std::vector<double> row_loss(rows.size());
  const std::vector<float> minus_inf(r, -INFINITY);
  for (std::int64_t first = 0; first < counted; first += chunk_rows) {
    const std::int64_t n = std::min(chunk_rows, counted - first);
    const std::int32_t* chunk_index = at<std::int32_t>(staged, rows_at) + first;
    const std::int32_t* chunk_targets = at<std::int32_t>(staged, targets_at) + first;
    cuda::launch_gather_rows({dev(hidden), chunk_index, gathered, n, width, stream_});
    CUDA_CHECK(cudaMemcpyAsync(running_max, minus_inf.data(), static_cast<std::size_t>(n) * sizeof(float),
                               cudaMemcpyHostToDevice, stream_));
    CUDA_CHECK(cudaMemsetAsync(running_sum, 0, static_cast<std::size_t>(n) * sizeof(double), stream_));
    const auto logits_of = [&](std::int64_t v0, std::int64_t columns) {
      gemm_.run({gathered, false, width, head + v0 * width, true, width, logits, cuda::GemmOut::F32, columns, nullptr,
                 n, columns, width, 1.0f, 0.0f, stream_});
    };
    for (std::int64_t v0 = 0; v0 < vocab; v0 += chunk_cols) {
      const std::int64_t columns = std::min(chunk_cols, vocab - v0);
      logits_of(v0, columns);
      cuda::launch_ce_chunk_stats({logits, chunk_targets, running_max, running_sum, target_logit, n, columns, v0,
                                   stream_});
    }
    cuda::launch_ce_finish({running_max, running_sum, target_logit, lse, loss, n, stream_});
    if (dhidden != nullptr) {
      for (std::int64_t v0 = 0; v0 < vocab; v0 += chunk_cols) {
        const std::int64_t columns = std::min(chunk_cols, vocab - v0);
        logits_of(v0, columns);
        cuda::launch_ce_chunk_grad({logits, chunk_targets, lse, grad, n, columns, v0, grad_scale, stream_});
        gemm_.run({grad, false, columns, head + v0 * width, false, width, dgathered, cuda::GemmOut::F32, width,
                   nullptr, n, width, columns, 1.0f, v0 == 0 ? 0.0f : 1.0f, stream_});
      }
      cuda::launch_scatter_rows_f32({dgathered, chunk_index, dev(*dhidden), n, width, stream_});
    }
    // Synchronous: the scratch and the staged row indices are reused by the next chunk and the next op.
    CUDA_CHECK(cudaMemcpy(row_loss.data() + first, loss, static_cast<std::size_t>(n) * sizeof(double),
                          cudaMemcpyDeviceToHost));
  }
  double total = 0.0;
  for (const double l : row_loss) total += l;
  return {total, counted};
}

}  // namespace

int cuda_device_count() {
  int count = 0;
  if (cudaGetDeviceCount(&count) != cudaSuccess) {
    (void)cudaGetLastError();  // no driver or no device: not an error for "auto"
    return 0;
  }
  return count;
}

std::unique_ptr<Backend> make_cuda_backend() {
  int count = 0;
  const cudaError_t status = cudaGetDeviceCount(&count);
  if (status != cudaSuccess || count == 0) {
    (void)cudaGetLastError();
    throw InputError(std::string("backend \"cuda\": no CUDA device is visible (") +
                     (status != cudaSuccess ? cudaGetErrorString(status) : "no devices") +
                     "); use --backend cpu or auto");
  }
  // One GPU per rank on the node, chosen by local rank (slearn/device_binding.hpp), before anything is
  // allocated; InputError when the node has more ranks than visible GPUs.
  const int device = choose_local_device(read_local_rank_info(), count);
  CUDA_CHECK(cudaSetDevice(device));
  cudaDeviceProp properties{};
  CUDA_CHECK(cudaGetDeviceProperties(&properties, device));
  if (properties.major < 8)
    throw InputError("backend \"cuda\": device " + std::to_string(device) + " (" + properties.name +
                     ") has compute capability " + std::to_string(properties.major) + "." +
                     std::to_string(properties.minor) + "; the bf16 kernels need 8.0 or newer");
  return std::make_unique<CudaBackend>();
}

}  // namespace slearn
