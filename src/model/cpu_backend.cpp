// The CPU backend: checks shapes, then hands raw pointers to the kernels in kernels/cpu.
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <fstream>
#include <sstream>
#include <vector>

#include <cblas.h>

#include "cpu/cpu_kernels.hpp"
#include "cpu/cpu_train_kernels.hpp"
#include "dist/host_gradient_sum.hpp"
#include "slearn/backend.hpp"
#include "slearn/error.hpp"
#include "slearn/random_fill.hpp"
#ifdef SLEARN_WITH_CUDA
#include "cuda/cuda_backend.hpp"
#endif

namespace slearn {
namespace {

void expect(bool condition, const Tensor& tensor, const std::string& what) {
  if (!condition) throw Error("cpu backend: tensor " + tensor.name() + " " + tensor.shape_string() + ": " + what);
}

std::int64_t rows_of(const Tensor& t) { return t.rank() == 0 ? 1 : t.dim(0); }
std::int64_t row_size(const Tensor& t) { return t.numel() / std::max<std::int64_t>(rows_of(t), 1); }

// A weight as fp32: its own data, or (a bf16 weight, cpu_weights) widened into `scratch`, for the training
// ops that hand whole weights to sgemm (matmul's base-weight products, the fused LM-head loss).
const float* widened(const Tensor& w, std::vector<float>& scratch) {
  if (w.dtype() != DType::BF16) return w.f32();
  scratch.resize(static_cast<std::size_t>(w.numel()));
  const std::uint16_t* source = w.bf16();
  const std::int64_t count = w.numel();
#pragma omp parallel for simd schedule(static) if (count > (1 << 16))
  for (std::int64_t i = 0; i < count; ++i) scratch[static_cast<std::size_t>(i)] = bf16_to_f32(source[i]);
  return scratch.data();
}

class CpuBackend final : public Backend {
 public:
  explicit CpuBackend(CpuWeights weights) : weights_(weights) {}
  std::string_view name() const override { return "cpu"; }

  Tensor zeros(std::vector<std::int64_t> shape, std::string name) override {
    return Tensor::host_f32(std::move(shape), std::move(name));
  }
  Tensor zeros_f32(std::vector<std::int64_t> shape, std::string name) override {
    return Tensor::host_f32(std::move(shape), std::move(name));
  }
  Tensor upload(Tensor host) override { return host; }
  Tensor upload_weight(Tensor host, DType stored) override {
    const bool bf16 = weights_ == CpuWeights::BF16 || (weights_ == CpuWeights::Auto && stored == DType::BF16);
    if (!bf16 || host.dtype() != DType::F32) return host;
    Tensor out = Tensor::host_bf16(host.shape(), host.name());
    const float* source = host.f32();
    std::uint16_t* target = out.bf16();
    const std::int64_t count = host.numel();
#pragma omp parallel for schedule(static) if (count > (1 << 16))
    for (std::int64_t i = 0; i < count; ++i) target[i] = f32_to_bf16(source[i]);
    return out;
  }
  void fill_random(Tensor& t, std::uint64_t key, float scale) override {
    float* data = t.f32();
    const std::int64_t count = t.numel();
#pragma omp parallel for if (count > (1 << 16))
    for (std::int64_t i = 0; i < count; ++i)
      data[i] = bf16_to_f32(f32_to_bf16(random_fill_value(key, static_cast<std::uint64_t>(i), scale)));
  }
  // MemAvailable of /proc/meminfo (what the kernel could give without swapping), else the free pages.
  std::size_t free_memory_bytes() override {
    std::ifstream meminfo("/proc/meminfo");
    std::string line;
    while (std::getline(meminfo, line)) {
      std::istringstream fields(line);
      std::string key;
      std::size_t kib = 0;
      if (fields >> key >> kib && key == "MemAvailable:") return kib * 1024;
    }
    const long pages = sysconf(_SC_AVPHYS_PAGES), page = sysconf(_SC_PAGESIZE);
    return pages > 0 && page > 0 ? static_cast<std::size_t>(pages) * static_cast<std::size_t>(page) : 0;
  }
  void to_host(const Tensor& tensor, std::span<float> out) override {
    expect(out.size() == static_cast<std::size_t>(tensor.numel()), tensor, "host buffer has the wrong size");
    if (tensor.dtype() == DType::BF16) {
      const std::uint16_t* source = tensor.bf16();
      for (std::size_t i = 0; i < out.size(); ++i) out[i] = bf16_to_f32(source[i]);
      return;
    }
    std::memcpy(out.data(), tensor.f32(), tensor.bytes());
  }

  void embedding(const Tensor& table, std::span<const TokenId> ids, Tensor& out) override {
    expect(rows_of(out) == static_cast<std::int64_t>(ids.size()) && row_size(out) == table.dim(1), out,
           "embedding output must be [tokens, hidden]");
    const bool bf16 = table.dtype() == DType::BF16;
    cpu::embedding({bf16 ? nullptr : table.f32(), ids.data(), out.f32(), static_cast<std::int64_t>(ids.size()),
                    table.dim(1), table.dim(0), bf16 ? table.bf16() : nullptr});
  }

  void rms_norm(const Tensor& x, const Tensor& weight, float eps, Tensor& out) override {
    expect(row_size(x) == weight.numel() && out.numel() == x.numel(), x, "does not match norm weight " + weight.name());
    cpu::rms_norm({x.f32(), weight.f32(), out.f32(), rows_of(x), row_size(x), eps});
  }

  void linear(const Tensor& x, const Tensor& weight, const Tensor* bias, Tensor& out) override {
    const std::int64_t m = rows_of(x), k = row_size(x), n = weight.dim(0);
    expect(weight.dim(1) == k, x, "inner size does not match weight " + weight.name() + " " + weight.shape_string());
    expect(rows_of(out) == m && row_size(out) == n, out, "linear output must be [" + std::to_string(m) + ", " +
                                                             std::to_string(n) + "]");
    if (bias != nullptr) expect(bias->numel() == n, *bias, "bias size must equal the output features");
    const bool bf16 = weight.dtype() == DType::BF16;
    cpu::linear({x.f32(), bf16 ? nullptr : weight.f32(), bias ? bias->f32() : nullptr, out.f32(), m, n, k, 0.0f,
                 bf16 ? weight.bf16() : nullptr});
  }

  void rope(Tensor& x, const TokenLayout& layout, const Tensor& cos, const Tensor& sin) override {
    expect(x.rank() == 3 && x.dim(0) == static_cast<std::int64_t>(layout.tokens()) && cos.dim(1) * 2 == x.dim(2), x,
           "rope input must be [tokens, heads, head_dim]");
    cpu::rope({x.f32(), layout.positions.data(), cos.f32(), sin.f32(), x.dim(0), x.dim(1), x.dim(2), cos.dim(0)});
  }

  void kv_store(const Tensor& k, const Tensor& v, const TokenLayout& layout, Tensor& k_cache,
                Tensor& v_cache) override {
    expect(k_cache.rank() == 4 && k.rank() == 3 && k.dim(1) == k_cache.dim(2) && k.dim(2) == k_cache.dim(3), k,
           "does not match the cache " + k_cache.shape_string());
    cpu::kv_store({k.f32(), v.f32(), k_cache.f32(), v_cache.f32(), layout.slots.data(), layout.positions.data(),
                   k.dim(0), k.dim(1), k.dim(2), k_cache.dim(1), k_cache.dim(0)});
  }

  void attention(const Tensor& q, const Tensor& k_cache, const Tensor& v_cache, const TokenLayout& layout,
                 float scale, Tensor& out) override {
    expect(q.rank() == 3 && q.dim(2) == k_cache.dim(3) && q.dim(1) % k_cache.dim(2) == 0, q,
           "query heads do not match the cache " + k_cache.shape_string());
    expect(out.numel() == q.numel(), out, "attention output must match the query");
    cpu::causal_attention({q.f32(), k_cache.f32(), v_cache.f32(), out.f32(), layout.slots.data(),
                           layout.positions.data(), q.dim(0), q.dim(1), k_cache.dim(2), q.dim(2), k_cache.dim(1),
                           scale});
  }

  void swiglu(const Tensor& gate, const Tensor& up, Tensor& out) override {
    expect(gate.numel() == up.numel() && out.numel() == gate.numel(), gate, "swiglu operands differ in size");
    cpu::swiglu({gate.f32(), up.f32(), out.f32(), gate.numel()});
  }

  void add_inplace(Tensor& x, const Tensor& y) override {
    expect(x.numel() == y.numel(), x, "cannot add " + y.name() + " " + y.shape_string());
    cpu::add_inplace(x.f32(), y.f32(), x.numel());
  }

  void gather_rows(const Tensor& x, std::span<const std::int64_t> rows, Tensor& out) override {
    const std::int64_t width = row_size(x);
    expect(rows_of(out) == static_cast<std::int64_t>(rows.size()) && row_size(out) == width, out,
           "gather output has the wrong shape");
    for (std::size_t i = 0; i < rows.size(); ++i) {
      expect(rows[i] >= 0 && rows[i] < rows_of(x), x, "gather row out of range");
      std::memcpy(out.f32() + static_cast<std::int64_t>(i) * width, x.f32() + rows[i] * width,
                  static_cast<std::size_t>(width) * sizeof(float));
    }
  }

  void add_rms_norm(Tensor& x, const Tensor& y, const Tensor& weight, float eps, Tensor& out) override {
    add_inplace(x, y);
    rms_norm(x, weight, eps, out);
  }

  void rope_split_qkv(const Tensor& qkv, const TokenLayout& layout, const Tensor& cos, const Tensor& sin, Tensor& q,
                      Tensor& k, Tensor& v) override {
    const std::int64_t n = rows_of(qkv), q_width = row_size(q), kv_width = row_size(k);
    expect(q.rank() == 3 && k.rank() == 3 && v.shape() == k.shape() && rows_of(q) == n && rows_of(k) == n &&
               row_size(qkv) == q_width + 2 * kv_width,
           qkv, "rope_split_qkv: the fused projection must be [tokens, q + k + v] of " + q.name() + " " +
                    q.shape_string() + " and " + k.name() + " " + k.shape_string());
    const float* in = qkv.f32();
    float *qd = q.f32(), *kd = k.f32(), *vd = v.f32();
    const std::size_t qb = static_cast<std::size_t>(q_width) * sizeof(float);
    const std::size_t kb = static_cast<std::size_t>(kv_width) * sizeof(float);
    for (std::int64_t t = 0; t < n; ++t) {
      const float* row = in + t * (q_width + 2 * kv_width);
      std::memcpy(qd + t * q_width, row, qb);
      std::memcpy(kd + t * kv_width, row + q_width, kb);
      std::memcpy(vd + t * kv_width, row + q_width + kv_width, kb);
    }
    rope(q, layout, cos, sin);
    rope(k, layout, cos, sin);
  }

  void swiglu_fused(const Tensor& gate_up, Tensor& out) override {
    const std::int64_t n = rows_of(gate_up), inter = row_size(out);
    expect(rows_of(out) == n && row_size(gate_up) == 2 * inter, gate_up,
           "swiglu_fused: input must be [tokens, 2 x " + std::to_string(inter) + "]");
    const float* in = gate_up.f32();
    float* o = out.f32();
    for (std::int64_t t = 0; t < n; ++t)
      cpu::swiglu({in + t * 2 * inter, in + t * 2 * inter + inter, o + t * inter, inter});
  }

  void sample(const Tensor& logits, const SamplingOptions& options, std::span<const std::uint64_t> streams,
              std::span<const std::uint64_t> steps, std::span<TokenId> out) override {
    const std::int64_t rows = rows_of(logits), vocab = row_size(logits);
    expect(static_cast<std::int64_t>(out.size()) == rows && streams.size() == out.size() &&
               steps.size() == out.size(),
           logits, "sample: one stream, step and output per row is needed");
    const float* data = logits.f32();
    for (std::int64_t r = 0; r < rows; ++r) {
      const auto i = static_cast<std::size_t>(r);
      out[i] = sample_token(std::span(data + r * vocab, static_cast<std::size_t>(vocab)), options, streams[i],
                            steps[i]);
    }
  }

  void matmul(const Tensor& a, bool transpose_a, const Tensor& b, bool transpose_b, float alpha, float beta,
              Tensor& c) override {
    const std::int64_t a_rows = rows_of(a), a_cols = row_size(a), b_rows = rows_of(b), b_cols = row_size(b);
    const std::int64_t m = transpose_a ? a_cols : a_rows, k = transpose_a ? a_rows : a_cols;
    const std::int64_t k_b = transpose_b ? b_cols : b_rows, n = transpose_b ? b_rows : b_cols;
    expect(k == k_b, a, "matmul inner sizes differ from " + b.name() + " " + b.shape_string());
    expect(rows_of(c) == m && row_size(c) == n, c, "matmul output must be [" + std::to_string(m) + ", " +
                                                       std::to_string(n) + "]");
    if (m == 0 || n == 0) return;
    cblas_sgemm(CblasRowMajor, transpose_a ? CblasTrans : CblasNoTrans, transpose_b ? CblasTrans : CblasNoTrans,
                static_cast<blasint>(m), static_cast<blasint>(n), static_cast<blasint>(k), alpha, a.f32(),
                static_cast<blasint>(a_cols), widened(b, weight_scratch_), static_cast<blasint>(b_cols), beta, c.f32(),
                static_cast<blasint>(n));
  }

  void scale(Tensor& x, float factor) override {
    float* data = x.f32();
    const std::int64_t count = x.numel();
#pragma omp parallel for simd if (count > (1 << 15))
    for (std::int64_t i = 0; i < count; ++i) data[i] *= factor;
  }

  void dropout(const Tensor& x, float p, const DropoutMask& mask, Tensor& out) override {
    expect(out.numel() == x.numel(), out, "dropout output must match its input");
    const std::int64_t width = x.numel() == 0 ? 0 : x.numel() / x.dim(0);
    expect(mask.columns == 0 || (mask.first_column >= 0 && mask.first_column + width <= mask.columns), x,
           "dropout: the column slice does not fit the wider matrix");
    cpu::dropout(x.f32(), out.f32(), x.numel(), p,
                 {mask.key, width, mask.columns == 0 ? width : mask.columns, mask.first_column});
  }

  void rms_norm_backward(const Tensor& x, const Tensor& weight, const Tensor& dy, float eps, Tensor& dx) override {
    expect(dy.numel() == x.numel() && dx.numel() == x.numel() && row_size(x) == weight.numel(), x,
           "rms_norm_backward operands differ");
    cpu::rms_norm_backward({x.f32(), weight.f32(), dy.f32(), dx.f32(), rows_of(x), row_size(x), eps});
  }

  void rope_backward(Tensor& grad, std::span<const std::int32_t> positions, const Tensor& cos,
                     const Tensor& sin) override {
    expect(grad.rank() == 3 && grad.dim(0) == static_cast<std::int64_t>(positions.size()), grad,
           "rope_backward input must be [tokens, heads, head_dim]");
    cpu::rope_backward({grad.f32(), positions.data(), cos.f32(), sin.f32(), grad.dim(0), grad.dim(1), grad.dim(2),
                        cos.dim(0)});
  }

  void swiglu_backward(const Tensor& gate, const Tensor& up, const Tensor& dout, Tensor& dgate, Tensor& dup) override {
    expect(gate.numel() == up.numel() && dout.numel() == gate.numel() && dgate.numel() == gate.numel() &&
               dup.numel() == gate.numel(),
           gate, "swiglu_backward operands differ in size");
    cpu::swiglu_backward({gate.f32(), up.f32(), dout.f32(), dgate.f32(), dup.f32(), gate.numel()});
  }

  void attention_train(const Tensor& q, const Tensor& k, const Tensor& v, std::span<const std::int64_t> seq_starts,
                       float scale_factor, Tensor& out, Tensor& lse) override {
    expect(q.rank() == 3 && k.rank() == 3 && q.dim(2) == k.dim(2) && q.dim(1) % k.dim(1) == 0, q,
           "attention_train: query and key heads do not match");
    cpu::attention_forward_train({q.f32(), k.f32(), v.f32(), out.f32(), lse.f32(), seq_starts.data(),
                                  static_cast<std::int64_t>(seq_starts.size()) - 1, q.dim(0), q.dim(1), k.dim(1),
                                  q.dim(2), scale_factor});
  }

  void attention_backward(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& out, const Tensor& lse,
                          const Tensor& dout, std::span<const std::int64_t> seq_starts, float scale_factor,
                          Tensor& dq, Tensor& dk, Tensor& dv) override {
    expect(dq.numel() == q.numel() && dk.numel() == k.numel() && dv.numel() == v.numel(), dq,
           "attention_backward gradients must match their inputs");
    cpu::attention_backward({q.f32(), k.f32(), v.f32(), out.f32(), lse.f32(), dout.f32(), dq.f32(), dk.f32(),
                             dv.f32(), seq_starts.data(), static_cast<std::int64_t>(seq_starts.size()) - 1, q.dim(0),
                             q.dim(1), k.dim(1), q.dim(2), scale_factor});
  }

  void write(Tensor& t, std::span<const float> values) override {
    expect(static_cast<std::int64_t>(values.size()) == t.numel(), t, "write: " + std::to_string(values.size()) +
                                                                          " values for this tensor");
    std::copy(values.begin(), values.end(), t.f32());
  }
  void zero(Tensor& t) override { std::fill_n(t.f32(), t.numel(), 0.0f); }
  // fp32 is the compute dtype: the master is its own compute copy.
  Tensor compute_copy(const Tensor& master, std::string name) override {
    (void)name;
    (void)master.f32();  // a host fp32 tensor
    return master;
  }
  void refresh_compute_copy(const Tensor& master, Tensor& copy) override {
    expect(copy.data() == master.data(), copy, "compute copy must share the master's memory on the cpu backend");
  }
  FlatCheck check_flat(const Tensor& flat, std::span<const std::int64_t> segment_ends) override {
    expect(!segment_ends.empty() && segment_ends.back() == flat.numel(), flat,
           "check_flat: the segments must end at the tensor's size");
    cpu::FlatCheckParams params{flat.f32(), segment_ends.data(), static_cast<std::int64_t>(segment_ends.size())};
    cpu::flat_check(params);
    return {params.sum_squares, params.first_non_finite};
  }
  void adamw_update(Tensor& params, const Tensor& grads, Tensor& m, Tensor& v, const AdamWScalars& s) override {
    expect(grads.numel() == params.numel() && m.numel() == params.numel() && v.numel() == params.numel(), params,
           "adamw_update: parameters, gradients and moments differ in size");
    cpu::adamw_update({params.f32(), grads.f32(), m.f32(), v.f32(), params.numel(), s.decay, s.one_minus_beta1,
                       s.beta2, s.one_minus_beta2, s.correction2_sqrt, s.step_size, s.eps, s.grad_scale});
  }
  std::unique_ptr<GradientSum> make_gradient_sum(Communicator& comm, std::int64_t elements,
                                                 const GradientSumOptions& options) override {
    return make_host_gradient_sum(comm, elements, options);
  }
  std::unique_ptr<GroupSum> make_group_sum(Communicator& group, double /*timeout_seconds*/) override {
    return make_host_group_sum(*this, group);  // MPI has its own limits
  }

  CrossEntropyResult cross_entropy(const Tensor& hidden, const Tensor& lm_head, std::span<const std::int32_t> targets,
                                   float grad_scale, Tensor* dhidden) override {
    expect(rows_of(hidden) == static_cast<std::int64_t>(targets.size()) && row_size(hidden) == lm_head.dim(1),
           hidden, "cross_entropy: hidden rows must match the targets and the head's width");
    cpu::CrossEntropyParams params{hidden.f32(), widened(lm_head, weight_scratch_), targets.data(),
                                   dhidden ? dhidden->f32() : nullptr,
                                   rows_of(hidden), row_size(hidden), lm_head.dim(0)};
    params.grad_scale = grad_scale;
    cpu::cross_entropy(params);
    return {params.loss_sum, params.counted};
  }

 private:
  CpuWeights weights_;
  std::vector<float> weight_scratch_;  // a bf16 weight widened for sgemm (training only)
};

}  // namespace

CpuWeights cpu_weights_from_name(std::string_view name) {
  if (name == "auto") return CpuWeights::Auto;
  if (name == "f32") return CpuWeights::F32;
  if (name == "bf16") return CpuWeights::BF16;
  throw InputError("unknown cpu_weights \"" + std::string(name) + "\" (expected auto, f32 or bf16)");
}

std::unique_ptr<Backend> make_cpu_backend(CpuWeights weights) { return std::make_unique<CpuBackend>(weights); }

std::unique_ptr<Backend> make_backend(std::string_view name, CpuWeights cpu_weights) {
  if (name == "cpu") return make_cpu_backend(cpu_weights);
#ifdef SLEARN_WITH_CUDA
  if (name == "cuda") return make_cuda_backend();  // InputError when no device is visible
  if (name == "auto") return cuda_device_count() > 0 ? make_cuda_backend() : make_cpu_backend(cpu_weights);
#else
  if (name == "auto") return make_cpu_backend(cpu_weights);
  if (name == "cuda")
    throw InputError("backend \"cuda\" is not available: this build has no CUDA support (configure with -DSLEARN_CUDA=ON)");
#endif
  throw InputError("unknown backend \"" + std::string(name) + "\" (expected cpu, cuda or auto)");
}

}  // namespace slearn
