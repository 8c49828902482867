// CUDA kernels of the bf16 backend: tensors are stored in bf16, every kernel accumulates in fp32 (row sums,
// dot products, softmax statistics) and rounds once when it stores. Like kernels/cpu, each launcher takes a
// plain parameter struct of device pointers and sizes and knows nothing of tensors; the CUDA backend
// (cuda_backend.cpp) fills the structs and calls the launchers, never `<<<>>>` itself. Every launcher is
// asynchronous on `stream` and checks its launch with CUDA_CHECK_LAUNCH; arguments were checked by the backend.
//
// Index arrays (token ids, slots, positions, per-row key ranges) are device copies the backend staged from
// the host spans the Backend interface passes, after validating them on the host.
//
// NOTE: written and compiled for sm_80/sm_90 without a GPU at hand; never run yet (docs/cuda.md).
#pragma once

#include <cuda_bf16.h>
#include <cuda_runtime_api.h>

#include <cstddef>
#include <cstdint>
#include <vector>

namespace slearn::cuda {

using bf16 = __nv_bfloat16;

// out[i, :] = table[index[i], :], for the embedding (index = token ids) and gather_rows.
struct GatherParams {
  const bf16* table;           // [table_rows, width]
  const std::int32_t* index;   // [rows], each in [0, table_rows)
  bf16* out;                   // [rows, width]
  std::int64_t rows, width;
  cudaStream_t stream;
};
void launch_gather_rows(const GatherParams& p);

// out[index[i], :] = bf16(src[i, :]) for fp32 rows: scatters the cross-entropy gradient back to its rows.
struct ScatterF32Params {
  const float* src;            // [rows, width]
  const std::int32_t* index;   // [rows], distinct
  bf16* out;                   // [out_rows, width]
  std::int64_t rows, width;
  cudaStream_t stream;
};
void launch_scatter_rows_f32(const ScatterF32Params& p);

struct RmsNormParams {
  const bf16* x;       // [rows, cols]
  const bf16* weight;  // [cols]
  bf16* out;           // [rows, cols]; may alias x
  std::int64_t rows, cols;
  float eps;
  cudaStream_t stream;
};
void launch_rms_norm(const RmsNormParams& p);

struct RmsNormBackwardParams {
  const bf16* x;       // [rows, cols] the forward input
  const bf16* weight;  // [cols]
  const bf16* dy;      // [rows, cols]
  bf16* dx;            // [rows, cols], written; may alias dy
  std::int64_t rows, cols;
  float eps;
  cudaStream_t stream;
};
void launch_rms_norm_backward(const RmsNormBackwardParams& p);

// Rotates pairs (i, i + head_dim/2) of every head in place; `inverse` rotates by -theta (the backward).
struct RopeParams {
  bf16* x;                        // [tokens, heads, head_dim]
  const std::int32_t* positions;  // [tokens], each in [0, max_positions)
  const bf16* cos;                // [max_positions, head_dim/2]
  const bf16* sin;
  std::int64_t tokens, heads, head_dim;
  bool inverse;
  cudaStream_t stream;
};
void launch_rope(const RopeParams& p);

// out = silu(gate) * up
struct SwigluParams {
  const bf16* gate;
  const bf16* up;
  bf16* out;
  std::int64_t count;
  cudaStream_t stream;
};
void launch_swiglu(const SwigluParams& p);

struct SwigluBackwardParams {
  const bf16* gate;
  const bf16* up;
  const bf16* dout;
  bf16* dgate;  // written; may alias gate or dout (each element is read before it is written, by one thread)
  bf16* dup;
  std::int64_t count;
  cudaStream_t stream;
};
void launch_swiglu_backward(const SwigluBackwardParams& p);

// x += y (the residual add)
struct AddParams {
  bf16* x;
  const bf16* y;
  std::int64_t count;
  cudaStream_t stream;
};
void launch_add(const AddParams& p);

// out[r, c] += bias[c]: the bias of a linear layer when cuBLASLt has no bias epilogue for the shapes.
struct BiasAddParams {
  bf16* out;          // [rows, cols]
  const bf16* bias;   // [cols]
  std::int64_t rows, cols;
  cudaStream_t stream;
};
void launch_bias_add(const BiasAddParams& p);

// x *= factor
struct ScaleParams {
  bf16* x;
  std::int64_t count;
  float factor;
  cudaStream_t stream;
};
void launch_scale(const ScaleParams& p);

// out[i] = x[i] / (1 - p) when uniform(key, i) >= p, else 0, with the CPU backend's splitmix64 draw
// (kernels/cpu/elementwise.cpp, dropout_uniform), so both backends drop exactly the same elements. Element i
// (rows of `width`) draws index (i / width) * columns + first_column + i % width (a column slice of a wider
// matrix for a tensor-parallel rank; columns == width, first_column 0 for the whole matrix).
struct DropoutParams {
  const bf16* x;
  bf16* out;  // may alias x
  std::int64_t count;
  float p;
  std::uint64_t key;
  std::int64_t width, columns, first_column;
  cudaStream_t stream;
};
void launch_dropout(const DropoutParams& p);

// Writes each token's key and value row into its cache slot at its position.
struct KvStoreParams {
  const bf16* k;                  // [tokens, kv_heads, head_dim]
  const bf16* v;
  bf16* k_cache;                  // [slots, capacity, kv_heads, head_dim]
  bf16* v_cache;
  const std::int32_t* slots;      // [tokens], validated
  const std::int32_t* positions;  // [tokens], validated
  std::int64_t tokens, kv_row, capacity;  // kv_row = kv_heads * head_dim
  cudaStream_t stream;
};
void launch_kv_store(const KvStoreParams& p);

// x += y (rounded to bf16), then out = rms_norm(x) * weight: the residual add and the next norm in one pass.
struct AddRmsNormParams {
  bf16* x;             // [rows, cols], updated
  const bf16* y;       // [rows, cols]
  const bf16* weight;  // [cols]
  bf16* out;           // [rows, cols]; must not alias x or y
  std::int64_t rows, cols;
  float eps;
  cudaStream_t stream;
};
void launch_add_rms_norm(const AddRmsNormParams& p);

// Splits the stacked projection qkv [tokens, (heads + 2 kv_heads) head_dim] into q, k, v, rotating q and k.
struct RopeSplitQkvParams {
  const bf16* qkv;
  bf16* q;                        // [tokens, heads, head_dim]
  bf16* k;                        // [tokens, kv_heads, head_dim]
  bf16* v;
  const std::int32_t* positions;  // [tokens], validated
  const bf16* cos;                // [max_positions, head_dim/2]
  const bf16* sin;
  std::int64_t tokens, heads, kv_heads, head_dim;
  cudaStream_t stream;
};
void launch_rope_split_qkv(const RopeSplitQkvParams& p);

// out[t, i] = silu(gate_up[t, i]) * gate_up[t, inter + i]
struct SwigluFusedParams {
  const bf16* gate_up;  // [tokens, 2 inter]
  bf16* out;            // [tokens, inter]
  std::int64_t tokens, inter;
  cudaStream_t stream;
};
void launch_swiglu_fused(const SwigluFusedParams& p);

// out[i] = bf16(random_fill_value(key, i, scale)) (slearn/random_fill.hpp), as the CPU backend computes it.
struct FillRandomParams {
  bf16* out;
  std::int64_t count;
  std::uint64_t key;
  float scale;
  cudaStream_t stream;
};
void launch_fill_random(const FillRandomParams& p);

// Causal GQA attention, flash style. Query row t (all heads) attends to the `context[t]` key rows
// key_row0[t] .. key_row0[t] + context[t] - 1 of k/v (seen as [key rows, kv_heads, head_dim]); query head h
// reads kv head h / (heads / kv_heads). The same kernel serves:
//  - inference over the KV cache: k/v = the cache as [slots * capacity, ...], key_row0 = slot * capacity,
//    context = position + 1;
//  - training over packed sequences: k/v = [tokens, ...], key_row0 = the sequence start, context =
//    t - start + 1; `lse` (fp32 [tokens, heads]) then receives each row's log-sum-exp for the backward.
// head_dim is dispatched over 16 (the test fixtures), 64 and 128; any other throws.
struct AttentionForwardParams {
  const bf16* q;                   // [tokens, heads, head_dim]
  const bf16* k;                   // [key rows, kv_heads, head_dim]
  const bf16* v;
  bf16* out;                       // [tokens, heads, head_dim]
  float* lse;                      // [tokens, heads] or nullptr
  const std::int64_t* key_row0;    // [tokens]
  const std::int32_t* context;     // [tokens], each >= 1
  std::int64_t tokens, heads, kv_heads, head_dim;
  float scale;
  cudaStream_t stream;
};
void launch_attention_forward(const AttentionForwardParams& p);
// The largest heads / kv_heads the attention kernels accept.
constexpr std::int64_t kAttentionMaxGroup = 16;

// The backward of the training attention (attention_backward.cu has the design), deterministic (no atomics):
// delta = rowsum(dO * O), then dQ per (query tile, query head) and dK, dV per (key tile, kv head), each
// output element summed by one thread in a fixed order. `delta` is an fp32 [tokens, heads] scratch buffer.
// head_dim: 64, 80, 96 and 128 (tensor cores; q, k, v, dout 16-byte aligned) and 16 (CUDA cores); any other
// throws.
//
// A tile is up to kAttentionBackwardTileRows consecutive rows first .. first + rows - 1 of the sequence
// seq_start .. seq_end - 1; attention_backward_tiles cuts every sequence into tiles from its start. The
// dK/dV kernel takes the tiles in key_tiles' order, the dQ kernel in query_tiles' (the same tiles).
constexpr std::int64_t kAttentionBackwardTileRows = 64;
struct AttentionBackwardTile {
  std::int32_t seq_start, first, rows, seq_end;
};
struct AttentionBackwardTiles {
  std::vector<AttentionBackwardTile> key_tiles;    // most query rows to walk (seq_end - first) first
  std::vector<AttentionBackwardTile> query_tiles;  // most keys to walk (first + rows - seq_start) first
};
// The tiles of the packed sequences seq_starts[s] .. seq_starts[s + 1] (count = sequences + 1 entries, from 0
// to tokens, non-decreasing; empty sequences give no tile). Throws slearn::Error for starts that decrease,
// do not begin at 0 or pass 2^31 - 1.
AttentionBackwardTiles attention_backward_tiles(const std::int64_t* seq_starts, std::size_t count);

struct AttentionBackwardParams {
  const bf16* q;                     // [tokens, heads, head_dim]
  const bf16* k;                     // [tokens, kv_heads, head_dim]
  const bf16* v;
  const bf16* out;                   // the forward output
  const float* lse;                  // from the forward
  const bf16* dout;
  bf16* dq;                          // written
  bf16* dk;                          // written
  bf16* dv;                          // written
  float* delta;                      // scratch [tokens, heads]
  const AttentionBackwardTile* key_tiles;    // [tile_count], device copies of attention_backward_tiles'
  const AttentionBackwardTile* query_tiles;  // [tile_count]
  std::int64_t tile_count;
  std::int64_t tokens, heads, kv_heads, head_dim;
  float scale;
  cudaStream_t stream;
};
void launch_attention_backward(const AttentionBackwardParams& p);

// Cross-entropy over one vocabulary chunk [v0, v0 + columns) of fp32 logits [rows, columns] (a cuBLASLt GEMM
// of the gathered hidden rows with the chunk of the LM head). Per row, merges the chunk's max and sum of
// exponentials into the running (max, sum) and picks the target's logit when it falls in the chunk.
struct CeChunkStatsParams {
  const float* logits;          // [rows, columns]
  const std::int32_t* targets;  // [rows], each in [0, vocab)
  float* running_max;           // [rows], -inf before the first chunk
  double* running_sum;          // [rows], 0 before the first chunk
  float* target_logit;          // [rows]
  std::int64_t rows, columns, v0;
  cudaStream_t stream;
};
void launch_ce_chunk_stats(const CeChunkStatsParams& p);

// After the last chunk: lse = max + log(sum) and loss = lse - target_logit per row.
struct CeFinishParams {
  const float* running_max;
  const double* running_sum;
  const float* target_logit;
  double* lse;    // [rows]
  double* loss;   // [rows]
  std::int64_t rows;
  cudaStream_t stream;
};
void launch_ce_finish(const CeFinishParams& p);

// grad[r, c] = bf16(grad_scale * (softmax - onehot(target))) for the chunk's columns, from the chunk's
// recomputed logits and the row's lse: the input of the dhidden GEMM.
struct CeChunkGradParams {
  const float* logits;          // [rows, columns]
  const std::int32_t* targets;  // [rows]
  const double* lse;            // [rows]
  bf16* grad;                   // [rows, columns]
  std::int64_t rows, columns, v0;
  float grad_scale;
  cudaStream_t stream;
};
void launch_ce_chunk_grad(const CeChunkGradParams& p);


// ---- The optimizer's kernels over the flat fp32 training state (optimizer.cu) ----

// One fused AdamW update per element of the flat buffers, Backend::adamw_update's formula in its order of
// fp32 operations, each rounded on its own (no contraction into FMA).
struct AdamWParams {
  float* params;       // [count], updated
  const float* grads;  // [count]
  float* m;            // [count], updated
  float* v;            // [count], updated
  std::int64_t count;
  float decay, one_minus_beta1, beta2, one_minus_beta2, correction2_sqrt, step_size, eps, grad_scale;
  cudaStream_t stream;
};
void launch_adamw(const AdamWParams& p);

// What launch_flat_check leaves in device memory for one small copy to the host.
struct FlatCheckResult {
  double sum_squares;
  std::int64_t first_non_finite;  // -1: every element is finite
};
// Scratch that launch_flat_check needs for its per-block partials, whatever the count.
constexpr std::size_t kFlatCheckScratchBytes = 1024 * (sizeof(double) + sizeof(std::int64_t));

// The sum of squares (in double) and the first non-finite index of an fp32 buffer, deterministic: a grid of
// blocks fixed by `count` alone, each reducing one contiguous range in a fixed tree order, then one block
// reducing the partials in order. The summation order is not the CPU's segment by segment one.
struct FlatCheckParams {
  const float* values;      // [count]
  std::int64_t count;
  void* scratch;            // kFlatCheckScratchBytes of device memory
  FlatCheckResult* result;  // device memory, written
  cudaStream_t stream;
};
void launch_flat_check(const FlatCheckParams& p);

// dst[i] = bf16(src[i]), rounded to nearest even with NaN kept NaN, bit for bit slearn::f32_to_bf16: the
// bf16 compute copy of the fp32 master weights.
struct CastF32ToBf16Params {
  const float* src;
  bf16* dst;
  std::int64_t count;
  cudaStream_t stream;
};
void launch_cast_f32_to_bf16(const CastF32ToBf16Params& p);

// x *= factor over fp32 values (the beta of an fp32 GEMM output when there is no product: k = 0).
struct ScaleF32Params {
  float* x;
  std::int64_t count;
  float factor;
  cudaStream_t stream;
};
void launch_scale_f32(const ScaleF32Params& p);

}  // namespace slearn::cuda
