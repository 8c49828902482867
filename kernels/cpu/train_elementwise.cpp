// Backward of the row-wise and elementwise ops (RMSNorm, RoPE, SwiGLU). Like their forwards they are
// memory-bound: OpenMP splits rows (or elements) across threads, each output element is computed by one
// thread in a fixed order, so results do not depend on the thread count (nor on buffer alignment).
#include <cmath>
#include <string>

#include "cpu/cpu_train_kernels.hpp"
#include "slearn/error.hpp"

namespace slearn::cpu {
namespace {
// Below this many elements a parallel region costs more than the work it splits.
constexpr std::int64_t kParallelThreshold = 1 << 15;
constexpr std::int64_t kLanes = 16;
}  // namespace

// y_i = w_i x_i r with r = 1/sqrt(mean(x^2) + eps). With g_i = w_i dy_i:
// dx_i = r g_i - x_i r^3 / n * sum_j g_j x_j.
void rms_norm_backward(const RmsNormBackwardParams& p) {
#pragma omp parallel for schedule(static) if (p.rows * p.cols > kParallelThreshold)
  for (std::int64_t r = 0; r < p.rows; ++r) {
    const float* x = p.x + r * p.cols;
    const float* dy = p.dy + r * p.cols;
    float* dx = p.dx + r * p.cols;
    // Both sums in kLanes fixed lanes, then the lanes in order: vectorised, yet the summation order does not
    // depend on how the compiler peels or aligns the loop.
    float squares[kLanes] = {}, products[kLanes] = {};
    std::int64_t c = 0;
    for (; c + kLanes <= p.cols; c += kLanes) {
#pragma omp simd
      for (std::int64_t l = 0; l < kLanes; ++l) {
        squares[l] += x[c + l] * x[c + l];
        products[l] += p.weight[c + l] * dy[c + l] * x[c + l];
      }
    }
    for (std::int64_t l = 0; c < p.cols; ++c, ++l) {
      squares[l] += x[c] * x[c];
      products[l] += p.weight[c] * dy[c] * x[c];
    }
    float sum_squares = 0.0f, sum_gx = 0.0f;
    for (std::int64_t l = 0; l < kLanes; ++l) {
      sum_squares += squares[l];
      sum_gx += products[l];
    }
    const float n = static_cast<float>(p.cols);
    const float inv_rms = 1.0f / std::sqrt(sum_squares / n + p.eps);
    const float coeff = sum_gx * inv_rms * inv_rms * inv_rms / n;
#pragma omp simd
    for (std::int64_t i = 0; i < p.cols; ++i) dx[i] = inv_rms * p.weight[i] * dy[i] - coeff * x[i];
  }
}

void rope_backward(const RopeBackwardParams& p) {
  const std::int64_t half = p.head_dim / 2;
  for (std::int64_t t = 0; t < p.tokens; ++t) {
    if (p.positions[t] < 0 || p.positions[t] >= p.max_positions)
      throw Error("rope_backward: position " + std::to_string(p.positions[t]) + " is outside the table of " +
                  std::to_string(p.max_positions) + " positions");
  }
#pragma omp parallel for collapse(2) schedule(static) if (p.tokens * p.heads * p.head_dim > kParallelThreshold)
  for (std::int64_t t = 0; t < p.tokens; ++t) {
    for (std::int64_t h = 0; h < p.heads; ++h) {
      float* x = p.dx + (t * p.heads + h) * p.head_dim;
      const float* cos = p.cos + static_cast<std::int64_t>(p.positions[t]) * half;
      const float* sin = p.sin + static_cast<std::int64_t>(p.positions[t]) * half;
      // The transpose of the forward rotation: rotate by -theta.
#pragma omp simd
      for (std::int64_t i = 0; i < half; ++i) {
        const float a = x[i];
        const float b = x[i + half];
        x[i] = a * cos[i] + b * sin[i];
        x[i + half] = b * cos[i] - a * sin[i];
      }
    }
  }
}

// silu(g) = g s with s = sigmoid(g); d silu / dg = s (1 + g (1 - s)).
void swiglu_backward(const SwigluBackwardParams& p) {
#pragma omp parallel for simd schedule(static) if (p.count > kParallelThreshold)
  for (std::int64_t i = 0; i < p.count; ++i) {
    const float g = p.gate[i];
    const float u = p.up[i];
    const float d = p.dout[i];
    const float s = 1.0f / (1.0f + std::exp(-g));
    p.dgate[i] = d * u * (s * (1.0f + g * (1.0f - s)));
    p.dup[i] = d * g * s;
  }
}

}  // namespace slearn::cpu
