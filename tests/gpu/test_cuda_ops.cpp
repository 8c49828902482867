// The CUDA backend's inference ops against the CPU backend on the same bf16-rounded inputs, at the shapes
// of Qwen2-0.5B (hidden 896, 14 heads over 2 kv heads, head_dim 64) and Qwen2-7B (hidden 3584, 28 heads
// over 4, head_dim 128), with token counts that are not multiples of any tile (gpu_test_util.hpp has the
// per-element tolerance). Also the tensor plumbing: zeros_f32, fill_random (bit-identical on both
// backends), fp32 linear outputs. Every test skips, visibly, without a GPU.
#include "gpu_test_util.hpp"
#include "slearn/error.hpp"

namespace slearn {
namespace {

using namespace gpu_testing;

struct Shape {
  const char* name;
  std::int64_t hidden, heads, kv_heads, head_dim, inter;
};
// head_dim 16 is the tiny test fixtures' (tests/fixtures/models).
const Shape kShapes[] = {{"qwen2_0_5b", 896, 14, 2, 64, 4864},
                         {"qwen2_7b", 3584, 28, 4, 128, 18944},
                         {"fixture", 64, 4, 2, 16, 176}};
constexpr std::int64_t kTokens = 77;

TEST(CudaOps, UploadAndToHostRoundTripBf16Values) {
  SLEARN_REQUIRE_GPU(cuda);
  const auto values = random_bf16(1000, 3.0f, 1);
  Tensor t = cuda->upload(host_tensor(values, {10, 100}, "t"));
  EXPECT_EQ(t.device(), Device::CUDA);
  EXPECT_EQ(t.dtype(), DType::BF16);
  EXPECT_EQ(fetch(*cuda, t), values);  // bf16 values survive the round trip exactly
  Tensor z = cuda->zeros({3, 5}, "z");
  EXPECT_EQ(z.dtype(), DType::BF16);
  EXPECT_EQ(fetch(*cuda, z), std::vector<float>(15, 0.0f));
}

TEST(CudaOps, ZerosF32IsFp32OnBothBackends) {
  SLEARN_REQUIRE_GPU(cuda);
  auto cpu = make_cpu_backend();
  for (Backend* backend : {cpu.get(), cuda.get()}) {
    Tensor t = backend->zeros_f32({7, 33}, "logits");
    EXPECT_EQ(t.dtype(), DType::F32) << backend->name();
    EXPECT_EQ(t.device(), backend == cuda.get() ? Device::CUDA : Device::CPU);
    EXPECT_EQ(fetch(*backend, t), std::vector<float>(7 * 33, 0.0f)) << backend->name();
  }
  // Whatever the name: zeros() keeps a name rule for attention's lse, zeros_f32 needs none.
  EXPECT_EQ(cuda->zeros_f32({4}, "x").dtype(), DType::F32);
  EXPECT_EQ(cuda->zeros_f32({0, 5}, "empty").numel(), 0);
}

TEST(CudaOps, FillRandomIsBitIdenticalOnBothBackends) {
  SLEARN_REQUIRE_GPU(cuda);
  auto cpu = make_cpu_backend();
  // A ragged small tensor and one of more elements than one grid of the grid-stride loop holds
  // (grid_for in device_utils.cuh caps a launch at 65536 blocks of 256 threads = 2^24 elements).
  const std::vector<std::int64_t> shapes[] = {{7}, {3, 1001}, {4099, 4097}};
  std::uint64_t key = 0x5eed;
  for (const auto& shape : shapes) {
    for (const float scale : {1.0f, 0.0327f}) {
      Pair t = zeros(*cpu, *cuda, shape, "w");
      cpu->fill_random(t.cpu, key, scale);
      cuda->fill_random(t.cuda, key, scale);
      const auto got = fetch(*cuda, t.cuda), ref = fetch(*cpu, t.cpu);
      ASSERT_EQ(got.size(), ref.size());
      std::size_t differing = 0, outside = 0, inexact = 0;
      for (std::size_t i = 0; i < ref.size(); ++i) {
        differing += std::memcmp(&got[i], &ref[i], sizeof(float)) != 0;
        outside += !(std::abs(ref[i]) <= scale * (1.0f + 1.0f / 256.0f));
        inexact += round_bf16(ref[i]) != ref[i];
      }
      EXPECT_EQ(differing, 0u) << "fill_random must give the same bits on both backends, shape size " << ref.size();
      EXPECT_EQ(outside, 0u);
      EXPECT_EQ(inexact, 0u) << "fill_random values must be bf16";
      const double mean_square = [&] {
        double s = 0;
        for (float v : ref) s += static_cast<double>(v) * v;
        return s / static_cast<double>(ref.size());
      }();
      if (ref.size() > 1000) {  // uniform in [-scale, scale]: mean square scale^2 / 3
        EXPECT_NEAR(mean_square, scale * scale / 3.0, 0.1 * scale * scale / 3.0);
      }
      ++key;
    }
  }
  // Another key gives other values.
  Pair a = zeros(*cpu, *cuda, {1000}, "a"), b = zeros(*cpu, *cuda, {1000}, "b");
  cuda->fill_random(a.cuda, 1, 1.0f);
  cuda->fill_random(b.cuda, 2, 1.0f);
  EXPECT_NE(fetch(*cuda, a.cuda), fetch(*cuda, b.cuda));
}

TEST(CudaOps, EmbeddingAndGatherRows) {
  SLEARN_REQUIRE_GPU(cuda);
  auto cpu = make_cpu_backend();
  const std::int64_t vocab = 32000, hidden = 896;
  const Pair table = both(*cuda, random_bf16(static_cast<std::size_t>(vocab * hidden), 1.0f, 2), {vocab, hidden}, "embed");
  std::vector<TokenId> ids(kTokens);
  std::mt19937 rng(3);
  for (auto& id : ids) id = static_cast<TokenId>(rng() % vocab);
  ids[0] = 0;
  ids[1] = static_cast<TokenId>(vocab - 1);
  Pair out = zeros(*cpu, *cuda, {kTokens, hidden}, "x");
  cpu->embedding(table.cpu, ids, out.cpu);
  cuda->embedding(table.cuda, ids, out.cuda);
  EXPECT_EQ(fetch(*cuda, out.cuda), fetch(*cpu, out.cpu));  // a copy: exact

  const std::vector<std::int64_t> rows = {76, 0, 33, 33, 5};
  Pair gathered = zeros(*cpu, *cuda, {5, hidden}, "rows");
  cpu->gather_rows(out.cpu, rows, gathered.cpu);
  cuda->gather_rows(out.cuda, rows, gathered.cuda);
  EXPECT_EQ(fetch(*cuda, gathered.cuda), fetch(*cpu, gathered.cpu));

  const std::vector<TokenId> bad = {1, static_cast<TokenId>(vocab)};
  Tensor bad_out = cuda->zeros({2, hidden}, "bad");
  EXPECT_THROW(cuda->embedding(table.cuda, bad, bad_out), InputError);
}

TEST(CudaOps, RmsNorm) {
  SLEARN_REQUIRE_GPU(cuda);
  auto cpu = make_cpu_backend();
  for (const std::int64_t hidden : {896, 3584}) {
    const Pair x = both(*cuda, random_bf16(static_cast<std::size_t>(kTokens * hidden), 2.0f, 4), {kTokens, hidden}, "x");
    const Pair w = both(*cuda, random_bf16(static_cast<std::size_t>(hidden), 1.5f, 5), {hidden}, "norm.weight");
    Pair out = zeros(*cpu, *cuda, {kTokens, hidden}, "normed");
    cpu->rms_norm(x.cpu, w.cpu, 1e-6f, out.cpu);
    cuda->rms_norm(x.cuda, w.cuda, 1e-6f, out.cuda);
    // out_i = w_i x_i r: its fp32 error is r's, from a sum of `hidden` squares (S = |out_i|, K = hidden).
    expect_within(fetch(*cuda, out.cuda), fetch(*cpu, out.cpu), "rms_norm hidden " + std::to_string(hidden),
                  Tolerance{{}, hidden, {}, true});
  }
}

TEST(CudaOps, AddRmsNorm) {
  SLEARN_REQUIRE_GPU(cuda);
  auto cpu = make_cpu_backend();
  for (const std::int64_t hidden : {896, 3584}) {
    const auto count = static_cast<std::size_t>(kTokens * hidden);
    Pair x = both(*cuda, random_bf16(count, 2.0f, 40), {kTokens, hidden}, "x");
    const Pair y = both(*cuda, random_bf16(count, 1.0f, 41), {kTokens, hidden}, "proj");
    const Pair w = both(*cuda, random_bf16(static_cast<std::size_t>(hidden), 1.5f, 42), {hidden}, "norm.weight");
    Pair out = zeros(*cpu, *cuda, {kTokens, hidden}, "normed");
    cpu->add_rms_norm(x.cpu, y.cpu, w.cpu, 1e-6f, out.cpu);
    cuda->add_rms_norm(x.cuda, y.cuda, w.cuda, 1e-6f, out.cuda);
    const std::string name = "add_rms_norm hidden " + std::to_string(hidden);
    expect_close(fetch(*cuda, x.cuda), fetch(*cpu, x.cpu), name + " x");  // one rounding of an exact-input sum
    // The CUDA norm reads x rounded to bf16 (fused.cu), the CPU's the fp32 sum: each x_j moves by
    // delta_j |x_j|, |delta_j| <= u, which moves out_i = w_i x_i r by out_i (delta_i - sum_j x_j^2 delta_j /
    // sum_j x_j^2): at most 2 u |out_i|.
    const auto ref = fetch(*cpu, out.cpu);
    std::vector<double> extra(ref.size());
    for (std::size_t i = 0; i < ref.size(); ++i) extra[i] = 2.0 * kBf16Unit * std::abs(ref[i]);
    expect_within(fetch(*cuda, out.cuda), ref, name + " out", Tolerance{{}, hidden, extra, true});
  }
}

TEST(CudaOps, LinearWithAndWithoutBias) {
  SLEARN_REQUIRE_GPU(cuda);
  auto cpu = make_cpu_backend();
  struct Case {
    std::int64_t m, k, n;
    bool bias;
  };
  // q_proj with bias (prefill and decode), gate_proj, down_proj, a 7B kv projection.
  for (const Case c : {Case{kTokens, 896, 896, true}, Case{1, 896, 896, true}, Case{kTokens, 896, 4864, false},
                       Case{kTokens, 4864, 896, false}, Case{3, 3584, 512, true}}) {
    const auto xv = random_bf16(static_cast<std::size_t>(c.m * c.k), 1.0f, 6);
    const auto wv = random_bf16(static_cast<std::size_t>(c.n * c.k), 0.05f, 7);
    const auto bv = random_bf16(static_cast<std::size_t>(c.n), 0.5f, 8);
    const Pair x = both(*cuda, xv, {c.m, c.k}, "x"), w = both(*cuda, wv, {c.n, c.k}, "w"), b = both(*cuda, bv, {c.n}, "b");
    Pair out = zeros(*cpu, *cuda, {c.m, c.n}, "out");
    cpu->linear(x.cpu, w.cpu, c.bias ? &b.cpu : nullptr, out.cpu);
    cuda->linear(x.cuda, w.cuda, c.bias ? &b.cuda : nullptr, out.cuda);
    const auto ref = fetch(*cpu, out.cpu);
    Tolerance tol{abs_product_sums(xv, false, wv, true, c.m, c.n, c.k), c.k, {}, true};
    if (c.bias) {
      // The bias goes through the GEMM's epilogue, or (when cuBLASLt has no such algorithm, gemm.cpp) is added
      // to the product already rounded to bf16: one more rounding of |x W^T| <= |out| + |b|.
      tol.extra.resize(ref.size());
      for (std::size_t i = 0; i < ref.size(); ++i) {
        const double bias_i = bv[i % static_cast<std::size_t>(c.n)];
        tol.sums[i] += std::abs(bias_i);
        tol.extra[i] = kBf16Unit * (std::abs(ref[i]) + std::abs(bias_i));
      }
    }
    expect_within(fetch(*cuda, out.cuda), ref,
                  "linear " + std::to_string(c.m) + "x" + std::to_string(c.k) + "->" + std::to_string(c.n) +
                      (c.bias ? " +bias" : ""),
                  tol);
  }
}

TEST(CudaOps, LinearWritesFp32Logits) {
  SLEARN_REQUIRE_GPU(cuda);
  auto cpu = make_cpu_backend();
  // The LM head: fp32 logits over a vocabulary that is no multiple of any tile, prefill rows and a decode row.
  const std::int64_t hidden = 896, vocab = 50001;
  const auto wv = random_bf16(static_cast<std::size_t>(vocab * hidden), 0.05f, 43);
  const Pair w = both(*cuda, wv, {vocab, hidden}, "lm_head");
  for (const std::int64_t m : {std::int64_t{1}, kTokens}) {
    const auto xv = random_bf16(static_cast<std::size_t>(m * hidden), 2.0f, 44);
    const Pair x = both(*cuda, xv, {m, hidden}, "normed");
    Pair logits{cpu->zeros_f32({m, vocab}, "logits"), cuda->zeros_f32({m, vocab}, "logits")};
    ASSERT_EQ(logits.cuda.dtype(), DType::F32);
    cpu->linear(x.cpu, w.cpu, nullptr, logits.cpu);
    cuda->linear(x.cuda, w.cuda, nullptr, logits.cuda);
    const auto got = fetch(*cuda, logits.cuda);
    // No bf16 rounding of the output: only fp32 summation order (rounded_output = false). A bf16 store would
    // put up to half a bf16 ulp into every logit, far outside this.
    expect_within(got, fetch(*cpu, logits.cpu), "fp32 linear m=" + std::to_string(m),
                  Tolerance{abs_product_sums(xv, false, wv, true, m, vocab, hidden), hidden, {}, false});
    std::size_t not_bf16 = 0;
    for (float v : got) not_bf16 += round_bf16(v) != v;
    EXPECT_GT(not_bf16, got.size() / 2) << "the logits look rounded to bf16";
  }
  const Pair b = both(*cuda, random_bf16(static_cast<std::size_t>(vocab), 0.5f, 45), {vocab}, "b");
  const Pair x = both(*cuda, random_bf16(static_cast<std::size_t>(hidden), 1.0f, 46), {1, hidden}, "x");
  Tensor out = cuda->zeros_f32({1, vocab}, "logits");
  EXPECT_THROW(cuda->linear(x.cuda, w.cuda, &b.cuda, out), Error);  // documented: no bias on an fp32 output
}

// Positions of kTokens tokens: a 60-token prefill from 0 in slot 0, a 16-token continuation from 100 in
// slot 2, and one decode step at position 190 in slot 1.
TokenLayout mixed_layout() {
  TokenLayout layout;
  for (std::int32_t i = 0; i < 60; ++i) layout.slots.push_back(0), layout.positions.push_back(i);
  for (std::int32_t i = 0; i < 16; ++i) layout.slots.push_back(2), layout.positions.push_back(100 + i);
  layout.slots.push_back(1), layout.positions.push_back(190);
  return layout;
}

std::vector<float> rope_table(std::int64_t positions, std::int64_t half, bool sine) {
  std::vector<float> table(static_cast<std::size_t>(positions * half));
  for (std::int64_t p = 0; p < positions; ++p)
    for (std::int64_t i = 0; i < half; ++i) {
      const double angle = static_cast<double>(p) * std::pow(10000.0, -2.0 * static_cast<double>(i) / (2.0 * half));
      table[static_cast<std::size_t>(p * half + i)] = round_bf16(static_cast<float>(sine ? std::sin(angle) : std::cos(angle)));
    }
  return table;
}

// S of RoPE (either direction) on x [tokens, heads, head_dim]: |a cos| + |b sin| for both halves of a pair.
std::vector<double> rope_sums(const std::vector<float>& x, std::span<const std::int32_t> positions,
                              const std::vector<float>& cos, const std::vector<float>& sin, std::int64_t heads,
                              std::int64_t head_dim) {
  const std::int64_t half = head_dim / 2;
  std::vector<double> sums(x.size());
  for (std::size_t t = 0; t < positions.size(); ++t)
    for (std::int64_t h = 0; h < heads; ++h)
      for (std::int64_t i = 0; i < half; ++i) {
        const std::size_t at = (t * static_cast<std::size_t>(heads) + static_cast<std::size_t>(h)) * head_dim + i;
        const std::size_t table = static_cast<std::size_t>(positions[t] * half + i);
        const double a = std::abs(x[at]), b = std::abs(x[at + half]), c = std::abs(cos[table]), s = std::abs(sin[table]);
        sums[at] = a * c + b * s;
        sums[at + half] = b * c + a * s;
      }
  return sums;
}

TEST(CudaOps, RopeForwardAndBackward) {
  SLEARN_REQUIRE_GPU(cuda);
  auto cpu = make_cpu_backend();
  const TokenLayout layout = mixed_layout();
  for (const Shape& s : kShapes) {
    const std::int64_t half = s.head_dim / 2, positions = 256;
    const auto cos_v = rope_table(positions, half, false), sin_v = rope_table(positions, half, true);
    const Pair cos = both(*cuda, cos_v, {positions, half}, "rope.cos");
    const Pair sin = both(*cuda, sin_v, {positions, half}, "rope.sin");
    const auto values = random_bf16(static_cast<std::size_t>(kTokens * s.heads * s.head_dim), 2.0f, 9);
    const Tolerance tol{rope_sums(values, layout.positions, cos_v, sin_v, s.heads, s.head_dim), 2, {}, true};
    Pair x = both(*cuda, values, {kTokens, s.heads, s.head_dim}, "q");
    cpu->rope(x.cpu, layout, cos.cpu, sin.cpu);
    cuda->rope(x.cuda, layout, cos.cuda, sin.cuda);
    expect_within(fetch(*cuda, x.cuda), fetch(*cpu, x.cpu), std::string("rope ") + s.name, tol);

    Pair g = both(*cuda, values, {kTokens, s.heads, s.head_dim}, "dq");
    cpu->rope_backward(g.cpu, layout.positions, cos.cpu, sin.cpu);
    cuda->rope_backward(g.cuda, layout.positions, cos.cuda, sin.cuda);
    expect_within(fetch(*cuda, g.cuda), fetch(*cpu, g.cpu), std::string("rope_backward ") + s.name, tol);
  }
}

TEST(CudaOps, RopeSplitQkv) {
  SLEARN_REQUIRE_GPU(cuda);
  auto cpu = make_cpu_backend();
  const TokenLayout layout = mixed_layout();
  for (const Shape& s : kShapes) {
    const std::int64_t half = s.head_dim / 2, positions = 256;
    const std::int64_t q_width = s.heads * s.head_dim, kv_width = s.kv_heads * s.head_dim;
    const auto cos_v = rope_table(positions, half, false), sin_v = rope_table(positions, half, true);
    const Pair cos = both(*cuda, cos_v, {positions, half}, "rope.cos");
    const Pair sin = both(*cuda, sin_v, {positions, half}, "rope.sin");
    const auto qkv_v = random_bf16(static_cast<std::size_t>(kTokens * (q_width + 2 * kv_width)), 2.0f, 47);
    const Pair qkv = both(*cuda, qkv_v, {kTokens, q_width + 2 * kv_width}, "qkv");
    Pair q = zeros(*cpu, *cuda, {kTokens, s.heads, s.head_dim}, "q");
    Pair k = zeros(*cpu, *cuda, {kTokens, s.kv_heads, s.head_dim}, "k");
    Pair v = zeros(*cpu, *cuda, {kTokens, s.kv_heads, s.head_dim}, "v");
    cpu->rope_split_qkv(qkv.cpu, layout, cos.cpu, sin.cpu, q.cpu, k.cpu, v.cpu);
    cuda->rope_split_qkv(qkv.cuda, layout, cos.cuda, sin.cuda, q.cuda, k.cuda, v.cuda);
    // The inputs of the rotation, split out of the stacked rows on the host, give S.
    std::vector<float> q_in, k_in;
    for (std::int64_t t = 0; t < kTokens; ++t) {
      const auto row = qkv_v.begin() + t * (q_width + 2 * kv_width);
      q_in.insert(q_in.end(), row, row + q_width);
      k_in.insert(k_in.end(), row + q_width, row + q_width + kv_width);
    }
    expect_within(fetch(*cuda, q.cuda), fetch(*cpu, q.cpu), std::string("rope_split_qkv q ") + s.name,
                  Tolerance{rope_sums(q_in, layout.positions, cos_v, sin_v, s.heads, s.head_dim), 2, {}, true});
    expect_within(fetch(*cuda, k.cuda), fetch(*cpu, k.cpu), std::string("rope_split_qkv k ") + s.name,
                  Tolerance{rope_sums(k_in, layout.positions, cos_v, sin_v, s.kv_heads, s.head_dim), 2, {}, true});
    EXPECT_EQ(fetch(*cuda, v.cuda), fetch(*cpu, v.cpu)) << "v is a copy: exact, " << s.name;
  }
}

TEST(CudaOps, KvStoreAndCachedAttention) {
  SLEARN_REQUIRE_GPU(cuda);
  auto cpu = make_cpu_backend();
  const TokenLayout layout = mixed_layout();
  const std::int64_t slots = 3, capacity = 200;
  for (const Shape& s : kShapes) {
    // History first: every position of every slot holds a random key and value, then the batch's own
    // keys and values are stored over their positions, as Model::forward does.
    Pair k_cache = zeros(*cpu, *cuda, {slots, capacity, s.kv_heads, s.head_dim}, "k_cache");
    Pair v_cache = zeros(*cpu, *cuda, {slots, capacity, s.kv_heads, s.head_dim}, "v_cache");
    TokenLayout history;
    for (std::int32_t slot = 0; slot < slots; ++slot)
      for (std::int32_t p = 0; p < capacity; ++p) history.slots.push_back(slot), history.positions.push_back(p);
    const std::int64_t all = slots * capacity, row = s.kv_heads * s.head_dim;
    const Pair hk = both(*cuda, random_bf16(static_cast<std::size_t>(all * row), 1.0f, 10), {all, s.kv_heads, s.head_dim}, "hk");
    const Pair hv = both(*cuda, random_bf16(static_cast<std::size_t>(all * row), 1.0f, 11), {all, s.kv_heads, s.head_dim}, "hv");
    cpu->kv_store(hk.cpu, hv.cpu, history, k_cache.cpu, v_cache.cpu);
    cuda->kv_store(hk.cuda, hv.cuda, history, k_cache.cuda, v_cache.cuda);
    const Pair k = both(*cuda, random_bf16(static_cast<std::size_t>(kTokens * row), 1.0f, 12), {kTokens, s.kv_heads, s.head_dim}, "k");
    const Pair v = both(*cuda, random_bf16(static_cast<std::size_t>(kTokens * row), 1.0f, 13), {kTokens, s.kv_heads, s.head_dim}, "v");
    cpu->kv_store(k.cpu, v.cpu, layout, k_cache.cpu, v_cache.cpu);
    cuda->kv_store(k.cuda, v.cuda, layout, k_cache.cuda, v_cache.cuda);
    const auto k_host = fetch(*cpu, k_cache.cpu), v_host = fetch(*cpu, v_cache.cpu);
    EXPECT_EQ(fetch(*cuda, k_cache.cuda), k_host) << s.name;  // copies: exact
    EXPECT_EQ(fetch(*cuda, v_cache.cuda), v_host) << s.name;

    // Scores of magnitude ~ a few units: softmax neither uniform nor one-hot.
    const auto q_host = random_bf16(static_cast<std::size_t>(kTokens * s.heads * s.head_dim), 1.0f, 14);
    const Pair q = both(*cuda, q_host, {kTokens, s.heads, s.head_dim}, "q");
    Pair out = zeros(*cpu, *cuda, {kTokens, s.heads, s.head_dim}, "attn");
    const float scale = 1.0f / std::sqrt(static_cast<float>(s.head_dim)) * 2.0f;
    cpu->attention(q.cpu, k_cache.cpu, v_cache.cpu, layout, scale, out.cpu);
    cuda->attention(q.cuda, k_cache.cuda, v_cache.cuda, layout, scale, out.cuda);
    const auto geometry = cache_geometry(layout, capacity, s.heads, s.kv_heads, s.head_dim, scale);
    expect_within(fetch(*cuda, out.cuda), fetch(*cpu, out.cpu), std::string("attention ") + s.name,
                  attention_tolerance(geometry, q_host, k_host, v_host));
  }
}

TEST(CudaOps, AttentionRejectsUnsupportedHeadDim) {
  SLEARN_REQUIRE_GPU(cuda);
  TokenLayout layout;
  layout.slots = {0};
  layout.positions = {0};
  Tensor q = cuda->zeros({1, 2, 32}, "q"), out = cuda->zeros({1, 2, 32}, "attn");
  Tensor kc = cuda->zeros({1, 4, 1, 32}, "k_cache"), vc = cuda->zeros({1, 4, 1, 32}, "v_cache");
  EXPECT_THROW(cuda->attention(q, kc, vc, layout, 1.0f, out), Error);
}

TEST(CudaOps, SwigluAddAndScale) {
  SLEARN_REQUIRE_GPU(cuda);
  auto cpu = make_cpu_backend();
  const std::int64_t inter = 4864;
  const auto count = static_cast<std::size_t>(kTokens * inter);
  const Pair gate = both(*cuda, random_bf16(count, 6.0f, 15), {kTokens, inter}, "gate");
  const Pair up = both(*cuda, random_bf16(count, 2.0f, 16), {kTokens, inter}, "up");
  Pair act = zeros(*cpu, *cuda, {kTokens, inter}, "act");
  cpu->swiglu(gate.cpu, up.cpu, act.cpu);
  cuda->swiglu(gate.cuda, up.cuda, act.cuda);
  expect_close(fetch(*cuda, act.cuda), fetch(*cpu, act.cpu), "swiglu");

  Pair x = both(*cuda, random_bf16(count, 4.0f, 17), {kTokens, inter}, "x");
  cpu->add_inplace(x.cpu, up.cpu);
  cuda->add_inplace(x.cuda, up.cuda);
  expect_close(fetch(*cuda, x.cuda), fetch(*cpu, x.cpu), "add_inplace");
  cpu->scale(x.cpu, 0.37f);
  cuda->scale(x.cuda, 0.37f);
  // The CPU operand of the scale is the fp32 sum, the CUDA one its bf16 rounding: that earlier rounding
  // (at most u of the sum, scaled) comes on top of the scale's own, through `extra`.
  const auto ref = fetch(*cpu, x.cpu);
  std::vector<double> extra(ref.size());
  for (std::size_t i = 0; i < ref.size(); ++i) extra[i] = kBf16Unit * std::abs(ref[i]);
  expect_close(fetch(*cuda, x.cuda), ref, "scale after add", extra);
}

TEST(CudaOps, SwigluFused) {
  SLEARN_REQUIRE_GPU(cuda);
  auto cpu = make_cpu_backend();
  for (const std::int64_t tokens : {std::int64_t{1}, kTokens}) {
    const std::int64_t inter = 4864;
    // Gate columns ~ +-6 (silu's curved part and both tails), up columns ~ +-2.
    std::vector<float> gate_up = random_bf16(static_cast<std::size_t>(tokens * 2 * inter), 2.0f, 48);
    for (std::int64_t t = 0; t < tokens; ++t)
      for (std::int64_t i = 0; i < inter; ++i) gate_up[static_cast<std::size_t>(t * 2 * inter + i)] *= 3.0f;
    const Pair in = both(*cuda, gate_up, {tokens, 2 * inter}, "gate_up");
    Pair out = zeros(*cpu, *cuda, {tokens, inter}, "act");
    cpu->swiglu_fused(in.cpu, out.cpu);
    cuda->swiglu_fused(in.cuda, out.cuda);
    expect_close(fetch(*cuda, out.cuda), fetch(*cpu, out.cpu), "swiglu_fused tokens " + std::to_string(tokens));
  }
}

}  // namespace
}  // namespace slearn
