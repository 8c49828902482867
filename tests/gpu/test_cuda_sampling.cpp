// The CUDA sampler (kernels/cuda/sampling.cu) against the CPU one (slearn::sample_token) on the same fp32
// logits and the same (seed, stream, step): greedy, temperature, top-k, top-p and all of them together,
// rows of exact ties, -inf logits, top_k past the vocabulary, vocabularies from 7 to 262147, batches of 256
// rows. Both backends see identical logits and draw identical uniforms, so they can differ only where the
// sums of weights (summed in other orders, exp of libm vs CUDA) land on the other side of a threshold: the
// rows are built with distinct logits spaced at least 1e-3 apart, or with ties of exactly equal logits, and
// top_p is drawn at random, so no choice sits on such a knife edge and every id must match.
// The launcher is tested directly (device buffers in, ids out) and once through CudaBackend::sample.
#include <cuda_runtime_api.h>

#include <limits>
#include <numeric>
#include <span>

#include "cuda/cuda_check.hpp"
#include "cuda/sampling.hpp"
#include "gpu_test_util.hpp"
#include "slearn/sampling.hpp"

namespace slearn {
namespace {

constexpr float kInf = std::numeric_limits<float>::infinity();

template <class T>
class DeviceBuffer {
 public:
  explicit DeviceBuffer(std::size_t count) : count_(count) {
    if (count > 0) CUDA_CHECK(cudaMalloc(&data_, count * sizeof(T)));
  }
  explicit DeviceBuffer(const std::vector<T>& values) : DeviceBuffer(values.size()) {
    if (count_ > 0) CUDA_CHECK(cudaMemcpy(data_, values.data(), count_ * sizeof(T), cudaMemcpyHostToDevice));
  }
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;
  ~DeviceBuffer() {
    if (data_ != nullptr) cudaFree(data_);
  }
  T* get() const { return static_cast<T*>(data_); }
  std::vector<T> to_host() const {
    std::vector<T> out(count_);
    if (count_ > 0) CUDA_CHECK(cudaMemcpy(out.data(), data_, count_ * sizeof(T), cudaMemcpyDeviceToHost));
    return out;
  }

 private:
  void* data_ = nullptr;
  std::size_t count_;
};

// A batch of rows and each row's draw.
struct Batch {
  std::int64_t rows = 0, vocab = 0;
  std::vector<float> logits;  // [rows, vocab]
  std::vector<std::uint64_t> streams, steps;
};

std::vector<std::int32_t> gpu_sample(const Batch& b, const SamplingOptions& o) {
  DeviceBuffer<float> logits(b.logits);
  DeviceBuffer<std::uint64_t> streams(b.streams), steps(b.steps);
  DeviceBuffer<unsigned char> scratch(cuda::sample_rows_scratch_bytes(b.rows, b.vocab));
  DeviceBuffer<std::int32_t> out(static_cast<std::size_t>(b.rows));
  cuda::launch_sample_rows({logits.get(), b.rows, b.vocab, streams.get(), steps.get(), o.seed, o.temperature, o.top_k,
                            o.top_p, scratch.get(), out.get(), nullptr});
  CUDA_CHECK(cudaDeviceSynchronize());
  return out.to_host();
}

std::vector<std::int32_t> cpu_sample(const Batch& b, const SamplingOptions& o) {
  std::vector<std::int32_t> out(static_cast<std::size_t>(b.rows));
  for (std::int64_t r = 0; r < b.rows; ++r) {
    const auto i = static_cast<std::size_t>(r);
    out[i] = sample_token(std::span(b.logits.data() + r * b.vocab, static_cast<std::size_t>(b.vocab)), o,
                          b.streams[i], b.steps[i]);
  }
  return out;
}

enum class RowKind { Spaced, Ties, MinusInf, Flat, OneHuge };

// Spaced: distinct logits at least 1e-3 apart, in random positions; Ties: a few exact values shared by many
// tokens; MinusInf: spaced with a third -inf; Flat: all equal; OneHuge: spaced plus one logit 40 above.
std::vector<float> make_row(std::mt19937_64& rng, std::int64_t vocab, RowKind kind) {
  const auto n = static_cast<std::size_t>(vocab);
  std::vector<float> row(n);
  if (kind == RowKind::Flat) {
    std::fill(row.begin(), row.end(), 0.25f);
    return row;
  }
  if (kind == RowKind::Ties) {
    std::uniform_int_distribution<int> level(-4, 4);
    for (auto& x : row) x = 0.75f * static_cast<float>(level(rng));
    return row;
  }
  std::vector<std::size_t> rank(n);
  std::iota(rank.begin(), rank.end(), 0);
  std::shuffle(rank.begin(), rank.end(), rng);
  const double gap = std::uniform_real_distribution<double>(1e-3, 0.05)(rng);
  const double base = std::uniform_real_distribution<double>(-5.0, 15.0)(rng);
  // The first 4000 ranks `gap` apart, the rest 1e-3 apart from 300 lower on (weights < e^-150 at T <= 2);
  // |logit| < 600 keeps the float spacing (6e-5) well under 1e-3.
  for (std::size_t i = 0; i < n; ++i) {
    const auto k = static_cast<double>(rank[i]);
    row[i] = static_cast<float>(rank[i] < 4000 ? base - gap * k : base - 300.0 - 1e-3 * (k - 4000.0));
  }
  if (kind == RowKind::MinusInf)
    for (std::size_t i = 0; i < n; ++i)
      if (rng() % 3 == 0) row[i] = -kInf;
  if (kind == RowKind::OneHuge) row[rng() % n] = static_cast<float>(base + 40.0);
  return row;
}

Batch make_batch(std::mt19937_64& rng, std::int64_t rows, std::int64_t vocab, RowKind kind) {
  Batch b;
  b.rows = rows;
  b.vocab = vocab;
  for (std::int64_t r = 0; r < rows; ++r) {
    const auto row = make_row(rng, vocab, kind);
    b.logits.insert(b.logits.end(), row.begin(), row.end());
    b.streams.push_back(rng() % 2 ? rng() : static_cast<std::uint64_t>(r));
    b.steps.push_back(rng() % 2 ? rng() % 4096 : rng());
  }
  return b;
}

std::string describe(const SamplingOptions& o) {
  return "T " + std::to_string(o.temperature) + " top_k " + std::to_string(o.top_k) + " top_p " +
         std::to_string(o.top_p);
}

void expect_same_ids(const Batch& b, const SamplingOptions& o, const std::string& what) {
  const auto gpu = gpu_sample(b, o);
  const auto cpu = cpu_sample(b, o);
  std::size_t bad = 0;
  for (std::size_t r = 0; r < cpu.size(); ++r) {
    if (gpu[r] != cpu[r] && bad++ < 3)
      ADD_FAILURE() << what << ", " << describe(o) << ": row " << r << " cuda " << gpu[r] << " cpu " << cpu[r]
                    << " (stream " << b.streams[r] << ", step " << b.steps[r] << ")";
  }
  EXPECT_EQ(bad, 0u) << what << ", " << describe(o) << ": " << bad << " of " << cpu.size() << " rows differ";
}

std::vector<SamplingOptions> option_grid(std::mt19937_64& rng, std::int64_t vocab) {
  std::uniform_real_distribution<double> top_p(0.05, 0.99);
  return {
      {0.0, 0, 1.0, rng()},                 // greedy
      {1.0, 0, 1.0, rng()},                 // temperature only
      {0.6, 0, 1.0, rng()},
      {1.3, 40, 1.0, rng()},                // top-k
      {1.0, 1, 1.0, rng()},
      {0.8, vocab + 5, 1.0, rng()},         // top_k past the vocabulary
      {1.0, 0, top_p(rng), rng()},          // top-p
      {0.7, 0, top_p(rng), rng()},
      {0.9, 50, top_p(rng), rng()},         // all together
      {2.0, vocab / 2 + 1, top_p(rng), rng()},
  };
}

TEST(CudaSampling, MatchesTheCpuSamplerOnBatchesOf256Rows) {
  SLEARN_REQUIRE_GPU(cuda);
  std::mt19937_64 rng(11);
  for (const std::int64_t vocab : {std::int64_t{7}, std::int64_t{1000}, std::int64_t{151936}}) {
    for (const RowKind kind : {RowKind::Spaced, RowKind::Ties, RowKind::MinusInf, RowKind::Flat, RowKind::OneHuge}) {
      const Batch batch = make_batch(rng, 256, vocab, kind);
      for (const auto& options : option_grid(rng, vocab))
        expect_same_ids(batch, options, "vocab " + std::to_string(vocab) + " kind " +
                                            std::to_string(static_cast<int>(kind)));
    }
  }
}

TEST(CudaSampling, HandlesTheLargestVocabularies) {
  SLEARN_REQUIRE_GPU(cuda);
  std::mt19937_64 rng(12);
  for (const std::int64_t vocab : {std::int64_t{262144}, std::int64_t{262147}}) {
    const Batch batch = make_batch(rng, 8, vocab, RowKind::Spaced);
    for (const auto& options : option_grid(rng, vocab)) expect_same_ids(batch, options, "vocab " + std::to_string(vocab));
  }
}

TEST(CudaSampling, ARowsTokenDoesNotDependOnTheOtherRows) {
  SLEARN_REQUIRE_GPU(cuda);
  std::mt19937_64 rng(13);
  const Batch batch = make_batch(rng, 256, 4099, RowKind::Spaced);
  const SamplingOptions options{0.9, 64, 0.9, 5};
  const auto together = gpu_sample(batch, options);
  EXPECT_EQ(gpu_sample(batch, options), together) << "the same launch twice";
  // The same rows in reverse order, and each of a few rows alone.
  Batch reversed = batch;
  for (std::int64_t r = 0; r < batch.rows; ++r) {
    const auto from = static_cast<std::size_t>(batch.rows - 1 - r), to = static_cast<std::size_t>(r);
    std::copy_n(batch.logits.begin() + static_cast<std::ptrdiff_t>(from * 4099), 4099,
                reversed.logits.begin() + static_cast<std::ptrdiff_t>(to * 4099));
    reversed.streams[to] = batch.streams[from];
    reversed.steps[to] = batch.steps[from];
  }
  const auto backwards = gpu_sample(reversed, options);
  for (std::size_t r = 0; r < together.size(); ++r) EXPECT_EQ(backwards[together.size() - 1 - r], together[r]) << r;
  for (const std::size_t r : {0u, 17u, 255u}) {
    Batch alone;
    alone.rows = 1;
    alone.vocab = 4099;
    alone.logits.assign(batch.logits.begin() + static_cast<std::ptrdiff_t>(r * 4099),
                        batch.logits.begin() + static_cast<std::ptrdiff_t>((r + 1) * 4099));
    alone.streams = {batch.streams[r]};
    alone.steps = {batch.steps[r]};
    EXPECT_EQ(gpu_sample(alone, options)[0], together[r]) << "row " << r << " alone";
  }
}

TEST(CudaSampling, DegenerateRows) {
  SLEARN_REQUIRE_GPU(cuda);
  Batch b;
  b.rows = 5;
  b.vocab = 6;
  const float nan = std::numeric_limits<float>::quiet_NaN();
  b.logits = {-kInf, -kInf, -kInf, -kInf, -kInf, -kInf,  // greedy limit: id 0
              1.0f,  kInf,  2.0f,  kInf,  0.0f,  1.0f,   // +inf: the first one
              -0.0f, 0.0f,  -0.0f, 0.0f,  -1.0f, -2.0f,  // signed zeros tie
              1.0f,  nan,   2.0f,  3.0f,  0.0f,  1.0f,   // NaN: -1
              -kInf, 0.5f,  -kInf, 0.5f,  -kInf, -kInf};
  b.streams = {1, 2, 3, 4, 5};
  b.steps = {0, 0, 0, 0, 0};
  for (const SamplingOptions o : {SamplingOptions{1.0, 0, 1.0, 3}, SamplingOptions{0.0, 0, 1.0, 3},
                                  SamplingOptions{1.0, 2, 0.7, 3}}) {
    const auto ids = gpu_sample(b, o);
    EXPECT_EQ(ids[0], 0) << describe(o);
    EXPECT_EQ(ids[1], 1) << describe(o);
    EXPECT_TRUE(ids[2] >= 0 && ids[2] <= 3) << describe(o) << ": " << ids[2];
    EXPECT_EQ(ids[3], -1) << describe(o);
    EXPECT_TRUE(ids[4] == 1 || ids[4] == 3) << describe(o) << ": " << ids[4];
    // The rows without NaN agree with the CPU sampler.
    for (const std::size_t r : {0u, 1u, 2u, 4u})
      EXPECT_EQ(ids[r], sample_token(std::span(b.logits.data() + r * 6, 6), o, b.streams[r], b.steps[r]))
          << describe(o) << " row " << r;
  }
}

TEST(CudaSampling, ThroughTheBackendMatchesTheCpuBackend) {
  SLEARN_REQUIRE_GPU(cuda);
  auto cpu = make_cpu_backend();
  std::mt19937_64 rng(14);
  const Batch b = make_batch(rng, 33, 151936, RowKind::Spaced);
  Tensor on_gpu = cuda->zeros_f32({b.rows, b.vocab}, "logits");
  CUDA_CHECK(cudaMemcpy(on_gpu.data(), b.logits.data(), b.logits.size() * sizeof(float), cudaMemcpyHostToDevice));
  const Tensor on_cpu = gpu_testing::host_tensor(b.logits, {b.rows, b.vocab}, "logits");
  for (const auto& o : option_grid(rng, b.vocab)) {
    std::vector<TokenId> from_gpu(static_cast<std::size_t>(b.rows)), from_cpu(from_gpu.size());
    cuda->sample(on_gpu, o, b.streams, b.steps, from_gpu);
    cpu->sample(on_cpu, o, b.streams, b.steps, from_cpu);
    EXPECT_EQ(from_gpu, from_cpu) << describe(o);
  }
}

}  // namespace
}  // namespace slearn
