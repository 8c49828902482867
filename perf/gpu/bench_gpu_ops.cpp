// Device micro-benchmarks, run by perf/gpu/check.sh beside `peer_gpu.py ops` on the same GPU:
//   copy       device-to-device cudaMemcpyAsync; bytes read plus bytes written over the median time. It is
//              the ceiling every memory-bound figure of the check is normalised by (the decode floor).
//   gemm       cuBLASLt through cuda::Gemm, the backend's linear (x W^T, W [n, k] bf16, fp32 accumulation,
//              bf16 out), at 8192^3 and at the 7B projections for decode and prefill row counts. W rotates
//              over enough copies to exceed the L2, so skinny products read their weights from HBM as a
//              decode step does.
//   attention  causal prefill attention of one sequence through Backend::attention over a KV cache, so the
//              figure is whatever kernel the backend dispatches (the timing includes its host staging).
// Copy and GEMM are timed by CUDA events on the stream they run on; the backend op by a device
// synchronisation and the host clock around a calibrated number of calls. Every figure is the median of
// --repeat samples after --warmup calls. One JSON line per measurement.
//
// --backend cpu runs the same code on the host at tiny sizes (memcpy, the CPU backend's matmul and
// attention): check.sh --dry-run uses it to exercise everything but the CUDA calls. --dry-run prints the
// plan and touches no device.
#include <cuda_runtime_api.h>

#include <cmath>
#include <cstring>
#include <iostream>
#include <memory>
#include <optional>

#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

#include "cuda/cuda_check.hpp"
#include "cuda/gemm.hpp"
#include "gpu_bench.hpp"
#include "slearn/backend.hpp"
#include "slearn/tensor.hpp"

namespace {

using slearn::Backend;
using slearn::Tensor;
namespace perf = slearn::perf;

struct Options {
  std::string backend = "cuda";
  std::vector<std::string> only{"copy", "gemm", "attention"};
  std::int64_t copy_mib = 2048;
  std::string gemm_shapes = "8192x8192x8192,7b";
  std::vector<std::int64_t> gemm_rows{1, 64, 256, 4096};
  std::vector<std::int64_t> attention_seqs{512, 2048, 4096};
  std::int64_t heads = 28, kv_heads = 4, head_dim = 128;
  std::int64_t l2_bytes = 256ll << 20;  // weights rotate over at least this many bytes
  int warmup = 3, repeat = 20;
  bool dry_run = false;
};

struct GemmShape {
  std::int64_t m, n, k;
  std::string what;
};

// "MxNxK" items, and "7b": the four projections of Qwen2.5-7B (fused qkv, o, fused gate_up, down) at each of
// the row counts.
std::vector<GemmShape> gemm_shapes(const Options& o) {
  std::vector<GemmShape> shapes;
  for (const std::string& item : perf::split_list(o.gemm_shapes)) {
    if (item == "7b") {
      const slearn::ModelConfig c = slearn::reference_shape("qwen2.5-7b");
      const std::int64_t h = c.hidden_size, q = c.num_attention_heads * c.head_dim;
      const std::int64_t kv = c.num_key_value_heads * c.head_dim, i = c.intermediate_size;
      for (const std::int64_t m : o.gemm_rows) {
        shapes.push_back({m, q + 2 * kv, h, "7b qkv_proj"});
        shapes.push_back({m, h, q, "7b o_proj"});
        shapes.push_back({m, 2 * i, h, "7b gate_up_proj"});
        shapes.push_back({m, h, i, "7b down_proj"});
      }
      continue;
    }
    GemmShape s{0, 0, 0, "square"};
    char x1 = 0, x2 = 0, rest = 0;
    const int got = std::sscanf(item.c_str(), "%ld%c%ld%c%ld%c", &s.m, &x1, &s.n, &x2, &s.k, &rest);
    if (got != 5 || x1 != 'x' || x2 != 'x' || s.m <= 0 || s.n <= 0 || s.k <= 0)
      throw slearn::InputError("--gemm-shapes: \"" + item + "\" is not MxNxK (positive) or 7b");
    if (s.m != s.n || s.n != s.k) s.what = "given";
    shapes.push_back(s);
  }
  return shapes;
}

void validate(const Options& o) {
  for (const std::string& part : o.only)
    if (part != "copy" && part != "gemm" && part != "attention")
      throw slearn::InputError("--only: unknown part \"" + part + "\" (copy, gemm, attention)");
  if (o.backend != "cuda" && o.backend != "cpu") throw slearn::InputError("--backend: cuda or cpu");
  if (o.copy_mib <= 0 || o.warmup < 0 || o.repeat <= 0 || o.heads <= 0 || o.kv_heads <= 0 || o.head_dim <= 0 ||
      o.heads % o.kv_heads != 0)
    throw slearn::InputError("sizes, --warmup and --repeat must be positive, --heads a multiple of --kv-heads");
  for (const std::int64_t m : o.gemm_rows)
    if (m <= 0) throw slearn::InputError("--gemm-rows must be positive");
  for (const std::int64_t s : o.attention_seqs)
    if (s <= 0) throw slearn::InputError("--attention-seqs must be positive");
  (void)gemm_shapes(o);  // throws on a malformed item
}

bool wanted(const Options& o, std::string_view part) {
  return std::find(o.only.begin(), o.only.end(), part) != o.only.end();
}

class Bench {
 public:
  Bench(const Options& options, std::unique_ptr<Backend> backend)
      : o_(options), cuda_(options.backend == "cuda"), backend_(std::move(backend)) {
    if (cuda_) {
      cudaDeviceProp prop{};
      int device = 0;
      CUDA_CHECK(cudaGetDevice(&device));
      CUDA_CHECK(cudaGetDeviceProperties(&prop, device));
      device_ = prop.name;
      CUDA_CHECK(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking));
      CUDA_CHECK(cudaEventCreate(&start_));
      CUDA_CHECK(cudaEventCreate(&stop_));
      gemm_ = std::make_unique<slearn::cuda::Gemm>();
    } else {
      device_ = "host";
    }
  }
  ~Bench() {
    if (cuda_) {
      cudaEventDestroy(start_);
      cudaEventDestroy(stop_);
      cudaStreamDestroy(stream_);
    }
  }

  void copy() {
    const std::int64_t bytes = o_.copy_mib << 20;
    std::vector<double> ms;
    if (cuda_) {
      Tensor src = backend_->zeros({bytes / 2}, "copy.src"), dst = backend_->zeros({bytes / 2}, "copy.dst");
      CUDA_CHECK(cudaDeviceSynchronize());
      ms = time_on_stream([&] {
        CUDA_CHECK(cudaMemcpyAsync(dst.data(), src.data(), static_cast<std::size_t>(bytes),
                                   cudaMemcpyDeviceToDevice, stream_));
      });
    } else {
      std::vector<char> src(static_cast<std::size_t>(bytes), 1), dst(static_cast<std::size_t>(bytes));
      ms = time_on_host([&] { std::memcpy(dst.data(), src.data(), src.size()); }, 1);
    }
    const double t = perf::median(ms) / 1e3;
    emit({{"bench", "copy"},
          {"case", perf::copy_case(bytes)},
          {"bytes", bytes},
          {"ms", t * 1e3},
          {"gb_s", 2.0 * static_cast<double>(bytes) / t / 1e9},
          {"note", "bytes read + bytes written"}});
  }

  void gemm(const GemmShape& s) {
    const double weight_bytes = 2.0 * static_cast<double>(s.n * s.k);
    const int copies = static_cast<int>(
        std::clamp<double>(std::ceil(static_cast<double>(o_.l2_bytes) / weight_bytes), 1.0, 16.0));
    Tensor a = random(backend_->zeros({s.m, s.k}, "gemm.a"), 1);
    Tensor c = backend_->zeros({s.m, s.n}, "gemm.c");
    std::vector<Tensor> weights;
    for (int i = 0; i < copies; ++i)
      weights.push_back(random(backend_->zeros({s.n, s.k}, "gemm.w" + std::to_string(i)),
                               static_cast<std::uint64_t>(2 + i)));
    int turn = 0;
    std::vector<double> ms;
    if (cuda_) {
      CUDA_CHECK(cudaDeviceSynchronize());
      ms = time_on_stream([&] {
        const Tensor& w = weights[static_cast<std::size_t>(turn++ % copies)];
        gemm_->run({a.data(), false, s.k, w.data(), true, s.k, c.data(), slearn::cuda::GemmOut::BF16, s.n,
                    nullptr, s.m, s.n, s.k, 1.0f, 0.0f, stream_});
      });
    } else {
      ms = time_on_host([&] {
        backend_->matmul(a, false, weights[static_cast<std::size_t>(turn++ % copies)], true, 1.0f, 0.0f, c);
      }, 1);
    }
    const double t = perf::median(ms) / 1e3;
    const double flops = 2.0 * static_cast<double>(s.m) * static_cast<double>(s.n) * static_cast<double>(s.k);
    const double bytes = 2.0 * static_cast<double>(s.m * s.k + s.n * s.k + s.m * s.n);
    emit({{"bench", "gemm"},
          {"case", perf::gemm_case(s.m, s.n, s.k)},
          {"what", s.what},
          {"m", s.m},
          {"n", s.n},
          {"k", s.k},
          {"weight_copies", copies},
          {"ms", t * 1e3},
          {"tflop_s", flops / t / 1e12},
          {"gb_s", bytes / t / 1e9}});
  }

  void attention(std::int64_t seq) {
    const std::int64_t h = o_.heads, kvh = o_.kv_heads, d = o_.head_dim;
    Tensor q = random(backend_->zeros({seq, h, d}, "bench.q"), 11);
    Tensor k_cache = random(backend_->zeros({1, seq, kvh, d}, "bench.k_cache"), 12);
    Tensor v_cache = random(backend_->zeros({1, seq, kvh, d}, "bench.v_cache"), 13);
    Tensor out = backend_->zeros({seq, h, d}, "bench.attn_out");
    slearn::TokenLayout layout;
    for (std::int64_t i = 0; i < seq; ++i) {
      layout.slots.push_back(0);
      layout.positions.push_back(static_cast<std::int32_t>(i));
    }
    const float scale = 1.0f / std::sqrt(static_cast<float>(d));
    auto op = [&] { backend_->attention(q, k_cache, v_cache, layout, scale, out); };
    // Calibrate: enough calls per sample for about 5 ms of work, so the synchronisation is noise.
    op();
    const auto start = perf::Clock::now();
    op();
    sync();
    const double once = std::max(perf::seconds_since(start), 1e-7);
    const int calls = static_cast<int>(std::clamp(std::ceil(5e-3 / once), 1.0, 200.0));
    const double t = perf::median(time_on_host(op, calls)) / 1e3;
    const double flops = perf::causal_attention_flops(seq, h, d);
    emit({{"bench", "attention"},
          {"case", perf::attention_case(seq, h, kvh, d)},
          {"seq", seq},
          {"heads", h},
          {"kv_heads", kvh},
          {"head_dim", d},
          {"calls_per_sample", calls},
          {"ms", t * 1e3},
          {"tflop_s", flops / t / 1e12},
          {"note", "causal; Backend::attention over a KV cache, host staging included"}});
  }

 private:
  Tensor random(Tensor t, std::uint64_t key) {
    backend_->fill_random(t, key, 1.0f);
    return t;
  }
  void sync() {
    if (cuda_) CUDA_CHECK(cudaDeviceSynchronize());
  }

  // Milliseconds of each of --repeat calls of `op`, timed by events around it on stream_.
  template <class Op>
  std::vector<double> time_on_stream(Op&& op) {
    for (int i = 0; i < o_.warmup; ++i) op();
    std::vector<double> ms;
    for (int r = 0; r < o_.repeat; ++r) {
      CUDA_CHECK(cudaEventRecord(start_, stream_));
      op();
      CUDA_CHECK(cudaEventRecord(stop_, stream_));
      CUDA_CHECK(cudaEventSynchronize(stop_));
      float elapsed = 0;
      CUDA_CHECK(cudaEventElapsedTime(&elapsed, start_, stop_));
      ms.push_back(elapsed);
    }
    return ms;
  }
  // Milliseconds per call of --repeat samples of `calls` calls each, between device synchronisations.
  template <class Op>
  std::vector<double> time_on_host(Op&& op, int calls) {
    for (int i = 0; i < o_.warmup; ++i) op();
    std::vector<double> ms;
    for (int r = 0; r < o_.repeat; ++r) {
      sync();
      const auto start = perf::Clock::now();
      for (int c = 0; c < calls; ++c) op();
      sync();
      ms.push_back(perf::seconds_since(start) * 1e3 / calls);
    }
    return ms;
  }

  void emit(nlohmann::json line) {
    line["impl"] = cuda_ ? "slearn-cuda" : "slearn-cpu";
    line["device"] = device_;
    line["warmup"] = o_.warmup;
    line["repeat"] = o_.repeat;
    std::cout << line.dump() << std::endl;
  }

  const Options& o_;
  bool cuda_;
  std::unique_ptr<Backend> backend_;
  std::string device_;
  cudaStream_t stream_ = nullptr;
  cudaEvent_t start_ = nullptr, stop_ = nullptr;
  std::unique_ptr<slearn::cuda::Gemm> gemm_;
};

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"Copy bandwidth, cuBLASLt GEMM and prefill attention on the GPU (JSON lines)"};
  Options o;
  app.add_option("--backend", o.backend, "cuda, or cpu for a host run at tiny sizes")->capture_default_str();
  app.add_option("--only", o.only, "parts to run: copy, gemm, attention")->delimiter(',')->capture_default_str();
  app.add_option("--copy-mib", o.copy_mib, "size of the copied buffer")->capture_default_str();
  app.add_option("--gemm-shapes", o.gemm_shapes, "MxNxK items, and 7b for the 7B projections")
      ->capture_default_str();
  app.add_option("--gemm-rows", o.gemm_rows, "row counts M of the 7b shapes")->delimiter(',')->capture_default_str();
  app.add_option("--attention-seqs", o.attention_seqs, "sequence lengths")->delimiter(',')->capture_default_str();
  app.add_option("--heads", o.heads)->capture_default_str();
  app.add_option("--kv-heads", o.kv_heads)->capture_default_str();
  app.add_option("--head-dim", o.head_dim)->capture_default_str();
  app.add_option("--l2-bytes", o.l2_bytes, "GEMM weights rotate over at least this many bytes")
      ->capture_default_str();
  app.add_option("--warmup", o.warmup)->capture_default_str();
  app.add_option("--repeat", o.repeat, "timed samples; the median is reported")->capture_default_str();
  app.add_flag("--dry-run", o.dry_run, "validate the arguments, print the plan, touch no device");
  CLI11_PARSE(app, argc, argv);

  try {
    validate(o);
    if (o.dry_run) {
      nlohmann::json gemms = nlohmann::json::array();
      for (const GemmShape& s : gemm_shapes(o)) gemms.push_back(perf::gemm_case(s.m, s.n, s.k));
      nlohmann::json attention = nlohmann::json::array();
      for (const std::int64_t s : o.attention_seqs)
        attention.push_back(perf::attention_case(s, o.heads, o.kv_heads, o.head_dim));
      std::cout << nlohmann::json{{"plan", "bench_gpu_ops"},      {"backend", o.backend},
                                  {"only", o.only},               {"copy", perf::copy_case(o.copy_mib << 20)},
                                  {"gemm", gemms},                {"attention", attention},
                                  {"warmup", o.warmup},           {"repeat", o.repeat}}
                       .dump()
                << std::endl;
      return 0;
    }
    Bench bench(o, slearn::make_backend(o.backend));
    if (wanted(o, "copy")) bench.copy();
    if (wanted(o, "gemm"))
      for (const GemmShape& s : gemm_shapes(o)) bench.gemm(s);
    if (wanted(o, "attention"))
      for (const std::int64_t s : o.attention_seqs) bench.attention(s);
  } catch (const std::exception& e) {
    std::cerr << "bench_gpu_ops: " << e.what() << std::endl;
    return 1;
  }
  return 0;
}
