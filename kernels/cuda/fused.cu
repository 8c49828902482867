// Fused inference kernels: residual add + RMSNorm, the split of the stacked q/k/v projection with RoPE on
// q and k, SwiGLU over the stacked gate/up projection, and the random fill of Backend::fill_random.
// - add_rms_norm: one block per row. Each thread adds its elements (x + y rounded to bf16, stored back into
//   x, exactly what add_inplace then rms_norm compute), sums the squares of the rounded values, and after
//   block_sum's barriers rereads only elements it wrote itself: no race, and `out` never aliases x.
// - rope_split_qkv: one thread per (token, head of q, k or v, pair): the pair (i, i + half) of its head is
//   read from the stacked row once and written to q, k (rotated) or v (copied). One pass over the
//   projection instead of a copy and two RoPE passes.
// - swiglu_fused and fill_random: grid-stride loops over 64-bit indices.
#include "cuda/device_utils.cuh"
#include "slearn/random_fill.hpp"

namespace slearn::cuda {
namespace {

__global__ void add_rms_norm_kernel(AddRmsNormParams p) {
  __shared__ float scratch[32];
  const std::int64_t row = blockIdx.x;
  bf16* x = p.x + row * p.cols;
  const bf16* y = p.y + row * p.cols;
  bf16* out = p.out + row * p.cols;
  float squares = 0.0f;
  for (std::int64_t c = threadIdx.x; c < p.cols; c += blockDim.x) {
    const bf16 sum = to_bf16(to_f32(x[c]) + to_f32(y[c]));
    x[c] = sum;
    const float v = to_f32(sum);
    squares += v * v;
  }
  const float total = block_sum(squares, scratch);
  const float inv_rms = rsqrtf(total / static_cast<float>(p.cols) + p.eps);
  for (std::int64_t c = threadIdx.x; c < p.cols; c += blockDim.x)  // same c as above: this thread's own writes
    out[c] = to_bf16(to_f32(p.weight[c]) * (to_f32(x[c]) * inv_rms));
}

__global__ void rope_split_qkv_kernel(RopeSplitQkvParams p) {
  const std::int64_t half = p.head_dim / 2;
  const std::int64_t heads_per_row = p.heads + 2 * p.kv_heads;
  const std::int64_t total = p.tokens * heads_per_row * half;
  for (std::int64_t i = blockIdx.x * static_cast<std::int64_t>(blockDim.x) + threadIdx.x; i < total;
       i += static_cast<std::int64_t>(gridDim.x) * blockDim.x) {
    const std::int64_t pair = i % half, head = (i / half) % heads_per_row, token = i / (half * heads_per_row);
    const bf16* in = p.qkv + (token * heads_per_row + head) * p.head_dim;
    const bf16 a_raw = in[pair], b_raw = in[pair + half];
    if (head >= p.heads + p.kv_heads) {  // v: copied as it is
      bf16* v = p.v + (token * p.kv_heads + (head - p.heads - p.kv_heads)) * p.head_dim;
      v[pair] = a_raw;
      v[pair + half] = b_raw;
      continue;
    }
    bf16* target = head < p.heads ? p.q + (token * p.heads + head) * p.head_dim
                                  : p.k + (token * p.kv_heads + (head - p.heads)) * p.head_dim;
    const std::int64_t table = static_cast<std::int64_t>(p.positions[token]) * half + pair;
    const float c = to_f32(p.cos[table]), s = to_f32(p.sin[table]);
    const float a = to_f32(a_raw), b = to_f32(b_raw);
    target[pair] = to_bf16(a * c - b * s);
    target[pair + half] = to_bf16(b * c + a * s);
  }
}

__global__ void swiglu_fused_kernel(SwigluFusedParams p) {
  const std::int64_t total = p.tokens * p.inter;
  for (std::int64_t i = blockIdx.x * static_cast<std::int64_t>(blockDim.x) + threadIdx.x; i < total;
       i += static_cast<std::int64_t>(gridDim.x) * blockDim.x) {
    const std::int64_t token = i / p.inter, col = i % p.inter;
    const bf16* row = p.gate_up + token * 2 * p.inter;
    const float g = to_f32(row[col]), u = to_f32(row[p.inter + col]);
    p.out[i] = to_bf16(g / (1.0f + expf(-g)) * u);
  }
}

__global__ void fill_random_kernel(FillRandomParams p) {
  for (std::int64_t i = blockIdx.x * static_cast<std::int64_t>(blockDim.x) + threadIdx.x; i < p.count;
       i += static_cast<std::int64_t>(gridDim.x) * blockDim.x)
    p.out[i] = to_bf16(random_fill_value(p.key, static_cast<std::uint64_t>(i), p.scale));
}

}  // namespace

void launch_add_rms_norm(const AddRmsNormParams& p) {
  if (p.rows == 0) return;
  add_rms_norm_kernel<<<static_cast<unsigned>(p.rows), kThreads, 0, p.stream>>>(p);
  CUDA_CHECK_LAUNCH();
}

void launch_rope_split_qkv(const RopeSplitQkvParams& p) {
  const std::int64_t total = p.tokens * (p.heads + 2 * p.kv_heads) * (p.head_dim / 2);
  if (total == 0) return;
  rope_split_qkv_kernel<<<grid_for(total), kThreads, 0, p.stream>>>(p);
  CUDA_CHECK_LAUNCH();
}

void launch_swiglu_fused(const SwigluFusedParams& p) {
  if (p.tokens * p.inter == 0) return;
  swiglu_fused_kernel<<<grid_for(p.tokens * p.inter), kThreads, 0, p.stream>>>(p);
  CUDA_CHECK_LAUNCH();
}

void launch_fill_random(const FillRandomParams& p) {
  if (p.count == 0) return;
  fill_random_kernel<<<grid_for(p.count), kThreads, 0, p.stream>>>(p);
  CUDA_CHECK_LAUNCH();
}

}  // namespace slearn::cuda
