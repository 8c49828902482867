// The decoder sharded over a tensor group (Model::load with TensorParallel) under mpirun at 1, 2 and 4 ranks,
// on the CPU backend, held to the whole model (T = 1) loaded on the same rank: for every T that divides the
// world, the logits of a packed batch of unequal prompts within 1e-5 relative, and 32 greedy steps from the
// KV cache with the same tokens (the sharded model picking with vocab_parallel_greedy on its slices, the whole
// one by the argmax of full rows). Three models: the Qwen2 fixture (q/k/v biases, tied head, 4 heads and 2 kv
// heads: replicated at T = 4), the LLaMA fixture (untied head, bf16 weights) and a random LLaMA written here
// with an o_proj bias (added on one rank only) and 8 heads over 2 kv heads. Every rank makes the same calls in
// the same order (no ASSERT before a collective).
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <string>
#include <unistd.h>
#include <vector>

#include <nlohmann/json.hpp>

#include "dist/vocab_parallel.hpp"
#include "model/weights.hpp"
#include "mpi_test_env.hpp"
#include "slearn/backend.hpp"
#include "slearn/communicator.hpp"
#include "slearn/error.hpp"
#include "slearn/generate.hpp"
#include "slearn/lora.hpp"
#include "slearn/mesh.hpp"
#include "slearn/model.hpp"
#include "slearn/model_config.hpp"
#include "slearn/safetensors.hpp"

namespace slearn {
namespace {

namespace fs = std::filesystem;
using mpi_tests::world;

constexpr int kSteps = 32;
constexpr double kTolerance = 1e-5;

// Unequal prompts packed in one forward, one KV-cache slot each.
std::vector<std::vector<TokenId>> prompts(std::int64_t vocab) {
  std::vector<std::vector<TokenId>> out;
  for (int length : {5, 11, 1, 8}) {
    std::vector<TokenId> p;
    for (int i = 0; i < length; ++i)
      p.push_back(static_cast<TokenId>((37 * static_cast<std::int64_t>(out.size()) + 13 * i + 3) % vocab));
    out.push_back(std::move(p));
  }
  return out;
}

struct Batch {
  std::vector<TokenId> tokens;
  std::vector<SequenceChunk> chunks;
};

Batch prefill_batch(const std::vector<std::vector<TokenId>>& ps) {
  Batch b;
  for (std::size_t s = 0; s < ps.size(); ++s) {
    b.chunks.push_back({static_cast<std::int32_t>(s), 0, static_cast<std::int32_t>(ps[s].size())});
    b.tokens.insert(b.tokens.end(), ps[s].begin(), ps[s].end());
  }
  return b;
}

// Greatest |a - b| over the greatest |b|: the logits' error relative to their scale.
double relative_error(const std::vector<float>& a, const std::vector<float>& b) {
  double diff = 0, scale = 0;
  for (std::size_t i = 0; i < b.size(); ++i) {
    diff = std::max(diff, std::abs(static_cast<double>(a[i]) - static_cast<double>(b[i])));
    scale = std::max(scale, std::abs(static_cast<double>(b[i])));
  }
  return scale == 0 ? diff : diff / scale;
}

std::vector<TokenId> argmax_rows(const std::vector<float>& logits, std::int64_t vocab) {
  std::vector<TokenId> out;
  for (std::size_t r = 0; r * static_cast<std::size_t>(vocab) < logits.size(); ++r) {
    const auto row = logits.begin() + static_cast<std::ptrdiff_t>(r * static_cast<std::size_t>(vocab));
    out.push_back(static_cast<TokenId>(std::max_element(row, row + vocab) - row));  // first of the maxima
  }
  return out;
}

// `steps` greedy tokens per prompt after prefilling them together; `pick` turns a forward into tokens.
template <class Pick>
std::vector<std::vector<TokenId>> generate(Model& model, const std::vector<std::vector<TokenId>>& ps, Pick pick) {
  KVCache cache = model.make_cache(static_cast<std::int32_t>(ps.size()), 64);
  const Batch prefill = prefill_batch(ps);
  std::vector<TokenId> next = pick(prefill, cache);
  std::vector<std::vector<TokenId>> out(ps.size());
  for (int step = 0; step < kSteps; ++step) {
    Batch decode;
    for (std::size_t s = 0; s < ps.size(); ++s) {
      out[s].push_back(next[s]);
      decode.tokens.push_back(next[s]);
      decode.chunks.push_back(
          {static_cast<std::int32_t>(s), static_cast<std::int32_t>(ps[s].size()) + step, 1});
    }
    if (step + 1 < kSteps) next = pick(decode, cache);
  }
  return out;
}

// Loads `dir` whole and sharded over every tensor group that fits the world, and compares.
void check_model(const fs::path& dir) {
  Communicator& w = world();
  auto backend = make_cpu_backend();
  Model whole = Model::load(dir, *backend);
  const ModelConfig& config = whole.config();
  const std::int64_t vocab = config.vocab_size;
  const auto ps = prompts(vocab);
  const Batch batch = prefill_batch(ps);
  KVCache whole_cache = whole.make_cache(static_cast<std::int32_t>(ps.size()), 64);
  const std::vector<float> expected = whole.forward(batch.tokens, batch.chunks, whole_cache, Model::Logits::AllTokens);
  const auto expected_tokens = generate(whole, ps, [&](const Batch& b, KVCache& cache) {
    return argmax_rows(whole.forward(b.tokens, b.chunks, cache, Model::Logits::LastOfEachChunk), vocab);
  });

  for (int tensor : {1, 2, 4}) {
    if (w.size() % tensor != 0) continue;
    SCOPED_TRACE(dir.filename().string() + " at T = " + std::to_string(tensor));
    const Mesh mesh = make_mesh(w, tensor);
    const TensorParallel tp{mesh.tensor_group.get(), mesh.tensor_rank, mesh.tensor};
    Model sharded = Model::load(dir, *backend, tp);
    const HeadSharding heads = check_tensor_parallel(config, tensor);
    EXPECT_EQ(sharded.local_config().num_attention_heads, heads.heads_per_rank);
    EXPECT_EQ(sharded.local_config().num_key_value_heads, heads.kv_heads_per_rank);
    EXPECT_EQ(sharded.local_config().intermediate_size, config.intermediate_size / tensor);
    EXPECT_EQ(sharded.config().num_attention_heads, config.num_attention_heads);
    EXPECT_EQ(sharded.local_vocab_size(), vocab / tensor);
    EXPECT_EQ(sharded.local_vocab_first(), mesh.tensor_rank * (vocab / tensor));
    if (tensor > 1) {
      EXPECT_LT(sharded.parameter_count(), whole.parameter_count());
    }

    KVCache cache = sharded.make_cache(static_cast<std::int32_t>(ps.size()), 64);
    EXPECT_EQ(cache.keys(0).dim(2), heads.kv_heads_per_rank);  // only this rank's kv heads are cached
    const std::vector<float> logits = sharded.forward(batch.tokens, batch.chunks, cache, Model::Logits::AllTokens);
    EXPECT_EQ(logits.size(), expected.size());
    if (logits.size() == expected.size()) {
      EXPECT_LE(relative_error(logits, expected), kTolerance);
    }

    const VocabShard shard{sharded.local_vocab_first(), sharded.local_vocab_size(), vocab};
    const auto tokens = generate(sharded, ps, [&](const Batch& b, KVCache& c) {
      const Tensor& local = sharded.forward_logits(b.tokens, b.chunks, c, Model::Logits::LastOfEachChunk);
      std::vector<float> host(static_cast<std::size_t>(local.numel()));
      backend->to_host(local, host);
      std::vector<TokenId> picked(b.chunks.size());
      vocab_parallel_greedy(host, shard, picked, *tp.group);
      return picked;
    });
    EXPECT_EQ(tokens, expected_tokens);
  }
}

fs::path fixture(const std::string& name) { return fs::path("tests/fixtures/models") / name; }

TEST(TensorParallelModel, QwenFixtureWithTiedHeadAndReplicatedKvHeads) { check_model(fixture("qwen2-gqa-tied")); }

TEST(TensorParallelModel, LlamaFixtureWithUntiedHead) { check_model(fixture("llama-bf16")); }

// slearn::generate on a sharded model, greedy and sampled with top-k (continuous batching over 2 slots, so
// prompts join mid-way): every rank of each tensor group ends with the same tokens (checked by gathering
// them over the world, so a rank that diverged would show), and they are the whole model's.
TEST(TensorParallelModel, GenerateGivesEveryRankTheWholeModelsTokens) {
  auto backend = make_cpu_backend();
  const fs::path dir = fixture("qwen2-gqa-tied");
  Model whole = Model::load(dir, *backend);
  const auto ps = prompts(whole.config().vocab_size);
  for (const double temperature : {0.0, 0.8}) {
    GenerationOptions options;
    options.max_new_tokens = 12;
    options.batch_size = 2;
    options.sampling = {temperature, temperature > 0 ? 20 : 0, 1.0, 99};
    std::vector<TokenId> expected;
    for (const auto& r : generate(whole, ps, options)) expected.insert(expected.end(), r.tokens.begin(), r.tokens.end());
    for (const int t : {2, 4}) {
      if (world().size() % t != 0) continue;
      Mesh mesh = make_mesh(world(), t);
      Model sharded = Model::load(dir, *backend, TensorParallel{mesh.tensor_group.get(), mesh.tensor_rank, t});
      std::vector<std::int64_t> mine;
      for (const auto& r : generate(sharded, ps, options)) mine.insert(mine.end(), r.tokens.begin(), r.tokens.end());
      const std::vector<std::int64_t> all = world().allgather(mine);
      const std::vector<std::int64_t> want(expected.begin(), expected.end());
      ASSERT_EQ(all.size(), want.size() * static_cast<std::size_t>(world().size()));
      for (int rank = 0; rank < world().size(); ++rank)
        EXPECT_TRUE(std::equal(want.begin(), want.end(), all.begin() + static_cast<std::ptrdiff_t>(rank * want.size())))
            << "rank " << rank << " at T=" << t << ", temperature " << temperature;
    }
  }
}

// A group that is not the one described is a caller's bug, refused before any collective.
TEST(TensorParallelModel, AMissingOrMismatchedGroupIsRefused) {
  auto backend = make_cpu_backend();
  auto single = make_single_process_communicator();
  EXPECT_THROW(Model::load(fixture("qwen2-gqa-tied"), *backend, TensorParallel{nullptr, 0, 2}), Error);
  EXPECT_THROW(Model::load(fixture("qwen2-gqa-tied"), *backend, TensorParallel{single.get(), 1, 2}), Error);
  EXPECT_THROW(Model::load(fixture("qwen2-gqa-tied"), *backend, TensorParallel{single.get(), 0, 2}), Error);
}

// A LLaMA with attention_bias (so an o_proj bias, which only one rank of a group adds), written by each rank
// into a directory of its own from Model::random (the same weights on every rank).
TEST(TensorParallelModel, RandomLlamaWithOutputBias) {
  const std::string config_json = R"({
  "architectures": ["LlamaForCausalLM"], "model_type": "llama", "attention_bias": true, "hidden_act": "silu",
  "hidden_size": 64, "head_dim": 16, "num_attention_heads": 8, "num_key_value_heads": 2,
  "intermediate_size": 96, "num_hidden_layers": 2, "vocab_size": 256, "max_position_embeddings": 128,
  "rms_norm_eps": 1e-05, "rope_theta": 10000.0, "tie_word_embeddings": false, "dtype": "float32"
})";
  const ModelConfig config = parse_model_config(config_json, "random-llama config");
  auto backend = make_cpu_backend();
  Model random = Model::random(config, *backend, {.seed = 13, .embed_scale = 1.0f, .weight_gain = 2.0f,
                                                  .lm_head_gain = 4.0f});
  const fs::path dir = fs::temp_directory_path() /
                       ("slearn-tp-model-" + std::to_string(::getpid()) + "-" + std::to_string(world().rank()));
  fs::create_directories(dir);
  std::ofstream(dir / "config.json") << config_json;

  const ModelWeights& weights = random.weights();
  std::vector<std::vector<float>> values;
  std::vector<TensorToWrite> tensors;
  values.reserve(64);
  auto add = [&](const std::string& name, const Tensor& t) {
    values.emplace_back(static_cast<std::size_t>(t.numel()));
    backend->to_host(t, values.back());
    tensors.push_back({name, t.shape(), DType::F32, values.back()});
  };
  add("model.embed_tokens.weight", weights.embed_tokens);
  for (std::size_t l = 0; l < weights.layers.size(); ++l) {
    const LayerWeights& layer = weights.layers[l];
    const std::string p = "model.layers." + std::to_string(l) + ".";
    add(p + "input_layernorm.weight", layer.input_norm);
    add(p + "post_attention_layernorm.weight", layer.post_attention_norm);
    add(p + "self_attn.q_proj.weight", layer.q_proj);
    add(p + "self_attn.k_proj.weight", layer.k_proj);
    add(p + "self_attn.v_proj.weight", layer.v_proj);
    add(p + "self_attn.q_proj.bias", *layer.q_bias);
    add(p + "self_attn.k_proj.bias", *layer.k_bias);
    add(p + "self_attn.v_proj.bias", *layer.v_bias);
    add(p + "self_attn.o_proj.weight", layer.o_proj);
    add(p + "self_attn.o_proj.bias", *layer.o_bias);
    add(p + "mlp.gate_proj.weight", layer.gate_proj);
    add(p + "mlp.up_proj.weight", layer.up_proj);
    add(p + "mlp.down_proj.weight", layer.down_proj);
  }
  add("model.norm.weight", weights.final_norm);
  add("lm_head.weight", weights.lm_head);
  write_safetensors(dir / "model.safetensors", tensors);

  check_model(dir);
  fs::remove_all(dir);
}

// The adapter that configs/train-tiny.yaml trained at T = 2 (tests/fixtures/lora/qwen2-gqa-tied/
// slearn_adapter_tp2, saved whole) on the model sharded at every T that divides the world (each rank takes
// its share in set_adapter): the logits of each prompt are PEFT's (check_slearn_adapter.py --write-expect).
TEST(TensorParallelModel, AdapterTrainedShardedGivesPeftsLogitsAtEveryT) {
  const fs::path lora = "tests/fixtures/lora/qwen2-gqa-tied";
  std::vector<std::vector<TokenId>> ids;
  std::vector<std::vector<float>> want;
  std::ifstream in(lora / "slearn_adapter_tp2_peft_logits.jsonl");
  ASSERT_TRUE(in) << "fixture missing";  // on every rank alike: before any collective
  for (std::string line; std::getline(in, line);) {
    const auto json = nlohmann::json::parse(line);
    ids.push_back(json.at("prompt_ids").get<std::vector<TokenId>>());
    std::vector<float> rows;
    for (const auto& row : json.at("logits")) {
      const auto values = row.get<std::vector<float>>();
      rows.insert(rows.end(), values.begin(), values.end());
    }
    want.push_back(std::move(rows));
  }
  ASSERT_EQ(ids.size(), 2u);
  auto backend = make_cpu_backend();
  for (int tensor : {1, 2, 4}) {
    if (world().size() % tensor != 0) continue;
    SCOPED_TRACE("T = " + std::to_string(tensor));
    const Mesh mesh = make_mesh(world(), tensor);
    Model model = Model::load(fixture("qwen2-gqa-tied"), *backend,
                              TensorParallel{mesh.tensor_group.get(), mesh.tensor_rank, mesh.tensor});
    const LoraAdapter adapter = LoraAdapter::load_for(model, lora / "slearn_adapter_tp2", *backend);
    model.set_adapter(&adapter);
    for (std::size_t p = 0; p < ids.size(); ++p) {
      KVCache cache = model.make_cache(1, static_cast<std::int32_t>(ids[p].size()));
      const SequenceChunk chunk{0, 0, static_cast<std::int32_t>(ids[p].size())};
      const std::vector<float> logits = model.forward(ids[p], std::span(&chunk, 1), cache, Model::Logits::AllTokens);
      EXPECT_EQ(logits.size(), want[p].size());  // the same on every rank: no ASSERT amid collectives
      double worst = 0;
      for (std::size_t i = 0; i < std::min(logits.size(), want[p].size()); ++i)
        worst = std::max(worst, std::abs(static_cast<double>(logits[i]) - want[p][i]));
      EXPECT_LE(worst, 1e-4) << "prompt " << p;
    }
  }
}

}  // namespace
}  // namespace slearn
