// Generation behaviour: sampling determinism, stopping, the long-prompt policy, and the sampler itself.
#include <gtest/gtest.h>

#include <limits>
#include <map>

#include "slearn/backend.hpp"
#include "slearn/error.hpp"
#include "slearn/generate.hpp"
#include "slearn/model.hpp"
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

TEST(Sampler, GreedyTakesLowestIdOnTies) {
  std::mt19937_64 rng(1);
  std::vector<float> logits{0.5f, 2.0f, 2.0f, -1.0f};
  EXPECT_EQ(slearn::sample_token(logits, {}, rng), 1);
}

TEST(Sampler, TopKAndTopPRestrictTheCandidates) {
  std::vector<float> logits{3.0f, 2.9f, 0.0f, -5.0f, 2.8f};
  std::map<TokenId, int> seen;
  auto rng = slearn::sequence_rng(7, 0);
  for (int i = 0; i < 2000; ++i) seen[slearn::sample_token(logits, {1.0, 2, 1.0, 0}, rng)]++;
  EXPECT_EQ(seen.size(), 2u);
  EXPECT_TRUE(seen.count(0) && seen.count(1));
  seen.clear();
  // softmax(3, 2.9, 2.8, ...) ~ (0.367, 0.332, 0.300, ...): top_p 0.6 keeps the first two.
  for (int i = 0; i < 2000; ++i) seen[slearn::sample_token(logits, {1.0, 0, 0.6, 0}, rng)]++;
  EXPECT_EQ(seen.size(), 2u);
  seen.clear();
  for (int i = 0; i < 4000; ++i) seen[slearn::sample_token(logits, {1.0, 0, 1.0, 0}, rng)]++;
  EXPECT_NEAR(seen[0] / 4000.0, 0.367, 0.03);
  EXPECT_NEAR(seen[4] / 4000.0, 0.300, 0.03);
}

TEST(Sampler, RejectsBadOptions) {
  std::mt19937_64 rng(1);
  std::vector<float> logits{1.0f, 2.0f};
  EXPECT_THROW(slearn::sample_token(logits, {-1.0, 0, 1.0, 0}, rng), slearn::InputError);
  EXPECT_THROW(slearn::sample_token(logits, {1.0, 0, 0.0, 0}, rng), slearn::InputError);
  // NaN passes every "<" and ">" test, and an infinite temperature samples uniformly: both refused.
  const double nan = std::numeric_limits<double>::quiet_NaN(), inf = std::numeric_limits<double>::infinity();
  EXPECT_THROW(slearn::sample_token(logits, {nan, 0, 1.0, 0}, rng), slearn::InputError);
  EXPECT_THROW(slearn::sample_token(logits, {inf, 0, 1.0, 0}, rng), slearn::InputError);
  EXPECT_THROW(slearn::sample_token(logits, {1.0, 0, nan, 0}, rng), slearn::InputError);
  EXPECT_THROW(slearn::sample_token(logits, {1.0, 0, inf, 0}, rng), slearn::InputError);
  EXPECT_THROW(slearn::sample_token(logits, {1.0, 0, -inf, 0}, rng), slearn::InputError);
  EXPECT_NO_THROW(slearn::sample_token(logits, {1e300, 0, 1.0, 0}, rng));
}

}  // namespace
