// The training attention forward on tensor cores: CudaBackend::attention_train at head dims 64 and 128 runs
// the prefill kernel (kernels/cuda/prefill_attention.cu) with each packed sequence as a cache of capacity 1
// in slot = its first row, and writes the log-sum-exp the backward needs. Against the CPU backend on packed
// batches whose sequences are shorter than, exactly, and longer than one 64-row tile (1, 63, 64, 65, 200 and
// 513 rows, plus an empty one), for GQA groups 1, 2 and 7: out within attention_tolerance (which allows P
// rounded to bf16 for the P V product) and lse within lse_tolerance, into outputs that start out NaN so an
// unwritten element fails. That the tensor-core path is the one taken is checked by its result: the backend's
// out and lse equal, bit for bit, a direct launch of the prefill kernel on the same tiles (the kernel is
// deterministic; the reference kernel rounds differently). These tests skip, visibly, without a GPU; the tile
// table (training_prefill_tiles, host code) is checked everywhere.
#include <cuda_runtime_api.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <string>
#include <vector>

#include "cuda/cuda_check.hpp"
#include "cuda/prefill_attention.hpp"
#include "gpu_test_util.hpp"
#include "slearn/error.hpp"

namespace slearn {
namespace {

using namespace gpu_testing;

std::vector<std::int64_t> starts_of(const std::vector<std::int64_t>& lengths) {
  std::vector<std::int64_t> starts = {0};
  for (const auto length : lengths) starts.push_back(starts.back() + length);
  return starts;
}

// Lengths around one tile (63, 64, 65), several tiles ending ragged (200, 513) and an empty sequence.
const std::vector<std::int64_t> kLengths = {1, 63, 0, 64, 65, 200, 513};

// ---- The tile table: host code, no GPU needed ----

TEST(CudaTrainingPrefillTiles, CoverEverySequenceFromItsStartHeaviestFirst) {
  const auto seq_starts = starts_of(kLengths);
  const std::int64_t tokens = seq_starts.back();
  const auto tiles = cuda::training_prefill_tiles(seq_starts.data(), seq_starts.size(), tokens);
  std::vector<int> covered(static_cast<std::size_t>(tokens), 0);
  for (const auto& tile : tiles) {
    // The tile's sequence is the last one starting at or before its first row; its slot must be that start
    // (capacity 1: key j is row slot + j).
    const auto s = std::upper_bound(seq_starts.begin(), seq_starts.end(), tile.row0) - seq_starts.begin() - 1;
    ASSERT_GE(s, 0) << "row " << tile.row0;
    ASSERT_LT(s + 1, static_cast<std::ptrdiff_t>(seq_starts.size())) << "row " << tile.row0;
    const std::int64_t start = seq_starts[static_cast<std::size_t>(s)];
    const std::int64_t end = seq_starts[static_cast<std::size_t>(s) + 1];
    EXPECT_EQ(tile.slot, start) << "row " << tile.row0;
    EXPECT_EQ(tile.row0, start + tile.position0) << "row " << tile.row0;
    EXPECT_EQ(tile.position0 % cuda::kPrefillTileRows, 0) << "row " << tile.row0;
    EXPECT_GE(tile.rows, 1);
    EXPECT_LE(tile.rows, cuda::kPrefillTileRows);
    EXPECT_LE(tile.row0 + tile.rows, end) << "row " << tile.row0;
    for (std::int32_t r = tile.row0; r < tile.row0 + tile.rows; ++r) ++covered[static_cast<std::size_t>(r)];
  }
  for (std::size_t r = 0; r < covered.size(); ++r) EXPECT_EQ(covered[r], 1) << "row " << r;
  for (std::size_t i = 1; i < tiles.size(); ++i)
    EXPECT_GE(tiles[i - 1].position0 + tiles[i - 1].rows, tiles[i].position0 + tiles[i].rows) << "order at " << i;
  // 1 + 1 + 0 + 1 + 2 + 4 + 9
  EXPECT_EQ(tiles.size(), 18u);
  EXPECT_EQ(tiles.front().position0 + tiles.front().rows, 513);  // the last tile of the 513-row sequence

  const std::vector<std::int64_t> no_rows = {0};
  EXPECT_TRUE(cuda::training_prefill_tiles(no_rows.data(), no_rows.size(), 0).empty());
}

TEST(CudaTrainingPrefillTiles, RejectsBadStarts) {
  const std::vector<std::int64_t> decreasing = {0, 10, 5, 20}, offset = {3, 10}, short_of_tokens = {0, 10};
  EXPECT_THROW(cuda::training_prefill_tiles(decreasing.data(), decreasing.size(), 20), Error);
  EXPECT_THROW(cuda::training_prefill_tiles(offset.data(), offset.size(), 10), Error);
  EXPECT_THROW(cuda::training_prefill_tiles(short_of_tokens.data(), short_of_tokens.size(), 11), Error);
  EXPECT_THROW(cuda::training_prefill_tiles(nullptr, 0, 0), Error);
  const std::int64_t too_many = std::int64_t{1} << 31;
  const std::vector<std::int64_t> huge = {0, too_many};
  EXPECT_THROW(cuda::training_prefill_tiles(huge.data(), huge.size(), too_many), Error);
}

// ---- The forward against the CPU backend ----

struct TrainShape {
  std::int64_t heads, kv_heads, head_dim;
  std::string name() const { return "d" + std::to_string(head_dim) + " group " + std::to_string(heads / kv_heads); }
};

// A direct launch of the prefill kernel on the training tiles, into fresh outputs.
void direct_prefill(const Tensor& q, const Tensor& k, const Tensor& v,
                    const std::vector<std::int64_t>& seq_starts, float scale, Tensor& out, Tensor& lse) {
  const auto tiles = cuda::training_prefill_tiles(seq_starts.data(), seq_starts.size(), q.dim(0));
  void* device_tiles = nullptr;
  CUDA_CHECK(cudaMalloc(&device_tiles, std::max<std::size_t>(tiles.size(), 1) * sizeof(cuda::PrefillTile)));
  CUDA_CHECK(cudaMemcpy(device_tiles, tiles.data(), tiles.size() * sizeof(cuda::PrefillTile), cudaMemcpyHostToDevice));
  CUDA_CHECK(cudaDeviceSynchronize());  // the backend's stream is done with the inputs
  cuda::launch_prefill_attention({static_cast<const cuda::bf16*>(q.data()), static_cast<const cuda::bf16*>(k.data()),
                                  static_cast<const cuda::bf16*>(v.data()), static_cast<cuda::bf16*>(out.data()),
                                  static_cast<const cuda::PrefillTile*>(device_tiles),
                                  static_cast<std::int64_t>(tiles.size()), q.dim(1), k.dim(1), q.dim(2), 1, scale,
                                  nullptr, static_cast<float*>(lse.data())});
  const cudaError_t status = cudaDeviceSynchronize();
  cudaFree(device_tiles);
  CUDA_CHECK(status);
}

TEST(CudaAttentionTrain, TensorCoreForwardMatchesCpuAcrossTilesAndGroups) {
  SLEARN_REQUIRE_GPU(cuda);
  auto cpu = make_cpu_backend();
  const auto seq_starts = starts_of(kLengths);
  const std::int64_t tokens = seq_starts.back();
  const TrainShape shapes[] = {{4, 4, 64}, {4, 2, 64}, {14, 2, 64}, {2, 2, 128}, {4, 2, 128}, {7, 1, 128}};
  std::uint32_t seed = 60;
  for (const TrainShape& s : shapes) {
    ASSERT_TRUE(cuda::prefill_attention_supports(s.head_dim)) << s.name();
    const std::vector<std::int64_t> q_shape = {tokens, s.heads, s.head_dim};
    const std::vector<std::int64_t> kv_shape = {tokens, s.kv_heads, s.head_dim};
    const auto qv = random_bf16(static_cast<std::size_t>(tokens * s.heads * s.head_dim), 1.0f, seed++);
    const auto kv = random_bf16(static_cast<std::size_t>(tokens * s.kv_heads * s.head_dim), 1.0f, seed++);
    const auto vv = random_bf16(static_cast<std::size_t>(tokens * s.kv_heads * s.head_dim), 1.0f, seed++);
    const Pair q = both(*cuda, qv, q_shape, "q"), k = both(*cuda, kv, kv_shape, "k");
    const Pair v = both(*cuda, vv, kv_shape, "v");
    const float scale = 2.0f / std::sqrt(static_cast<float>(s.head_dim));
    Pair out = zeros(*cpu, *cuda, q_shape, "attn");
    Pair lse{cpu->zeros_f32({tokens, s.heads}, "lse"), cuda->zeros_f32({tokens, s.heads}, "lse")};
    const float nan = std::numeric_limits<float>::quiet_NaN();
    cuda->write(out.cuda, std::vector<float>(static_cast<std::size_t>(out.cuda.numel()), nan));
    cuda->write(lse.cuda, std::vector<float>(static_cast<std::size_t>(lse.cuda.numel()), nan));
    cpu->attention_train(q.cpu, k.cpu, v.cpu, seq_starts, scale, out.cpu, lse.cpu);
    cuda->attention_train(q.cuda, k.cuda, v.cuda, seq_starts, scale, out.cuda, lse.cuda);
    const auto cuda_out = fetch(*cuda, out.cuda), cuda_lse = fetch(*cuda, lse.cuda), cpu_lse = fetch(*cpu, lse.cpu);

    const auto geometry = packed_geometry(seq_starts, s.heads, s.kv_heads, s.head_dim, scale);
    expect_within(cuda_out, fetch(*cpu, out.cpu), "attention_train out " + s.name(),
                  attention_tolerance(geometry, qv, kv, vv));
    const auto lse_bound = lse_tolerance(geometry, qv, kv, cpu_lse);
    std::size_t bad = 0;
    for (std::size_t i = 0; i < cpu_lse.size(); ++i) {
      if (!(std::abs(cuda_lse[i] - cpu_lse[i]) <= lse_bound[i]) && bad++ < 5)
        ADD_FAILURE() << s.name() << " lse " << i << " (row " << i / static_cast<std::size_t>(s.heads) << "): cuda "
                      << cuda_lse[i] << " cpu " << cpu_lse[i] << " bound " << lse_bound[i];
    }
    EXPECT_EQ(bad, 0u) << s.name() << ": lse elements outside the bound";

    // The tensor-core kernel is the one that ran: a direct launch gives the same bits.
    Tensor direct_out = cuda->zeros(q_shape, "attn direct");
    Tensor direct_lse = cuda->zeros_f32({tokens, s.heads}, "lse direct");
    direct_prefill(q.cuda, k.cuda, v.cuda, seq_starts, scale, direct_out, direct_lse);
    EXPECT_EQ(fetch(*cuda, direct_out), cuda_out) << s.name() << ": attention_train out is not the prefill kernel's";
    EXPECT_EQ(fetch(*cuda, direct_lse), cuda_lse) << s.name() << ": attention_train lse is not the prefill kernel's";
  }
}

}  // namespace
}  // namespace slearn
