// Causal GQA attention for training over packed sequences, forward and backward, without a KV cache and
// without any [S x S] matrix: the forward keeps a [kBlock x sequence] strip of scores per thread and saves
// each query row's log-sum-exp; the backward recomputes the probabilities P = exp(score - lse) tile by tile.
//
// Work is tiled in kBlock x kBlock (query, key) tiles. Scores are computed against a transposed copy of K
// (and dP against one of V), made once per call, so the tile product vectorises over the key index and
// every score is a plain sequential sum over head_dim: the same value in the forward and both backward
// passes, whatever the tiling of the work. The backward is two passes, each writing disjoint outputs:
//  1. over (query block, head): D = dO.O, then dQ = scale * sum_j dS[t,j] K[j];
//  2. over (key block, kv head): dV[j] = sum_{t>=j, h in group} P dO[t], dK[j] = scale * sum dS Q[t].
// No atomics and no thread-count-dependent reductions: every output element is summed by one thread in a
// fixed order (vector lanes only ever hold independent outputs), so results are bit-identical for any
// number of threads or buffer alignment. The forward normalises and sums the values in the order
// causal_attention (attention.cpp) does; the q.k summation order and the exponential (exp_approx, ~1 ulp)
// differ, so the two agree to rounding (~1e-6 for scores of magnitude ~10).
#include <algorithm>
#include <bit>
#include <cmath>
#include <string>
#include <vector>

#include "cpu/cpu_train_kernels.hpp"
#include "slearn/error.hpp"

namespace slearn::cpu {
namespace {

// Rows per tile side: one 16-float vector of key columns.
constexpr std::int64_t kBlock = 16;
// Below this many multiply-adds a parallel region costs more than the work it splits.
constexpr std::int64_t kParallelWork = 1 << 16;

// e^x within 8e-8 relative error (~1 ulp), branch-free so that loops over a tile vectorise (libm's expf is
// a scalar call, and took a third of the time). Inputs below -87 give e^-87 (the probabilities here
// are e^(score - max) <= 1, so such terms are negligible either way).
inline float exp_approx(float x) {
  x = std::min(std::max(x, -87.0f), 88.0f);
  constexpr float kRound = 12582912.0f;  // 1.5 * 2^23: adding it rounds to an integer
  const float shifted = x * 1.44269504f + kRound;
  const float n = shifted - kRound;
  const float r = (x - n * 0.693145751953125f) - n * 1.428606765330187e-6f;  // x - n ln2, |r| <= ~0.35
  float poly = 1.0f / 5040.0f;
  poly = poly * r + 1.0f / 720.0f;
  poly = poly * r + 1.0f / 120.0f;
  poly = poly * r + 1.0f / 24.0f;
  poly = poly * r + 1.0f / 6.0f;
  poly = poly * r + 0.5f;
  poly = poly * r + 1.0f;
  poly = poly * r + 1.0f;
  const std::int32_t exponent = std::bit_cast<std::int32_t>(shifted) - std::bit_cast<std::int32_t>(kRound) + 127;
  return poly * std::bit_cast<float>(exponent << 23);
}

// tile[i][j] = sum_d a[i][d] bt[d][j] for i < rows and all kBlock columns, summed over d in order.
inline void tile_product(const float* a, std::int64_t lda, std::int64_t rows, const float* bt, std::int64_t ldb,
                         std::int64_t dim, float* tile) {
  for (std::int64_t i = 0; i < rows; ++i) {
    float acc[kBlock] = {};
    const float* ai = a + i * lda;
    for (std::int64_t d = 0; d < dim; ++d) {
      const float x = ai[d];
      const float* b = bt + d * ldb;
#pragma omp simd
      for (std::int64_t j = 0; j < kBlock; ++j) acc[j] += x * b[j];
    }
    std::copy_n(acc, kBlock, tile + i * kBlock);
  }
}

// c[i][d] += sum_{j < cols} a[i * a_row + j * a_col] b[j * ldb + d] for i < rows, d < dim, j in order.
// The accumulator stays in registers across j, one kBlock-wide slice of the row at a time.
inline void tile_accumulate(const float* a, std::int64_t a_row, std::int64_t a_col, std::int64_t rows,
                            std::int64_t cols, const float* b, std::int64_t ldb, std::int64_t dim, float* c,
                            std::int64_t ldc) {
  for (std::int64_t i = 0; i < rows; ++i) {
    float* ci = c + i * ldc;
    std::int64_t d0 = 0;
    for (; d0 + kBlock <= dim; d0 += kBlock) {
      float acc[kBlock];
      std::copy_n(ci + d0, kBlock, acc);
      for (std::int64_t j = 0; j < cols; ++j) {
        const float x = a[i * a_row + j * a_col];
        const float* bj = b + j * ldb + d0;
#pragma omp simd
        for (std::int64_t l = 0; l < kBlock; ++l) acc[l] += x * bj[l];
      }
      std::copy_n(acc, kBlock, ci + d0);
    }
    for (std::int64_t j = 0; d0 < dim && j < cols; ++j) {
      const float x = a[i * a_row + j * a_col];
      for (std::int64_t d = d0; d < dim; ++d) ci[d] += x * b[j * ldb + d];
    }
  }
}

// A block of up to kBlock rows of one sequence; blocks start at the sequence start, every kBlock rows.
struct Block {
  std::int64_t seq_start, seq_end, first, rows;
};

// The packed layout, checked once before any parallel region.
struct Layout {
  std::vector<Block> blocks;
  std::int64_t longest = 0;
  std::int64_t pairs = 0;  // causal (query, key) pairs summed over sequences
};

Layout check_layout(const char* what, const std::int64_t* seq_starts, std::int64_t sequences, std::int64_t tokens,
                    std::int64_t heads, std::int64_t kv_heads, std::int64_t head_dim) {
  const std::string name(what);
  if (sequences < 0 || tokens < 0 || heads <= 0 || kv_heads <= 0 || head_dim <= 0)
    throw Error(name + ": bad sizes (sequences " + std::to_string(sequences) + ", tokens " + std::to_string(tokens) +
                ", heads " + std::to_string(heads) + ", kv_heads " + std::to_string(kv_heads) + ", head_dim " +
                std::to_string(head_dim) + ")");
  if (heads % kv_heads != 0)
    throw Error(name + ": heads " + std::to_string(heads) + " is not a multiple of kv_heads " +
                std::to_string(kv_heads));
  if (seq_starts[0] != 0 || seq_starts[sequences] != tokens)
    throw Error(name + ": seq_starts must run from 0 to tokens (" + std::to_string(tokens) + "), got " +
                std::to_string(seq_starts[0]) + " .. " + std::to_string(seq_starts[sequences]));
  Layout layout;
  for (std::int64_t s = 0; s < sequences; ++s) {
    const std::int64_t start = seq_starts[s], end = seq_starts[s + 1];
    if (end < start)
      throw Error(name + ": seq_starts decreases at sequence " + std::to_string(s) + " (" + std::to_string(start) +
                  " -> " + std::to_string(end) + ")");
    const std::int64_t length = end - start;
    layout.longest = std::max(layout.longest, length);
    layout.pairs += length * (length + 1) / 2;
    for (std::int64_t first = start; first < end; first += kBlock)
      layout.blocks.push_back({start, end, first, std::min(kBlock, end - first)});
  }
  return layout;
}

// x [tokens, kv_heads, dim] -> [kv_heads, dim, ld] with ld = tokens + kBlock, zero-padded, so that a tile
// product may read kBlock columns from any row.
std::vector<float> transpose_heads(const float* x, std::int64_t tokens, std::int64_t kv_heads, std::int64_t dim) {
  const std::int64_t ld = tokens + kBlock;
  std::vector<float> out(static_cast<std::size_t>(kv_heads * dim * ld), 0.0f);
  for (std::int64_t t = 0; t < tokens; ++t)
    for (std::int64_t g = 0; g < kv_heads; ++g)
      for (std::int64_t d = 0; d < dim; ++d)
        out[static_cast<std::size_t>((g * dim + d) * ld + t)] = x[(t * kv_heads + g) * dim + d];
  return out;
}

}  // namespace

void attention_forward_train(const AttentionTrainParams& p) {
  const Layout layout =
      check_layout("attention_forward_train", p.seq_starts, p.sequences, p.tokens, p.heads, p.kv_heads, p.head_dim);
  if (p.tokens == 0) return;
  const std::int64_t group = p.heads / p.kv_heads, dim = p.head_dim;
  const std::int64_t kv_row = p.kv_heads * dim, q_row = p.heads * dim, ld = p.tokens + kBlock;
  const std::vector<float> kt = transpose_heads(p.k, p.tokens, p.kv_heads, dim);
  const auto blocks = static_cast<std::int64_t>(layout.blocks.size());
#pragma omp parallel if (layout.pairs * p.heads * dim > kParallelWork)
  {
    std::vector<float> strip(static_cast<std::size_t>(kBlock * layout.longest));  // scores of the block's rows
    std::vector<float> tile(static_cast<std::size_t>(kBlock * kBlock));
#pragma omp for collapse(2) schedule(dynamic, 1)
    for (std::int64_t b = 0; b < blocks; ++b) {
      for (std::int64_t h = 0; h < p.heads; ++h) {
        const Block& blk = layout.blocks[static_cast<std::size_t>(blocks - 1 - b)];  // the longest rows first
        const std::int64_t g = h / group;
        const float* kt_head = kt.data() + g * dim * ld;
        for (std::int64_t key0 = blk.seq_start; key0 <= blk.first; key0 += kBlock) {
          tile_product(p.q + blk.first * q_row + h * dim, q_row, blk.rows, kt_head + key0, ld, dim, tile.data());
          for (std::int64_t i = 0; i < blk.rows; ++i) {
            const std::int64_t columns = std::min(kBlock, blk.first + i - key0 + 1);
            float* row = strip.data() + i * layout.longest + (key0 - blk.seq_start);
            const float* scores = tile.data() + i * kBlock;
            for (std::int64_t j = 0; j < columns; ++j) row[j] = scores[j] * p.scale;
          }
        }
        for (std::int64_t i = 0; i < blk.rows; ++i) {
          const std::int64_t t = blk.first + i, context = t - blk.seq_start + 1;
          float* weights = strip.data() + i * layout.longest;
          float max_score = -INFINITY;
          for (std::int64_t j = 0; j < context; ++j) max_score = std::max(max_score, weights[j]);
#pragma omp simd
          for (std::int64_t j = 0; j < context; ++j) weights[j] = exp_approx(weights[j] - max_score);
          float total = 0.0f;  // summed in order, as causal_attention does
          for (std::int64_t j = 0; j < context; ++j) total += weights[j];
          const float inv_total = 1.0f / total;
#pragma omp simd
          for (std::int64_t j = 0; j < context; ++j) weights[j] *= inv_total;
          float* out = p.out + t * q_row + h * dim;
          std::fill_n(out, dim, 0.0f);
          tile_accumulate(weights, 0, 1, 1, context, p.v + blk.seq_start * kv_row + g * dim, kv_row, dim, out, dim);
          p.lse[t * p.heads + h] = max_score + std::log(total);
        }
      }
    }
  }
}

void attention_backward(const AttentionBackwardParams& p) {
  const Layout layout =
      check_layout("attention_backward", p.seq_starts, p.sequences, p.tokens, p.heads, p.kv_heads, p.head_dim);
  if (p.tokens == 0) return;
  const std::int64_t group = p.heads / p.kv_heads, dim = p.head_dim;
  const std::int64_t kv_row = p.kv_heads * dim, q_row = p.heads * dim, ld = p.tokens + kBlock;
  const std::vector<float> kt = transpose_heads(p.k, p.tokens, p.kv_heads, dim);
  const std::vector<float> vt = transpose_heads(p.v, p.tokens, p.kv_heads, dim);
  const auto blocks = static_cast<std::int64_t>(layout.blocks.size());
  const bool parallel = layout.pairs * p.heads * dim > kParallelWork;
  // D[t, h] = dO[t, h] . O[t, h] = sum_j P[t, j] dP[t, j]: written by pass 1, read by both.
  std::vector<float> delta(static_cast<std::size_t>(p.tokens * p.heads));
  constexpr auto kTile = static_cast<std::size_t>(kBlock * kBlock);

  // Turns a tile of scores and dP for query rows query0.. (head h) against key rows key0.. into P (in
  // `scores`) and dS / scale (in `dprob`); pairs with key > query are zero.
  const auto probabilities = [&](std::int64_t query0, std::int64_t rows, std::int64_t key0, std::int64_t h,
                                 float* scores, float* dprob) {
    for (std::int64_t i = 0; i < rows; ++i) {
      const std::int64_t t = query0 + i, columns = t - key0 + 1;
      const float lse = p.lse[t * p.heads + h];
      const float d_row = delta[static_cast<std::size_t>(t * p.heads + h)];
      const float scale = p.scale;
      float* s = scores + i * kBlock;
      float* dp = dprob + i * kBlock;
#pragma omp simd
      for (std::int64_t j = 0; j < kBlock; ++j) {
        const float prob = j < columns ? exp_approx(s[j] * scale - lse) : 0.0f;
        s[j] = prob;
        dp[j] = prob * (dp[j] - d_row);
      }
    }
  };

  // Pass 1: D and dQ, one (query block, head) per work item.
#pragma omp parallel if (parallel)
  {
    std::vector<float> scores(kTile), dprob(kTile), acc(static_cast<std::size_t>(kBlock * dim));
#pragma omp for collapse(2) schedule(dynamic, 1)
    for (std::int64_t b = 0; b < blocks; ++b) {
      for (std::int64_t h = 0; h < p.heads; ++h) {
        const Block& blk = layout.blocks[static_cast<std::size_t>(blocks - 1 - b)];  // the longest rows first
        const std::int64_t g = h / group;
        const float* q = p.q + blk.first * q_row + h * dim;
        const float* dout = p.dout + blk.first * q_row + h * dim;
        for (std::int64_t i = 0; i < blk.rows; ++i) {
          float d_row = 0.0f;
          const float* o = p.out + (blk.first + i) * q_row + h * dim;
          for (std::int64_t d = 0; d < dim; ++d) d_row += dout[i * q_row + d] * o[d];
          delta[static_cast<std::size_t>((blk.first + i) * p.heads + h)] = d_row;
        }
        std::fill(acc.begin(), acc.end(), 0.0f);
        for (std::int64_t key0 = blk.seq_start; key0 <= blk.first; key0 += kBlock) {
          tile_product(q, q_row, blk.rows, kt.data() + g * dim * ld + key0, ld, dim, scores.data());
          tile_product(dout, q_row, blk.rows, vt.data() + g * dim * ld + key0, ld, dim, dprob.data());
          probabilities(blk.first, blk.rows, key0, h, scores.data(), dprob.data());
          const std::int64_t keys = key0 == blk.first ? blk.rows : kBlock;
          tile_accumulate(dprob.data(), kBlock, 1, blk.rows, keys, p.k + key0 * kv_row + g * dim, kv_row, dim,
                          acc.data(), dim);
        }
        for (std::int64_t i = 0; i < blk.rows; ++i) {
          float* dq = p.dq + (blk.first + i) * q_row + h * dim;
          for (std::int64_t d = 0; d < dim; ++d) dq[d] = p.scale * acc[static_cast<std::size_t>(i * dim + d)];
        }
      }
    }
  }

  // Pass 2: dK and dV, one (key block, kv head) per work item, gathering over the later query rows of its
  // sequence and the query heads of its group.
#pragma omp parallel if (parallel)
  {
    std::vector<float> scores(kTile), dprob(kTile);
    std::vector<float> dk_acc(static_cast<std::size_t>(kBlock * dim)), dv_acc(dk_acc.size());
#pragma omp for collapse(2) schedule(dynamic, 1)
    for (std::int64_t b = 0; b < blocks; ++b) {
      for (std::int64_t g = 0; g < p.kv_heads; ++g) {
        const Block& blk = layout.blocks[static_cast<std::size_t>(b)];  // the most query rows first
        std::fill(dk_acc.begin(), dk_acc.end(), 0.0f);
        std::fill(dv_acc.begin(), dv_acc.end(), 0.0f);
        for (std::int64_t query0 = blk.first; query0 < blk.seq_end; query0 += kBlock) {
          const std::int64_t rows = std::min(kBlock, blk.seq_end - query0);
          for (std::int64_t h = g * group; h < (g + 1) * group; ++h) {
            const float* q = p.q + query0 * q_row + h * dim;
            const float* dout = p.dout + query0 * q_row + h * dim;
            tile_product(q, q_row, rows, kt.data() + g * dim * ld + blk.first, ld, dim, scores.data());
            tile_product(dout, q_row, rows, vt.data() + g * dim * ld + blk.first, ld, dim, dprob.data());
            probabilities(query0, rows, blk.first, h, scores.data(), dprob.data());
            // dV[j] += sum_i P[i][j] dO[i], dK[j] += sum_i dS[i][j] Q[i]: the tiles read transposed.
            tile_accumulate(scores.data(), 1, kBlock, blk.rows, rows, dout, q_row, dim, dv_acc.data(), dim);
            tile_accumulate(dprob.data(), 1, kBlock, blk.rows, rows, q, q_row, dim, dk_acc.data(), dim);
          }
        }
        for (std::int64_t j = 0; j < blk.rows; ++j) {
          float* dk = p.dk + (blk.first + j) * kv_row + g * dim;
          float* dv = p.dv + (blk.first + j) * kv_row + g * dim;
          for (std::int64_t d = 0; d < dim; ++d) {
            dk[d] = p.scale * dk_acc[static_cast<std::size_t>(j * dim + d)];
            dv[d] = dv_acc[static_cast<std::size_t>(j * dim + d)];
          }
        }
      }
    }
  }
}

}  // namespace slearn::cpu
