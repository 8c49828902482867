// The vocabulary-parallel LM head's collectives (src/dist/vocab_parallel.hpp) under mpirun at 1, 2 and 4
// ranks. Every rank builds the same global logits from a seed and takes its shard's columns; the tensor
// groups of every mesh that fits the world (T = 1, 2, 4), even, uneven and empty shards, and a vocabulary
// that no T divides. The loss and gradient are held to a double computation on the full rows and to the
// same function on one process; greedy and top-k sampling to sample_token on the full rows, id for id.
// Every rank makes the same calls in the same order (no ASSERT before a collective).
#include <gtest/gtest.h>

#include <bit>
#include <cmath>
#include <cstdint>
#include <limits>
#include <string>
#include <vector>

#include "dist/vocab_parallel.hpp"
#include "mpi_test_env.hpp"
#include "slearn/communicator.hpp"
#include "slearn/error.hpp"
#include "slearn/mesh.hpp"
#include "slearn/mix64.hpp"
#include "slearn/sampling.hpp"

namespace slearn {
namespace {

using mpi_tests::world;

constexpr std::int64_t kRows = 7;
constexpr float kInf = std::numeric_limits<float>::infinity();

// Logit (r, c) of the shared rows: uniform in [-4, 4), the same on every rank.
float logit_at(std::uint64_t seed, std::int64_t r, std::int64_t c) {
  const std::uint64_t cell = static_cast<std::uint64_t>(r) * 1000003u + static_cast<std::uint64_t>(c);
  const std::uint64_t bits = mix64(seed ^ mix64(cell));
  return static_cast<float>(static_cast<double>(bits >> 40) / 16777216.0 * 8.0 - 4.0);
}

std::vector<float> global_logits(std::uint64_t seed, std::int64_t rows, std::int64_t vocab) {
  std::vector<float> x(static_cast<std::size_t>(rows * vocab));
  for (std::int64_t r = 0; r < rows; ++r)
    for (std::int64_t c = 0; c < vocab; ++c) x[static_cast<std::size_t>(r * vocab + c)] = logit_at(seed, r, c);
  return x;
}

enum class Split { kEven, kUneven, kFirstEmpty };
const char* name_of(Split s) { return s == Split::kEven ? "even" : s == Split::kUneven ? "uneven" : "first-empty"; }

// Rank `rank`'s shard of `size`: even (floor boundaries), uneven (rank r weighs r + 1), or rank 0 empty and
// the others even.
VocabShard shard_of(Split split, int rank, int size, std::int64_t vocab) {
  auto boundary = [&](std::int64_t i) -> std::int64_t {
    const std::int64_t n = size;
    switch (split) {
      case Split::kEven: return vocab * i / n;
      case Split::kUneven: return vocab * (i * (i + 1) / 2) / (n * (n + 1) / 2);
      case Split::kFirstEmpty: return n == 1 ? vocab * i : i == 0 ? 0 : vocab * (i - 1) / (n - 1);
    }
    return 0;
  };
  const std::int64_t first = boundary(rank), end = boundary(rank + 1);
  return {first, end - first, vocab};
}

// The shard's columns of [rows, vocab].
std::vector<float> columns(const std::vector<float>& full, std::int64_t rows, const VocabShard& s) {
  std::vector<float> out(static_cast<std::size_t>(rows * s.count));
  for (std::int64_t r = 0; r < rows; ++r)
    for (std::int64_t c = 0; c < s.count; ++c)
      out[static_cast<std::size_t>(r * s.count + c)] = full[static_cast<std::size_t>(r * s.vocab + s.first + c)];
  return out;
}

// The loss and d(loss)/d(logits) of full rows, in double.
struct Reference {
  double loss = 0;
  std::int64_t counted = 0;
  std::vector<double> grad;
};

Reference reference(const std::vector<float>& full, std::int64_t vocab, const std::vector<std::int32_t>& targets,
                    double grad_scale) {
  Reference ref;
  ref.grad.assign(full.size(), 0.0);
  for (std::size_t r = 0; r < targets.size(); ++r) {
    if (targets[r] < 0) continue;
    const float* x = full.data() + r * static_cast<std::size_t>(vocab);
    double m = -INFINITY, total = 0;
    for (std::int64_t c = 0; c < vocab; ++c) m = std::max(m, static_cast<double>(x[c]));
    for (std::int64_t c = 0; c < vocab; ++c) total += std::exp(static_cast<double>(x[c]) - m);
    ref.loss += m + std::log(total) - static_cast<double>(x[targets[r]]);
    ++ref.counted;
    for (std::int64_t c = 0; c < vocab; ++c)
      ref.grad[r * static_cast<std::size_t>(vocab) + static_cast<std::size_t>(c)] =
          grad_scale * (std::exp(static_cast<double>(x[c]) - m) / total - (c == targets[r] ? 1.0 : 0.0));
  }
  return ref;
}

// Whether every rank of `group` holds the same int64 values.
bool same_on_every_rank(Communicator& group, const std::vector<std::int64_t>& values) {
  const std::vector<std::int64_t> all = group.allgather(std::span<const std::int64_t>(values));
  if (all.size() != values.size() * static_cast<std::size_t>(group.size())) return false;
  for (std::size_t i = 0; i < all.size(); ++i)
    if (all[i] != values[i % values.size()]) return false;
  return true;
}

// The meshes that fit the world, as in test_mesh.cpp.
std::vector<Mesh> meshes() {
  std::vector<Mesh> out;
  for (int tensor : {1, 2, 4})
    if (world().size() % tensor == 0) out.push_back(make_mesh(world(), tensor));
  return out;
}

TEST(VocabParallel, CrossEntropyMatchesTheFullRows) {
  const float grad_scale = 0.25f;
  for (const Mesh& mesh : meshes()) {
    Communicator& group = *mesh.tensor_group;
    for (const std::int64_t vocab : {std::int64_t{1000}, std::int64_t{1001}, std::int64_t{37}}) {
      std::vector<float> full = global_logits(17 + static_cast<std::uint64_t>(mesh.data_rank), kRows, vocab);
      // Row 3 far from 0, where exp without the max would overflow.
      for (std::int64_t c = 0; c < vocab; ++c) full[static_cast<std::size_t>(3 * vocab + c)] += 500.0f;

      for (const Split split : {Split::kEven, Split::kUneven, Split::kFirstEmpty}) {
        const std::string where = std::string("T ") + std::to_string(mesh.tensor) + ", vocab " +
                                  std::to_string(vocab) + ", " + name_of(split) + " shards";
        const VocabShard shard = shard_of(split, mesh.tensor_rank, mesh.tensor, vocab);
        // Rows 1 and 4 skipped; the others aim at the middle of shard 0, 1, ... in turn (an empty one's row at
        // the last token), so that every shard owns a target.
        std::vector<std::int32_t> targets(kRows, -100);
        int next_shard = 0;
        for (const std::int64_t r : {0, 2, 3, 5, 6}) {
          const VocabShard s = shard_of(split, next_shard++ % mesh.tensor, mesh.tensor, vocab);
          const std::int64_t target = s.count > 0 ? s.first + s.count / 2 : vocab - 1;
          targets[static_cast<std::size_t>(r)] = static_cast<std::int32_t>(target);
        }
        const Reference ref = reference(full, vocab, targets, grad_scale);
        // The same function on one process, on the whole vocabulary.
        auto single = make_single_process_communicator();
        std::vector<float> single_grad(full.size());
        const BatchLossParallel one =
            vocab_parallel_cross_entropy(full, {0, vocab, vocab}, targets, grad_scale, single_grad, *single);
        EXPECT_EQ(one.counted, ref.counted) << where;
        EXPECT_NEAR(one.loss_sum, ref.loss, 1e-6 * std::abs(ref.loss)) << where;

        const std::vector<float> local = columns(full, kRows, shard);
        if (shard.count > 0) {
          bool owns_a_target = false;
          for (const std::int32_t t : targets) owns_a_target |= t >= shard.first && t < shard.first + shard.count;
          EXPECT_TRUE(owns_a_target) << where << ": the test should put a target in every shard";
        }
        std::vector<float> grad(local.size(), 123.0f);  // overwritten everywhere, skipped rows with 0
        const BatchLossParallel loss = vocab_parallel_cross_entropy(local, shard, targets, grad_scale, grad, group);
        const BatchLossParallel loss_only = vocab_parallel_cross_entropy(local, shard, targets, grad_scale, {}, group);
        EXPECT_EQ(loss.counted, 5) << where;
        EXPECT_NEAR(loss.loss_sum, ref.loss, 1e-6 * std::abs(ref.loss)) << where;
        EXPECT_NEAR(loss.loss_sum, one.loss_sum, 1e-6 * std::abs(one.loss_sum)) << where;
        EXPECT_EQ(loss_only.loss_sum, loss.loss_sum) << where;
        double worst_ref = 0, worst_single = 0;
        for (std::int64_t r = 0; r < kRows; ++r)
          for (std::int64_t c = 0; c < shard.count; ++c) {
            const auto i = static_cast<std::size_t>(r * shard.count + c);
            const auto f = static_cast<std::size_t>(r * vocab + shard.first + c);
            worst_ref = std::max(worst_ref, std::abs(static_cast<double>(grad[i]) - ref.grad[f]));
            worst_single = std::max(worst_single, std::abs(static_cast<double>(grad[i] - single_grad[f])));
            if (targets[static_cast<std::size_t>(r)] < 0) {
              EXPECT_EQ(grad[i], 0.0f) << where << " row " << r;
            }
          }
        EXPECT_LE(worst_ref, 1e-6) << where;
        EXPECT_LE(worst_single, 1e-6) << where;
        EXPECT_TRUE(same_on_every_rank(group, {std::bit_cast<std::int64_t>(loss.loss_sum), loss.counted})) << where;
      }
    }
  }
}

TEST(VocabParallel, CrossEntropyWithoutTargetsIsZero) {
  Communicator& w = world();
  const std::int64_t vocab = 50;
  const VocabShard shard = shard_of(Split::kUneven, w.rank(), w.size(), vocab);
  const std::vector<float> local = columns(global_logits(3, 3, vocab), 3, shard);
  std::vector<float> grad(local.size(), 9.0f);
  const std::vector<std::int32_t> targets{-100, -1, -100};
  const BatchLossParallel loss = vocab_parallel_cross_entropy(local, shard, targets, 1.0f, grad, w);
  EXPECT_EQ(loss.counted, 0);
  EXPECT_EQ(loss.loss_sum, 0.0);
  for (const float g : grad) EXPECT_EQ(g, 0.0f);
}

// Each bad call throws on every rank (none is left waiting in a collective), and the next call works.
TEST(VocabParallel, BadArgumentsThrowOnEveryRank) {
  Communicator& w = world();
  const std::int64_t vocab = 40;
  const VocabShard shard = shard_of(Split::kEven, w.rank(), w.size(), vocab);
  const std::vector<float> full = global_logits(5, kRows, vocab);
  const std::vector<float> local = columns(full, kRows, shard);
  const std::vector<std::int32_t> targets{1, 2, 3, 4, 5, 6, 7};
  const bool last = w.rank() == w.size() - 1;

  // The last rank's logits are one short.
  const std::span<const float> short_on_last = std::span(local).first(local.size() - (last ? 1 : 0));
  EXPECT_THROW(vocab_parallel_cross_entropy(short_on_last, shard, targets, 1.0f, {}, w), Error);
  std::vector<TokenId> ids(kRows);
  EXPECT_THROW(vocab_parallel_greedy(short_on_last, shard, ids, w), Error);
  // A target outside the vocabulary.
  std::vector<std::int32_t> outside = targets;
  outside[4] = static_cast<std::int32_t>(vocab);
  EXPECT_THROW(vocab_parallel_cross_entropy(local, shard, outside, 1.0f, {}, w), Error);
  // Shards that do not tile the vocabulary: every rank claims it whole (at 1 rank that is a tiling).
  const std::vector<float> all_of_it = full;
  if (w.size() > 1) {
    EXPECT_THROW(vocab_parallel_greedy(all_of_it, {0, vocab, vocab}, ids, w), Error);
    // Targets that differ on the last rank.
    std::vector<std::int32_t> other = targets;
    if (last) other[0] = 9;
    try {
      vocab_parallel_cross_entropy(local, shard, other, 1.0f, {}, w);
      ADD_FAILURE() << "expected an Error";
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find("other targets"), std::string::npos) << e.what();
    }
  }
  // Then a sound call still agrees with one process.
  auto single = make_single_process_communicator();
  const BatchLossParallel one = vocab_parallel_cross_entropy(full, {0, vocab, vocab}, targets, 1.0f, {}, *single);
  const BatchLossParallel loss = vocab_parallel_cross_entropy(local, shard, targets, 1.0f, {}, w);
  EXPECT_NEAR(loss.loss_sum, one.loss_sum, 1e-6 * std::abs(one.loss_sum));
}

// Rows with ties across shards and the special values, then random rows.
std::vector<float> greedy_rows(std::uint64_t seed, std::int64_t vocab, std::int64_t boundary) {
  std::vector<float> x = global_logits(seed, kRows, vocab);
  auto at = [&](std::int64_t r, std::int64_t c) -> float& { return x[static_cast<std::size_t>(r * vocab + c)]; };
  for (std::int64_t c : {vocab - 1, vocab / 2, std::int64_t{3}}) at(0, c) = 5.0f;  // the lowest id, 3, wins
  for (std::int64_t c = 0; c < vocab; ++c) at(1, c) = -kInf;                     // every logit -inf: id 0
  at(2, vocab - 2) = kInf;                                                       // two +inf: vocab / 3
  at(2, vocab / 3) = kInf;
  for (std::int64_t c = 0; c < vocab; ++c) at(3, c) = -std::abs(at(3, c)) - 1.0f;  // -0 at 7 ties +0 later
  at(3, vocab - 3) = 0.0f;
  at(3, 7) = -0.0f;
  for (std::int64_t c = 0; c < vocab; ++c) at(4, c) = -kInf;  // one finite logit, in the last shard
  at(4, vocab - 1) = -1e30f;
  at(5, boundary - 1) = 10.0f;  // a tie on the two sides of a shard boundary: the lower
  at(5, boundary) = 10.0f;
  return x;
}

TEST(VocabParallel, GreedyMatchesSampleTokenAndAgreesOnEveryRank) {
  SamplingOptions greedy_options;  // temperature 0
  for (const Mesh& mesh : meshes()) {
    Communicator& group = *mesh.tensor_group;
    for (const std::int64_t vocab : {std::int64_t{1000}, std::int64_t{1001}, std::int64_t{37}})
      for (const Split split : {Split::kEven, Split::kUneven, Split::kFirstEmpty}) {
        const std::string where = std::string("T ") + std::to_string(mesh.tensor) + ", vocab " +
                                  std::to_string(vocab) + ", " + name_of(split) + " shards";
        const VocabShard shard = shard_of(split, mesh.tensor_rank, mesh.tensor, vocab);
        // The start of the last shard (of the middle one's when the first is empty and T is 2).
        std::int64_t boundary = shard_of(split, mesh.tensor - 1, mesh.tensor, vocab).first;
        if (boundary == 0) boundary = vocab / 2;
        const std::vector<float> full = greedy_rows(29 + static_cast<std::uint64_t>(mesh.data_rank), vocab, boundary);
        std::vector<TokenId> ids(kRows, -7);
        vocab_parallel_greedy(columns(full, kRows, shard), shard, ids, group);
        std::vector<std::int64_t> as_int64(ids.begin(), ids.end());
        EXPECT_TRUE(same_on_every_rank(group, as_int64)) << where;
        for (std::int64_t r = 0; r < kRows; ++r) {
          const std::span<const float> row(full.data() + r * vocab, static_cast<std::size_t>(vocab));
          EXPECT_EQ(ids[static_cast<std::size_t>(r)], sample_token(row, greedy_options, 0, 0)) << where << " row " << r;
        }
        EXPECT_EQ(ids[0], 3) << where;
        EXPECT_EQ(ids[1], 0) << where;
        EXPECT_EQ(ids[2], vocab / 3) << where;
        EXPECT_EQ(ids[3], 7) << where;
        EXPECT_EQ(ids[4], vocab - 1) << where;
        EXPECT_EQ(ids[5], boundary - 1) << where;
      }
  }
}

TEST(VocabParallel, ANaNLogitThrowsOnEveryRank) {
  Communicator& w = world();
  const std::int64_t vocab = 64;
  std::vector<float> full = global_logits(41, kRows, vocab);
  full[static_cast<std::size_t>(4 * vocab + vocab - 2)] = std::numeric_limits<float>::quiet_NaN();  // last shard
  const VocabShard shard = shard_of(Split::kEven, w.rank(), w.size(), vocab);
  const std::vector<float> local = columns(full, kRows, shard);
  std::vector<TokenId> ids(kRows);
  try {
    vocab_parallel_greedy(local, shard, ids, w);
    ADD_FAILURE() << "expected an Error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("logit " + std::to_string(vocab - 2) + " of row 4 is NaN"), std::string::npos)
        << e.what();
  }
  SamplingOptions options;
  options.temperature = 1.0;
  options.top_k = 5;
  const std::vector<std::uint64_t> streams(kRows, 1), steps(kRows, 2);
  EXPECT_THROW(vocab_parallel_sample(local, shard, options, streams, steps, ids, w), Error);
}

// Rows for sampling: logits on a grid of 1/4 (ties everywhere, across shards and at the k-th), and a row of
// -inf but for five or six tokens, so that a larger k keeps every -inf token, tied with the k-th.
std::vector<float> sampling_rows(std::uint64_t seed, std::int64_t vocab) {
  std::vector<float> x = global_logits(seed, kRows, vocab);
  for (float& v : x) v = std::round(v * 4.0f) / 4.0f;
  for (std::int64_t c = 0; c < vocab; ++c)
    if (c % (vocab / 5) != 1) x[static_cast<std::size_t>(6 * vocab + c)] = -kInf;
  return x;
}

TEST(VocabParallel, TopKSamplingMatchesSampleTokenOnTheFullRows) {
  constexpr std::int64_t kSteps = 6;  // each row drawn at several steps in one call: [kSteps x kRows] rows
  for (const Mesh& mesh : meshes()) {
    Communicator& group = *mesh.tensor_group;
    for (const std::int64_t vocab : {std::int64_t{1000}, std::int64_t{37}})
      for (const Split split : {Split::kEven, Split::kUneven, Split::kFirstEmpty}) {
        const VocabShard shard = shard_of(split, mesh.tensor_rank, mesh.tensor, vocab);
        const std::vector<float> rows = sampling_rows(53 + static_cast<std::uint64_t>(mesh.data_rank), vocab);
        std::vector<float> full;  // the rows repeated kSteps times
        for (std::int64_t s = 0; s < kSteps; ++s) full.insert(full.end(), rows.begin(), rows.end());
        const std::vector<float> local = columns(full, kSteps * kRows, shard);
        std::vector<std::uint64_t> streams, steps;
        for (std::int64_t s = 0; s < kSteps; ++s)
          for (std::int64_t r = 0; r < kRows; ++r) {
            streams.push_back(1000 + static_cast<std::uint64_t>(r));
            steps.push_back(static_cast<std::uint64_t>(s));
          }
        for (const double temperature : {0.0, 0.7, 1.3})
          for (const std::int64_t top_k : {std::int64_t{1}, std::int64_t{3}, std::int64_t{40}, std::int64_t{5000}})
            for (const double top_p : {1.0, 0.9, 0.3}) {
              const SamplingOptions options{temperature, top_k, top_p, 77};
              const std::string where = std::string("T ") + std::to_string(mesh.tensor) + ", vocab " +
                                        std::to_string(vocab) + ", " + name_of(split) + " shards, temperature " +
                                        std::to_string(temperature) + ", top_k " + std::to_string(top_k) +
                                        ", top_p " + std::to_string(top_p);
              std::vector<TokenId> ids(streams.size(), -7);
              vocab_parallel_sample(local, shard, options, streams, steps, ids, group);
              std::vector<std::int64_t> as_int64(ids.begin(), ids.end());
              EXPECT_TRUE(same_on_every_rank(group, as_int64)) << where;
              int wrong = 0;
              for (std::size_t i = 0; i < ids.size(); ++i) {
                const std::span<const float> row(full.data() + i * static_cast<std::size_t>(vocab),
                                                 static_cast<std::size_t>(vocab));
                wrong += ids[i] != sample_token(row, options, streams[i], steps[i]);
              }
              EXPECT_EQ(wrong, 0) << where;
            }
      }
  }
}

TEST(VocabParallel, SamplingWithoutTopKIsRefused) {
  Communicator& w = world();
  const std::int64_t vocab = 30;
  const VocabShard shard = shard_of(Split::kEven, w.rank(), w.size(), vocab);
  const std::vector<float> local = columns(global_logits(7, 1, vocab), 1, shard);
  const std::vector<std::uint64_t> streams{1}, steps{0};
  std::vector<TokenId> ids(1);
  SamplingOptions options;
  options.temperature = 1.0;
  options.top_p = 0.9;  // top_k 0
  EXPECT_THROW(vocab_parallel_sample(local, shard, options, streams, steps, ids, w), InputError);
  options.top_k = -1;
  EXPECT_THROW(vocab_parallel_sample(local, shard, options, streams, steps, ids, w), InputError);
}

}  // namespace
}  // namespace slearn
