// The CPU backend: checks shapes, then hands raw pointers to the kernels in kernels/cpu.
#include <cstring>

#include "cpu/cpu_kernels.hpp"
#include "slearn/backend.hpp"
#include "slearn/error.hpp"

namespace slearn {
namespace {

void expect(bool condition, const Tensor& tensor, const std::string& what) {
  if (!condition) throw Error("cpu backend: tensor " + tensor.name() + " " + tensor.shape_string() + ": " + what);
}

std::int64_t rows_of(const Tensor& t) { return t.rank() == 0 ? 1 : t.dim(0); }
std::int64_t row_size(const Tensor& t) { return t.numel() / std::max<std::int64_t>(rows_of(t), 1); }

class CpuBackend final : public Backend {
 public:
  std::string_view name() const override { return "cpu"; }

  Tensor zeros(std::vector<std::int64_t> shape, std::string name) override {
    return Tensor::host_f32(std::move(shape), std::move(name));
  }
  Tensor upload(Tensor host) override { return host; }
  void to_host(const Tensor& tensor, std::span<float> out) override {
    expect(out.size() == static_cast<std::size_t>(tensor.numel()), tensor, "host buffer has the wrong size");
    std::memcpy(out.data(), tensor.f32(), tensor.bytes());
  }

  void embedding(const Tensor& table, std::span<const TokenId> ids, Tensor& out) override {
    expect(rows_of(out) == static_cast<std::int64_t>(ids.size()) && row_size(out) == table.dim(1), out,
           "embedding output must be [tokens, hidden]");
    cpu::embedding({table.f32(), ids.data(), out.f32(), static_cast<std::int64_t>(ids.size()), table.dim(1),
                    table.dim(0)});
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
    cpu::linear({x.f32(), weight.f32(), bias ? bias->f32() : nullptr, out.f32(), m, n, k});
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
};

}  // namespace

std::unique_ptr<Backend> make_cpu_backend() { return std::make_unique<CpuBackend>(); }

std::unique_ptr<Backend> make_backend(std::string_view name) {
  if (name == "cpu" || name == "auto") return make_cpu_backend();
  if (name == "cuda") throw InputError("backend \"cuda\" is not available in this build (the CUDA backend is not implemented yet)");
  throw InputError("unknown backend \"" + std::string(name) + "\" (expected cpu, cuda or auto)");
}

}  // namespace slearn
