// The backward of the training attention (causal GQA over packed sequences; the forward is attention.cu),
// FlashAttention-2 style and deterministic: no atomics, every output element is summed by one thread in a
// fixed order, so a rerun gives the same bits. Three kernels, in stream order:
//
//   delta:  D[t, h] = sum_d dO[t, h, d] O[t, h, d], one warp per (row, head).
//   dK, dV: one block per (key tile, kv head). A tile is up to kTileRows = 64 consecutive rows of one
//           sequence; the host cuts every sequence into tiles from its start (attention_backward_tiles). The
//           block keeps its K and V tile in shared memory and its dK, dV accumulators in registers, and walks,
//           for every query head of the kv head's group, the query rows of the sequence from the tile's first
//           key to the sequence end in steps of kStepRows = 32 rows. Each step's Q, dO, lse and D are loaded
//           once per key tile (cp.async, double-buffered: step s + 1 is in flight while s is computed).
//           Per step: S^T = K Q^T, dP^T = V dO^T, P^T = exp(scale S^T - lse) (0 where the query precedes the
//           key or lies past the sequence), dS^T = P^T (dP^T - D), dV += P^T dO, dK += dS^T Q; dK is scaled
//           once at the end.
//   dQ:     one block per (query tile, query head), over the same tiles: the tile's Q and dO stay in shared
//           memory while K and V stream from the sequence start to the tile's last row in 32-row steps
//           (double-buffered); dQ += dS K in that fixed key order, scaled once at the end.
// A block is 4 warps; warp w owns the tile's rows 16w .. 16w + 15 (one mma M) and skips the arithmetic of a
// step that is wholly masked for its rows (dK/dV: all queries before its keys; dQ: all keys after its rows).
// Work per block grows with the rows it walks, so the host orders each kernel's tiles heaviest first.
//
// Head dims 64, 80, 96 and 128 run on tensor cores: mma.sync m16n8k16 bf16 with fp32 accumulators, with the
// fragment layouts that prefill_attention.cu's opening comment spells out (A 16 x 16 row-major, B 16 x 8, C
// 16 x 8; lane = 4 g + t). S^T and dP^T (dQ: S and dP) multiply bf16 tensors, so their operands are exact.
// P and dS are fp32: they enter the accumulating products (dV, dK, dQ) as three bf16 numbers hi + mid + lo,
// each the rounding of what the previous ones leave (24 significant bits: the fp32 value to within 2^-24 of
// itself), at three mma per fragment. No intermediate is thus rounded to bf16, and the error stays that of
// an fp32 backward (the bound of gpu_test_util.hpp's attention_backward_tolerances); the price is 13 tile
// products per (key, query) block instead of 7 (both kernels recompute S and dP; dV, dK, dQ count thrice).
// The accumulators of two adjacent n-tiles of S^T are exactly the A fragment of one k-step of P^T dO, so P
// and dS never touch shared memory.
// Fragment loads, all ldmatrix.x4 from rows padded to D + 8 elements (the 8 row addresses of a matrix then
// hit 8 distinct 16-byte bank groups for D = 64, 80, 96 and 128):
//   A from rows (K, V; dQ: Q, dO), k-step = 16 dims: matrix i = rows + 8 (i & 1), dims + 8 (i >> 1).
//   B from rows as columns (Q, dO; dQ: K, V), k-step = 16 dims: matrix i = rows + 8 (i >> 1), dims + 8 (i & 1):
//     registers 0, 1 are b[0], b[1] of one 8-row n-tile, 2, 3 those of the next.
//   B from rows as k (dO, Q; dQ: K), .trans, k-step = 16 rows: matrix i = rows + 8 (i & 1), dims + 8 (i >> 1):
//     registers 0, 1 are b[0], b[1] of one 8-dim n-tile, 2, 3 those of the next (D / 8 is even).
// Head dim 16 (the test models) runs a plain CUDA-core pair over the same tiles, fp32 throughout: one thread
// per key row (dK/dV) or query row (dQ), staged rows read as shared-memory broadcasts (written for head dims
// up to 32, instantiated for 16). Any other head dim throws.
//
// Budget per block at head dim 128 (each tensor-core kernel, 128 threads): shared memory 2 x 64 resident
// rows and 2 x 2 x 32 double-buffered rows of 136 bf16 (272 bytes) = 68 KiB, plus 512 bytes of lse and D for
// dK/dV (opt-in above 48 KiB): 3 blocks per SM on sm_90 (228 KiB), 2 on sm_80 (164 KiB). Registers: dK and
// dV of a warp's 16 x 128 slice are 64 + 64 fp32 per thread, S^T and dP^T of a 16 x 32 step 16 + 16; ptxas
// (CUDA 13, sm_80 and sm_90) reports 239 registers for dK/dV and 160 for dQ, no spills: 2 and 3 blocks per
// SM by registers.
//
// NOTE: written and compiled for sm_80/sm_90 without a GPU at hand; never run yet (docs/cuda.md).
#include <algorithm>
#include <cstring>
#include <string>

#include "cuda/device_utils.cuh"
#include "cuda/tensor_core.cuh"

namespace slearn::cuda {
namespace {

constexpr int kTileRows = static_cast<int>(kAttentionBackwardTileRows);  // rows a block owns
constexpr int kStepRows = 32;                                            // rows streamed per step
constexpr int kWarps = kTileRows / 16;                                   // one mma M of 16 rows per warp
constexpr int kBlockThreads = kWarps * 32;
constexpr int kSplits = 3;  // bf16 terms per fp32 value of P or dS
constexpr int kGenericMaxDim = 32;
static_assert(kTileRows == 64 && kTileRows % kStepRows == 0, "steps must not straddle a tile boundary");

// ---- delta ----

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

// The pair (x0, x1) as kSplits bf16 pairs whose sum is the pair to within 2^-24 relative: each part is the
// rounding of the remainder the previous parts leave, and every remainder is exact in fp32. x0 goes in the
// low half of each register (the lower-indexed element of a fragment pair).
__device__ __forceinline__ void split_pair(float x0, float x1, std::uint32_t (&parts)[kSplits]) {
#pragma unroll
  for (int s = 0; s < kSplits; ++s) {
    const __nv_bfloat162 part = __floats2bfloat162_rn(x0, x1);
    memcpy(&parts[s], &part, sizeof parts[s]);
    x0 -= __low2float(part);
    x1 -= __high2float(part);
  }
}

// Elements per shared row: 16 bytes of padding (see the top).
template <int D>
constexpr int kRowStride = D + 8;

// Shared memory of either tensor-core kernel: two resident kTileRows tiles, then two double-buffered pairs
// of kStepRows tiles, then (dK/dV only) the two stages' lse and D.
template <int D>
struct BackwardSmem {
  static constexpr int kTileElems = kTileRows * kRowStride<D>;
  static constexpr int kStepElems = kStepRows * kRowStride<D>;
  static constexpr std::size_t kBytes =
      sizeof(bf16) * (2 * kTileElems + 4 * kStepElems) + sizeof(float) * 2 * 2 * kStepRows;
};

// Issues the copies of `rows` (1 .. Rows) rows of D bf16, row r read at src + r * src_stride, into dst
// ([Rows][D + 8]); rows past `rows` are zero-filled without being read.
template <int D, int Rows>
__device__ __forceinline__ void load_rows(bf16* dst, const bf16* src, std::int64_t src_stride, int rows) {
  constexpr int kChunks = D / 8;  // 16-byte copies per row
  for (int c = static_cast<int>(threadIdx.x); c < Rows * kChunks; c += kBlockThreads) {
    const int r = c / kChunks, col = (c % kChunks) * 8;
    const bool valid = r < rows;
    cp_async_16(dst + r * kRowStride<D> + col, valid ? src + r * src_stride + col : src, valid);
  }
}

// acc = a[row0 .. row0 + 15] b[0 .. kStepRows - 1]^T over the D dims: a 16 x kStepRows block, acc[n] the
// 16 x 8 n-tile of b rows 8n .. 8n + 7. a and b are [rows][D + 8] shared tiles.
template <int D>
__device__ __forceinline__ void row_products(float (&acc)[kStepRows / 8][4], const bf16* a, int row0, const bf16* b,
                                             int lane) {
  constexpr int kStride = kRowStride<D>;
  const int matrix = lane / 8;
  const bf16* a_row = a + (row0 + (matrix % 2) * 8 + lane % 8) * kStride + (matrix / 2) * 8;
  const bf16* b_row = b + ((matrix / 2) * 8 + lane % 8) * kStride + (matrix % 2) * 8;
#pragma unroll
  for (int n = 0; n < kStepRows / 8; ++n) acc[n][0] = acc[n][1] = acc[n][2] = acc[n][3] = 0.0f;
#pragma unroll
  for (int kk = 0; kk < D / 16; ++kk) {
    std::uint32_t a_frag[4];
    ldmatrix_x4(a_frag, a_row + kk * 16);
#pragma unroll
    for (int np = 0; np < kStepRows / 16; ++np) {
      std::uint32_t b_frag[4];
      ldmatrix_x4(b_frag, b_row + np * 16 * kStride + kk * 16);
      mma_bf16(acc[2 * np], a_frag, b_frag[0], b_frag[1]);
      mma_bf16(acc[2 * np + 1], a_frag, b_frag[2], b_frag[3]);
    }
  }
}

// out += w b: w is a 16 x kStepRows block in row_products' accumulator layout (fp32, split into kSplits bf16
// terms here), b the kStepRows x D shared tile [rows][D + 8]; out[n] is the 16 x 8 n-tile of dims 8n ..
template <int D>
__device__ __forceinline__ void accumulate_rows(float (&out)[D / 8][4], const float (&w)[kStepRows / 8][4],
                                                const bf16* b, int lane) {
  constexpr int kStride = kRowStride<D>;
  static_assert(D % 16 == 0, "dim n-tiles are loaded in pairs");
  const bf16* b_row = b + (lane % 8 + ((lane / 8) % 2) * 8) * kStride + (lane / 16) * 8;
#pragma unroll
  for (int kk = 0; kk < kStepRows / 16; ++kk) {
    // A fragment of k-step kk = the accumulators of n-tiles 2 kk and 2 kk + 1: a[0] = rows g, k 2t..;
    // a[1] = rows g + 8; a[2], a[3] the same for k 2t + 8...
    std::uint32_t parts[4][kSplits];
    split_pair(w[2 * kk][0], w[2 * kk][1], parts[0]);
    split_pair(w[2 * kk][2], w[2 * kk][3], parts[1]);
    split_pair(w[2 * kk + 1][0], w[2 * kk + 1][1], parts[2]);
    split_pair(w[2 * kk + 1][2], w[2 * kk + 1][3], parts[3]);
#pragma unroll
    for (int dt = 0; dt < D / 8; dt += 2) {
      std::uint32_t b_frag[4];
      ldmatrix_x4_trans(b_frag, b_row + kk * 16 * kStride + dt * 8);
#pragma unroll
      for (int s = 0; s < kSplits; ++s) {
        const std::uint32_t a[4] = {parts[0][s], parts[1][s], parts[2][s], parts[3][s]};
        mma_bf16(out[dt], a, b_frag[0], b_frag[1]);
        mma_bf16(out[dt + 1], a, b_frag[2], b_frag[3]);
      }
    }
  }
}

// Stores rows row and row + 8 (as `valid` says) of a warp's 16 x D accumulators, times `factor`, as bf16
// pairs at dst_row[i] (the row's first element).
template <int D>
__device__ __forceinline__ void store_rows(const float (&acc)[D / 8][4], float factor, bf16* const (&dst_row)[2],
                                           const bool (&valid)[2], int t) {
#pragma unroll
  for (int i = 0; i < 2; ++i) {
    if (!valid[i]) continue;
#pragma unroll
    for (int dt = 0; dt < D / 8; ++dt)
      *reinterpret_cast<__nv_bfloat162*>(dst_row[i] + dt * 8 + 2 * t) =
          __floats2bfloat162_rn(factor * acc[dt][2 * i], factor * acc[dt][2 * i + 1]);
  }
}

// ---- Tensor-core kernels ----

template <int D>
__global__ void __launch_bounds__(kBlockThreads) attention_dkv_mma_kernel(AttentionBackwardParams p) {
  using Smem = BackwardSmem<D>;
  constexpr int kStepTiles = kStepRows / 8;
  extern __shared__ __align__(16) unsigned char backward_smem[];
  bf16* ks = reinterpret_cast<bf16*>(backward_smem);  // [kTileRows][D + 8], resident
  bf16* vs = ks + Smem::kTileElems;                    // [kTileRows][D + 8], resident
  bf16* qs = vs + Smem::kTileElems;                    // [2][kStepRows][D + 8]
  bf16* dos = qs + 2 * Smem::kStepElems;               // [2][kStepRows][D + 8]
  float* lse_s = reinterpret_cast<float*>(dos + 2 * Smem::kStepElems);  // [2][kStepRows]
  float* delta_s = lse_s + 2 * kStepRows;                               // [2][kStepRows]

  const AttentionBackwardTile tile = p.key_tiles[blockIdx.x];
  const int kv_head = static_cast<int>(blockIdx.y);
  const int group = static_cast<int>(p.heads / p.kv_heads);
  const int warp = static_cast<int>(threadIdx.x) / 32, lane = static_cast<int>(threadIdx.x) % 32;
  const int g = lane / 4, t = lane % 4;
  const std::int64_t q_stride = p.heads * D, kv_stride = p.kv_heads * D;
  const int query_steps = (tile.seq_end - tile.first + kStepRows - 1) / kStepRows;  // per head
  const int steps = group * query_steps;

  // Issues step `step`'s copies (query head, then the step's rows) into stage step % 2.
  const auto issue_step = [&](int step) {
    const int stage = step % 2;
    const std::int64_t head = static_cast<std::int64_t>(kv_head) * group + step / query_steps;
    const int q0 = tile.first + (step % query_steps) * kStepRows;
    const int rows = min(kStepRows, tile.seq_end - q0);
    const std::int64_t offset = static_cast<std::int64_t>(q0) * q_stride + head * D;
    load_rows<D, kStepRows>(qs + stage * Smem::kStepElems, p.q + offset, q_stride, rows);
    load_rows<D, kStepRows>(dos + stage * Smem::kStepElems, p.dout + offset, q_stride, rows);
    const int r = static_cast<int>(threadIdx.x);
    if (r < kStepRows) {
      const std::int64_t at = (static_cast<std::int64_t>(q0) + (r < rows ? r : 0)) * p.heads + head;
      cp_async_4(lse_s + stage * kStepRows + r, p.lse + at, r < rows);
      cp_async_4(delta_s + stage * kStepRows + r, p.delta + at, r < rows);
    }
  };

  const std::int64_t kv_offset = static_cast<std::int64_t>(tile.first) * kv_stride + static_cast<std::int64_t>(kv_head) * D;
  load_rows<D, kTileRows>(ks, p.k + kv_offset, kv_stride, tile.rows);
  load_rows<D, kTileRows>(vs, p.v + kv_offset, kv_stride, tile.rows);
  issue_step(0);
  cp_async_commit();

  // This thread's accumulator rows: keys g and g + 8 of the warp's 16.
  const int warp_key0 = tile.first + warp * 16;
  const bool warp_has_keys = warp * 16 < tile.rows;  // uniform per warp, as are the branches on it below
  const int key[2] = {warp_key0 + g, warp_key0 + g + 8};
  const bool key_valid[2] = {warp * 16 + g < tile.rows, warp * 16 + g + 8 < tile.rows};
  float dk[D / 8][4], dv[D / 8][4];
#pragma unroll
  for (int dt = 0; dt < D / 8; ++dt)
#pragma unroll
    for (int e = 0; e < 4; ++e) dk[dt][e] = dv[dt][e] = 0.0f;

  for (int step = 0; step < steps; ++step) {
    if (step + 1 < steps) {
      issue_step(step + 1);
      cp_async_commit();
      cp_async_wait<1>();  // step's copies (and, first time round, K and V) have landed; step + 1 may not have
    } else {
      cp_async_wait<0>();
    }
    __syncthreads();  // ...for every thread's copies
    const int stage = step % 2;
    const int q0 = tile.first + (step % query_steps) * kStepRows;
    if (warp_has_keys && q0 + kStepRows - 1 >= warp_key0) {
      const bf16* q_tile = qs + stage * Smem::kStepElems;
      const bf16* do_tile = dos + stage * Smem::kStepElems;
      const float* lse = lse_s + stage * kStepRows;
      const float* delta = delta_s + stage * kStepRows;
      float s[kStepTiles][4], ds[kStepTiles][4];  // S^T then P^T; dP^T then dS^T (keys x queries)
      row_products<D>(s, ks, warp * 16, q_tile, lane);
      row_products<D>(ds, vs, warp * 16, do_tile, lane);
#pragma unroll
      for (int n = 0; n < kStepTiles; ++n) {
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          const int column = n * 8 + 2 * t + e % 2, query = q0 + column, i = e / 2;
          const bool valid = key_valid[i] && query >= key[i] && query < tile.seq_end;
          const float prob = valid ? expf(s[n][e] * p.scale - lse[column]) : 0.0f;
          s[n][e] = prob;
          ds[n][e] = valid ? prob * (ds[n][e] - delta[column]) : 0.0f;
        }
      }
      accumulate_rows<D>(dv, s, do_tile, lane);
      accumulate_rows<D>(dk, ds, q_tile, lane);
    }
    __syncthreads();  // every warp is done with this stage before the next iteration refills it
  }

  if (!warp_has_keys) return;
  bf16* const dk_row[2] = {p.dk + key[0] * kv_stride + kv_head * D, p.dk + key[1] * kv_stride + kv_head * D};
  bf16* const dv_row[2] = {p.dv + key[0] * kv_stride + kv_head * D, p.dv + key[1] * kv_stride + kv_head * D};
  store_rows<D>(dk, p.scale, dk_row, key_valid, t);
  store_rows<D>(dv, 1.0f, dv_row, key_valid, t);
}

template <int D>
__global__ void __launch_bounds__(kBlockThreads) attention_dq_mma_kernel(AttentionBackwardParams p) {
  using Smem = BackwardSmem<D>;
  constexpr int kStepTiles = kStepRows / 8;
  extern __shared__ __align__(16) unsigned char backward_smem[];
  bf16* qs = reinterpret_cast<bf16*>(backward_smem);  // [kTileRows][D + 8], resident
  bf16* dos = qs + Smem::kTileElems;                   // [kTileRows][D + 8], resident
  bf16* ks = dos + Smem::kTileElems;                   // [2][kStepRows][D + 8]
  bf16* vs = ks + 2 * Smem::kStepElems;                // [2][kStepRows][D + 8]

  const AttentionBackwardTile tile = p.query_tiles[blockIdx.x];
  const int head = static_cast<int>(blockIdx.y);
  const int kv_head = head / static_cast<int>(p.heads / p.kv_heads);
  const int warp = static_cast<int>(threadIdx.x) / 32, lane = static_cast<int>(threadIdx.x) % 32;
  const int g = lane / 4, t = lane % 4;
  const std::int64_t q_stride = p.heads * D, kv_stride = p.kv_heads * D;
  const int key_end = tile.first + tile.rows;  // keys seq_start .. the tile's last row
  const int steps = (key_end - tile.seq_start + kStepRows - 1) / kStepRows;

  const auto issue_step = [&](int step) {
    const int stage = step % 2;
    const int key0 = tile.seq_start + step * kStepRows;
    const std::int64_t offset = static_cast<std::int64_t>(key0) * kv_stride + static_cast<std::int64_t>(kv_head) * D;
    const int rows = min(kStepRows, key_end - key0);
    load_rows<D, kStepRows>(ks + stage * Smem::kStepElems, p.k + offset, kv_stride, rows);
    load_rows<D, kStepRows>(vs + stage * Smem::kStepElems, p.v + offset, kv_stride, rows);
  };

  const std::int64_t q_offset = static_cast<std::int64_t>(tile.first) * q_stride + static_cast<std::int64_t>(head) * D;
  load_rows<D, kTileRows>(qs, p.q + q_offset, q_stride, tile.rows);
  load_rows<D, kTileRows>(dos, p.dout + q_offset, q_stride, tile.rows);
  issue_step(0);
  cp_async_commit();

  // This thread's rows: queries g and g + 8 of the warp's 16, with their lse and D (from the delta kernel).
  const int warp_row0 = tile.first + warp * 16;
  const bool warp_has_rows = warp * 16 < tile.rows;
  const int row[2] = {warp_row0 + g, warp_row0 + g + 8};
  const bool row_valid[2] = {warp * 16 + g < tile.rows, warp * 16 + g + 8 < tile.rows};
  float row_lse[2], row_delta[2];
#pragma unroll
  for (int i = 0; i < 2; ++i) {
    const std::int64_t at = static_cast<std::int64_t>(row[i]) * p.heads + head;
    row_lse[i] = row_valid[i] ? p.lse[at] : 0.0f;
    row_delta[i] = row_valid[i] ? p.delta[at] : 0.0f;
  }
  float dq[D / 8][4];
#pragma unroll
  for (int dt = 0; dt < D / 8; ++dt) dq[dt][0] = dq[dt][1] = dq[dt][2] = dq[dt][3] = 0.0f;

  for (int step = 0; step < steps; ++step) {
    if (step + 1 < steps) {
      issue_step(step + 1);
      cp_async_commit();
      cp_async_wait<1>();
    } else {
      cp_async_wait<0>();
    }
    __syncthreads();
    const int stage = step % 2;
    const int key0 = tile.seq_start + step * kStepRows;
    if (warp_has_rows && key0 <= warp_row0 + 15) {
      const bf16* k_tile = ks + stage * Smem::kStepElems;
      const bf16* v_tile = vs + stage * Smem::kStepElems;
      float s[kStepTiles][4], ds[kStepTiles][4];  // S, then dS (queries x keys); dP
      row_products<D>(s, qs, warp * 16, k_tile, lane);
      row_products<D>(ds, dos, warp * 16, v_tile, lane);
#pragma unroll
      for (int n = 0; n < kStepTiles; ++n) {
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          const int key = key0 + n * 8 + 2 * t + e % 2, i = e / 2;
          const bool valid = row_valid[i] && key <= row[i];
          const float prob = valid ? expf(s[n][e] * p.scale - row_lse[i]) : 0.0f;
          ds[n][e] = valid ? prob * (ds[n][e] - row_delta[i]) : 0.0f;
        }
      }
      accumulate_rows<D>(dq, ds, k_tile, lane);
    }
    __syncthreads();
  }

  if (!warp_has_rows) return;
  bf16* const dq_row[2] = {p.dq + row[0] * q_stride + head * D, p.dq + row[1] * q_stride + head * D};
  store_rows<D>(dq, p.scale, dq_row, row_valid, t);
}

// ---- CUDA-core kernels for small head dims ----

// One thread per key row of the tile (kTileRows threads): its K, V rows and dK, dV sums in registers; the
// query rows stream through shared memory as fp32, kStepRows at a time, head by head of the group.
template <int D>
__global__ void __launch_bounds__(kTileRows) attention_dkv_small_kernel(AttentionBackwardParams p) {
  static_assert(D <= kGenericMaxDim, "four register rows of D floats per thread");
  __shared__ float qs[kStepRows][D], dos[kStepRows][D], lse_s[kStepRows], delta_s[kStepRows];
  const AttentionBackwardTile tile = p.key_tiles[blockIdx.x];
  const std::int64_t kv_head = blockIdx.y;
  const int group = static_cast<int>(p.heads / p.kv_heads);
  const int j = static_cast<int>(threadIdx.x);
  const bool mine = j < tile.rows;
  const int key = tile.first + j;
  const std::int64_t q_stride = p.heads * D, kv_stride = p.kv_heads * D;
  float kr[D], vr[D], dk[D], dv[D];
  for (int d = 0; d < D; ++d) {
    const std::int64_t at = static_cast<std::int64_t>(mine ? key : tile.first) * kv_stride + kv_head * D + d;
    kr[d] = mine ? to_f32(p.k[at]) : 0.0f;
    vr[d] = mine ? to_f32(p.v[at]) : 0.0f;
    dk[d] = dv[d] = 0.0f;
  }
  for (int gi = 0; gi < group; ++gi) {
    const std::int64_t head = kv_head * group + gi;
    for (int q0 = tile.first; q0 < tile.seq_end; q0 += kStepRows) {
      const int rows = min(kStepRows, tile.seq_end - q0);
      __syncthreads();  // the previous step's rows are consumed
      for (int i = j; i < rows * D; i += kTileRows) {
        const std::int64_t at = static_cast<std::int64_t>(q0 + i / D) * q_stride + head * D + i % D;
        qs[i / D][i % D] = to_f32(p.q[at]);
        dos[i / D][i % D] = to_f32(p.dout[at]);
      }
      if (j < rows) {
        lse_s[j] = p.lse[static_cast<std::int64_t>(q0 + j) * p.heads + head];
        delta_s[j] = p.delta[static_cast<std::int64_t>(q0 + j) * p.heads + head];
      }
      __syncthreads();
      if (!mine) continue;
      for (int r = max(0, key - q0); r < rows; ++r) {  // queries q0 + r >= key
        float qk = 0.0f, dp = 0.0f;
#pragma unroll
        for (int d = 0; d < D; ++d) {
          qk += qs[r][d] * kr[d];
          dp += dos[r][d] * vr[d];
        }
        const float prob = expf(qk * p.scale - lse_s[r]);
        const float ds = prob * (dp - delta_s[r]);
#pragma unroll
        for (int d = 0; d < D; ++d) {
          dv[d] += prob * dos[r][d];
          dk[d] += ds * qs[r][d];
        }
      }
    }
  }
  if (!mine) return;
  for (int d = 0; d < D; ++d) {
    const std::int64_t at = static_cast<std::int64_t>(key) * kv_stride + kv_head * D + d;
    p.dk[at] = to_bf16(p.scale * dk[d]);
    p.dv[at] = to_bf16(dv[d]);
  }
}

// One thread per query row of the tile: its Q, dO rows and dQ sums in registers; the sequence's K and V rows
// up to the tile's last row stream through shared memory as fp32, kStepRows at a time.
template <int D>
__global__ void __launch_bounds__(kTileRows) attention_dq_small_kernel(AttentionBackwardParams p) {
  static_assert(D <= kGenericMaxDim, "three register rows of D floats per thread");
  __shared__ float ks[kStepRows][D], vs[kStepRows][D];
  const AttentionBackwardTile tile = p.query_tiles[blockIdx.x];
  const std::int64_t head = blockIdx.y;
  const std::int64_t kv_head = head / (p.heads / p.kv_heads);
  const int i = static_cast<int>(threadIdx.x);
  const bool mine = i < tile.rows;
  const int row = tile.first + i;
  const std::int64_t q_stride = p.heads * D, kv_stride = p.kv_heads * D;
  const std::int64_t row_at = static_cast<std::int64_t>(mine ? row : tile.first) * q_stride + head * D;
  float qr[D], dor[D], dq[D];
  for (int d = 0; d < D; ++d) {
    qr[d] = mine ? to_f32(p.q[row_at + d]) : 0.0f;
    dor[d] = mine ? to_f32(p.dout[row_at + d]) : 0.0f;
    dq[d] = 0.0f;
  }
  const std::int64_t stat_at = static_cast<std::int64_t>(mine ? row : tile.first) * p.heads + head;
  const float lse = p.lse[stat_at], delta = p.delta[stat_at];
  const int key_end = tile.first + tile.rows;
  for (int key0 = tile.seq_start; key0 < key_end; key0 += kStepRows) {
    const int keys = min(kStepRows, key_end - key0);
    __syncthreads();
    for (int e = i; e < keys * D; e += kTileRows) {
      const std::int64_t at = static_cast<std::int64_t>(key0 + e / D) * kv_stride + kv_head * D + e % D;
      ks[e / D][e % D] = to_f32(p.k[at]);
      vs[e / D][e % D] = to_f32(p.v[at]);
    }
    __syncthreads();
    if (!mine) continue;
    const int last = min(keys, row - key0 + 1);  // keys key0 + j <= row
    for (int j = 0; j < last; ++j) {
      float qk = 0.0f, dp = 0.0f;
#pragma unroll
      for (int d = 0; d < D; ++d) {
        qk += qr[d] * ks[j][d];
        dp += dor[d] * vs[j][d];
      }
      const float ds = expf(qk * p.scale - lse) * (dp - delta);
#pragma unroll
      for (int d = 0; d < D; ++d) dq[d] += ds * ks[j][d];
    }
  }
  if (!mine) return;
  for (int d = 0; d < D; ++d) p.dq[row_at + d] = to_bf16(p.scale * dq[d]);
}

// ---- Launchers ----

dim3 grid_of(std::int64_t tiles, std::int64_t heads) {
  return dim3(static_cast<unsigned>(tiles), static_cast<unsigned>(heads));
}

template <int D>
void mma_backward_for(const AttentionBackwardParams& p) {
  constexpr std::size_t shared = BackwardSmem<D>::kBytes;
  if (shared > 48 * 1024) {  // D = 96 and 128 must opt in; per function, cheap, so repeated per launch
    CUDA_CHECK(cudaFuncSetAttribute(attention_dq_mma_kernel<D>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                    static_cast<int>(shared)));
    CUDA_CHECK(cudaFuncSetAttribute(attention_dkv_mma_kernel<D>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                    static_cast<int>(shared)));
  }
  attention_dq_mma_kernel<D><<<grid_of(p.tile_count, p.heads), kBlockThreads, shared, p.stream>>>(p);
  CUDA_CHECK_LAUNCH();
  attention_dkv_mma_kernel<D><<<grid_of(p.tile_count, p.kv_heads), kBlockThreads, shared, p.stream>>>(p);
  CUDA_CHECK_LAUNCH();
}

template <int D>
void small_backward_for(const AttentionBackwardParams& p) {
  attention_dq_small_kernel<D><<<grid_of(p.tile_count, p.heads), kTileRows, 0, p.stream>>>(p);
  CUDA_CHECK_LAUNCH();
  attention_dkv_small_kernel<D><<<grid_of(p.tile_count, p.kv_heads), kTileRows, 0, p.stream>>>(p);
  CUDA_CHECK_LAUNCH();
}

bool aligned(const void* p, std::uintptr_t bytes) { return reinterpret_cast<std::uintptr_t>(p) % bytes == 0; }

void check_backward(const AttentionBackwardParams& p) {
  const std::string sizes = std::to_string(p.tokens) + " rows, " + std::to_string(p.heads) + " query heads over " +
                            std::to_string(p.kv_heads) + " kv heads, " + std::to_string(p.tile_count) + " tiles";
  if (p.heads <= 0 || p.kv_heads <= 0 || p.heads % p.kv_heads != 0 || p.heads > 65535)
    throw_error("attention_backward: " + sizes + " is not supported (whole GQA groups, at most 65535 heads)");
  if (p.tokens < 0 || p.tokens > 0x7fffffff || p.tile_count < 0 || p.tile_count > 0x7fffffff ||
      (p.tokens > 0) != (p.tile_count > 0))
    throw_error("attention_backward: " + sizes + " do not fit the launch grid or do not match");
  const bool mma_dim = p.head_dim == 64 || p.head_dim == 80 || p.head_dim == 96 || p.head_dim == 128;
  if (!mma_dim && p.head_dim != 16)
    throw_error("attention_backward: head_dim " + std::to_string(p.head_dim) +
                " is not supported by the CUDA attention backward (built for 16, 64, 80, 96 and 128)");
  if (mma_dim && !(aligned(p.q, 16) && aligned(p.k, 16) && aligned(p.v, 16) && aligned(p.dout, 16) &&
                   aligned(p.dq, 4) && aligned(p.dk, 4) && aligned(p.dv, 4)))
    throw_error("attention_backward: q, k, v and dout must be 16-byte aligned and dq, dk, dv 4-byte aligned");
}

}  // namespace

AttentionBackwardTiles attention_backward_tiles(const std::int64_t* seq_starts, std::size_t count) {
  AttentionBackwardTiles tiles;
  if (count == 0) return tiles;
  if (seq_starts[0] != 0 || seq_starts[count - 1] > 0x7fffffff)
    throw_error("attention_backward: sequence starts must begin at 0 and stay below 2^31 rows (got " +
                std::to_string(seq_starts[0]) + " .. " + std::to_string(seq_starts[count - 1]) + ")");
  for (std::size_t s = 0; s + 1 < count; ++s) {
    const std::int64_t start = seq_starts[s], end = seq_starts[s + 1];
    if (end < start)
      throw_error("attention_backward: sequence starts decrease at sequence " + std::to_string(s) + " (" +
                  std::to_string(start) + " -> " + std::to_string(end) + ")");
    for (std::int64_t first = start; first < end; first += kAttentionBackwardTileRows)
      tiles.key_tiles.push_back({static_cast<std::int32_t>(start), static_cast<std::int32_t>(first),
                                 static_cast<std::int32_t>(std::min(kAttentionBackwardTileRows, end - first)),
                                 static_cast<std::int32_t>(end)});
  }
  // Heaviest first (the grid is scheduled roughly in order); the order changes no result. dK/dV walks the
  // query rows from the tile's first row to the sequence end, dQ the keys from the sequence start to its last.
  tiles.query_tiles = tiles.key_tiles;
  std::stable_sort(tiles.key_tiles.begin(), tiles.key_tiles.end(),
                   [](const AttentionBackwardTile& a, const AttentionBackwardTile& b) {
                     return a.seq_end - a.first > b.seq_end - b.first;
                   });
  std::stable_sort(tiles.query_tiles.begin(), tiles.query_tiles.end(),
                   [](const AttentionBackwardTile& a, const AttentionBackwardTile& b) {
                     return a.first + a.rows - a.seq_start > b.first + b.rows - b.seq_start;
                   });
  return tiles;
}

void launch_attention_backward(const AttentionBackwardParams& p) {
  check_backward(p);
  if (p.tokens == 0) return;
  attention_delta_kernel<<<grid_for(p.tokens * p.heads * 32), kThreads, 0, p.stream>>>(p);
  CUDA_CHECK_LAUNCH();
  switch (p.head_dim) {
    case 16: small_backward_for<16>(p); break;
    case 64: mma_backward_for<64>(p); break;
    case 80: mma_backward_for<80>(p); break;
    case 96: mma_backward_for<96>(p); break;
    default: mma_backward_for<128>(p); break;  // check_backward let no other dim through
  }
}

}  // namespace slearn::cuda
