// Shared helpers of the GPU tests: every CUDA op is compared with the CPU op (the fp32 reference) on the
// same inputs. Inputs are drawn at random and rounded to bf16 first, so both backends see identical values
// (uploading to the CUDA backend is then exact) and the only differences left are the CUDA kernels' own:
// fp32 summation order and math functions, the final rounding of each output to bf16, and any intermediate
// a kernel rounds to bf16 on purpose.
//
// When a test runs. SLEARN_REQUIRE_GPU(backend) asks cuda_device_count(): no device (cudaErrorNoDevice, a
// count of 0, no driver at all) skips the test, visibly; any other CUDA failure (an old driver, a broken
// install) makes cuda_device_count() throw, and the test FAILS with that error, as `auto` refuses with it.
// With SLEARN_EXPECT_GPU=1 in the environment (the device check sets it) a missing device fails too, and
// main.cpp turns every skip of any kind into a failing exit status.
//
// The tolerance, per element i (expect_within; expect_close is the case sums = |ref|, terms = 1):
//   |cuda_i - cpu_i| <= 2 |bf16(cpu_i) - cpu_i|  +  2 eta(K) S_i  +  extra_i,   eta(K) = (32 + 8 sqrt(K)) 2^-24
// Derivation. Let c_i be what the CUDA kernel holds in fp32 before its one rounding to bf16, and
// d_i = c_i - cpu_i the fp32 disagreement (summation order, expf, rsqrtf). bf16(c) is the bf16 value nearest
// c, so |bf16(c) - c| <= |bf16(cpu) - c| and
//   |bf16(c) - cpu| <= |bf16(c) - c| + |d| <= |bf16(cpu) - cpu| + 2 |d|.
// The first term is per element (a value that happens to be exact in bf16 gets no rounding allowance, a
// value at a rounding midpoint gets half a bf16 ulp); the factor 2 on it is margin. |d| is bounded by
// eta(K) S_i, where S_i is the sum of the absolute values of the terms the element is computed from (its
// own |ref_i| for elementwise ops, sum_j |a_ij b_j| for a dot product) and K the number of terms: the
// probabilistic bound of Higham and Mary for recursive fp32 summation, lambda sqrt(K) u32 S with
// lambda = 8 (failure probability ~ exp(-lambda^2 / 2) per element), plus 32 u32 for the few ulps of the
// math functions. An fp32 output (rounded_output = false) drops the bf16 term. extra_i is the propagated
// error of a bf16 intermediate the CUDA path rounds, derived where the test is; for a sum of independently
// rounded terms t_j it is hoeffding_bf16(sum_j t_j^2) = 8 u sqrt(sum_j t_j^2), u = 2^-8 (Hoeffding's
// inequality for independent zero-mean errors |delta_j| <= u, the same lambda). bf16 keeps 8 significant
// bits, so rounding to nearest moves a value by at most half an ulp, 2^-8 of it just above a power of two.
// None of these bounds comes from measurements: the tests have not yet run on a GPU (docs/cuda.md).
#pragma once

#include <cblas.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <random>
#include <span>
#include <string>
#include <vector>

#include "cuda/cuda_backend.hpp"
#include "slearn/backend.hpp"
#include "slearn/dtype.hpp"
#include "slearn/model.hpp"
#include "slearn/model_config.hpp"

namespace slearn::gpu_testing {

constexpr double kBf16Unit = 1.0 / 256.0;       // u = 2^-8: one rounding to bf16 moves a value by <= u of it
constexpr double kFp32Unit = 1.0 / 16777216.0;  // 2^-24
constexpr double kLambda = 8.0;                 // the probabilistic bounds' multiple of the standard deviation

// ---- When a GPU test runs ----

// SLEARN_EXPECT_GPU=1: the run is meant to be on a GPU, so no test may skip.
inline bool gpu_expected() {
  const char* value = std::getenv("SLEARN_EXPECT_GPU");
  return value != nullptr && std::string(value) == "1";
}

enum class GpuVerdict { Run, Skip, Fail };
struct GpuDecision {
  GpuVerdict verdict;
  std::string reason;
};

// The rule of SLEARN_REQUIRE_GPU, given what cuda_device_count() did: a count (device_count, when `error`
// is empty) or the message it threw.
inline GpuDecision decide_gpu_test(int device_count, const std::string& error, bool expected) {
  if (!error.empty()) return {GpuVerdict::Fail, "CUDA is installed but unusable: " + error};
  if (device_count > 0) return {GpuVerdict::Run, ""};
  if (expected) return {GpuVerdict::Fail, "SLEARN_EXPECT_GPU=1 but no CUDA device is visible"};
  return {GpuVerdict::Skip, "no CUDA device is visible (set SLEARN_EXPECT_GPU=1 to make this a failure)"};
}

// Asks the driver, then opens the CUDA backend into `backend` when the verdict is Run (a failure to open it
// turns the verdict into Fail).
inline GpuDecision open_gpu_backend(std::unique_ptr<Backend>& backend) {
  int count = 0;
  std::string error;
  try {
    count = cuda_device_count();
  } catch (const std::exception& e) {
    error = e.what();
    if (error.empty()) error = "cuda_device_count() threw an exception without a message";
  }
  GpuDecision decision = decide_gpu_test(count, error, gpu_expected());
  if (decision.verdict != GpuVerdict::Run) return decision;
  try {
    backend = make_backend("cuda");
  } catch (const std::exception& e) {
    return {GpuVerdict::Fail, std::to_string(count) + " CUDA device(s) visible, but make_backend(\"cuda\") failed: " +
                                  e.what()};
  }
  return decision;
}

// In a test body: `SLEARN_REQUIRE_GPU(backend);` declares std::unique_ptr<Backend> backend, the CUDA
// backend; it skips the test when no device is visible and fails it on any other CUDA error (see the top).
#define SLEARN_REQUIRE_GPU(backend_var)                                                                 \
  std::unique_ptr<::slearn::Backend> backend_var;                                                       \
  if (const ::slearn::gpu_testing::GpuDecision slearn_gpu_decision =                                    \
          ::slearn::gpu_testing::open_gpu_backend(backend_var);                                         \
      slearn_gpu_decision.verdict == ::slearn::gpu_testing::GpuVerdict::Skip) {                         \
    GTEST_SKIP() << slearn_gpu_decision.reason;                                                         \
  } else if (slearn_gpu_decision.verdict == ::slearn::gpu_testing::GpuVerdict::Fail) {                  \
    FAIL() << slearn_gpu_decision.reason;                                                               \
  }                                                                                                     \
  static_assert(true)

// ---- Inputs ----

inline float round_bf16(float x) { return bf16_to_f32(f32_to_bf16(x)); }

// Values uniform in [-scale, scale], rounded to bf16.
inline std::vector<float> random_bf16(std::size_t count, float scale, std::uint32_t seed) {
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> dist(-scale, scale);
  std::vector<float> values(count);
  for (auto& v : values) v = round_bf16(dist(rng));
  return values;
}

inline Tensor host_tensor(const std::vector<float>& values, std::vector<std::int64_t> shape, const std::string& name) {
  Tensor t = Tensor::host_f32(std::move(shape), name);
  EXPECT_EQ(static_cast<std::size_t>(t.numel()), values.size()) << name;
  std::copy(values.begin(), values.end(), t.f32());
  return t;
}

// The same values as a tensor of each backend.
struct Pair {
  Tensor cpu, cuda;
};
inline Pair both(Backend& cuda, const std::vector<float>& values, const std::vector<std::int64_t>& shape,
                 const std::string& name) {
  return {host_tensor(values, shape, name), cuda.upload(host_tensor(values, shape, name))};
}
// Zero outputs of each backend.
inline Pair zeros(Backend& cpu, Backend& cuda, const std::vector<std::int64_t>& shape, const std::string& name) {
  return {cpu.zeros(shape, name), cuda.zeros(shape, name)};
}

inline std::vector<float> fetch(Backend& backend, const Tensor& t) {
  std::vector<float> out(static_cast<std::size_t>(t.numel()));
  backend.to_host(t, out);
  return out;
}

inline double max_abs(const std::vector<float>& v) {
  double m = 0;
  for (float x : v) m = std::max(m, static_cast<double>(std::abs(x)));
  return m;
}

// ---- The tolerance (see the top of the file) ----

inline double fp32_noise(std::int64_t terms) {
  return (32.0 + kLambda * std::sqrt(static_cast<double>(std::max<std::int64_t>(terms, 1)))) * kFp32Unit;
}
// The bound on sum_j delta_j t_j for independent roundings |delta_j| <= u, given sum_j t_j^2.
inline double hoeffding_bf16(double sum_of_squares) { return kLambda * kBf16Unit * std::sqrt(sum_of_squares); }

struct Tolerance {
  std::vector<double> sums;     // S_i: sum of |terms| of element i; empty means |ref_i|
  std::int64_t terms = 1;       // K: terms per element
  std::vector<double> extra;    // propagated error of bf16 intermediates; empty means none
  bool rounded_output = true;   // false: the CUDA output is an fp32 tensor (no final bf16 rounding)
};

inline void expect_within(const std::vector<float>& got, const std::vector<float>& ref, const std::string& what,
                          const Tolerance& tolerance) {
  ASSERT_EQ(got.size(), ref.size()) << what;
  ASSERT_TRUE(tolerance.sums.empty() || tolerance.sums.size() == ref.size()) << what << ": sums";
  ASSERT_TRUE(tolerance.extra.empty() || tolerance.extra.size() == ref.size()) << what << ": extra";
  const double eta = fp32_noise(tolerance.terms);
  double worst = 0, worst_ratio = 0;
  std::size_t bad = 0, first_bad = 0, worst_at = 0;
  double first_bad_tol = 0;
  for (std::size_t i = 0; i < got.size(); ++i) {
    const double r = ref[i];
    const double err = std::abs(static_cast<double>(got[i]) - r);
    const double s = tolerance.sums.empty() ? std::abs(r) : tolerance.sums[i];
    double tol = 2.0 * eta * s + (tolerance.extra.empty() ? 0.0 : tolerance.extra[i]);
    if (tolerance.rounded_output) tol += 2.0 * std::abs(static_cast<double>(round_bf16(ref[i])) - r);
    worst = std::max(worst, err);
    const double ratio = err / std::max(tol, 1e-300);
    if (ratio > worst_ratio) worst_ratio = ratio, worst_at = i;
    if (!(err <= tol)) {  // also catches NaN
      if (bad++ == 0) first_bad = i, first_bad_tol = tol;
    }
  }
  std::printf("[ measured ] %s: max |cuda - cpu| = %.3g; worst element %zu at %.2f of its tolerance (max|ref| %.3g)\n",
              what.c_str(), worst, worst_at, worst_ratio, max_abs(ref));
  EXPECT_EQ(bad, 0u) << what << ": " << bad << " of " << got.size() << " elements outside the tolerance; first at "
                     << first_bad << ": cuda " << (got.empty() ? 0.0f : got[first_bad]) << " cpu "
                     << (ref.empty() ? 0.0f : ref[first_bad]) << " tolerance " << first_bad_tol;
}

// Elementwise ops: S_i = |ref_i|, K = 1, plus `extra` (may be empty).
inline void expect_close(const std::vector<float>& got, const std::vector<float>& ref, const std::string& what,
                         const std::vector<double>& extra = {}) {
  expect_within(got, ref, what, Tolerance{{}, 1, extra, true});
}

// ---- Sums of |terms| for dot products, on the host ----

// S[r][c] = alpha |op(a)| |op(b)| + beta_abs |c0| (c0 may be empty): the S of matmul(a, ta, b, tb, alpha, beta, c)
// with c = op(a) op(b) of [m, n] and inner size k.
inline std::vector<double> abs_product_sums(const std::vector<float>& a, bool transpose_a, const std::vector<float>& b,
                                            bool transpose_b, std::int64_t m, std::int64_t n, std::int64_t k,
                                            double alpha = 1.0, const std::vector<float>& c0 = {}, double beta = 0.0) {
  std::vector<float> abs_a(a.size()), abs_b(b.size()), out(static_cast<std::size_t>(m * n));
  for (std::size_t i = 0; i < a.size(); ++i) abs_a[i] = std::abs(a[i]);
  for (std::size_t i = 0; i < b.size(); ++i) abs_b[i] = std::abs(b[i]);
  cblas_sgemm(CblasRowMajor, transpose_a ? CblasTrans : CblasNoTrans, transpose_b ? CblasTrans : CblasNoTrans,
              static_cast<int>(m), static_cast<int>(n), static_cast<int>(k), 1.0f, abs_a.data(),
              static_cast<int>(transpose_a ? m : k), abs_b.data(), static_cast<int>(transpose_b ? k : n), 0.0f,
              out.data(), static_cast<int>(n));
  std::vector<double> sums(out.size());
  for (std::size_t i = 0; i < out.size(); ++i)
    sums[i] = std::abs(alpha) * out[i] + (c0.empty() ? 0.0 : std::abs(beta) * std::abs(c0[i]));
  return sums;
}

// ---- Attention bounds, on the host in double ----
// K/V are seen as [key rows, kv_heads, head_dim]; query row t (all heads, [tokens, heads, head_dim]) attends to
// key rows key_row0[t] .. key_row0[t] + context[t] - 1; query head h reads kv head h / (heads / kv_heads).
struct AttentionGeometry {
  std::vector<std::int64_t> key_row0;
  std::vector<std::int64_t> context;
  std::int64_t heads = 0, kv_heads = 0, head_dim = 0;
  float scale = 1.0f;
  std::int64_t tokens() const { return static_cast<std::int64_t>(key_row0.size()); }
  std::int64_t max_context() const {
    std::int64_t m = 1;
    for (auto c : context) m = std::max(m, c);
    return m;
  }
};

// Backend::attention over a cache [slots, capacity, kv_heads, head_dim].
inline AttentionGeometry cache_geometry(const TokenLayout& layout, std::int64_t capacity, std::int64_t heads,
                                        std::int64_t kv_heads, std::int64_t head_dim, float scale) {
  AttentionGeometry g{{}, {}, heads, kv_heads, head_dim, scale};
  for (std::size_t t = 0; t < layout.tokens(); ++t) {
    g.key_row0.push_back(static_cast<std::int64_t>(layout.slots[t]) * capacity);
    g.context.push_back(static_cast<std::int64_t>(layout.positions[t]) + 1);
  }
  return g;
}
// attention_train / attention_backward over packed causal sequences.
inline AttentionGeometry packed_geometry(std::span<const std::int64_t> seq_starts, std::int64_t heads,
                                         std::int64_t kv_heads, std::int64_t head_dim, float scale) {
  AttentionGeometry g{{}, {}, heads, kv_heads, head_dim, scale};
  for (std::size_t s = 0; s + 1 < seq_starts.size(); ++s)
    for (std::int64_t t = seq_starts[s]; t < seq_starts[s + 1]; ++t) {
      g.key_row0.push_back(seq_starts[s]);
      g.context.push_back(t - seq_starts[s] + 1);
    }
  return g;
}

// Calls visit(t, h, kv_row(j), p_j, s_j, sabs_j) for every key j of (t, h), with p the softmax weights (or
// exp(s - lse) when `lse` is given), s the score and sabs = scale sum_d |q_d k_d|.
template <class Visit>
void for_each_attention_weight(const AttentionGeometry& g, const std::vector<float>& q, const std::vector<float>& k,
                               const std::vector<float>* lse, Visit&& visit) {
  const std::int64_t group = g.heads / g.kv_heads, d_count = g.head_dim;
  std::vector<double> s, sabs;
  for (std::int64_t t = 0; t < g.tokens(); ++t) {
    const std::int64_t n = g.context[static_cast<std::size_t>(t)], row0 = g.key_row0[static_cast<std::size_t>(t)];
    s.assign(static_cast<std::size_t>(n), 0.0);
    sabs.assign(static_cast<std::size_t>(n), 0.0);
    for (std::int64_t h = 0; h < g.heads; ++h) {
      const float* qv = q.data() + (t * g.heads + h) * d_count;
      const std::int64_t kvh = h / group;
      double m = -INFINITY;
      for (std::int64_t j = 0; j < n; ++j) {
        const float* kv = k.data() + ((row0 + j) * g.kv_heads + kvh) * d_count;
        double dot = 0, dot_abs = 0;
        for (std::int64_t d = 0; d < d_count; ++d) {
          const double prod = static_cast<double>(qv[d]) * kv[d];
          dot += prod;
          dot_abs += std::abs(prod);
        }
        s[static_cast<std::size_t>(j)] = g.scale * dot;
        sabs[static_cast<std::size_t>(j)] = g.scale * dot_abs;
        m = std::max(m, s[static_cast<std::size_t>(j)]);
      }
      double shift = m, norm = 0;
      if (lse != nullptr) {
        shift = (*lse)[static_cast<std::size_t>(t * g.heads + h)];
        norm = 1.0;
      } else {
        for (std::int64_t j = 0; j < n; ++j) norm += std::exp(s[static_cast<std::size_t>(j)] - m);
      }
      for (std::int64_t j = 0; j < n; ++j) {
        const auto js = static_cast<std::size_t>(j);
        visit(t, h, row0 + j, std::exp(s[js] - shift) / norm, s[js], sabs[js]);
      }
    }
  }
}

// The tolerance of an attention output [tokens, heads, head_dim] against the CPU's:
// - the P V sum and the softmax normaliser: S_i = sum_j p_j |v_jd|, K = the longest context;
// - each score s_j = scale q.k_j is off by at most eta(head_dim) sabs_j in fp32, which exp turns into a
//   relative error of p_j, as the max and the normaliser's: at most 3 eta(head_dim) max_j sabs_j of each p_j,
//   i.e. 3 eta(head_dim) max_j sabs_j S_i in the output, allowed twice (the rule's factor 2 on fp32 errors);
// - a kernel may round the probabilities to bf16 for the P V product on tensor cores (the normaliser staying
//   the fp32 sum), which moves the output by sum_j delta_j p_j v_jd: hoeffding_bf16(sum_j p_j^2 v_jd^2).
inline Tolerance attention_tolerance(const AttentionGeometry& g, const std::vector<float>& q, const std::vector<float>& k,
                                     const std::vector<float>& v) {
  const std::int64_t d_count = g.head_dim;
  const auto size = static_cast<std::size_t>(g.tokens() * g.heads * d_count);
  std::vector<double> sums(size, 0.0), squares(size, 0.0), largest_sabs(static_cast<std::size_t>(g.tokens() * g.heads), 0.0);
  for_each_attention_weight(g, q, k, nullptr,
                            [&](std::int64_t t, std::int64_t h, std::int64_t key_row, double p, double, double sabs) {
                              const std::int64_t row = t * g.heads + h;
                              const float* vv = v.data() + (key_row * g.kv_heads + h / (g.heads / g.kv_heads)) * d_count;
                              double* out_s = sums.data() + row * d_count;
                              double* out_q = squares.data() + row * d_count;
                              for (std::int64_t d = 0; d < d_count; ++d) {
                                out_s[d] += p * std::abs(vv[d]);
                                out_q[d] += p * p * static_cast<double>(vv[d]) * vv[d];
                              }
                              double& largest = largest_sabs[static_cast<std::size_t>(row)];
                              largest = std::max(largest, sabs);
                            });
  std::vector<double> extra(size);
  const double score_eta = fp32_noise(d_count);
  for (std::size_t i = 0; i < size; ++i)
    extra[i] = hoeffding_bf16(squares[i]) +
               2.0 * 3.0 * score_eta * largest_sabs[i / static_cast<std::size_t>(d_count)] * sums[i];
  return Tolerance{std::move(sums), g.max_context(), std::move(extra), true};
}

// The bound on |cuda lse - cpu lse| per (token, head): lse = log sum_j exp(s_j) moves by at most max_j |ds_j|
// <= eta(head_dim) max_j sabs_j through the scores, and by the normaliser's relative error eta(context)
// (plus the log's few ulps of |lse|) through the sum; allowed twice.
inline std::vector<double> lse_tolerance(const AttentionGeometry& g, const std::vector<float>& q,
                                         const std::vector<float>& k, const std::vector<float>& lse) {
  std::vector<double> bound(static_cast<std::size_t>(g.tokens() * g.heads), 0.0);
  for_each_attention_weight(g, q, k, nullptr, [&](std::int64_t t, std::int64_t h, std::int64_t, double, double, double sabs) {
    double& b = bound[static_cast<std::size_t>(t * g.heads + h)];
    b = std::max(b, sabs);
  });
  for (std::size_t i = 0; i < bound.size(); ++i)
    bound[i] = 2.0 * (fp32_noise(g.head_dim) * bound[i] + fp32_noise(g.max_context()) * (1.0 + std::abs(lse[i])));
  return bound;
}

// The tolerances of attention_backward's dq, dk, dv given the inputs both backends used (q, k, v, out, lse,
// dout; fp32 math throughout the CUDA backward, no bf16 intermediates). With P_j = exp(s_j - lse),
// dP_j = dO . v_j, D = dO . O and dS_j = P_j (dP_j - D):
// - sums: dQ = scale sum_j dS_j k_j, dK_j = scale sum_t dS_tj q_t, dV_j = sum_t P_tj dO_t, with the size of
//   dS_j's own computation, P_j (sum_d |dO v_j| + sum_d |dO O|), in place of |dS_j| (it cancels); K covers
//   the longest context and head_dim, times the group for dK and dV (summed over the group's heads);
// - extra: the exponent s_j - lse is off by a_j = eta(head_dim) sabs_j + 4 u32 (|s_j| + |lse|), a relative
//   error of P_j and so of dS_j: |dS_j| a_j and P_j a_j carried through the same sums, allowed twice.
struct AttentionBackwardTolerances {
  Tolerance dq, dk, dv;
};
inline AttentionBackwardTolerances attention_backward_tolerances(const AttentionGeometry& g, const std::vector<float>& q,
                                                                 const std::vector<float>& k, const std::vector<float>& v,
                                                                 const std::vector<float>& out,
                                                                 const std::vector<float>& lse,
                                                                 const std::vector<float>& dout) {
  const std::int64_t d_count = g.head_dim, group = g.heads / g.kv_heads;
  std::vector<double> dq(q.size(), 0.0), dk(k.size(), 0.0), dv(v.size(), 0.0);
  std::vector<double> dq_extra(q.size(), 0.0), dk_extra(k.size(), 0.0), dv_extra(v.size(), 0.0);
  std::vector<double> delta(static_cast<std::size_t>(g.tokens() * g.heads)), delta_abs(delta.size());
  for (std::size_t row = 0; row < delta.size(); ++row) {
    double sum = 0, sum_abs = 0;
    for (std::int64_t d = 0; d < d_count; ++d) {
      const double prod = static_cast<double>(dout[row * d_count + d]) * out[row * d_count + d];
      sum += prod;
      sum_abs += std::abs(prod);
    }
    delta[row] = sum;
    delta_abs[row] = sum_abs;
  }
  const double score_eta = fp32_noise(d_count);
  for_each_attention_weight(g, q, k, &lse, [&](std::int64_t t, std::int64_t h, std::int64_t key_row, double p, double s,
                                               double sabs) {
    const auto row = static_cast<std::size_t>(t * g.heads + h);
    const float* d_o = dout.data() + row * d_count;
    const float* qv = q.data() + row * d_count;
    const std::size_t kv_at = static_cast<std::size_t>((key_row * g.kv_heads + h / group) * d_count);
    double dp = 0, dp_abs = 0;
    for (std::int64_t d = 0; d < d_count; ++d) {
      const double prod = static_cast<double>(d_o[d]) * v[kv_at + d];
      dp += prod;
      dp_abs += std::abs(prod);
    }
    const double exponent_error = score_eta * sabs + 4.0 * kFp32Unit * (std::abs(s) + std::abs(lse[row]));
    const double ds_size = p * (dp_abs + delta_abs[row]);
    const double ds_error = 2.0 * std::abs(p * (dp - delta[row])) * exponent_error;
    const double p_error = 2.0 * p * exponent_error;
    for (std::int64_t d = 0; d < d_count; ++d) {
      dq[row * d_count + d] += g.scale * ds_size * std::abs(k[kv_at + d]);
      dk[kv_at + d] += g.scale * ds_size * std::abs(qv[d]);
      dv[kv_at + d] += p * std::abs(d_o[d]);
      dq_extra[row * d_count + d] += g.scale * ds_error * std::abs(k[kv_at + d]);
      dk_extra[kv_at + d] += g.scale * ds_error * std::abs(qv[d]);
      dv_extra[kv_at + d] += p_error * std::abs(d_o[d]);
    }
  });
  const std::int64_t terms = std::max(g.max_context(), d_count) * group;
  return {Tolerance{std::move(dq), terms, std::move(dq_extra), true},
          Tolerance{std::move(dk), terms, std::move(dk_extra), true},
          Tolerance{std::move(dv), terms, std::move(dv_extra), true}};
}

// ---- Logits of a whole model, per row ----
// See model_logit_tolerance for the derivation of the bound; rows are compared relative to their own RMS.
struct LogitTolerance {
  double rms;  // bound on rms_v(cuda - cpu) / rms_v(cpu) over one row
  double max;  // bound on max_v |cuda - cpu| / rms_v(cpu) over one row
};

inline double row_rms(const float* row, std::int64_t n) {
  double s = 0;
  for (std::int64_t i = 0; i < n; ++i) s += static_cast<double>(row[i]) * row[i];
  return std::sqrt(s / static_cast<double>(std::max<std::int64_t>(n, 1)));
}

// The top logit of a row, its id (lowest id on ties, as greedy sampling picks) and its lead over the second.
struct TopTwo {
  std::int64_t id = 0;
  double gap = 0;
};
inline TopTwo top_two(const float* row, std::int64_t n) {
  std::int64_t best = 0;
  for (std::int64_t i = 1; i < n; ++i)
    if (row[i] > row[best]) best = i;
  double second = -INFINITY;
  for (std::int64_t i = 0; i < n; ++i)
    if (i != best) second = std::max(second, static_cast<double>(row[i]));
  return {best, static_cast<double>(row[best]) - second};
}

// The lead the CPU's top logit needs for a bf16 model to pick the same token for sure: every logit may move by
// up to tolerance.max rms(row), the top one down and the second one up.
inline double decisive_gap(const float* row, std::int64_t n, const LogitTolerance& tolerance) {
  return 2.0 * tolerance.max * row_rms(row, n);
}

struct LogitComparison {
  double worst_rms = 0, worst_max = 0;  // the largest ratios over the rows (relative to each row's RMS)
  std::size_t rows = 0, bad_rows = 0;
};

// Checks every row of got and ref ([rows, vocab]) against the per-row tolerance; prints the measured ratios.
inline LogitComparison expect_logit_rows_close(const std::vector<float>& got, const std::vector<float>& ref,
                                               std::int64_t vocab, const LogitTolerance& tolerance,
                                               const std::string& what) {
  LogitComparison c;
  EXPECT_EQ(got.size(), ref.size()) << what;
  if (got.size() != ref.size() || vocab <= 0) return c;
  c.rows = ref.size() / static_cast<std::size_t>(vocab);
  std::size_t first_bad = 0;
  double first_rms = 0, first_max = 0;
  for (std::size_t r = 0; r < c.rows; ++r) {
    const float* g = got.data() + r * static_cast<std::size_t>(vocab);
    const float* e = ref.data() + r * static_cast<std::size_t>(vocab);
    const double scale = row_rms(e, vocab);
    double squares = 0, largest = 0;
    bool finite = true;
    for (std::int64_t v = 0; v < vocab; ++v) {
      const double d = static_cast<double>(g[v]) - e[v];
      finite = finite && std::isfinite(d);
      squares += d * d;
      largest = std::max(largest, std::abs(d));
    }
    const double rms_ratio = std::sqrt(squares / static_cast<double>(vocab)) / scale;
    const double max_ratio = largest / scale;
    c.worst_rms = std::max(c.worst_rms, rms_ratio);
    c.worst_max = std::max(c.worst_max, max_ratio);
    if (!finite || !(rms_ratio <= tolerance.rms) || !(max_ratio <= tolerance.max)) {
      if (c.bad_rows++ == 0) first_bad = r, first_rms = rms_ratio, first_max = max_ratio;
    }
  }
  std::printf("[ measured ] %s: %zu rows; worst row RMS error %.4f of the row's RMS logit (bound %.4f), worst "
              "element %.4f (bound %.4f)\n",
              what.c_str(), c.rows, c.worst_rms, tolerance.rms, c.worst_max, tolerance.max);
  EXPECT_EQ(c.bad_rows, 0u) << what << ": " << c.bad_rows << " of " << c.rows
                            << " rows outside the tolerance; first row " << first_bad << ": RMS error " << first_rms
                            << ", largest error " << first_max << " of the row's RMS logit";
  return c;
}

// The bound of a whole model's logits, CUDA (bf16 weights and activations) against the CPU (fp32 activations)
// on identical bf16-exact weights (Model::random), per row relative to the row's RMS logit. Derivation:
// - every activation tensor the CUDA model stores is rounded to bf16: element x becomes x (1 + delta),
//   |delta| <= u, which we model as independent and uniform: an RMS relative error of u / sqrt 3;
// - a linear map with incoherent (random) weights carries an input's RMS relative error to its output
//   unchanged, RMSNorm keeps relative errors, and the residual stream adds the errors of its branches; with
//   independent roundings the relative RMS errors add in quadrature along the path, so after R roundings per
//   layer over L layers (and a few outside them: the RoPE tables, the final norm) the final hidden state is
//   off by eps0 = u / sqrt 3 sqrt(R L + 4) of its RMS (a rounding error uniform in [-u, u] relative);
// - the per-layer amplification that this random-walk model ignores (softmax, SiLU and the branches'
//   gains are no isometries) gets a margin of kAmplification = 3 on eps0;
// - the LM head writes fp32 logits (no rounding), and an incoherent head turns a relative error eps of the
//   hidden state into a relative RMS error eps of the row's logits: the row's RMS bound is eps. Each logit's
//   error is then a sum of many small independent terms, ~ Gaussian with standard deviation eps rms(row), so
//   the largest of V is below (sqrt(2 ln V) + 2) eps rms(row) (the +2: probability ~ 1e-4 of exceeding it in
//   a row, for V ~ 1e5).
// R counts, per layer of Model::forward on the CUDA backend: the stacked q/k/v output, q and k after RoPE,
// the attention output, o_proj's output, add_rms_norm's x and normed (twice), the stacked gate/up output,
// the SwiGLU output and down_proj's: 12; plus 1 for probabilities a tensor-core attention kernel may round.
// A LoRA adapter on every projection adds 2 roundings to each of the 4 projections in series on a layer's
// path (x A^T, and the base output rounded again after adding scaling (x A^T) B^T): 8 more.
// No measured value enters: the bound is checked against a CPU model that rounds its activations to bf16
// (test_cuda_model_bound.cpp), not calibrated on it.
constexpr double kAmplification = 3.0;
inline LogitTolerance model_logit_tolerance(std::int64_t layers, std::int64_t roundings_per_layer,
                                            std::int64_t vocab) {
  const double eps0 = kBf16Unit / std::sqrt(3.0) *
                      std::sqrt(static_cast<double>(roundings_per_layer * layers + 4));
  const double eps = kAmplification * eps0;
  return {eps, (std::sqrt(2.0 * std::log(static_cast<double>(vocab))) + 2.0) * eps};
}
constexpr std::int64_t kRoundingsPerLayer = 13;       // 12 stored activations + attention probabilities
constexpr std::int64_t kRoundingsPerLayerLora = 21;   // + the adapter's

// Qwen2.5-0.5B's architecture (its config.json), for a random model.
inline ModelConfig qwen2_0_5b_config() { return reference_shape("qwen2.5-0.5b"); }

// A small model with Qwen2-7B's attention geometry (head_dim 128, 7 query heads per kv head) and an untied
// LM head: 14 heads over 2, hidden 1792, 3 layers, vocabulary 32000.
inline ModelConfig head_dim_128_config() {
  ModelConfig c = qwen2_0_5b_config();
  c.vocab_size = 32000;
  c.hidden_size = 1792;
  c.intermediate_size = 4096;
  c.num_hidden_layers = 3;
  c.num_attention_heads = 14;
  c.num_key_value_heads = 2;
  c.head_dim = 128;
  c.tie_word_embeddings = false;
  return c;
}

// Prompts of the given lengths, ids drawn uniformly from the vocabulary.
inline std::vector<std::vector<TokenId>> random_prompts(const std::vector<std::size_t>& lengths, std::int64_t vocab,
                                                         std::uint32_t seed) {
  std::mt19937 rng(seed);
  std::vector<std::vector<TokenId>> prompts;
  for (const std::size_t n : lengths) {
    std::vector<TokenId> p(n);
    for (auto& id : p) id = static_cast<TokenId>(rng() % static_cast<std::uint32_t>(vocab));
    prompts.push_back(std::move(p));
  }
  return prompts;
}

// Sequences packed for one forward: sequence i as one chunk in slot i from position 0.
struct PackedSequences {
  std::vector<TokenId> tokens;
  std::vector<SequenceChunk> chunks;
  std::int32_t longest = 0;
};
inline PackedSequences pack_sequences(const std::vector<std::vector<TokenId>>& sequences) {
  PackedSequences packed;
  for (std::size_t i = 0; i < sequences.size(); ++i) {
    const auto len = static_cast<std::int32_t>(sequences[i].size());
    packed.chunks.push_back({static_cast<std::int32_t>(i), 0, len});
    packed.tokens.insert(packed.tokens.end(), sequences[i].begin(), sequences[i].end());
    packed.longest = std::max(packed.longest, len);
  }
  return packed;
}

// All sequences in one packed forward (slot i for sequence i, from position 0): every row's logits, or each
// sequence's last.
inline std::vector<float> packed_logits(Model& model, const std::vector<std::vector<TokenId>>& sequences,
                                        Model::Logits which = Model::Logits::AllTokens) {
  const PackedSequences packed = pack_sequences(sequences);
  KVCache cache = model.make_cache(static_cast<std::int32_t>(sequences.size()), packed.longest);
  return model.forward(packed.tokens, packed.chunks, cache, which);
}

}  // namespace slearn::gpu_testing
