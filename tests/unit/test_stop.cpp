// Stopping on request and the NaN policy: the flag and its signal handlers, the StopRequested message, the
// agreement between ranks, generation's stop predicate, the trainer's stop and non-finite handling, and the
// atomic output helpers.
#include <gtest/gtest.h>
#include <unistd.h>

#include <csignal>
#include <fstream>
#include <sstream>

#include "slearn/backend.hpp"
#include "slearn/checkpoint.hpp"
#include "slearn/communicator.hpp"
#include "slearn/error.hpp"
#include "slearn/generate.hpp"
#include "slearn/model.hpp"
#include "slearn/stop.hpp"
#include "slearn/trainer.hpp"
#include "test_paths.hpp"
#include "util/atomic_file.hpp"

namespace {

namespace fs = std::filesystem;

using slearn::testing::read_file;

// Every test starts and ends without a pending request and with the default dispositions.
class Stop : public ::testing::Test {
 protected:
  void SetUp() override { slearn::clear_stop_request(); }
  void TearDown() override {
    slearn::clear_stop_request();
    std::signal(SIGTERM, SIG_DFL);
    std::signal(SIGUSR1, SIG_DFL);
  }
};

TEST_F(Stop, FlagRecordsTheFirstRequest) {
  EXPECT_FALSE(slearn::stop_requested());
  EXPECT_EQ(slearn::which_signal(), 0);
  slearn::request_stop(SIGUSR1);
  EXPECT_TRUE(slearn::stop_requested());
  EXPECT_EQ(slearn::which_signal(), SIGUSR1);
  slearn::request_stop(SIGTERM);  // a later signal does not rename the stop
  EXPECT_EQ(slearn::which_signal(), SIGUSR1);
  slearn::clear_stop_request();
  EXPECT_FALSE(slearn::stop_requested());
  slearn::request_stop(0);  // a request without a signal
  EXPECT_TRUE(slearn::stop_requested());
  EXPECT_EQ(slearn::which_signal(), 0);
}

TEST_F(Stop, HandlersOnlySetTheFlagAndSurviveASecondSignal) {
  slearn::install_stop_handlers();
  for (int signal : {SIGTERM, SIGUSR1}) {
    struct sigaction current {};
    ASSERT_EQ(sigaction(signal, nullptr, &current), 0);
    EXPECT_NE(current.sa_handler, SIG_DFL);
    EXPECT_EQ(current.sa_flags & SA_RESETHAND, 0) << "a second signal must not kill";
    EXPECT_NE(current.sa_flags & SA_RESTART, 0) << "interrupted system calls must resume";
  }
  ASSERT_EQ(std::raise(SIGTERM), 0);  // with the default disposition this would end the test binary
  EXPECT_TRUE(slearn::stop_requested());
  EXPECT_EQ(slearn::which_signal(), SIGTERM);
  ASSERT_EQ(std::raise(SIGTERM), 0);
  ASSERT_EQ(std::raise(SIGUSR1), 0);
  EXPECT_EQ(slearn::which_signal(), SIGTERM);
  slearn::clear_stop_request();
  ASSERT_EQ(std::raise(SIGUSR1), 0);
  EXPECT_EQ(slearn::which_signal(), SIGUSR1);
}

TEST_F(Stop, ExceptionCarriesStageAndSaysHowToResume) {
  const slearn::StopRequested e(SIGTERM, "train", "step 12 of 40 checkpointed");
  const slearn::Error& as_error = e;  // an Error, so code that catches Error still cleans up
  EXPECT_EQ(std::string(as_error.what()),
            "stopped by SIGTERM during train (step 12 of 40 checkpointed); run the same command again to resume");
  EXPECT_EQ(e.stage(), "train");
  EXPECT_EQ(e.signal(), SIGTERM);
  EXPECT_TRUE(e.report());
  const slearn::StopRequested other(0, "answer", "", false);
  EXPECT_EQ(std::string(other.what()), "stopped on request during answer; run the same command again to resume");
  EXPECT_FALSE(other.report());
  EXPECT_EQ(slearn::kExitStopped, 75);
  EXPECT_EQ(slearn::signal_name(SIGUSR1), "SIGUSR1");
}

// Rank 1 of two, the other rank simulated: its stop flag and the signal it saw.
class OtherRankSaw final : public slearn::Communicator {
 public:
  OtherRankSaw(bool stopping, int signal) : stopping_(stopping), signal_(signal) {}
  int rank() const override { return 1; }
  int size() const override { return 2; }
  void allreduce_sum(std::span<float>) override {}
  void allreduce_sum(std::span<double>) override {}
  void allreduce_sum(std::span<std::int64_t> values) override {
    const auto at = static_cast<std::size_t>(signal_);
    if (signal_ > 0 && at < values.size()) values[at] += 1;
  }
  std::vector<std::int64_t> allgather(std::span<const std::int64_t> values) override {
    return {values.begin(), values.end()};
  }
  void broadcast(std::string&, int) override {}
  bool any(bool flag) override { return flag || stopping_; }
  void barrier() override {}
  std::unique_ptr<slearn::Communicator> split(int, int) override { throw slearn::Error("not simulated"); }
  void allgather(std::span<const float>, std::span<float>) override { throw slearn::Error("not simulated"); }
  void broadcast(std::span<float>, int) override { throw slearn::Error("not simulated"); }
  void broadcast(std::span<std::int32_t>, int) override { throw slearn::Error("not simulated"); }

 private:
  bool stopping_;
  int signal_;
};

TEST_F(Stop, RanksAgreeAndNameTheSignalAnyOfThemSaw) {
  auto single = slearn::make_single_process_communicator();
  EXPECT_FALSE(slearn::agree_to_stop(*single, false));
  EXPECT_TRUE(slearn::agree_to_stop(*single, true));
  slearn::request_stop(SIGUSR1);
  EXPECT_TRUE(slearn::agree_to_stop(*single, false));
  try {
    slearn::throw_agreed_stop(*single, "judge", "3 of 16 judgements saved");
    FAIL() << "throw_agreed_stop returned";
  } catch (const slearn::StopRequested& e) {
    EXPECT_EQ(e.signal(), SIGUSR1);
    EXPECT_TRUE(e.report());
  }
  slearn::clear_stop_request();

  // This rank got no signal; the other one got SIGTERM: this rank stops too, names SIGTERM, stays quiet.
  OtherRankSaw other(true, SIGTERM);
  EXPECT_TRUE(slearn::agree_to_stop(other, false));
  try {
    slearn::throw_agreed_stop(other, "answer", "");
    FAIL() << "throw_agreed_stop returned";
  } catch (const slearn::StopRequested& e) {
    EXPECT_EQ(e.signal(), SIGTERM);
    EXPECT_FALSE(e.report()) << "only rank 0 reports";
  }
  OtherRankSaw calm(false, 0);
  EXPECT_FALSE(slearn::agree_to_stop(calm, false));
}

TEST_F(Stop, GenerationStopsWithinAStepAndReportsOnlyFinishedSequences) {
  auto backend = slearn::make_cpu_backend();
  slearn::Model model = slearn::Model::load(slearn::testing::fixtures_dir() / "models" / "qwen2-gqa-tied", *backend);
  const std::vector<std::vector<slearn::TokenId>> prompts{{5, 6, 7}, {40, 41, 42}, {100}, {7, 8, 9}, {11, 12}};
  slearn::GenerationOptions options;
  options.batch_size = 2;
  options.max_new_tokens = 4;
  std::size_t asked = 0, finished = 0;
  options.should_stop = [&] { return ++asked > 6; };  // stop before the 7th step: after 6, the first two are done
  slearn::generate(model, prompts, options, {}, [&](std::size_t, const slearn::GenerationResult&) { ++finished; });
  EXPECT_EQ(asked, 7u) << "the predicate is asked before every step and generation returns when it says stop";
  EXPECT_GT(finished, 0u);
  EXPECT_LT(finished, prompts.size());
}

class StopTraining : public Stop {
 protected:
  void SetUp() override {
    Stop::SetUp();
    root_ = fs::temp_directory_path() / ("slearn-stop-" + std::to_string(::getpid()) + "-" +
                                         ::testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::remove_all(root_);
  }
  void TearDown() override {
    fs::remove_all(root_);
    Stop::TearDown();
  }
  // 16 records, global batch 4, 6 steps; a checkpoint every 4 steps.
  slearn::TrainConfig config(const std::string& run, const std::vector<std::string>& extra = {}) const {
    const auto fixtures = slearn::testing::fixtures_dir();
    std::ostringstream yaml;
    yaml << "model: " << (fixtures / "models" / "qwen2-gqa-tied").string() << "\n"
         << "run_dir: " << (root_ / run).string() << "\n"
         << "data: {path: " << (fixtures / "data" / "medquad-tiny.jsonl").string() << ", max_length: 96}\n"
         << "lora: {r: 4, alpha: 8, dropout: 0.0}\n"
         << "optimizer: {learning_rate: 0.005, warmup_steps: 1}\n"
         << "train: {epochs: 2, global_batch_size: 4, micro_batch_size: 2, max_steps: 6, seed: 3}\n"
         << "checkpoint: {every_steps: 4, keep_last: 5}\n";
    return slearn::parse_train_config(yaml.str(), run + ".yaml", extra);
  }
  slearn::TrainResult train(const slearn::TrainConfig& c, std::optional<std::int64_t> stop_at = std::nullopt,
                            std::optional<std::int64_t> inject = std::nullopt) {
    auto comm = slearn::make_single_process_communicator();
    slearn::TrainRunOptions options;
    options.show_progress = false;
    options.stop_at_step = stop_at;
    options.inject_nan_at_step = inject;
    return slearn::train_lora(c, *comm, options);
  }
  std::string latest(const std::string& run) const { return read_file(root_ / run / "checkpoints" / "latest"); }
  fs::path root_;
};

TEST_F(StopTraining, RequestCheckpointsTheStepsDoneAndResumesExactly) {
  const auto straight = train(config("straight"));
  ASSERT_TRUE(straight.finished);

  train(config("stopped"), 3);  // 3 steps done
  slearn::request_stop(SIGTERM);
  try {
    train(config("stopped"));
    FAIL() << "training went on after a stop request";
  } catch (const slearn::StopRequested& e) {
    EXPECT_EQ(e.stage(), "train");
    EXPECT_NE(std::string(e.what()).find("step 3 of 6 checkpointed"), std::string::npos) << e.what();
  }
  EXPECT_FALSE(fs::exists(root_ / "stopped" / "adapter"));
  slearn::clear_stop_request();
  const auto resumed = train(config("stopped"));
  EXPECT_TRUE(resumed.finished);
  EXPECT_EQ(resumed.resumed_from, 3);
  EXPECT_EQ(read_file(root_ / "stopped" / "adapter" / "adapter_model.safetensors"),
            read_file(root_ / "straight" / "adapter" / "adapter_model.safetensors"));
}

TEST_F(StopTraining, NanPolicyStopNamesStepAndTensorAndKeepsTheLastGoodCheckpoint) {
  try {
    train(config("nan"), std::nullopt, 3);
    FAIL() << "a NaN gradient did not stop training";
  } catch (const slearn::StopRequested&) {
    FAIL() << "a NaN is an error, not a stop on request";
  } catch (const slearn::Error& e) {
    const std::string message = e.what();
    EXPECT_NE(message.find("training step 3"), std::string::npos) << message;
    EXPECT_NE(message.find("the gradient of base_model.model.model.layers."), std::string::npos) << message;
    EXPECT_NE(message.find("NaN"), std::string::npos) << message;
    EXPECT_NE(message.find("last good checkpoint (step 2)"), std::string::npos) << message;
  }
  EXPECT_NE(latest("nan").find("step-00000002.h5"), std::string::npos) << latest("nan");
  EXPECT_FALSE(fs::exists(root_ / "nan" / "checkpoints" / "step-00000003.h5"));
  EXPECT_FALSE(fs::exists(root_ / "nan" / "adapter"));
  // Without the NaN, the same command goes on from the good checkpoint to the uninterrupted result.
  const auto resumed = train(config("nan"));
  EXPECT_EQ(resumed.resumed_from, 2);
  train(config("straight"));
  EXPECT_EQ(read_file(root_ / "nan" / "adapter" / "adapter_model.safetensors"),
            read_file(root_ / "straight" / "adapter" / "adapter_model.safetensors"));
}

TEST_F(StopTraining, NanPolicySkipStepSkipsTheUpdateAndCountsIt) {
  const auto result = train(config("skip", {"train.nan_policy=skip_step"}), std::nullopt, 2);
  EXPECT_TRUE(result.finished);
  EXPECT_EQ(result.skipped_steps, 1);
  std::ifstream metrics(root_ / "skip" / "metrics.jsonl");
  int lines = 0, skipped = 0;
  for (std::string line; std::getline(metrics, line); ++lines) {
    if (line.find("\"skipped\":true") == std::string::npos) continue;
    ++skipped;
    EXPECT_NE(line.find("\"step\":2"), std::string::npos) << line;
    EXPECT_NE(line.find("the gradient of base_model.model.model.layers."), std::string::npos) << line;
  }
  EXPECT_EQ(lines, 6);
  EXPECT_EQ(skipped, 1);
  // The count survives a resume (it is read back from metrics.jsonl).
  const auto again = train(config("skip", {"train.nan_policy=skip_step"}));
  EXPECT_EQ(again.skipped_steps, 1);
  EXPECT_THROW(config("bad", {"train.nan_policy=ignore"}), slearn::InputError);
}

TEST(AtomicFiles, WriteReplacesWholeAndLeavesNoTemporary) {
  const fs::path dir = fs::temp_directory_path() / ("slearn-atomic-" + std::to_string(::getpid()));
  fs::remove_all(dir);
  fs::create_directories(dir);
  slearn::write_file_atomically(dir / "a.json", "first\n");
  slearn::write_file_atomically(dir / "a.json", "second\n");
  EXPECT_EQ(read_file(dir / "a.json"), "second\n");

  slearn::replace_directory_atomically(dir / "adapter", [](const fs::path& tmp) {
    slearn::write_file_atomically(tmp / "x", "1");
    slearn::write_file_atomically(tmp / "y", "2");
  });
  // A fill that fails leaves the previous directory as it was.
  EXPECT_THROW(slearn::replace_directory_atomically(dir / "adapter",
                                                    [](const fs::path& tmp) {
                                                      slearn::write_file_atomically(tmp / "x", "new");
                                                      throw slearn::Error("cut short");
                                                    }),
               slearn::Error);
  EXPECT_EQ(read_file(dir / "adapter" / "x"), "1");
  EXPECT_EQ(read_file(dir / "adapter" / "y"), "2");
  slearn::replace_directory_atomically(dir / "adapter",
                                       [](const fs::path& tmp) { slearn::write_file_atomically(tmp / "z", "3"); });
  EXPECT_FALSE(fs::exists(dir / "adapter" / "x"));
  EXPECT_EQ(read_file(dir / "adapter" / "z"), "3");
  // Nothing temporary is left behind, not even by the failed fill.
  for (const auto& entry : fs::directory_iterator(dir))
    EXPECT_FALSE(slearn::is_atomic_temporary(entry.path())) << entry.path();
  EXPECT_EQ(std::distance(fs::directory_iterator(dir), fs::directory_iterator()), 2);  // a.json, adapter
  EXPECT_FALSE(slearn::is_atomic_temporary("adapter"));
  EXPECT_TRUE(slearn::is_atomic_temporary("summary.json.tmp.123"));
  fs::remove_all(dir);
}

}  // namespace
