// LoRA training on the CPU backend against Hugging Face PEFT (tests/fixtures/make_lora.py), fp32: the loss
// and every adapter gradient of a batch of unequal-length sequences, logits with the adapter applied, and a
// 20-step AdamW trajectory with warmup, cosine decay, weight decay and clipping.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>
#include <fstream>
#include <string>
#include <utility>

#include <nlohmann/json.hpp>

#include "slearn/lora.hpp"
#include "slearn/model.hpp"
#include "slearn/safetensors.hpp"
#include "test_paths.hpp"
#include "train/lora_graph.hpp"
#include "train/flat_adapter.hpp"
#include "train/optimizer.hpp"

namespace {

using slearn::TokenId;
namespace fs = std::filesystem;

std::vector<float> read_tensor(const slearn::SafetensorsFile& file, const std::string& name) {
  const slearn::TensorInfo* info = file.find(name);
  if (info == nullptr) throw std::runtime_error("fixture tensor missing: " + name);
  std::vector<float> values(static_cast<std::size_t>(info->numel()));
  slearn::convert_to_f32(info->dtype, file.bytes(*info).data(), values.size(), values.data());
  return values;
}

// max |a - b| / max |b|: the error relative to the tensor's scale.
double relative_error(const float* a, const std::vector<float>& b) {
  double diff = 0, scale = 0;
  for (std::size_t i = 0; i < b.size(); ++i) {
    diff = std::max(diff, std::abs(double(a[i]) - b[i]));
    scale = std::max(scale, std::abs(double(b[i])));
  }
  return diff / std::max(scale, 1e-30);
}

class LoraGolden : public ::testing::TestWithParam<std::string> {
 protected:
  void SetUp() override {
    dir_ = slearn::testing::fixtures_dir() / "lora" / GetParam();
    if (!fs::exists(dir_ / "grads.safetensors")) GTEST_SKIP() << "fixture not generated: " << dir_;
    backend_ = slearn::make_cpu_backend();
    model_ = std::make_unique<slearn::Model>(
        slearn::Model::load(slearn::testing::fixtures_dir() / "models" / GetParam(), *backend_));
    adapter_ = std::make_unique<slearn::LoraAdapter>(
        slearn::LoraAdapter::load(dir_ / "adapter", model_->config(), *backend_));
    std::ifstream in(dir_ / "batch.json");
    const auto json = nlohmann::json::parse(in);
    for (std::size_t i = 0; i < json.at("input_ids").size(); ++i) {
      auto ids = json["input_ids"][i].get<std::vector<TokenId>>();
      auto labels = json["labels"][i].get<std::vector<TokenId>>();
      std::vector<TokenId> targets(ids.size(), -100);
      for (std::size_t t = 0; t + 1 < ids.size(); ++t) targets[t] = labels[t + 1];  // row t predicts token t+1
      batch_.add(ids, targets);
    }
    for (auto t : batch_.targets) counted_ += t >= 0;
  }
  fs::path dir_;
  std::unique_ptr<slearn::Backend> backend_;
  std::unique_ptr<slearn::Model> model_;
  std::unique_ptr<slearn::LoraAdapter> adapter_;
  slearn::PackedBatch batch_;
  std::int64_t counted_ = 0;
};

TEST_P(LoraGolden, LossAndGradientsMatchPeft) {
  for (bool recompute : {false, true}) {
    slearn::LoraTrainingGraph graph(*model_, *adapter_, recompute);
    auto gradients = graph.make_gradients();
    const auto result = graph.forward_backward(batch_, 1.0f / static_cast<float>(counted_), 7, gradients);
    auto golden = slearn::SafetensorsFile::open(dir_ / "grads.safetensors");
    const double loss = result.loss_sum / static_cast<double>(result.counted);
    EXPECT_EQ(result.counted, counted_);
    EXPECT_NEAR(loss, read_tensor(*golden, "loss")[0], 1e-5) << "recompute " << recompute;
    double worst = 0;
    const auto parameters = adapter_->parameters();
    ASSERT_EQ(parameters.size(), gradients.size());
    for (std::size_t i = 0; i < parameters.size(); ++i) {
      const double error = relative_error(gradients[i].f32(), read_tensor(*golden, parameters[i].key));
      worst = std::max(worst, error);
      EXPECT_LE(error, 1e-4) << parameters[i].key << " recompute " << recompute;
    }
    std::printf("[ measured ] %s recompute=%d: loss %.8f (peft %.8f), worst gradient relative error %.3g, "
                "activations kept %zu bytes\n",
                GetParam().c_str(), recompute, loss, read_tensor(*golden, "loss")[0], worst, graph.activation_bytes());
  }
}

TEST_P(LoraGolden, RecomputationKeepsLessAndGivesTheSameGradients) {
  slearn::LoraTrainingGraph kept(*model_, *adapter_, false), recomputed(*model_, *adapter_, true);
  auto g1 = kept.make_gradients(), g2 = recomputed.make_gradients();
  kept.forward_backward(batch_, 0.01f, 3, g1);
  recomputed.forward_backward(batch_, 0.01f, 3, g2);
  EXPECT_LT(recomputed.activation_bytes(), kept.activation_bytes());
  for (std::size_t i = 0; i < g1.size(); ++i)
    for (std::int64_t j = 0; j < g1[i].numel(); ++j) ASSERT_EQ(g1[i].f32()[j], g2[i].f32()[j]) << g1[i].name();
}

// micro_batch_size auto divides the free memory by this estimate: it must bound what a micro-batch keeps.
TEST_P(LoraGolden, ActivationEstimateBoundsWhatIsKept) {
  for (bool recompute : {false, true}) {
    slearn::LoraTrainingGraph graph(*model_, *adapter_, recompute);
    auto gradients = graph.make_gradients();
    graph.forward_backward(batch_, 0.01f, 3, gradients);
    const std::size_t estimate = graph.activation_bytes_per_token() * static_cast<std::size_t>(batch_.rows());
    EXPECT_GE(estimate, graph.activation_bytes()) << "recompute " << recompute;
    // Without recomputation what is kept dominates: the estimate adds one layer's backward transients only.
    if (!recompute) {
      EXPECT_LE(estimate, 2 * graph.activation_bytes()) << "far too high";
    }
    std::printf("[ measured ] %s recompute=%d: kept %zu bytes, estimated %zu\n", GetParam().c_str(), recompute,
                graph.activation_bytes(), estimate);
  }
}

TEST_P(LoraGolden, LogitsWithAdapterMatchPeft) {
  std::ifstream in(dir_ / "logits.json");
  const auto json = nlohmann::json::parse(in);
  auto golden = slearn::SafetensorsFile::open(dir_ / "logits.safetensors");
  model_->set_adapter(adapter_.get());
  double worst = 0;
  for (std::size_t i = 0; i < json.at("prompt_ids").size(); ++i) {
    const auto ids = json["prompt_ids"][i].get<std::vector<TokenId>>();
    slearn::KVCache cache = model_->make_cache(1, static_cast<std::int32_t>(ids.size()));
    const slearn::SequenceChunk chunk{0, 0, static_cast<std::int32_t>(ids.size())};
    const auto logits = model_->forward(ids, std::span(&chunk, 1), cache, slearn::Model::Logits::AllTokens);
    const auto want = read_tensor(*golden, "logits." + std::to_string(i));
    ASSERT_EQ(logits.size(), want.size());
    for (std::size_t j = 0; j < want.size(); ++j) worst = std::max(worst, std::abs(double(logits[j]) - want[j]));
  }
  model_->set_adapter(nullptr);
  EXPECT_LE(worst, 1e-4);
}

TEST_P(LoraGolden, AdamWTrajectoryMatchesTorch) {
  std::ifstream in(dir_ / "trajectory.json");
  const auto json = nlohmann::json::parse(in);
  slearn::OptimizerSettings settings;
  settings.learning_rate = json.at("lr").get<double>();
  settings.weight_decay = json.at("weight_decay").get<double>();
  settings.max_grad_norm = json.at("max_grad_norm").get<double>();
  settings.warmup_steps = json.at("warmup_steps").get<std::int64_t>();
  settings.lr_schedule = "cosine";
  const auto total = json.at("total_steps").get<std::int64_t>();

  // The trainer's path: the flat state on the backend, its norm and fused AdamW ops.
  slearn::AdapterTrainingState state(*backend_, *adapter_);
  slearn::LoraTrainingGraph graph(*model_, *adapter_, false);
  const auto& layout = state.layout();
  double worst = 0;
  for (std::int64_t step = 0; step < total; ++step) {
    slearn::Tensor flat = backend_->zeros_f32({layout.elements()}, "gradients");
    auto gradients = layout.views(flat, "grad.");
    const auto result = graph.forward_backward(batch_, 1.0f / static_cast<float>(counted_), 0, gradients);
    const double loss = result.loss_sum / static_cast<double>(result.counted);
    const auto& want = json["steps"][static_cast<std::size_t>(step)];
    worst = std::max(worst, std::abs(loss - want.at("loss").get<double>()));
    EXPECT_NEAR(loss, want.at("loss").get<double>(), 1e-4) << "step " << step + 1;
    const auto check = backend_->check_flat(flat, layout.segment_ends());
    ASSERT_EQ(check.first_non_finite, -1);
    const double norm = std::sqrt(check.sum_squares);
    EXPECT_NEAR(norm, want.at("grad_norm").get<double>(), 1e-4 * std::max(1.0, norm)) << "step " << step + 1;
    const double lr = slearn::learning_rate_at(settings, step, total);
    EXPECT_NEAR(lr, want.at("lr").get<double>(), 1e-12) << "step " << step + 1;
    state.update(flat, slearn::adamw_scalars(settings, lr, step + 1, slearn::clip_factor(norm, settings.max_grad_norm)));
  }
  std::printf("[ measured ] %s: 20-step loss trajectory max |diff| vs torch %.3g\n", GetParam().c_str(), worst);
  auto final_golden = slearn::SafetensorsFile::open(dir_ / "trajectory_adapter.safetensors");
  for (auto& p : adapter_->parameters())
    EXPECT_LE(relative_error(p.tensor->f32(), read_tensor(*final_golden, p.key)), 1e-4) << p.key;
}

INSTANTIATE_TEST_SUITE_P(Fixtures, LoraGolden, ::testing::Values("qwen2-gqa-tied", "llama-bf16"),
                         [](const auto& param_info) {
                           std::string name = param_info.param;
                           for (auto& c : name) if (!std::isalnum(static_cast<unsigned char>(c))) c = '_';
                           return name;
                         });

}  // namespace

namespace {

// The other direction: an adapter written by slearn, loaded by PEFT, gives the logits PEFT computed
// (tests/fixtures/check_slearn_adapter.py --write-expect); slearn must give the same. Returns the worst
// absolute difference over the prompts of `logits_file`, and their count.
std::pair<double, int> worst_against_peft(const std::string& adapter_dir, const std::string& logits_file) {
  const fs::path dir = slearn::testing::fixtures_dir() / "lora" / "qwen2-gqa-tied";
  std::ifstream in(dir / logits_file);
  EXPECT_TRUE(in) << "fixture missing: " << logits_file;
  auto backend = slearn::make_cpu_backend();
  slearn::Model model = slearn::Model::load(slearn::testing::fixtures_dir() / "models" / "qwen2-gqa-tied", *backend);
  const auto adapter = slearn::LoraAdapter::load(dir / adapter_dir, model.config(), *backend);
  model.set_adapter(&adapter);
  double worst = 0;
  int prompts = 0;
  for (std::string line; std::getline(in, line); ++prompts) {
    const auto json = nlohmann::json::parse(line);
    const auto ids = json.at("prompt_ids").get<std::vector<TokenId>>();
    const auto want = json.at("logits").get<std::vector<std::vector<float>>>();
    slearn::KVCache cache = model.make_cache(1, static_cast<std::int32_t>(ids.size()));
    const slearn::SequenceChunk chunk{0, 0, static_cast<std::int32_t>(ids.size())};
    const auto logits = model.forward(ids, std::span(&chunk, 1), cache, slearn::Model::Logits::AllTokens);
    const std::size_t vocab = want.at(0).size();
    for (std::size_t t = 0; t < want.size(); ++t)
      for (std::size_t j = 0; j < vocab; ++j) worst = std::max(worst, std::abs(double(logits[t * vocab + j]) - want[t][j]));
  }
  return {worst, prompts};
}

// configs/train-tiny.yaml on one rank.
TEST(LoraInterop, AdapterWrittenBySlearnGivesPeftsLogits) {
  const auto [worst, prompts] = worst_against_peft("slearn_adapter", "slearn_adapter_peft_logits.jsonl");
  EXPECT_EQ(prompts, 2);
  EXPECT_LE(worst, 1e-4);
}

// The same configuration trained at tensor parallel 2 (mpirun -np 2 ... --tensor-parallel 2): the adapter each
// rank held half of is saved whole, in PEFT's layout, and loads in PEFT and in an unsharded slearn alike.
TEST(LoraInterop, TensorParallelAdapterWrittenBySlearnGivesPeftsLogits) {
  const auto [worst, prompts] = worst_against_peft("slearn_adapter_tp2", "slearn_adapter_tp2_peft_logits.jsonl");
  EXPECT_EQ(prompts, 2);
  EXPECT_LE(worst, 1e-4);
}

}  // namespace
