// The grid-stride loops past one grid: grid_for (kernels/cuda/device_utils.cuh) caps a launch at 65536
// blocks of kThreads = 256 threads, 2^24 elements, and each thread then loops. Every elementwise kernel
// launched that way runs here over more than 2^24 elements (work items for RoPE: pairs), against the CPU
// backend; a loop that stopped after one grid, or a 32-bit index that wrapped, leaves elements untouched
// or wrong past element 2^24. Skips without a GPU.
#include "gpu_test_util.hpp"

namespace slearn {
namespace {

using namespace gpu_testing;

constexpr std::int64_t kOneGrid = std::int64_t{65536} * 256;

TEST(CudaGridStride, ElementwiseOpsPastOneGrid) {
  SLEARN_REQUIRE_GPU(cuda);
  auto cpu = make_cpu_backend();
  // 5200 x 4864 = 25.3M elements, 1.5 grids.
  const std::int64_t rows = 5200, cols = 4864;
  ASSERT_GT(rows * cols, kOneGrid);
  const auto count = static_cast<std::size_t>(rows * cols);
  const auto gv = random_bf16(count, 6.0f, 60), uv = random_bf16(count, 2.0f, 61);
  const Pair gate = both(*cuda, gv, {rows, cols}, "gate"), up = both(*cuda, uv, {rows, cols}, "up");

  Pair act = zeros(*cpu, *cuda, {rows, cols}, "act");
  cpu->swiglu(gate.cpu, up.cpu, act.cpu);
  cuda->swiglu(gate.cuda, up.cuda, act.cuda);
  expect_close(fetch(*cuda, act.cuda), fetch(*cpu, act.cpu), "swiglu past one grid");

  // The stacked layout of swiglu_fused, [rows, 2 cols]: its loop runs over rows * cols outputs.
  std::vector<float> stacked(2 * count);
  for (std::int64_t r = 0; r < rows; ++r) {
    std::copy_n(gv.begin() + r * cols, cols, stacked.begin() + 2 * r * cols);
    std::copy_n(uv.begin() + r * cols, cols, stacked.begin() + (2 * r + 1) * cols);
  }
  const Pair gate_up = both(*cuda, stacked, {rows, 2 * cols}, "gate_up");
  Pair fused = zeros(*cpu, *cuda, {rows, cols}, "act");
  cpu->swiglu_fused(gate_up.cpu, fused.cpu);
  cuda->swiglu_fused(gate_up.cuda, fused.cuda);
  expect_close(fetch(*cuda, fused.cuda), fetch(*cpu, fused.cpu), "swiglu_fused past one grid");

  Pair x = both(*cuda, random_bf16(count, 4.0f, 62), {rows, cols}, "x");
  cpu->add_inplace(x.cpu, up.cpu);
  cuda->add_inplace(x.cuda, up.cuda);
  const auto sum = fetch(*cpu, x.cpu);
  expect_close(fetch(*cuda, x.cuda), sum, "add_inplace past one grid");

  // scale of a bf16 operand (the CUDA x) against the CPU's fp32 one: the earlier rounding as extra.
  cpu->scale(x.cpu, -1.5f);
  cuda->scale(x.cuda, -1.5f);
  {
    const auto ref = fetch(*cpu, x.cpu);
    std::vector<double> extra(ref.size());
    for (std::size_t i = 0; i < ref.size(); ++i) extra[i] = kBf16Unit * std::abs(ref[i]);
    expect_close(fetch(*cuda, x.cuda), ref, "scale past one grid", extra);
  }

  Pair dropped = zeros(*cpu, *cuda, {rows, cols}, "dropped");
  cpu->dropout(up.cpu, 0.25f, 0xfeedull, dropped.cpu);
  cuda->dropout(up.cuda, 0.25f, 0xfeedull, dropped.cuda);
  {
    const auto got = fetch(*cuda, dropped.cuda), ref = fetch(*cpu, dropped.cpu);
    std::size_t mismatched = 0;
    for (std::size_t i = 0; i < ref.size(); ++i) mismatched += (got[i] == 0.0f) != (ref[i] == 0.0f) && uv[i] != 0.0f;
    EXPECT_EQ(mismatched, 0u) << "dropout mask past one grid";
    expect_close(got, ref, "dropout past one grid");
  }

  Pair dgate = zeros(*cpu, *cuda, {rows, cols}, "dgate"), dup = zeros(*cpu, *cuda, {rows, cols}, "dup");
  {
    // The upstream gradient: the CUDA act (bf16) on both backends, so that the inputs are identical.
    const Tensor act_host = host_tensor(fetch(*cuda, act.cuda), {rows, cols}, "dact");
    cpu->swiglu_backward(gate.cpu, up.cpu, act_host, dgate.cpu, dup.cpu);
    cuda->swiglu_backward(gate.cuda, up.cuda, act.cuda, dgate.cuda, dup.cuda);
    const auto av = fetch(*cpu, act_host);
    std::vector<double> sums(count);
    for (std::size_t i = 0; i < count; ++i) {
      const double g = gv[i], s = 1.0 / (1.0 + std::exp(-g));
      sums[i] = std::abs(static_cast<double>(av[i]) * uv[i]) * s * (1.0 + std::abs(g) * (1.0 - s)) * (1.0 + std::abs(g));
    }
    expect_within(fetch(*cuda, dgate.cuda), fetch(*cpu, dgate.cpu), "swiglu_backward dgate past one grid",
                  Tolerance{std::move(sums), 4, {}, true});
    expect_close(fetch(*cuda, dup.cuda), fetch(*cpu, dup.cpu), "swiglu_backward dup past one grid");
  }

  // gather_rows: rows * width outputs, a permutation of the rows.
  std::vector<std::int64_t> order(static_cast<std::size_t>(rows));
  for (std::int64_t r = 0; r < rows; ++r) order[static_cast<std::size_t>(r)] = (r * 7919) % rows;
  Pair gathered = zeros(*cpu, *cuda, {rows, cols}, "rows");
  cpu->gather_rows(gate.cpu, order, gathered.cpu);
  cuda->gather_rows(gate.cuda, order, gathered.cuda);
  EXPECT_EQ(fetch(*cuda, gathered.cuda), fetch(*cpu, gathered.cpu)) << "gather_rows past one grid";
}

TEST(CudaGridStride, RopeKvStoreAndEmbeddingPastOneGrid) {
  SLEARN_REQUIRE_GPU(cuda);
  auto cpu = make_cpu_backend();
  // RoPE and rope_split_qkv: one work item per (token, head, pair). 10000 tokens x 28 heads x 64 pairs =
  // 17.9M (rope), x (28 + 2 x 4) heads = 23M (rope_split_qkv).
  const std::int64_t tokens = 10000, heads = 28, kv_heads = 4, head_dim = 128, half = head_dim / 2;
  ASSERT_GT(tokens * heads * half, kOneGrid);
  TokenLayout layout;
  for (std::int32_t t = 0; t < tokens; ++t) layout.slots.push_back(t % 4), layout.positions.push_back(t / 4);
  const std::int64_t positions = tokens / 4;
  std::vector<float> cos_v(static_cast<std::size_t>(positions * half)), sin_v(cos_v.size());
  for (std::int64_t p = 0; p < positions; ++p)
    for (std::int64_t i = 0; i < half; ++i) {
      const double angle = static_cast<double>(p) * std::pow(1e6, -static_cast<double>(i) / static_cast<double>(half));
      cos_v[static_cast<std::size_t>(p * half + i)] = round_bf16(static_cast<float>(std::cos(angle)));
      sin_v[static_cast<std::size_t>(p * half + i)] = round_bf16(static_cast<float>(std::sin(angle)));
    }
  const Pair cos = both(*cuda, cos_v, {positions, half}, "rope.cos"), sin = both(*cuda, sin_v, {positions, half}, "rope.sin");
  // |out| <= |a| + |b| for a rotation: S = |a| + |b| per element bounds both halves' terms.
  auto pair_sums = [&](const std::vector<float>& x) {
    std::vector<double> sums(x.size());
    for (std::size_t base = 0; base < x.size(); base += static_cast<std::size_t>(head_dim))
      for (std::int64_t i = 0; i < half; ++i) {
        const double s = std::abs(x[base + i]) + std::abs(x[base + i + half]);
        sums[base + i] = sums[base + i + half] = s;
      }
    return sums;
  };
  {
    const auto xv = random_bf16(static_cast<std::size_t>(tokens * heads * head_dim), 2.0f, 63);
    Pair x = both(*cuda, xv, {tokens, heads, head_dim}, "q");
    cpu->rope(x.cpu, layout, cos.cpu, sin.cpu);
    cuda->rope(x.cuda, layout, cos.cuda, sin.cuda);
    expect_within(fetch(*cuda, x.cuda), fetch(*cpu, x.cpu), "rope past one grid",
                  Tolerance{pair_sums(xv), 2, {}, true});
  }
  {
    const std::int64_t width = (heads + 2 * kv_heads) * head_dim;
    const auto qkv_v = random_bf16(static_cast<std::size_t>(tokens * width), 2.0f, 64);
    const Pair qkv = both(*cuda, qkv_v, {tokens, width}, "qkv");
    Pair q = zeros(*cpu, *cuda, {tokens, heads, head_dim}, "q");
    Pair k = zeros(*cpu, *cuda, {tokens, kv_heads, head_dim}, "k"), v = zeros(*cpu, *cuda, {tokens, kv_heads, head_dim}, "v");
    cpu->rope_split_qkv(qkv.cpu, layout, cos.cpu, sin.cpu, q.cpu, k.cpu, v.cpu);
    cuda->rope_split_qkv(qkv.cuda, layout, cos.cuda, sin.cuda, q.cuda, k.cuda, v.cuda);
    std::vector<float> q_in, k_in;
    for (std::int64_t t = 0; t < tokens; ++t) {
      const auto row = qkv_v.begin() + t * width;
      q_in.insert(q_in.end(), row, row + heads * head_dim);
      k_in.insert(k_in.end(), row + heads * head_dim, row + (heads + kv_heads) * head_dim);
    }
    expect_within(fetch(*cuda, q.cuda), fetch(*cpu, q.cpu), "rope_split_qkv q past one grid",
                  Tolerance{pair_sums(q_in), 2, {}, true});
    expect_within(fetch(*cuda, k.cuda), fetch(*cpu, k.cpu), "rope_split_qkv k past one grid",
                  Tolerance{pair_sums(k_in), 2, {}, true});
    EXPECT_EQ(fetch(*cuda, v.cuda), fetch(*cpu, v.cpu)) << "rope_split_qkv v past one grid";

    // kv_store: one work item per stored element; 40000 rows of a 4-slot cache in one call.
    TokenLayout all;
    for (std::int32_t t = 0; t < 4 * tokens; ++t) all.slots.push_back(t % 4), all.positions.push_back(t / 4);
    const std::int64_t rows = 4 * tokens, row_elems = kv_heads * head_dim;  // 40000 x 512 = 20.5M
    ASSERT_GT(rows * row_elems, kOneGrid);
    const std::vector<std::int64_t> kv_shape = {rows, kv_heads, head_dim}, cache_shape = {4, tokens, kv_heads, head_dim};
    const Pair kk = both(*cuda, random_bf16(static_cast<std::size_t>(rows * row_elems), 1.0f, 65), kv_shape, "k");
    const Pair vv = both(*cuda, random_bf16(static_cast<std::size_t>(rows * row_elems), 1.0f, 66), kv_shape, "v");
    Pair k_cache = zeros(*cpu, *cuda, cache_shape, "k_cache"), v_cache = zeros(*cpu, *cuda, cache_shape, "v_cache");
    cpu->kv_store(kk.cpu, vv.cpu, all, k_cache.cpu, v_cache.cpu);
    cuda->kv_store(kk.cuda, vv.cuda, all, k_cache.cuda, v_cache.cuda);
    EXPECT_EQ(fetch(*cuda, k_cache.cuda), fetch(*cpu, k_cache.cpu)) << "kv_store keys past one grid";
    EXPECT_EQ(fetch(*cuda, v_cache.cuda), fetch(*cpu, v_cache.cpu)) << "kv_store values past one grid";
  }
  {
    // embedding: 20000 ids x 896 = 17.9M outputs.
    const std::int64_t vocab = 1000, hidden = 896, ids_count = 20000;
    ASSERT_GT(ids_count * hidden, kOneGrid);
    const Pair table = both(*cuda, random_bf16(static_cast<std::size_t>(vocab * hidden), 1.0f, 67), {vocab, hidden}, "embed");
    std::vector<TokenId> ids(static_cast<std::size_t>(ids_count));
    for (std::size_t i = 0; i < ids.size(); ++i) ids[i] = static_cast<TokenId>((i * 613) % vocab);
    Pair out = zeros(*cpu, *cuda, {ids_count, hidden}, "x");
    cpu->embedding(table.cpu, ids, out.cpu);
    cuda->embedding(table.cuda, ids, out.cuda);
    EXPECT_EQ(fetch(*cuda, out.cuda), fetch(*cpu, out.cpu)) << "embedding past one grid";
  }
}

}  // namespace
}  // namespace slearn
