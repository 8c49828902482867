// CPU kernels: fp32, the numerical reference for the CUDA kernels. Each kernel takes a plain parameter
// struct of raw pointers and sizes; the CPU backend (src/model/cpu_backend.cpp) fills them from tensors.
// Every kernel computes each token row independently of the other rows in the batch, so a sequence's
// result does not depend on what it is batched with (BLAS GEMMs aside: see docs/architecture.md).
#pragma once

#include <cstdint>

namespace slearn::cpu {

struct EmbeddingParams {
  const float* table;      // [vocab, hidden] fp32, or nullptr when table_bf16 holds it
  const std::int32_t* ids; // [tokens]
  float* out;              // [tokens, hidden]
  std::int64_t tokens, hidden, vocab;
  const std::uint16_t* table_bf16 = nullptr;  // [vocab, hidden] bf16 (cpu_weights bf16)
};
void embedding(const EmbeddingParams& p);

struct RmsNormParams {
  const float* x;       // [rows, cols]
  const float* weight;  // [cols]
  float* out;           // [rows, cols]; may alias x
  std::int64_t rows, cols;
  float eps;
};
void rms_norm(const RmsNormParams& p);

// out[m, n] = sum_k x[m, k] * w[n, k] (+ bias[n]): a row-major activation times a PyTorch-layout weight.
struct LinearParams {
  const float* x;     // [m, k]
  const float* w;     // [n, k] fp32, or nullptr when w_bf16 holds the weight
  const float* bias;  // [n] or nullptr
  float* out;         // [m, n]
  std::int64_t m, n, k;
  float beta = 0.0f;  // 1 accumulates into out (no bias then)
  const std::uint16_t* w_bf16 = nullptr;  // [n, k] bf16 (cpu_weights bf16): widened to fp32 as it is read
};
void linear(const LinearParams& p);

// Rotates pairs (i, i + head_dim/2) of every head, as Hugging Face's rotate_half does.
struct RopeParams {
  float* x;                      // [tokens, heads, head_dim]
  const std::int32_t* positions; // [tokens]
  const float* cos;              // [max_positions, head_dim/2]
  const float* sin;
  std::int64_t tokens, heads, head_dim, max_positions;
};
void rope(const RopeParams& p);

// Writes each token's key and value into its sequence slot at its position.
struct KvStoreParams {
  const float* k;  // [tokens, kv_heads, head_dim]
  const float* v;
  float* k_cache;  // [slots, capacity, kv_heads, head_dim]
  float* v_cache;
  const std::int32_t* slots;      // [tokens]
  const std::int32_t* positions;  // [tokens]
  std::int64_t tokens, kv_heads, head_dim, capacity, num_slots;
};
void kv_store(const KvStoreParams& p);

// Causal grouped-query attention against the cache: a token at position p of slot s attends to the cached
// positions 0..p of slot s. Query head h reads key/value head h / (heads / kv_heads).
struct AttentionParams {
  const float* q;        // [tokens, heads, head_dim]
  const float* k_cache;  // [slots, capacity, kv_heads, head_dim]
  const float* v_cache;
  float* out;            // [tokens, heads, head_dim]
  const std::int32_t* slots;
  const std::int32_t* positions;
  std::int64_t tokens, heads, kv_heads, head_dim, capacity;
  float scale;
};
void causal_attention(const AttentionParams& p);

// out = silu(gate) * up, elementwise.
struct SwigluParams {
  const float* gate;
  const float* up;
  float* out;
  std::int64_t count;
};
void swiglu(const SwigluParams& p);

// x += y, elementwise.
void add_inplace(float* x, const float* y, std::int64_t count);

// out[i] = x[i] / (1 - p) when uniform(hash(key, i)) >= p, else 0: a mask that needs no storage.
// Element i of `x` (rows of `width`) draws index (i / width) * columns + first_column + i % width: the whole
// matrix when columns == width and first_column == 0, else a column slice of a wider one.
struct DropoutIndex {
  std::uint64_t key;
  std::int64_t width, columns, first_column;
};
void dropout(const float* x, float* out, std::int64_t count, float p, const DropoutIndex& index);
// The uniform [0, 1) draw behind dropout's element i.
float dropout_uniform(std::uint64_t key, std::uint64_t index);

}  // namespace slearn::cpu
