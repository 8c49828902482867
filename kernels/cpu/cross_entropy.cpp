// Fused LM head + cross-entropy, never holding [tokens x vocab] logits. The counted rows (target >= 0) are
// gathered `row_chunk` at a time into a contiguous block; per chunk:
//   logits = hidden_chunk W^T                    (OpenBLAS sgemm, W is [vocab, hidden] row-major)
//   per row: max, sum of exp in double, lse, loss term; softmax - onehot scaled by grad_scale, in place
//   dhidden_chunk = g W                          (sgemm), scattered back to the rows
// Skipped rows cost nothing but a zero fill of their dhidden. Per-row losses are summed serially in row
// order, and each row's reductions run on one thread, so the result does not depend on the thread count.
#include <cblas.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <string>
#include <vector>

#include "cpu/cpu_train_kernels.hpp"
#include "slearn/error.hpp"

namespace slearn::cpu {

void cross_entropy(CrossEntropyParams& p) {
  p.loss_sum = 0.0;
  p.counted = 0;
  if (p.tokens < 0 || p.hidden_size <= 0 || p.vocab <= 0 || p.row_chunk <= 0)
    throw Error("cross_entropy: bad sizes (tokens " + std::to_string(p.tokens) + ", hidden " +
                std::to_string(p.hidden_size) + ", vocab " + std::to_string(p.vocab) + ", row_chunk " +
                std::to_string(p.row_chunk) + ")");
  std::vector<std::int64_t> rows;  // the counted rows, in order
  rows.reserve(static_cast<std::size_t>(p.tokens));
  for (std::int64_t t = 0; t < p.tokens; ++t) {
    const std::int32_t target = p.targets[t];
    if (target >= p.vocab)
      throw Error("cross_entropy: target " + std::to_string(target) + " of row " + std::to_string(t) +
                  " is outside the vocabulary of " + std::to_string(p.vocab));
    if (target >= 0) rows.push_back(t);
  }
  const std::int64_t hidden = p.hidden_size;
  const std::int64_t vocab = p.vocab;
  if (p.dhidden != nullptr)
    std::fill_n(p.dhidden, p.tokens * hidden, 0.0f);  // skipped rows keep the zero
  const auto counted = static_cast<std::int64_t>(rows.size());
  if (counted == 0) return;

  const std::int64_t chunk = std::min(p.row_chunk, counted);
  std::vector<float> logits(static_cast<std::size_t>(chunk * vocab));
  std::vector<float> gathered(static_cast<std::size_t>(chunk * hidden));
  std::vector<float> dgathered(p.dhidden != nullptr ? static_cast<std::size_t>(chunk * hidden) : 0);
  std::vector<double> row_loss(static_cast<std::size_t>(counted));
  const float grad_scale = p.grad_scale;

  for (std::int64_t first = 0; first < counted; first += chunk) {
    const std::int64_t n = std::min(chunk, counted - first);
    for (std::int64_t r = 0; r < n; ++r)
      std::memcpy(gathered.data() + r * hidden, p.hidden + rows[static_cast<std::size_t>(first + r)] * hidden,
                  static_cast<std::size_t>(hidden) * sizeof(float));
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, static_cast<blasint>(n), static_cast<blasint>(vocab),
                static_cast<blasint>(hidden), 1.0f, gathered.data(), static_cast<blasint>(hidden), p.lm_head,
                static_cast<blasint>(hidden), 0.0f, logits.data(), static_cast<blasint>(vocab));

#pragma omp parallel for schedule(static) if (n * vocab > (1 << 16))
    for (std::int64_t r = 0; r < n; ++r) {
      float* row = logits.data() + r * vocab;
      const std::int32_t target = p.targets[rows[static_cast<std::size_t>(first + r)]];
      const auto target_logit = static_cast<double>(row[target]);
      float max_logit = -INFINITY;
#pragma omp simd reduction(max : max_logit)
      for (std::int64_t c = 0; c < vocab; ++c) max_logit = std::max(max_logit, row[c]);
      // exp in float, sum in double; the exponentials stay in the row for the gradient.
      double total = 0.0;
      for (std::int64_t c = 0; c < vocab; ++c) {
        const float e = std::exp(row[c] - max_logit);
        row[c] = e;
        total += static_cast<double>(e);
      }
      const double lse = static_cast<double>(max_logit) + std::log(total);
      row_loss[static_cast<std::size_t>(first + r)] = lse - target_logit;
      if (p.dhidden == nullptr) continue;
      const auto factor = static_cast<float>(static_cast<double>(grad_scale) / total);
#pragma omp simd
      for (std::int64_t c = 0; c < vocab; ++c) row[c] *= factor;
      row[target] -= grad_scale;
    }
    if (p.dhidden == nullptr) continue;
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, static_cast<blasint>(n), static_cast<blasint>(hidden),
                static_cast<blasint>(vocab), 1.0f, logits.data(), static_cast<blasint>(vocab), p.lm_head,
                static_cast<blasint>(hidden), 0.0f, dgathered.data(), static_cast<blasint>(hidden));
    for (std::int64_t r = 0; r < n; ++r)
      std::memcpy(p.dhidden + rows[static_cast<std::size_t>(first + r)] * hidden, dgathered.data() + r * hidden,
                  static_cast<std::size_t>(hidden) * sizeof(float));
  }
  double loss = 0.0;
  for (const double l : row_loss) loss += l;
  p.loss_sum = loss;
  p.counted = counted;
}

}  // namespace slearn::cpu
