// The sampler of slearn/sampling.hpp on the GPU, without sorting: one block of 1024 threads per row finds
// each threshold the rules need by a radix select over the order, reading the row from global memory (L2)
// a few times instead of sorting 10^5 logits.
//
// The order (logit highest first, then lower id) becomes unsigned keys: a float's bits, flipped so that
// unsigned comparison orders like the floats (-0 counted as +0); higher key = earlier, equal keys by id. A
// select walks the key's four 8-bit digits from the top: a pass over the row builds a 256-bin histogram of
// the tokens that match the digits chosen so far (their count and the sum of their weights, in double),
// warp 0 scans the bins in the order and picks the first digit at which the running total (of the levels
// above plus this level's bins) reaches the target. After four levels the key is known exactly: a group of
// tied tokens, all of the same weight w, whose first j (in id order) are needed, j found by arithmetic from
// the remaining target and w; the j-th id of the group is found by one more pass in id order.
//   greedy:  block argmax over the keys, lowest id on ties (the same pass finds NaN rows: id -1).
//   top-k:   a count-weighted select of the k-th key; the candidates are the keys >= it (ties all kept).
//   total:   the candidates' level-0 weight histogram; it is also level 0 of both selects below.
//   top-p:   a weight-weighted select of top_p * total (reach: >=): the cut, the last kept token.
//   draw:    a weight-weighted select of u * kept (reach: >) over the candidates, clamped to the cut. Its
//            levels reuse the top-p select's histograms while its digits follow the cut's, so typically
//            only the levels after it branches off cost a pass.
// A pick only lands on a bin with tokens and weight; when rounding leaves the target out of reach it takes
// the last non-empty bin (so the last token), like the CPU's "else the last kept".
//
// Determinism: counts are integers (shared atomics, order-free); weights go into per-warp histograms,
// summed within a warp by the group leader in lane order (__match_any_sync groups the lanes of one digit)
// and across warps in warp order, so a row's result is a function of the row alone. The sums differ from
// the CPU's (id order, sorted order) by rounding only, which moves a choice only at a knife edge.
// Cost (not measured yet): full passes over the row: 2 (argmax, level 0) + 4 (top-k) + 3 (top-p) + up to 3
// (draw), plus up to two partial ones for the ids; only the level-0 passes see heavy digit groups.
#include <climits>
#include <cmath>
#include <string>

#include "cuda/device_utils.cuh"
#include "cuda/sampling.hpp"
#include "slearn/sampling.hpp"

namespace slearn::cuda {
namespace {

constexpr int kRowThreads = 1024;
constexpr int kRowWarps = kRowThreads / 32;
constexpr int kBins = 256;  // 8-bit digits
constexpr int kLevels = 4;  // 32-bit keys
constexpr std::int64_t kMaxVocab = (std::int64_t{1} << 31) - 2048;  // int indices, with room for a last chunk

struct SampleShared {
  double warp_mass[kRowWarps][kBins];  // each warp's own weight histogram of the current pass
  double stage[kRowWarps][32];         // a warp's 32 weights, for the leaders of its digit groups
  double level_mass[kLevels][kBins];   // per level: weight (count, for top-k) per bin, kept for reuse
  unsigned level_count[kLevels][kBins];
  unsigned best_key[kRowWarps];
  int best_id[kRowWarps];
  int warp_matches[kRowWarps];
  double pick_above, total;
  int pick_digit, pick_reached, found_id;
  unsigned pick_count;
};

struct RowView {
  const float* logits;
  int vocab;
  double inv_t, top;  // sample_weight's arguments
};

__device__ __forceinline__ unsigned order_key(float x) {
  unsigned u = __float_as_uint(x);
  if (u == 0x80000000u) u = 0;  // -0 ties with +0, as the floats compare
  return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}
__device__ __forceinline__ float key_logit(unsigned key) {
  return __uint_as_float((key & 0x80000000u) ? (key & 0x7fffffffu) : ~key);
}
// The bits above level `level`'s digit (none at level 0).
__device__ __forceinline__ unsigned high_mask(int level) { return level == 0 ? 0u : ~0u << (32 - 8 * level); }

__device__ __forceinline__ double warp_sum_double(double v) {
  for (int offset = 16; offset > 0; offset /= 2) v += __shfl_xor_sync(kFullMask, v, offset);
  return v;
}

// Histogram of level `level` over the tokens with key >= min_key whose higher digits equal prefix's: counts
// in level_count, and in level_mass the weights (kWeighted) or the counts.
template <bool kWeighted>
__device__ void build_level(SampleShared& s, const RowView& r, int level, unsigned prefix, unsigned min_key) {
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  for (int d = threadIdx.x; d < kBins; d += kRowThreads) s.level_count[level][d] = 0;
  if (kWeighted)
    for (int d = lane; d < kBins; d += 32) s.warp_mass[warp][d] = 0.0;
  __syncthreads();
  const int shift = 24 - 8 * level;
  const unsigned high = high_mask(level);
  for (int base = 0; base < r.vocab; base += kRowThreads) {  // the same trip count for every thread
    const int i = base + static_cast<int>(threadIdx.x);
    int digit = -1;
    double w = 0.0;
    if (i < r.vocab) {
      const float x = r.logits[i];
      const unsigned key = order_key(x);
      if (key >= min_key && ((key ^ prefix) & high) == 0) {
        digit = static_cast<int>((key >> shift) & 0xffu);
        if (kWeighted) w = sample_weight(x, r.inv_t, r.top);
      }
    }
    if (!__any_sync(kFullMask, digit >= 0)) continue;
    const unsigned group = __match_any_sync(kFullMask, digit);
    const bool leader = digit >= 0 && lane == __ffs(group) - 1;
    if (kWeighted) {
      if (group == kFullMask) {  // the whole warp in one bin (common at level 0): a shuffle tree
        w = warp_sum_double(w);
        if (lane == 0) s.warp_mass[warp][digit] += w;
      } else {
        s.stage[warp][lane] = w;
        __syncwarp();
        if (leader) {
          double sum = 0.0;
          for (unsigned m = group; m != 0; m &= m - 1) sum += s.stage[warp][__ffs(m) - 1];
          s.warp_mass[warp][digit] += sum;  // one leader per digit in this warp: no race
        }
        __syncwarp();
      }
    }
    if (leader) atomicAdd(&s.level_count[level][digit], static_cast<unsigned>(__popc(group)));
  }
  __syncthreads();
  for (int d = threadIdx.x; d < kBins; d += kRowThreads) {
    double m = 0.0;
    if (kWeighted) {
      for (int w = 0; w < kRowWarps; ++w) m += s.warp_mass[w][d];
    } else {
      m = static_cast<double>(s.level_count[level][d]);
    }
    s.level_mass[level][d] = m;
  }
  __syncthreads();
}

struct Pick {
  int digit;
  double above;  // the weight (count) of the candidates before the chosen bin, this level's and above's
  unsigned count;
  bool reached;
};

// The first bin of level `level`, in the order, at which above + the running sum of the bins reaches the
// target (>= or, if strict, >), among bins with tokens and weight; else the last non-empty bin. Warp 0
// scans: lane l holds digits 255 - 8l down to 248 - 8l. Called by the whole block.
__device__ Pick pick_digit(SampleShared& s, int level, double above, double target, bool strict) {
  if (threadIdx.x < 32) {
    const int lane = threadIdx.x;
    const double* mass = s.level_mass[level];
    const unsigned* count = s.level_count[level];
    double lane_sum = 0.0;
    for (int k = 0; k < 8; ++k) lane_sum += mass[255 - 8 * lane - k];
    double inclusive = lane_sum;
    for (int offset = 1; offset < 32; offset *= 2) {
      const double t = __shfl_up_sync(kFullMask, inclusive, offset);
      if (lane >= offset) inclusive += t;
    }
    double exclusive = __shfl_up_sync(kFullMask, inclusive, 1);
    if (lane == 0) exclusive = 0.0;
    int hit = -1, last = -1;
    double hit_above = 0.0, last_above = 0.0, run = 0.0;
    for (int k = 0; k < 8; ++k) {
      const int d = 255 - 8 * lane - k;
      const double before = above + (exclusive + run);
      run += mass[d];
      if (count[d] == 0) continue;
      last = k;
      last_above = before;
      const double reach = above + (exclusive + run);
      if (hit < 0 && mass[d] > 0.0 && (strict ? reach > target : reach >= target)) {
        hit = k;
        hit_above = before;
      }
    }
    const unsigned hits = __ballot_sync(kFullMask, hit >= 0);
    const unsigned nonempty = __ballot_sync(kFullMask, last >= 0);
    // Some bin is non-empty: level 0 holds every candidate, a later level the chosen bin's tokens.
    const int winner = hits != 0 ? __ffs(hits) - 1 : (nonempty != 0 ? 31 - __clz(nonempty) : 0);
    const int k = __shfl_sync(kFullMask, hits != 0 ? hit : last, winner);
    const double a = __shfl_sync(kFullMask, hits != 0 ? hit_above : last_above, winner);
    if (lane == 0) {
      const int digit = 255 - 8 * winner - (k < 0 ? 0 : k);
      s.pick_digit = digit;
      s.pick_above = a;
      s.pick_count = count[digit];
      s.pick_reached = hits != 0;
    }
  }
  __syncthreads();
  const Pick pick{s.pick_digit, s.pick_above, s.pick_count, s.pick_reached != 0};
  __syncthreads();  // everyone has read the pick before a later one overwrites it
  return pick;
}

struct Selected {
  unsigned key;    // the tied group reached
  double above;    // the weight (count) of the candidates before the group
  unsigned count;  // the group's size
  bool reached;    // false when the target was out of reach (then the group is the last one)
};

// The radix select over the candidates (key >= min_key). Level L reuses the histogram left in level_mass[L]
// when L < reusable_levels and the digits chosen so far equal reusable_key's.
template <bool kWeighted>
__device__ Selected select_key(SampleShared& s, const RowView& r, unsigned min_key, double target, bool strict,
                               int reusable_levels, unsigned reusable_key) {
  unsigned prefix = 0;
  double above = 0.0;
  bool reached = true;
  unsigned count = 0;
  for (int level = 0; level < kLevels; ++level) {
    if (!(level < reusable_levels && ((prefix ^ reusable_key) & high_mask(level)) == 0))
      build_level<kWeighted>(s, r, level, prefix, min_key);
    const Pick pick = pick_digit(s, level, above, target, strict);
    prefix |= static_cast<unsigned>(pick.digit) << (24 - 8 * level);
    above = pick.above;
    count = pick.count;
    reached = reached && pick.reached;
  }
  return {prefix, above, count, reached};
}

// How many of a tied group (`count` tokens of weight w, after `above`) the sum needs to reach (>=) or, if
// strict, exceed (>) the target: at least 1, at most count.
__device__ unsigned tokens_to_reach(const Selected& g, double w, double target, bool strict) {
  if (!g.reached) return g.count;
  const double q = (target - g.above) / w;
  if (!(q < static_cast<double>(g.count))) return g.count;  // also w == 0 (q inf or NaN)
  const double j = strict ? floor(q) + 1.0 : ceil(q);
  return j < 1.0 ? 1u : static_cast<unsigned>(j);
}

// The nth (from 1) token in id order whose key is `key`; one pass that stops at the chunk holding it.
__device__ int nth_id_with_key(SampleShared& s, const RowView& r, unsigned key, unsigned nth) {
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  unsigned seen = 0;
  for (int base = 0; base < r.vocab; base += kRowThreads) {
    const int i = base + static_cast<int>(threadIdx.x);
    const bool match = i < r.vocab && order_key(r.logits[i]) == key;
    const unsigned in_chunk = static_cast<unsigned>(__syncthreads_count(match));
    if (seen + in_chunk < nth) {  // the same decision in every thread
      seen += in_chunk;
      continue;
    }
    const unsigned ballot = __ballot_sync(kFullMask, match);
    if (lane == 0) s.warp_matches[warp] = __popc(ballot);
    __syncthreads();
    unsigned rank = seen + static_cast<unsigned>(__popc(ballot & ((1u << lane) - 1u))) + 1u;
    for (int w = 0; w < warp; ++w) rank += static_cast<unsigned>(s.warp_matches[w]);
    if (match && rank == nth) s.found_id = i;
    __syncthreads();
    return s.found_id;
  }
  return -1;  // unreachable: nth never exceeds the group's size
}

__global__ void __launch_bounds__(kRowThreads) sample_rows_kernel(SampleRowsParams p) {
  extern __shared__ __align__(16) unsigned char shared_bytes[];
  SampleShared& s = *reinterpret_cast<SampleShared*>(shared_bytes);
  const std::int64_t row = blockIdx.x;
  RowView r{p.logits + row * p.vocab, static_cast<int>(p.vocab), 0.0, 0.0};
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  if (threadIdx.x == 0) s.found_id = -1;

  // The first token of the order (ids rise along a thread's elements: ">" keeps the lowest), and NaN.
  unsigned best = 0;  // below every non-NaN key
  int best_id = INT_MAX;
  bool nan = false;
  for (int i = threadIdx.x; i < r.vocab; i += kRowThreads) {
    const float x = r.logits[i];
    nan = nan || isnan(x);
    const unsigned key = order_key(x);
    if (!isnan(x) && key > best) {
      best = key;
      best_id = i;
    }
  }
  if (__syncthreads_or(nan)) {
    if (threadIdx.x == 0) p.out[row] = -1;
    return;
  }
  for (int offset = 16; offset > 0; offset /= 2) {
    const unsigned other = __shfl_xor_sync(kFullMask, best, offset);
    const int other_id = __shfl_xor_sync(kFullMask, best_id, offset);
    if (other > best || (other == best && other_id < best_id)) {
      best = other;
      best_id = other_id;
    }
  }
  if (lane == 0) {
    s.best_key[warp] = best;
    s.best_id[warp] = best_id;
  }
  __syncthreads();
  for (int w = 0; w < kRowWarps; ++w) {
    if (s.best_key[w] > best || (s.best_key[w] == best && s.best_id[w] < best_id)) {
      best = s.best_key[w];
      best_id = s.best_id[w];
    }
  }
  if (p.temperature == 0.0) {
    if (threadIdx.x == 0) p.out[row] = best_id;
    return;
  }
  r.inv_t = 1.0 / p.temperature;
  r.top = static_cast<double>(key_logit(best)) * r.inv_t;
  if (!isfinite(r.top)) {  // +inf logit, all -inf, or an overflowing scale: the T -> 0 limit
    if (threadIdx.x == 0) p.out[row] = best_id;
    return;
  }

  unsigned min_key = 0;  // every candidate's key is >= min_key
  if (p.top_k > 0 && p.top_k < p.vocab)
    min_key = select_key<false>(s, r, 0u, static_cast<double>(p.top_k), false, 0, 0u).key;

  build_level<true>(s, r, 0, 0u, min_key);
  if (threadIdx.x < 32) {
    double sum = 0.0;
    for (int k = 0; k < 8; ++k) sum += s.level_mass[0][255 - 8 * lane - k];
    sum = warp_sum_double(sum);
    if (lane == 0) s.total = sum;
  }
  __syncthreads();
  const double total = s.total;

  double kept = total;
  bool has_cut = false;
  unsigned cut_key = 0, cut_count = 0;
  int cut_id = -1;
  if (p.top_p < 1.0) {
    const double target = p.top_p * total;
    const Selected cut = select_key<true>(s, r, min_key, target, false, 1, 0u);
    const double w = sample_weight(key_logit(cut.key), r.inv_t, r.top);
    cut_count = tokens_to_reach(cut, w, target, false);
    cut_id = nth_id_with_key(s, r, cut.key, cut_count);
    cut_key = cut.key;
    has_cut = true;
    kept = cut.above + static_cast<double>(cut_count) * w;
  }

  const double u = sample_uniform(p.seed, p.streams[row], p.steps[row]) * kept;
  const Selected drawn = select_key<true>(s, r, min_key, u, true, has_cut ? kLevels : 1, cut_key);
  int id = cut_id;
  if (!has_cut || drawn.key > cut_key) {
    const double w = sample_weight(key_logit(drawn.key), r.inv_t, r.top);
    id = nth_id_with_key(s, r, drawn.key, tokens_to_reach(drawn, w, u, true));
  } else if (drawn.key == cut_key) {
    const unsigned j = tokens_to_reach(drawn, sample_weight(key_logit(drawn.key), r.inv_t, r.top), u, true);
    if (j < cut_count) id = nth_id_with_key(s, r, drawn.key, j);
  }
  if (threadIdx.x == 0) p.out[row] = id;
}

}  // namespace

std::size_t sample_rows_scratch_bytes(std::int64_t rows, std::int64_t vocab) {
  (void)rows, (void)vocab;
  return 0;
}

void launch_sample_rows(const SampleRowsParams& p) {
  if (p.rows == 0) return;
  if (p.rows < 0 || p.rows > 0x7fffffff)
    throw_error("sample_rows: " + std::to_string(p.rows) + " rows do not fit the launch grid");
  if (p.vocab < 1 || p.vocab >= kMaxVocab)
    throw_error("sample_rows: a vocabulary of " + std::to_string(p.vocab) + " is not supported");
  if (!(p.temperature >= 0.0) || !std::isfinite(p.temperature) || !(p.top_p > 0.0 && p.top_p <= 1.0) ||
      p.top_k < 0)
    throw_error("sample_rows: unchecked sampling options (check_sampling_options refuses them)");
  constexpr int shared = static_cast<int>(sizeof(SampleShared));
  CUDA_CHECK(cudaFuncSetAttribute(sample_rows_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, shared));
  sample_rows_kernel<<<static_cast<unsigned>(p.rows), kRowThreads, shared, p.stream>>>(p);
  CUDA_CHECK_LAUNCH();
}

}  // namespace slearn::cuda
