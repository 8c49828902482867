// The training kernels: each backward against central finite differences of a double-precision forward
// written here (the fp32 kernel forwards are checked against the same double forwards), plus the agreement
// of the training attention with the cache-based inference kernel and thread-count independence.
#include <gtest/gtest.h>
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "cpu/cpu_kernels.hpp"
#include "cpu/cpu_train_kernels.hpp"
#include "slearn/error.hpp"

namespace {

using Vec = std::vector<float>;
using DVec = std::vector<double>;

Vec random_vector(std::size_t n, std::uint32_t seed, float scale = 1.0f) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> dist(0.0f, scale);
  Vec v(n);
  for (auto& x : v) x = dist(rng);
  return v;
}

DVec to_double(const Vec& v) { return DVec(v.begin(), v.end()); }

double weighted_sum(const DVec& y, const Vec& r) {
  double total = 0.0;
  for (std::size_t i = 0; i < y.size(); ++i) total += y[i] * r[i];
  return total;
}

// Central differences of loss() with respect to x (perturbed in place, then restored) against `grad`, at
// every element or at `samples` random ones. Tolerance: relative to the gradient's largest entry.
template <class Loss>
void expect_gradient(const std::string& name, DVec& x, const Vec& grad, Loss&& loss,
                     std::size_t samples = std::numeric_limits<std::size_t>::max()) {
  ASSERT_EQ(x.size(), grad.size()) << name;
  double largest = 0.0;
  for (float g : grad) largest = std::max(largest, std::abs(double(g)));
  std::vector<std::size_t> indices(x.size());
  for (std::size_t i = 0; i < x.size(); ++i) indices[i] = i;
  if (samples < x.size()) {
    std::shuffle(indices.begin(), indices.end(), std::mt19937(99));
    indices.resize(samples);
  }
  const double h = 1e-5;
  for (std::size_t i : indices) {
    const double saved = x[i];
    x[i] = saved + h;
    const double plus = loss();
    x[i] = saved - h;
    const double minus = loss();
    x[i] = saved;
    const double numeric = (plus - minus) / (2 * h);
    EXPECT_NEAR(grad[i], numeric, 1e-4 * largest + 1e-3 * std::abs(numeric)) << name << "[" << i << "]";
  }
}

// ---- elementwise ----

DVec rms_norm_ref(const DVec& x, const Vec& w, std::int64_t rows, std::int64_t cols, double eps) {
  DVec y(x.size());
  for (std::int64_t r = 0; r < rows; ++r) {
    double ss = 0;
    for (std::int64_t c = 0; c < cols; ++c) ss += x[r * cols + c] * x[r * cols + c];
    const double inv = 1.0 / std::sqrt(ss / double(cols) + eps);
    for (std::int64_t c = 0; c < cols; ++c) y[r * cols + c] = w[c] * (x[r * cols + c] * inv);
  }
  return y;
}

TEST(CpuTrainKernels, RmsNormBackwardMatchesFiniteDifferences) {
  const std::int64_t rows = 4, cols = 50;  // not a multiple of the 16 summation lanes
  const float eps = 1e-6f;
  Vec x = random_vector(rows * cols, 1), w = random_vector(cols, 2), dy = random_vector(rows * cols, 3);
  for (std::int64_t c = 0; c < cols; ++c) x[c] *= 0.01f;  // a row with a tiny RMS, where eps matters
  Vec dx(x.size(), std::nanf(""));
  slearn::cpu::rms_norm_backward({x.data(), w.data(), dy.data(), dx.data(), rows, cols, eps});
  DVec xd = to_double(x);
  expect_gradient("rms_norm dx", xd, dx, [&] { return weighted_sum(rms_norm_ref(xd, w, rows, cols, eps), dy); });
}

TEST(CpuTrainKernels, RopeBackwardMatchesFiniteDifferences) {
  const std::int64_t tokens = 5, heads = 3, dim = 16, half = dim / 2, max_pos = 12;
  Vec cos(max_pos * half), sin(max_pos * half);
  for (std::int64_t p = 0; p < max_pos; ++p)
    for (std::int64_t i = 0; i < half; ++i) {
      const double angle = double(p) * std::pow(10000.0, -2.0 * double(i) / double(dim));
      cos[p * half + i] = static_cast<float>(std::cos(angle));
      sin[p * half + i] = static_cast<float>(std::sin(angle));
    }
  const std::vector<std::int32_t> positions = {0, 3, 11, 7, 1};
  Vec x = random_vector(tokens * heads * dim, 4), dy = random_vector(x.size(), 5);
  Vec dx = dy;
  slearn::cpu::rope_backward({dx.data(), positions.data(), cos.data(), sin.data(), tokens, heads, dim, max_pos});
  DVec xd = to_double(x);
  auto forward = [&] {
    DVec y(xd.size());
    for (std::int64_t t = 0; t < tokens; ++t)
      for (std::int64_t h = 0; h < heads; ++h)
        for (std::int64_t i = 0; i < half; ++i) {
          const std::int64_t at = (t * heads + h) * dim + i, table = positions[t] * half + i;
          y[at] = xd[at] * cos[table] - xd[at + half] * sin[table];
          y[at + half] = xd[at + half] * cos[table] + xd[at] * sin[table];
        }
    return weighted_sum(y, dy);
  };
  expect_gradient("rope dx", xd, dx, forward);
  // And it is the adjoint of the fp32 forward kernel: <rope(x), dy> = <x, rope_backward(dy)>.
  Vec y = x;
  slearn::cpu::rope({y.data(), positions.data(), cos.data(), sin.data(), tokens, heads, dim, max_pos});
  double lhs = 0, rhs = 0;
  for (std::size_t i = 0; i < x.size(); ++i) lhs += double(y[i]) * dy[i], rhs += double(x[i]) * dx[i];
  EXPECT_NEAR(lhs, rhs, 1e-4);
}

TEST(CpuTrainKernels, SwigluBackwardMatchesFiniteDifferences) {
  const std::int64_t count = 200;
  Vec gate = random_vector(count, 6, 3.0f), up = random_vector(count, 7), dout = random_vector(count, 8);
  gate[0] = 30.0f, gate[1] = -30.0f, gate[2] = 0.0f;  // saturated and centre
  Vec dgate(count, std::nanf("")), dup(count, std::nanf(""));
  slearn::cpu::swiglu_backward({gate.data(), up.data(), dout.data(), dgate.data(), dup.data(), count});
  DVec g = to_double(gate), u = to_double(up);
  auto loss = [&] {
    double total = 0;
    for (std::int64_t i = 0; i < count; ++i) total += g[i] / (1.0 + std::exp(-g[i])) * u[i] * dout[i];
    return total;
  };
  expect_gradient("swiglu dgate", g, dgate, loss);
  expect_gradient("swiglu dup", u, dup, loss);
}

// ---- attention ----

struct AttnCase {
  std::vector<std::int64_t> lengths;
  std::int64_t heads, kv_heads, dim;
  std::uint32_t seed;

  std::vector<std::int64_t> starts() const {
    std::vector<std::int64_t> s = {0};
    for (auto l : lengths) s.push_back(s.back() + l);
    return s;
  }
  std::int64_t tokens() const { return starts().back(); }
  float scale() const { return 1.0f / std::sqrt(float(dim)); }
};

struct AttnData {
  Vec q, k, v, dout, out, lse, dq, dk, dv;
};

AttnData make_attention(const AttnCase& c) {
  const std::int64_t t = c.tokens();
  AttnData d;
  d.q = random_vector(t * c.heads * c.dim, c.seed, 1.5f);
  d.k = random_vector(t * c.kv_heads * c.dim, c.seed + 1, 1.5f);
  d.v = random_vector(t * c.kv_heads * c.dim, c.seed + 2);
  d.dout = random_vector(d.q.size(), c.seed + 3);
  return d;
}

void run_attention(const AttnCase& c, AttnData& d) {
  const auto starts = c.starts();
  const std::int64_t t = c.tokens(), seqs = std::int64_t(c.lengths.size());
  d.out.assign(d.q.size(), std::nanf(""));
  d.lse.assign(t * c.heads, std::nanf(""));
  slearn::cpu::attention_forward_train({d.q.data(), d.k.data(), d.v.data(), d.out.data(), d.lse.data(),
                                        starts.data(), seqs, t, c.heads, c.kv_heads, c.dim, c.scale()});
  d.dq.assign(d.q.size(), std::nanf(""));
  d.dk.assign(d.k.size(), std::nanf(""));
  d.dv.assign(d.v.size(), std::nanf(""));
  slearn::cpu::attention_backward({d.q.data(), d.k.data(), d.v.data(), d.out.data(), d.lse.data(), d.dout.data(),
                                   d.dq.data(), d.dk.data(), d.dv.data(), starts.data(), seqs, t, c.heads,
                                   c.kv_heads, c.dim, c.scale()});
}

// Double-precision causal GQA attention; returns out and writes each row's log-sum-exp.
DVec attention_ref(const AttnCase& c, const DVec& q, const DVec& k, const DVec& v, DVec* lse = nullptr) {
  const auto starts = c.starts();
  const std::int64_t group = c.heads / c.kv_heads, dim = c.dim;
  DVec out(q.size(), 0.0);
  if (lse) lse->assign(c.tokens() * c.heads, 0.0);
  for (std::size_t s = 0; s + 1 < starts.size(); ++s)
    for (std::int64_t t = starts[s]; t < starts[s + 1]; ++t)
      for (std::int64_t h = 0; h < c.heads; ++h) {
        const std::int64_t g = h / group;
        DVec scores;
        for (std::int64_t j = starts[s]; j <= t; ++j) {
          double dot = 0;
          for (std::int64_t e = 0; e < dim; ++e)
            dot += q[(t * c.heads + h) * dim + e] * k[(j * c.kv_heads + g) * dim + e];
          scores.push_back(dot * c.scale());
        }
        const double mx = *std::max_element(scores.begin(), scores.end());
        double total = 0;
        for (double& x : scores) total += (x = std::exp(x - mx));
        if (lse) (*lse)[t * c.heads + h] = mx + std::log(total);
        for (std::int64_t j = starts[s]; j <= t; ++j)
          for (std::int64_t e = 0; e < dim; ++e)
            out[(t * c.heads + h) * dim + e] += scores[j - starts[s]] / total * v[(j * c.kv_heads + g) * dim + e];
      }
  return out;
}

void check_attention(const AttnCase& c, std::size_t samples) {
  AttnData d = make_attention(c);
  run_attention(c, d);
  DVec q = to_double(d.q), k = to_double(d.k), v = to_double(d.v), lse;
  const DVec out = attention_ref(c, q, k, v, &lse);
  for (std::size_t i = 0; i < out.size(); ++i) ASSERT_NEAR(d.out[i], out[i], 1e-5) << "out[" << i << "]";
  for (std::size_t i = 0; i < lse.size(); ++i) ASSERT_NEAR(d.lse[i], lse[i], 1e-5) << "lse[" << i << "]";
  auto loss = [&] { return weighted_sum(attention_ref(c, q, k, v), d.dout); };
  expect_gradient("dq", q, d.dq, loss, samples);
  expect_gradient("dk", k, d.dk, loss, samples);
  expect_gradient("dv", v, d.dv, loss, samples);
}

TEST(CpuTrainKernels, AttentionBackwardMatchesFiniteDifferencesGqa) {
  check_attention({{1, 5, 9}, 4, 2, 8, 10}, std::numeric_limits<std::size_t>::max());
}

TEST(CpuTrainKernels, AttentionBackwardMatchesFiniteDifferencesDim16WithEmptySequence) {
  check_attention({{4, 0, 7, 2}, 4, 1, 16, 20}, std::numeric_limits<std::size_t>::max());
}

TEST(CpuTrainKernels, AttentionBackwardMatchesFiniteDifferencesParallelShape) {
  // Large enough to take the OpenMP path and span several 16-row tiles (one sequence exactly two);
  // head_dim 24 is one 16-wide slice plus a tail. A random sample of elements.
  check_attention({{37, 100, 32, 63}, 4, 2, 24, 30}, 40);
}

TEST(CpuTrainKernels, AttentionForwardTrainMatchesCacheAttention) {
  for (const AttnCase& c : {AttnCase{{1, 5, 9}, 4, 2, 16, 40}, AttnCase{{37, 100, 63}, 4, 2, 16, 50}}) {
    AttnData d = make_attention(c);
    run_attention(c, d);
    const auto starts = c.starts();
    const std::int64_t tokens = c.tokens(), slots = std::int64_t(c.lengths.size());
    const std::int64_t capacity = *std::max_element(c.lengths.begin(), c.lengths.end());
    std::vector<std::int32_t> slot(tokens), position(tokens);
    for (std::int64_t s = 0; s < slots; ++s)
      for (std::int64_t t = starts[s]; t < starts[s + 1]; ++t) {
        slot[t] = std::int32_t(s);
        position[t] = std::int32_t(t - starts[s]);
      }
    Vec k_cache(slots * capacity * c.kv_heads * c.dim), v_cache(k_cache.size()), out(d.q.size());
    slearn::cpu::kv_store({d.k.data(), d.v.data(), k_cache.data(), v_cache.data(), slot.data(), position.data(), tokens,
                           c.kv_heads, c.dim, capacity, slots});
    slearn::cpu::causal_attention({d.q.data(), k_cache.data(), v_cache.data(), out.data(), slot.data(),
                                   position.data(), tokens, c.heads, c.kv_heads, c.dim, capacity, c.scale()});
    // The two sum q.k in different orders: scores of magnitude ~10 differ by an ulp (~1e-6), and so do outputs.
    for (std::size_t i = 0; i < out.size(); ++i)
      ASSERT_NEAR(d.out[i], out[i], 2e-6) << "tokens " << tokens << " [" << i << "]";
  }
}

TEST(CpuTrainKernels, AttentionIsBitIdenticalAcrossThreadCounts) {
  const AttnCase c{{37, 100, 1, 63}, 4, 2, 16, 60};
  const int saved = omp_get_max_threads();
  AttnData one = make_attention(c), two = one;
  omp_set_num_threads(1);
  run_attention(c, one);
  omp_set_num_threads(2);
  run_attention(c, two);
  omp_set_num_threads(saved);
  auto same = [](const Vec& a, const Vec& b) {
    return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0;
  };
  EXPECT_TRUE(same(one.out, two.out));
  EXPECT_TRUE(same(one.lse, two.lse));
  EXPECT_TRUE(same(one.dq, two.dq));
  EXPECT_TRUE(same(one.dk, two.dk));
  EXPECT_TRUE(same(one.dv, two.dv));
}

TEST(CpuTrainKernels, AttentionRejectsBadSeqStarts) {
  const AttnCase c{{3, 4}, 2, 2, 8, 70};
  AttnData d = make_attention(c);
  const std::vector<std::int64_t> starts = {0, 5, 4};  // does not end at tokens = 7
  Vec out(d.q.size()), lse(7 * 2);
  EXPECT_THROW(slearn::cpu::attention_forward_train({d.q.data(), d.k.data(), d.v.data(), out.data(), lse.data(),
                                                     starts.data(), 2, 7, 2, 2, 8, c.scale()}),
               slearn::Error);
}

// ---- cross-entropy ----

struct CeCase {
  std::int64_t tokens = 13, hidden = 8, vocab = 37;
  Vec h, w;
  std::vector<std::int32_t> targets;

  CeCase() : h(random_vector(tokens * hidden, 80, 2.0f)), w(random_vector(vocab * hidden, 81)), targets(tokens) {
    for (std::int64_t t = 0; t < tokens; ++t) targets[t] = std::int32_t((t * 11 + 3) % vocab);
    targets[0] = -100, targets[4] = -100, targets[5] = -100, targets[12] = -100;  // 9 counted rows
    targets[1] = 0, targets[2] = std::int32_t(vocab - 1);
  }

  slearn::cpu::CrossEntropyParams params(float* dhidden, std::int64_t chunk, float grad_scale) const {
    slearn::cpu::CrossEntropyParams p{};
    p.hidden = h.data(), p.lm_head = w.data(), p.targets = targets.data(), p.dhidden = dhidden;
    p.tokens = tokens, p.hidden_size = hidden, p.vocab = vocab, p.row_chunk = chunk, p.grad_scale = grad_scale;
    return p;
  }

  double loss_ref(const DVec& hd) const {
    double total = 0;
    for (std::int64_t t = 0; t < tokens; ++t) {
      if (targets[t] < 0) continue;
      DVec logits(vocab);
      for (std::int64_t v = 0; v < vocab; ++v)
        for (std::int64_t e = 0; e < hidden; ++e) logits[v] += hd[t * hidden + e] * w[v * hidden + e];
      const double mx = *std::max_element(logits.begin(), logits.end());
      double s = 0;
      for (double l : logits) s += std::exp(l - mx);
      total += mx + std::log(s) - logits[targets[t]];
    }
    return total;
  }
};

TEST(CpuTrainKernels, CrossEntropyMatchesReferenceAndFiniteDifferences) {
  const CeCase c;
  const float grad_scale = 0.37f;
  Vec dh(c.h.size(), std::nanf(""));
  auto p = c.params(dh.data(), 4, grad_scale);
  slearn::cpu::cross_entropy(p);
  DVec hd = to_double(c.h);
  EXPECT_EQ(p.counted, 9);
  EXPECT_NEAR(p.loss_sum, c.loss_ref(hd), 1e-5 * std::abs(c.loss_ref(hd)));
  for (std::int64_t t = 0; t < c.tokens; ++t) {
    if (c.targets[t] >= 0) continue;
    for (std::int64_t e = 0; e < c.hidden; ++e) EXPECT_EQ(dh[t * c.hidden + e], 0.0f) << "skipped row " << t;
  }
  expect_gradient("dhidden", hd, dh, [&] { return grad_scale * c.loss_ref(hd); });
}

TEST(CpuTrainKernels, CrossEntropyForwardOnlyAndChunkingAgree) {
  const CeCase c;
  Vec dh(c.h.size());
  auto full = c.params(dh.data(), 4, 1.0f);
  slearn::cpu::cross_entropy(full);
  auto forward = c.params(nullptr, 4, 1.0f);
  slearn::cpu::cross_entropy(forward);
  EXPECT_EQ(forward.loss_sum, full.loss_sum);
  EXPECT_EQ(forward.counted, full.counted);
  for (std::int64_t chunk : {1, 2, 9, 64}) {
    Vec other(c.h.size());
    auto p = c.params(other.data(), chunk, 1.0f);
    slearn::cpu::cross_entropy(p);
    EXPECT_NEAR(p.loss_sum, full.loss_sum, 1e-5 * std::abs(full.loss_sum)) << "row_chunk " << chunk;
    for (std::size_t i = 0; i < dh.size(); ++i) EXPECT_NEAR(other[i], dh[i], 1e-5) << "row_chunk " << chunk;
  }
}

TEST(CpuTrainKernels, CrossEntropyAllSkippedAndBadTarget) {
  CeCase c;
  std::fill(c.targets.begin(), c.targets.end(), -100);
  Vec dh(c.h.size(), 1.0f);
  auto p = c.params(dh.data(), 4, 1.0f);
  slearn::cpu::cross_entropy(p);
  EXPECT_EQ(p.counted, 0);
  EXPECT_EQ(p.loss_sum, 0.0);
  for (float g : dh) EXPECT_EQ(g, 0.0f);
  c.targets[3] = std::int32_t(c.vocab);
  auto bad = c.params(dh.data(), 4, 1.0f);
  EXPECT_THROW(slearn::cpu::cross_entropy(bad), slearn::Error);
}

}  // namespace
