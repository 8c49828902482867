// The CUDA backend's inference ops against the CPU backend on the same bf16-rounded inputs, at the shapes
// of Qwen2-0.5B (hidden 896, 14 heads over 2 kv heads, head_dim 64) and Qwen2-7B (hidden 3584, 28 heads
// over 4, head_dim 128), with token counts that are not multiples of any tile (gpu_test_util.hpp has the
// tolerance). Every test skips, visibly, without a GPU.
#include <numeric>

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

TEST(CudaBackend, AutoPicksCudaExactlyWhenADeviceIsVisible) {
  // Runs everywhere: without a GPU, "auto" must give the CPU backend and "cuda" a clear InputError.
  std::string why;
  auto cuda = cuda_backend(why);
  auto chosen = make_backend("auto");
  if (cuda) {
    EXPECT_EQ(chosen->name(), "cuda");
  } else {
    EXPECT_EQ(chosen->name(), "cpu");
    EXPECT_THROW(make_backend("cuda"), InputError);
    std::printf("[ measured ] no CUDA device here: %s\n", why.c_str());
  }
}

TEST(CudaOps, UploadAndToHostRoundTripBf16Values) {
  SLEARN_REQUIRE_GPU(cuda);
  const auto values = random_bf16(1000, 3.0f, 1);
  Tensor t = cuda->upload(host_tensor(values, {10, 100}, "t"));
  EXPECT_EQ(t.device(), Device::CUDA);
  EXPECT_EQ(t.dtype(), DType::BF16);
  EXPECT_EQ(fetch(*cuda, t), values);  // bf16 values survive the round trip exactly
  Tensor z = cuda->zeros({3, 5}, "z");
  EXPECT_EQ(fetch(*cuda, z), std::vector<float>(15, 0.0f));
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
    expect_close(fetch(*cuda, out.cuda), fetch(*cpu, out.cpu), "rms_norm hidden " + std::to_string(hidden));
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
    const Pair x = both(*cuda, random_bf16(static_cast<std::size_t>(c.m * c.k), 1.0f, 6), {c.m, c.k}, "x");
    const Pair w = both(*cuda, random_bf16(static_cast<std::size_t>(c.n * c.k), 0.05f, 7), {c.n, c.k}, "w");
    const Pair b = both(*cuda, random_bf16(static_cast<std::size_t>(c.n), 0.5f, 8), {c.n}, "b");
    Pair out = zeros(*cpu, *cuda, {c.m, c.n}, "out");
    cpu->linear(x.cpu, w.cpu, c.bias ? &b.cpu : nullptr, out.cpu);
    cuda->linear(x.cuda, w.cuda, c.bias ? &b.cuda : nullptr, out.cuda);
    expect_close(fetch(*cuda, out.cuda), fetch(*cpu, out.cpu),
                 "linear " + std::to_string(c.m) + "x" + std::to_string(c.k) + "->" + std::to_string(c.n) +
                     (c.bias ? " +bias" : ""));
  }
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

TEST(CudaOps, RopeForwardAndBackward) {
  SLEARN_REQUIRE_GPU(cuda);
  auto cpu = make_cpu_backend();
  const TokenLayout layout = mixed_layout();
  for (const Shape& s : kShapes) {
    const std::int64_t half = s.head_dim / 2, positions = 256;
    const Pair cos = both(*cuda, rope_table(positions, half, false), {positions, half}, "rope.cos");
    const Pair sin = both(*cuda, rope_table(positions, half, true), {positions, half}, "rope.sin");
    const auto values = random_bf16(static_cast<std::size_t>(kTokens * s.heads * s.head_dim), 2.0f, 9);
    Pair x = both(*cuda, values, {kTokens, s.heads, s.head_dim}, "q");
    cpu->rope(x.cpu, layout, cos.cpu, sin.cpu);
    cuda->rope(x.cuda, layout, cos.cuda, sin.cuda);
    expect_close(fetch(*cuda, x.cuda), fetch(*cpu, x.cpu), std::string("rope ") + s.name);

    Pair g = both(*cuda, values, {kTokens, s.heads, s.head_dim}, "dq");
    cpu->rope_backward(g.cpu, layout.positions, cos.cpu, sin.cpu);
    cuda->rope_backward(g.cuda, layout.positions, cos.cuda, sin.cuda);
    expect_close(fetch(*cuda, g.cuda), fetch(*cpu, g.cpu), std::string("rope_backward ") + s.name);
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
    EXPECT_EQ(fetch(*cuda, k_cache.cuda), fetch(*cpu, k_cache.cpu)) << s.name;  // copies: exact
    EXPECT_EQ(fetch(*cuda, v_cache.cuda), fetch(*cpu, v_cache.cpu)) << s.name;

    // Scores of magnitude ~ a few units: softmax neither uniform nor one-hot.
    const Pair q = both(*cuda, random_bf16(static_cast<std::size_t>(kTokens * s.heads * s.head_dim), 1.0f, 14),
                        {kTokens, s.heads, s.head_dim}, "q");
    Pair out = zeros(*cpu, *cuda, {kTokens, s.heads, s.head_dim}, "attn");
    const float scale = 1.0f / std::sqrt(static_cast<float>(s.head_dim)) * 2.0f;
    cpu->attention(q.cpu, k_cache.cpu, v_cache.cpu, layout, scale, out.cpu);
    cuda->attention(q.cuda, k_cache.cuda, v_cache.cuda, layout, scale, out.cuda);
    expect_close(fetch(*cuda, out.cuda), fetch(*cpu, out.cpu), std::string("attention ") + s.name);
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
  // The CPU operand of the scale is the fp32 sum, the CUDA one its bf16 rounding: the scale's own rounding
  // and the earlier one, hence the doubled allowance through `extra`.
  const auto ref = fetch(*cpu, x.cpu);
  std::vector<double> extra(ref.size());
  for (std::size_t i = 0; i < ref.size(); ++i) extra[i] = 2.0 * kBf16Unit * std::abs(ref[i]);
  expect_close(fetch(*cuda, x.cuda), ref, "scale after add", extra);
}

}  // namespace
}  // namespace slearn
