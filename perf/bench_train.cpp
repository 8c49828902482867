// CPU LoRA training throughput: forward, backward and AdamW over [batch x seq_len] random tokens with a loss
// on every token, at a small Qwen2 shape (random BF16 weights). The same method as perf/peer_train.py
// (PyTorch + PEFT), so the two compare directly. Prints one JSON line.
#include <chrono>
#include <cmath>
#include <iostream>
#include <random>

#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

#include "random_checkpoint.hpp"
#include "slearn/backend.hpp"
#include "slearn/lora.hpp"
#include "slearn/model.hpp"
#include "slearn/threads.hpp"
#include "train/lora_graph.hpp"
#include "train/flat_adapter.hpp"

int main(int argc, char** argv) {
  namespace fs = std::filesystem;
  CLI::App app{"CPU LoRA training benchmark"};
  slearn::perf::Qwen2Shape shape{512, 1408, 4, 8, 2, 32000, true, 1000000.0};
  int batch = 4, seq_len = 256, steps = 3, rank = 16;
  bool recompute = false;
  std::optional<int> threads;
  std::string workdir = (fs::temp_directory_path() / "slearn-bench-train").string();
  app.add_option("--hidden", shape.hidden)->capture_default_str();
  app.add_option("--intermediate", shape.intermediate)->capture_default_str();
  app.add_option("--layers", shape.layers)->capture_default_str();
  app.add_option("--heads", shape.heads)->capture_default_str();
  app.add_option("--kv-heads", shape.kv_heads)->capture_default_str();
  app.add_option("--vocab", shape.vocab)->capture_default_str();
  app.add_option("--batch", batch)->capture_default_str();
  app.add_option("--seq-len", seq_len)->capture_default_str();
  app.add_option("--steps", steps, "timed steps after one warm-up step")->capture_default_str();
  app.add_option("--rank", rank)->capture_default_str();
  app.add_flag("--recompute", recompute, "gradient checkpointing");
  app.add_option("--threads", threads);
  app.add_option("--workdir", workdir)->capture_default_str();
  CLI11_PARSE(app, argc, argv);
  try {
    const auto plan = slearn::plan_threads(threads);
    slearn::apply_thread_plan(plan);
    const fs::path dir = fs::path(workdir) / ("h" + std::to_string(shape.hidden) + "-l" + std::to_string(shape.layers) +
                                              "-v" + std::to_string(shape.vocab));
    if (!fs::exists(dir / "model.safetensors")) slearn::perf::write_random_qwen2(dir, shape);
    auto backend = slearn::make_cpu_backend();
    slearn::Model model = slearn::Model::load(dir, *backend);
    slearn::LoraSettings lora;
    lora.r = rank;
    lora.alpha = 2.0 * rank;
    lora.dropout = 0.0;
    slearn::LoraAdapter adapter = slearn::LoraAdapter::initialize(model.config(), lora, 1, *backend);
    slearn::AdapterTrainingState state(*backend, adapter);
    slearn::LoraTrainingGraph graph(model, adapter, recompute);
    slearn::Tensor flat = backend->zeros_f32({state.layout().elements()}, "gradients");
    auto gradients = state.layout().views(flat, "grad.");

    std::mt19937 rng(2);
    std::uniform_int_distribution<slearn::TokenId> token(0, static_cast<slearn::TokenId>(shape.vocab - 1));
    slearn::PackedBatch packed;
    for (int b = 0; b < batch; ++b) {
      std::vector<slearn::TokenId> ids(static_cast<std::size_t>(seq_len)), targets(ids.size(), -100);
      for (auto& id : ids) id = token(rng);
      for (std::size_t t = 0; t + 1 < ids.size(); ++t) targets[t] = ids[t + 1];
      packed.add(ids, targets);
    }
    double best = 1e30;
    for (int s = 0; s < steps + 1; ++s) {
      const auto start = std::chrono::steady_clock::now();
      backend->zero(flat);
      const auto loss = graph.forward_backward(packed, 1.0f / static_cast<float>(batch * (seq_len - 1)), 0, gradients);
      const auto check = backend->check_flat(flat, state.layout().segment_ends());
      state.update(flat, slearn::adamw_scalars(slearn::OptimizerSettings{}, 1e-4, s + 1,
                                               slearn::clip_factor(std::sqrt(check.sum_squares), 1.0)));
      const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
      if (s > 0) best = std::min(best, seconds);
      (void)loss;
    }
    nlohmann::json line{{"impl", "slearn-cpu"}, {"threads", plan.threads}, {"batch", batch}, {"seq_len", seq_len},
                        {"rank", rank}, {"layers", shape.layers}, {"hidden", shape.hidden},
                        {"step_s", best}, {"tokens_per_s", batch * seq_len / best},
                        {"recompute", recompute}, {"activation_bytes", graph.activation_bytes()},
                        {"lora_parameters", adapter.parameter_count()}};
    std::cout << line.dump() << std::endl;
  } catch (const std::exception& e) {
    std::cerr << "bench_train: " << e.what() << std::endl;
    return 1;
  }
  return 0;
}
