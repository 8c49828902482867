// The CUDA attention backward (kernels/cuda/attention_backward.cu: tensor cores at head dims 64, 80, 96 and
// 128, CUDA cores at 16) against the CPU backend's on packed batches of unequal sequences: lengths 1, 7, 33,
// 100 and 130 (tiles of 64 rows that end ragged, a one-row sequence), and 130, 0, 64, 65, 1 (an empty
// sequence, a sequence of exactly one tile and one a row past it), for GQA groups 1, 2 and 7. Both backends
// get identical inputs: the CPU forward's output, rounded to bf16 as the CUDA backend holds it, and its fp32
// lse; dq, dk and dv are held to gpu_test_util.hpp's attention_backward_tolerances (the bound of an fp32
// backward, which the kernels keep by splitting P and dS into three bf16 terms). A rerun into dirty outputs
// must give the same bits, and an unsupported head dim must throw. These tests skip, visibly, without a GPU;
// the tile table (attention_backward_tiles, host code) is checked everywhere.
#include <set>
#include <tuple>

#include "cuda/cuda_kernels.hpp"
#include "gpu_test_util.hpp"
#include "slearn/error.hpp"

namespace slearn {
namespace {

using namespace gpu_testing;

struct HeadShape {
  std::int64_t heads, kv_heads, head_dim;
  std::string name() const {
    return "d" + std::to_string(head_dim) + " group " + std::to_string(heads / kv_heads);
  }
};

// Every head dim the backward serves, the groups 1, 2 and 7 at 16, 64 and 128.
const HeadShape kShapes[] = {{2, 2, 16}, {4, 2, 16},  {14, 2, 16}, {2, 2, 64},  {4, 2, 64}, {14, 2, 64},
                             {2, 2, 128}, {4, 2, 128}, {14, 2, 128}, {4, 2, 80}, {14, 2, 96}};

std::vector<std::int64_t> starts_of(const std::vector<std::int64_t>& lengths) {
  std::vector<std::int64_t> starts = {0};
  for (const auto length : lengths) starts.push_back(starts.back() + length);
  return starts;
}

// The backward's inputs, as host values (already bf16 where the CUDA backend holds bf16).
struct BackwardInputs {
  std::vector<std::int64_t> q_shape, kv_shape;
  std::vector<float> q, k, v, out, lse, dout;
  float scale = 1.0f;
};

BackwardInputs make_inputs(Backend& cpu, const std::vector<std::int64_t>& seq_starts, const HeadShape& s,
                           std::uint32_t seed) {
  const std::int64_t tokens = seq_starts.back();
  BackwardInputs in;
  in.q_shape = {tokens, s.heads, s.head_dim};
  in.kv_shape = {tokens, s.kv_heads, s.head_dim};
  const auto q_count = static_cast<std::size_t>(tokens * s.heads * s.head_dim);
  const auto kv_count = static_cast<std::size_t>(tokens * s.kv_heads * s.head_dim);
  in.q = random_bf16(q_count, 1.0f, seed);
  in.k = random_bf16(kv_count, 1.0f, seed + 1);
  in.v = random_bf16(kv_count, 1.0f, seed + 2);
  in.dout = random_bf16(q_count, 1.0f, seed + 3);
  in.scale = 2.0f / std::sqrt(static_cast<float>(s.head_dim));
  Tensor out = cpu.zeros(in.q_shape, "attn"), lse = cpu.zeros_f32({tokens, s.heads}, "lse");
  cpu.attention_train(host_tensor(in.q, in.q_shape, "q"), host_tensor(in.k, in.kv_shape, "k"),
                      host_tensor(in.v, in.kv_shape, "v"), seq_starts, in.scale, out, lse);
  in.out = fetch(cpu, out);
  for (auto& x : in.out) x = round_bf16(x);
  in.lse = fetch(cpu, lse);
  return in;
}

struct Gradients {
  std::vector<float> dq, dk, dv;
};

// attention_backward on `backend` (cpu or cuda) from host values; `dirty` fills the outputs with noise first.
Gradients run_backward(Backend& backend, const BackwardInputs& in, const std::vector<std::int64_t>& seq_starts,
                       bool dirty) {
  const Tensor q = backend.upload(host_tensor(in.q, in.q_shape, "q"));
  const Tensor k = backend.upload(host_tensor(in.k, in.kv_shape, "k"));
  const Tensor v = backend.upload(host_tensor(in.v, in.kv_shape, "v"));
  const Tensor out = backend.upload(host_tensor(in.out, in.q_shape, "attn"));
  const Tensor dout = backend.upload(host_tensor(in.dout, in.q_shape, "d_attn"));
  Tensor lse = backend.zeros_f32({in.q_shape[0], in.q_shape[1]}, "lse");
  backend.write(lse, in.lse);
  Tensor dq = backend.zeros(in.q_shape, "dq"), dk = backend.zeros(in.kv_shape, "dk");
  Tensor dv = backend.zeros(in.kv_shape, "dv");
  if (dirty) {
    backend.fill_random(dq, 11, 1.0f);
    backend.fill_random(dk, 12, 1.0f);
    backend.fill_random(dv, 13, 1.0f);
  }
  backend.attention_backward(q, k, v, out, lse, dout, seq_starts, in.scale, dq, dk, dv);
  return {fetch(backend, dq), fetch(backend, dk), fetch(backend, dv)};
}

TEST(CudaAttentionBackward, MatchesTheCpuOnPackedUnequalSequences) {
  SLEARN_REQUIRE_GPU(cuda);
  auto cpu = make_cpu_backend();
  const std::vector<std::int64_t> layouts[] = {starts_of({1, 7, 33, 100, 130}), starts_of({130, 0, 64, 65, 1})};
  std::uint32_t seed = 100;
  for (const auto& seq_starts : layouts) {
    for (const HeadShape& s : kShapes) {
      const std::string name = s.name() + " over " + std::to_string(seq_starts.back()) + " rows";
      const BackwardInputs in = make_inputs(*cpu, seq_starts, s, seed += 10);
      const Gradients ref = run_backward(*cpu, in, seq_starts, false);
      const Gradients got = run_backward(*cuda, in, seq_starts, true);
      const auto geometry = packed_geometry(seq_starts, s.heads, s.kv_heads, s.head_dim, in.scale);
      const auto tol = attention_backward_tolerances(geometry, in.q, in.k, in.v, in.out, in.lse, in.dout);
      expect_within(got.dq, ref.dq, "attention_backward dq " + name, tol.dq);
      expect_within(got.dk, ref.dk, "attention_backward dk " + name, tol.dk);
      expect_within(got.dv, ref.dv, "attention_backward dv " + name, tol.dv);
    }
  }
}

TEST(CudaAttentionBackward, RerunsAreBitIdentical) {
  SLEARN_REQUIRE_GPU(cuda);
  auto cpu = make_cpu_backend();
  // Longer sequences: many 32-row steps per tile, both stages of the double buffer reused many times.
  const auto seq_starts = starts_of({700, 45, 300});
  for (const HeadShape s : {HeadShape{14, 2, 128}, HeadShape{4, 2, 64}, HeadShape{14, 2, 96}, HeadShape{4, 2, 16}}) {
    const BackwardInputs in = make_inputs(*cpu, seq_starts, s, 7);
    const Gradients first = run_backward(*cuda, in, seq_starts, false);
    const Gradients second = run_backward(*cuda, in, seq_starts, true);
    EXPECT_EQ(first.dq, second.dq) << "dq rerun " << s.name();
    EXPECT_EQ(first.dk, second.dk) << "dk rerun " << s.name();
    EXPECT_EQ(first.dv, second.dv) << "dv rerun " << s.name();
  }
}

TEST(CudaAttentionBackward, UnsupportedHeadDimThrows) {
  SLEARN_REQUIRE_GPU(cuda);
  const std::vector<std::int64_t> seq_starts = {0, 5};
  const Tensor q = cuda->zeros({5, 2, 48}, "q"), k = cuda->zeros({5, 1, 48}, "k"), v = cuda->zeros({5, 1, 48}, "v");
  const Tensor out = cuda->zeros({5, 2, 48}, "attn"), dout = cuda->zeros({5, 2, 48}, "d_attn");
  const Tensor lse = cuda->zeros_f32({5, 2}, "lse");
  Tensor dq = cuda->zeros({5, 2, 48}, "dq"), dk = cuda->zeros({5, 1, 48}, "dk"), dv = cuda->zeros({5, 1, 48}, "dv");
  EXPECT_THROW(cuda->attention_backward(q, k, v, out, lse, dout, seq_starts, 1.0f, dq, dk, dv), Error);
}

// ---- The tile table: host code, no GPU needed ----

using cuda::AttentionBackwardTile;

void expect_tiles_cover(const std::vector<AttentionBackwardTile>& tiles, const std::vector<std::int64_t>& seq_starts,
                        const std::string& what) {
  std::vector<int> covered(static_cast<std::size_t>(seq_starts.back()), 0);
  for (const auto& tile : tiles) {
    const auto s = std::upper_bound(seq_starts.begin(), seq_starts.end(), tile.first) - seq_starts.begin() - 1;
    ASSERT_GE(s, 0) << what;
    EXPECT_EQ(tile.seq_start, seq_starts[static_cast<std::size_t>(s)]) << what << " tile at " << tile.first;
    EXPECT_EQ(tile.seq_end, seq_starts[static_cast<std::size_t>(s) + 1]) << what << " tile at " << tile.first;
    EXPECT_EQ((tile.first - tile.seq_start) % cuda::kAttentionBackwardTileRows, 0) << what;
    EXPECT_GE(tile.rows, 1) << what;
    EXPECT_LE(tile.rows, cuda::kAttentionBackwardTileRows) << what;
    EXPECT_LE(tile.first + tile.rows, tile.seq_end) << what;
    for (std::int32_t r = tile.first; r < tile.first + tile.rows; ++r) ++covered[static_cast<std::size_t>(r)];
  }
  for (std::size_t r = 0; r < covered.size(); ++r) EXPECT_EQ(covered[r], 1) << what << ": row " << r;
}

TEST(CudaAttentionBackwardTiles, CoverEveryRowOnceHeaviestFirst) {
  const auto seq_starts = starts_of({1, 7, 33, 100, 0, 130, 64, 65, 129});
  const auto tiles = cuda::attention_backward_tiles(seq_starts.data(), seq_starts.size());
  expect_tiles_cover(tiles.key_tiles, seq_starts, "key tiles");
  expect_tiles_cover(tiles.query_tiles, seq_starts, "query tiles");
  for (std::size_t i = 1; i < tiles.key_tiles.size(); ++i) {
    const auto &a = tiles.key_tiles[i - 1], &b = tiles.key_tiles[i];
    EXPECT_GE(a.seq_end - a.first, b.seq_end - b.first) << "key tiles out of order at " << i;
  }
  for (std::size_t i = 1; i < tiles.query_tiles.size(); ++i) {
    const auto &a = tiles.query_tiles[i - 1], &b = tiles.query_tiles[i];
    EXPECT_GE(a.first + a.rows - a.seq_start, b.first + b.rows - b.seq_start) << "query tiles out of order at " << i;
  }
  const auto as_set = [](const std::vector<AttentionBackwardTile>& list) {
    std::set<std::tuple<int, int, int, int>> set;
    for (const auto& t : list) set.insert({t.seq_start, t.first, t.rows, t.seq_end});
    return set;
  };
  EXPECT_EQ(as_set(tiles.key_tiles), as_set(tiles.query_tiles)) << "both orders must hold the same tiles";
  // 1 + 1 + 1 + 2 + 0 + 3 + 1 + 2 + 3
  EXPECT_EQ(tiles.key_tiles.size(), 14u);
}

TEST(CudaAttentionBackwardTiles, RejectsDecreasingStarts) {
  const std::vector<std::int64_t> bad = {0, 10, 5, 20};
  EXPECT_THROW(cuda::attention_backward_tiles(bad.data(), bad.size()), Error);
  const std::vector<std::int64_t> offset = {3, 10};
  EXPECT_THROW(cuda::attention_backward_tiles(offset.data(), offset.size()), Error);
}

}  // namespace
}  // namespace slearn
