// Causal GQA attention for training over packed sequences, forward and backward, without a KV cache and
// without any [S x S] matrix: the forward keeps one row of scores per thread and saves each query row's
// log-sum-exp; the backward recomputes the probabilities P = exp(score - lse) where it needs them.
//
// The forward runs the same arithmetic, in the same order, as causal_attention (attention.cpp), so the two
// agree to rounding (in practice bit for bit). The backward is two passes, each writing disjoint outputs:
//  1. over (query row t, head h): D = dO.O, then dQ[t] = scale * sum_j dS[t,j] K[j];
//  2. over (key row j, kv head g): dV[j] = sum_{t>=j, h in g} P dO[t], dK[j] = scale * sum dS Q[t].
// No atomics and no thread-count-dependent reductions: every output element is summed by one thread in a
// fixed order, so results are bit-identical for any number of threads.
#include <algorithm>
#include <cmath>
#include <string>
#include <vector>

#include "cpu/cpu_train_kernels.hpp"
#include "slearn/error.hpp"

namespace slearn::cpu {
namespace {

// Below this many multiply-adds a parallel region costs more than the work it splits.
constexpr std::int64_t kParallelWork = 1 << 16;

inline float dot(const float* a, const float* b, std::int64_t n) {
  float acc = 0.0f;
#pragma omp simd reduction(+ : acc)
  for (std::int64_t d = 0; d < n; ++d) acc += a[d] * b[d];
  return acc;
}

inline void axpy(float alpha, const float* x, float* y, std::int64_t n) {
#pragma omp simd
  for (std::int64_t d = 0; d < n; ++d) y[d] += alpha * x[d];
}

// The packed layout, checked once before any parallel region.
struct Layout {
  std::vector<std::int64_t> row_start;  // [tokens]: first row of the row's sequence
  std::vector<std::int64_t> row_end;    // [tokens]: one past its sequence's last row
  std::int64_t longest = 0;
  std::int64_t pairs = 0;  // causal (query, key) pairs summed over sequences
};

Layout check_layout(const char* what, const std::int64_t* seq_starts, std::int64_t sequences, std::int64_t tokens,
                    std::int64_t heads, std::int64_t kv_heads, std::int64_t head_dim) {
  const std::string name(what);
  if (sequences < 0 || tokens < 0 || heads <= 0 || kv_heads <= 0 || head_dim <= 0)
    throw Error(name + ": bad sizes (sequences " + std::to_string(sequences) + ", tokens " + std::to_string(tokens) +
                ", heads " + std::to_string(heads) + ", kv_heads " + std::to_string(kv_heads) + ", head_dim " +
                std::to_string(head_dim) + ")");
  if (heads % kv_heads != 0)
    throw Error(name + ": heads " + std::to_string(heads) + " is not a multiple of kv_heads " +
                std::to_string(kv_heads));
  if (seq_starts[0] != 0 || seq_starts[sequences] != tokens)
    throw Error(name + ": seq_starts must run from 0 to tokens (" + std::to_string(tokens) + "), got " +
                std::to_string(seq_starts[0]) + " .. " + std::to_string(seq_starts[sequences]));
  Layout layout;
  layout.row_start.resize(static_cast<std::size_t>(tokens));
  layout.row_end.resize(static_cast<std::size_t>(tokens));
  for (std::int64_t s = 0; s < sequences; ++s) {
    const std::int64_t start = seq_starts[s], end = seq_starts[s + 1];
    if (end < start)
      throw Error(name + ": seq_starts decreases at sequence " + std::to_string(s) + " (" + std::to_string(start) +
                  " -> " + std::to_string(end) + ")");
    const std::int64_t length = end - start;
    layout.longest = std::max(layout.longest, length);
    layout.pairs += length * (length + 1) / 2;
    for (std::int64_t t = start; t < end; ++t) {
      layout.row_start[static_cast<std::size_t>(t)] = start;
      layout.row_end[static_cast<std::size_t>(t)] = end;
    }
  }
  return layout;
}

}  // namespace

void attention_forward_train(const AttentionTrainParams& p) {
  const Layout layout =
      check_layout("attention_forward_train", p.seq_starts, p.sequences, p.tokens, p.heads, p.kv_heads, p.head_dim);
  if (p.tokens == 0) return;
  const std::int64_t group = p.heads / p.kv_heads;
  const std::int64_t kv_row = p.kv_heads * p.head_dim;
  const std::int64_t work = layout.pairs * p.heads * p.head_dim;
#pragma omp parallel if (work > kParallelWork)
  {
    std::vector<float> scores(static_cast<std::size_t>(layout.longest));
#pragma omp for collapse(2) schedule(dynamic, 4)
    for (std::int64_t t = 0; t < p.tokens; ++t) {
      for (std::int64_t h = 0; h < p.heads; ++h) {
        const std::int64_t start = layout.row_start[static_cast<std::size_t>(t)];
        const std::int64_t context = t - start + 1;
        const std::int64_t kv_head = h / group;
        const float* q = p.q + (t * p.heads + h) * p.head_dim;
        const float* k_base = p.k + start * kv_row + kv_head * p.head_dim;
        const float* v_base = p.v + start * kv_row + kv_head * p.head_dim;

        float max_score = -INFINITY;
        for (std::int64_t j = 0; j < context; ++j) {
          const float s = dot(q, k_base + j * kv_row, p.head_dim) * p.scale;
          scores[static_cast<std::size_t>(j)] = s;
          max_score = std::max(max_score, s);
        }
        float total = 0.0f;
        for (std::int64_t j = 0; j < context; ++j) {
          const float e = std::exp(scores[static_cast<std::size_t>(j)] - max_score);
          scores[static_cast<std::size_t>(j)] = e;
          total += e;
        }
        const float inv_total = 1.0f / total;

        float* out = p.out + (t * p.heads + h) * p.head_dim;
        std::fill_n(out, p.head_dim, 0.0f);
        for (std::int64_t j = 0; j < context; ++j)
          axpy(scores[static_cast<std::size_t>(j)] * inv_total, v_base + j * kv_row, out, p.head_dim);
        p.lse[t * p.heads + h] = max_score + std::log(total);
      }
    }
  }
}

void attention_backward(const AttentionBackwardParams& p) {
  const Layout layout =
      check_layout("attention_backward", p.seq_starts, p.sequences, p.tokens, p.heads, p.kv_heads, p.head_dim);
  if (p.tokens == 0) return;
  const std::int64_t group = p.heads / p.kv_heads;
  const std::int64_t kv_row = p.kv_heads * p.head_dim;
  const std::int64_t q_row = p.heads * p.head_dim;
  const std::int64_t dim = p.head_dim;
  const bool parallel = layout.pairs * p.heads * dim > kParallelWork;
  // D[t, h] = dO[t, h] . O[t, h] = sum_j P[t, j] dP[t, j]: read by both passes.
  std::vector<float> delta(static_cast<std::size_t>(p.tokens * p.heads));

  // Pass 1: D and dQ, one (query row, head) per work item.
#pragma omp parallel for collapse(2) schedule(dynamic, 4) if (parallel)
  for (std::int64_t t = 0; t < p.tokens; ++t) {
    for (std::int64_t h = 0; h < p.heads; ++h) {
      const std::int64_t start = layout.row_start[static_cast<std::size_t>(t)];
      const std::int64_t kv_head = h / group;
      const std::int64_t at = (t * p.heads + h) * dim;
      const float* q = p.q + at;
      const float* dout = p.dout + at;
      const float lse = p.lse[t * p.heads + h];
      const float d_row = dot(dout, p.out + at, dim);
      delta[static_cast<std::size_t>(t * p.heads + h)] = d_row;
      float* dq = p.dq + at;
      std::fill_n(dq, dim, 0.0f);
      for (std::int64_t j = start; j <= t; ++j) {
        const float* k = p.k + j * kv_row + kv_head * dim;
        const float* v = p.v + j * kv_row + kv_head * dim;
        const float prob = std::exp(dot(q, k, dim) * p.scale - lse);
        const float dscore = prob * (dot(dout, v, dim) - d_row);
        axpy(dscore * p.scale, k, dq, dim);
      }
    }
  }

  // Pass 2: dK and dV, one (key row, kv head) per work item; it gathers over the later query rows of its
  // sequence and the query heads of its group.
#pragma omp parallel for collapse(2) schedule(dynamic, 4) if (parallel)
  for (std::int64_t j = 0; j < p.tokens; ++j) {
    for (std::int64_t g = 0; g < p.kv_heads; ++g) {
      const std::int64_t end = layout.row_end[static_cast<std::size_t>(j)];
      const std::int64_t at = j * kv_row + g * dim;
      const float* k = p.k + at;
      const float* v = p.v + at;
      float* dk = p.dk + at;
      float* dv = p.dv + at;
      std::fill_n(dk, dim, 0.0f);
      std::fill_n(dv, dim, 0.0f);
      for (std::int64_t t = j; t < end; ++t) {
        for (std::int64_t h = g * group; h < (g + 1) * group; ++h) {
          const float* q = p.q + t * q_row + h * dim;
          const float* dout = p.dout + t * q_row + h * dim;
          const float prob = std::exp(dot(q, k, dim) * p.scale - p.lse[t * p.heads + h]);
          const float dscore = prob * (dot(dout, v, dim) - delta[static_cast<std::size_t>(t * p.heads + h)]);
          axpy(prob, dout, dv, dim);
          axpy(dscore * p.scale, q, dk, dim);
        }
      }
    }
  }
}

}  // namespace slearn::cpu
