// CPU kernels for training: forward variants that keep what the backward needs, and the backward of every
// op between the loss and the LoRA adapters. fp32; each is checked against finite differences of its
// forward (tests/unit/test_cpu_train_kernels.cpp) so a failure points at one op.
//
// Sequences are packed without padding: token rows of all sequences are concatenated, and `seq_starts`
// (length sequences + 1, first 0, last = tokens) gives each sequence's rows. Within a sequence, position
// = row - start; attention is causal inside the sequence and never crosses into another.
#pragma once

#include <cstdint>

namespace slearn::cpu {

// dx = d(rms_norm(x) * w)/dx applied to dy; the weight is frozen, so there is no dw.
struct RmsNormBackwardParams {
  const float* x;       // [rows, cols] the forward input
  const float* weight;  // [cols]
  const float* dy;      // [rows, cols]
  float* dx;            // [rows, cols]; written (not accumulated)
  std::int64_t rows, cols;
  float eps;
};
void rms_norm_backward(const RmsNormBackwardParams& p);

// The backward of RoPE is the rotation by the opposite angle: dx = R(-theta) dy, in place on `dx`.
struct RopeBackwardParams {
  float* dx;                      // [tokens, heads, head_dim]: holds dy on entry, dx on return
  const std::int32_t* positions;  // [tokens]
  const float* cos;               // [max_positions, head_dim/2]
  const float* sin;
  std::int64_t tokens, heads, head_dim, max_positions;
};
void rope_backward(const RopeBackwardParams& p);

// out = silu(gate) * up; backward gives dgate and dup from dout.
struct SwigluBackwardParams {
  const float* gate;
  const float* up;
  const float* dout;
  float* dgate;  // written
  float* dup;    // written
  std::int64_t count;
};
void swiglu_backward(const SwigluBackwardParams& p);

// Causal GQA attention over packed sequences (no cache). Saves the log-sum-exp of each query row's
// scaled scores for the backward, which recomputes the probabilities from it (no [S x S] matrix is kept).
struct AttentionTrainParams {
  const float* q;  // [tokens, heads, head_dim]
  const float* k;  // [tokens, kv_heads, head_dim]
  const float* v;  // [tokens, kv_heads, head_dim]
  float* out;      // [tokens, heads, head_dim]
  float* lse;      // [tokens, heads]
  const std::int64_t* seq_starts;  // [sequences + 1]
  std::int64_t sequences, tokens, heads, kv_heads, head_dim;
  float scale;
};
void attention_forward_train(const AttentionTrainParams& p);

struct AttentionBackwardParams {
  const float* q;
  const float* k;
  const float* v;
  const float* out;   // the forward output
  const float* lse;   // from attention_forward_train
  const float* dout;  // [tokens, heads, head_dim]
  float* dq;          // [tokens, heads, head_dim], written
  float* dk;          // [tokens, kv_heads, head_dim], written (sums over the query heads of each group)
  float* dv;          // [tokens, kv_heads, head_dim], written
  const std::int64_t* seq_starts;
  std::int64_t sequences, tokens, heads, kv_heads, head_dim;
  float scale;
};
void attention_backward(const AttentionBackwardParams& p);

// Cross-entropy of logits = hidden W^T over the vocabulary, never holding [tokens x vocab]: rows are taken
// `row_chunk` at a time. Rows whose target is negative (-100: prompt or padding) are skipped.
// loss_sum = sum over counted rows of (logsumexp(logits) - logits[target]);
// dhidden (when not null) = grad_scale * d(loss_sum)/d(hidden), written for every row (zero for skipped rows).
struct CrossEntropyParams {
  const float* hidden;          // [tokens, hidden_size] (after the final norm)
  const float* lm_head;         // [vocab, hidden_size]
  const std::int32_t* targets;  // [tokens]
  float* dhidden;               // [tokens, hidden_size] or nullptr (forward only)
  std::int64_t tokens, hidden_size, vocab;
  std::int64_t row_chunk = 64;
  float grad_scale = 1.0f;
  // outputs
  double loss_sum = 0.0;
  std::int64_t counted = 0;
};
void cross_entropy(CrossEntropyParams& p);

// AdamW over flat fp32 buffers, one pass: the per-element update of Backend::adamw_update (slearn/backend.hpp).
struct AdamWParams {
  float* params;
  const float* grads;
  float* m;
  float* v;
  std::int64_t count;
  float decay, one_minus_beta1, beta2, one_minus_beta2, correction2_sqrt, step_size, eps, grad_scale;
};
void adamw_update(const AdamWParams& p);

// The sum of squares of `values` (double within each segment, then over the segments in order) and the index
// of its first non-finite element (-1: none).
struct FlatCheckParams {
  const float* values;
  const std::int64_t* segment_ends;  // ascending; the last one is the element count
  std::int64_t segments;
  // outputs
  double sum_squares = 0.0;
  std::int64_t first_non_finite = -1;
};
void flat_check(FlatCheckParams& p);

}  // namespace slearn::cpu
