// CPU inference benchmark at the shape of Qwen2.5-0.5B (random weights, written once as a BF16 checkpoint):
// prefill tokens/s (a [batch x prompt_len] block, logits for the last position, as generation does) and
// decode tokens/s (greedy steps through the KV cache). The same method as perf/peer_cpu_model.py, so the two
// lines compare directly. Prints one JSON line, with the processor and the GEMM kernel in use (cpu_info), and
// where the prefill's and a decode step's time goes: one more prefill and 8 steps with an observer that stamps the clock at each named
// intermediate tensor, the time between two stamps summed by what ran between them (the q/k/v projection and
// RoPE, the KV store and attention, o_proj with its residual and norm, the MLP with its residual and norm,
// the LM head), beside the GFLOP/s of those GEMMs alone (cblas_sgemm at the same shapes).
#include <chrono>
#include <filesystem>
#include <iostream>
#include <random>

#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

#include <cblas.h>

#include <map>

#include "model/weights.hpp"
#include "slearn/backend.hpp"
#include "slearn/cpu_info.hpp"
#include "slearn/dtype.hpp"
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
  std::string cpu_weights = "auto";
  app.add_option("--cpu-weights", cpu_weights, "auto (bf16: the checkpoint's), f32 or bf16")->capture_default_str();
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
    auto backend = slearn::make_cpu_backend(slearn::cpu_weights_from_name(cpu_weights));
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

    // Where a prefill's time goes, and a decode step's (the 8 steps after it, summed): the clock at each
    // observed tensor, the gap charged to what produced it.
    std::map<std::string, double> stage_seconds, decode_stage_seconds;
    {
      std::map<std::string, double>* into = &stage_seconds;
      auto last = Clock::now();
      model.set_observer([&](const slearn::Tensor& t) {
        const auto now = Clock::now();
        std::string name = t.name();
        if (const auto dot = name.rfind('.'); name.rfind("layers.", 0) == 0 && dot != std::string::npos)
          name = name.substr(dot + 1);  // "layers.3.attn" -> "attn": summed over the layers
        (*into)[name] += std::chrono::duration<double>(now - last).count();
        last = Clock::now();  // the observer's own time is not charged
      });
      slearn::KVCache scratch = model.make_cache(batch, prompt_len + new_tokens);
      model.forward(prompt_ids, prefill_chunks, scratch, slearn::Model::Logits::LastOfEachChunk);
      into = &decode_stage_seconds;
      std::vector<slearn::TokenId> step_ids(static_cast<std::size_t>(batch), 1);
      std::vector<slearn::SequenceChunk> step_chunks;
      for (int step = 0; step < std::min(8, new_tokens); ++step) {
        step_chunks.clear();
        for (int b = 0; b < batch; ++b) step_chunks.push_back({b, prompt_len + step, 1});
        last = Clock::now();
        model.forward(step_ids, step_chunks, scratch, slearn::Model::Logits::LastOfEachChunk);
      }
      model.set_observer({});
    }
    // The prefill's GEMMs alone, at its shapes: m = batch x prompt_len rows against each weight.
    const slearn::ModelConfig& c = model.config();
    const std::int64_t m = static_cast<std::int64_t>(batch) * prompt_len, h = c.hidden_size;
    const std::int64_t qkv = (c.num_attention_heads + 2 * c.num_key_value_heads) * c.head_dim;
    nlohmann::json gemms = nlohmann::json::object();
    for (const auto& [name, n, k] : std::vector<std::tuple<std::string, std::int64_t, std::int64_t>>{
             {"qkv", qkv, h}, {"o_proj", h, c.num_attention_heads * c.head_dim}, {"gate_up", 2 * c.intermediate_size, h},
             {"down", h, c.intermediate_size}}) {
      std::vector<float> a(static_cast<std::size_t>(m * k), 0.5f), w(static_cast<std::size_t>(n * k), 0.25f),
          out(static_cast<std::size_t>(m * n));
      double best = 1e30;
      for (int r = 0; r < 4; ++r) {
        const auto start = Clock::now();
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, static_cast<blasint>(m), static_cast<blasint>(n),
                    static_cast<blasint>(k), 1.0f, a.data(), static_cast<blasint>(k), w.data(),
                    static_cast<blasint>(k), 0.0f, out.data(), static_cast<blasint>(n));
        if (r > 0) best = std::min(best, seconds_since(start));
      }
      gemms[name] = 2.0 * static_cast<double>(m * n * k) / best / 1e9;
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
                        {"cpu_weights", model.weights().layers.empty() ? "?" :
                                        std::string(slearn::dtype_name(model.weights().layers[0].down_proj.dtype()))},
                        {"threads", plan.threads},
                        {"layers", layers},
                        {"batch", batch},
                        {"prompt_len", prompt_len},
                        {"new_tokens", new_tokens},
                        {"prefill_s", prefill_best},
                        {"decode_s", decode_seconds},
                        {"prefill_tok_s", batch * prompt_len / prefill_best},
                        {"decode_tok_s", batch * new_tokens / decode_seconds},
                        {"parameters", model.parameter_count()},
                        {"prefill_stage_s", stage_seconds},
                        {"decode_stage_s", decode_stage_seconds},
                        {"sgemm_gflop_s", gemms},
                        {"cpu", slearn::describe(slearn::cpu_info())}};
    std::cout << line.dump() << std::endl;
  } catch (const std::exception& e) {
    std::cerr << "bench_cpu_model: " << e.what() << std::endl;
    return 1;
  }
  return 0;
}
