// Backend::attention at long contexts for every GQA group the kernels serve (1, 2, 7, 8, 16 query heads per kv
// head) at head dims 64 and 128: one call mixes decode rows (the backend's split-KV kernel, 128-key splits)
// and prefill chunks (its tensor-core kernel) over contexts past 4096 keys, against the CPU backend with the
// per-element attention tolerance of gpu_test_util.hpp. A decode row must also come out bit for bit the same
// when it is computed alone (decode_attention.hpp: splits are fixed by key position). Skips without a GPU.
#include <cstring>

#include "gpu_test_util.hpp"

namespace slearn {
namespace {

using namespace gpu_testing;

constexpr std::int64_t kSlots = 6, kCapacity = 4608;

struct Piece {
  std::int32_t slot, start, length;
};
// Interleaved decode rows and chunks: a decode row deep in the cache, a 40-row continuation crossing key 4096,
// the very first position (context 1), a prompt from 0, the 4097-key context, and a 2-row chunk ending at
// the last position of the cache.
const Piece kPieces[] = {{1, 4500, 1}, {0, 4070, 40}, {3, 0, 1}, {2, 0, 37}, {4, 4096, 1}, {5, 4606, 2}};

TokenLayout layout_of(const std::vector<Piece>& pieces) {
  TokenLayout layout;
  for (const Piece& p : pieces)
    for (std::int32_t i = 0; i < p.length; ++i) layout.slots.push_back(p.slot), layout.positions.push_back(p.start + i);
  return layout;
}

struct GroupShape {
  std::int64_t heads, kv_heads, head_dim;
};

TEST(CudaAttention, GqaGroupsAtLongContextsMixingDecodeRowsAndPrefillChunks) {
  SLEARN_REQUIRE_GPU(cuda);
  auto cpu = make_cpu_backend();
  const std::vector<Piece> pieces(std::begin(kPieces), std::end(kPieces));
  const TokenLayout layout = layout_of(pieces);
  const auto tokens = static_cast<std::int64_t>(layout.tokens());
  std::vector<Piece> decode_pieces;
  std::vector<std::size_t> decode_rows;  // rows of `layout` that are decode rows, in order
  {
    std::size_t row = 0;
    for (const Piece& p : pieces) {
      if (p.length == 1) decode_pieces.push_back(p), decode_rows.push_back(row);
      row += static_cast<std::size_t>(p.length);
    }
  }
  const TokenLayout decode_layout = layout_of(decode_pieces);

  std::uint32_t seed = 100;
  for (const std::int64_t head_dim : {64, 128}) {
    for (const GroupShape s : {GroupShape{2, 2, head_dim}, GroupShape{4, 2, head_dim}, GroupShape{14, 2, head_dim},
                               GroupShape{16, 2, head_dim}, GroupShape{16, 1, head_dim}}) {
      const std::string name = "attention group " + std::to_string(s.heads / s.kv_heads) + " head_dim " +
                               std::to_string(head_dim) + " (" + std::to_string(s.heads) + " over " +
                               std::to_string(s.kv_heads) + ")";
      const std::vector<std::int64_t> cache_shape = {kSlots, kCapacity, s.kv_heads, head_dim};
      const auto cache_count = static_cast<std::size_t>(kSlots * kCapacity * s.kv_heads * head_dim);
      const auto kv = random_bf16(cache_count, 1.0f, seed++), vv = random_bf16(cache_count, 1.0f, seed++);
      const Pair k_cache = both(*cuda, kv, cache_shape, "k_cache"), v_cache = both(*cuda, vv, cache_shape, "v_cache");
      const auto qv = random_bf16(static_cast<std::size_t>(tokens * s.heads * head_dim), 1.0f, seed++);
      const Pair q = both(*cuda, qv, {tokens, s.heads, head_dim}, "q");
      // Scores with a standard deviation ~ 1.3: over 4k keys the weights are neither flat nor one-hot.
      const float scale = 4.0f / std::sqrt(static_cast<float>(head_dim));
      Pair out = zeros(*cpu, *cuda, {tokens, s.heads, head_dim}, "attn");
      cpu->attention(q.cpu, k_cache.cpu, v_cache.cpu, layout, scale, out.cpu);
      cuda->attention(q.cuda, k_cache.cuda, v_cache.cuda, layout, scale, out.cuda);
      const auto got = fetch(*cuda, out.cuda);
      expect_within(got, fetch(*cpu, out.cpu), name,
                    attention_tolerance(cache_geometry(layout, kCapacity, s.heads, s.kv_heads, head_dim, scale), qv,
                                        kv, vv));

      // The decode rows alone, through the same op: the same bits as inside the mixed call.
      const std::int64_t row_size = s.heads * head_dim;
      std::vector<float> decode_q;
      for (const std::size_t r : decode_rows)
        decode_q.insert(decode_q.end(), qv.begin() + static_cast<std::ptrdiff_t>(r * row_size),
                        qv.begin() + static_cast<std::ptrdiff_t>((r + 1) * row_size));
      const auto decode_tokens = static_cast<std::int64_t>(decode_rows.size());
      const Tensor dq = cuda->upload(host_tensor(decode_q, {decode_tokens, s.heads, head_dim}, "q"));
      Tensor decode_out = cuda->zeros({decode_tokens, s.heads, head_dim}, "attn");
      cuda->attention(dq, k_cache.cuda, v_cache.cuda, decode_layout, scale, decode_out);
      const auto alone = fetch(*cuda, decode_out);
      std::size_t differing = 0;
      for (std::size_t i = 0; i < decode_rows.size(); ++i)
        differing += std::memcmp(alone.data() + i * row_size, got.data() + decode_rows[i] * row_size,
                                 static_cast<std::size_t>(row_size) * sizeof(float)) != 0;
      EXPECT_EQ(differing, 0u) << name << ": a decode row computed alone differs from the same row in the mixed call";
    }
  }
}

}  // namespace
}  // namespace slearn
