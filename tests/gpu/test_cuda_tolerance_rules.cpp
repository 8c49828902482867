// The GPU tests' tolerance helpers (gpu_test_util.hpp) tested where they can be without a GPU, so that their
// host code is not first run on a GPU machine: the attention bounds' geometry against the CPU backend's own
// attention (a mistaken key range would make the two disagree), each bound passing an emulated kernel that
// makes exactly the roundings the bound allows, and failing an output with a real bug (a key left out, a
// 1% error). These tests run everywhere.
#include <gtest/gtest-spi.h>

#include "gpu_test_util.hpp"

namespace slearn {
namespace {

using namespace gpu_testing;

std::vector<float> rounded(std::vector<double> values) {
  std::vector<float> out(values.size());
  for (std::size_t i = 0; i < values.size(); ++i) out[i] = round_bf16(static_cast<float>(values[i]));
  return out;
}

TEST(CudaToleranceRules, PerElementRuleTakesTheRoundingOfEachElement) {
  const auto ref_values = random_bf16(1000, 1.0f, 1);
  std::vector<float> ref(ref_values.size()), got(ref.size());
  for (std::size_t i = 0; i < ref.size(); ++i) ref[i] = ref_values[i] * 1.001f + 1e-4f;  // not bf16-exact
  for (std::size_t i = 0; i < ref.size(); ++i) got[i] = round_bf16(ref[i]);
  expect_close(got, ref, "one rounding");
  // One bf16 ulp too far on every element: outside for the elements not near a rounding midpoint.
  for (auto& g : got) g = bf16_to_f32(static_cast<std::uint16_t>(f32_to_bf16(g) + 1));
  EXPECT_NONFATAL_FAILURE(expect_close(got, ref, "one ulp off"), "outside the tolerance");
  // An exact bf16 reference gets no rounding allowance: only fp32 noise.
  std::vector<float> exact = ref_values, off = ref_values;
  off[17] = off[17] * (1.0f + 1e-4f) + 1e-5f;
  EXPECT_NONFATAL_FAILURE(expect_close(off, exact, "exact reference"), "1 of 1000");
  // NaN always fails.
  got = ref;
  got[3] = NAN;
  EXPECT_NONFATAL_FAILURE(expect_close(got, ref, "nan"), "1 of 1000");
}

TEST(CudaToleranceRules, AbsProductSumsMatchALoop) {
  const std::int64_t m = 5, n = 7, k = 11;
  const auto a = random_bf16(static_cast<std::size_t>(m * k), 1.0f, 2);
  const auto b = random_bf16(static_cast<std::size_t>(k * n), 1.0f, 3);
  const auto c0 = random_bf16(static_cast<std::size_t>(m * n), 1.0f, 4);
  for (const bool ta : {false, true})
    for (const bool tb : {false, true}) {
      const auto sums = abs_product_sums(a, ta, b, tb, m, n, k, -0.5, c0, 2.0);
      for (std::int64_t r = 0; r < m; ++r)
        for (std::int64_t c = 0; c < n; ++c) {
          double s = 0;
          for (std::int64_t j = 0; j < k; ++j) {
            const double av = ta ? a[static_cast<std::size_t>(j * m + r)] : a[static_cast<std::size_t>(r * k + j)];
            const double bv = tb ? b[static_cast<std::size_t>(c * k + j)] : b[static_cast<std::size_t>(j * n + c)];
            s += std::abs(av * bv);
          }
          s = 0.5 * s + 2.0 * std::abs(c0[static_cast<std::size_t>(r * n + c)]);
          EXPECT_NEAR(sums[static_cast<std::size_t>(r * n + c)], s, 1e-5 * s) << ta << tb << r << c;
        }
    }
}

// An attention kernel emulated in double on the host over `g`: the normalised probabilities rounded to bf16
// for P V, the output rounded to bf16. With `drop_newest`, the newest
// key of every row is left out: an off-by-one context.
std::vector<float> emulated_attention(const AttentionGeometry& g, const std::vector<float>& q, const std::vector<float>& k,
                                      const std::vector<float>& v, bool drop_newest) {
  const std::int64_t d_count = g.head_dim, group = g.heads / g.kv_heads;
  std::vector<double> out(static_cast<std::size_t>(g.tokens() * g.heads * d_count), 0.0);
  AttentionGeometry used = g;
  if (drop_newest)
    for (auto& c : used.context) c = std::max<std::int64_t>(c - 1, 1);
  for_each_attention_weight(used, q, k, nullptr, [&](std::int64_t t, std::int64_t h, std::int64_t key_row, double p,
                                                     double, double) {
    const double p_rounded = round_bf16(static_cast<float>(p));
    const float* vv = v.data() + (key_row * g.kv_heads + h / group) * d_count;
    double* o = out.data() + (t * g.heads + h) * d_count;
    for (std::int64_t d = 0; d < d_count; ++d) o[d] += p_rounded * vv[d];
  });
  return rounded(std::move(out));
}

TEST(CudaToleranceRules, AttentionBoundsFollowTheCpuBackendsKeyRanges) {
  auto cpu = make_cpu_backend();
  // A cache of 3 slots x 300 positions, a prefill chunk, a continuation and a decode row.
  const std::int64_t slots = 3, capacity = 300, heads = 8, kv_heads = 2, head_dim = 64;
  TokenLayout layout;
  for (std::int32_t i = 0; i < 30; ++i) layout.slots.push_back(0), layout.positions.push_back(i);
  for (std::int32_t i = 0; i < 9; ++i) layout.slots.push_back(2), layout.positions.push_back(250 + i);
  layout.slots.push_back(1), layout.positions.push_back(299);
  const auto tokens = static_cast<std::int64_t>(layout.tokens());
  const auto cache_count = static_cast<std::size_t>(slots * capacity * kv_heads * head_dim);
  const auto k = random_bf16(cache_count, 1.0f, 5), v = random_bf16(cache_count, 1.0f, 6);
  const auto q = random_bf16(static_cast<std::size_t>(tokens * heads * head_dim), 1.0f, 7);
  const float scale = 4.0f / std::sqrt(static_cast<float>(head_dim));
  Tensor out = cpu->zeros({tokens, heads, head_dim}, "attn");
  cpu->attention(host_tensor(q, {tokens, heads, head_dim}, "q"), host_tensor(k, {slots, capacity, kv_heads, head_dim}, "k"),
                 host_tensor(v, {slots, capacity, kv_heads, head_dim}, "v"), layout, scale, out);
  const auto ref = fetch(*cpu, out);
  const auto geometry = cache_geometry(layout, capacity, heads, kv_heads, head_dim, scale);
  const Tolerance tolerance = attention_tolerance(geometry, q, k, v);
  expect_within(emulated_attention(geometry, q, k, v, false), ref, "emulated cached attention", tolerance);
  EXPECT_NONFATAL_FAILURE(expect_within(emulated_attention(geometry, q, k, v, true), ref, "newest key dropped", tolerance),
                          "outside the tolerance");

  // Packed training sequences: attention_train, its lse, and the same emulation.
  const std::vector<std::int64_t> seq_starts = {0, 37, 107, 112};
  const std::int64_t rows = seq_starts.back();
  const auto tq = random_bf16(static_cast<std::size_t>(rows * heads * head_dim), 1.0f, 8);
  const auto tk = random_bf16(static_cast<std::size_t>(rows * kv_heads * head_dim), 1.0f, 9);
  const auto tv = random_bf16(static_cast<std::size_t>(rows * kv_heads * head_dim), 1.0f, 10);
  Tensor tout = cpu->zeros({rows, heads, head_dim}, "attn"), lse = cpu->zeros_f32({rows, heads}, "lse");
  cpu->attention_train(host_tensor(tq, {rows, heads, head_dim}, "q"), host_tensor(tk, {rows, kv_heads, head_dim}, "k"),
                       host_tensor(tv, {rows, kv_heads, head_dim}, "v"), seq_starts, scale, tout, lse);
  const auto packed = packed_geometry(seq_starts, heads, kv_heads, head_dim, scale);
  const auto tref = fetch(*cpu, tout);
  const Tolerance ttol = attention_tolerance(packed, tq, tk, tv);
  expect_within(emulated_attention(packed, tq, tk, tv, false), tref, "emulated attention_train", ttol);
  EXPECT_NONFATAL_FAILURE(expect_within(emulated_attention(packed, tq, tk, tv, true), tref, "train newest dropped", ttol),
                          "outside the tolerance");
  // lse in double against the CPU's fp32.
  const auto cpu_lse = fetch(*cpu, lse);
  const auto bound = lse_tolerance(packed, tq, tk, cpu_lse);
  std::vector<double> sums(cpu_lse.size(), 0.0), largest(cpu_lse.size(), -INFINITY);
  auto at = [&](std::int64_t t, std::int64_t h) { return static_cast<std::size_t>(t * heads + h); };
  for_each_attention_weight(packed, tq, tk, nullptr, [&](std::int64_t t, std::int64_t h, std::int64_t, double, double s,
                                                         double) { largest[at(t, h)] = std::max(largest[at(t, h)], s); });
  for_each_attention_weight(packed, tq, tk, nullptr, [&](std::int64_t t, std::int64_t h, std::int64_t, double, double s,
                                                         double) { sums[at(t, h)] += std::exp(s - largest[at(t, h)]); });
  for (std::size_t i = 0; i < cpu_lse.size(); ++i) {
    const double exact = largest[i] + std::log(sums[i]);
    EXPECT_NEAR(cpu_lse[i], exact, bound[i]) << i;
    EXPECT_LT(bound[i], 1e-3 * (1.0 + std::abs(exact))) << "the lse bound is loose at " << i;
  }
}

TEST(CudaToleranceRules, AttentionBackwardBoundsHoldForAnExactBackwardAndCatchA1PercentError) {
  auto cpu = make_cpu_backend();
  const std::vector<std::int64_t> seq_starts = {0, 37, 107, 112};
  const std::int64_t rows = seq_starts.back(), heads = 8, kv_heads = 2, head_dim = 64, group = heads / kv_heads;
  const float scale = 2.0f / std::sqrt(static_cast<float>(head_dim));
  const auto q = random_bf16(static_cast<std::size_t>(rows * heads * head_dim), 1.0f, 11);
  const auto k = random_bf16(static_cast<std::size_t>(rows * kv_heads * head_dim), 1.0f, 12);
  const auto v = random_bf16(static_cast<std::size_t>(rows * kv_heads * head_dim), 1.0f, 13);
  const auto dout = random_bf16(static_cast<std::size_t>(rows * heads * head_dim), 1.0f, 14);
  const Tensor qt = host_tensor(q, {rows, heads, head_dim}, "q"), kt = host_tensor(k, {rows, kv_heads, head_dim}, "k");
  const Tensor vt = host_tensor(v, {rows, kv_heads, head_dim}, "v");
  Tensor out = cpu->zeros({rows, heads, head_dim}, "attn"), lse = cpu->zeros_f32({rows, heads}, "lse");
  cpu->attention_train(qt, kt, vt, seq_starts, scale, out, lse);
  // The inputs a CUDA backward gets: a bf16 forward output.
  const auto out_f32 = fetch(*cpu, out);
  const auto out_v = rounded(std::vector<double>(out_f32.begin(), out_f32.end()));
  const auto lse_v = fetch(*cpu, lse);
  Tensor dq = cpu->zeros({rows, heads, head_dim}, "dq"), dk = cpu->zeros({rows, kv_heads, head_dim}, "dk");
  Tensor dv = cpu->zeros({rows, kv_heads, head_dim}, "dv");
  cpu->attention_backward(qt, kt, vt, host_tensor(out_v, {rows, heads, head_dim}, "attn"),
                          host_tensor(lse_v, {rows, heads}, "lse"), host_tensor(dout, {rows, heads, head_dim}, "dout"),
                          seq_starts, scale, dq, dk, dv);
  const auto geometry = packed_geometry(seq_starts, heads, kv_heads, head_dim, scale);
  const auto tol = attention_backward_tolerances(geometry, q, k, v, out_v, lse_v, dout);

  // The backward in double from the same inputs, rounded to bf16 once: what an exact kernel would store.
  std::vector<double> dq_e(q.size(), 0.0), dk_e(k.size(), 0.0), dv_e(v.size(), 0.0);
  for_each_attention_weight(geometry, q, k, &lse_v, [&](std::int64_t t, std::int64_t h, std::int64_t key_row, double p,
                                                        double, double) {
    const auto row = static_cast<std::size_t>(t * heads + h);
    const auto kv_at = static_cast<std::size_t>((key_row * kv_heads + h / group) * head_dim);
    double dp = 0, delta = 0;
    for (std::int64_t d = 0; d < head_dim; ++d) {
      dp += static_cast<double>(dout[row * head_dim + d]) * v[kv_at + d];
      delta += static_cast<double>(dout[row * head_dim + d]) * out_v[row * head_dim + d];
    }
    const double ds = p * (dp - delta);
    for (std::int64_t d = 0; d < head_dim; ++d) {
      dq_e[row * head_dim + d] += scale * ds * k[kv_at + d];
      dk_e[kv_at + d] += scale * ds * q[row * head_dim + d];
      dv_e[kv_at + d] += p * dout[row * head_dim + d];
    }
  });
  const auto dq_ref = fetch(*cpu, dq), dk_ref = fetch(*cpu, dk), dv_ref = fetch(*cpu, dv);
  expect_within(rounded(dq_e), dq_ref, "exact dq", tol.dq);
  expect_within(rounded(dk_e), dk_ref, "exact dk", tol.dk);
  expect_within(rounded(dv_e), dv_ref, "exact dv", tol.dv);
  for (auto* values : {&dq_e, &dk_e, &dv_e})
    for (auto& x : *values) x *= 1.01;
  EXPECT_NONFATAL_FAILURE(expect_within(rounded(dq_e), dq_ref, "dq 1% off", tol.dq), "outside the tolerance");
  EXPECT_NONFATAL_FAILURE(expect_within(rounded(dk_e), dk_ref, "dk 1% off", tol.dk), "outside the tolerance");
  EXPECT_NONFATAL_FAILURE(expect_within(rounded(dv_e), dv_ref, "dv 1% off", tol.dv), "outside the tolerance");
}

TEST(CudaToleranceRules, ModelBoundGrowsWithDepthAndVocabulary) {
  const auto shallow = model_logit_tolerance(2, kRoundingsPerLayer, 480);
  const auto deep = model_logit_tolerance(24, kRoundingsPerLayer, 151936);
  EXPECT_LT(shallow.rms, deep.rms);
  EXPECT_LT(shallow.max / shallow.rms, deep.max / deep.rms);
  // 24 layers of 13 roundings: 3 x 2^-9 / sqrt(3) x sqrt(316), about 6% of a row's RMS logit.
  EXPECT_NEAR(deep.rms, 3.0 / 256.0 / std::sqrt(3.0) * std::sqrt(316.0), 1e-12);
  std::vector<float> row = {3.0f, 1.0f, 2.5f, -4.0f};
  const TopTwo top = top_two(row.data(), 4);
  EXPECT_EQ(top.id, 0);
  EXPECT_DOUBLE_EQ(top.gap, 0.5);
}

}  // namespace
}  // namespace slearn
