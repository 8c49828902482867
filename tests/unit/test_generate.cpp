// Generation behaviour: sampling determinism, stopping, the long-prompt policy, and the sampler itself
// (against a full-sort statement of its rules, and by the frequencies it draws).
#include <gtest/gtest.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <limits>
#include <map>
#include <numeric>
#include <random>
#include <set>
#include <span>

#include "slearn/backend.hpp"
#include "slearn/error.hpp"
#include "slearn/generate.hpp"
#include "slearn/model.hpp"
#include "slearn/sampling.hpp"
#include "test_paths.hpp"

namespace {

using slearn::TokenId;

class Generation : public ::testing::Test {
 protected:
  void SetUp() override {
    backend_ = slearn::make_cpu_backend();
    model_ = std::make_unique<slearn::Model>(
        slearn::Model::load(slearn::testing::fixtures_dir() / "models" / "qwen2-gqa-tied", *backend_));
  }
  std::unique_ptr<slearn::Backend> backend_;
  std::unique_ptr<slearn::Model> model_;
  std::vector<std::vector<TokenId>> prompts_{{5, 6, 7}, {40, 41, 42, 43, 44, 45, 46}, {100}, {7, 8, 9, 10, 11}};
};

TEST_F(Generation, SameSeedSameSampleWhateverTheBatch) {
  slearn::GenerationOptions options;
  options.max_new_tokens = 20;
  options.sampling = {0.9, 50, 0.95, 1234};
  options.batch_size = 4;
  const auto a = slearn::generate(*model_, prompts_, options);
  options.batch_size = 1;
  const auto b = slearn::generate(*model_, prompts_, options);
  for (std::size_t i = 0; i < a.size(); ++i) EXPECT_EQ(a[i].tokens, b[i].tokens);
  options.sampling.seed = 99;
  const auto c = slearn::generate(*model_, prompts_, options);
  bool any_differs = false;
  for (std::size_t i = 0; i < a.size(); ++i) any_differs |= a[i].tokens != c[i].tokens;
  EXPECT_TRUE(any_differs) << "a different seed should change some sample";
}

TEST_F(Generation, AutoBatchSizeFitsTheMemoryAndChangesNoResult) {
  // The fit grows with the share of memory and is at least one sequence.
  const std::int32_t small = model_->sequences_that_fit(64, 8, 1e-9);
  const std::int32_t large = model_->sequences_that_fit(64, 8, 0.5);
  EXPECT_EQ(small, 1);
  EXPECT_GE(large, small);
  EXPECT_LE(large, slearn::Model::kMaxAutoSequences);
  slearn::GenerationOptions options;
  options.max_new_tokens = 12;
  options.sampling = {0.7, 0, 0.9, 5};
  options.batch_size = 1;
  const auto one = slearn::generate(*model_, prompts_, options);
  options.batch_size_auto = true;
  const auto automatic = slearn::generate(*model_, prompts_, options);
  for (std::size_t i = 0; i < one.size(); ++i) EXPECT_EQ(one[i].tokens, automatic[i].tokens);
  options.kv_memory_fraction = 0.0;
  EXPECT_THROW(slearn::generate(*model_, prompts_, options), slearn::InputError);
}

TEST_F(Generation, StopsAtStopIdAndKeepsIt) {
  slearn::GenerationOptions options;
  options.max_new_tokens = 16;
  const auto free_run = slearn::generate(*model_, {prompts_[1]}, options);
  ASSERT_EQ(free_run[0].tokens.size(), 16u);
  options.stop_ids = {free_run[0].tokens[4]};
  const auto stopped = slearn::generate(*model_, {prompts_[1]}, options);
  EXPECT_EQ(stopped[0].finish, slearn::FinishReason::Stop);
  // It stops at the first occurrence of the stop id, which is kept.
  const auto first = std::find(free_run[0].tokens.begin(), free_run[0].tokens.end(), options.stop_ids[0]);
  EXPECT_EQ(stopped[0].tokens, std::vector<TokenId>(free_run[0].tokens.begin(), first + 1));
  EXPECT_EQ(free_run[0].finish, slearn::FinishReason::Length);
}

TEST_F(Generation, LongPromptIsAnErrorOrTruncatedLeft) {
  const auto context = model_->config().context_length();
  std::vector<TokenId> long_prompt(static_cast<std::size_t>(context) + 10, 3);
  long_prompt.back() = 9;
  slearn::GenerationOptions options;
  options.max_new_tokens = 4;
  EXPECT_THROW(slearn::generate(*model_, {long_prompt}, options), slearn::InputError);
  options.long_prompt = slearn::LongPromptPolicy::TruncateLeft;
  const auto result = slearn::generate(*model_, {long_prompt}, options);
  EXPECT_EQ(result[0].prompt_tokens, context - 4);
  EXPECT_EQ(result[0].truncated_tokens, static_cast<std::int64_t>(long_prompt.size()) - (context - 4));
  EXPECT_EQ(result[0].tokens.size(), 4u);
}

TEST_F(Generation, ContextEndsGeneration) {
  const auto context = model_->config().context_length();
  std::vector<TokenId> prompt(static_cast<std::size_t>(context) - 3, 5);
  slearn::GenerationOptions options;
  options.max_new_tokens = 50;
  const auto result = slearn::generate(*model_, {prompt}, options);
  EXPECT_EQ(result[0].finish, slearn::FinishReason::Context);
  EXPECT_EQ(result[0].tokens.size(), 3u);
}

// ---- The sampler (slearn/sampling.hpp) ----

constexpr float kInf = std::numeric_limits<float>::infinity();

// The sampling rules of slearn/sampling.hpp, written the plain way: the whole vocabulary sorted. The library
// sorts only the prefix its walks reach; the two must agree bit for bit on every row.
TokenId full_sort_sample(std::span<const float> logits, const slearn::SamplingOptions& options,
                         std::uint64_t stream, std::uint64_t step) {
  const std::size_t n = logits.size();
  std::vector<std::int32_t> order(n);
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](std::int32_t a, std::int32_t b) {
    return logits[static_cast<std::size_t>(a)] > logits[static_cast<std::size_t>(b)];
  });
  if (options.temperature == 0.0) return order[0];
  const double inv_t = 1.0 / options.temperature;
  const double top = static_cast<double>(logits[static_cast<std::size_t>(order[0])]) * inv_t;
  if (!std::isfinite(top)) return order[0];
  auto weight = [&](std::int32_t id) {
    return slearn::sample_weight(logits[static_cast<std::size_t>(id)], inv_t, top);
  };
  std::size_t candidates = n;
  if (options.top_k > 0 && static_cast<std::size_t>(options.top_k) < n) {
    const float kth = logits[static_cast<std::size_t>(order[static_cast<std::size_t>(options.top_k - 1)])];
    candidates = 0;
    while (candidates < n && logits[static_cast<std::size_t>(order[candidates])] >= kth) ++candidates;
  }
  const float lowest = logits[static_cast<std::size_t>(order[candidates - 1])];
  double total = 0;
  for (std::size_t i = 0; i < n; ++i)
    if (logits[i] >= lowest) total += weight(static_cast<std::int32_t>(i));
  std::size_t count = candidates;
  double kept = total;
  if (options.top_p < 1.0) {
    double cumulative = 0;
    for (std::size_t i = 0; i < candidates; ++i) {
      cumulative += weight(order[i]) / total;
      if (cumulative >= options.top_p) {
        count = i + 1;
        kept = 0;
        for (std::size_t j = 0; j < count; ++j) kept += weight(order[j]);
        break;
      }
    }
  }
  const double u = slearn::sample_uniform(options.seed, stream, step) * kept;
  double acc = 0;
  for (std::size_t i = 0; i < count; ++i) {
    acc += weight(order[i]);
    if (u < acc) return order[i];
  }
  return order[count - 1];
}

// A random row of one of several shapes: spread logits, heavy exact ties, -inf entries, one huge logit,
// signed zeros, a flat row.
std::vector<float> random_row(std::mt19937_64& rng, std::size_t vocab) {
  std::vector<float> row(vocab);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::uniform_int_distribution<int> small(-3, 3);
  const int shape = std::uniform_int_distribution<int>(0, 6)(rng);
  const float scale = std::array<float, 4>{0.3f, 1.0f, 4.0f, 20.0f}[rng() % 4];
  for (auto& x : row) {
    switch (shape) {
      case 0: x = scale * normal(rng); break;
      case 1: x = 0.5f * static_cast<float>(small(rng)); break;  // many exact ties
      case 2: x = rng() % 3 == 0 ? -kInf : scale * normal(rng); break;
      case 3: x = rng() % 2 ? 0.0f : -0.0f; break;
      case 4: x = 1.0f; break;
      case 5: x = static_cast<float>(small(rng)) + (rng() % 4 == 0 ? -kInf : 0.0f); break;
      default: x = scale * normal(rng);
    }
  }
  if (rng() % 5 == 0) row[rng() % vocab] = rng() % 2 ? 1e4f : 60.0f;  // one huge logit
  if (rng() % 40 == 0) std::fill(row.begin(), row.end(), -kInf);
  if (rng() % 40 == 0) row[rng() % vocab] = kInf;
  return row;
}

slearn::SamplingOptions random_options(std::mt19937_64& rng, std::size_t vocab) {
  slearn::SamplingOptions o;
  o.temperature = std::array<double, 9>{0.0, 1e-3, 0.1, 0.5, 0.7, 1.0, 1.5, 3.0, 100.0}[rng() % 9];
  const auto v = static_cast<std::int64_t>(vocab);
  o.top_k = std::array<std::int64_t, 6>{0, 1, 5, 1 + static_cast<std::int64_t>(rng() % vocab), v, v + 10}[rng() % 6];
  switch (rng() % 4) {
    case 0: o.top_p = 1.0; break;
    case 1: o.top_p = 0.999999; break;
    default: o.top_p = std::uniform_real_distribution<double>(0.1, 1.0)(rng);
  }
  o.seed = rng();
  return o;
}

TEST(Sampler, GreedyTakesLowestIdOnTies) {
  std::vector<float> logits{0.5f, 2.0f, 2.0f, -1.0f};
  EXPECT_EQ(slearn::sample_token(logits, {}, 0, 0), 1);
  std::vector<float> zeros{-0.0f, 0.0f, -1.0f};
  EXPECT_EQ(slearn::sample_token(zeros, {}, 0, 0), 0) << "-0 and +0 are equal logits";
  // Without ties at the top, top_k 1 and a tiny top_p are greedy whatever the draw; with them, a tiny top_p
  // still keeps only the lowest id (top_k 1 keeps both: every token tied with the k-th).
  const std::vector<float> distinct{0.5f, 1.9f, 2.0f, -1.0f};
  for (std::uint64_t step = 0; step < 50; ++step) {
    EXPECT_EQ(slearn::sample_token(distinct, {1.0, 1, 1.0, 3}, 9, step), 2);
    EXPECT_EQ(slearn::sample_token(distinct, {1.0, 0, 1e-9, 3}, 9, step), 2);
    EXPECT_EQ(slearn::sample_token(logits, {1.0, 0, 1e-9, 3}, 9, step), 1);
  }
}

TEST(Sampler, MatchesTheFullSortDefinitionOnRandomRows) {
  std::mt19937_64 rng(20240611);
  int compared = 0, mismatches = 0;
  for (int row_index = 0; row_index < 3000; ++row_index) {
    const std::size_t vocab = 1 + rng() % 5000;
    const auto row = random_row(rng, vocab);
    const auto options = random_options(rng, vocab);
    for (int draw = 0; draw < 8; ++draw) {
      const std::uint64_t stream = draw < 4 ? rng() : rng() % 8, step = draw < 4 ? rng() : rng() % 300;
      const TokenId got = slearn::sample_token(row, options, stream, step);
      const TokenId want = full_sort_sample(row, options, stream, step);
      ++compared;
      if (got != want && mismatches++ < 5)
        ADD_FAILURE() << "row " << row_index << " vocab " << vocab << " T " << options.temperature << " top_k "
                      << options.top_k << " top_p " << options.top_p << " stream " << stream << " step " << step
                      << ": got " << got << ", the full sort gives " << want;
    }
  }
  EXPECT_EQ(mismatches, 0) << "of " << compared;
}

TEST(Sampler, MatchesTheFullSortDefinitionOnLargeVocabularies) {
  // Large rows make the sorted prefix grow through several blocks (64, 512, 4096, 32768, all): a hot
  // temperature spreads the mass so far that the draw needs most of the order.
  std::mt19937_64 rng(7);
  std::normal_distribution<float> normal(0.0f, 3.0f);
  for (const std::size_t vocab : {151936u, 70001u}) {
    std::vector<float> row(vocab);
    for (auto& x : row) x = normal(rng);
    for (const double temperature : {0.7, 1.0, 5.0, 50.0})
      for (const double top_p : {0.5, 0.95, 1.0})
        for (const std::int64_t top_k : {0, 50, 40000})
          for (std::uint64_t step = 0; step < 6; ++step) {
            const slearn::SamplingOptions options{temperature, top_k, top_p, 11};
            EXPECT_EQ(slearn::sample_token(row, options, 3, step), full_sort_sample(row, options, 3, step))
                << "vocab " << vocab << " T " << temperature << " top_p " << top_p << " top_k " << top_k
                << " step " << step;
          }
  }
}

TEST(Sampler, TheDrawIsAFunctionOfSeedStreamAndStep) {
  std::vector<float> spread(1000);
  for (std::size_t i = 0; i < spread.size(); ++i) spread[i] = static_cast<float>(i % 97) * 0.05f;
  const slearn::SamplingOptions options{1.0, 0, 1.0, 42};
  // Deterministic: the same arguments give the same token, call after call.
  for (std::uint64_t step = 0; step < 100; ++step)
    EXPECT_EQ(slearn::sample_token(spread, options, 5, step), slearn::sample_token(spread, options, 5, step));
  // Different streams, steps and seeds give different sequences of draws.
  auto sequence = [&](std::uint64_t seed, std::uint64_t stream) {
    std::vector<TokenId> tokens;
    for (std::uint64_t step = 0; step < 64; ++step)
      tokens.push_back(slearn::sample_token(spread, {1.0, 0, 1.0, seed}, stream, step));
    return tokens;
  };
  EXPECT_NE(sequence(42, 0), sequence(42, 1));
  EXPECT_NE(sequence(42, 0), sequence(43, 0));
  const auto tokens = sequence(42, 0);
  EXPECT_GT(std::set<TokenId>(tokens.begin(), tokens.end()).size(), 20u) << "consecutive steps draw afresh";
  // The uniforms themselves: no repeats over nearby counters, and in [0, 1).
  std::set<double> seen;
  for (std::uint64_t seed = 0; seed < 4; ++seed)
    for (std::uint64_t stream = 0; stream < 50; ++stream)
      for (std::uint64_t step = 0; step < 50; ++step) {
        const double u = slearn::sample_uniform(seed, stream, step);
        EXPECT_TRUE(u >= 0.0 && u < 1.0);
        seen.insert(u);
      }
  EXPECT_EQ(seen.size(), 4u * 50u * 50u);
}

// The kept tokens' probabilities, computed independently of the library (long double, a plain sort; the
// row has no ties and top_p is far from every cumulative value).
std::vector<long double> expected_distribution(const std::vector<float>& logits, double temperature,
                                               std::int64_t top_k, double top_p) {
  const std::size_t n = logits.size();
  std::vector<std::size_t> order(n);
  std::iota(order.begin(), order.end(), 0);
  std::sort(order.begin(), order.end(), [&](std::size_t a, std::size_t b) { return logits[a] > logits[b]; });
  std::vector<long double> p(n, 0.0L);
  const std::size_t k = top_k > 0 ? std::min<std::size_t>(n, static_cast<std::size_t>(top_k)) : n;
  long double total = 0;
  for (std::size_t i = 0; i < k; ++i) total += std::exp(static_cast<long double>(logits[order[i]]) / temperature);
  long double cumulative = 0, kept = 0;
  for (std::size_t i = 0; i < k; ++i) {
    const long double w = std::exp(static_cast<long double>(logits[order[i]]) / temperature);
    p[order[i]] = w;
    kept += w;
    cumulative += w / total;
    if (cumulative >= top_p) break;
  }
  for (auto& x : p) x /= kept;
  return p;
}

TEST(Sampler, FrequenciesFollowTheKeptDistribution) {
  const std::vector<float> logits{1.2f, -0.4f, 2.0f, 0.3f, 1.9f, -2.5f, 0.9f, 0.0f};
  struct Case {
    double temperature;
    std::int64_t top_k;
    double top_p;
  };
  // With T = 0.8: probabilities in order (ids 2, 4, 0, 6, 3, 7, 1, 5) ~ 0.36, 0.32, 0.13, 0.09, 0.04, ...;
  // running sums 0.36, 0.68, 0.82, ...: top_p 0.7 keeps three, none of the cutoffs is near a running sum.
  for (const Case c : {Case{1.0, 0, 1.0}, Case{0.8, 0, 1.0}, Case{0.8, 4, 1.0}, Case{0.8, 0, 0.7},
                       Case{2.5, 6, 0.9}, Case{0.5, 3, 0.95}}) {
    const auto expected = expected_distribution(logits, c.temperature, c.top_k, c.top_p);
    constexpr int kDraws = 100000;
    std::vector<int> seen(logits.size(), 0);
    for (int i = 0; i < kDraws; ++i) {
      const auto stream = static_cast<std::uint64_t>(i % 1000), step = static_cast<std::uint64_t>(i / 1000);
      ++seen[static_cast<std::size_t>(slearn::sample_token(logits, {c.temperature, c.top_k, c.top_p, 77}, stream, step))];
    }
    double chi2 = 0;
    int df = -1;
    for (std::size_t id = 0; id < logits.size(); ++id) {
      if (expected[id] == 0) {
        EXPECT_EQ(seen[id], 0) << "token " << id << " is outside the kept set (T " << c.temperature << ", top_k "
                               << c.top_k << ", top_p " << c.top_p << ")";
        continue;
      }
      const double e = static_cast<double>(expected[id]) * kDraws;
      chi2 += (seen[id] - e) * (seen[id] - e) / e;
      ++df;
    }
    // Far above the 1 - 1e-6 quantile of chi-square with df <= 7 (~ 37 at df = 7), far below what a sampler
    // with a wrong temperature, order or cutoff gives on 10^5 draws (thousands).
    const double bound = df + 8.0 * std::sqrt(2.0 * std::max(df, 1)) + 10.0;
    EXPECT_LT(chi2, bound) << "T " << c.temperature << " top_k " << c.top_k << " top_p " << c.top_p << ", df " << df;
  }
}

TEST(Sampler, TopKKeepsEveryTokenTiedWithTheKth) {
  const std::vector<float> logits{1.0f, 3.0f, 2.0f, 2.0f, 2.0f, 0.0f};
  std::map<TokenId, int> seen;
  for (std::uint64_t step = 0; step < 4000; ++step) seen[slearn::sample_token(logits, {1.0, 2, 1.0, 5}, 0, step)]++;
  EXPECT_EQ(seen.size(), 4u);
  for (const TokenId id : {1, 2, 3, 4}) EXPECT_GT(seen[id], 0) << id;
}

TEST(Sampler, TopPCutsTiesInIdOrder) {
  // Ten equal logits, top_p 0.35: the running sum 0.1, 0.2, 0.3, 0.4 keeps ids 0..3, a quarter each.
  const std::vector<float> logits(10, 0.5f);
  std::vector<int> seen(10, 0);
  for (std::uint64_t step = 0; step < 8000; ++step)
    ++seen[static_cast<std::size_t>(slearn::sample_token(logits, {1.0, 0, 0.35, 5}, 2, step))];
  for (std::size_t id = 0; id < 10; ++id) {
    if (id < 4)
      EXPECT_NEAR(seen[id] / 8000.0, 0.25, 0.03) << id;
    else
      EXPECT_EQ(seen[id], 0) << id;
  }
}

TEST(Sampler, TopKAndTopPRestrictTheCandidates) {
  std::vector<float> logits{3.0f, 2.9f, 0.0f, -5.0f, 2.8f};
  std::map<TokenId, int> seen;
  for (std::uint64_t step = 0; step < 2000; ++step) seen[slearn::sample_token(logits, {1.0, 2, 1.0, 0}, 7, step)]++;
  EXPECT_EQ(seen.size(), 2u);
  EXPECT_TRUE(seen.count(0) && seen.count(1));
  seen.clear();
  // softmax(3, 2.9, 2.8, ...) ~ (0.367, 0.332, 0.300, ...): top_p 0.6 keeps the first two.
  for (std::uint64_t step = 0; step < 2000; ++step) seen[slearn::sample_token(logits, {1.0, 0, 0.6, 0}, 7, step)]++;
  EXPECT_EQ(seen.size(), 2u);
  EXPECT_TRUE(seen.count(0) && seen.count(1));
}

TEST(Sampler, DegenerateRowsAreGreedy) {
  // Every logit -inf, an infinite logit, a temperature so small that logit / T overflows: the T -> 0 limit.
  const std::vector<float> all_minus_inf(5, -kInf);
  const std::vector<float> plus_inf{1.0f, kInf, 3.0f, kInf};
  const std::vector<float> plain{1.0f, 2.0f, 3.0f, 2.5f};
  for (std::uint64_t step = 0; step < 20; ++step) {
    EXPECT_EQ(slearn::sample_token(all_minus_inf, {1.0, 0, 0.9, 1}, 0, step), 0);
    EXPECT_EQ(slearn::sample_token(plus_inf, {1.0, 0, 1.0, 1}, 0, step), 1);
    EXPECT_EQ(slearn::sample_token(plain, {1e-320, 0, 1.0, 1}, 0, step), 2);
  }
  // -inf logits are never drawn while any finite one is left.
  const std::vector<float> some_minus_inf{-kInf, 0.0f, -kInf, 0.1f, -kInf};
  for (std::uint64_t step = 0; step < 500; ++step) {
    const TokenId id = slearn::sample_token(some_minus_inf, {1.0, 0, 1.0, 1}, 0, step);
    EXPECT_TRUE(id == 1 || id == 3) << id;
  }
}

TEST(Sampler, RejectsBadOptionsAndRows) {
  std::vector<float> logits{1.0f, 2.0f};
  EXPECT_THROW(slearn::sample_token(logits, {-1.0, 0, 1.0, 0}, 0, 0), slearn::InputError);
  EXPECT_THROW(slearn::sample_token(logits, {1.0, 0, 0.0, 0}, 0, 0), slearn::InputError);
  EXPECT_THROW(slearn::sample_token(logits, {1.0, -1, 1.0, 0}, 0, 0), slearn::InputError);
  EXPECT_THROW(slearn::sample_token(logits, {1.0, 0, 1.5, 0}, 0, 0), slearn::InputError);
  // NaN passes every "<" and ">" test, and an infinite temperature samples uniformly: both refused.
  const double nan = std::numeric_limits<double>::quiet_NaN(), inf = std::numeric_limits<double>::infinity();
  const std::array<slearn::SamplingOptions, 5> bad_options{{{nan, 0, 1.0, 0}, {inf, 0, 1.0, 0}, {1.0, 0, nan, 0},
                                                            {1.0, 0, inf, 0}, {1.0, 0, -inf, 0}}};
  for (const auto& bad : bad_options) {
    EXPECT_THROW(slearn::sample_token(logits, bad, 0, 0), slearn::InputError);
    EXPECT_THROW(slearn::check_sampling_options(bad), slearn::InputError);
  }
  EXPECT_NO_THROW(slearn::sample_token(logits, {1e300, 0, 1.0, 0}, 0, 0));
  EXPECT_NO_THROW(slearn::check_sampling_options({0.0, 0, 1.0, 0}));
  // Bad rows are the caller's bug, not the user's: Error, not InputError.
  EXPECT_THROW(slearn::sample_token(std::span<const float>(), {}, 0, 0), slearn::Error);
  std::vector<float> with_nan{1.0f, std::numeric_limits<float>::quiet_NaN(), 0.0f};
  try {
    slearn::sample_token(with_nan, {1.0, 0, 1.0, 0}, 0, 0);
    ADD_FAILURE() << "a NaN logit was accepted";
  } catch (const slearn::InputError&) {
    ADD_FAILURE() << "a NaN logit is not the user's error";
  } catch (const slearn::Error&) {
  }
  EXPECT_THROW(slearn::sample_token(with_nan, {}, 0, 0), slearn::Error);
}

}  // namespace
