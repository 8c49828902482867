// Causal GQA attention over the KV cache, one (token, head) pair per OpenMP work item. The scores for a
// query live in a per-thread buffer the length of its context: no [S x S] matrix is ever formed. Softmax is
// computed as Hugging Face's eager path does (subtract the max, exponentiate, normalise) in fp32.
#include <algorithm>
#include <cmath>
#include <string>
#include <vector>

#include "cpu/cpu_kernels.hpp"
#include "slearn/error.hpp"

namespace slearn::cpu {

void kv_store(const KvStoreParams& p) {
  const std::int64_t row = p.kv_heads * p.head_dim;
  for (std::int64_t t = 0; t < p.tokens; ++t) {
    if (p.slots[t] < 0 || p.slots[t] >= p.num_slots || p.positions[t] < 0 || p.positions[t] >= p.capacity)
      throw Error("kv cache: slot " + std::to_string(p.slots[t]) + " position " + std::to_string(p.positions[t]) +
                  " is outside the cache (" + std::to_string(p.num_slots) + " slots x " +
                  std::to_string(p.capacity) + " positions)");
  }
#pragma omp parallel for schedule(static) if (p.tokens * row > (1 << 15))
  for (std::int64_t t = 0; t < p.tokens; ++t) {
    const std::int64_t offset = (static_cast<std::int64_t>(p.slots[t]) * p.capacity + p.positions[t]) * row;
    std::copy_n(p.k + t * row, row, p.k_cache + offset);
    std::copy_n(p.v + t * row, row, p.v_cache + offset);
  }
}

void causal_attention(const AttentionParams& p) {
  if (p.tokens == 0) return;
  const std::int64_t group = p.heads / p.kv_heads;
  const std::int64_t kv_row = p.kv_heads * p.head_dim;
  // Work ~ query rows x context; tiny decode steps stay on one thread.
  const std::int64_t work = p.tokens * p.heads * p.head_dim * (p.positions[p.tokens - 1] + 1);
#pragma omp parallel if (work > (1 << 16))
  {
    std::vector<float> scores;
#pragma omp for collapse(2) schedule(dynamic, 4)
    for (std::int64_t t = 0; t < p.tokens; ++t) {
      for (std::int64_t h = 0; h < p.heads; ++h) {
        const std::int64_t context = static_cast<std::int64_t>(p.positions[t]) + 1;
        const std::int64_t kv_head = h / group;
        const float* q = p.q + (t * p.heads + h) * p.head_dim;
        const float* k_base = p.k_cache + static_cast<std::int64_t>(p.slots[t]) * p.capacity * kv_row + kv_head * p.head_dim;
        const float* v_base = p.v_cache + static_cast<std::int64_t>(p.slots[t]) * p.capacity * kv_row + kv_head * p.head_dim;
        scores.resize(static_cast<std::size_t>(context));

        float max_score = -INFINITY;
        for (std::int64_t j = 0; j < context; ++j) {
          const float* k = k_base + j * kv_row;
          float dot = 0.0f;
#pragma omp simd reduction(+ : dot)
          for (std::int64_t d = 0; d < p.head_dim; ++d) dot += q[d] * k[d];
          scores[static_cast<std::size_t>(j)] = dot * p.scale;
          max_score = std::max(max_score, scores[static_cast<std::size_t>(j)]);
        }
        float total = 0.0f;
        for (std::int64_t j = 0; j < context; ++j) {
          float e = std::exp(scores[static_cast<std::size_t>(j)] - max_score);
          scores[static_cast<std::size_t>(j)] = e;
          total += e;
        }
        const float inv_total = 1.0f / total;

        float* out = p.out + (t * p.heads + h) * p.head_dim;
        std::fill_n(out, p.head_dim, 0.0f);
        for (std::int64_t j = 0; j < context; ++j) {
          const float weight = scores[static_cast<std::size_t>(j)] * inv_total;
          const float* v = v_base + j * kv_row;
#pragma omp simd
          for (std::int64_t d = 0; d < p.head_dim; ++d) out[d] += weight * v[d];
        }
      }
    }
  }
}

}  // namespace slearn::cpu
