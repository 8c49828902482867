// The vocabulary-parallel loss, greedy pick and top-k sample (design and proofs in vocab_parallel.hpp).
// Every call opens with one int64 allgather of a block per rank: a header (the rank's shard, its row count,
// a fingerprint of the arguments that must agree, whether its own arguments were sound) and the call's data.
// The checks then run on the same gathered bytes on every rank, so they throw on every rank or on none; the
// data needs no second exchange for greedy and sampling. Float logits travel as their bit patterns, which
// keeps NaN, -0 and every id exact (a float could carry an id exactly only below 2^24).
#include "dist/vocab_parallel.hpp"

#include <algorithm>
#include <bit>
#include <cmath>
#include <limits>
#include <numeric>
#include <string>
#include <vector>

#include "slearn/error.hpp"
#include "slearn/mix64.hpp"

namespace slearn {
namespace {

// The header of each rank's block; the call's data follows it.
enum HeaderField { kLength, kSound, kFirst, kCount, kVocab, kRows, kFingerprint, kHeaderSize };

std::int64_t float_bits(float x) { return static_cast<std::int64_t>(std::bit_cast<std::uint32_t>(x)); }
float bits_float(std::int64_t bits) { return std::bit_cast<float>(static_cast<std::uint32_t>(bits)); }

// A hash of the arguments every rank must share (targets, options, streams), folded one value at a time.
std::uint64_t fold(std::uint64_t hash, std::uint64_t value) {
  return mix64(hash ^ mix64(value + 0x9e3779b97f4a7c15ull));
}

// What is wrong with this rank's own arguments ("" when nothing): a shard inside [0, vocab) and logits that
// fill [rows, count].
std::string shard_error(const VocabShard& shard, std::size_t logits, std::int64_t rows) {
  const std::string where = "shard [" + std::to_string(shard.first) + ", +" + std::to_string(shard.count) +
                            ") of a vocabulary of " + std::to_string(shard.vocab);
  if (shard.vocab < 1 || shard.vocab > std::numeric_limits<TokenId>::max())
    return where + ": the vocabulary must have 1 to 2^31 - 1 tokens";
  if (shard.first < 0 || shard.count < 0 || shard.count > shard.vocab - shard.first)
    return where + ": the shard is not inside the vocabulary";
  if (logits != static_cast<std::size_t>(rows * shard.count))
    return where + ": " + std::to_string(logits) + " logits for " + std::to_string(rows) + " rows of " +
           std::to_string(shard.count);
  return "";
}

// One rank's block of the gather.
struct RankBlock {
  int rank = 0;
  std::int64_t first = 0, count = 0;
  std::span<const std::int64_t> data;
};

struct Gathered {
  std::vector<std::int64_t> storage;
  std::vector<RankBlock> by_first;  // the blocks in vocabulary order (ascending first)
};

// A block's header with room for the data the caller appends.
std::vector<std::int64_t> start_block(const VocabShard& shard, std::int64_t rows, std::uint64_t fingerprint) {
  std::vector<std::int64_t> block(kHeaderSize, 0);
  block[kFirst] = shard.first;
  block[kCount] = shard.count;
  block[kVocab] = shard.vocab;
  block[kRows] = rows;
  block[kFingerprint] = static_cast<std::int64_t>(fingerprint);
  return block;
}

// Gathers every rank's block and checks, identically on every rank, that all were sound, that they agree on
// rows, vocab and fingerprint, and that their shards tile [0, vocab). A rank with `local_error` sends no data
// and throws it; the others throw an Error naming that rank.
Gathered gather_checked(Communicator& group, const std::string& what, std::vector<std::int64_t> block,
                        const std::string& local_error) {
  if (!local_error.empty()) block.resize(kHeaderSize);
  block[kSound] = local_error.empty() ? 1 : 0;
  block[kLength] = static_cast<std::int64_t>(block.size());
  Gathered g;
  g.storage = group.allgather(std::span<const std::int64_t>(block));

  const std::span<const std::int64_t> all(g.storage);
  std::vector<std::span<const std::int64_t>> headers;
  std::size_t at = 0;
  for (int r = 0; r < group.size(); ++r) {
    const std::int64_t length = at + kHeaderSize <= all.size() ? all[at + kLength] : 0;
    if (length < kHeaderSize || static_cast<std::size_t>(length) > all.size() - at)
      throw Error(what + ": the gathered block of rank " + std::to_string(r) +
                  " does not parse (do all ranks of the tensor group run the same slearn?)");
    const auto block_of_r = all.subspan(at, static_cast<std::size_t>(length));
    headers.push_back(block_of_r);
    g.by_first.push_back({r, block_of_r[kFirst], block_of_r[kCount], block_of_r.subspan(kHeaderSize)});
    at += static_cast<std::size_t>(length);
  }
  if (!local_error.empty()) throw Error(what + ": rank " + std::to_string(group.rank()) + ": " + local_error);
  for (int r = 0; r < group.size(); ++r)
    if (headers[static_cast<std::size_t>(r)][kSound] != 1)
      throw Error(what + ": rank " + std::to_string(r) + " of the tensor group was called with bad arguments "
                  "(its own error names them)");
  const auto& h0 = headers.front();
  for (int r = 1; r < group.size(); ++r) {
    const auto& h = headers[static_cast<std::size_t>(r)];
    auto differs = [&](const char* name, HeaderField field) {
      if (h[field] != h0[field])
        throw Error(what + ": rank " + std::to_string(r) + " was called with " + name + " " +
                    std::to_string(h[field]) + ", rank 0 with " + std::to_string(h0[field]) +
                    " (every rank of the tensor group must pass the same)");
    };
    differs("rows", kRows);
    differs("vocab", kVocab);
    if (h[kFingerprint] != h0[kFingerprint])
      throw Error(what + ": rank " + std::to_string(r) + " was called with other targets, options, streams or "
                  "steps than rank 0 (every rank of the tensor group must pass the same)");
  }

  std::stable_sort(g.by_first.begin(), g.by_first.end(),
                   [](const RankBlock& a, const RankBlock& b) { return a.first < b.first; });
  std::int64_t next = 0;
  for (const RankBlock& b : g.by_first) {
    if (b.first != next)
      throw Error(what + ": the shards do not tile the vocabulary: rank " + std::to_string(b.rank) +
                  " starts at " + std::to_string(b.first) + " where " + std::to_string(next) + " was due");
    next += b.count;
  }
  if (next != h0[kVocab])
    throw Error(what + ": the shards cover " + std::to_string(next) + " of the " + std::to_string(h0[kVocab]) +
                " tokens");
  return g;
}

void expect_data_size(const std::string& what, const RankBlock& b, std::size_t size) {
  if (b.data.size() != size)
    throw Error(what + ": rank " + std::to_string(b.rank) + " sent " + std::to_string(b.data.size()) +
                " values where " + std::to_string(size) + " were due");
}

// The greedy pick once the per-row streams (sampling's arguments) are checked: `fingerprint` carries them.
void greedy(std::span<const float> local_logits, const VocabShard& shard, std::span<TokenId> out,
            Communicator& group, const std::string& what, std::uint64_t fingerprint, std::string local_error) {
  const auto rows = static_cast<std::int64_t>(out.size());
  if (local_error.empty()) local_error = shard_error(shard, local_logits.size(), rows);
  std::vector<std::int64_t> block = start_block(shard, rows, fingerprint);
  if (local_error.empty()) {
    // Per row: this shard's first token of the order (bits, id), or its first NaN (bits, id); id -1 when
    // the shard is empty.
    block.reserve(kHeaderSize + 2 * out.size());
    for (std::int64_t r = 0; r < rows; ++r) {
      const std::span<const float> row = local_logits.subspan(static_cast<std::size_t>(r * shard.count),
                                                              static_cast<std::size_t>(shard.count));
      std::int64_t best = -1;
      for (std::size_t c = 0; c < row.size(); ++c) {
        if (std::isnan(row[c])) {
          best = static_cast<std::int64_t>(c);
          break;
        }
        if (best < 0 || row[c] > row[static_cast<std::size_t>(best)]) best = static_cast<std::int64_t>(c);
      }
      block.push_back(best < 0 ? 0 : float_bits(row[static_cast<std::size_t>(best)]));
      block.push_back(best < 0 ? -1 : shard.first + best);
    }
  }
  const Gathered g = gather_checked(group, what, std::move(block), local_error);
  for (const RankBlock& b : g.by_first) expect_data_size(what, b, 2 * out.size());
  for (std::int64_t r = 0; r < rows; ++r) {
    const auto i = static_cast<std::size_t>(2 * r);
    bool have = false;
    float best_value = 0;
    std::int64_t best_id = 0;
    // In vocabulary order: a strictly greater value wins, so ties keep the lowest id.
    for (const RankBlock& b : g.by_first) {
      if (b.data[i + 1] < 0) continue;
      const float v = bits_float(b.data[i]);
      if (std::isnan(v))
        throw Error(what + ": logit " + std::to_string(b.data[i + 1]) + " of row " + std::to_string(r) +
                    " is NaN");
      if (!have || v > best_value) {
        have = true;
        best_value = v;
        best_id = b.data[i + 1];
      }
    }
    out[static_cast<std::size_t>(r)] = static_cast<TokenId>(best_id);
  }
}

}  // namespace

BatchLossParallel vocab_parallel_cross_entropy(std::span<const float> local_logits, const VocabShard& shard,
                                               std::span<const std::int32_t> targets, float grad_scale,
                                               std::span<float> local_grad, Communicator& group) {
  const std::string what = "vocab_parallel_cross_entropy";
  const auto rows = static_cast<std::int64_t>(targets.size());
  std::string local_error = shard_error(shard, local_logits.size(), rows);
  if (local_error.empty() && !local_grad.empty() && local_grad.size() != local_logits.size())
    local_error = std::to_string(local_grad.size()) + " gradient places for " + std::to_string(local_logits.size()) +
                  " logits";
  std::vector<std::int64_t> counted_rows;  // rows with a target, in order (the same on every rank)
  std::uint64_t fingerprint = 0;
  for (std::int64_t r = 0; r < rows; ++r) {
    const std::int32_t target = targets[static_cast<std::size_t>(r)];
    fingerprint = fold(fingerprint, static_cast<std::uint32_t>(target));
    if (target >= 0) counted_rows.push_back(r);
  }
  const auto counted = static_cast<std::int64_t>(counted_rows.size());
  const auto local_row = [&](std::int64_t r) {
    return local_logits.subspan(static_cast<std::size_t>(r * shard.count), static_cast<std::size_t>(shard.count));
  };

  // 1. Each counted row's local max (-inf on an empty shard), gathered with the checks; the max of the
  //    maxima is the row's max, exactly. std::max skips NaN as the kernel's does; a NaN still poisons the sum.
  std::vector<std::int64_t> block = start_block(shard, rows, fingerprint);
  if (local_error.empty())
    for (const std::int64_t r : counted_rows) {
      float m = -INFINITY;
      for (const float x : local_row(r)) m = std::max(m, x);
      block.push_back(float_bits(m));
    }
  const Gathered g = gather_checked(group, what, std::move(block), local_error);
  for (const RankBlock& b : g.by_first) expect_data_size(what, b, counted_rows.size());
  for (const std::int64_t r : counted_rows)
    if (targets[static_cast<std::size_t>(r)] >= shard.vocab)
      throw Error(what + ": target " + std::to_string(targets[static_cast<std::size_t>(r)]) + " of row " +
                  std::to_string(r) + " is outside the vocabulary of " + std::to_string(shard.vocab));
  if (!local_grad.empty()) std::fill(local_grad.begin(), local_grad.end(), 0.0f);  // skipped rows keep the zero
  if (counted == 0) return {};
  std::vector<float> row_max(counted_rows.size(), -INFINITY);
  for (const RankBlock& b : g.by_first)
    for (std::size_t i = 0; i < row_max.size(); ++i) row_max[i] = std::max(row_max[i], bits_float(b.data[i]));

  // 2. One double sum: [0, counted) the sums of exp(x - max) (exp in float as the kernel takes it, summed in
  //    double), [counted, 2 counted) the target logits, which only their owner adds.
  std::vector<double> sums(static_cast<std::size_t>(2 * counted), 0.0);
  for (std::size_t i = 0; i < counted_rows.size(); ++i) {
    const std::int64_t r = counted_rows[i];
    const std::span<const float> row = local_row(r);
    float* exps = local_grad.empty() ? nullptr : local_grad.data() + r * shard.count;  // kept for the gradient
    double total = 0.0;
    for (std::size_t c = 0; c < row.size(); ++c) {
      const float e = std::exp(row[c] - row_max[i]);
      if (exps != nullptr) exps[c] = e;
      total += static_cast<double>(e);
    }
    sums[i] = total;
    const std::int64_t target = targets[static_cast<std::size_t>(r)] - shard.first;
    if (target >= 0 && target < shard.count)
      sums[counted_rows.size() + i] = static_cast<double>(row[static_cast<std::size_t>(target)]);
  }
  group.allreduce_sum(std::span<double>(sums));

  // 3. The loss (rows summed in order, as the kernel does) and this slice of softmax - onehot.
  BatchLossParallel result;
  result.counted = counted;
  for (std::size_t i = 0; i < counted_rows.size(); ++i) {
    const double total = sums[i];
    result.loss_sum += static_cast<double>(row_max[i]) + std::log(total) - sums[counted_rows.size() + i];
    if (local_grad.empty()) continue;
    const std::int64_t r = counted_rows[i];
    float* grad = local_grad.data() + r * shard.count;
    const auto factor = static_cast<float>(static_cast<double>(grad_scale) / total);
    for (std::int64_t c = 0; c < shard.count; ++c) grad[c] *= factor;
    const std::int64_t target = targets[static_cast<std::size_t>(r)] - shard.first;
    if (target >= 0 && target < shard.count) grad[target] -= grad_scale;
  }
  return result;
}

void vocab_parallel_greedy(std::span<const float> local_logits, const VocabShard& shard, std::span<TokenId> out,
                           Communicator& group) {
  greedy(local_logits, shard, out, group, "vocab_parallel_greedy", 0, "");
}

void vocab_parallel_sample(std::span<const float> local_logits, const VocabShard& shard,
                           const SamplingOptions& options, std::span<const std::uint64_t> streams,
                           std::span<const std::uint64_t> steps, std::span<TokenId> out, Communicator& group) {
  const std::string what = "vocab_parallel_sample";
  // The options are the same on every rank (the fingerprint checks it), so these throw on every rank alike
  // before any collective.
  check_sampling_options(options);
  if (options.temperature > 0 && options.top_k == 0)
    throw InputError(what + ": sampling with top_k 0 needs every token's weight summed in id order, which "
                     "no rank of a vocabulary-parallel head holds; set top_k (top-p then applies within it)");
  const auto rows = static_cast<std::int64_t>(out.size());
  std::string local_error;
  if (streams.size() != out.size() || steps.size() != out.size())
    local_error = std::to_string(streams.size()) + " streams and " + std::to_string(steps.size()) + " steps for " +
                  std::to_string(out.size()) + " rows";
  std::uint64_t fingerprint = fold(0, std::bit_cast<std::uint64_t>(options.temperature));
  fingerprint = fold(fingerprint, static_cast<std::uint64_t>(options.top_k));
  fingerprint = fold(fingerprint, std::bit_cast<std::uint64_t>(options.top_p));
  fingerprint = fold(fingerprint, options.seed);
  if (local_error.empty())
    for (std::size_t r = 0; r < out.size(); ++r) fingerprint = fold(fold(fingerprint, streams[r]), steps[r]);
  if (options.temperature == 0.0) {
    greedy(local_logits, shard, out, group, what, fingerprint, local_error);
    return;
  }
  if (local_error.empty()) local_error = shard_error(shard, local_logits.size(), rows);

  // Per row: a header, n >= 0 candidates or -(1 + id) for a row whose first NaN is `id`; then n (id, bits)
  // pairs in id order: every local token whose logit is >= the shard's k-th of the order.
  std::vector<std::int64_t> block = start_block(shard, rows, fingerprint);
  if (local_error.empty()) {
    const auto k = static_cast<std::size_t>(std::min<std::int64_t>(options.top_k, shard.count));
    std::vector<std::int32_t> order;
    for (std::int64_t r = 0; r < rows; ++r) {
      const std::span<const float> row = local_logits.subspan(static_cast<std::size_t>(r * shard.count),
                                                              static_cast<std::size_t>(shard.count));
      const auto nan = std::find_if(row.begin(), row.end(), [](float x) { return std::isnan(x); });
      if (nan != row.end()) {
        block.push_back(-1 - (shard.first + (nan - row.begin())));
        continue;
      }
      float kth = -INFINITY;
      if (k > 0 && k < row.size()) {
        order.resize(row.size());
        std::iota(order.begin(), order.end(), 0);
        std::nth_element(order.begin(), order.begin() + static_cast<std::ptrdiff_t>(k - 1), order.end(),
                         [&](std::int32_t a, std::int32_t b) {
                           const float la = row[static_cast<std::size_t>(a)], lb = row[static_cast<std::size_t>(b)];
                           return la > lb || (la == lb && a < b);
                         });
        kth = row[static_cast<std::size_t>(order[k - 1])];
      }
      const std::size_t header = block.size();
      block.push_back(0);
      for (std::size_t c = 0; c < row.size(); ++c)
        if (row[c] >= kth) {
          block.push_back(shard.first + static_cast<std::int64_t>(c));
          block.push_back(float_bits(row[c]));
        }
      block[header] = static_cast<std::int64_t>((block.size() - header - 1) / 2);
    }
  }
  const Gathered g = gather_checked(group, what, std::move(block), local_error);

  std::vector<std::size_t> cursor(g.by_first.size(), 0);  // each rank's read position in its data
  std::vector<float> values;
  std::vector<std::int64_t> ids;
  for (std::int64_t r = 0; r < rows; ++r) {
    values.clear();
    ids.clear();
    for (std::size_t b = 0; b < g.by_first.size(); ++b) {
      const RankBlock& rb = g.by_first[b];
      std::size_t& at = cursor[b];
      const auto ends_early = [&] {
        return Error(what + ": the block of rank " + std::to_string(rb.rank) + " ends within row " + std::to_string(r));
      };
      if (at >= rb.data.size()) throw ends_early();
      const std::int64_t n = rb.data[at++];
      if (n < 0) throw Error(what + ": logit " + std::to_string(-1 - n) + " of row " + std::to_string(r) + " is NaN");
      if (static_cast<std::uint64_t>(n) > (rb.data.size() - at) / 2) throw ends_early();
      for (std::int64_t j = 0; j < n; ++j, at += 2) {
        ids.push_back(rb.data[at]);
        values.push_back(bits_float(rb.data[at + 1]));
      }
    }
    // The blocks are in vocabulary order and each lists its candidates by id, so `values` is in id order.
    const TokenId pick = sample_token(values, options, streams[static_cast<std::size_t>(r)],
                                      steps[static_cast<std::size_t>(r)]);
    out[static_cast<std::size_t>(r)] = static_cast<TokenId>(ids[static_cast<std::size_t>(pick)]);
  }
  for (std::size_t b = 0; b < g.by_first.size(); ++b) expect_data_size(what, g.by_first[b], cursor[b]);
}

}  // namespace slearn
