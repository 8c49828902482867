// CPU inference benchmark at the shape of Qwen2.5-0.5B (random weights, written once as a BF16 checkpoint):
// prefill tokens/s (a [batch x prompt_len] block, logits for the last position, as generation does) and
// decode tokens/s (greedy steps through the KV cache). The same method as perf/peer_cpu_model.py, so the two
// lines compare directly. Prints one JSON line.
#include <chrono>
#include <filesystem>
#include <iostream>
#include <random>

#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

#include "slearn/backend.hpp"
#include "slearn/model.hpp"
#include "slearn/safetensors.hpp"
#include "slearn/threads.hpp"
#include "random_checkpoint.hpp"

namespace {

using Clock = std::chrono::steady_clock;
namespace fs = std::filesystem;

double seconds_since(Clock::time_point start) {
  return std::chrono::duration<double>(Clock::now() - start).count();
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"CPU prefill/decode benchmark at the Qwen2.5-0.5B shape"};
  int layers = 24, batch = 1, prompt_len = 128, new_tokens = 32, repeat = 3;
  std::optional<int> threads;
  std::string workdir = (fs::temp_directory_path() / "slearn-bench-qwen2.5-0.5b").string();
  app.add_option("--layers", layers)->capture_default_str();
  app.add_option("--batch", batch)->capture_default_str();
  app.add_option("--prompt-len", prompt_len)->capture_default_str();
  app.add_option("--new-tokens", new_tokens)->capture_default_str();
  app.add_option("--repeat", repeat, "timed prefill passes; the best is reported")->capture_default_str();
  app.add_option("--threads", threads, "default: this process's share of the cores");
  app.add_option("--workdir", workdir, "where the random checkpoint is written (reused when present)")
      ->capture_default_str();
  CLI11_PARSE(app, argc, argv);

  try {
    const slearn::ThreadPlan plan = slearn::plan_threads(threads);
    slearn::apply_thread_plan(plan);
    const fs::path dir = fs::path(workdir) / ("layers-" + std::to_string(layers));
    if (!fs::exists(dir / "model.safetensors")) {
      slearn::perf::Qwen2Shape shape;
      shape.layers = layers;
      slearn::perf::write_random_qwen2(dir, shape);
    }
    auto backend = slearn::make_cpu_backend();
    slearn::Model model = slearn::Model::load(dir, *backend);

    std::mt19937 rng(1);
    std::uniform_int_distribution<slearn::TokenId> token(0, 151935);
    std::vector<slearn::TokenId> prompt_ids(static_cast<std::size_t>(batch * prompt_len));
    for (auto& id : prompt_ids) id = token(rng);
    std::vector<slearn::SequenceChunk> prefill_chunks;
    for (int b = 0; b < batch; ++b) prefill_chunks.push_back({b, 0, prompt_len});
    slearn::KVCache cache = model.make_cache(batch, prompt_len + new_tokens);

    double prefill_best = 1e30;
    std::vector<float> logits;
    for (int r = 0; r < repeat + 1; ++r) {  // the first pass warms up
      const auto start = Clock::now();
      logits = model.forward(prompt_ids, prefill_chunks, cache, slearn::Model::Logits::LastOfEachChunk);
      if (r > 0) prefill_best = std::min(prefill_best, seconds_since(start));
    }

    const auto vocab = static_cast<std::size_t>(model.config().vocab_size);
    std::vector<slearn::TokenId> next(static_cast<std::size_t>(batch));
    std::vector<slearn::SequenceChunk> decode_chunks(static_cast<std::size_t>(batch));
    const auto decode_start = Clock::now();
    for (int step = 0; step < new_tokens; ++step) {
      for (int b = 0; b < batch; ++b) {
        auto row = logits.begin() + static_cast<std::ptrdiff_t>(static_cast<std::size_t>(b) * vocab);
        next[static_cast<std::size_t>(b)] = static_cast<slearn::TokenId>(std::max_element(row, row + static_cast<std::ptrdiff_t>(vocab)) - row);
        decode_chunks[static_cast<std::size_t>(b)] = {b, prompt_len + step, 1};
      }
      logits = model.forward(next, decode_chunks, cache, slearn::Model::Logits::LastOfEachChunk);
    }
    const double decode_seconds = seconds_since(decode_start);

    nlohmann::json line{{"impl", "slearn-cpu"},
                        {"threads", plan.threads},
                        {"layers", layers},
                        {"batch", batch},
                        {"prompt_len", prompt_len},
                        {"new_tokens", new_tokens},
                        {"prefill_s", prefill_best},
                        {"decode_s", decode_seconds},
                        {"prefill_tok_s", batch * prompt_len / prefill_best},
                        {"decode_tok_s", batch * new_tokens / decode_seconds},
                        {"parameters", model.parameter_count()}};
    std::cout << line.dump() << std::endl;
  } catch (const std::exception& e) {
    std::cerr << "bench_cpu_model: " << e.what() << std::endl;
    return 1;
  }
  return 0;
}
