// The CPU model against Hugging Face transformers (fp32): logits of a batch of unequal-length prompts run
// together in one packed forward, and 32 greedy tokens, for each tiny fixture model (tests/fixtures/make_models.py).
#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>
#include <fstream>

#include <nlohmann/json.hpp>

#include "slearn/backend.hpp"
#include "slearn/error.hpp"
#include "slearn/generate.hpp"
#include "slearn/model.hpp"
#include "slearn/safetensors.hpp"
#include "test_paths.hpp"

namespace {

using slearn::TokenId;
namespace fs = std::filesystem;

struct Golden {
  std::vector<std::vector<TokenId>> prompts;
  std::vector<std::vector<TokenId>> greedy;
  std::vector<std::vector<float>> logits;  // per prompt, [len * vocab]
};

Golden load_golden(const std::string& name) {
  const fs::path dir = slearn::testing::fixtures_dir() / "golden" / name;
  std::ifstream in(dir / "golden.json");
  const auto json = nlohmann::json::parse(in);
  Golden g;
  g.prompts = json.at("prompts").get<std::vector<std::vector<TokenId>>>();
  g.greedy = json.at("greedy").get<std::vector<std::vector<TokenId>>>();
  auto file = slearn::SafetensorsFile::open(dir / "logits.safetensors");
  for (std::size_t i = 0; i < g.prompts.size(); ++i) {
    const slearn::TensorInfo* info = file->find("logits." + std::to_string(i));
    if (info == nullptr) throw std::runtime_error("golden logits missing for prompt " + std::to_string(i));
    std::vector<float> values(static_cast<std::size_t>(info->numel()));
    slearn::convert_to_f32(info->dtype, file->bytes(*info).data(), values.size(), values.data());
    g.logits.push_back(std::move(values));
  }
  return g;
}

class GoldenModel : public ::testing::TestWithParam<std::string> {
 protected:
  void SetUp() override {
    backend_ = slearn::make_cpu_backend();
    model_ = std::make_unique<slearn::Model>(
        slearn::Model::load(slearn::testing::fixtures_dir() / "models" / GetParam(), *backend_));
    golden_ = load_golden(GetParam());
  }
  std::unique_ptr<slearn::Backend> backend_;
  std::unique_ptr<slearn::Model> model_;
  Golden golden_;
};

TEST_P(GoldenModel, BatchedLogitsMatchTransformers) {
  // All prompts in one forward, each in its own slot, packed without padding.
  std::vector<TokenId> tokens;
  std::vector<slearn::SequenceChunk> chunks;
  std::int32_t longest = 0;
  for (std::size_t i = 0; i < golden_.prompts.size(); ++i) {
    const auto len = static_cast<std::int32_t>(golden_.prompts[i].size());
    chunks.push_back({static_cast<std::int32_t>(i), 0, len});
    tokens.insert(tokens.end(), golden_.prompts[i].begin(), golden_.prompts[i].end());
    longest = std::max(longest, len);
  }
  ASSERT_GE(golden_.prompts.size(), 3u);
  slearn::KVCache cache = model_->make_cache(static_cast<std::int32_t>(chunks.size()), longest);
  const std::vector<float> logits = model_->forward(tokens, chunks, cache, slearn::Model::Logits::AllTokens);
  const auto vocab = static_cast<std::size_t>(model_->config().vocab_size);
  ASSERT_EQ(logits.size(), tokens.size() * vocab);

  std::size_t row = 0;
  double worst = 0;
  for (std::size_t i = 0; i < golden_.prompts.size(); ++i) {
    ASSERT_EQ(golden_.logits[i].size(), golden_.prompts[i].size() * vocab);
    for (std::size_t j = 0; j < golden_.logits[i].size(); ++j)
      worst = std::max(worst, std::abs(double(logits[row * vocab + j]) - golden_.logits[i][j]));
    row += golden_.prompts[i].size();
  }
  std::printf("[ measured ] %s: max |logit - transformers| = %.3g over %zu tokens\n", GetParam().c_str(), worst,
              tokens.size());
  EXPECT_LE(worst, 1e-4) << "max |logit - transformers| over all prompts and positions";
}

TEST_P(GoldenModel, GreedyContinuationMatchesTransformers) {
  slearn::GenerationOptions options;
  options.max_new_tokens = 32;
  options.batch_size = static_cast<std::int32_t>(golden_.prompts.size());
  const auto results = slearn::generate(*model_, golden_.prompts, options);
  for (std::size_t i = 0; i < results.size(); ++i) EXPECT_EQ(results[i].tokens, golden_.greedy[i]) << "prompt " << i;
}

TEST_P(GoldenModel, GreedyIsBatchInvariant) {
  slearn::GenerationOptions options;
  options.max_new_tokens = 32;
  options.batch_size = 1;
  const auto alone = slearn::generate(*model_, golden_.prompts, options);
  options.batch_size = 2;  // slots are refilled from the queue as sequences finish
  const auto pairs = slearn::generate(*model_, golden_.prompts, options);
  options.batch_size = 64;
  const auto together = slearn::generate(*model_, golden_.prompts, options);
  for (std::size_t i = 0; i < alone.size(); ++i) {
    EXPECT_EQ(alone[i].tokens, pairs[i].tokens) << "prompt " << i;
    EXPECT_EQ(alone[i].tokens, together[i].tokens) << "prompt " << i;
  }
}

// A shard or a resumed run generates a subset of the prompts; with each prompt's stream id, a sampled
// continuation is the one the whole list would have given it.
TEST_P(GoldenModel, SampledContinuationFollowsTheStreamIdNotThePosition) {
  slearn::GenerationOptions options;
  options.max_new_tokens = 16;
  options.batch_size = 2;
  options.sampling = {1.0, 0, 1.0, 11};
  const auto whole = slearn::generate(*model_, golden_.prompts, options);
  std::vector<std::vector<TokenId>> tail(golden_.prompts.begin() + 2, golden_.prompts.end());
  const auto shifted = slearn::generate(*model_, tail, options);  // streams 0.. : other samples
  for (std::size_t i = 2; i < golden_.prompts.size(); ++i) options.stream_ids.push_back(i);
  const auto subset = slearn::generate(*model_, tail, options);
  bool any_differs = false;
  for (std::size_t i = 0; i < tail.size(); ++i) {
    EXPECT_EQ(subset[i].tokens, whole[i + 2].tokens) << "prompt " << i + 2;
    any_differs = any_differs || shifted[i].tokens != whole[i + 2].tokens;
  }
  EXPECT_TRUE(any_differs) << "sampling at temperature 1 should depend on the stream";
  options.stream_ids.pop_back();
  EXPECT_THROW(slearn::generate(*model_, tail, options), slearn::Error);
}

TEST_P(GoldenModel, IncrementalDecodeMatchesFullPrefill) {
  // Feeding a prompt one token at a time through the cache gives the logits of the full forward.
  const auto& prompt = golden_.prompts.back();
  const auto vocab = static_cast<std::size_t>(model_->config().vocab_size);
  slearn::KVCache cache = model_->make_cache(1, static_cast<std::int32_t>(prompt.size()));
  double worst = 0;
  for (std::size_t t = 0; t < prompt.size(); ++t) {
    slearn::SequenceChunk chunk{0, static_cast<std::int32_t>(t), 1};
    auto logits = model_->forward(std::span(&prompt[t], 1), std::span(&chunk, 1), cache,
                                  slearn::Model::Logits::LastOfEachChunk);
    for (std::size_t j = 0; j < vocab; ++j)
      worst = std::max(worst, std::abs(double(logits[j]) - golden_.logits.back()[t * vocab + j]));
  }
  EXPECT_LE(worst, 1e-4);
}

INSTANTIATE_TEST_SUITE_P(Fixtures, GoldenModel,
                         ::testing::Values("qwen2-gqa-tied", "qwen2-untied-theta1e6", "llama-bf16"),
                         [](const auto& info) {
                           std::string name = info.param;
                           for (auto& c : name) if (!std::isalnum(static_cast<unsigned char>(c))) c = '_';
                           return name;
                         });

}  // namespace
