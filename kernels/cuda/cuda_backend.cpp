// The CUDA backend: memory, the plain ops and the training ops, and device discovery (cuda_backend_impl.hpp
// has the overview). Ops that read a step's host inputs are in cuda_backend_step.cpp, the cross-entropy in
// cuda_backend_loss.cpp.
#include "cuda/cuda_backend.hpp"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <string>
#include <vector>

#include "cuda/cuda_backend_impl.hpp"
#include "cuda/cuda_check.hpp"
#include "cuda/prefill_attention.hpp"
#include "slearn/device_binding.hpp"
#include "slearn/error.hpp"
#include "util/trace.hpp"

namespace slearn {
namespace cuda_backend {

void expect(bool condition, const Tensor& tensor, const std::string& what) {
  if (!condition) throw Error("cuda backend: tensor " + tensor.name() + " " + tensor.shape_string() + ": " + what);
}

// The device data of a bf16 tensor, refusing host tensors (e.g. one not passed through upload()).
const bf16* dev(const Tensor& t) {
  expect(t.device() == Device::CUDA && t.dtype() == DType::BF16, t, "must be a bf16 tensor of the cuda backend");
  return static_cast<const bf16*>(t.data());
}
bf16* dev(Tensor& t) { return const_cast<bf16*>(dev(static_cast<const Tensor&>(t))); }
float* dev_f32(Tensor& t) {
  expect(t.device() == Device::CUDA && t.dtype() == DType::F32, t,
         "must be an fp32 tensor of the cuda backend (made by zeros_f32)");
  return static_cast<float*>(t.data());
}
const float* dev_f32(const Tensor& t) { return dev_f32(const_cast<Tensor&>(t)); }

std::int32_t index32(std::int64_t value) {
  if (value < 0 || value > 0x7fffffff) throw Error("cuda backend: row index " + std::to_string(value) + " out of range");
  return static_cast<std::int32_t>(value);
}

void check_positions(const char* what, std::span<const std::int32_t> positions, std::int64_t limit) {
  for (std::size_t t = 0; t < positions.size(); ++t)
    if (positions[t] < 0 || positions[t] >= limit)
      throw Error(std::string(what) + ": position " + std::to_string(positions[t]) + " is outside the table of " +
                  std::to_string(limit) + " positions");
}

namespace {

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

}  // namespace

CudaBackend::CudaBackend(int device)
    : context_(std::make_shared<cuda::DeviceContext>(device)), stream_(context_->stream()), staging_(context_) {}

CudaBackend::~CudaBackend() {
  graphs_.clear();
  cudaStreamSynchronize(stream_);  // the pinned ids buffer may still be a copy's target
  if (chosen_host_ != nullptr) cudaFreeHost(chosen_host_);
}

Tensor CudaBackend::allocate(std::vector<std::int64_t> shape, std::string name, DType dtype) {
  std::int64_t count = 1;
  for (auto extent : shape) {
    if (extent < 0) throw Error("tensor " + name + ": negative extent");
    count *= extent;
  }
  const std::size_t bytes = static_cast<std::size_t>(count) * dtype_size(dtype);
  auto memory = cuda::device_alloc(context_, bytes, "tensor " + name);
  CUDA_CHECK(cudaMemsetAsync(memory.get(), 0, bytes, stream_));
  void* data = memory.get();
  return Tensor(std::move(memory), data, dtype, Device::CUDA, std::move(shape), std::move(name));
}

Tensor CudaBackend::zeros(std::vector<std::int64_t> shape, std::string name) {
  return allocate(std::move(shape), std::move(name), DType::BF16);
}
Tensor CudaBackend::zeros_f32(std::vector<std::int64_t> shape, std::string name) {
  return allocate(std::move(shape), std::move(name), DType::F32);
}

Tensor CudaBackend::upload(Tensor host) {
  const float* values = host.f32();  // throws unless fp32 host memory
  std::vector<std::uint16_t> converted(static_cast<std::size_t>(host.numel()));
  for (std::size_t i = 0; i < converted.size(); ++i) converted[i] = f32_to_bf16(values[i]);
  const std::size_t bytes = converted.size() * sizeof(std::uint16_t);
  auto memory = cuda::device_alloc(context_, bytes, "tensor " + host.name());
  // Weights are copied once, from pageable memory (the pinned ring is for the small per-step arrays).
  CUDA_CHECK(cudaMemcpyAsync(memory.get(), converted.data(), bytes, cudaMemcpyHostToDevice, stream_));
  CUDA_CHECK(cudaStreamSynchronize(stream_));
  void* data = memory.get();
  return Tensor(std::move(memory), data, DType::BF16, Device::CUDA, host.shape(), host.name());
}

void CudaBackend::to_host(const Tensor& tensor, std::span<float> out) {
  expect(out.size() == static_cast<std::size_t>(tensor.numel()), tensor, "host buffer has the wrong size");
  if (tensor.dtype() == DType::F32) {
    CUDA_CHECK(cudaMemcpyAsync(out.data(), dev_f32(tensor), tensor.bytes(), cudaMemcpyDeviceToHost, stream_));
    CUDA_CHECK(cudaStreamSynchronize(stream_));
    return;
  }
  std::vector<std::uint16_t> bits(out.size());
  CUDA_CHECK(cudaMemcpyAsync(bits.data(), dev(tensor), tensor.bytes(), cudaMemcpyDeviceToHost, stream_));
  CUDA_CHECK(cudaStreamSynchronize(stream_));
  for (std::size_t i = 0; i < bits.size(); ++i) out[i] = bf16_to_f32(bits[i]);
}

void CudaBackend::fill_random(Tensor& t, std::uint64_t key, float scale_value) {
  cuda::launch_fill_random({dev(t), t.numel(), key, scale_value, stream_});
}

std::size_t CudaBackend::free_memory_bytes() {
  std::size_t free_bytes = 0, total_bytes = 0;
  CUDA_CHECK(cudaMemGetInfo(&free_bytes, &total_bytes));
  // Blocks freed into the stream-ordered pool are free to this backend too.
  cudaMemPool_t pool = nullptr;
  CUDA_CHECK(cudaDeviceGetDefaultMemPool(&pool, context_->device()));
  std::uint64_t reserved = 0, used = 0;
  CUDA_CHECK(cudaMemPoolGetAttribute(pool, cudaMemPoolAttrReservedMemCurrent, &reserved));
  CUDA_CHECK(cudaMemPoolGetAttribute(pool, cudaMemPoolAttrUsedMemCurrent, &used));
  return free_bytes + static_cast<std::size_t>(reserved > used ? reserved - used : 0);
}

void* CudaBackend::stage(const cuda::HostPack& pack) {
  void* base = staged_.get(context_, pack.size(), "staged indices");
  staging_.copy_to_device(base, pack.data(), pack.size());
  return base;
}

void CudaBackend::rms_norm(const Tensor& x, const Tensor& weight, float eps, Tensor& out) {
  const TraceRange trace("rms_norm");
  expect(row_size(x) == weight.numel() && out.numel() == x.numel(), x, "does not match norm weight " + weight.name());
  cuda::launch_rms_norm({dev(x), dev(weight), dev(out), rows_of(x), row_size(x), eps, stream_});
}

void CudaBackend::add_rms_norm(Tensor& x, const Tensor& y, const Tensor& weight, float eps, Tensor& out) {
  const TraceRange trace("add_rms_norm");
  expect(row_size(x) == weight.numel() && out.numel() == x.numel() && y.numel() == x.numel(), x,
         "add_rms_norm: operands differ from " + y.name() + " or norm weight " + weight.name());
  expect(out.data() != x.data() && out.data() != y.data(), out, "add_rms_norm: out must not alias x or y");
  cuda::launch_add_rms_norm({dev(x), dev(y), dev(weight), dev(out), rows_of(x), row_size(x), eps, stream_});
}

void CudaBackend::linear(const Tensor& x, const Tensor& weight, const Tensor* bias, Tensor& out) {
  const TraceRange trace("linear");
  const std::int64_t m = rows_of(x), k = row_size(x), n = weight.dim(0);
  expect(weight.rank() == 2 && weight.dim(1) == k, x,
         "inner size does not match weight " + weight.name() + " " + weight.shape_string());
  expect(rows_of(out) == m && row_size(out) == n, out,
         "linear output must be [" + std::to_string(m) + ", " + std::to_string(n) + "]");
  if (bias != nullptr) expect(bias->numel() == n, *bias, "bias size must equal the output features");
  // An fp32 output (the LM head's logits) comes straight out of the GEMM's fp32 accumulators.
  const bool f32_out = out.dtype() == DType::F32;
  expect(!(f32_out && bias != nullptr), out, "an fp32 linear output takes no bias");
  gemm_.run({dev(x), false, k, dev(weight), true, k, f32_out ? static_cast<void*>(dev_f32(out)) : dev(out),
             f32_out ? cuda::GemmOut::F32 : cuda::GemmOut::BF16, n, bias ? dev(*bias) : nullptr, m, n, k, 1.0f, 0.0f,
             stream_});
}

void CudaBackend::swiglu(const Tensor& gate, const Tensor& up, Tensor& out) {
  const TraceRange trace("swiglu");
  expect(gate.numel() == up.numel() && out.numel() == gate.numel(), gate, "swiglu operands differ in size");
  cuda::launch_swiglu({dev(gate), dev(up), dev(out), gate.numel(), stream_});
}

void CudaBackend::swiglu_fused(const Tensor& gate_up, Tensor& out) {
  const TraceRange trace("swiglu_fused");
  const std::int64_t n = rows_of(gate_up), inter = row_size(out);
  expect(rows_of(out) == n && row_size(gate_up) == 2 * inter, gate_up,
         "swiglu_fused: input must be [tokens, 2 x " + std::to_string(inter) + "]");
  cuda::launch_swiglu_fused({dev(gate_up), dev(out), n, inter, stream_});
}

void CudaBackend::add_inplace(Tensor& x, const Tensor& y) {
  const TraceRange trace("add_inplace");
  expect(x.numel() == y.numel(), x, "cannot add " + y.name() + " " + y.shape_string());
  cuda::launch_add({dev(x), dev(y), x.numel(), stream_});
}

void CudaBackend::matmul(const Tensor& a, bool transpose_a, const Tensor& b, bool transpose_b, float alpha, float beta,
                         Tensor& c) {
  const TraceRange trace("matmul");
  const std::int64_t a_rows = rows_of(a), a_cols = row_size(a), b_rows = rows_of(b), b_cols = row_size(b);
  const std::int64_t m = transpose_a ? a_cols : a_rows, k = transpose_a ? a_rows : a_cols;
  const std::int64_t k_b = transpose_b ? b_cols : b_rows, n = transpose_b ? b_rows : b_cols;
  expect(k == k_b, a, "matmul inner sizes differ from " + b.name() + " " + b.shape_string());
  expect(rows_of(c) == m && row_size(c) == n, c,
         "matmul output must be [" + std::to_string(m) + ", " + std::to_string(n) + "]");
  // An fp32 `c` (the adapter's gradients) takes the GEMM's fp32 accumulators and is read back in fp32 for
  // beta: gradients accumulate over micro-batches without a bf16 rounding.
  const bool f32_out = c.dtype() == DType::F32;
  gemm_.run({dev(a), transpose_a, a_cols, dev(b), transpose_b, b_cols,
             f32_out ? static_cast<void*>(dev_f32(c)) : dev(c), f32_out ? cuda::GemmOut::F32 : cuda::GemmOut::BF16,
             n, nullptr, m, n, k, alpha, beta, stream_});
}

void CudaBackend::scale(Tensor& x, float factor) { cuda::launch_scale({dev(x), x.numel(), factor, stream_}); }

void CudaBackend::dropout(const Tensor& x, float p, const DropoutMask& mask, Tensor& out) {
  expect(out.numel() == x.numel(), out, "dropout output must match its input");
  const std::int64_t width = x.numel() == 0 ? 1 : x.numel() / x.dim(0);
  expect(mask.columns == 0 || (mask.first_column >= 0 && mask.first_column + width <= mask.columns), x,
         "dropout: the column slice does not fit the wider matrix");
  cuda::launch_dropout({dev(x), dev(out), x.numel(), p, mask.key, width, mask.columns == 0 ? width : mask.columns,
                        mask.first_column, stream_});
}

void CudaBackend::rms_norm_backward(const Tensor& x, const Tensor& weight, const Tensor& dy, float eps, Tensor& dx) {
  expect(dy.numel() == x.numel() && dx.numel() == x.numel() && row_size(x) == weight.numel(), x,
         "rms_norm_backward operands differ");
  cuda::launch_rms_norm_backward({dev(x), dev(weight), dev(dy), dev(dx), rows_of(x), row_size(x), eps, stream_});
}

void CudaBackend::rotate(const char* what, Tensor& x, std::span<const std::int32_t> positions, const Tensor& cos,
                         const Tensor& sin, bool inverse) {
  expect(sin.shape() == cos.shape(), sin, "rope tables differ in shape");
  check_positions(what, positions, cos.dim(0));
  cuda::HostPack pack;
  const std::size_t offset = pack.add(positions.data(), positions.size());
  void* base = stage(pack);
  cuda::launch_rope({dev(x), at<std::int32_t>(base, offset), dev(cos), dev(sin), x.dim(0), x.dim(1), x.dim(2),
                     inverse, stream_});
}

void CudaBackend::rope_backward(Tensor& grad, std::span<const std::int32_t> positions, const Tensor& cos,
                                const Tensor& sin) {
  expect(grad.rank() == 3 && grad.dim(0) == static_cast<std::int64_t>(positions.size()) &&
             cos.dim(1) * 2 == grad.dim(2),
         grad, "rope_backward input must be [tokens, heads, head_dim]");
  rotate("rope_backward", grad, positions, cos, sin, true);
}

void CudaBackend::swiglu_backward(const Tensor& gate, const Tensor& up, const Tensor& dout, Tensor& dgate,
                                  Tensor& dup) {
  expect(gate.numel() == up.numel() && dout.numel() == gate.numel() && dgate.numel() == gate.numel() &&
             dup.numel() == gate.numel(),
         gate, "swiglu_backward operands differ in size");
  cuda::launch_swiglu_backward({dev(gate), dev(up), dev(dout), dev(dgate), dev(dup), gate.numel(), stream_});
}

void CudaBackend::check_train_shapes(const Tensor& q, const Tensor& k, const Tensor& v) {
  expect(q.rank() == 3 && k.rank() == 3 && q.dim(2) == k.dim(2) && q.dim(1) % k.dim(1) == 0 && k.dim(0) == q.dim(0),
         q, "attention_train: query and key heads do not match");
  expect(v.shape() == k.shape(), v, "attention_train: value and key shapes differ");
}

void CudaBackend::attention_train(const Tensor& q, const Tensor& k, const Tensor& v,
                                  std::span<const std::int64_t> seq_starts, float scale_factor, Tensor& out,
                                  Tensor& lse) {
  const TraceRange trace("attention_train");
  check_train_shapes(q, k, v);
  expect(out.numel() == q.numel(), out, "attention_train output must match the query");
  expect(lse.numel() == q.dim(0) * q.dim(1), lse, "lse must be [tokens, heads]");
  std::vector<std::int64_t> start, end;
  sequence_bounds("attention_train", seq_starts, q.dim(0), start, end);  // checks seq_starts
  // Head dims 64 and 128 run on tensor cores (prefill_attention.cu, each sequence a cache of capacity 1 in
  // slot = its first row), given the alignment its 16-byte copies need; anything else on the reference kernel.
  const auto aligned = [](const void* p, std::uintptr_t bytes) {
    return reinterpret_cast<std::uintptr_t>(p) % bytes == 0;
  };
  if (cuda::prefill_attention_supports(q.dim(2)) && aligned(dev(q), 16) && aligned(dev(k), 16) &&
      aligned(dev(v), 16) && aligned(dev(out), 4)) {
    const std::vector<cuda::PrefillTile> tiles =
        cuda::training_prefill_tiles(seq_starts.data(), seq_starts.size(), q.dim(0));
    cuda::HostPack pack;
    const std::size_t tiles_at = pack.add(tiles);
    void* base = stage(pack);
    cuda::launch_prefill_attention({dev(q), dev(k), dev(v), dev(out), at<const cuda::PrefillTile>(base, tiles_at),
                                    static_cast<std::int64_t>(tiles.size()), q.dim(1), k.dim(1), q.dim(2),
                                    /*capacity=*/1, scale_factor, stream_, dev_f32(lse)});
    return;
  }
  std::vector<std::int32_t> context(start.size());
  for (std::size_t t = 0; t < start.size(); ++t) context[t] = index32(static_cast<std::int64_t>(t) - start[t] + 1);
  cuda::HostPack pack;
  const std::size_t rows = pack.add(start), contexts = pack.add(context);
  void* base = stage(pack);
  cuda::launch_attention_forward({dev(q), dev(k), dev(v), dev(out), dev_f32(lse), at<std::int64_t>(base, rows),
                                  at<std::int32_t>(base, contexts), q.dim(0), q.dim(1), k.dim(1), q.dim(2),
                                  scale_factor, stream_});
}

void CudaBackend::attention_backward(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& out,
                                     const Tensor& lse, const Tensor& dout, std::span<const std::int64_t> seq_starts,
                                     float scale_factor, Tensor& dq, Tensor& dk, Tensor& dv) {
  const TraceRange trace("attention_backward");
  check_train_shapes(q, k, v);
  expect(dq.numel() == q.numel() && dk.numel() == k.numel() && dv.numel() == v.numel(), dq,
         "attention_backward gradients must match their inputs");
  expect(out.numel() == q.numel() && dout.numel() == q.numel() && lse.numel() == q.dim(0) * q.dim(1), out,
         "attention_backward: out, dout and lse must match the query");
  std::vector<std::int64_t> start, end;
  sequence_bounds("attention_backward", seq_starts, q.dim(0), start, end);  // checks seq_starts
  const cuda::AttentionBackwardTiles tiles = cuda::attention_backward_tiles(seq_starts.data(), seq_starts.size());
  cuda::HostPack pack;
  const std::size_t key_tiles = pack.add(tiles.key_tiles), query_tiles = pack.add(tiles.query_tiles);
  void* base = stage(pack);
  auto* delta = static_cast<float*>(
      scratch_.get(context_, static_cast<std::size_t>(q.dim(0) * q.dim(1)) * sizeof(float), "attention delta"));
  cuda::launch_attention_backward({dev(q), dev(k), dev(v), dev(out), dev_f32(lse), dev(dout), dev(dq), dev(dk),
                                   dev(dv), delta, at<const cuda::AttentionBackwardTile>(base, key_tiles),
                                   at<const cuda::AttentionBackwardTile>(base, query_tiles),
                                   static_cast<std::int64_t>(tiles.key_tiles.size()), q.dim(0), q.dim(1), k.dim(1),
                                   q.dim(2), scale_factor, stream_});
}

}  // namespace cuda_backend

int cuda_device_count() {
  int count = 0;
  const cudaError_t status = cudaGetDeviceCount(&count);
  if (status == cudaSuccess) return count;
  (void)cudaGetLastError();
  if (status == cudaErrorNoDevice) return 0;
  // No driver installed at all (a machine without GPUs, this build's CUDA runtime alone): the runtime says
  // "insufficient driver", and the driver version it reports is 0. An installed driver that is too old, or
  // a broken install, is a real error: "auto" must not quietly fall back to the CPU then.
  int driver = -1;
  if (cudaDriverGetVersion(&driver) == cudaSuccess && driver == 0) return 0;
  int runtime = 0;
  (void)cudaRuntimeGetVersion(&runtime);
  throw Error(std::string("CUDA is installed but unusable: cudaGetDeviceCount failed with ") +
              cudaGetErrorName(status) + " (" + cudaGetErrorString(status) + "); driver API version " +
              std::to_string(driver) + ", runtime " + std::to_string(runtime) +
              " (update the NVIDIA driver, or use --backend cpu)");
}

std::unique_ptr<Backend> make_cuda_backend() {
  const int count = cuda_device_count();  // throws for a broken install
  if (count == 0)
    throw InputError("backend \"cuda\": no CUDA device is visible; use --backend cpu or auto");
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
  return std::make_unique<cuda_backend::CudaBackend>(device);
}

}  // namespace slearn
