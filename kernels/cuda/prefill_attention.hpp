// Prefill attention on tensor cores (issue 11): the query rows of a prefill chunk attend, causally, to their
// sequence's rows of the KV cache, one block per (tile of kPrefillTileRows query rows, query head), with
// mma.sync bf16 tiles and an online softmax (prefill_attention.cu has the design). It also serves the
// training forward (Backend::attention_train) at head dims 64 and 128, where it writes each row's
// log-sum-exp for the backward. attention.cu's kernel stays the reference and serves head dims other than 64
// and 128, and training tensors that are not 16-byte aligned (decode rows go to decode_attention.cu).
//
// The backend describes a forward step's prefill chunks as PrefillChunk, turns them into tiles on the host
// with prefill_tiles (which validates them), stages the tiles to the device and launches. Rows of q that no
// chunk covers (decode tokens of the same step) are neither read nor written. Training passes q, k, v of a
// packed batch as they are: each sequence is a "cache" of capacity 1 whose slot is its first row
// (training_prefill_tiles), so key j of sequence s is row seq_starts[s] + j of k and v.
//
// NOTE: written and compiled for sm_80/sm_90 without a GPU at hand; never run yet (docs/cuda.md).
#pragma once

#include <cuda_bf16.h>
#include <cuda_runtime_api.h>

#include <cstddef>
#include <cstdint>
#include <vector>

#include "cuda/cuda_kernels.hpp"

namespace slearn::cuda {

// Query rows per block: 4 warps of 16 rows (the M of one m16n8k16 mma each).
constexpr int kPrefillTileRows = 64;

// One block's work: `rows` (1..kPrefillTileRows) consecutive query rows q[row0 ..] of one sequence, the first
// at cache position position0, in cache slot `slot`. Row r attends to cache positions 0 .. position0 + r.
struct PrefillTile {
  std::int32_t row0;
  std::int32_t rows;
  std::int32_t position0;
  std::int32_t slot;
};

// A prefill chunk of a forward step: rows row0 .. row0 + length - 1 of q hold positions start ..
// start + length - 1 of the sequence in cache slot `slot`, whose keys and values are already in the cache.
struct PrefillChunk {
  std::int64_t row0, length, start;
  std::int32_t slot;
};

// The tiles of `chunks`, after checking each against the q rows and the cache (throws slearn::Error):
// row0 + length <= q_rows, start + length <= capacity, 0 <= slot < slots. Empty chunks give no tiles. The
// tiles are ordered by decreasing key count (the heaviest blocks start first); the order changes no result.
std::vector<PrefillTile> prefill_tiles(const std::vector<PrefillChunk>& chunks, std::int64_t q_rows, std::int64_t slots,
                                       std::int64_t capacity);

// The tiles of a training forward over packed sequences seq_starts[s] .. seq_starts[s + 1] (count = sequences
// + 1 entries; pointer and count, as this header is also compiled as C++17): sequence s with rows
// [start, end) becomes tiles row0 = start + 64 i, position0 = 64 i, slot = start, for a launch with
// capacity 1 and k, v as the cache. Throws slearn::Error unless the starts run from 0 to `tokens`
// without decreasing and tokens fits 32-bit tile fields. Empty sequences give no tiles; heaviest first, as
// prefill_tiles.
std::vector<PrefillTile> training_prefill_tiles(const std::int64_t* seq_starts, std::size_t count,
                                                std::int64_t tokens);

struct PrefillAttentionParams {
  const bf16* q;        // [q rows, heads, head_dim], 16-byte aligned
  const bf16* k_cache;  // [slots * capacity, kv_heads, head_dim], 16-byte aligned
  const bf16* v_cache;
  bf16* out;            // [q rows, heads, head_dim]; only the tiles' rows are written
  const PrefillTile* tiles;  // device array of tile_count tiles, from prefill_tiles
  std::int64_t tile_count;
  std::int64_t heads, kv_heads, head_dim, capacity;
  float scale;
  cudaStream_t stream;
  // [q rows, heads] fp32, or nullptr (inference): each tile row's natural log of sum_j exp(scale q.k_j), the
  // convention of launch_attention_forward's lse and the CPU backend's, for the training backward.
  float* lse = nullptr;
};

// Whether launch_prefill_attention has a kernel for this head dim (64 and 128); other dims need the
// reference kernel (launch_attention_forward).
bool prefill_attention_supports(std::int64_t head_dim);

// Asynchronous on p.stream. Throws slearn::Error, from host checks made before any CUDA call, for an
// unsupported head dim, heads that are not a whole multiple of kv_heads, a grid that does not fit, or
// misaligned tensors. The tiles themselves are on the device and not checked here: prefill_tiles checks them.
void launch_prefill_attention(const PrefillAttentionParams& p);

}  // namespace slearn::cuda
