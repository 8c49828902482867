// Each CPU kernel against a direct double-precision evaluation of its formula on random inputs.
#include <gtest/gtest.h>

#include <cmath>
#include <random>
#include <vector>

#include "cpu/cpu_kernels.hpp"

namespace {

std::vector<float> random_vector(std::size_t n, std::uint32_t seed, float scale = 1.0f) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> dist(0.0f, scale);
  std::vector<float> v(n);
  for (auto& x : v) x = dist(rng);
  return v;
}

TEST(CpuKernels, LinearMatchesNaiveWithBias) {
  const std::int64_t m = 5, n = 7, k = 33;
  auto x = random_vector(m * k, 1), w = random_vector(n * k, 2), bias = random_vector(n, 3);
  std::vector<float> out(m * n);
  slearn::cpu::linear({x.data(), w.data(), bias.data(), out.data(), m, n, k});
  for (std::int64_t i = 0; i < m; ++i)
    for (std::int64_t j = 0; j < n; ++j) {
      double expected = bias[j];
      for (std::int64_t t = 0; t < k; ++t) expected += double(x[i * k + t]) * w[j * k + t];
      EXPECT_NEAR(out[i * n + j], expected, 1e-4) << i << "," << j;
    }
}

TEST(CpuKernels, LinearSkinnyAndGemmPathsAgreeWithNaive) {
  // m <= 8 takes the skinny (decode) path, larger m OpenBLAS; n = 13 leaves a ragged tail of weight rows.
  const std::int64_t n = 13, k = 70;
  auto w = random_vector(n * k, 20), bias = random_vector(n, 21);
  for (std::int64_t m : {1, 2, 3, 8, 9, 17}) {
    auto x = random_vector(m * k, 22 + static_cast<std::uint32_t>(m));
    std::vector<float> out(m * n);
    slearn::cpu::linear({x.data(), w.data(), bias.data(), out.data(), m, n, k});
    for (std::int64_t i = 0; i < m; ++i)
      for (std::int64_t j = 0; j < n; ++j) {
        double expected = bias[j];
        for (std::int64_t t = 0; t < k; ++t) expected += double(x[i * k + t]) * w[j * k + t];
        EXPECT_NEAR(out[i * n + j], expected, 1e-4) << "m=" << m << " row " << i << " col " << j;
      }
  }
}

TEST(CpuKernels, LinearSkinnyRowDoesNotDependOnBatch) {
  const std::int64_t n = 37, k = 129;
  auto w = random_vector(n * k, 30), x = random_vector(8 * k, 31);
  std::vector<float> alone(n), batched(8 * n);
  slearn::cpu::linear({x.data() + 5 * k, w.data(), nullptr, alone.data(), 1, n, k});
  slearn::cpu::linear({x.data(), w.data(), nullptr, batched.data(), 8, n, k});
  for (std::int64_t j = 0; j < n; ++j) EXPECT_EQ(alone[j], batched[5 * n + j]) << "column " << j;
}

TEST(CpuKernels, RmsNormMatchesFormula) {
  const std::int64_t rows = 3, cols = 64;
  auto x = random_vector(rows * cols, 4), w = random_vector(cols, 5);
  std::vector<float> out(rows * cols);
  slearn::cpu::rms_norm({x.data(), w.data(), out.data(), rows, cols, 1e-6f});
  for (std::int64_t r = 0; r < rows; ++r) {
    double ss = 0;
    for (std::int64_t c = 0; c < cols; ++c) ss += double(x[r * cols + c]) * x[r * cols + c];
    double inv = 1.0 / std::sqrt(ss / cols + 1e-6);
    for (std::int64_t c = 0; c < cols; ++c) EXPECT_NEAR(out[r * cols + c], w[c] * x[r * cols + c] * inv, 1e-5);
  }
}

TEST(CpuKernels, RopeRotatesHalvesByPositionAngle) {
  const std::int64_t tokens = 3, heads = 2, dim = 8, half = dim / 2, positions = 10;
  auto x = random_vector(tokens * heads * dim, 6);
  auto original = x;
  std::vector<float> cos(positions * half), sin(positions * half);
  for (std::int64_t p = 0; p < positions; ++p)
    for (std::int64_t i = 0; i < half; ++i) {
      cos[p * half + i] = std::cos(p * 0.3f * (i + 1));
      sin[p * half + i] = std::sin(p * 0.3f * (i + 1));
    }
  std::vector<std::int32_t> pos{0, 4, 9};
  slearn::cpu::rope({x.data(), pos.data(), cos.data(), sin.data(), tokens, heads, dim, positions});
  for (std::int64_t t = 0; t < tokens; ++t)
    for (std::int64_t h = 0; h < heads; ++h)
      for (std::int64_t i = 0; i < half; ++i) {
        const float* o = &original[(t * heads + h) * dim];
        double angle = pos[t] * 0.3 * (i + 1);
        EXPECT_NEAR(x[(t * heads + h) * dim + i], o[i] * std::cos(angle) - o[i + half] * std::sin(angle), 1e-5);
        EXPECT_NEAR(x[(t * heads + h) * dim + i + half], o[i + half] * std::cos(angle) + o[i] * std::sin(angle), 1e-5);
      }
}

TEST(CpuKernels, AttentionIsCausalGqaSoftmax) {
  const std::int64_t heads = 4, kv_heads = 2, dim = 16, capacity = 6, slots = 2, tokens = 5;
  auto q = random_vector(tokens * heads * dim, 7);
  auto k_cache = random_vector(slots * capacity * kv_heads * dim, 8);
  auto v_cache = random_vector(slots * capacity * kv_heads * dim, 9);
  std::vector<std::int32_t> slot_of{0, 0, 0, 1, 1}, pos{0, 1, 5, 2, 3};
  std::vector<float> out(tokens * heads * dim);
  const float scale = 0.25f;
  slearn::cpu::causal_attention({q.data(), k_cache.data(), v_cache.data(), out.data(), slot_of.data(), pos.data(),
                                 tokens, heads, kv_heads, dim, capacity, scale});
  for (std::int64_t t = 0; t < tokens; ++t)
    for (std::int64_t h = 0; h < heads; ++h) {
      const std::int64_t g = h / (heads / kv_heads);
      std::vector<double> s(pos[t] + 1);
      double mx = -1e300, total = 0;
      for (std::int64_t j = 0; j <= pos[t]; ++j) {
        double dot = 0;
        for (std::int64_t d = 0; d < dim; ++d)
          dot += double(q[(t * heads + h) * dim + d]) * k_cache[((slot_of[t] * capacity + j) * kv_heads + g) * dim + d];
        s[j] = dot * scale;
        mx = std::max(mx, s[j]);
      }
      for (auto& e : s) total += (e = std::exp(e - mx));
      for (std::int64_t d = 0; d < dim; ++d) {
        double expected = 0;
        for (std::int64_t j = 0; j <= pos[t]; ++j)
          expected += s[j] / total * v_cache[((slot_of[t] * capacity + j) * kv_heads + g) * dim + d];
        EXPECT_NEAR(out[(t * heads + h) * dim + d], expected, 1e-5) << "token " << t << " head " << h;
      }
    }
}

TEST(CpuKernels, KvStoreWritesSlotAndPosition) {
  const std::int64_t kv_heads = 2, dim = 4, capacity = 3, slots = 2, tokens = 2;
  auto k = random_vector(tokens * kv_heads * dim, 10), v = random_vector(tokens * kv_heads * dim, 11);
  std::vector<float> kc(slots * capacity * kv_heads * dim), vc(kc.size());
  std::vector<std::int32_t> slot_of{1, 0}, pos{2, 1};
  slearn::cpu::kv_store({k.data(), v.data(), kc.data(), vc.data(), slot_of.data(), pos.data(), tokens, kv_heads, dim,
                         capacity, slots});
  for (std::int64_t t = 0; t < tokens; ++t)
    for (std::int64_t i = 0; i < kv_heads * dim; ++i) {
      EXPECT_EQ(kc[(slot_of[t] * capacity + pos[t]) * kv_heads * dim + i], k[t * kv_heads * dim + i]);
      EXPECT_EQ(vc[(slot_of[t] * capacity + pos[t]) * kv_heads * dim + i], v[t * kv_heads * dim + i]);
    }
  std::vector<std::int32_t> bad_pos{3, 0};
  EXPECT_THROW(slearn::cpu::kv_store({k.data(), v.data(), kc.data(), vc.data(), slot_of.data(), bad_pos.data(),
                                      tokens, kv_heads, dim, capacity, slots}),
               std::exception);
}

TEST(CpuKernels, SwigluIsSiluTimesUp) {
  auto g = random_vector(100, 12, 3.0f), u = random_vector(100, 13);
  std::vector<float> out(100);
  slearn::cpu::swiglu({g.data(), u.data(), out.data(), 100});
  for (int i = 0; i < 100; ++i) EXPECT_NEAR(out[i], g[i] / (1.0 + std::exp(-double(g[i]))) * u[i], 1e-5);
}

TEST(CpuKernels, EmbeddingRejectsIdsOutsideVocabulary) {
  std::vector<float> table(4 * 3, 1.0f), out(3);
  std::vector<std::int32_t> ids{4};
  EXPECT_THROW(slearn::cpu::embedding({table.data(), ids.data(), out.data(), 1, 3, 4}), std::exception);
}

}  // namespace
