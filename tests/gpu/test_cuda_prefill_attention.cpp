// The tensor-core prefill attention (kernels/cuda/prefill_attention.cu) against the CPU reference kernel
// slearn::cpu::causal_attention on the same bf16-exact inputs: several prefill chunks of different cache
// slots in one launch, lengths 1, 15, 64, 65, 200 and 4100 (past 4k keys), starting at position 0 and
// continuing over an earlier-filled cache, GQA groups 1, 2, 7, 8, 16, head dims 64 and 128.
//
// The inputs also check what the kernel must not touch: q rows between the chunks (decode rows of a real
// step) keep their sentinel output, and every value-cache row past a chunk's last position (the rest of its
// slot, the unused slot) is NaN, so a load of any of them poisons the result even where the mask zeroes P
// (0 * NaN = NaN in the P V product).
//
// Tolerance, per output element i = (row, head h, dim d) with n = position + 1 keys, exact probabilities
// pi_j, A_i = sum_j pi_j |v_jd| (the CPU kernel run on |v|), S = scale * ||q_row,h||_1 * max|k| (bounds
// every |score|) and u = 2^-8 (one bf16 rounding, relative):
//  (1) P is rounded to bf16 before O += P V while the normaliser l sums the fp32 p: <= u * A_i.
//  (2) fp32 arithmetic, both kernels, relative to A_i, with 2^-23 per operation (tensor-core accumulation
//      may truncate rather than round):
//        scores: a sum of D exact products, off by <= D 2^-23 S per side; a shared shift cancels in the
//        softmax, so pi_j moves by <= 2 D 2^-23 S per side:                       4 D S 2^-23;
//        exponentials: expf, exp2f of (score * scale * log2 e - max):          8 (1 + S) 2^-23;
//        the O and l sums over n keys, plus one rescale per 64-key tile:    4 (n + n/64 + 2) 2^-23.
//  (3) the output's own rounding to bf16: half an ulp of |ref_i| + (1) + (2).
// For D = 128, S is about 23, so (2) is about 1.4e-3 A_i at short contexts and 3.5e-3 A_i at 4433 keys,
// against u = 3.9e-3 for (1); a wrong mask or fragment moves elements by a sizeable part of A_i.
// These bounds are first principles, not calibrated on hardware: this test has not yet run on a GPU.
#include <cuda_runtime_api.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

#include "cpu/cpu_kernels.hpp"
#include "cuda/cuda_check.hpp"
#include "cuda/prefill_attention.hpp"
#include "gpu_test_util.hpp"
#include "slearn/error.hpp"

namespace slearn {
namespace {

using namespace gpu_testing;

constexpr float kSentinel = 1024.0f;      // exact in bf16, far outside any attention output here
constexpr float kKeyScale = 2.0f;         // q and k uniform in [-2, 2]: scores spread over a few units
constexpr float kValueScale = 1.0f;
constexpr std::int64_t kGapRows = 2;      // q rows before every chunk that no chunk covers
constexpr std::int64_t kSpareCapacity = 70;  // cache positions past the longest chunk (NaN values)

struct ChunkSpec {
  std::int64_t length, start;
};

struct Problem {
  std::int64_t heads, kv_heads, head_dim, slots, capacity, rows;
  float scale;
  std::vector<cuda::PrefillChunk> chunks;
  std::vector<float> q, k_cache, v_cache;               // bf16-exact
  std::vector<std::int32_t> row_slot, row_position;     // per q row, for the CPU kernel
  std::vector<char> covered;                            // q rows that a chunk covers
};

// Chunk i goes to slot n - i (slot 0 stays unused, all NaN values); rows of the chunks are laid out in
// order with kGapRows uncovered rows before each.
Problem make_problem(std::int64_t heads, std::int64_t kv_heads, std::int64_t head_dim,
                     const std::vector<ChunkSpec>& specs, std::uint32_t seed) {
  Problem p{heads, kv_heads, head_dim, static_cast<std::int64_t>(specs.size()) + 1, 0, 0,
            1.0f / std::sqrt(static_cast<float>(head_dim)), {}, {}, {}, {}, {}, {}, {}};
  std::int64_t longest = 0, row = 0;
  for (std::size_t i = 0; i < specs.size(); ++i) {
    row += kGapRows;
    p.chunks.push_back({row, specs[i].length, specs[i].start, static_cast<std::int32_t>(specs.size() - i)});
    row += specs[i].length;
    longest = std::max(longest, specs[i].start + specs[i].length);
  }
  p.rows = row + kGapRows;
  p.capacity = longest + kSpareCapacity;

  const std::int64_t kv_row = kv_heads * head_dim;
  p.q = random_bf16(static_cast<std::size_t>(p.rows * heads * head_dim), kKeyScale, seed);
  p.k_cache = random_bf16(static_cast<std::size_t>(p.slots * p.capacity * kv_row), kKeyScale, seed + 1);
  p.v_cache = random_bf16(static_cast<std::size_t>(p.slots * p.capacity * kv_row), kValueScale, seed + 2);
  std::vector<std::int64_t> filled(static_cast<std::size_t>(p.slots), 0);  // positions the chunks may read
  for (const auto& c : p.chunks) filled[static_cast<std::size_t>(c.slot)] = c.start + c.length;
  for (std::int64_t s = 0; s < p.slots; ++s)
    for (std::int64_t pos = filled[static_cast<std::size_t>(s)]; pos < p.capacity; ++pos)
      std::fill_n(p.v_cache.begin() + (s * p.capacity + pos) * kv_row, kv_row, std::numeric_limits<float>::quiet_NaN());

  // Uncovered rows get the first chunk's slot at position 0 (readable), so the CPU kernel can run over all rows.
  p.row_slot.assign(static_cast<std::size_t>(p.rows), p.chunks.front().slot);
  p.row_position.assign(static_cast<std::size_t>(p.rows), 0);
  p.covered.assign(static_cast<std::size_t>(p.rows), 0);
  for (const auto& c : p.chunks) {
    for (std::int64_t r = 0; r < c.length; ++r) {
      const auto t = static_cast<std::size_t>(c.row0 + r);
      p.row_slot[t] = c.slot;
      p.row_position[t] = static_cast<std::int32_t>(c.start + r);
      p.covered[t] = 1;
    }
  }
  return p;
}

std::vector<float> cpu_attention(const Problem& p, const std::vector<float>& v_cache) {
  std::vector<float> out(p.q.size());
  cpu::causal_attention({p.q.data(), p.k_cache.data(), v_cache.data(), out.data(), p.row_slot.data(),
                         p.row_position.data(), p.rows, p.heads, p.kv_heads, p.head_dim, p.capacity, p.scale});
  return out;
}

// The tiles as a device array for the launch.
class DeviceTiles {
 public:
  explicit DeviceTiles(const std::vector<cuda::PrefillTile>& tiles) {
    const std::size_t bytes = std::max<std::size_t>(tiles.size(), 1) * sizeof(cuda::PrefillTile);
    CUDA_CHECK(cudaMalloc(&data_, bytes));
    if (!tiles.empty())
      CUDA_CHECK(cudaMemcpy(data_, tiles.data(), tiles.size() * sizeof(cuda::PrefillTile), cudaMemcpyHostToDevice));
  }
  ~DeviceTiles() { cudaFree(data_); }
  DeviceTiles(const DeviceTiles&) = delete;
  DeviceTiles& operator=(const DeviceTiles&) = delete;
  const cuda::PrefillTile* get() const { return static_cast<const cuda::PrefillTile*>(data_); }

 private:
  void* data_ = nullptr;
};

// Runs the kernel `launches` times into one sentinel-filled output; returns the output of each launch.
std::vector<std::vector<float>> cuda_prefill(Backend& cuda, const Problem& p, int launches = 1) {
  const Tensor q = cuda.upload(host_tensor(p.q, {p.rows, p.heads, p.head_dim}, "q"));
  const Tensor k = cuda.upload(host_tensor(p.k_cache, {p.slots * p.capacity, p.kv_heads, p.head_dim}, "k_cache"));
  const Tensor v = cuda.upload(host_tensor(p.v_cache, {p.slots * p.capacity, p.kv_heads, p.head_dim}, "v_cache"));
  Tensor out = cuda.upload(host_tensor(std::vector<float>(p.q.size(), kSentinel), {p.rows, p.heads, p.head_dim}, "out"));
  const auto tiles = cuda::prefill_tiles(p.chunks, p.rows, p.slots, p.capacity);
  const DeviceTiles device_tiles(tiles);
  std::vector<std::vector<float>> results;
  for (int i = 0; i < launches; ++i) {
    cuda::launch_prefill_attention({static_cast<const cuda::bf16*>(q.data()), static_cast<const cuda::bf16*>(k.data()),
                                    static_cast<const cuda::bf16*>(v.data()), static_cast<cuda::bf16*>(out.data()),
                                    device_tiles.get(), static_cast<std::int64_t>(tiles.size()), p.heads, p.kv_heads,
                                    p.head_dim, p.capacity, p.scale, nullptr});
    CUDA_CHECK(cudaDeviceSynchronize());  // surfaces a fault inside the kernel here, not at the next call
    results.push_back(fetch(cuda, out));
  }
  return results;
}

// Half an ulp of bf16 at magnitude y (8 significand bits): y in [2^(e-1), 2^e) has ulp 2^(e-8).
double bf16_half_ulp(double y) {
  if (!(y > 0)) return 0;
  int e = 0;
  std::frexp(y, &e);
  return std::ldexp(1.0, e - 9);
}

// The per-element check of the header comment, plus exact sentinels on the uncovered rows.
void expect_matches_reference(const Problem& p, const std::vector<float>& got, const std::string& what) {
  const std::vector<float> ref = cpu_attention(p, p.v_cache);
  std::vector<float> abs_v(p.v_cache.size());
  std::transform(p.v_cache.begin(), p.v_cache.end(), abs_v.begin(), [](float x) { return std::abs(x); });
  const std::vector<float> abs_ref = cpu_attention(p, abs_v);  // A_i = sum_j pi_j |v_jd|

  const double u = kBf16Unit, fp32_op = std::ldexp(1.0, -23);
  const std::int64_t D = p.head_dim;
  std::size_t bad = 0, first_bad = 0, sentinel_bad = 0;
  double worst = 0, worst_ratio = 0;
  for (std::int64_t t = 0; t < p.rows; ++t) {
    for (std::int64_t h = 0; h < p.heads; ++h) {
      const std::size_t base = static_cast<std::size_t>((t * p.heads + h) * D);
      if (!p.covered[static_cast<std::size_t>(t)]) {
        for (std::int64_t d = 0; d < D; ++d) sentinel_bad += got[base + static_cast<std::size_t>(d)] != kSentinel;
        continue;
      }
      double q_l1 = 0;
      for (std::int64_t d = 0; d < D; ++d) q_l1 += std::abs(p.q[base + static_cast<std::size_t>(d)]);
      const double S = p.scale * q_l1 * kKeyScale;
      const double n = p.row_position[static_cast<std::size_t>(t)] + 1.0;
      const double relative = u + fp32_op * (4.0 * D * S + 8.0 * (1.0 + S) + 4.0 * (n + std::floor(n / 64) + 2.0));
      for (std::int64_t d = 0; d < D; ++d) {
        const std::size_t i = base + static_cast<std::size_t>(d);
        const double e = relative * abs_ref[i];
        const double tol = e + bf16_half_ulp(std::abs(static_cast<double>(ref[i])) + e);
        const double err = std::abs(static_cast<double>(got[i]) - ref[i]);
        worst = std::max(worst, err);
        worst_ratio = std::max(worst_ratio, err / std::max(tol, 1e-30));
        if (!(err <= tol)) {  // also catches NaN
          if (bad++ == 0) first_bad = i;
        }
      }
    }
  }
  std::printf("[ measured ] %s: max |cuda - cpu| = %.3g, %.2f of the per-element tolerance\n", what.c_str(), worst,
              worst_ratio);
  EXPECT_EQ(sentinel_bad, 0u) << what << ": rows outside every chunk were written";
  EXPECT_EQ(bad, 0u) << what << ": " << bad << " of " << got.size() << " elements outside the tolerance; first at "
                     << first_bad << " (row " << first_bad / static_cast<std::size_t>(p.heads * D) << "): cuda "
                     << got[first_bad] << " cpu " << ref[first_bad];
}

TEST(CudaPrefillAttention, TilesSplitChunksHeaviestFirstAndRefuseBadChunks) {
  // Host code only: runs without a GPU.
  const std::vector<cuda::PrefillChunk> chunks = {{3, 200, 37, 2}, {210, 1, 0, 0}, {300, 0, 5, 1}};
  const auto tiles = cuda::prefill_tiles(chunks, 400, 3, 300);
  const std::vector<cuda::PrefillTile> expected = {
      {195, 8, 229, 2}, {131, 64, 165, 2}, {67, 64, 101, 2}, {3, 64, 37, 2}, {210, 1, 0, 0}};  // empty chunk: none
  ASSERT_EQ(tiles.size(), expected.size());
  for (std::size_t i = 0; i < tiles.size(); ++i) {
    EXPECT_EQ(tiles[i].row0, expected[i].row0) << i;
    EXPECT_EQ(tiles[i].rows, expected[i].rows) << i;
    EXPECT_EQ(tiles[i].position0, expected[i].position0) << i;
    EXPECT_EQ(tiles[i].slot, expected[i].slot) << i;
  }
  EXPECT_TRUE(cuda::prefill_tiles({}, 0, 1, 1).empty());
  using Chunks = std::vector<cuda::PrefillChunk>;
  EXPECT_THROW(cuda::prefill_tiles(Chunks{{0, 10, 291, 0}}, 400, 3, 300), Error);  // past the capacity
  EXPECT_THROW(cuda::prefill_tiles(Chunks{{0, 10, 0, 3}}, 400, 3, 300), Error);    // no such slot
  EXPECT_THROW(cuda::prefill_tiles(Chunks{{0, 10, 0, -1}}, 400, 3, 300), Error);
  EXPECT_THROW(cuda::prefill_tiles(Chunks{{395, 10, 0, 0}}, 400, 3, 300), Error);  // past the q rows
  EXPECT_THROW(cuda::prefill_tiles(Chunks{{0, -1, 0, 0}}, 400, 3, 300), Error);
  EXPECT_THROW(cuda::prefill_tiles(Chunks{{0, 10, -1, 0}}, 400, 3, 300), Error);
}

TEST(CudaPrefillAttention, UnsupportedHeadDimThrows) {
  // The launcher refuses before any CUDA call: runs without a GPU.
  EXPECT_TRUE(cuda::prefill_attention_supports(64));
  EXPECT_TRUE(cuda::prefill_attention_supports(128));
  for (const std::int64_t head_dim : {0, 16, 32, 80, 96, 256}) {
    EXPECT_FALSE(cuda::prefill_attention_supports(head_dim)) << head_dim;
    const cuda::PrefillAttentionParams params{nullptr, nullptr, nullptr, nullptr, nullptr, 1, 4, 2, head_dim, 8, 1.0f,
                                              nullptr};
    EXPECT_THROW(cuda::launch_prefill_attention(params), Error) << head_dim;
  }
  const cuda::PrefillAttentionParams uneven_group{nullptr, nullptr, nullptr, nullptr, nullptr, 1, 6, 4, 64, 8, 1.0f,
                                                  nullptr};
  EXPECT_THROW(cuda::launch_prefill_attention(uneven_group), Error);
}

TEST(CudaPrefillAttention, MatchesCpuForChunksOfManyLengthsAcrossGroupsAndHeadDims) {
  SLEARN_REQUIRE_GPU(cuda);
  // Starts 0 and > 0 (continuations), aligned (64) and not (5, 37, 700, 1000) to the 64-key tiles.
  const std::vector<ChunkSpec> specs = {{1, 0},  {15, 0}, {64, 0},  {65, 0},  {200, 0},
                                        {1, 700}, {15, 5}, {64, 64}, {65, 37}, {200, 1000}};
  constexpr std::int64_t kKvHeads = 2;
  std::uint32_t seed = 11;
  for (const std::int64_t head_dim : {64, 128}) {
    for (const std::int64_t group : {1, 2, 7, 8, 16}) {
      const std::string what = "head_dim " + std::to_string(head_dim) + ", " + std::to_string(kKvHeads * group) +
                               " heads over " + std::to_string(kKvHeads);
      SCOPED_TRACE(what);
      const Problem p = make_problem(kKvHeads * group, kKvHeads, head_dim, specs, seed += 3);
      expect_matches_reference(p, cuda_prefill(*cuda, p).front(), what);
    }
  }
}

TEST(CudaPrefillAttention, MatchesCpuPastFourThousandKeysAndIsDeterministic) {
  SLEARN_REQUIRE_GPU(cuda);
  // 4100 rows from position 0 and a continuation from 333: up to 4433 keys, 70 tiles of keys per row tile.
  const std::vector<ChunkSpec> specs = {{4100, 0}, {4100, 333}};
  struct Shape {
    std::int64_t heads, kv_heads, head_dim;
  };
  for (const Shape s : {Shape{4, 2, 128}, Shape{7, 1, 64}}) {
    const std::string what = "head_dim " + std::to_string(s.head_dim) + ", " + std::to_string(s.heads) +
                             " heads over " + std::to_string(s.kv_heads) + ", 4100-row chunks";
    SCOPED_TRACE(what);
    const Problem p = make_problem(s.heads, s.kv_heads, s.head_dim, specs, 101 + static_cast<std::uint32_t>(s.head_dim));
    const auto runs = cuda_prefill(*cuda, p, 2);
    expect_matches_reference(p, runs[0], what);
    EXPECT_EQ(runs[0], runs[1]) << what << ": two launches differ";
  }
}

}  // namespace
}  // namespace slearn
