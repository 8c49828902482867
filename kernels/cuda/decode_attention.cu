// Decode attention, flash-decoding style: at batch 1 the reference kernel (attention.cu) runs one block per
// kv head, a handful of blocks on a GPU of 100+ SMs, each walking the whole context. Here the context is
// cut into splits of kDecodeSplitKeys keys, fixed by key position, and two kernels run:
//
// Split kernel: grid (splits of the capacity, kv heads, tokens), 4 warps. A block whose split starts at or
// past its token's context returns at once, so the grid depends on the capacity alone and a CUDA graph
// captured once serves every step. Otherwise the block handles its split for the whole GQA group (up to 16
// query heads) of its kv head, so each K/V byte is read from global memory once per token.
//  - K/V tiles of 32 keys go to shared memory as bf16 with 16-byte cp.async copies (sm_80+), double
//    buffered: the copies of tile t + 1 are issued right after the barrier that publishes tile t, and land
//    while tile t is computed. Rows past the split's last key are zero-filled by the copy itself, so no
//    stale shared memory is ever read. K rows are padded by 16 bytes: the 8 lanes of a 16-byte access phase
//    read 8 different rows at the same column and hit 8 different bank groups.
//  - Scores: warp w owns query heads w, w + 4, ... and lane j scores key j of the tile against each of
//    them (the 8 K values of a 16-byte chunk are unpacked once and reused for every head; q is staged as
//    fp32 and read as broadcast float4). Online softmax per head in the log2 domain (log2(e) folded into
//    the scale, exp2f): the running max is warp-uniform, the running sum stays per lane until the end.
//    Probabilities and the tile's rescale factor go to shared memory.
//  - Accumulation: every warp holds the unnormalised output of all the group's heads for its own slots of
//    the tile's keys (lane = 4 output dims of one key row, rows of a warp contiguous in shared memory, so
//    V reads are conflict-free without padding), rescaled by the tile's factor, then += p * v.
//  - At the end the per-key-slot partial outputs are summed in a fixed order (shuffle butterfly, then the
//    4 warps through shared memory in warp order) and stored as fp32 with the split's max and sum.
// Merge kernel: one warp per (token, query head) combines splits 0 .. ceil(context / kDecodeSplitKeys) - 1
// in increasing order: O = sum_i acc_i 2^(m_i - M) / sum_i l_i 2^(m_i - M), rounded to bf16 once. Rows
// with context <= 0 (the backend's prefill rows, which another kernel computes) are skipped by both.
//
// Determinism: every sum has an order fixed by key positions and the kernels' shapes, never by the other
// tokens of the launch or by timing (no atomics): a token's output is bitwise independent of the batch.
//
// Cost model (not measured: no GPU where this was written). Scores: per lane and 8 dims, one 16-byte K
// load shared by the warp's heads, and per head two broadcast float4 q loads for 8 FMAs. Accumulation: per
// key row and 4 dims, one 8-byte V load shared by all heads, and per head one broadcast float4 p load per
// 16 FMAs. At groups 7-8 the shared-memory traffic stays below what the SM's share of the global K/V stream
// allows; at group 16 the two are about even. Groups below 4 leave warps idle in the score phase (MHA
// models only). Tensor-core MMA (the group as the M dimension) is the next step if a profile shows the
// score phase bound by shared memory. 128 registers (capped by __launch_bounds__ for 4 blocks per SM),
// no spills; static shared memory 44 KiB at head_dim 128 (no opt-in needed), 23 KiB at 64.
#include <climits>
#include <string>

#include "cuda/decode_attention.hpp"
#include "cuda/device_utils.cuh"

namespace slearn::cuda {
namespace {

constexpr int kWarps = 4;
constexpr int kBlockThreads = kWarps * 32;
constexpr int kTileKeys = 32;  // one key per lane in the score phase
constexpr int kMaxGroup = static_cast<int>(kAttentionMaxGroup);
constexpr int kHeadsPerWarp = (kMaxGroup + kWarps - 1) / kWarps;  // score phase: warp w owns heads w + 4 i
constexpr float kLog2e = 1.4426950408889634f;
static_assert(kDecodeSplitKeys % kTileKeys == 0, "a split is a whole number of tiles");

// Shared-memory shapes for head dim D (all strides in elements).
template <int D>
struct Tiles {
  static constexpr int kChunks = D / 8;          // 16-byte chunks (8 bf16) per row
  static constexpr int kKStride = D + 8;         // bf16: rows 16 bytes apart modulo 128 (see the file comment)
  static constexpr int kVStride = D;
  static constexpr int kLanesPerRow = D / 4;     // accumulation: 4 output dims per lane
  static constexpr int kKeyGroups = 32 / kLanesPerRow;                      // key rows a warp reads at once
  static constexpr int kKeysPerSlot = kTileKeys / (kWarps * kKeyGroups);    // keys per (warp, key group)
  static constexpr int kStageElems = kTileKeys * (kKStride + kVStride);     // one K and one V tile
  static constexpr int kStageBytes = kStageElems * 2;
  static constexpr int kReduceBytes = kWarps * kMaxGroup * D * 4;           // per-warp outputs at the end
  static constexpr int kWorkBytes = 2 * kStageBytes > kReduceBytes ? 2 * kStageBytes : kReduceBytes;
  static_assert(D % 16 == 0 && D <= 128, "4 dims per lane, at most one row per warp");
  static_assert(kTileKeys % (kWarps * kKeyGroups) == 0, "the tile's keys split evenly over the key slots");
  static_assert(kStageBytes % 16 == 0 && (kTileKeys * kKStride * 2) % 16 == 0, "cp.async needs 16-byte rows");
};

__device__ __forceinline__ void cp_async_16(void* shared, const void* global, bool valid) {
  const unsigned address = static_cast<unsigned>(__cvta_generic_to_shared(shared));
  const int source_bytes = valid ? 16 : 0;  // 0: nothing is read and the 16 bytes are zero-filled
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(address), "l"(global), "r"(source_bytes)
               : "memory");
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::: "memory"); }
__device__ __forceinline__ void cp_async_wait_all() { asm volatile("cp.async.wait_group 0;\n" ::: "memory"); }

__device__ __forceinline__ void unpack8(const uint4& raw, float* f) {
  const auto* pairs = reinterpret_cast<const __nv_bfloat162*>(&raw);
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const float2 v = __bfloat1622float2(pairs[i]);
    f[2 * i] = v.x;
    f[2 * i + 1] = v.y;
  }
}
__device__ __forceinline__ void unpack4(const uint2& raw, float* f) {
  const auto* pairs = reinterpret_cast<const __nv_bfloat162*>(&raw);
#pragma unroll
  for (int i = 0; i < 2; ++i) {
    const float2 v = __bfloat1622float2(pairs[i]);
    f[2 * i] = v.x;
    f[2 * i + 1] = v.y;
  }
}

// Issues the copies of cache rows [row0, row0 + keys) of kv head `kvh` into a stage; rows keys..31 are
// zero-filled. keys >= 1, so row0 is always a readable address for the zero-filled copies.
template <int D>
__device__ __forceinline__ void load_tile(const DecodeAttentionParams& p, std::int64_t row0, int keys, int kvh,
                                          bf16* ks, bf16* vs) {
  using T = Tiles<D>;
  const std::int64_t kv_row = p.kv_heads * D;
  for (int i = threadIdx.x; i < kTileKeys * T::kChunks; i += kBlockThreads) {
    const int r = i / T::kChunks, c = i % T::kChunks;
    const bool valid = r < keys;
    const std::int64_t offset = (row0 + (valid ? r : 0)) * kv_row + static_cast<std::int64_t>(kvh) * D + c * 8;
    cp_async_16(ks + r * T::kKStride + c * 8, p.k_cache + offset, valid);
    cp_async_16(vs + r * T::kVStride + c * 8, p.v_cache + offset, valid);
  }
}

template <int D>
__global__ void __launch_bounds__(kBlockThreads, 4) decode_split_kernel(DecodeAttentionParams p, float scale_log2,
                                                                         int splits, std::int64_t token0) {
  using T = Tiles<D>;
  __shared__ __align__(16) float q_s[kMaxGroup * D];          // the group's query rows, fp32
  __shared__ __align__(16) float p_s[kMaxGroup * kTileKeys];  // the tile's probabilities per head
  __shared__ float corr_s[kMaxGroup];                         // the tile's rescale factor per head
  __shared__ __align__(16) unsigned char work[T::kWorkBytes];  // 2 stages of K/V, then the reduction

  const int split = blockIdx.x, kvh = blockIdx.y;
  const std::int64_t token = token0 + blockIdx.z;
  const int context = min(p.context[token], static_cast<int>(p.capacity));
  const int first_key = split * kDecodeSplitKeys;
  if (first_key >= context) return;  // uniform over the block; the merge never reads this split
  const int split_keys = min(kDecodeSplitKeys, context - first_key);
  const int tiles = (split_keys + kTileKeys - 1) / kTileKeys;
  const int group = static_cast<int>(p.heads / p.kv_heads);
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const std::int64_t row0 = p.key_row0[token] + first_key;
  auto k_stage = [&](int s) { return reinterpret_cast<bf16*>(work) + s * T::kStageElems; };
  auto v_stage = [&](int s) { return k_stage(s) + kTileKeys * T::kKStride; };

  load_tile<D>(p, row0, min(kTileKeys, split_keys), kvh, k_stage(0), v_stage(0));
  cp_async_commit();

  // The group's query heads are adjacent rows of q: group * D contiguous bf16, 16-byte aligned.
  const uint4* q = reinterpret_cast<const uint4*>(p.q + (token * p.heads + static_cast<std::int64_t>(kvh) * group) * D);
  for (int i = threadIdx.x; i < group * T::kChunks; i += kBlockThreads) {
    float f[8];
    unpack8(q[i], f);
    reinterpret_cast<float4*>(q_s)[2 * i] = make_float4(f[0], f[1], f[2], f[3]);
    reinterpret_cast<float4*>(q_s)[2 * i + 1] = make_float4(f[4], f[5], f[6], f[7]);
  }

  // Score phase state of heads warp + 4 i (running max in log2 units, this lane's share of the sum).
  float m[kHeadsPerWarp], l[kHeadsPerWarp];
#pragma unroll
  for (int i = 0; i < kHeadsPerWarp; ++i) {
    m[i] = -INFINITY;
    l[i] = 0.0f;
  }
  // Accumulation phase: this lane's 4 dims of every head, over its key slot of each tile.
  const int key_group = lane / T::kLanesPerRow;
  const int d0 = (lane % T::kLanesPerRow) * 4;
  const int slot_key0 = (warp * T::kKeyGroups + key_group) * T::kKeysPerSlot;
  float acc[kMaxGroup][4];
#pragma unroll
  for (int g = 0; g < kMaxGroup; ++g)
#pragma unroll
    for (int e = 0; e < 4; ++e) acc[g][e] = 0.0f;

  for (int t = 0; t < tiles; ++t) {
    cp_async_wait_all();
    // Tile t (and, the first time, q_s) is visible to every thread, and every thread is done with tile
    // t - 1: its stage, p_s and corr_s may be overwritten.
    __syncthreads();
    if (t + 1 < tiles) {
      const int next = (t + 1) * kTileKeys;
      load_tile<D>(p, row0 + next, min(kTileKeys, split_keys - next), kvh, k_stage((t + 1) & 1),
                   v_stage((t + 1) & 1));
      cp_async_commit();
    }
    const bf16* ks = k_stage(t & 1);
    const bf16* vs = v_stage(t & 1);
    const int keys = min(kTileKeys, split_keys - t * kTileKeys);  // >= 1

    // Scores of key `lane` against the warp's heads.
    float s[kHeadsPerWarp];
#pragma unroll
    for (int i = 0; i < kHeadsPerWarp; ++i) s[i] = 0.0f;
    const bf16* k_row = ks + lane * T::kKStride;
#pragma unroll
    for (int c = 0; c < T::kChunks; ++c) {
      float k8[8];
      unpack8(*reinterpret_cast<const uint4*>(k_row + c * 8), k8);
#pragma unroll
      for (int i = 0; i < kHeadsPerWarp; ++i) {
        const int g = warp + i * kWarps;
        if (g < group) {
          const float4 qa = *reinterpret_cast<const float4*>(q_s + g * D + c * 8);
          const float4 qb = *reinterpret_cast<const float4*>(q_s + g * D + c * 8 + 4);
          float dot = s[i];
          dot = fmaf(qa.x, k8[0], dot);
          dot = fmaf(qa.y, k8[1], dot);
          dot = fmaf(qa.z, k8[2], dot);
          dot = fmaf(qa.w, k8[3], dot);
          dot = fmaf(qb.x, k8[4], dot);
          dot = fmaf(qb.y, k8[5], dot);
          dot = fmaf(qb.z, k8[6], dot);
          dot = fmaf(qb.w, k8[7], dot);
          s[i] = dot;
        }
      }
    }
#pragma unroll
    for (int i = 0; i < kHeadsPerWarp; ++i) {
      const int g = warp + i * kWarps;
      if (g < group) {  // uniform across the warp: the reductions see all 32 lanes
        const float score = lane < keys ? s[i] * scale_log2 : -INFINITY;
        // keys >= 1: the tile max and so m_new are finite; 2^(-inf - m_new) = 0 on the first tile.
        const float m_new = fmaxf(m[i], warp_max(score));
        const float correction = exp2f(m[i] - m_new);
        const float prob = exp2f(score - m_new);  // 0 for the zero-filled rows
        l[i] = l[i] * correction + prob;
        m[i] = m_new;
        p_s[g * kTileKeys + lane] = prob;
        if (lane == 0) corr_s[g] = correction;
      }
    }
    __syncthreads();  // p_s and corr_s are complete

    // acc = acc * correction + sum over this lane's keys of p * v. Zero-filled rows have p = 0 and v = 0.
#pragma unroll
    for (int g = 0; g < kMaxGroup; ++g) {
      if (g < group) {
        const float correction = corr_s[g];
#pragma unroll
        for (int e = 0; e < 4; ++e) acc[g][e] *= correction;
      }
    }
    constexpr int kStep = T::kKeysPerSlot % 4 == 0 ? 4 : 1;
#pragma unroll
    for (int jj = 0; jj < T::kKeysPerSlot; jj += kStep) {
      const int j = slot_key0 + jj;
      float v[kStep][4];
#pragma unroll
      for (int u = 0; u < kStep; ++u) unpack4(*reinterpret_cast<const uint2*>(vs + (j + u) * T::kVStride + d0), v[u]);
#pragma unroll
      for (int g = 0; g < kMaxGroup; ++g) {
        if (g < group) {
          float prob[kStep];
          if constexpr (kStep == 4) {
            const float4 p4 = *reinterpret_cast<const float4*>(p_s + g * kTileKeys + j);
            prob[0] = p4.x;
            prob[1] = p4.y;
            prob[2] = p4.z;
            prob[3] = p4.w;
          } else {
            prob[0] = p_s[g * kTileKeys + j];
          }
#pragma unroll
          for (int u = 0; u < kStep; ++u)
#pragma unroll
            for (int e = 0; e < 4; ++e) acc[g][e] = fmaf(prob[u], v[u][e], acc[g][e]);
        }
      }
    }
  }

  const std::int64_t rows = p.tokens * p.heads;
  const std::int64_t head0 = token * p.heads + static_cast<std::int64_t>(kvh) * group;  // row of head 0
  // The split's max and sum per head, from the score phase's owner warp.
  float* stats = p.partial + rows * splits * D;
#pragma unroll
  for (int i = 0; i < kHeadsPerWarp; ++i) {
    const int g = warp + i * kWarps;
    if (g < group) {
      const float total = warp_sum(l[i]);
      if (lane == 0) {
        const std::int64_t at = ((head0 + g) * splits + split) * 2;
        stats[at] = m[i];
        stats[at + 1] = total;
      }
    }
  }
  // Sum the key groups of the warp (butterfly: every lane ends with the same, fixed-order sum) ...
#pragma unroll
  for (int offset = T::kLanesPerRow; offset < 32; offset *= 2) {
#pragma unroll
    for (int g = 0; g < kMaxGroup; ++g) {
      if (g < group) {
#pragma unroll
        for (int e = 0; e < 4; ++e) acc[g][e] += __shfl_xor_sync(kFullMask, acc[g][e], offset);
      }
    }
  }
  // ... then the warps, in warp order, through the work area (free once every warp is past the last tile).
  __syncthreads();
  float* reduce = reinterpret_cast<float*>(work);  // [kWarps][group][D]
  if (key_group == 0) {
#pragma unroll
    for (int g = 0; g < kMaxGroup; ++g)
      if (g < group)
        *reinterpret_cast<float4*>(reduce + (warp * group + g) * D + d0) =
            make_float4(acc[g][0], acc[g][1], acc[g][2], acc[g][3]);
  }
  __syncthreads();
  const int quads = group * D / 4;
  for (int i = threadIdx.x; i < quads; i += kBlockThreads) {
    float4 sum = reinterpret_cast<const float4*>(reduce)[i];
#pragma unroll
    for (int w = 1; w < kWarps; ++w) {
      const float4 part = reinterpret_cast<const float4*>(reduce)[w * quads + i];
      sum.x += part.x;
      sum.y += part.y;
      sum.z += part.z;
      sum.w += part.w;
    }
    const int g = (4 * i) / D, d = (4 * i) % D;
    *reinterpret_cast<float4*>(p.partial + ((head0 + g) * splits + split) * D + d) = sum;
  }
}

template <int D>
__global__ void __launch_bounds__(kBlockThreads) decode_merge_kernel(DecodeAttentionParams p, int splits) {
  constexpr int kPerLane = (D + 31) / 32;
  const std::int64_t rows = p.tokens * p.heads;
  const std::int64_t row = static_cast<std::int64_t>(blockIdx.x) * kWarps + threadIdx.x / 32;  // (token, head)
  if (row >= rows) return;  // whole warps
  const int lane = threadIdx.x % 32;
  const int context = min(p.context[row / p.heads], static_cast<int>(p.capacity));
  if (context <= 0) return;  // not a decode row (the backend's prefill rows): its output is left alone
  const int used = min((context + kDecodeSplitKeys - 1) / kDecodeSplitKeys, splits);
  const float* acc = p.partial + row * splits * D;
  const float* stats = p.partial + rows * splits * D + row * splits * 2;

  float m_max = -INFINITY;  // used >= 1, and every split used holds at least one key: each m_i is finite
  for (int i = 0; i < used; ++i) m_max = fmaxf(m_max, stats[2 * i]);
  float total = 0.0f, out[kPerLane];
#pragma unroll
  for (int e = 0; e < kPerLane; ++e) out[e] = 0.0f;
  for (int i = 0; i < used; ++i) {
    const float weight = exp2f(stats[2 * i] - m_max);
    total = fmaf(stats[2 * i + 1], weight, total);
#pragma unroll
    for (int e = 0; e < kPerLane; ++e) {
      const int d = lane + 32 * e;
      if (d < D) out[e] = fmaf(acc[i * D + d], weight, out[e]);
    }
  }
  const float inv = 1.0f / total;  // total >= 1: the split holding the max contributes l >= 1 at weight 1
  bf16* o = p.out + row * D;
#pragma unroll
  for (int e = 0; e < kPerLane; ++e) {
    const int d = lane + 32 * e;
    if (d < D) o[d] = to_bf16(out[e] * inv);
  }
}

constexpr std::int64_t kMaxGridZ = 65535;

bool aligned16(const void* pointer) { return pointer != nullptr && reinterpret_cast<std::uintptr_t>(pointer) % 16 == 0; }

template <int D>
void decode_for(const DecodeAttentionParams& p) {
  if (p.tokens == 0) return;
  if (!aligned16(p.q) || !aligned16(p.k_cache) || !aligned16(p.v_cache) || !aligned16(p.out) ||
      !aligned16(p.partial) || p.key_row0 == nullptr || p.context == nullptr)
    throw_error("decode_attention: q, k_cache, v_cache, out and partial must be 16-byte aligned device pointers, "
                "key_row0 and context non-null");
  const int splits = static_cast<int>(decode_attention_splits(p.capacity));
  // Tokens go on the grid's z extent, at most 65535 per launch: larger batches take several launches.
  for (std::int64_t token0 = 0; token0 < p.tokens; token0 += kMaxGridZ) {
    const std::int64_t count = p.tokens - token0 < kMaxGridZ ? p.tokens - token0 : kMaxGridZ;
    const dim3 grid(static_cast<unsigned>(splits), static_cast<unsigned>(p.kv_heads), static_cast<unsigned>(count));
    decode_split_kernel<D><<<grid, kBlockThreads, 0, p.stream>>>(p, p.scale * kLog2e, splits, token0);
    CUDA_CHECK_LAUNCH();
  }
  const std::int64_t rows = p.tokens * p.heads;
  decode_merge_kernel<D><<<static_cast<unsigned>((rows + kWarps - 1) / kWarps), kBlockThreads, 0, p.stream>>>(p, splits);
  CUDA_CHECK_LAUNCH();
}

}  // namespace

std::int64_t decode_attention_splits(std::int64_t capacity) {
  return (capacity + kDecodeSplitKeys - 1) / kDecodeSplitKeys;
}

std::size_t decode_attention_scratch_bytes(std::int64_t tokens, std::int64_t heads, std::int64_t head_dim,
                                           std::int64_t capacity) {
  return static_cast<std::size_t>(tokens * heads * decode_attention_splits(capacity) * (head_dim + 2)) * sizeof(float);
}

void launch_decode_attention(const DecodeAttentionParams& p) {
  if (p.heads <= 0 || p.kv_heads <= 0 || p.heads % p.kv_heads != 0 || p.heads / p.kv_heads > kAttentionMaxGroup)
    throw_error("decode_attention: " + std::to_string(p.heads) + " query heads over " + std::to_string(p.kv_heads) +
                " kv heads is not supported (a whole group of at most " + std::to_string(kAttentionMaxGroup) +
                " query heads per kv head is required)");
  if (p.tokens < 0 || p.tokens * p.heads / kWarps >= INT_MAX || p.kv_heads > 65535 || p.capacity <= 0 ||
      p.capacity > INT_MAX)
    throw_error("decode_attention: " + std::to_string(p.tokens) + " tokens x " + std::to_string(p.kv_heads) +
                " kv heads over a capacity of " + std::to_string(p.capacity) + " keys exceeds the launch grid");
  switch (p.head_dim) {
    case 16: decode_for<16>(p); break;
    case 64: decode_for<64>(p); break;
    case 128: decode_for<128>(p); break;
    default:
      throw_error("decode_attention: head_dim " + std::to_string(p.head_dim) +
                  " is not supported by the CUDA decode attention kernel (built for 16, 64 and 128)");
  }
}

}  // namespace slearn::cuda
