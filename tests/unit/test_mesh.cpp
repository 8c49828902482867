// check_tensor_parallel: which models split over T ranks and how their heads fall (slearn/mesh.hpp), on the
// real shapes (reference_shape) and made-up ones; every refusal names the field, its value and T.
#include <gtest/gtest.h>

#include <string>

#include "slearn/error.hpp"
#include "slearn/mesh.hpp"
#include "slearn/model_config.hpp"

namespace {

using namespace slearn;

std::string refusal(const ModelConfig& c, int tensor) {
  try {
    check_tensor_parallel(c, tensor);
  } catch (const InputError& e) {
    return e.what();
  }
  return "";
}

ModelConfig shape(std::int64_t heads, std::int64_t kv, std::int64_t inter = 1024, std::int64_t vocab = 4096) {
  ModelConfig c;
  c.num_attention_heads = heads;
  c.num_key_value_heads = kv;
  c.intermediate_size = inter;
  c.vocab_size = vocab;
  return c;
}

TEST(TensorParallelCheck, SplitsHeadsEvenlyWhenKvHeadsSuffice) {
  const HeadSharding s = check_tensor_parallel(shape(32, 8), 4);
  EXPECT_EQ(s.heads_per_rank, 8);
  EXPECT_EQ(s.kv_heads_per_rank, 2);
  EXPECT_EQ(s.kv_replicas, 1);
  EXPECT_EQ(s.first_head(3), 24);
  EXPECT_EQ(s.first_kv_head(3), 6);
  // Every query head of a rank belongs to one of the rank's kv heads (group of 32 / 8 = 4 query heads).
  for (int r = 0; r < 4; ++r)
    for (std::int64_t h = s.first_head(r); h < s.first_head(r) + s.heads_per_rank; ++h) {
      const std::int64_t kv = h / 4;
      EXPECT_GE(kv, s.first_kv_head(r));
      EXPECT_LT(kv, s.first_kv_head(r) + s.kv_heads_per_rank);
    }
}

TEST(TensorParallelCheck, ReplicatesKvHeadsFewerThanTheRanks) {
  // 16 query heads, 2 kv heads over 8 ranks: each kv head on 4 consecutive ranks, 2 query heads a rank.
  const HeadSharding s = check_tensor_parallel(shape(16, 2), 8);
  EXPECT_EQ(s.heads_per_rank, 2);
  EXPECT_EQ(s.kv_heads_per_rank, 1);
  EXPECT_EQ(s.kv_replicas, 4);
  for (int r = 0; r < 8; ++r)
    for (std::int64_t h = s.first_head(r); h < s.first_head(r) + s.heads_per_rank; ++h)
      EXPECT_EQ(h / 8, s.first_kv_head(r)) << "rank " << r << " query head " << h;
  // Qwen2.5-72B's 64 heads and 8 kv heads over 16 ranks: kv heads twice each.
  const HeadSharding big = check_tensor_parallel(reference_shape("qwen2.5-72b"), 16);
  EXPECT_EQ(big.kv_replicas, 2);
}

TEST(TensorParallelCheck, RealShapes) {
  for (const char* name : {"qwen2.5-0.5b", "qwen2.5-7b"}) {
    const ModelConfig c = reference_shape(name);
    EXPECT_NO_THROW(check_tensor_parallel(c, 1)) << name;
    EXPECT_NO_THROW(check_tensor_parallel(c, 2)) << name;
  }
  // Qwen2.5-7B: 28 query heads, 4 kv heads: T = 4 splits both; T = 8 cannot split 28 query heads.
  EXPECT_NO_THROW(check_tensor_parallel(reference_shape("qwen2.5-7b"), 4));
  EXPECT_EQ(refusal(reference_shape("qwen2.5-7b"), 8),
            "the model cannot be split over parallel.tensor 8 ranks: num_attention_heads 28 does not divide by it");
}

// configs/qwen1.5-32b-chat.yaml's parallel.tensor 4 (and 2 or 8, the other T a node allows), and the 72B at 8.
TEST(TensorParallelCheck, TheShippedLargeConfigurationsSplit) {
  const ModelConfig qwen32 = reference_shape("qwen1.5-32b");
  for (const int t : {2, 4, 8}) {
    const HeadSharding heads = check_tensor_parallel(qwen32, t);
    EXPECT_EQ(heads.heads_per_rank * t, 40) << t;
    EXPECT_EQ(heads.kv_replicas, 1) << t;  // 8 kv heads: none replicated up to T = 8
  }
  EXPECT_NO_THROW(check_tensor_parallel(reference_shape("qwen2.5-72b"), 8));
}

TEST(TensorParallelCheck, RefusalsNameTheField) {
  EXPECT_EQ(refusal(shape(32, 8, 1000), 16),
            "the model cannot be split over parallel.tensor 16 ranks: intermediate_size 1000 does not divide by it");
  EXPECT_EQ(refusal(shape(32, 8, 1024, 4097), 2),
            "the model cannot be split over parallel.tensor 2 ranks: vocab_size 4097 does not divide by it");
  EXPECT_EQ(refusal(shape(24, 12), 8).find("num_key_value_heads 12 does not divide by it") != std::string::npos, true);
  EXPECT_NE(refusal(shape(24, 3), 4).find("num_key_value_heads 3 is fewer than the ranks"), std::string::npos);
  EXPECT_THROW(check_tensor_parallel(shape(8, 8), 0), InputError);
}

}  // namespace
