// Decode attention over the KV cache, flash-decoding style (kernels/cuda/decode_attention.cu): each token's
// key range is cut into fixed splits of kDecodeSplitKeys keys, one block per (split, kv head, token)
// computes an unnormalised partial result per query head, and a merge kernel combines a token's splits in
// a fixed order. The grid depends only on the cache capacity, not on the tokens' contexts, so a decode
// step can be captured in a CUDA graph once and replayed with new contexts; and since splits are fixed by
// key position, a token's output is bitwise the same whatever else is in the launch.
//
// Same conventions as cuda_kernels.hpp: a plain parameter struct of device pointers and sizes, asynchronous
// on `stream`, launch checked with CUDA_CHECK_LAUNCH, arguments validated by the caller except the checks
// listed at launch_decode_attention.
#pragma once

#include <cstddef>
#include <cstdint>

#include "cuda/cuda_kernels.hpp"

namespace slearn::cuda {

// Keys per split. 128 keys = 4 tiles of 32: at batch 1, Qwen2-7B's 4 kv heads at a 4096-key context give
// 32 x 4 = 128 blocks (about one per SM of an H100/H200), while the partial results a split writes and the
// merge reads back (group x head_dim fp32 per kv head, twice) cost 2 x group / 128 of the split's K/V
// traffic: 11% at group 7, 25% at group 16. Fixed: it decides which keys are summed together, so changing
// it changes results in the last bits (never their batch independence).
constexpr int kDecodeSplitKeys = 128;

struct DecodeAttentionParams {
  const bf16* q;                  // [tokens, heads, head_dim]
  const bf16* k_cache;            // [slots * capacity, kv_heads, head_dim] rows
  const bf16* v_cache;
  bf16* out;                      // [tokens, heads, head_dim]
  const std::int64_t* key_row0;   // [tokens]: first cache row of the token's sequence (slot * capacity)
  const std::int32_t* context;    // [tokens]: keys the token attends to (position + 1), 1..capacity
  std::int64_t tokens, heads, kv_heads, head_dim, capacity;
  float scale;                    // applied to q.k (1 / sqrt(head_dim) for the model)
  float* partial;                 // scratch of decode_attention_scratch_bytes(tokens, heads, head_dim, capacity)
  cudaStream_t stream;
};

// Splits per token: ceil(capacity / kDecodeSplitKeys), the grid's x extent.
std::int64_t decode_attention_splits(std::int64_t capacity);
// Bytes of `partial`: per (token, head, split) head_dim fp32 of unnormalised output plus the split's
// running max and sum.
std::size_t decode_attention_scratch_bytes(std::int64_t tokens, std::int64_t heads, std::int64_t head_dim,
                                           std::int64_t capacity);

// Throws slearn::Error for a head_dim other than 16, 64 and 128, a group (heads / kv_heads) that is not
// whole or above kAttentionMaxGroup, kv_heads beyond the grid's 65535, and null or not 16-byte aligned
// q, k_cache, v_cache, out or partial. Contexts are not checked (they live on the device): a decode row's
// is in 1..capacity (larger ones are clamped to capacity); a row with context <= 0 is skipped, its output
// left untouched, so one launch over all rows of a step can leave the prefill rows to another kernel.
void launch_decode_attention(const DecodeAttentionParams& p);

}  // namespace slearn::cuda
