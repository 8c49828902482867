// LoRA training-step benchmark at a real model shape with random weights made on the backend
// (Model::random: no file), through the trainer's own pieces in the trainer's order (src/train/trainer.cpp):
// AdapterTrainingState, the backend's GradientSum over a single-process communicator, LoraTrainingGraph's
// forward_backward per micro-batch (the last one signalling each finished layer to the sum), finish,
// check_flat, the clipped AdamW update. Run by perf/gpu/check.sh beside perf/gpu/peer_train.py (transformers +
// PEFT on the same GPU, the same step).
//
// A step: --micro-batches micro-batches of --micro-batch random sequences of --seq-len tokens, a loss on every
// token but each sequence's last; LoRA r 64, alpha 16, dropout 0.05 on all seven projections (LoraSettings'
// defaults; --rank to change r). --warmup untimed steps (allocations, GEMM plans), then --steps timed ones,
// each closed by a device synchronisation; the median is reported. tokens/s = tokens of a step / median step.
//
// FLOPs per token (what a step must compute, per token of the batch; 2 flops per multiply-add):
//   P_linear = layers * (h*q + 2*h*kv + q*h + 3*h*i)          projection weights (q = heads*d, kv = kv_heads*d)
//   base     = 2*P_linear (forward) + 2*P_linear (input gradients; the frozen weights get none)
//   attn     = layers * 2*heads*d*(S+1) forward (causal: 4*heads*d*S(S+1)/2 per sequence, over S tokens),
//              backward 2.5x the forward (5 products against the forward's 2: the FlashAttention-2 count)
//   lora     = layers * sum over the seven projections (in, out) of 6*r*(in + out): forward x A^T and t B^T
//              (2r(in+out)), backward dB, dy B, dA and the dx term (4r(in+out))
//   lm_head  = 2*V*h forward + 2*V*h for the hidden state's gradient
//   --recompute adds one more forward of every layer: 2*P_linear + the attention forward + the LoRA forward
//   Left out: norms, RoPE, SwiGLU, softmax and loss elementwise work, the embedding, AdamW (per step, over
//   the adapter only).
// At qwen2.5-7b, S 512, r 64, no recomputation: 26.10 (base) + 0.36 (attn) + 0.97 (lora) + 2.18 (lm_head)
// = 29.61 GFLOP/token (`--dry-run` prints it; --layers changes only the per-layer terms).
//
// MFU (flop_per_token * tokens/s over a peak), two of them:
//   measured  the bf16 GEMM rate of the same run: --gemm-size^3 through Backend::matmul (a x b^T, as the
//             projections; cuBLASLt bf16 operands, fp32 accumulation on cuda), the median of 5 samples of
//             enough calls for ~20 ms each, timed by a device synchronisation and the host clock
//   nominal   --nominal-tflops, default 989: the H200 SXM's datasheet dense bf16 peak (labelled nominal;
//             cuda only)
// One JSON line. --backend cpu --shape tiny runs the same code on the host (check.sh --dry-run's stand-in);
// --dry-run prints the plan (with the FLOP count) and touches no device.
#include <cuda_runtime_api.h>

#include <array>
#include <cmath>
#include <iostream>
#include <random>

#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

#include "cuda/cuda_check.hpp"
#include "gpu_bench.hpp"
#include "slearn/backend.hpp"
#include "slearn/communicator.hpp"
#include "slearn/lora.hpp"
#include "slearn/model.hpp"
#include "slearn/threads.hpp"
#include "train/flat_adapter.hpp"
#include "train/lora_graph.hpp"

namespace {

namespace perf = slearn::perf;

struct Options {
  std::string shape = "qwen2.5-7b", backend = "cuda";
  std::int64_t layers = 0;  // 0: the shape's own
  std::int64_t seq_len = 512, micro_batch = 4, micro_batches = 1, rank = 64, gemm_size = 0;
  int steps = 5, warmup = 2;
  bool recompute = false, dry_run = false;
  double nominal_tflops = 989.0;
  std::uint64_t seed = 1;
};

// The case name the peer (peer_train.py, train_case) forms the same way, so report.py pairs the two lines.
std::string train_case(const Options& o) {
  return "train " + o.shape + " layers=" + std::to_string(o.layers) + " seq=" + std::to_string(o.seq_len) +
         " mb=" + std::to_string(o.micro_batch) + "x" + std::to_string(o.micro_batches) +
         " r=" + std::to_string(o.rank) + (o.recompute ? " recompute" : "");
}

struct FlopCount {
  double base = 0, attention = 0, lora = 0, lm_head = 0;
  double total() const { return base + attention + lora + lm_head; }
};

// The formula of the file comment, per token.
FlopCount flops_per_token(const slearn::ModelConfig& c, std::int64_t seq_len, std::int64_t rank, bool recompute) {
  const double h = static_cast<double>(c.hidden_size), i = static_cast<double>(c.intermediate_size);
  const double q = static_cast<double>(c.num_attention_heads * c.head_dim);
  const double kv = static_cast<double>(c.num_key_value_heads * c.head_dim);
  const double layers = static_cast<double>(c.num_hidden_layers), r = static_cast<double>(rank);
  const double p_linear = layers * (h * q + 2 * h * kv + q * h + 3 * h * i);
  const double forward_passes = recompute ? 2.0 : 1.0;
  const double attention_forward = layers * perf::causal_attention_flops(seq_len, c.num_attention_heads, c.head_dim) /
                                   static_cast<double>(seq_len);
  // (in + out) of q, k, v, o, gate, up, down.
  const std::array<double, 7> in_out{h + q, h + kv, h + kv, q + h, h + i, h + i, i + h};
  double lora_forward = 0;
  for (const double n : in_out) lora_forward += 2 * r * n;
  lora_forward *= layers;
  FlopCount f;
  f.base = 2 * p_linear * forward_passes + 2 * p_linear;
  f.attention = attention_forward * forward_passes + 2.5 * attention_forward;
  f.lora = lora_forward * forward_passes + 2 * lora_forward;
  f.lm_head = 4 * static_cast<double>(c.vocab_size) * h;
  return f;
}

void validate(const Options& o, const slearn::ModelConfig& config) {
  if (o.backend != "cuda" && o.backend != "cpu") throw slearn::InputError("--backend: cuda or cpu");
  if (o.layers < 0 || o.seq_len < 2 || o.micro_batch <= 0 || o.micro_batches <= 0 || o.rank <= 0 ||
      o.gemm_size < 0 || o.steps <= 0 || o.warmup < 0 || o.nominal_tflops <= 0)
    throw slearn::InputError(
        "--seq-len must be at least 2; --micro-batch, --micro-batches, --rank, --steps and --nominal-tflops "
        "positive; --layers, --gemm-size and --warmup not negative");
  if (o.seq_len > config.max_position_embeddings) throw slearn::InputError("--seq-len exceeds the shape's context");
}

class Device {
 public:
  explicit Device(bool cuda) : cuda_(cuda) {}
  void sync() const {
    if (cuda_) CUDA_CHECK(cudaDeviceSynchronize());
  }
  std::string name() const {
    if (!cuda_) return "host";
    int index = 0;
    cudaDeviceProp prop{};
    CUDA_CHECK(cudaGetDevice(&index));
    CUDA_CHECK(cudaGetDeviceProperties(&prop, index));
    return prop.name;
  }
  // Bytes of device memory in use (the backend's pool keeps freed blocks, so after the steps this is close to
  // their peak); 0 on the host.
  std::size_t used_bytes() const {
    if (!cuda_) return 0;
    std::size_t free = 0, total = 0;
    CUDA_CHECK(cudaMemGetInfo(&free, &total));
    return total - free;
  }

 private:
  bool cuda_;
};

// TFLOP/s of an n^3 bf16 GEMM through the backend's matmul (c = a b^T, as a projection).
double gemm_tflops(slearn::Backend& backend, const Device& device, std::int64_t n) {
  slearn::Tensor a = backend.zeros({n, n}, "peak.a"), b = backend.zeros({n, n}, "peak.b");
  slearn::Tensor c = backend.zeros({n, n}, "peak.c");
  backend.fill_random(a, 101, 1.0f);
  backend.fill_random(b, 102, 1.0f);
  auto op = [&] { backend.matmul(a, false, b, true, 1.0f, 0.0f, c); };
  op();
  device.sync();
  const auto start = perf::Clock::now();
  op();
  device.sync();
  const double once = std::max(perf::seconds_since(start), 1e-7);
  const int calls = static_cast<int>(std::clamp(std::ceil(20e-3 / once), 1.0, 200.0));
  std::vector<double> seconds;
  for (int s = 0; s < 5; ++s) {
    const auto t0 = perf::Clock::now();
    for (int k = 0; k < calls; ++k) op();
    device.sync();
    seconds.push_back(perf::seconds_since(t0) / calls);
  }
  const double nd = static_cast<double>(n);
  return 2.0 * nd * nd * nd / perf::median(seconds) / 1e12;
}

struct StepResult {
  double seconds = 0, loss_sum = 0;
  std::int64_t counted = 0;
  double grad_norm = 0;
};

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"One LoRA training step at a named model shape, random weights (one JSON line)"};
  Options o;
  app.add_option("--shape", o.shape, "qwen2.5-7b, qwen2.5-0.5b or tiny")->capture_default_str();
  app.add_option("--backend", o.backend, "cuda, or cpu (with --shape tiny) for a host run")->capture_default_str();
  app.add_option("--layers", o.layers, "decoder layers (0: the shape's own); fewer to fit a time budget")
      ->capture_default_str();
  app.add_option("--seq-len", o.seq_len, "tokens per sequence")->capture_default_str();
  app.add_option("--micro-batch", o.micro_batch, "sequences per micro-batch")->capture_default_str();
  app.add_option("--micro-batches", o.micro_batches, "micro-batches per step (gradient accumulation)")
      ->capture_default_str();
  app.add_option("--rank", o.rank, "LoRA r (alpha 16, dropout 0.05, all seven projections)")->capture_default_str();
  app.add_option("--steps", o.steps, "timed steps; the median is reported")->capture_default_str();
  app.add_option("--warmup", o.warmup, "untimed steps first")->capture_default_str();
  app.add_flag("--recompute", o.recompute, "gradient checkpointing (each layer's forward again in the backward)");
  app.add_option("--gemm-size", o.gemm_size, "n of the n^3 GEMM of the measured peak (0: 8192 on cuda, 512 on cpu)")
      ->capture_default_str();
  app.add_option("--nominal-tflops", o.nominal_tflops, "nominal dense bf16 peak (989: H200 SXM datasheet)")
      ->capture_default_str();
  app.add_option("--seed", o.seed)->capture_default_str();
  app.add_flag("--dry-run", o.dry_run, "validate the arguments, print the plan, touch no device");
  CLI11_PARSE(app, argc, argv);

  try {
    slearn::ModelConfig config = slearn::reference_shape(o.shape);
    validate(o, config);
    if (o.layers == 0) o.layers = config.num_hidden_layers;
    config.num_hidden_layers = o.layers;
    if (o.gemm_size == 0) o.gemm_size = o.backend == "cuda" ? 8192 : 512;
    const bool cuda = o.backend == "cuda";
    const std::string name = train_case(o);
    const FlopCount flops = flops_per_token(config, o.seq_len, o.rank, o.recompute);
    const std::int64_t step_tokens = o.micro_batches * o.micro_batch * o.seq_len;
    const nlohmann::json flop_terms{{"base", flops.base},
                                    {"attention", flops.attention},
                                    {"lora", flops.lora},
                                    {"lm_head", flops.lm_head}};
    if (o.dry_run) {
      std::cout << nlohmann::json{{"plan", "bench_gpu_train"}, {"case", name},          {"backend", o.backend},
                                  {"tokens_per_step", step_tokens}, {"flop_per_token", flops.total()},
                                  {"flop_terms", flop_terms}, {"gemm_size", o.gemm_size},
                                  {"warmup", o.warmup},      {"steps", o.steps}}
                       .dump()
                << std::endl;
      return 0;
    }

    if (!cuda) slearn::apply_thread_plan(slearn::plan_threads(std::nullopt));
    auto backend = slearn::make_backend(o.backend);
    const Device device(cuda);
    const std::string device_name = device.name();
    const double peak_tflops = gemm_tflops(*backend, device, o.gemm_size);

    const auto init_start = perf::Clock::now();
    // A tied head is the embedding table: entries in +-1/sqrt(hidden) keep the logits, and so the loss, near a
    // trained model's (about log(vocab)) instead of in the hundreds.
    slearn::Model::RandomInit init{o.seed};
    if (config.tie_word_embeddings) init.embed_scale = 1.0f / std::sqrt(static_cast<float>(config.hidden_size));
    slearn::Model model = slearn::Model::random(config, *backend, init);
    const auto host = slearn::make_cpu_backend();
    slearn::LoraSettings lora;
    lora.r = o.rank;
    slearn::LoraAdapter adapter = slearn::LoraAdapter::initialize(config, lora, o.seed, *host);
    slearn::AdapterTrainingState state(*backend, adapter);
    const slearn::FlatLayout& layout = state.layout();
    slearn::LoraTrainingGraph graph(model, adapter, o.recompute);
    const auto comm = slearn::make_single_process_communicator();
    const auto sum = backend->make_gradient_sum(*comm, layout.elements(), slearn::GradientSumOptions{});
    std::vector<slearn::Tensor> gradients = layout.views(sum->gradients(), "grad.");
    device.sync();
    const double init_s = perf::seconds_since(init_start);

    std::mt19937 rng(static_cast<std::uint32_t>(o.seed));
    std::uniform_int_distribution<slearn::TokenId> token(0, static_cast<slearn::TokenId>(config.vocab_size - 1));
    std::vector<slearn::PackedBatch> batches(static_cast<std::size_t>(o.micro_batches));
    for (auto& batch : batches)
      for (std::int64_t s = 0; s < o.micro_batch; ++s) {
        std::vector<slearn::TokenId> ids(static_cast<std::size_t>(o.seq_len)), targets(ids.size(), -100);
        for (auto& id : ids) id = token(rng);
        for (std::size_t t = 0; t + 1 < ids.size(); ++t) targets[t] = ids[t + 1];
        batch.add(ids, targets);
      }
    const std::int64_t learned = o.micro_batches * o.micro_batch * (o.seq_len - 1);
    const slearn::OptimizerSettings optimizer;

    auto run_step = [&](std::int64_t step) {
      StepResult r;
      const auto start = perf::Clock::now();
      sum->begin_step();
      for (std::size_t j = 0; j < batches.size(); ++j) {
        const bool last = j + 1 == batches.size();
        auto layer_done = [&](std::size_t layer) { sum->ready_from(layout.layer_begin(layer)); };
        sum->begin_micro_batch();
        const slearn::BatchLoss loss = graph.forward_backward(
            batches[j], 1.0f / static_cast<float>(learned), static_cast<std::uint64_t>(step * 1000 + j), gradients,
            last ? std::function<void(std::size_t)>(layer_done) : std::function<void(std::size_t)>());
        sum->end_micro_batch();
        r.loss_sum += loss.loss_sum;
        r.counted += loss.counted;
      }
      sum->finish();
      const slearn::Backend::FlatCheck check = backend->check_flat(sum->gradients(), layout.segment_ends());
      if (check.first_non_finite >= 0)
        throw slearn::Error("step " + std::to_string(step) + ": the gradient of " +
                            layout.describe(check.first_non_finite) + " is not finite");
      r.grad_norm = std::sqrt(check.sum_squares);
      state.update(sum->gradients(), slearn::adamw_scalars(optimizer, optimizer.learning_rate, step,
                                                           slearn::clip_factor(r.grad_norm, optimizer.max_grad_norm)));
      device.sync();
      r.seconds = perf::seconds_since(start);
      return r;
    };

    std::int64_t step = 0;
    double warmup_s = 0;
    for (int w = 0; w < o.warmup; ++w) warmup_s += run_step(++step).seconds;
    std::vector<double> seconds;
    StepResult last;
    for (int s = 0; s < o.steps; ++s) {
      last = run_step(++step);
      seconds.push_back(last.seconds);
    }
    const double step_s = perf::median(seconds);
    const double tokens_per_s = static_cast<double>(step_tokens) / step_s;
    const double achieved_tflops = flops.total() * tokens_per_s / 1e12;
    const double loss = last.loss_sum / static_cast<double>(std::max<std::int64_t>(1, last.counted));
    if (!std::isfinite(loss)) throw slearn::Error("the loss is not finite");

    nlohmann::json line{{"bench", "train"},
                        {"impl", cuda ? "slearn-cuda" : "slearn-cpu"},
                        {"case", name},
                        {"device", device_name},
                        {"shape", o.shape},
                        {"layers", o.layers},
                        {"seq_len", o.seq_len},
                        {"micro_batch", o.micro_batch},
                        {"micro_batches", o.micro_batches},
                        {"rank", o.rank},
                        {"alpha", lora.alpha},
                        {"dropout", lora.dropout},
                        {"recompute", o.recompute},
                        {"parameters", model.parameter_count()},
                        {"lora_parameters", adapter.parameter_count()},
                        {"tokens_per_step", step_tokens},
                        {"init_s", init_s},
                        {"warmup", o.warmup},
                        {"warmup_s", warmup_s},
                        {"steps", o.steps},
                        {"step_s", step_s},
                        {"step_s_min", *std::min_element(seconds.begin(), seconds.end())},
                        {"tokens_per_s", tokens_per_s},
                        {"loss", loss},
                        {"grad_norm", last.grad_norm},
                        {"flop_per_token", flops.total()},
                        {"flop_terms", flop_terms},
                        {"achieved_tflop_s", achieved_tflops},
                        {"gemm_size", o.gemm_size},
                        {"gemm_tflop_s", peak_tflops},
                        {"mfu_measured_pct", 100.0 * achieved_tflops / peak_tflops},
                        {"activation_bytes", graph.activation_bytes()},
                        {"device_used_bytes", device.used_bytes()}};
    if (cuda) {
      line["nominal_peak_tflop_s"] = o.nominal_tflops;
      line["nominal_peak_note"] = "nominal: H200 SXM dense bf16 datasheet figure, not measured";
      line["mfu_nominal_pct"] = 100.0 * achieved_tflops / o.nominal_tflops;
    }
    std::cout << line.dump() << std::endl;
  } catch (const std::exception& e) {
    std::cerr << "bench_gpu_train: " << e.what() << std::endl;
    return 1;
  }
  return 0;
}
