// Memory-bound kernels: row gathers and scatters, RMSNorm forward and backward, RoPE (both directions),
// SwiGLU forward and backward, residual and bias adds, scale, dropout, kv_store.
// - Elementwise kernels are grid-stride loops over 64-bit indices: one thread owns each element, reads
//   its inputs before writing its outputs, so in-place use (out aliasing an input) is safe.
// - Row kernels (RMSNorm) give each row one block of kThreads threads: fp32 partial sums per thread in a
//   fixed stride order, then block_sum (warp shuffles, warps combined in order): deterministic. The second
//   pass rereads x after the reduction's barrier, so out may alias x.
// - RoPE gives each (token, head, pair) one thread: the pair (i, i + half) is read and written by it alone.
// Values are converted to fp32 for arithmetic and rounded to bf16 once on store.
#include "cuda/device_utils.cuh"
#include "slearn/mix64.hpp"

namespace slearn::cuda {
namespace {

__global__ void gather_rows_kernel(GatherParams p) {
  const std::int64_t total = p.rows * p.width;
  for (std::int64_t i = blockIdx.x * static_cast<std::int64_t>(blockDim.x) + threadIdx.x; i < total;
       i += static_cast<std::int64_t>(gridDim.x) * blockDim.x) {
    const std::int64_t row = i / p.width, col = i % p.width;
    p.out[i] = p.table[static_cast<std::int64_t>(p.index[row]) * p.width + col];
  }
}

__global__ void scatter_rows_f32_kernel(ScatterF32Params p) {
  const std::int64_t total = p.rows * p.width;
  for (std::int64_t i = blockIdx.x * static_cast<std::int64_t>(blockDim.x) + threadIdx.x; i < total;
       i += static_cast<std::int64_t>(gridDim.x) * blockDim.x) {
    const std::int64_t row = i / p.width, col = i % p.width;
    p.out[static_cast<std::int64_t>(p.index[row]) * p.width + col] = to_bf16(p.src[i]);
  }
}

__global__ void rms_norm_kernel(RmsNormParams p) {
  __shared__ float scratch[32];
  const std::int64_t row = blockIdx.x;
  const bf16* x = p.x + row * p.cols;
  bf16* out = p.out + row * p.cols;
  float squares = 0.0f;
  for (std::int64_t c = threadIdx.x; c < p.cols; c += blockDim.x) {
    const float v = to_f32(x[c]);
    squares += v * v;
  }
  const float total = block_sum(squares, scratch);  // its barriers order every read of x before any write
  const float inv_rms = rsqrtf(total / static_cast<float>(p.cols) + p.eps);
  for (std::int64_t c = threadIdx.x; c < p.cols; c += blockDim.x)
    out[c] = to_bf16(to_f32(p.weight[c]) * (to_f32(x[c]) * inv_rms));
}

// dx_i = r w_i dy_i - x_i r^3 / n * sum_j w_j dy_j x_j, r = 1/sqrt(mean(x^2) + eps) (as kernels/cpu).
__global__ void rms_norm_backward_kernel(RmsNormBackwardParams p) {
  __shared__ float scratch[32];
  const std::int64_t row = blockIdx.x;
  const bf16* x = p.x + row * p.cols;
  const bf16* dy = p.dy + row * p.cols;
  bf16* dx = p.dx + row * p.cols;
  float squares = 0.0f, products = 0.0f;
  for (std::int64_t c = threadIdx.x; c < p.cols; c += blockDim.x) {
    const float v = to_f32(x[c]);
    squares += v * v;
    products += to_f32(p.weight[c]) * to_f32(dy[c]) * v;
  }
  const float sum_squares = block_sum(squares, scratch);
  const float sum_gx = block_sum(products, scratch);
  const float n = static_cast<float>(p.cols);
  const float inv_rms = rsqrtf(sum_squares / n + p.eps);
  const float coeff = sum_gx * inv_rms * inv_rms * inv_rms / n;
  for (std::int64_t c = threadIdx.x; c < p.cols; c += blockDim.x)
    dx[c] = to_bf16(inv_rms * to_f32(p.weight[c]) * to_f32(dy[c]) - coeff * to_f32(x[c]));
}

__global__ void rope_kernel(RopeParams p) {
  const std::int64_t half = p.head_dim / 2;
  const std::int64_t total = p.tokens * p.heads * half;
  const float sign = p.inverse ? -1.0f : 1.0f;  // R(-theta): sin -> -sin
  for (std::int64_t i = blockIdx.x * static_cast<std::int64_t>(blockDim.x) + threadIdx.x; i < total;
       i += static_cast<std::int64_t>(gridDim.x) * blockDim.x) {
    const std::int64_t pair = i % half, row = i / half;  // row = token * heads + head
    const std::int64_t token = row / p.heads;
    const std::int64_t table = static_cast<std::int64_t>(p.positions[token]) * half + pair;
    const float c = to_f32(p.cos[table]), s = sign * to_f32(p.sin[table]);
    bf16* x = p.x + row * p.head_dim;
    const float a = to_f32(x[pair]), b = to_f32(x[pair + half]);
    x[pair] = to_bf16(a * c - b * s);
    x[pair + half] = to_bf16(b * c + a * s);
  }
}

__device__ __forceinline__ float sigmoid(float g) { return 1.0f / (1.0f + expf(-g)); }

__global__ void swiglu_kernel(SwigluParams p) {
  for (std::int64_t i = blockIdx.x * static_cast<std::int64_t>(blockDim.x) + threadIdx.x; i < p.count;
       i += static_cast<std::int64_t>(gridDim.x) * blockDim.x) {
    const float g = to_f32(p.gate[i]);
    p.out[i] = to_bf16(g * sigmoid(g) * to_f32(p.up[i]));
  }
}

__global__ void swiglu_backward_kernel(SwigluBackwardParams p) {
  for (std::int64_t i = blockIdx.x * static_cast<std::int64_t>(blockDim.x) + threadIdx.x; i < p.count;
       i += static_cast<std::int64_t>(gridDim.x) * blockDim.x) {
    const float g = to_f32(p.gate[i]), u = to_f32(p.up[i]), d = to_f32(p.dout[i]);
    const float s = sigmoid(g);
    p.dgate[i] = to_bf16(d * u * (s * (1.0f + g * (1.0f - s))));
    p.dup[i] = to_bf16(d * g * s);
  }
}

__global__ void add_kernel(AddParams p) {
  for (std::int64_t i = blockIdx.x * static_cast<std::int64_t>(blockDim.x) + threadIdx.x; i < p.count;
       i += static_cast<std::int64_t>(gridDim.x) * blockDim.x)
    p.x[i] = to_bf16(to_f32(p.x[i]) + to_f32(p.y[i]));
}

__global__ void bias_add_kernel(BiasAddParams p) {
  const std::int64_t total = p.rows * p.cols;
  for (std::int64_t i = blockIdx.x * static_cast<std::int64_t>(blockDim.x) + threadIdx.x; i < total;
       i += static_cast<std::int64_t>(gridDim.x) * blockDim.x)
    p.out[i] = to_bf16(to_f32(p.out[i]) + to_f32(p.bias[i % p.cols]));
}

__global__ void scale_kernel(ScaleParams p) {
  for (std::int64_t i = blockIdx.x * static_cast<std::int64_t>(blockDim.x) + threadIdx.x; i < p.count;
       i += static_cast<std::int64_t>(gridDim.x) * blockDim.x)
    p.x[i] = to_bf16(to_f32(p.x[i]) * p.factor);
}

// Bit for bit kernels/cpu/elementwise.cpp dropout_uniform: splitmix64 of (key, index), top 24 bits.
__device__ __forceinline__ float dropout_uniform(std::uint64_t key, std::uint64_t index) {
  const std::uint64_t z = mix64(key + 0x9e3779b97f4a7c15ull * (index + 1));
  return static_cast<float>(z >> 40) * 0x1.0p-24f;  // exact: an integer below 2^24 times a power of two
}

__global__ void dropout_kernel(DropoutParams p) {
  const float keep_scale = 1.0f / (1.0f - p.p);
  for (std::int64_t i = blockIdx.x * static_cast<std::int64_t>(blockDim.x) + threadIdx.x; i < p.count;
       i += static_cast<std::int64_t>(gridDim.x) * blockDim.x) {
    const std::int64_t draw = i / p.width * p.columns + p.first_column + i % p.width;
    const bool keep = dropout_uniform(p.key, static_cast<std::uint64_t>(draw)) >= p.p;
    p.out[i] = keep ? to_bf16(to_f32(p.x[i]) * keep_scale) : to_bf16(0.0f);
  }
}

__global__ void kv_store_kernel(KvStoreParams p) {
  const std::int64_t total = p.tokens * p.kv_row;
  for (std::int64_t i = blockIdx.x * static_cast<std::int64_t>(blockDim.x) + threadIdx.x; i < total;
       i += static_cast<std::int64_t>(gridDim.x) * blockDim.x) {
    const std::int64_t token = i / p.kv_row, col = i % p.kv_row;
    const std::int64_t dst =
        (static_cast<std::int64_t>(p.slots[token]) * p.capacity + p.positions[token]) * p.kv_row + col;
    p.k_cache[dst] = p.k[i];
    p.v_cache[dst] = p.v[i];
  }
}

}  // namespace

void launch_gather_rows(const GatherParams& p) {
  if (p.rows * p.width == 0) return;
  gather_rows_kernel<<<grid_for(p.rows * p.width), kThreads, 0, p.stream>>>(p);
  CUDA_CHECK_LAUNCH();
}

void launch_scatter_rows_f32(const ScatterF32Params& p) {
  if (p.rows * p.width == 0) return;
  scatter_rows_f32_kernel<<<grid_for(p.rows * p.width), kThreads, 0, p.stream>>>(p);
  CUDA_CHECK_LAUNCH();
}

void launch_rms_norm(const RmsNormParams& p) {
  if (p.rows == 0) return;
  rms_norm_kernel<<<static_cast<unsigned>(p.rows), kThreads, 0, p.stream>>>(p);
  CUDA_CHECK_LAUNCH();
}

void launch_rms_norm_backward(const RmsNormBackwardParams& p) {
  if (p.rows == 0) return;
  rms_norm_backward_kernel<<<static_cast<unsigned>(p.rows), kThreads, 0, p.stream>>>(p);
  CUDA_CHECK_LAUNCH();
}

void launch_rope(const RopeParams& p) {
  const std::int64_t total = p.tokens * p.heads * (p.head_dim / 2);
  if (total == 0) return;
  rope_kernel<<<grid_for(total), kThreads, 0, p.stream>>>(p);
  CUDA_CHECK_LAUNCH();
}

void launch_swiglu(const SwigluParams& p) {
  if (p.count == 0) return;
  swiglu_kernel<<<grid_for(p.count), kThreads, 0, p.stream>>>(p);
  CUDA_CHECK_LAUNCH();
}

void launch_swiglu_backward(const SwigluBackwardParams& p) {
  if (p.count == 0) return;
  swiglu_backward_kernel<<<grid_for(p.count), kThreads, 0, p.stream>>>(p);
  CUDA_CHECK_LAUNCH();
}

void launch_add(const AddParams& p) {
  if (p.count == 0) return;
  add_kernel<<<grid_for(p.count), kThreads, 0, p.stream>>>(p);
  CUDA_CHECK_LAUNCH();
}

void launch_bias_add(const BiasAddParams& p) {
  if (p.rows * p.cols == 0) return;
  bias_add_kernel<<<grid_for(p.rows * p.cols), kThreads, 0, p.stream>>>(p);
  CUDA_CHECK_LAUNCH();
}

void launch_scale(const ScaleParams& p) {
  if (p.count == 0) return;
  scale_kernel<<<grid_for(p.count), kThreads, 0, p.stream>>>(p);
  CUDA_CHECK_LAUNCH();
}

void launch_dropout(const DropoutParams& p) {
  if (p.count == 0) return;
  dropout_kernel<<<grid_for(p.count), kThreads, 0, p.stream>>>(p);
  CUDA_CHECK_LAUNCH();
}

void launch_kv_store(const KvStoreParams& p) {
  if (p.tokens * p.kv_row == 0) return;
  kv_store_kernel<<<grid_for(p.tokens * p.kv_row), kThreads, 0, p.stream>>>(p);
  CUDA_CHECK_LAUNCH();
}

}  // namespace slearn::cuda
