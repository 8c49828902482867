// The optimizer's kernels over one flat buffer: AdamW and the gradient check (norm and non-finite search).
// AdamW is the single-tensor torch update in fp32, element by element, so the result does not depend on the
// thread count. The check accumulates in double in a fixed order (segment by segment, as the per-tensor
// trainer always did), serially: it is one pass over the adapter per step, small beside a forward.
#include <cmath>

#include "cpu/cpu_train_kernels.hpp"

namespace slearn::cpu {

void adamw_update(const AdamWParams& a) {
  float* p = a.params;
  const float* g_raw = a.grads;
  float* m = a.m;
  float* v = a.v;
  const float decay = a.decay, one_minus_beta1 = a.one_minus_beta1, beta2 = a.beta2;
  const float one_minus_beta2 = a.one_minus_beta2, correction2_sqrt = a.correction2_sqrt;
  const float step_size = a.step_size, eps = a.eps, grad_scale = a.grad_scale;
#pragma omp parallel for simd if (a.count > (1 << 16))
  for (std::int64_t j = 0; j < a.count; ++j) {
    const float g = g_raw[j] * grad_scale;  // clipping; exact when grad_scale is 1
    p[j] *= decay;
    m[j] += one_minus_beta1 * (g - m[j]);  // torch's lerp with weight < 0.5
    v[j] = v[j] * beta2 + one_minus_beta2 * g * g;
    const float denom = std::sqrt(v[j]) / correction2_sqrt + eps;
    p[j] += -step_size * (m[j] / denom);
  }
}

void flat_check(FlatCheckParams& p) {
  double total = 0;
  std::int64_t first_bad = -1, begin = 0;
  for (std::int64_t s = 0; s < p.segments; ++s) {
    const std::int64_t end = p.segment_ends[s];
    double sum = 0;
    for (std::int64_t i = begin; i < end; ++i) {
      const float x = p.values[i];
      if (first_bad < 0 && !std::isfinite(x)) first_bad = i;
      sum += static_cast<double>(x) * x;
    }
    total += sum;
    begin = end;
  }
  p.sum_squares = total;
  p.first_non_finite = first_bad;
}

}  // namespace slearn::cpu
