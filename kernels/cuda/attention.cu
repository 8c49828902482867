// Causal GQA attention, flash style: keys and values stream through shared memory in tiles of kKeyTile rows
// and the softmax is computed online (running max, running sum, rescaled accumulator), so no score matrix
// is ever stored, in the forward or the backward.
//
// Forward (inference over the KV cache and training over packed sequences, one kernel):
//   one block of kWarps warps per (query row, kv head). The block stages the query rows of the kv head's
//   group of query heads and, tile by tile, the K and V rows of the query's context, as fp32 in shared
//   memory. Warp w handles query heads w, w + kWarps, ... of the group; within a tile, lane j scores key j
//   (K rows padded to head_dim + 1 floats so the 32 lanes hit 32 banks), then each lane accumulates the
//   output dims d = lane, lane + 32, ... over the tile's keys (probabilities broadcast by shuffles).
//   The group's heads share every K/V tile: GQA costs one K/V read per kv head, not per query head.
// Backward (training), deterministic, three kernels:
//   delta:  one warp per (row, head): D = sum_d dO * O.
//   dQ:     the forward's layout; recomputes P = exp(scale q.k - lse) per key, dS = P (dO.v - D), and
//           accumulates dQ = scale * sum_j dS_j k_j in a fixed key order.
//   dK, dV: one warp per (key row, kv head), looping over the group's heads and the later query rows of the
//           key's sequence in tiles of 32 (Q and dO tiles in shared memory): dV = sum P dO, dK = scale *
//           sum dS q. Each output element is owned by one lane: no atomics, bit-reproducible.
// Performance notes (not yet measured, docs/cuda.md): decode uses one block per (token, kv head) with no
// split over the context (flash-decoding), and prefill re-reads K/V per query row from L2 rather than
// sharing tiles between query rows; both are the next steps once a GPU is available.
#include <string>

#include "cuda/device_utils.cuh"

namespace slearn::cuda {
namespace {

constexpr int kWarps = 4;
constexpr int kKeyTile = 32;  // one key per lane
constexpr int kHeadsPerWarp = static_cast<int>(kAttentionMaxGroup) / kWarps;

template <int D>
__host__ __device__ constexpr int dims_per_lane() { return (D + 31) / 32; }

template <int D>
std::size_t forward_shared_bytes(std::int64_t group) {
  return sizeof(float) * static_cast<std::size_t>(group * D + kKeyTile * (D + 1) + kKeyTile * D);
}

// Stages rows [first, first + keys) of k and v (kv head `kvh`) as fp32 into ks ([kKeyTile][D + 1]) and
// vs ([kKeyTile][vs_stride]); rows past `keys` are zero so a full tile can always be read.
template <int D>
__device__ __forceinline__ void load_kv_tile(const bf16* k, const bf16* v, std::int64_t first, int keys,
                                             std::int64_t kv_row, std::int64_t kvh, float* ks, float* vs,
                                             int vs_stride) {
  for (int i = threadIdx.x; i < kKeyTile * D; i += blockDim.x) {
    const int j = i / D, d = i % D;
    float kv = 0.0f, vv = 0.0f;
    if (j < keys) {
      const std::int64_t offset = (first + j) * kv_row + kvh * D + d;
      kv = to_f32(k[offset]);
      vv = to_f32(v[offset]);
    }
    ks[j * (D + 1) + d] = kv;
    vs[j * vs_stride + d] = vv;
  }
}

template <int D>
__global__ void __launch_bounds__(kWarps * 32) attention_forward_kernel(AttentionForwardParams p) {
  constexpr int kPerLane = dims_per_lane<D>();
  extern __shared__ float smem[];
  const std::int64_t token = blockIdx.x, kvh = blockIdx.y;
  const int group = static_cast<int>(p.heads / p.kv_heads);
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const std::int64_t q_row = p.heads * D, kv_row = p.kv_heads * D;
  float* qs = smem;                       // [group][D]
  float* ks = qs + group * D;             // [kKeyTile][D + 1]
  float* vs = ks + kKeyTile * (D + 1);    // [kKeyTile][D]

  for (int i = threadIdx.x; i < group * D; i += blockDim.x)
    qs[i] = to_f32(p.q[token * q_row + kvh * group * D + i]);  // the group's heads are adjacent
  const std::int64_t key0 = p.key_row0[token];
  const int context = p.context[token];

  float m[kHeadsPerWarp], l[kHeadsPerWarp], acc[kHeadsPerWarp][kPerLane];
  for (int hi = 0; hi < kHeadsPerWarp; ++hi) {
    m[hi] = -INFINITY;
    l[hi] = 0.0f;
    for (int e = 0; e < kPerLane; ++e) acc[hi][e] = 0.0f;
  }

  for (int base = 0; base < context; base += kKeyTile) {
    const int keys = min(kKeyTile, context - base);
    __syncthreads();  // the previous tile is consumed (and, first time round, qs is written)
    load_kv_tile<D>(p.k, p.v, key0 + base, keys, kv_row, kvh, ks, vs, D);
    __syncthreads();
#pragma unroll
    for (int hi = 0; hi < kHeadsPerWarp; ++hi) {
      const int g = warp + hi * kWarps;
      if (g >= group) continue;  // uniform across the warp: the shuffles below see all 32 lanes
      const float* q = qs + g * D;
      float score = -INFINITY;
      if (lane < keys) {
        const float* kr = ks + lane * (D + 1);
        float dot = 0.0f;
#pragma unroll 16
        for (int d = 0; d < D; ++d) dot += q[d] * kr[d];
        score = dot * p.scale;
      }
      // keys >= 1, so the tile max is finite and m_new is too; exp(-inf - m_new) = 0 on the first tile.
      const float m_new = fmaxf(m[hi], warp_max(score));
      const float prob = lane < keys ? expf(score - m_new) : 0.0f;
      const float correction = expf(m[hi] - m_new);
      l[hi] = l[hi] * correction + warp_sum(prob);
      m[hi] = m_new;
#pragma unroll
      for (int e = 0; e < kPerLane; ++e) acc[hi][e] *= correction;
      for (int j = 0; j < keys; ++j) {
        const float pj = __shfl_sync(kFullMask, prob, j);
        const float* vr = vs + j * D;
#pragma unroll
        for (int e = 0; e < kPerLane; ++e) {
          const int d = lane + 32 * e;
          if (d < D) acc[hi][e] += pj * vr[d];
        }
      }
    }
  }

#pragma unroll
  for (int hi = 0; hi < kHeadsPerWarp; ++hi) {
    const int g = warp + hi * kWarps;
    if (g >= group) continue;
    const std::int64_t head = kvh * group + g;
    const float inv = 1.0f / l[hi];  // l >= 1: the max term contributes exp(0)
    bf16* out = p.out + token * q_row + head * D;
#pragma unroll
    for (int e = 0; e < kPerLane; ++e) {
      const int d = lane + 32 * e;
      if (d < D) out[d] = to_bf16(acc[hi][e] * inv);
    }
    if (p.lse != nullptr && lane == 0) p.lse[token * p.heads + head] = m[hi] + logf(l[hi]);
  }
}

// delta[t, h] = sum_d dO[t, h, d] * O[t, h, d]; one warp per (t, h), grid-stride over the warps.
__global__ void attention_delta_kernel(AttentionBackwardParams p) {
  const std::int64_t rows = p.tokens * p.heads;
  const std::int64_t warps_in_grid = static_cast<std::int64_t>(gridDim.x) * blockDim.x / 32;
  const int lane = threadIdx.x % 32;
  // The row is uniform across a warp (blockDim.x is a multiple of 32), so whole warps leave the loop together.
  for (std::int64_t row = (blockIdx.x * static_cast<std::int64_t>(blockDim.x) + threadIdx.x) / 32; row < rows;
       row += warps_in_grid) {
    const bf16* o = p.out + row * p.head_dim;
    const bf16* d_o = p.dout + row * p.head_dim;
    float sum = 0.0f;
    for (std::int64_t d = lane; d < p.head_dim; d += 32) sum += to_f32(d_o[d]) * to_f32(o[d]);
    sum = warp_sum(sum);
    if (lane == 0) p.delta[row] = sum;
  }
}

template <int D>
std::size_t dq_shared_bytes(std::int64_t group) {
  return sizeof(float) * static_cast<std::size_t>(2 * group * D + 2 * kKeyTile * (D + 1));
}

template <int D>
__global__ void __launch_bounds__(kWarps * 32) attention_dq_kernel(AttentionBackwardParams p) {
  constexpr int kPerLane = dims_per_lane<D>();
  extern __shared__ float smem[];
  const std::int64_t token = blockIdx.x, kvh = blockIdx.y;
  const int group = static_cast<int>(p.heads / p.kv_heads);
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const std::int64_t q_row = p.heads * D, kv_row = p.kv_heads * D;
  float* qs = smem;                       // [group][D]
  float* dos = qs + group * D;            // [group][D]
  float* ks = dos + group * D;            // [kKeyTile][D + 1]
  float* vs = ks + kKeyTile * (D + 1);    // [kKeyTile][D + 1]: read by key (lane), so padded like ks

  for (int i = threadIdx.x; i < group * D; i += blockDim.x) {
    qs[i] = to_f32(p.q[token * q_row + kvh * group * D + i]);
    dos[i] = to_f32(p.dout[token * q_row + kvh * group * D + i]);
  }
  const std::int64_t key0 = p.seq_start[token];
  const int context = static_cast<int>(token - key0 + 1);

  float lse[kHeadsPerWarp], delta[kHeadsPerWarp], acc[kHeadsPerWarp][kPerLane];
  for (int hi = 0; hi < kHeadsPerWarp; ++hi) {
    const int g = warp + hi * kWarps;
    const std::int64_t head = kvh * group + g;
    lse[hi] = g < group ? p.lse[token * p.heads + head] : 0.0f;
    delta[hi] = g < group ? p.delta[token * p.heads + head] : 0.0f;
    for (int e = 0; e < kPerLane; ++e) acc[hi][e] = 0.0f;
  }

  for (int base = 0; base < context; base += kKeyTile) {
    const int keys = min(kKeyTile, context - base);
    __syncthreads();
    load_kv_tile<D>(p.k, p.v, key0 + base, keys, kv_row, kvh, ks, vs, D + 1);
    __syncthreads();
#pragma unroll
    for (int hi = 0; hi < kHeadsPerWarp; ++hi) {
      const int g = warp + hi * kWarps;
      if (g >= group) continue;
      float ds = 0.0f;
      if (lane < keys) {
        const float* q = qs + g * D;
        const float* d_o = dos + g * D;
        const float* kr = ks + lane * (D + 1);
        const float* vr = vs + lane * (D + 1);
        float qk = 0.0f, dp = 0.0f;
#pragma unroll 16
        for (int d = 0; d < D; ++d) {
          qk += q[d] * kr[d];
          dp += d_o[d] * vr[d];
        }
        const float prob = expf(qk * p.scale - lse[hi]);
        ds = prob * (dp - delta[hi]);
      }
      for (int j = 0; j < keys; ++j) {
        const float dsj = __shfl_sync(kFullMask, ds, j);
        const float* kr = ks + j * (D + 1);
#pragma unroll
        for (int e = 0; e < kPerLane; ++e) {
          const int d = lane + 32 * e;
          if (d < D) acc[hi][e] += dsj * kr[d];
        }
      }
    }
  }

#pragma unroll
  for (int hi = 0; hi < kHeadsPerWarp; ++hi) {
    const int g = warp + hi * kWarps;
    if (g >= group) continue;
    bf16* dq = p.dq + token * q_row + (kvh * group + g) * D;
#pragma unroll
    for (int e = 0; e < kPerLane; ++e) {
      const int d = lane + 32 * e;
      if (d < D) dq[d] = to_bf16(p.scale * acc[hi][e]);
    }
  }
}

constexpr int kQueryTile = 32;

// One warp per (key row j, kv head). Query rows t >= j of j's sequence, tile by tile; lane r scores row
// t0 + r, then every lane accumulates its dims over the tile's rows.
template <int D>
__global__ void __launch_bounds__(32) attention_dkv_kernel(AttentionBackwardParams p) {
  constexpr int kPerLane = dims_per_lane<D>();
  __shared__ float qs[kQueryTile * (D + 1)];   // Q rows of the tile, one head
  __shared__ float dos[kQueryTile * (D + 1)];  // dO rows of the tile, one head
  __shared__ float kj[D], vj[D];
  const std::int64_t key = blockIdx.x, kvh = blockIdx.y;
  const int group = static_cast<int>(p.heads / p.kv_heads);
  const int lane = threadIdx.x;
  const std::int64_t q_row = p.heads * D, kv_row = p.kv_heads * D;
  for (int d = lane; d < D; d += 32) {
    kj[d] = to_f32(p.k[key * kv_row + kvh * D + d]);
    vj[d] = to_f32(p.v[key * kv_row + kvh * D + d]);
  }
  const std::int64_t end = p.seq_end[key];
  float dk[kPerLane], dv[kPerLane];
  for (int e = 0; e < kPerLane; ++e) dk[e] = dv[e] = 0.0f;

  for (int g = 0; g < group; ++g) {
    const std::int64_t head = kvh * group + g;
    for (std::int64_t t0 = key; t0 < end; t0 += kQueryTile) {
      const int rows = static_cast<int>(min(static_cast<std::int64_t>(kQueryTile), end - t0));
      __syncwarp();  // the previous tile's reads are done (and kj, vj are written)
      for (int r = 0; r < rows; ++r) {
        for (int d = lane; d < D; d += 32) {
          qs[r * (D + 1) + d] = to_f32(p.q[(t0 + r) * q_row + head * D + d]);
          dos[r * (D + 1) + d] = to_f32(p.dout[(t0 + r) * q_row + head * D + d]);
        }
      }
      __syncwarp();
      float prob = 0.0f, ds = 0.0f;
      if (lane < rows) {
        const std::int64_t t = t0 + lane;
        const float* q = qs + lane * (D + 1);
        const float* d_o = dos + lane * (D + 1);
        float qk = 0.0f, dp = 0.0f;
#pragma unroll 16
        for (int d = 0; d < D; ++d) {
          qk += q[d] * kj[d];
          dp += d_o[d] * vj[d];
        }
        prob = expf(qk * p.scale - p.lse[t * p.heads + head]);
        ds = prob * (dp - p.delta[t * p.heads + head]);
      }
      for (int r = 0; r < rows; ++r) {
        const float pr = __shfl_sync(kFullMask, prob, r);
        const float dsr = __shfl_sync(kFullMask, ds, r);
#pragma unroll
        for (int e = 0; e < kPerLane; ++e) {
          const int d = lane + 32 * e;
          if (d < D) {
            dv[e] += pr * dos[r * (D + 1) + d];
            dk[e] += dsr * qs[r * (D + 1) + d];
          }
        }
      }
    }
  }
#pragma unroll
  for (int e = 0; e < kPerLane; ++e) {
    const int d = lane + 32 * e;
    if (d < D) {
      p.dk[key * kv_row + kvh * D + d] = to_bf16(p.scale * dk[e]);
      p.dv[key * kv_row + kvh * D + d] = to_bf16(dv[e]);
    }
  }
}

template <int D>
void forward_for(const AttentionForwardParams& p) {
  const std::size_t shared = forward_shared_bytes<D>(p.heads / p.kv_heads);
  // Above 48 KiB a kernel must opt in. Not reached while groups are at most 16 (41 KiB at D = 128); kept so
  // that raising kAttentionMaxGroup stays correct.
  if (shared > 48 * 1024)
    CUDA_CHECK(cudaFuncSetAttribute(attention_forward_kernel<D>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                    static_cast<int>(shared)));
  const dim3 grid(static_cast<unsigned>(p.tokens), static_cast<unsigned>(p.kv_heads));
  attention_forward_kernel<D><<<grid, kWarps * 32, shared, p.stream>>>(p);
  CUDA_CHECK_LAUNCH();
}

template <int D>
void backward_for(const AttentionBackwardParams& p) {
  const std::size_t shared = dq_shared_bytes<D>(p.heads / p.kv_heads);
  if (shared > 48 * 1024)  // group 16 at D = 128: 48.3 KiB
    CUDA_CHECK(cudaFuncSetAttribute(attention_dq_kernel<D>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                    static_cast<int>(shared)));
  const dim3 grid(static_cast<unsigned>(p.tokens), static_cast<unsigned>(p.kv_heads));
  attention_dq_kernel<D><<<grid, kWarps * 32, shared, p.stream>>>(p);
  CUDA_CHECK_LAUNCH();
  attention_dkv_kernel<D><<<grid, 32, 0, p.stream>>>(p);
  CUDA_CHECK_LAUNCH();
}

void check_sizes(const char* what, std::int64_t tokens, std::int64_t heads, std::int64_t kv_heads) {
  if (heads <= 0 || kv_heads <= 0 || heads % kv_heads != 0 || heads / kv_heads > kAttentionMaxGroup)
    throw_error(std::string(what) + ": " + std::to_string(heads) + " query heads over " + std::to_string(kv_heads) +
                " kv heads is not supported (a whole group of at most " + std::to_string(kAttentionMaxGroup) +
                " query heads per kv head is required)");
  if (tokens > 0x7fffffff || kv_heads > 65535)
    throw_error(std::string(what) + ": " + std::to_string(tokens) + " rows x " + std::to_string(kv_heads) +
                " kv heads exceeds the launch grid");
}

[[noreturn]] void unsupported_head_dim(const char* what, std::int64_t head_dim) {
  throw_error(std::string(what) + ": head_dim " + std::to_string(head_dim) +
              " is not supported by the CUDA attention kernels (built for 16, 64 and 128)");
}

}  // namespace

void launch_attention_forward(const AttentionForwardParams& p) {
  check_sizes("attention", p.tokens, p.heads, p.kv_heads);
  if (p.tokens == 0) return;
  switch (p.head_dim) {
    case 16: forward_for<16>(p); break;
    case 64: forward_for<64>(p); break;
    case 128: forward_for<128>(p); break;
    default: unsupported_head_dim("attention", p.head_dim);
  }
}

void launch_attention_backward(const AttentionBackwardParams& p) {
  check_sizes("attention_backward", p.tokens, p.heads, p.kv_heads);
  if (p.tokens == 0) return;
  if (p.head_dim != 16 && p.head_dim != 64 && p.head_dim != 128) unsupported_head_dim("attention_backward", p.head_dim);
  const std::int64_t rows = p.tokens * p.heads;
  attention_delta_kernel<<<grid_for(rows * 32), kThreads, 0, p.stream>>>(p);
  CUDA_CHECK_LAUNCH();
  switch (p.head_dim) {
    case 16: backward_for<16>(p); break;
    case 64: backward_for<64>(p); break;
    default: backward_for<128>(p); break;
  }
}

}  // namespace slearn::cuda
