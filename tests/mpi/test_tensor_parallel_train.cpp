// LoRA training on a tensor-parallel model (the trainer with the model and the adapter sharded over the
// tensor groups of a T x D mesh) under mpirun at 1, 2 and 4 ranks, on the CPU backend, held to the whole
// model trained on the same world (T = 1, data-parallel over every rank, which gives the same adapter for
// any rank count: the trainer's double sums). For every T that divides the world: 20 steps with dropout on
// every projection give a whole PEFT adapter within 1e-5 of T = 1 (each tensor's ||a - b|| / ||b||) and the
// same loss curve within 1e-6. On the Qwen2 fixture (4 heads, 2 kv heads: replicated at T = 4, so k/v's B
// rows are summed over the kv group) with q/k/v biases and a tied head (the vocabulary-parallel loss on the
// embedding's rows). Then, at T = 2, a run stopped at step 7 and resumed ends byte-identical to the
// uninterrupted one; and where the world allows, a T = 2 checkpoint resumed at T = 4 (resharded) ends within
// the same tolerance of T = 1. Every rank makes the same calls in the same order.
#include <gtest/gtest.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>
#include <vector>

#include "mpi_test_env.hpp"
#include "slearn/chat_format.hpp"
#include "slearn/communicator.hpp"
#include "slearn/counting_communicator.hpp"
#include "slearn/mesh.hpp"
#include "slearn/model.hpp"
#include "slearn/sft_data.hpp"
#include "slearn/tokenizer.hpp"
#include "slearn/safetensors.hpp"
#include "slearn/train_config.hpp"
#include "slearn/trainer.hpp"

namespace slearn {
namespace {

namespace fs = std::filesystem;
using mpi_tests::world;

constexpr std::int64_t kSteps = 20;

fs::path fixtures() { return fs::absolute("tests/fixtures"); }  // ctest runs these in the source tree

// A directory every rank sees: rank 0's name, broadcast.
fs::path shared_directory(const std::string& name) {
  std::string path = (fs::temp_directory_path() / ("slearn-tp-train-" + std::to_string(::getpid()) + "-" + name)).string();
  world().broadcast(path, 0);
  if (world().rank() == 0) {
    fs::remove_all(path);
    fs::create_directories(path);
  }
  world().barrier();
  return path;
}

TrainConfig config(const fs::path& run_dir, int tensor) {
  std::ostringstream yaml;
  yaml << "model: " << (fixtures() / "models" / "qwen2-gqa-tied").string() << "\n"
       << "run_dir: " << run_dir.string() << "\n"
       << "data: {path: " << (fixtures() / "data" / "medquad-tiny.jsonl").string() << ", max_length: 64}\n"
       << "lora: {r: 4, alpha: 8, dropout: 0.1, target_modules: [q_proj, k_proj, v_proj, o_proj, gate_proj, "
          "up_proj, down_proj]}\n"
       << "optimizer: {learning_rate: 0.01, warmup_steps: 2, max_grad_norm: 0.5}\n"
       << "train: {epochs: 10, global_batch_size: 4, micro_batch_size: 1, max_steps: " << kSteps << ", seed: 5}\n"
       << "checkpoint: {every_steps: 5, keep_last: 2}\n"
       << "parallel: {tensor: " << tensor << "}\n";
  return parse_train_config(yaml.str(), "tp-train.yaml");
}

TrainResult train(const TrainConfig& c, std::optional<std::int64_t> stop = std::nullopt) {
  TrainRunOptions options;
  options.show_progress = false;
  options.stop_at_step = stop;
  return train_lora(c, world(), options);
}

// The saved PEFT adapter's tensors (fp32, as the trainer writes them).
std::map<std::string, std::vector<float>> adapter_tensors(const fs::path& run_dir) {
  std::map<std::string, std::vector<float>> out;
  const auto file = SafetensorsFile::open(run_dir / "adapter" / "adapter_model.safetensors");
  for (const TensorInfo& info : file->tensors()) {
    EXPECT_EQ(info.dtype, DType::F32) << info.name;
    const auto bytes = file->bytes(info);
    std::vector<float>& values = out[info.name];
    values.resize(bytes.size() / sizeof(float));
    std::memcpy(values.data(), bytes.data(), values.size() * sizeof(float));
  }
  return out;
}

std::vector<double> losses(const fs::path& run_dir) {
  std::vector<double> out;
  std::ifstream in(run_dir / "metrics.jsonl");
  for (std::string line; std::getline(in, line);) out.push_back(nlohmann::json::parse(line).at("loss").get<double>());
  return out;
}

// Every tensor's relative error ||a - b|| / ||b|| (Frobenius norms); the worst of them.
double worst_relative(const std::map<std::string, std::vector<float>>& a,
                      const std::map<std::string, std::vector<float>>& b) {
  double worst = 0;
  for (const auto& [name, values] : b) {
    const auto it = a.find(name);
    if (it == a.end() || it->second.size() != values.size()) return INFINITY;
    double diff = 0, scale = 0;
    for (std::size_t i = 0; i < values.size(); ++i) {
      const double d = static_cast<double>(it->second[i]) - values[i];
      diff += d * d;
      scale += static_cast<double>(values[i]) * values[i];
    }
    const double relative = scale == 0 ? std::sqrt(diff) : std::sqrt(diff / scale);
    worst = std::max(worst, relative);
  }
  return a.size() == b.size() ? worst : INFINITY;
}

std::string file_bytes(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

TEST(TensorParallelTraining, AdapterAndLossMatchTheWholeModelAtEveryT) {
  const fs::path root = shared_directory("match");
  ASSERT_TRUE(train(config(root / "t1", 1)).finished);
  const auto reference = adapter_tensors(root / "t1");
  const auto reference_losses = losses(root / "t1");
  ASSERT_EQ(reference_losses.size(), static_cast<std::size_t>(kSteps));
  ASSERT_GT(reference_losses.front() - reference_losses.back(), 0.01) << "the loss should fall in 20 steps";
  for (const int t : {2, 4}) {
    if (world().size() % t != 0) continue;
    const fs::path run = root / ("t" + std::to_string(t));
    const TrainResult result = train(config(run, t));
    EXPECT_TRUE(result.finished);
    const auto sharded = adapter_tensors(run);
    EXPECT_EQ(sharded.size(), reference.size()) << "the saved adapter is whole (every PEFT key) at T=" << t;
    const double error = worst_relative(sharded, reference);
    EXPECT_LT(error, 1e-5) << "T=" << t << " on " << world().size() << " ranks";
    const auto curve = losses(run);
    ASSERT_EQ(curve.size(), reference_losses.size());
    double loss_error = 0;
    for (std::size_t i = 0; i < curve.size(); ++i) {
      EXPECT_NEAR(curve[i], reference_losses[i], 1e-6) << "step " << i + 1 << " at T=" << t;
      loss_error = std::max(loss_error, std::abs(curve[i] - reference_losses[i]));
    }
    if (world().rank() == 0)
      std::printf("T=%d x D=%d: worst adapter tensor relative error %.2e, worst loss difference %.2e over %lld steps\n",
                  t, world().size() / t, error, loss_error, static_cast<long long>(kSteps));
  }
  world().barrier();
  if (world().rank() == 0) fs::remove_all(root);
}

TEST(TensorParallelTraining, StoppedAndResumedAtTwoEndsIdenticalAndReshardsToFour) {
  if (world().size() % 2 != 0) GTEST_SKIP() << "needs an even world";
  const fs::path root = shared_directory("resume");
  ASSERT_TRUE(train(config(root / "straight", 2)).finished);
  const TrainResult first = train(config(root / "resumed", 2), 7);
  EXPECT_FALSE(first.finished);
  EXPECT_EQ(first.steps_done, 7);
  const TrainResult second = train(config(root / "resumed", 2));
  EXPECT_TRUE(second.finished);
  EXPECT_EQ(second.resumed_from, 7);
  EXPECT_EQ(file_bytes(root / "straight" / "adapter" / "adapter_model.safetensors"),
            file_bytes(root / "resumed" / "adapter" / "adapter_model.safetensors"));
  EXPECT_EQ(losses(root / "straight"), losses(root / "resumed"));

  if (world().size() % 4 == 0) {
    // A checkpoint written at T = 2 holds whole arrays: T = 4 takes its shares of them and goes on.
    const TrainResult stopped = train(config(root / "reshard", 2), 10);
    EXPECT_EQ(stopped.steps_done, 10);
    const TrainResult resharded = train(config(root / "reshard", 4));
    EXPECT_TRUE(resharded.finished);
    EXPECT_EQ(resharded.resumed_from, 10);
    EXPECT_LT(worst_relative(adapter_tensors(root / "reshard"), adapter_tensors(root / "straight")), 1e-5);
  }
  world().barrier();
  if (world().rank() == 0) fs::remove_all(root);
}

// The bytes a training step sends over the tensor group, counted (the model loaded over a CountingCommunicator
// wrapped around its group) against the formula: per micro-batch of n tokens, 2 allreduces of [n, hidden] fp32
// per layer in the forward and 2 in the backward, 1 for the head's input gradient, and the vocabulary-parallel
// loss's double sum of 2 values per row with a target; per step, the replicated adapter parts' gradients in
// double (A of q/k/v/gate/up, B of o_proj/down: 7 r hidden per layer) and the norm's 2 doubles. At T = 2 on
// this model (2 kv heads) no kv head is replicated, so no kv group. One step over every example.
TEST(TensorParallelTraining, BytesSentPerTrainingTokenAreTheFormulas) {
  if (world().size() != 2) GTEST_SKIP() << "measured at T = 2 on 2 ranks";
  const fs::path root = shared_directory("bytes");
  TrainConfig c = config(root / "run", 2);
  c.train.max_steps = 1;
  c.train.global_batch_size = 16;  // every record of medquad-tiny in one step
  c.train.micro_batch_size = "4";
  Mesh mesh = make_mesh(world(), 2);
  CountingCommunicator counting(*mesh.tensor_group);
  auto backend = make_cpu_backend();
  Model model = Model::load(c.model, *backend, TensorParallel{&counting, mesh.tensor_rank, 2});
  const Tokenizer tokenizer = Tokenizer::from_dir(c.model);
  ExampleStats stats;
  const auto examples = build_examples(load_qa_records(c.data), tokenizer,
                                       default_chat_format(model.config().model_type, tokenizer), c.data, stats);
  ASSERT_EQ(examples.size(), 16u);
  counting.reset();
  TrainRunOptions options;
  options.show_progress = false;
  const TrainResult result = train_lora_on_examples(model, examples, "bytes", c, world(), *mesh.data_group, options);
  EXPECT_TRUE(result.finished);
  const std::int64_t hidden = model.config().hidden_size, layers = model.config().num_hidden_layers;
  std::int64_t tokens = 0, targets = 0;
  for (const auto& e : examples) {
    tokens += static_cast<std::int64_t>(e.tokens.size());
    for (const TokenId t : e.targets) targets += t >= 0;
  }
  const std::int64_t activations = (4 * layers + 1) * tokens * hidden * 4;
  const std::int64_t loss = 16 * targets;
  const std::int64_t replicated = 8 * 7 * c.lora.r * hidden * layers + 16;
  EXPECT_EQ(counting.allreduce_counts().bytes, activations + loss + replicated);
  if (world().rank() == 0)
    std::printf("T=2 training step: %lld tokens, %lld allreduced bytes per rank (%.0f per token: %lld activations, "
                "%lld loss, %lld adapter gradients and norm); %lld allgathered (the loss's maxima, the saved "
                "adapter)\n",
                static_cast<long long>(tokens), static_cast<long long>(counting.allreduce_counts().bytes),
                static_cast<double>(counting.allreduce_counts().bytes) / static_cast<double>(tokens),
                static_cast<long long>(activations), static_cast<long long>(loss), static_cast<long long>(replicated),
                static_cast<long long>(counting.allgather_counts().bytes));
  world().barrier();
  if (world().rank() == 0) fs::remove_all(root);
}

}  // namespace
}  // namespace slearn
