// The trainer end to end on the tiny fixture model: exact resume, independence from the micro-batch split,
// refusal of a checkpoint from another run, and merging an adapter into a checkpoint.
#include <gtest/gtest.h>

#include <fstream>
#include <sstream>

#include "slearn/backend.hpp"
#include "slearn/communicator.hpp"
#include "slearn/error.hpp"
#include "slearn/lora.hpp"
#include "slearn/merge.hpp"
#include "slearn/model.hpp"
#include "slearn/safetensors.hpp"
#include "slearn/trainer.hpp"
#include "test_paths.hpp"

namespace {

namespace fs = std::filesystem;

using slearn::testing::read_file;

class Trainer : public ::testing::Test {
 protected:
  void SetUp() override {
    root_ = fs::temp_directory_path() / ("slearn-trainer-" + std::to_string(::getpid()) + "-" +
                                         ::testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::remove_all(root_);
    fs::create_directories(root_);
  }
  void TearDown() override { fs::remove_all(root_); }

  // 16 records, global batch 4: 4 steps per epoch; max_steps 10 fixes the schedule's length.
  slearn::TrainConfig config(const std::string& run, const std::vector<std::string>& extra = {}) const {
    const auto fixtures = slearn::testing::fixtures_dir();
    std::ostringstream yaml;
    yaml << "model: " << (fixtures / "models" / "qwen2-gqa-tied").string() << "\n"
         << "run_dir: " << (root_ / run).string() << "\n"
         << "data: {path: " << (fixtures / "data" / "medquad-tiny.jsonl").string()
         << ", system_prompt: \"You are a medical expert.\", max_length: 96}\n"
         << "lora: {r: 4, alpha: 8, dropout: 0.1}\n"
         << "optimizer: {learning_rate: 0.005, warmup_steps: 2}\n"
         << "train: {epochs: 3, global_batch_size: 4, micro_batch_size: 2, max_steps: 10, seed: 11}\n"
         << "checkpoint: {every_steps: 3, keep_last: 2}\n";
    return slearn::parse_train_config(yaml.str(), run + ".yaml", extra);
  }
  slearn::TrainResult train(const slearn::TrainConfig& c, std::optional<std::int64_t> stop = std::nullopt,
                            bool force = false) {
    auto comm = slearn::make_single_process_communicator();
    slearn::TrainRunOptions options;
    options.stop_at_step = stop;
    options.force = force;
    options.show_progress = false;
    return slearn::train_lora(c, *comm, options);
  }
  fs::path root_;
};

TEST_F(Trainer, StopAndResumeGivesByteIdenticalAdapter) {
  const auto straight = train(config("straight"));
  ASSERT_TRUE(straight.finished);
  EXPECT_EQ(straight.steps_done, 10);

  const auto first = train(config("resumed"), 5);
  EXPECT_FALSE(first.finished);
  EXPECT_EQ(first.steps_done, 5);
  EXPECT_FALSE(fs::exists(root_ / "resumed" / "adapter"));
  const auto second = train(config("resumed"));
  EXPECT_TRUE(second.finished);
  EXPECT_EQ(second.resumed_from, 5);

  const std::string a = read_file(root_ / "straight" / "adapter" / "adapter_model.safetensors");
  const std::string b = read_file(root_ / "resumed" / "adapter" / "adapter_model.safetensors");
  ASSERT_FALSE(a.empty());
  EXPECT_TRUE(a == b) << "adapters differ after stop and resume";
  // metrics.jsonl: one line per step, none twice.
  std::ifstream metrics(root_ / "resumed" / "metrics.jsonl");
  int lines = 0;
  for (std::string line; std::getline(metrics, line);) ++lines;
  EXPECT_EQ(lines, 10);
  // keep_last 2: only the newest two checkpoints remain.
  int checkpoints = 0;
  for (const auto& e : fs::directory_iterator(root_ / "resumed" / "checkpoints"))
    checkpoints += e.path().extension() == ".h5";
  EXPECT_EQ(checkpoints, 2);
}

TEST_F(Trainer, MicroBatchSplitDoesNotChangeTheResult) {
  train(config("micro1", {"train.micro_batch_size=1", "lora.dropout=0"}));
  train(config("micro4", {"train.micro_batch_size=4", "lora.dropout=0"}));
  auto a = slearn::SafetensorsFile::open(root_ / "micro1" / "adapter" / "adapter_model.safetensors");
  auto b = slearn::SafetensorsFile::open(root_ / "micro4" / "adapter" / "adapter_model.safetensors");
  ASSERT_EQ(a->tensors().size(), b->tensors().size());
  double worst = 0;
  for (const auto& info : a->tensors()) {
    const auto* other = b->find(info.name);
    ASSERT_NE(other, nullptr);
    std::vector<float> x(static_cast<std::size_t>(info.numel())), y(x.size());
    slearn::convert_to_f32(info.dtype, a->bytes(info).data(), x.size(), x.data());
    slearn::convert_to_f32(other->dtype, b->bytes(*other).data(), y.size(), y.data());
    for (std::size_t i = 0; i < x.size(); ++i) worst = std::max(worst, double(std::abs(x[i] - y[i])));
  }
  EXPECT_LE(worst, 1e-5);
}

// With plenty of memory, auto takes a rank's whole share of the global batch (4 here): the run is the run of
// micro_batch_size 4, to the byte.
TEST_F(Trainer, MicroBatchSizeAutoTakesTheShareThatFits) {
  train(config("micro4", {"train.micro_batch_size=4"}));
  train(config("auto", {"train.micro_batch_size=auto"}));
  EXPECT_EQ(read_file(root_ / "auto" / "adapter" / "adapter_model.safetensors"),
            read_file(root_ / "micro4" / "adapter" / "adapter_model.safetensors"));
}

TEST_F(Trainer, CheckpointOfAnotherConfigurationIsRefused) {
  train(config("run"), 3);
  try {
    train(config("run", {"lora.r=8"}));
    FAIL() << "expected a refusal";
  } catch (const slearn::InputError& e) {
    EXPECT_NE(std::string(e.what()).find("config"), std::string::npos) << e.what();
  }
  EXPECT_TRUE(train(config("run", {"lora.r=8"}), std::nullopt, /*force=*/true).finished);
}

TEST_F(Trainer, MergedCheckpointGivesTheLogitsOfBasePlusAdapter) {
  const auto fixtures = slearn::testing::fixtures_dir();
  const fs::path model_dir = fixtures / "models" / "qwen2-gqa-tied";
  const fs::path adapter_dir = fixtures / "lora" / "qwen2-gqa-tied" / "adapter";
  if (!fs::exists(adapter_dir)) GTEST_SKIP() << "PEFT fixture missing";
  const auto result = slearn::merge_adapter(model_dir, adapter_dir, root_ / "merged", 200'000);
  EXPECT_GT(result.shards, 1u);
  EXPECT_TRUE(fs::exists(root_ / "merged" / "model.safetensors.index.json"));
  EXPECT_TRUE(fs::exists(root_ / "merged" / "tokenizer.json"));

  auto backend = slearn::make_cpu_backend();
  slearn::Model base = slearn::Model::load(model_dir, *backend);
  const auto adapter = slearn::LoraAdapter::load(adapter_dir, base.config(), *backend);
  base.set_adapter(&adapter);
  slearn::Model merged = slearn::Model::load(root_ / "merged", *backend);
  const std::vector<slearn::TokenId> ids{5, 17, 200, 33, 478, 12, 9};
  const slearn::SequenceChunk chunk{0, 0, static_cast<std::int32_t>(ids.size())};
  auto c1 = base.make_cache(1, 16);
  auto c2 = merged.make_cache(1, 16);
  const auto want = base.forward(ids, std::span(&chunk, 1), c1, slearn::Model::Logits::AllTokens);
  const auto got = merged.forward(ids, std::span(&chunk, 1), c2, slearn::Model::Logits::AllTokens);
  double worst = 0;
  for (std::size_t i = 0; i < want.size(); ++i) worst = std::max(worst, double(std::abs(want[i] - got[i])));
  EXPECT_LE(worst, 1e-4);
  EXPECT_THROW(slearn::merge_adapter(model_dir, adapter_dir, model_dir), slearn::InputError);
}

}  // namespace
