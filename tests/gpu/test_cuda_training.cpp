// LoRA training on the cuda backend against the cpu trainer (the fp32 reference) on the tiny fixture model:
// one step's loss and gradients, ten steps' loss curve and adapter, and checkpoints that resume across the
// backends (a run started on the cpu finishes on the GPU and the other way round).
//
// Tolerances. The cuda path computes in bf16 with fp32 accumulation, so its gradients differ from the fp32
// ones by the bf16 rounding of every activation they pass through (about 2^-9 relative each, over ~20 ops
// of a layer and 2 layers: a few percent at worst). Ten AdamW steps at lr 0.005 move each parameter by up
// to ~0.05, and Adam's normalised step turns gradient differences into parameter differences of the same
// relative size. The bounds below (loss 2%, one-step gradients 10%, adapter after ten steps 10% of its
// largest value) follow from that; they are first estimates, to be calibrated on a GPU (docs/cuda.md).
#include <gtest/gtest.h>
#include <unistd.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <sstream>

#include <nlohmann/json.hpp>

#include "gpu_test_util.hpp"
#include "slearn/communicator.hpp"
#include "slearn/lora.hpp"
#include "slearn/model.hpp"
#include "slearn/safetensors.hpp"
#include "slearn/trainer.hpp"
#include "test_paths.hpp"
#include "train/flat_adapter.hpp"
#include "train/lora_graph.hpp"

namespace slearn {
namespace {

namespace fs = std::filesystem;

class CudaTraining : public ::testing::Test {
 protected:
  void SetUp() override {
    root_ = fs::temp_directory_path() / ("slearn-cuda-training-" + std::to_string(::getpid()) + "-" +
                                         ::testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::remove_all(root_);
    fs::create_directories(root_);
  }
  void TearDown() override { fs::remove_all(root_); }

  TrainConfig config(const std::string& run, const std::string& backend) const {
    const auto fixtures = testing::fixtures_dir();
    std::ostringstream yaml;
    yaml << "model: " << (fixtures / "models" / "qwen2-gqa-tied").string() << "\n"
         << "run_dir: " << (root_ / run).string() << "\n"
         << "backend: " << backend << "\n"
         << "data: {path: " << (fixtures / "data" / "medquad-tiny.jsonl").string()
         << ", system_prompt: \"You are a medical expert.\", max_length: 96}\n"
         << "lora: {r: 4, alpha: 8, dropout: 0.1}\n"
         << "optimizer: {learning_rate: 0.005, warmup_steps: 2}\n"
         << "train: {epochs: 3, global_batch_size: 4, micro_batch_size: 2, max_steps: 10, seed: 11}\n"
         << "checkpoint: {every_steps: 5, keep_last: 2}\n";
    return parse_train_config(yaml.str(), run + ".yaml");
  }
  TrainResult train(const TrainConfig& c, std::optional<std::int64_t> stop = std::nullopt) {
    auto comm = make_single_process_communicator();
    TrainRunOptions options;
    options.stop_at_step = stop;
    options.show_progress = false;
    return train_lora(c, *comm, options);
  }
  std::vector<double> losses(const std::string& run) const {
    std::ifstream in(root_ / run / "metrics.jsonl");
    std::vector<double> out;
    for (std::string line; std::getline(in, line);) out.push_back(nlohmann::json::parse(line).at("loss").get<double>());
    return out;
  }
  // max |a - b| over the adapter's tensors, relative to max |b|.
  double adapter_difference(const std::string& a, const std::string& b) const {
    auto fa = SafetensorsFile::open(root_ / a / "adapter" / "adapter_model.safetensors");
    auto fb = SafetensorsFile::open(root_ / b / "adapter" / "adapter_model.safetensors");
    double diff = 0, scale = 0;
    for (const auto& info : fb->tensors()) {
      const TensorInfo* other = fa->find(info.name);
      EXPECT_NE(other, nullptr) << info.name;
      if (other == nullptr) continue;
      std::vector<float> x(static_cast<std::size_t>(info.numel())), y(x.size());
      convert_to_f32(other->dtype, fa->bytes(*other).data(), x.size(), x.data());
      convert_to_f32(info.dtype, fb->bytes(info).data(), y.size(), y.data());
      for (std::size_t i = 0; i < x.size(); ++i) {
        diff = std::max(diff, std::abs(double(x[i]) - y[i]));
        scale = std::max(scale, std::abs(double(y[i])));
      }
    }
    return diff / std::max(scale, 1e-30);
  }
  fs::path root_;
};

TEST_F(CudaTraining, OneStepsLossAndGradientsMatchTheCpu) {
  SLEARN_REQUIRE_GPU(cuda);
  auto cpu = make_cpu_backend();
  const auto dir = testing::fixtures_dir() / "models" / "qwen2-gqa-tied";
  Model cpu_model = Model::load(dir, *cpu), cuda_model = Model::load(dir, *cuda);
  LoraSettings lora;
  lora.r = 4;
  lora.dropout = 0.0;
  LoraAdapter cpu_adapter = LoraAdapter::initialize(cpu_model.config(), lora, 3, *cpu);
  LoraAdapter cuda_adapter = LoraAdapter::initialize(cpu_model.config(), lora, 3, *cpu);
  // B is zero at the start, so dA would be zero: give B values first, the same on both.
  for (auto* adapter : {&cpu_adapter, &cuda_adapter})
    for (const auto& p : adapter->parameters())
      for (std::int64_t i = 0; i < p.tensor->numel(); ++i)
        if (p.key.ends_with("lora_B.weight")) p.tensor->f32()[i] = gpu_testing::round_bf16(0.01f * std::sin(0.1f * i));
  AdapterTrainingState cpu_state(*cpu, cpu_adapter), cuda_state(*cuda, cuda_adapter);
  LoraTrainingGraph cpu_graph(cpu_model, cpu_adapter, false), cuda_graph(cuda_model, cuda_adapter, true);

  PackedBatch batch;
  std::mt19937 rng(5);
  for (int length : {7, 33, 20}) {
    std::vector<TokenId> ids(static_cast<std::size_t>(length)), targets(ids.size(), -100);
    for (auto& id : ids) id = static_cast<TokenId>(rng() % static_cast<std::uint32_t>(cpu_model.config().vocab_size));
    for (std::size_t t = 0; t + 1 < ids.size(); ++t) targets[t] = ids[t + 1];
    batch.add(ids, targets);
  }
  auto comm = make_single_process_communicator();
  auto cpu_sum = cpu->make_gradient_sum(*comm, cpu_state.layout().elements(), {});
  auto cuda_sum = cuda->make_gradient_sum(*comm, cuda_state.layout().elements(), {});
  double losses[2];
  int which = 0;
  for (auto [graph, sum, state] : {std::tuple{&cpu_graph, cpu_sum.get(), &cpu_state},
                                   std::tuple{&cuda_graph, cuda_sum.get(), &cuda_state}}) {
    auto views = state->layout().views(sum->gradients(), "grad.");
    sum->begin_step();
    sum->begin_micro_batch();
    losses[which++] = graph->forward_backward(batch, 0.01f, 0, views).loss_sum;
    sum->end_micro_batch();
    sum->finish();
  }
  EXPECT_NEAR(losses[1], losses[0], 0.02 * std::abs(losses[0]));
  const std::vector<float> want = cpu_state.host_values(cpu_sum->gradients());
  const std::vector<float> got = cuda_state.host_values(cuda_sum->gradients());
  for (const auto& s : cpu_state.layout().segments()) {
    double diff = 0, scale = 0;
    for (std::int64_t i = s.offset; i < s.offset + s.count; ++i) {
      diff = std::max(diff, std::abs(double(got[i]) - want[i]));
      scale = std::max(scale, std::abs(double(want[i])));
    }
    EXPECT_LE(diff, 0.10 * scale) << s.key;
  }
  const auto cpu_check = cpu->check_flat(cpu_sum->gradients(), cpu_state.layout().segment_ends());
  const auto cuda_check = cuda->check_flat(cuda_sum->gradients(), cuda_state.layout().segment_ends());
  EXPECT_EQ(cuda_check.first_non_finite, -1);
  EXPECT_NEAR(std::sqrt(cuda_check.sum_squares), std::sqrt(cpu_check.sum_squares), 0.05 * std::sqrt(cpu_check.sum_squares));
}

TEST_F(CudaTraining, TenStepsTrackTheCpuTrainer) {
  SLEARN_REQUIRE_GPU(cuda);
  cuda.reset();  // the trainer makes its own
  ASSERT_TRUE(train(config("cpu", "cpu")).finished);
  const TrainResult gpu = train(config("cuda", "cuda"));
  ASSERT_TRUE(gpu.finished);
  const auto a = losses("cpu"), b = losses("cuda");
  ASSERT_EQ(a.size(), 10u);
  ASSERT_EQ(b.size(), 10u);
  for (std::size_t i = 0; i < a.size(); ++i) EXPECT_NEAR(b[i], a[i], 0.02 * a[i]) << "step " << i + 1;
  EXPECT_LE(adapter_difference("cuda", "cpu"), 0.10);
  std::printf("[ measured ] cuda vs cpu after 10 steps: adapter max diff %.3g of its scale, last loss %.6f vs %.6f\n",
              adapter_difference("cuda", "cpu"), b.back(), a.back());
}

TEST_F(CudaTraining, CheckpointsResumeAcrossBackends) {
  SLEARN_REQUIRE_GPU(cuda);
  cuda.reset();
  ASSERT_TRUE(train(config("cpu", "cpu")).finished);
  // Started on the cpu, finished on the GPU; and the other way round. The checkpoint is the same file.
  for (const auto& [first, second, run] : {std::tuple{"cpu", "cuda", "cpu-then-cuda"},
                                           std::tuple{"cuda", "cpu", "cuda-then-cpu"}}) {
    EXPECT_FALSE(train(config(run, first), 5).finished);
    const TrainResult rest = train(config(run, second));
    EXPECT_TRUE(rest.finished) << run;
    EXPECT_EQ(rest.resumed_from, 5) << run;
    EXPECT_LE(adapter_difference(run, "cpu"), 0.10) << run;
  }
}

}  // namespace
}  // namespace slearn
