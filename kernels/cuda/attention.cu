// Causal GQA attention forward, flash style: keys and values stream through shared memory in tiles of
// kKeyTile rows and the softmax is computed online (running max, running sum, rescaled accumulator), so no
// score matrix is ever stored. The backward of the training attention is attention_backward.cu.
//
// The reference kernel, for inference over the KV cache and training over packed sequences where the
// tensor-core kernels do not apply (prefill_attention.cu serves prefill chunks and training at head dims 64
// and 128, decode_attention.cu lone decode tokens):
//   one block of kWarps warps per (query row, kv head). The block stages the query rows of the kv head's
//   group of query heads and, tile by tile, the K and V rows of the query's context, as fp32 in shared
//   memory. Warp w handles query heads w, w + kWarps, ... of the group; within a tile, lane j scores key j
//   (K rows padded to head_dim + 1 floats so the 32 lanes hit 32 banks), then each lane accumulates the
//   output dims d = lane, lane + 32, ... over the tile's keys (probabilities broadcast by shuffles).
//   The group's heads share every K/V tile: GQA costs one K/V read per kv head, not per query head.
//   Training also writes each row's log-sum-exp, which the backward recomputes the probabilities from.
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

}  // namespace slearn::cuda
