// Row-parallel elementwise kernels: embedding gather, RMSNorm, RoPE, SwiGLU, residual add. Each is
// memory-bound; OpenMP splits rows across threads and the inner loops are left for the compiler to vectorise.
#include <cmath>
#include <cstring>
#include <string>

#include "cpu/cpu_kernels.hpp"
#include "slearn/dtype.hpp"
#include "slearn/error.hpp"
#include "slearn/mix64.hpp"

namespace slearn::cpu {
namespace {
// Below this many elements a parallel region costs more than the work it splits.
constexpr std::int64_t kParallelThreshold = 1 << 15;
}  // namespace

void embedding(const EmbeddingParams& p) {
  for (std::int64_t t = 0; t < p.tokens; ++t) {
    if (p.ids[t] < 0 || p.ids[t] >= p.vocab)
      throw InputError("token id " + std::to_string(p.ids[t]) + " is outside the vocabulary [0, " +
                       std::to_string(p.vocab) + ")");
  }
#pragma omp parallel for schedule(static) if (p.tokens * p.hidden > kParallelThreshold)
  for (std::int64_t t = 0; t < p.tokens; ++t) {
    const std::int64_t row = static_cast<std::int64_t>(p.ids[t]) * p.hidden;
    if (p.table_bf16 == nullptr) {
      std::memcpy(p.out + t * p.hidden, p.table + row, static_cast<std::size_t>(p.hidden) * sizeof(float));
      continue;
    }
    for (std::int64_t c = 0; c < p.hidden; ++c) p.out[t * p.hidden + c] = bf16_to_f32(p.table_bf16[row + c]);
  }
}

void rms_norm(const RmsNormParams& p) {
#pragma omp parallel for schedule(static) if (p.rows * p.cols > kParallelThreshold)
  for (std::int64_t r = 0; r < p.rows; ++r) {
    const float* x = p.x + r * p.cols;
    float* out = p.out + r * p.cols;
    float sum_squares = 0.0f;
#pragma omp simd reduction(+ : sum_squares)
    for (std::int64_t c = 0; c < p.cols; ++c) sum_squares += x[c] * x[c];
    const float inv_rms = 1.0f / std::sqrt(sum_squares / static_cast<float>(p.cols) + p.eps);
#pragma omp simd
    for (std::int64_t c = 0; c < p.cols; ++c) out[c] = p.weight[c] * (x[c] * inv_rms);
  }
}

void rope(const RopeParams& p) {
  const std::int64_t half = p.head_dim / 2;
  for (std::int64_t t = 0; t < p.tokens; ++t) {
    if (p.positions[t] < 0 || p.positions[t] >= p.max_positions)
      throw Error("rope: position " + std::to_string(p.positions[t]) + " is outside the table of " +
                  std::to_string(p.max_positions) + " positions");
  }
#pragma omp parallel for collapse(2) schedule(static) if (p.tokens * p.heads * p.head_dim > kParallelThreshold)
  for (std::int64_t t = 0; t < p.tokens; ++t) {
    for (std::int64_t h = 0; h < p.heads; ++h) {
      float* x = p.x + (t * p.heads + h) * p.head_dim;
      const float* cos = p.cos + static_cast<std::int64_t>(p.positions[t]) * half;
      const float* sin = p.sin + static_cast<std::int64_t>(p.positions[t]) * half;
#pragma omp simd
      for (std::int64_t i = 0; i < half; ++i) {
        const float a = x[i];
        const float b = x[i + half];
        x[i] = a * cos[i] - b * sin[i];
        x[i + half] = b * cos[i] + a * sin[i];
      }
    }
  }
}

void swiglu(const SwigluParams& p) {
#pragma omp parallel for simd schedule(static) if (p.count > kParallelThreshold)
  for (std::int64_t i = 0; i < p.count; ++i) {
    const float g = p.gate[i];
    p.out[i] = g / (1.0f + std::exp(-g)) * p.up[i];
  }
}

void add_inplace(float* x, const float* y, std::int64_t count) {
#pragma omp parallel for simd schedule(static) if (count > kParallelThreshold)
  for (std::int64_t i = 0; i < count; ++i) x[i] += y[i];
}

}  // namespace slearn::cpu

namespace slearn::cpu {

float dropout_uniform(std::uint64_t key, std::uint64_t index) {
  // splitmix64 of (key, index): counter-based, so any element's draw is computed directly.
  const std::uint64_t z = mix64(key + 0x9e3779b97f4a7c15ull * (index + 1));
  return static_cast<float>(z >> 40) * 0x1.0p-24f;
}

void dropout(const float* x, float* out, std::int64_t count, float p, const DropoutIndex& index) {
  const float keep_scale = 1.0f / (1.0f - p);
  const std::int64_t width = index.width > 0 ? index.width : 1;
#pragma omp parallel for schedule(static) if (count > kParallelThreshold)
  for (std::int64_t i = 0; i < count; ++i) {
    const std::int64_t draw = i / width * index.columns + index.first_column + i % width;
    out[i] = dropout_uniform(index.key, static_cast<std::uint64_t>(draw)) >= p ? x[i] * keep_scale : 0.0f;
  }
}

}  // namespace slearn::cpu
