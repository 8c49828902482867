// The vocabulary-parallel LM head's collectives: each of the T ranks of a tensor group holds the logits of its
// own slice of the vocabulary, [first, first + count), and no rank ever holds a full row. The loss, the greedy
// token and a top-k sample are computed from what the ranks exchange about their slices:
//
//   cross-entropy  the row max (exact: the per-rank maxima gathered, the max taken locally), then the sum of
//                  exp(x - max) and the target's logit (its owner's, the others add 0) in one double sum;
//   greedy         each rank's best (logit, id) per row, gathered; the best of those, lowest id on ties;
//   top-k sample   each rank's local candidates per row (its k best and every token tied with its k-th),
//                  gathered in id order; sample_token on that set, the same on every rank.
//
// Why the top-k sample equals sample_token on the full row, bit for bit: let g be the k-th logit of the full
// row's order. A shard's k-th logit is <= g (its tokens are a subset of the row), so every full-row candidate
// (logit >= g) is among its shard's local candidates, and the gathered set S holds all of them: the k best
// tokens of the row are in S, so S's k-th logit is g too, and sample_token on S keeps exactly the full row's
// candidates. S is laid out in id order, so ties break the same way (the order is logit, then id), the
// candidates' total is summed over the same tokens in the same order, the max (hence every weight) is the
// same, and the top-p walk and the draw see the same sequence: the same bits, the same token. Top-p without
// top-k (top_k 0) cannot be reproduced this way: the nucleus threshold needs the total weight of the whole
// vocabulary summed in id order, which only a rank holding every logit can add in that order; such options
// are refused (InputError) rather than sampled from a sum whose rounding differs.
//
// Every rank must call with the same rows, targets (or options, streams and steps) and vocab, and the shards
// must tile [0, vocab) (uneven and empty shards are fine; the caller decides them). Each call starts with one
// gather that carries every rank's shard and a fingerprint of its shared arguments along with its data, so an
// argument that is wrong on one rank throws Error on every rank instead of leaving the others waiting in the
// next collective. Collectives per call: greedy and sample 1 (an int64 allgather), cross-entropy 2 (that
// gather with the row maxima, then one double sum of 2 values per counted row), whatever the row count.
#pragma once

#include <cstdint>
#include <span>

#include "slearn/communicator.hpp"
#include "slearn/sampling.hpp"

namespace slearn {

// This rank's slice of the vocabulary: ids [first, first + count) of `vocab`.
struct VocabShard {
  std::int64_t first = 0, count = 0, vocab = 0;
};

struct BatchLossParallel {
  double loss_sum = 0;       // summed cross-entropy over the rows with a target (the same on every rank)
  std::int64_t counted = 0;  // rows with a target (>= 0)
};

// The cross-entropy of rows whose logits are split over `group`: the sum over rows with target >= 0 of
// logsumexp(row) - row[target], as the CPU kernel computes it (exp in float, sums in double; negative targets
// are skipped, a target >= vocab is an Error). local_logits is [rows, shard.count] with rows = targets.size().
// When local_grad is not empty ([rows, shard.count]) it receives this slice of grad_scale * (softmax - onehot)
// for counted rows and 0 for skipped ones.
BatchLossParallel vocab_parallel_cross_entropy(std::span<const float> local_logits, const VocabShard& shard,
                                               std::span<const std::int32_t> targets, float grad_scale,
                                               std::span<float> local_grad, Communicator& group);

// out[r] = the argmax of row r over the whole vocabulary, lowest id on ties, as sample_token's greedy picks
// it (-0 equals +0; a row of -inf gives its lowest id); a NaN anywhere in a row throws Error on every rank.
// local_logits is [out.size(), shard.count]. Every rank ends with the same ids.
void vocab_parallel_greedy(std::span<const float> local_logits, const VocabShard& shard, std::span<TokenId> out,
                           Communicator& group);

// out[r] = sample_token(full row r, options, streams[r], steps[r]), without a full row on any rank (see the
// top of this file). Temperature 0 is vocab_parallel_greedy. InputError for bad options and for sampling
// with top_k 0 (every token a candidate: see above); top_k >= vocab is exact but gathers every logit. Each
// rank sends its k best per row plus the tokens tied with its k-th, so a row with many ties sends more.
void vocab_parallel_sample(std::span<const float> local_logits, const VocabShard& shard,
                           const SamplingOptions& options, std::span<const std::uint64_t> streams,
                           std::span<const std::uint64_t> steps, std::span<TokenId> out, Communicator& group);

}  // namespace slearn
