// Generation benchmark at real model shapes with random weights made on the device (Model::random: no file,
// no host copy), through slearn::generate (greedy, no stop ids, so every sequence runs to --new-tokens), the
// path `slearn_dist generate` takes. Run by perf/gpu/check.sh beside `peer_gpu.py generate` (transformers
// generate on the same GPU).
//   --batch 1    batch-1 decode: prefill tok/s (the prompt over the time to the first token), decode tok/s and
//                ms per step over the remaining steps, the bytes a decode step reads (bf16 weights + the KV
//                cache at the mean context) and the percentage of the floor: the time those bytes take at
//                --copy-gbs (the device-to-device copy bandwidth bench_gpu_ops measured in the same run)
//                over the measured step time.
//   --batch B>1  batched generation of B sequences: output tok/s (all B x new tokens over the whole call,
//                prefill included, as the peer's figure) and the decode phase alone.
// The step times come from generate's progress callback, called after every forward step. A short warm-up
// call at the same shapes runs first (allocations, GEMM plans, recorded steps); the best of --repeat timed
// calls is reported. One JSON line. --backend cpu --shape tiny runs the same code on the host (the dry run of
// check.sh); --dry-run prints the plan and touches no device.
#include <cuda_runtime_api.h>

#include <iostream>
#include <random>

#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

#include "cuda/cuda_check.hpp"
#include "gpu_bench.hpp"
#include "slearn/backend.hpp"
#include "slearn/generate.hpp"
#include "slearn/model.hpp"

namespace {

namespace perf = slearn::perf;

struct Run {
  double first_step_s = 0;  // the prefill forward and the first token
  double total_s = 0;
  std::int64_t steps = 0;
  std::int64_t generated = 0;
};

Run timed_generate(slearn::Model& model, const std::vector<std::vector<slearn::TokenId>>& prompts,
                   const slearn::GenerationOptions& options) {
  Run run;
  const auto start = perf::Clock::now();
  const auto results = slearn::generate(model, prompts, options, [&](const slearn::GenerationProgress&) {
    if (++run.steps == 1) run.first_step_s = perf::seconds_since(start);
  });
  run.total_s = perf::seconds_since(start);
  for (const auto& r : results) run.generated += static_cast<std::int64_t>(r.tokens.size());
  return run;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"Batch-1 decode and batched generation at a named model shape, random weights (one JSON line)"};
  std::string shape = "qwen2.5-0.5b", backend_name = "cuda";
  std::int64_t batch = 1, prompt_len = 128, new_tokens = 256, warmup_tokens = 4;
  int repeat = 2;
  double copy_gbs = 0;
  std::uint64_t seed = 1;
  bool dry_run = false;
  app.add_option("--shape", shape, "qwen2.5-0.5b, qwen2.5-7b or tiny")->capture_default_str();
  app.add_option("--backend", backend_name, "cuda, or cpu (with --shape tiny) for a host run")
      ->capture_default_str();
  app.add_option("--batch", batch, "sequences generated together")->capture_default_str();
  app.add_option("--prompt-len", prompt_len, "prompt tokens per sequence")->capture_default_str();
  app.add_option("--new-tokens", new_tokens, "generated tokens per sequence")->capture_default_str();
  app.add_option("--warmup-tokens", warmup_tokens, "new tokens of the untimed warm-up call (0: none)")
      ->capture_default_str();
  app.add_option("--repeat", repeat, "timed calls; the fastest is reported")->capture_default_str();
  app.add_option("--copy-gbs", copy_gbs, "copy bandwidth (GB/s, read + write) for the floor; 0: no floor")
      ->capture_default_str();
  app.add_option("--seed", seed)->capture_default_str();
  app.add_flag("--dry-run", dry_run, "validate the arguments, print the plan, touch no device");
  CLI11_PARSE(app, argc, argv);

  try {
    const slearn::ModelConfig config = slearn::reference_shape(shape);
    if (backend_name != "cuda" && backend_name != "cpu") throw slearn::InputError("--backend: cuda or cpu");
    if (batch <= 0 || prompt_len <= 0 || new_tokens < 2 || warmup_tokens < 0 || repeat <= 0 || copy_gbs < 0)
      throw slearn::InputError(
          "--batch, --prompt-len and --repeat must be positive, --new-tokens at least 2, --copy-gbs >= 0");
    if (prompt_len + new_tokens > config.max_position_embeddings)
      throw slearn::InputError("--prompt-len + --new-tokens exceed the shape's context");
    const std::string name = perf::decode_case(shape, batch, prompt_len, new_tokens);
    const double weight_bytes = perf::decode_weight_bytes(config);
    const double kv_bytes =
        static_cast<double>(batch) * perf::kv_read_bytes(config, perf::mean_decode_context(prompt_len, new_tokens));
    if (dry_run) {
      std::cout << nlohmann::json{{"plan", "bench_gpu_decode"}, {"case", name},
                                  {"backend", backend_name},     {"weight_bytes", weight_bytes},
                                  {"kv_bytes_per_step", kv_bytes}, {"copy_gb_s", copy_gbs},
                                  {"warmup_tokens", warmup_tokens}, {"repeat", repeat}}
                       .dump()
                << std::endl;
      return 0;
    }

    auto backend = slearn::make_backend(backend_name);
    std::string device = "host";
    if (backend_name == "cuda") {
      int index = 0;
      cudaDeviceProp prop{};
      CUDA_CHECK(cudaGetDevice(&index));
      CUDA_CHECK(cudaGetDeviceProperties(&prop, index));
      device = prop.name;
    }
    const auto init_start = perf::Clock::now();
    slearn::Model model = slearn::Model::random(config, *backend, slearn::Model::RandomInit{seed});
    const double init_s = perf::seconds_since(init_start);

    std::mt19937 rng(static_cast<std::uint32_t>(seed));
    std::uniform_int_distribution<slearn::TokenId> token(0, static_cast<slearn::TokenId>(config.vocab_size - 1));
    std::vector<std::vector<slearn::TokenId>> prompts(static_cast<std::size_t>(batch));
    for (auto& p : prompts) {
      p.resize(static_cast<std::size_t>(prompt_len));
      for (auto& id : p) id = token(rng);
    }
    slearn::GenerationOptions options;
    options.batch_size = static_cast<std::int32_t>(batch);
    if (warmup_tokens > 0) {
      options.max_new_tokens = warmup_tokens;
      (void)timed_generate(model, prompts, options);
    }
    options.max_new_tokens = new_tokens;
    Run best;
    for (int r = 0; r < repeat; ++r) {
      const Run run = timed_generate(model, prompts, options);
      if (run.generated != batch * new_tokens)
        throw slearn::Error("generated " + std::to_string(run.generated) + " tokens, expected " +
                            std::to_string(batch * new_tokens));
      if (r == 0 || run.total_s < best.total_s) best = run;
    }

    const double decode_s = best.total_s - best.first_step_s;
    const double decode_steps = static_cast<double>(new_tokens - 1);
    const double step_s = decode_s / decode_steps;
    const double bytes_per_step = weight_bytes + kv_bytes;
    nlohmann::json line{{"bench", batch == 1 ? "decode" : "generate"},
                        {"impl", backend_name == "cuda" ? "slearn-cuda" : "slearn-cpu"},
                        {"case", name},
                        {"device", device},
                        {"shape", shape},
                        {"batch", batch},
                        {"prompt_len", prompt_len},
                        {"new_tokens", new_tokens},
                        {"parameters", model.parameter_count()},
                        {"init_s", init_s},
                        {"total_s", best.total_s},
                        {"steps", best.steps},
                        {"out_tok_s", static_cast<double>(batch * new_tokens) / best.total_s},
                        {"prefill_s", best.first_step_s},
                        {"prefill_tok_s", static_cast<double>(batch * prompt_len) / best.first_step_s},
                        {"decode_s", decode_s},
                        {"decode_tok_s", static_cast<double>(batch) * decode_steps / decode_s},
                        {"ms_per_step", step_s * 1e3},
                        {"weight_bytes", weight_bytes},
                        {"kv_bytes_per_step", kv_bytes},
                        {"bytes_per_step", bytes_per_step},
                        {"copy_gb_s", copy_gbs},
                        {"repeat", repeat},
                        {"warmup_tokens", warmup_tokens}};
    if (copy_gbs > 0) {
      const double floor_s = bytes_per_step / (copy_gbs * 1e9);
      line["floor_ms_per_step"] = floor_s * 1e3;
      line["floor_pct"] = 100.0 * floor_s / step_s;
    }
    std::cout << line.dump() << std::endl;
  } catch (const std::exception& e) {
    std::cerr << "bench_gpu_decode: " << e.what() << std::endl;
    return 1;
  }
  return 0;
}
