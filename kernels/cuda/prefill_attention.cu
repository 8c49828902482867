// Prefill attention on tensor cores, FlashAttention-2 style. The reference kernel (attention.cu) gives every
// query row its own block and re-reads the row's whole context per row: fine for decode, but a prefill chunk
// of n rows then reads ~n^2/2 key rows and runs on CUDA cores. Here a block owns a tile of 64 query rows of
// one head, so each K/V tile it stages serves 64 rows, and both products run as mma.sync bf16 on tensor cores.
//
// Block = 4 warps, warp w owns query rows 16w .. 16w + 15 of the tile (one mma M). Grid (tiles, heads):
// the GQA group is not packed into M; the group's heads re-read the same K/V tiles, mostly from L2.
// Per block:
//  - the Q tile (64 x D bf16) is copied to shared memory once (cp.async) and moved to registers with ldmatrix
//    as mma A fragments, where it stays for the whole key loop;
//  - K and V tiles of 64 keys stream through shared memory, double-buffered: the cp.async copies of tile
//    kt + 1 are in flight while tile kt is computed;
//  - S = Q K^T (fp32 accumulators), scaled into the log2 domain, masked only on the diagonal tiles;
//  - online softmax per row in fp32 registers: each row's max and sum are spread over the 4 threads of a
//    quad (below), combined with two xor shuffles;
//  - P is rounded to bf16 in registers: the S accumulator layout of two adjacent n-tiles is exactly the A
//    fragment layout of one k-step, so P never touches shared memory; O += P V with V B fragments from
//    ldmatrix.trans;
//  - at the end O / l is rounded to bf16 and stored, and, when p.lse is set (training), the row's natural
//    log-sum-exp: with m the max and l the sum in the log2 domain (x = log2(e) scale q.k), ln(sum_j e^(scale
//    q.k_j)) = ln 2 (m + log2 l) = ln 2 m + ln l.
// Key tiles past the tile's last query position are never loaded; inside the last loaded tile, keys past it
// are zero-filled (cp.async src-size 0), so no cache row beyond the sequence's last position is ever read.
// Nothing bounds a position by the capacity: key j of a tile is row slot * capacity + j (int64), which lets
// training pass a packed batch's k, v as a cache of capacity 1 with slot = the sequence's first row.
// Shared rows are padded by 16 bytes (D + 8 elements): the 8 rows of an 8x8 ldmatrix matrix then start 4
// banks apart and hit all 32 banks, and the 16-byte cp.async stores stay aligned. No atomics: each output
// element is written once, by one thread, with a fixed summation order (deterministic for a given tiling).
//
// mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32, per the PTX ISA ("Matrix Fragments for mma.m16n8k16
// with floating point type"); lane = 4 g + t (g = lane / 4 "groupID", t = lane % 4 "threadID_in_group"),
// each .b32 register holds two bf16, the lower-indexed element in the low half:
//   A (16 x 16, row-major, M x K), 4 registers:  a[0] = A[g][2t, 2t+1]      a[1] = A[g+8][2t, 2t+1]
//                                                a[2] = A[g][2t+8, 2t+9]    a[3] = A[g+8][2t+8, 2t+9]
//   B (16 x 8, K x N), 2 registers:              b[0] = B[2t, 2t+1][g]      b[1] = B[2t+8, 2t+9][g]
//   C, D (16 x 8, fp32), 4 registers:            c[0] = C[g][2t]  c[1] = C[g][2t+1]
//                                                c[2] = C[g+8][2t]  c[3] = C[g+8][2t+1]
// ldmatrix.m8n8.x4.b16: lanes 8i .. 8i + 7 give the row addresses of matrix i; register i of every lane
// receives matrix i's elements [g][2t, 2t+1] (with .trans: [2t][g] and [2t+1][g]). Hence:
//   Q (A of S = Q K^T, k-step = 16 dims): matrix i = rows +8 (i & 1), dims +8 (i >> 1) -> a[0..3] in order.
//   K (B of S, B[k][n] = K[key n][dim k]): K rows are B columns, so plain ldmatrix: matrix i = 8 keys x dims
//     +8i; registers 0, 1 are b[0], b[1] of one k-step, 2, 3 those of the next.
//   V (B of O = P V, B[k][n] = V[key k][dim n]): .trans, matrix i = keys +8 (i & 1), dims +8 (i >> 1);
//     registers 0, 1 are b[0], b[1] of dim n-tile 0, 2, 3 those of n-tile 1.
//   P (A of O = P V, k-step = 16 keys = S n-tiles 2j, 2j + 1): a[0] = S[2j].c[0, 1], a[1] = S[2j].c[2, 3],
//     a[2] = S[2j+1].c[0, 1], a[3] = S[2j+1].c[2, 3].
// A thread thus holds rows g and g + 8 of its warp's 16 rows; the other columns of those rows are held by
// the 3 other lanes of its quad (same g), which is why row reductions are xor shuffles over 1 and 2.
//
// NOTE: written and compiled for sm_80/sm_90 without a GPU at hand; never run yet (docs/cuda.md).
#include <algorithm>
#include <cstring>
#include <string>

#include "cuda/device_utils.cuh"
#include "cuda/tensor_core.cuh"
#include "cuda/prefill_attention.hpp"

namespace slearn::cuda {
namespace {

constexpr int kWarps = kPrefillTileRows / 16;
constexpr int kBlockThreads = kWarps * 32;
constexpr int kKeyTile = 64;  // keys per K/V tile (the N of S, the K of P V)
constexpr float kLog2e = 1.4426950408889634f;
constexpr float kLn2 = 0.6931471805599453f;
static_assert(kPrefillTileRows == 64 && kKeyTile == 64, "the loops below assume 64-row query and key tiles");

// Shared memory of one block: K stages 0 and 1, then V stages 0 and 1, each kKeyTile x kStride. The Q tile
// is staged in K stage 1 before the loop (it moves to registers before tile 1 is loaded there), which keeps
// D = 128 at 68 KiB: two blocks per SM on sm_80 (164 KiB) too, where a separate Q tile (85 KiB) allowed one.
template <int D>
struct PrefillSmem {
  static constexpr int kStride = D + 8;  // elements per shared row: 16 bytes of padding (see the top)
  static constexpr int kTileElems = kKeyTile * kStride;
  static constexpr std::size_t kBytes = sizeof(bf16) * 4 * kTileElems;  // D = 64: 36 KiB, D = 128: 68 KiB
};

// Two floats as bf16 in one register, `low` in the low half (the lower-indexed element of a fragment pair).
__device__ __forceinline__ std::uint32_t pack_bf16(float low, float high) {
  const __nv_bfloat162 pair = __floats2bfloat162_rn(low, high);
  std::uint32_t bits;
  memcpy(&bits, &pair, sizeof bits);
  return bits;
}

__device__ __forceinline__ float quad_max(float v) {
  v = fmaxf(v, __shfl_xor_sync(kFullMask, v, 1));
  return fmaxf(v, __shfl_xor_sync(kFullMask, v, 2));
}
__device__ __forceinline__ float quad_sum(float v) {
  v += __shfl_xor_sync(kFullMask, v, 1);
  return v + __shfl_xor_sync(kFullMask, v, 2);
}

// Issues the copies of keys key0 .. key0 + 63 (one kv head) into k_dst / v_dst; keys >= key_count are zeroed.
template <int D>
__device__ __forceinline__ void load_kv_tile(const bf16* k_base, const bf16* v_base, std::int64_t kv_stride,
                                             int key0, int key_count, bf16* k_dst, bf16* v_dst) {
  constexpr int kChunksPerRow = D / 8;  // 16-byte copies per row
  constexpr int kStride = PrefillSmem<D>::kStride;
#pragma unroll
  for (int i = 0; i < kKeyTile * kChunksPerRow / kBlockThreads; ++i) {
    const int c = static_cast<int>(threadIdx.x) + i * kBlockThreads;
    const int r = c / kChunksPerRow, col = (c % kChunksPerRow) * 8;
    const bool valid = key0 + r < key_count;
    const std::int64_t offset = valid ? (key0 + r) * kv_stride + col : 0;  // row 0 stays a valid address
    cp_async_16(k_dst + r * kStride + col, k_base + offset, valid);
    cp_async_16(v_dst + r * kStride + col, v_base + offset, valid);
  }
}

template <int D>
__global__ void __launch_bounds__(kBlockThreads) prefill_attention_kernel(PrefillAttentionParams p) {
  using Smem = PrefillSmem<D>;
  constexpr int kStride = Smem::kStride;
  constexpr int kChunksPerRow = D / 8;
  constexpr int kDimSteps = D / 16;        // k-steps of S = Q K^T
  constexpr int kDimTiles = D / 8;         // n-tiles of O
  constexpr int kKeyNTiles = kKeyTile / 8;  // n-tiles of S
  constexpr int kKeySteps = kKeyTile / 16;  // k-steps of O += P V
  static_assert(kDimSteps % 2 == 0, "K fragments are loaded two k-steps at a time");

  extern __shared__ __align__(16) unsigned char prefill_smem[];
  bf16* ks = reinterpret_cast<bf16*>(prefill_smem);  // [2][kKeyTile][kStride]
  bf16* vs = ks + 2 * Smem::kTileElems;               // [2][kKeyTile][kStride]
  bf16* qs = ks + Smem::kTileElems;                   // [kPrefillTileRows][kStride], K stage 1 until tile 1

  const PrefillTile tile = p.tiles[blockIdx.x];
  const int head = static_cast<int>(blockIdx.y);
  const int kv_head = head / static_cast<int>(p.heads / p.kv_heads);
  const int warp = static_cast<int>(threadIdx.x) / 32, lane = static_cast<int>(threadIdx.x) % 32;
  const int g = lane / 4, t = lane % 4;  // fragment coordinates (top of the file)
  const std::int64_t q_stride = p.heads * D, kv_stride = p.kv_heads * D;
  const int key_count = tile.position0 + tile.rows;  // keys 0 .. the last row's position
  const int key_tiles = (key_count + kKeyTile - 1) / kKeyTile;
  const bf16* q_base = p.q + static_cast<std::int64_t>(tile.row0) * q_stride + static_cast<std::int64_t>(head) * D;
  const std::int64_t cache_row0 = static_cast<std::int64_t>(tile.slot) * p.capacity;
  const bf16* k_base = p.k_cache + cache_row0 * kv_stride + static_cast<std::int64_t>(kv_head) * D;
  const bf16* v_base = p.v_cache + cache_row0 * kv_stride + static_cast<std::int64_t>(kv_head) * D;

  // Prologue: the Q tile (rows past tile.rows zeroed) and K/V tile 0, in one group.
#pragma unroll
  for (int i = 0; i < kPrefillTileRows * kChunksPerRow / kBlockThreads; ++i) {
    const int c = static_cast<int>(threadIdx.x) + i * kBlockThreads;
    const int r = c / kChunksPerRow, col = (c % kChunksPerRow) * 8;
    const bool valid = r < tile.rows;
    cp_async_16(qs + r * kStride + col, valid ? q_base + r * q_stride + col : p.q, valid);
  }
  load_kv_tile<D>(k_base, v_base, kv_stride, 0, key_count, ks, vs);
  cp_async_commit();
  cp_async_wait<0>();  // this thread's copies have landed...
  __syncthreads();     // ...and everyone's

  // Q fragments of this warp's 16 rows, kept for the whole loop (lane gives the row address of matrix lane / 8).
  std::uint32_t q_frag[kDimSteps][4];
  {
    const int matrix = lane / 8;
    const bf16* row = qs + (warp * 16 + (matrix % 2) * 8 + lane % 8) * kStride + (matrix / 2) * 8;
#pragma unroll
    for (int kk = 0; kk < kDimSteps; ++kk) ldmatrix_x4(q_frag[kk], row + kk * 16);
  }
  __syncthreads();  // all Q reads are done before iteration 0 loads tile 1 over them

  float o[kDimTiles][4];
#pragma unroll
  for (int dt = 0; dt < kDimTiles; ++dt) o[dt][0] = o[dt][1] = o[dt][2] = o[dt][3] = 0.0f;
  // Rows g and g + 8 of the warp: running max (log2 domain) and this thread's share of the running sum.
  float row_max[2] = {-INFINITY, -INFINITY};
  float row_sum[2] = {0.0f, 0.0f};
  const int warp_position0 = tile.position0 + warp * 16;  // position of the warp's first row
  const int position[2] = {warp_position0 + g, warp_position0 + g + 8};
  const bool warp_has_rows = warp * 16 < tile.rows;  // uniform per warp, as are the branches below
  const float scale_log2 = p.scale * kLog2e;

  for (int kt = 0; kt < key_tiles; ++kt) {
    if (kt + 1 < key_tiles) {
      const int next = (kt + 1) % 2;
      load_kv_tile<D>(k_base, v_base, kv_stride, (kt + 1) * kKeyTile, key_count, ks + next * Smem::kTileElems,
                      vs + next * Smem::kTileElems);
      cp_async_commit();
      cp_async_wait<1>();  // tile kt has landed; kt + 1 may still be in flight
    } else {
      cp_async_wait<0>();
    }
    __syncthreads();

    const int key0 = kt * kKeyTile;
    // A tile wholly past the warp's last row is all masked for it: skip (m, l, O unchanged).
    if (warp_has_rows && key0 <= warp_position0 + 15) {
      const bf16* k_tile = ks + (kt % 2) * Smem::kTileElems;
      const bf16* v_tile = vs + (kt % 2) * Smem::kTileElems;

      // S = Q K^T: s[nt] is the 16 x 8 block of keys key0 + 8 nt .. + 7.
      float s[kKeyNTiles][4];
#pragma unroll
      for (int nt = 0; nt < kKeyNTiles; ++nt) {
        s[nt][0] = s[nt][1] = s[nt][2] = s[nt][3] = 0.0f;
        const bf16* key_row = k_tile + (nt * 8 + lane % 8) * kStride + (lane / 8) * 8;
#pragma unroll
        for (int kk = 0; kk < kDimSteps; kk += 2) {
          std::uint32_t b[4];
          ldmatrix_x4(b, key_row + kk * 16);  // dims 16 kk + 8i .. + 7 as matrix i
          mma_bf16(s[nt], q_frag[kk], b[0], b[1]);
          mma_bf16(s[nt], q_frag[kk + 1], b[2], b[3]);
        }
      }

      // Scale into the log2 domain; mask key > position, which only a tile reaching past the warp's first
      // row can hold (that includes the zero-filled keys >= key_count of the last tile).
      const bool diagonal = key0 + kKeyTile - 1 > warp_position0;
#pragma unroll
      for (int nt = 0; nt < kKeyNTiles; ++nt) {
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          const int key = key0 + nt * 8 + 2 * t + (e % 2);
          const float x = s[nt][e] * scale_log2;
          s[nt][e] = diagonal && key > position[e / 2] ? -INFINITY : x;
        }
      }

      // Online softmax. Tile 0 holds key 0, which every row sees, so after it row_max is finite; a row can
      // only see all -inf later, where new_max = row_max keeps it finite. The guard covers the first tile
      // anyway (no -inf - -inf).
      float base[2], correction[2];
#pragma unroll
      for (int i = 0; i < 2; ++i) {
        float tile_max = -INFINITY;
#pragma unroll
        for (int nt = 0; nt < kKeyNTiles; ++nt) tile_max = fmaxf(tile_max, fmaxf(s[nt][2 * i], s[nt][2 * i + 1]));
        const float new_max = fmaxf(row_max[i], quad_max(tile_max));
        base[i] = new_max == -INFINITY ? 0.0f : new_max;
        correction[i] = exp2f(row_max[i] - base[i]);  // 0 on the first tile (row_max = -inf)
        row_max[i] = new_max;
      }
      float tile_sum[2] = {0.0f, 0.0f};
#pragma unroll
      for (int nt = 0; nt < kKeyNTiles; ++nt) {
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          s[nt][e] = exp2f(s[nt][e] - base[e / 2]);  // masked: exp2(-inf) = 0
          tile_sum[e / 2] += s[nt][e];
        }
      }
#pragma unroll
      for (int i = 0; i < 2; ++i) row_sum[i] = row_sum[i] * correction[i] + tile_sum[i];
#pragma unroll
      for (int dt = 0; dt < kDimTiles; ++dt) {
        o[dt][0] *= correction[0];
        o[dt][1] *= correction[0];
        o[dt][2] *= correction[1];
        o[dt][3] *= correction[1];
      }

      // O += P V, P as bf16 A fragments straight from the S accumulators.
#pragma unroll
      for (int kk = 0; kk < kKeySteps; ++kk) {
        const std::uint32_t a[4] = {pack_bf16(s[2 * kk][0], s[2 * kk][1]), pack_bf16(s[2 * kk][2], s[2 * kk][3]),
                                    pack_bf16(s[2 * kk + 1][0], s[2 * kk + 1][1]),
                                    pack_bf16(s[2 * kk + 1][2], s[2 * kk + 1][3])};
        const bf16* value_row = v_tile + (kk * 16 + lane % 8 + ((lane / 8) % 2) * 8) * kStride + (lane / 16) * 8;
#pragma unroll
        for (int dt = 0; dt < kDimTiles; dt += 2) {
          std::uint32_t b[4];
          ldmatrix_x4_trans(b, value_row + dt * 8);  // dims 8 dt .. 8 dt + 15
          mma_bf16(o[dt], a, b[0], b[1]);
          mma_bf16(o[dt + 1], a, b[2], b[3]);
        }
      }
    }
    __syncthreads();  // every warp is done with stage kt % 2 before iteration kt + 1 refills it
  }
  if (!warp_has_rows) return;
  const int rows[2] = {warp * 16 + g, warp * 16 + g + 8};
#pragma unroll
  for (int i = 0; i < 2; ++i) {
    const float total = quad_sum(row_sum[i]);  // >= 1: the row's max key contributes exp2(0)
    if (rows[i] >= tile.rows) continue;
    const float inv = 1.0f / total;
    const std::int64_t q_row = static_cast<std::int64_t>(tile.row0) + rows[i];
    // row_max is the same in the 4 threads of the quad (quad_max), total too: one of them writes.
    if (p.lse != nullptr && t == 0) p.lse[q_row * p.heads + head] = row_max[i] * kLn2 + logf(total);
    bf16* out = p.out + q_row * q_stride + static_cast<std::int64_t>(head) * D;
#pragma unroll
    for (int dt = 0; dt < kDimTiles; ++dt) {
      const __nv_bfloat162 pair = __floats2bfloat162_rn(o[dt][2 * i] * inv, o[dt][2 * i + 1] * inv);
      *reinterpret_cast<__nv_bfloat162*>(out + dt * 8 + 2 * t) = pair;
    }
  }
}

template <int D>
void prefill_for(const PrefillAttentionParams& p) {
  if (p.tile_count == 0) return;
  constexpr std::size_t shared = PrefillSmem<D>::kBytes;
  if (shared > 48 * 1024)  // D = 128; the opt-in is per function and cheap, so it is repeated per launch
    CUDA_CHECK(cudaFuncSetAttribute(prefill_attention_kernel<D>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                    static_cast<int>(shared)));
  const dim3 grid(static_cast<unsigned>(p.tile_count), static_cast<unsigned>(p.heads));
  prefill_attention_kernel<D><<<grid, kBlockThreads, shared, p.stream>>>(p);
  CUDA_CHECK_LAUNCH();
}

bool aligned(const void* p, std::uintptr_t bytes) { return reinterpret_cast<std::uintptr_t>(p) % bytes == 0; }

}  // namespace

std::vector<PrefillTile> prefill_tiles(const std::vector<PrefillChunk>& chunks, std::int64_t q_rows, std::int64_t slots,
                                       std::int64_t capacity) {
  constexpr std::int64_t kMax32 = 0x7fffffff;
  if (q_rows > kMax32 || capacity > kMax32 || slots > kMax32)
    throw_error("prefill attention: " + std::to_string(q_rows) + " query rows, " + std::to_string(slots) + " slots x " +
                std::to_string(capacity) + " positions exceed 32-bit tile fields");
  std::vector<PrefillTile> tiles;
  for (std::size_t i = 0; i < chunks.size(); ++i) {
    const PrefillChunk& c = chunks[i];
    if (c.row0 < 0 || c.length < 0 || c.start < 0 || c.row0 + c.length > q_rows || c.start + c.length > capacity ||
        c.slot < 0 || c.slot >= slots)
      throw_error("prefill attention: chunk " + std::to_string(i) + " (rows " + std::to_string(c.row0) + " + " +
                  std::to_string(c.length) + ", positions from " + std::to_string(c.start) + ", slot " +
                  std::to_string(c.slot) + ") is outside the " + std::to_string(q_rows) + " query rows or the cache (" +
                  std::to_string(slots) + " slots x " + std::to_string(capacity) + " positions)");
    for (std::int64_t r = 0; r < c.length; r += kPrefillTileRows)
      tiles.push_back({static_cast<std::int32_t>(c.row0 + r),
                       static_cast<std::int32_t>(std::min<std::int64_t>(kPrefillTileRows, c.length - r)),
                       static_cast<std::int32_t>(c.start + r), c.slot});
  }
  // Longest first: a block's work grows with its key count, and the grid is scheduled roughly in order.
  std::stable_sort(tiles.begin(), tiles.end(), [](const PrefillTile& a, const PrefillTile& b) {
    return a.position0 + a.rows > b.position0 + b.rows;
  });
  return tiles;
}

std::vector<PrefillTile> training_prefill_tiles(const std::int64_t* seq_starts, std::size_t count,
                                                std::int64_t tokens) {
  if (count == 0 || seq_starts[0] != 0 || seq_starts[count - 1] != tokens || tokens > 0x7fffffff) {
    const std::string got =
        count == 0 ? "no starts" : std::to_string(seq_starts[0]) + " .. " + std::to_string(seq_starts[count - 1]);
    throw_error("training prefill attention: sequence starts must run from 0 to the " + std::to_string(tokens) +
                " tokens, at most 2^31 - 1 (got " + got + ")");
  }
  std::vector<PrefillTile> tiles;
  for (std::size_t s = 0; s + 1 < count; ++s) {
    const std::int64_t start = seq_starts[s], end = seq_starts[s + 1];
    if (end < start)
      throw_error("training prefill attention: sequence starts decrease at sequence " + std::to_string(s) + " (" +
                  std::to_string(start) + " -> " + std::to_string(end) + ")");
    // A cache of capacity 1 in slot `start`: key j is row start + j, query row start + r has position r.
    for (std::int64_t r = 0; r < end - start; r += kPrefillTileRows)
      tiles.push_back({static_cast<std::int32_t>(start + r),
                       static_cast<std::int32_t>(std::min<std::int64_t>(kPrefillTileRows, end - start - r)),
                       static_cast<std::int32_t>(r), static_cast<std::int32_t>(start)});
  }
  std::stable_sort(tiles.begin(), tiles.end(), [](const PrefillTile& a, const PrefillTile& b) {
    return a.position0 + a.rows > b.position0 + b.rows;
  });
  return tiles;
}

bool prefill_attention_supports(std::int64_t head_dim) { return head_dim == 64 || head_dim == 128; }

void launch_prefill_attention(const PrefillAttentionParams& p) {
  if (p.heads <= 0 || p.kv_heads <= 0 || p.heads % p.kv_heads != 0 || p.heads > 65535 || p.tile_count < 0 ||
      p.tile_count > 0x7fffffff || p.capacity <= 0)
    throw_error("prefill attention: " + std::to_string(p.heads) + " query heads over " + std::to_string(p.kv_heads) +
                " kv heads, " + std::to_string(p.tile_count) + " tiles, capacity " + std::to_string(p.capacity) +
                " is not supported (whole groups, at most 65535 heads and 2^31 - 1 tiles)");
  if (!aligned(p.q, 16) || !aligned(p.k_cache, 16) || !aligned(p.v_cache, 16) || !aligned(p.out, 4))
    throw_error("prefill attention: q, k_cache and v_cache must be 16-byte aligned and out 4-byte aligned");
  switch (p.head_dim) {
    case 64: prefill_for<64>(p); break;
    case 128: prefill_for<128>(p); break;
    default:
      throw_error("prefill attention: head_dim " + std::to_string(p.head_dim) +
                  " is not supported by the tensor-core kernel (built for 64 and 128; the reference kernel serves "
                  "others)");
  }
}

}  // namespace slearn::cuda
