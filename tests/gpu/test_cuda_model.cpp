// End to end: whole models on the CUDA backend against the same models on the CPU backend, with the per-row
// logit bound of gpu_test_util.hpp (model_logit_tolerance: derived from bf16 activations and depth, checked
// against a bf16-rounding CPU model in test_cuda_model_bound.cpp, never calibrated on a GPU):
// - the committed fixture qwen2-gqa-tied (fp32 weights, which the CUDA backend rounds to bf16);
// - random models made on each backend by Model::random (bit-identical bf16 weights, no file): the
//   Qwen2.5-0.5B shape (24 layers, vocabulary 151936, head_dim 64, 7 query heads per kv head, tied
//   embeddings) as a generic fixture and as a fixture built so that greedy gaps are large, a head_dim 128
//   model, and a LoRA adapter on it.
// Greedy tokens (slearn::generate, temperature 0: the backends' own sampling and recorded decode steps) must
// agree up to the first step where the CPU's top two logits are closer than the bound allows to tell apart
// (the step is reported); on the large-gap fixture all of at least 32 steps must agree. Skips without a GPU.
#include <fstream>

#include <nlohmann/json.hpp>

#include "gpu_test_util.hpp"
#include "slearn/generate.hpp"
#include "slearn/lora.hpp"
#include "slearn/model.hpp"
#include "test_paths.hpp"

namespace slearn {
namespace {

using namespace gpu_testing;

// A weight file in fp32 is rounded to bf16 by the CUDA upload: one more rounding per projection (q/k/v,
// o, gate/up, down) in every layer.
constexpr std::int64_t kWeightRoundingsPerLayer = 4;

std::vector<std::vector<TokenId>> fixture_prompts() {
  std::ifstream in(testing::fixtures_dir() / "golden" / "qwen2-gqa-tied" / "golden.json");
  return nlohmann::json::parse(in).at("prompts").get<std::vector<std::vector<TokenId>>>();
}

struct GreedyReport {
  std::size_t compared = 0;               // tokens required to agree, over all prompts
  std::size_t sequences_with_near_tie = 0;
};

// generate() on both models; CPU logits teacher-forced over prompt + CPU continuation give each step's top-two
// gap, and the CUDA model's logits over the same sequences are checked row by row as well. With
// `require_every_step`, a near tie anywhere fails (the fixture is meant to have none) and every step is compared.
GreedyReport compare_greedy(Model& cpu_model, Model& cuda_model, const std::vector<std::vector<TokenId>>& prompts,
                            std::int64_t steps, const LogitTolerance& tolerance, bool require_every_step,
                            const std::string& what) {
  GenerationOptions options;
  options.max_new_tokens = steps;
  options.batch_size = static_cast<std::int32_t>(prompts.size());
  const auto cpu_out = generate(cpu_model, prompts, options);
  const auto cuda_out = generate(cuda_model, prompts, options);

  std::vector<std::vector<TokenId>> continued = prompts;
  for (std::size_t i = 0; i < prompts.size(); ++i)
    continued[i].insert(continued[i].end(), cpu_out[i].tokens.begin(), cpu_out[i].tokens.end());
  const auto forced = packed_logits(cpu_model, continued);
  expect_logit_rows_close(packed_logits(cuda_model, continued), forced, cpu_model.config().vocab_size, tolerance,
                          what + " teacher-forced prompt + continuation");
  const std::int64_t vocab = cpu_model.config().vocab_size;
  GreedyReport report;
  std::size_t row = 0;
  for (std::size_t i = 0; i < prompts.size(); ++i) {
    const std::size_t produced = cpu_out[i].tokens.size();
    EXPECT_EQ(produced, static_cast<std::size_t>(steps)) << what << " prompt " << i;
    std::size_t near_tie = produced;  // the first step whose CPU lead is not decisive
    double smallest_ratio = INFINITY;
    for (std::size_t step = 0; step < produced; ++step) {
      const float* logits = forced.data() + (row + prompts[i].size() - 1 + step) * static_cast<std::size_t>(vocab);
      const TopTwo top = top_two(logits, vocab);
      const double ratio = top.gap / decisive_gap(logits, vocab, tolerance);
      // The CPU's decode and its teacher-forced prefill agree to fp32 rounding (~1e-6 of the logits), so
      // their argmax too, but for an exact near tie.
      if (ratio > 1e-3) {
        EXPECT_EQ(top.id, cpu_out[i].tokens[step]) << what << ": teacher-forced CPU argmax differs from generate()";
      }
      smallest_ratio = std::min(smallest_ratio, ratio);
      if (ratio < 1.0 && near_tie == produced) near_tie = step;
    }
    if (near_tie < produced) ++report.sequences_with_near_tie;
    std::printf("[ measured ] %s prompt %zu (%zu tokens): first near tie at step %s; smallest CPU top-2 gap %.2f "
                "of the decisive gap\n",
                what.c_str(), i, prompts[i].size(),
                near_tie < produced ? std::to_string(near_tie).c_str() : "none", smallest_ratio);
    if (require_every_step) {
      EXPECT_EQ(near_tie, produced) << what << " prompt " << i << ": the fixture was built to have no near tie";
    }
    const std::size_t strict = require_every_step ? produced : near_tie;
    EXPECT_GE(cuda_out[i].tokens.size(), strict) << what << " prompt " << i;
    for (std::size_t step = 0; step < std::min(strict, cuda_out[i].tokens.size()); ++step)
      EXPECT_EQ(cuda_out[i].tokens[step], cpu_out[i].tokens[step]) << what << " prompt " << i << " step " << step;
    report.compared += strict;
    row += continued[i].size();
  }
  std::printf("[ measured ] %s greedy: %zu tokens compared strictly over %zu prompts (%zu with a near tie)\n",
              what.c_str(), report.compared, prompts.size(), report.sequences_with_near_tie);
  return report;
}

// Prefill of all prompts in one packed forward (every row) and `steps` decode steps of the whole batch through
// Model::forward (on the GPU the recorded, replayed step), both models fed the CPU's greedy tokens; every
// row checked.
void compare_prefill_and_decode(Model& cpu_model, Model& cuda_model, const std::vector<std::vector<TokenId>>& prompts,
                                int steps, const LogitTolerance& tolerance, const std::string& what) {
  const std::int64_t vocab = cpu_model.config().vocab_size;
  const auto [tokens, chunks, longest] = pack_sequences(prompts);
  const auto slots = static_cast<std::int32_t>(prompts.size());
  KVCache cpu_cache = cpu_model.make_cache(slots, longest + steps);
  KVCache cuda_cache = cuda_model.make_cache(slots, longest + steps);
  const auto ref = cpu_model.forward(tokens, chunks, cpu_cache, Model::Logits::AllTokens);
  expect_logit_rows_close(cuda_model.forward(tokens, chunks, cuda_cache, Model::Logits::AllTokens), ref, vocab,
                          tolerance, what + " prefill");
  std::vector<TokenId> next(prompts.size());
  std::vector<std::int32_t> position(prompts.size());
  std::size_t row = 0;
  for (std::size_t i = 0; i < prompts.size(); ++i) {
    row += prompts[i].size();
    next[i] = static_cast<TokenId>(top_two(ref.data() + (row - 1) * static_cast<std::size_t>(vocab), vocab).id);
    position[i] = static_cast<std::int32_t>(prompts[i].size());
  }
  double worst_rms = 0, worst_max = 0;
  std::size_t bad = 0;
  for (int step = 0; step < steps; ++step) {
    std::vector<SequenceChunk> step_chunks;
    for (std::size_t i = 0; i < prompts.size(); ++i) step_chunks.push_back({static_cast<std::int32_t>(i), position[i], 1});
    const auto r = cpu_model.forward(next, step_chunks, cpu_cache, Model::Logits::LastOfEachChunk);
    const auto g = cuda_model.forward(next, step_chunks, cuda_cache, Model::Logits::LastOfEachChunk);
    const auto c = expect_logit_rows_close(g, r, vocab, tolerance, what + " decode step " + std::to_string(step));
    worst_rms = std::max(worst_rms, c.worst_rms);
    worst_max = std::max(worst_max, c.worst_max);
    bad += c.bad_rows;
    for (std::size_t i = 0; i < prompts.size(); ++i) {
      const float* cpu_row = r.data() + i * static_cast<std::size_t>(vocab);
      const TopTwo cpu_top = top_two(cpu_row, vocab);
      // Where the CPU's lead is decisive the CUDA argmax must be the same token.
      if (cpu_top.gap >= decisive_gap(cpu_row, vocab, tolerance)) {
        EXPECT_EQ(top_two(g.data() + i * static_cast<std::size_t>(vocab), vocab).id, cpu_top.id)
            << what << " decode step " << step << " sequence " << i;
      }
      next[i] = static_cast<TokenId>(cpu_top.id);
      ++position[i];
    }
  }
  std::printf("[ measured ] %s: %d decode steps, worst row RMS error %.4f (bound %.4f), worst element %.4f "
              "(bound %.4f), %zu rows outside\n",
              what.c_str(), steps, worst_rms, tolerance.rms, worst_max, tolerance.max, bad);
}

TEST(CudaModel, FixtureLogitsAndGreedyTokensMatchTheCpuBackend) {
  SLEARN_REQUIRE_GPU(cuda);
  auto cpu = make_cpu_backend();
  const auto dir = testing::fixtures_dir() / "models" / "qwen2-gqa-tied";
  Model cpu_model = Model::load(dir, *cpu);
  Model cuda_model = Model::load(dir, *cuda);
  const auto prompts = fixture_prompts();
  ASSERT_GE(prompts.size(), 3u);
  const ModelConfig& c = cpu_model.config();
  const auto tolerance =
      model_logit_tolerance(c.num_hidden_layers, kRoundingsPerLayer + kWeightRoundingsPerLayer, c.vocab_size);
  expect_logit_rows_close(packed_logits(cuda_model, prompts), packed_logits(cpu_model, prompts), c.vocab_size,
                          tolerance, "fixture qwen2-gqa-tied packed prompts");
  compare_greedy(cpu_model, cuda_model, prompts, 32, tolerance, false, "fixture qwen2-gqa-tied");
}

// The generic 0.5B-shape fixture: small embeddings (+-0.05) next to standard projections, so that the layers,
// not the token's own embedding, decide the logits, as in a trained model. Its greedy gaps are those of
// near-Gaussian logits over 151936 tokens, mostly below the decisive gap (in a bf16-rounding CPU emulation
// each of 4 such prompts had a near tie at step 0): greedy tokens are compared up to the first near tie and
// that step is reported; the logits are checked on every prefill, decode and continued row.
TEST(CudaModel, Qwen2_0_5bShapeRandomModelLogitsAndGreedyTokens) {
  SLEARN_REQUIRE_GPU(cuda);
  auto cpu = make_cpu_backend();
  const ModelConfig config = qwen2_0_5b_config();
  Model::RandomInit init;
  init.seed = 11;
  init.embed_scale = 0.05f;
  Model cpu_model = Model::random(config, *cpu, init);
  Model cuda_model = Model::random(config, *cuda, init);
  EXPECT_EQ(cuda_model.parameter_count(), cpu_model.parameter_count());
  EXPECT_GT(cpu_model.parameter_count(), 490'000'000u);  // Qwen2.5-0.5B: 494M
  const auto tolerance = model_logit_tolerance(config.num_hidden_layers, kRoundingsPerLayer, config.vocab_size);
  const auto prompts = random_prompts({23, 11, 5, 1}, config.vocab_size, 3);
  compare_prefill_and_decode(cpu_model, cuda_model, prompts, 4, tolerance, "qwen2.5-0.5b shape");
  compare_greedy(cpu_model, cuda_model, prompts, 16, tolerance, false, "qwen2.5-0.5b shape");
}

// The large-gap fixture: the same shape with full-size embeddings (+-1) and weak projections (gain 0.5).
// With tied embeddings the logit of token v is e_v . normed(x), and x is the current token's embedding e_t
// plus the layers' smaller sum: the self term |e_t|^2 / rms(x) ~ hidden rms(e) stands ~ sqrt(hidden) = 30
// times above the others' spread, so the top-2 gap is many times the bound at every step (greedy then
// repeats the current token; the steps still run the whole decode path: the device argmax, the recorded
// and replayed step, each sequence's own cache rows and positions). A bf16-rounding CPU model measured the
// smallest lead over 4 prompts x 40 steps at 24 times the decisive gap. Every one of 32 generated steps
// must agree; the logits of 8 decode steps and of all 32 continued rows are checked row by row.
TEST(CudaModel, Qwen2_0_5bShapeLargeGapFixtureAgreesOnEveryGreedyStep) {
  SLEARN_REQUIRE_GPU(cuda);
  auto cpu = make_cpu_backend();
  const ModelConfig config = qwen2_0_5b_config();
  Model::RandomInit init;
  init.seed = 21;
  init.embed_scale = 1.0f;
  init.weight_gain = 0.5f;
  Model cpu_model = Model::random(config, *cpu, init);
  Model cuda_model = Model::random(config, *cuda, init);
  const auto tolerance = model_logit_tolerance(config.num_hidden_layers, kRoundingsPerLayer, config.vocab_size);
  const auto prompts = random_prompts({19, 7, 3, 1}, config.vocab_size, 4);
  compare_prefill_and_decode(cpu_model, cuda_model, prompts, 8, tolerance, "large-gap fixture");
  const auto report = compare_greedy(cpu_model, cuda_model, prompts, 32, tolerance, true, "large-gap fixture");
  EXPECT_GE(report.compared, 32u * prompts.size());
}

TEST(CudaModel, HeadDim128RandomModelEndToEnd) {
  SLEARN_REQUIRE_GPU(cuda);
  auto cpu = make_cpu_backend();
  const ModelConfig config = head_dim_128_config();
  Model::RandomInit init;
  init.seed = 12;
  init.embed_scale = 0.05f;
  init.lm_head_gain = 2.0f;
  Model cpu_model = Model::random(config, *cpu, init);
  Model cuda_model = Model::random(config, *cuda, init);
  const auto tolerance = model_logit_tolerance(config.num_hidden_layers, kRoundingsPerLayer, config.vocab_size);
  const auto prompts = random_prompts({40, 9, 1}, config.vocab_size, 5);
  compare_prefill_and_decode(cpu_model, cuda_model, prompts, 8, tolerance, "head_dim 128");
  compare_greedy(cpu_model, cuda_model, prompts, 16, tolerance, false, "head_dim 128");
}

// The same random adapter on both backends: LoraAdapter::initialize (B = 0) then every A and B refilled by
// fill_random, bit-identical on both, with B large enough that the adapter visibly changes the logits.
LoraAdapter random_adapter(const ModelConfig& config, Backend& backend) {
  LoraSettings settings;
  settings.r = 16;
  settings.alpha = 32;
  LoraAdapter adapter = LoraAdapter::initialize(config, settings, 5, backend);
  std::uint64_t key = 900;
  for (auto& p : adapter.parameters())
    backend.fill_random(*p.tensor, key++, 1.0f / std::sqrt(static_cast<float>(p.tensor->dim(1))));
  return adapter;
}

TEST(CudaModel, LoraForwardMatchesOnBothBackends) {
  SLEARN_REQUIRE_GPU(cuda);
  auto cpu = make_cpu_backend();
  const ModelConfig config = head_dim_128_config();
  Model::RandomInit init;
  init.seed = 12;
  init.embed_scale = 0.05f;
  Model cpu_model = Model::random(config, *cpu, init);
  Model cuda_model = Model::random(config, *cuda, init);
  const LoraAdapter cpu_adapter = random_adapter(config, *cpu), cuda_adapter = random_adapter(config, *cuda);
  const auto prompts = random_prompts({40, 9, 1}, config.vocab_size, 6);
  const auto base = packed_logits(cpu_model, prompts);
  cpu_model.set_adapter(&cpu_adapter);
  cuda_model.set_adapter(&cuda_adapter);
  const auto tolerance = model_logit_tolerance(config.num_hidden_layers, kRoundingsPerLayerLora, config.vocab_size);
  const auto adapted = packed_logits(cpu_model, prompts);
  // The adapter must matter: per row, its change is far above what the comparison tolerates.
  const std::int64_t vocab = config.vocab_size;
  double smallest_change = INFINITY;
  for (std::size_t r = 0; r < adapted.size() / static_cast<std::size_t>(vocab); ++r) {
    double squares = 0;
    for (std::int64_t v = 0; v < vocab; ++v) {
      const double d = adapted[r * vocab + v] - base[r * vocab + v];
      squares += d * d;
    }
    smallest_change = std::min(smallest_change, std::sqrt(squares / static_cast<double>(vocab)) /
                                                    row_rms(base.data() + r * vocab, vocab));
  }
  std::printf("[ measured ] LoRA: smallest per-row RMS change of the CPU logits %.3f of the row's RMS\n",
              smallest_change);
  ASSERT_GT(smallest_change, 5.0 * tolerance.rms) << "the adapter barely changes the logits: the test would be blind";
  compare_prefill_and_decode(cpu_model, cuda_model, prompts, 3, tolerance, "head_dim 128 with LoRA");
  // And back without it: the CUDA model forgets the adapter (recorded steps are keyed by it).
  cpu_model.set_adapter(nullptr);
  cuda_model.set_adapter(nullptr);
  compare_prefill_and_decode(cpu_model, cuda_model, prompts, 2, model_logit_tolerance(config.num_hidden_layers,
                                                                                       kRoundingsPerLayer, vocab),
                             "head_dim 128 after removing LoRA");
}

}  // namespace
}  // namespace slearn
