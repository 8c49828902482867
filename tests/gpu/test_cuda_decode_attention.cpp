// The flash-decoding kernel (kernels/cuda/decode_attention.cu) against the CPU attention
// (cpu::causal_attention) on the same bf16-exact inputs, driven through the launcher directly: contexts
// 1, 7, 128, 129, 1000, 4097 and 8191 (one key into a split, split and tile boundaries, past 4k) in one
// launch over three cache slots, GQA groups 1, 2, 7, 8 and 16, head dims 16, 64 and 128; a token's output
// bitwise the same alone, in a batch and in another order; rows with context 0 left untouched; a CUDA
// graph captured for some contexts and replayed with others; and the launcher's argument checks (these
// run without a GPU too).
//
// Sensitivity. A kernel that drops or repeats one key out of thousands moves the output by ~1/context of
// its scale, far inside any fp32-derived tolerance. So the value rows at the sensitive positions (each
// token's first and last key, and the keys on each side of the tile and split boundaries 32, 128 and 4096)
// are scaled by 32 (exact in bf16): losing or doubling one of them moves the output by ~32/context of
// the typical |v|, several times the tolerance below even at context 8191.
//
// Tolerance, per element (t, h, d), derived rather than calibrated. Let A = sum_j p_j |v_jd| (p the exact
// softmax, computed here in double). Both sides compute in fp32 from identical inputs, and differ by
//  - the scores: an fp32 dot of D terms is within gamma_D S_j of exact (S_j = scale sum_d |q_d k_jd|), and
//    the scale multiply adds u |s_j|; scores off by at most Delta move every p_j by a factor within
//    e^(+-2 Delta), so the outputs by 2 Delta A on each side: 4 (gamma_D S + u |s|max) A between them;
//  - the exponentials (a few ulp) and the GPU's log2(e) folding (its t = s log2(e) is rounded twice):
//    within 8 u (1 + 3 log2(e) |s|max) A;
//  - the sums over keys: the CPU's serial sums (numerator and denominator) over n keys are within gamma_n,
//    the GPU's tiled ones within gamma_128 (per lane, per warp, per split, over <= 64 splits): 2 gamma_(n+130) A;
// with u = 2^-24 and gamma_k = k u / (1 - k u). Call their sum delta. Rounding the GPU's fp32 result to bf16
// then gives |cuda - cpu| <= 2 |bf16(ref) - ref| + 2 delta (if both round to the same bf16 value the error
// is |bf16(ref) - ref|; if not, a rounding midpoint lies within delta of ref). These are worst-case bounds
// (serial fp32 sums of 8191 terms: 2 gamma_n ~ 1e-3); typical differences are orders of magnitude smaller,
// and the printed ratio shows where a run lies.
//
// NOTE: compiled, never run: there was no GPU where this was written (docs/cuda.md). Every test that
// needs a device skips, visibly, without one.
#include <cuda_runtime_api.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <numeric>

#include "cpu/cpu_kernels.hpp"
#include "cuda/cuda_check.hpp"
#include "cuda/decode_attention.hpp"
#include "gpu_test_util.hpp"
#include "slearn/error.hpp"

namespace slearn {
namespace {

using namespace gpu_testing;

constexpr std::int64_t kSlots = 3, kCapacity = 8192, kKvHeads = 2;
// One token per context, spread over the slots (some slots hold several tokens' sequences).
const std::vector<std::int32_t> kContexts = {1, 7, 128, 129, 1000, 4097, 8191};
const std::vector<std::int32_t> kTokenSlots = {2, 0, 1, 2, 0, 1, 0};

// Device memory owned by a test.
class DeviceMemory {
 public:
  explicit DeviceMemory(std::size_t bytes) { CUDA_CHECK(cudaMalloc(&memory_, std::max<std::size_t>(bytes, 16))); }
  ~DeviceMemory() { cudaFree(memory_); }
  DeviceMemory(const DeviceMemory&) = delete;
  DeviceMemory& operator=(const DeviceMemory&) = delete;
  template <class T>
  T* as() const { return static_cast<T*>(memory_); }

 private:
  void* memory_ = nullptr;
};

const cuda::bf16* device_bf16(const Tensor& t) { return static_cast<const cuda::bf16*>(t.data()); }

// K and V of kSlots sequences of kCapacity positions: host values (bf16-exact) and their device copies.
struct Cache {
  std::int64_t head_dim = 0;
  std::vector<float> k, v;  // [kSlots, kCapacity, kKvHeads, head_dim]
  Tensor k_dev, v_dev;
};

Cache make_cache(Backend& cuda, std::int64_t head_dim, std::uint32_t seed) {
  Cache c;
  c.head_dim = head_dim;
  const auto count = static_cast<std::size_t>(kSlots * kCapacity * kKvHeads * head_dim);
  c.k = random_bf16(count, 1.0f, seed);
  c.v = random_bf16(count, 1.0f, seed + 1);
  // The marker rows (file comment): value rows x32 at each token's first and last key and around the
  // tile and split boundaries, in every slot.
  std::vector<std::int64_t> markers = {0, 31, 32, 127, 128, 129, 4095, 4096, 8190};
  for (const std::int32_t context : kContexts) markers.push_back(context - 1);
  std::sort(markers.begin(), markers.end());
  markers.erase(std::unique(markers.begin(), markers.end()), markers.end());  // scale each row once
  const std::int64_t row = kKvHeads * head_dim;
  for (std::int64_t slot = 0; slot < kSlots; ++slot)
    for (const std::int64_t position : markers)
      for (std::int64_t i = 0; i < row; ++i) c.v[static_cast<std::size_t>((slot * kCapacity + position) * row + i)] *= 32.0f;
  const std::vector<std::int64_t> shape = {kSlots, kCapacity, kKvHeads, head_dim};
  c.k_dev = cuda.upload(host_tensor(c.k, shape, "k_cache"));
  c.v_dev = cuda.upload(host_tensor(c.v, shape, "v_cache"));
  return c;
}

// One decode launch: query rows `q` ([tokens, heads, head_dim]) at the given slots and contexts.
struct Batch {
  std::int64_t heads = 0;
  float scale = 0.0f;
  std::vector<float> q;
  std::vector<std::int32_t> slots, contexts;
  std::int64_t tokens() const { return static_cast<std::int64_t>(slots.size()); }
};

cuda::DecodeAttentionParams params_for(const Cache& cache, const Batch& b, const Tensor& q, Tensor& out,
                                       const DeviceMemory& rows, const DeviceMemory& contexts,
                                       const DeviceMemory& partial, cudaStream_t stream) {
  return {device_bf16(q), device_bf16(cache.k_dev), device_bf16(cache.v_dev), static_cast<cuda::bf16*>(out.data()),
          rows.as<std::int64_t>(), contexts.as<std::int32_t>(), b.tokens(), b.heads, kKvHeads, cache.head_dim,
          kCapacity, b.scale, partial.as<float>(), stream};
}

void stage_indices(const Batch& b, const DeviceMemory& rows, const DeviceMemory& contexts) {
  std::vector<std::int64_t> key_row0(b.slots.size());
  for (std::size_t t = 0; t < b.slots.size(); ++t) key_row0[t] = static_cast<std::int64_t>(b.slots[t]) * kCapacity;
  CUDA_CHECK(cudaMemcpy(rows.as<std::int64_t>(), key_row0.data(), key_row0.size() * sizeof(std::int64_t),
                        cudaMemcpyHostToDevice));
  CUDA_CHECK(cudaMemcpy(contexts.as<std::int32_t>(), b.contexts.data(), b.contexts.size() * sizeof(std::int32_t),
                        cudaMemcpyHostToDevice));
  // From pageable memory cudaMemcpy may return before the bytes land; the graph test's stream does not
  // wait for the legacy stream.
  CUDA_CHECK(cudaDeviceSynchronize());
}

std::size_t scratch_bytes(const Batch& b, std::int64_t head_dim) {
  return cuda::decode_attention_scratch_bytes(b.tokens(), b.heads, head_dim, kCapacity);
}

// Runs the kernel on the legacy default stream (the backend's) and returns the output as fp32.
std::vector<float> run_decode(Backend& cuda_backend, const Cache& cache, const Batch& b) {
  const Tensor q = cuda_backend.upload(host_tensor(b.q, {b.tokens(), b.heads, cache.head_dim}, "q"));
  Tensor out = cuda_backend.zeros({b.tokens(), b.heads, cache.head_dim}, "attn");
  DeviceMemory rows(b.slots.size() * sizeof(std::int64_t)), contexts(b.slots.size() * sizeof(std::int32_t));
  DeviceMemory partial(scratch_bytes(b, cache.head_dim));
  // NaN everywhere: a merge that read a split the split kernel did not write would show it.
  CUDA_CHECK(cudaMemset(partial.as<float>(), 0xff, scratch_bytes(b, cache.head_dim)));
  stage_indices(b, rows, contexts);
  cuda::launch_decode_attention(params_for(cache, b, q, out, rows, contexts, partial, nullptr));
  CUDA_CHECK(cudaDeviceSynchronize());
  return fetch(cuda_backend, out);
}

std::vector<float> cpu_reference(const Cache& cache, const Batch& b) {
  std::vector<float> out(b.q.size());
  std::vector<std::int32_t> positions(b.contexts.size());
  for (std::size_t t = 0; t < positions.size(); ++t) positions[t] = b.contexts[t] - 1;
  cpu::causal_attention({b.q.data(), cache.k.data(), cache.v.data(), out.data(), b.slots.data(), positions.data(),
                         b.tokens(), b.heads, kKvHeads, cache.head_dim, kCapacity, b.scale});
  return out;
}

double fp32_gamma(double k) {
  const double u = std::ldexp(1.0, -24);
  return k * u / (1.0 - k * u);
}

// The per-element tolerance of the file comment.
std::vector<double> tolerances(const Cache& cache, const Batch& b, const std::vector<float>& ref) {
  const double u = std::ldexp(1.0, -24), log2e = 1.4426950408889634;
  const std::int64_t dim = cache.head_dim, row = kKvHeads * dim, group = b.heads / kKvHeads;
  std::vector<double> tol(ref.size());
  std::vector<double> scores, weights;
  for (std::int64_t t = 0; t < b.tokens(); ++t) {
    const std::int64_t n = b.contexts[static_cast<std::size_t>(t)];
    const std::int64_t base = static_cast<std::int64_t>(b.slots[static_cast<std::size_t>(t)]) * kCapacity * row;
    for (std::int64_t h = 0; h < b.heads; ++h) {
      const float* q = b.q.data() + (t * b.heads + h) * dim;
      const std::int64_t kv = (h / group) * dim;
      scores.assign(static_cast<std::size_t>(n), 0.0);
      double s_abs_max = 0, magnitude_max = 0;
      for (std::int64_t j = 0; j < n; ++j) {
        const float* k = cache.k.data() + base + j * row + kv;
        double dot = 0, magnitude = 0;
        for (std::int64_t d = 0; d < dim; ++d) {
          dot += static_cast<double>(q[d]) * k[d];
          magnitude += std::abs(static_cast<double>(q[d]) * k[d]);
        }
        scores[static_cast<std::size_t>(j)] = b.scale * dot;
        s_abs_max = std::max(s_abs_max, std::abs(b.scale * dot));
        magnitude_max = std::max(magnitude_max, b.scale * magnitude);
      }
      const double m = *std::max_element(scores.begin(), scores.end());
      weights.resize(scores.size());
      double z = 0;
      for (std::size_t j = 0; j < scores.size(); ++j) z += weights[j] = std::exp(scores[j] - m);
      const double delta_coefficient = 4 * (fp32_gamma(static_cast<double>(dim)) * magnitude_max + u * s_abs_max) +
                                       8 * u * (1 + 3 * log2e * s_abs_max) + 2 * fp32_gamma(static_cast<double>(n + 130));
      std::vector<double> a(static_cast<std::size_t>(dim), 0.0);  // A = sum_j p_j |v_jd|, per d
      for (std::int64_t j = 0; j < n; ++j) {
        const float* v = cache.v.data() + base + j * row + kv;
        for (std::int64_t d = 0; d < dim; ++d)
          a[static_cast<std::size_t>(d)] += weights[static_cast<std::size_t>(j)] / z * std::abs(static_cast<double>(v[d]));
      }
      for (std::int64_t d = 0; d < dim; ++d) {
        const auto i = static_cast<std::size_t>((t * b.heads + h) * dim + d);
        tol[i] = 2 * std::abs(static_cast<double>(round_bf16(ref[i])) - ref[i]) +
                 2 * delta_coefficient * a[static_cast<std::size_t>(d)];
      }
    }
  }
  return tol;
}

void expect_within(const std::vector<float>& got, const std::vector<float>& ref, const std::vector<double>& tol,
                   const std::string& what) {
  ASSERT_EQ(got.size(), ref.size()) << what;
  double worst_ratio = 0;
  std::size_t bad = 0, first_bad = 0;
  for (std::size_t i = 0; i < got.size(); ++i) {
    const double err = std::abs(static_cast<double>(got[i]) - ref[i]);
    worst_ratio = std::max(worst_ratio, err / std::max(tol[i], 1e-30));
    if (!(err <= tol[i])) {  // also catches NaN
      if (bad++ == 0) first_bad = i;
    }
  }
  std::printf("[ measured ] %s: max |cuda - cpu| / tolerance = %.3g\n", what.c_str(), worst_ratio);
  EXPECT_EQ(bad, 0u) << what << ": " << bad << " of " << got.size() << " elements outside the tolerance; first at "
                     << first_bad << ": cuda " << got[first_bad] << " cpu " << ref[first_bad] << " tolerance "
                     << tol[first_bad];
}

Batch make_batch(std::int64_t group, std::int64_t head_dim, float q_range, float scale, std::uint32_t seed) {
  Batch b;
  b.heads = group * kKvHeads;
  b.scale = scale;
  b.slots = kTokenSlots;
  b.contexts = kContexts;
  b.q = random_bf16(static_cast<std::size_t>(b.tokens() * b.heads * head_dim), q_range, seed);
  return b;
}

TEST(CudaDecodeAttention, MatchesCpuOverContextsGroupsAndHeadDims) {
  SLEARN_REQUIRE_GPU(cuda);
  std::uint32_t seed = 100;
  for (const std::int64_t head_dim : {16, 64, 128}) {
    const Cache cache = make_cache(*cuda, head_dim, seed);
    seed += 2;
    for (const std::int64_t group : {1, 2, 7, 8, 16}) {
      // The model's scale: scores of a few units, softmax neither uniform nor one-hot.
      const Batch b = make_batch(group, head_dim, 1.5f, 1.0f / std::sqrt(static_cast<float>(head_dim)), seed++);
      const auto ref = cpu_reference(cache, b);
      expect_within(run_decode(*cuda, cache, b), ref, tolerances(cache, b, ref),
                    "decode attention head_dim " + std::to_string(head_dim) + " group " + std::to_string(group));
    }
  }
}

TEST(CudaDecodeAttention, MatchesCpuWithPeakedScores) {
  SLEARN_REQUIRE_GPU(cuda);
  // Scale 1 instead of 1/sqrt(D): scores spread over tens of units, so the running max jumps between
  // tiles and splits and most splits' weights underflow against the largest.
  for (const std::int64_t head_dim : {64, 128}) {
    const Cache cache = make_cache(*cuda, head_dim, 200 + static_cast<std::uint32_t>(head_dim));
    const Batch b = make_batch(7, head_dim, 2.0f, 1.0f, 300);
    const auto ref = cpu_reference(cache, b);
    expect_within(run_decode(*cuda, cache, b), ref, tolerances(cache, b, ref),
                  "decode attention, peaked scores, head_dim " + std::to_string(head_dim));
  }
}

// Rows [first, first + count) of a [tokens, heads, head_dim] array, token-major.
std::vector<float> token_rows(const std::vector<float>& all, std::int64_t row, std::int64_t first, std::int64_t count) {
  return std::vector<float>(all.begin() + first * row, all.begin() + (first + count) * row);
}

bool bitwise_equal(const std::vector<float>& a, const std::vector<float>& b) {
  return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0;
}

TEST(CudaDecodeAttention, TokenOutputIsBitwiseIndependentOfTheBatch) {
  SLEARN_REQUIRE_GPU(cuda);
  for (const std::int64_t head_dim : {16, 64, 128}) {
    const Cache cache = make_cache(*cuda, head_dim, 400);
    const Batch all = make_batch(7, head_dim, 1.5f, 1.0f / std::sqrt(static_cast<float>(head_dim)), 401);
    const std::int64_t row = all.heads * head_dim;
    const auto together = run_decode(*cuda, cache, all);

    // Reversed order.
    Batch reversed = all;
    std::reverse(reversed.slots.begin(), reversed.slots.end());
    std::reverse(reversed.contexts.begin(), reversed.contexts.end());
    for (std::int64_t t = 0; t < all.tokens(); ++t) {
      const auto src = token_rows(all.q, row, all.tokens() - 1 - t, 1);
      std::copy(src.begin(), src.end(), reversed.q.begin() + t * row);
    }
    const auto backwards = run_decode(*cuda, cache, reversed);

    for (std::int64_t t = 0; t < all.tokens(); ++t) {
      Batch alone;
      alone.heads = all.heads;
      alone.scale = all.scale;
      alone.slots = {all.slots[static_cast<std::size_t>(t)]};
      alone.contexts = {all.contexts[static_cast<std::size_t>(t)]};
      alone.q = token_rows(all.q, row, t, 1);
      const auto expected = token_rows(together, row, t, 1);
      EXPECT_TRUE(bitwise_equal(run_decode(*cuda, cache, alone), expected))
          << "head_dim " << head_dim << ": token " << t << " (context " << alone.contexts[0] << ") alone differs";
      EXPECT_TRUE(bitwise_equal(token_rows(backwards, row, all.tokens() - 1 - t, 1), expected))
          << "head_dim " << head_dim << ": token " << t << " differs in the reversed batch";
    }
  }
}

TEST(CudaDecodeAttention, RowsWithoutContextAreLeftUntouched) {
  SLEARN_REQUIRE_GPU(cuda);
  const std::int64_t head_dim = 64;
  const Cache cache = make_cache(*cuda, head_dim, 450);
  Batch b = make_batch(7, head_dim, 1.5f, 0.125f, 451);
  b.slots = {0, 1, 2};
  b.contexts = {0, 129, 0};  // rows 0 and 2 stand for prefill rows, computed by another kernel
  const std::int64_t row = b.heads * head_dim;
  b.q.resize(static_cast<std::size_t>(3 * row));
  const auto before = random_bf16(static_cast<std::size_t>(3 * row), 1.0f, 452);
  const Tensor q = cuda->upload(host_tensor(b.q, {3, b.heads, head_dim}, "q"));
  Tensor out = cuda->upload(host_tensor(before, {3, b.heads, head_dim}, "attn"));
  DeviceMemory rows(3 * sizeof(std::int64_t)), contexts(3 * sizeof(std::int32_t)), partial(scratch_bytes(b, head_dim));
  stage_indices(b, rows, contexts);
  cuda::launch_decode_attention(params_for(cache, b, q, out, rows, contexts, partial, nullptr));
  CUDA_CHECK(cudaDeviceSynchronize());
  const auto after = fetch(*cuda, out);
  EXPECT_TRUE(bitwise_equal(token_rows(after, row, 0, 1), token_rows(before, row, 0, 1)));
  EXPECT_TRUE(bitwise_equal(token_rows(after, row, 2, 1), token_rows(before, row, 2, 1)));
  Batch alone = b;
  alone.slots = {1};
  alone.contexts = {129};
  alone.q = token_rows(b.q, row, 1, 1);
  EXPECT_TRUE(bitwise_equal(token_rows(after, row, 1, 1), run_decode(*cuda, cache, alone)));
}

TEST(CudaDecodeAttention, GraphCapturedForSomeContextsReplaysForOthers) {
  SLEARN_REQUIRE_GPU(cuda);
  const std::int64_t head_dim = 128;
  const Cache cache = make_cache(*cuda, head_dim, 500);
  Batch b = make_batch(7, head_dim, 1.5f, 1.0f / std::sqrt(128.0f), 501);
  const Tensor q = cuda->upload(host_tensor(b.q, {b.tokens(), b.heads, head_dim}, "q"));
  Tensor out = cuda->zeros({b.tokens(), b.heads, head_dim}, "attn");
  DeviceMemory rows(b.slots.size() * sizeof(std::int64_t)), contexts(b.slots.size() * sizeof(std::int32_t));
  DeviceMemory partial(scratch_bytes(b, head_dim));

  // Captured while every token is at its first key ...
  Batch captured = b;
  std::fill(captured.contexts.begin(), captured.contexts.end(), 1);
  stage_indices(captured, rows, contexts);
  cudaStream_t stream = nullptr;
  CUDA_CHECK(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
  cudaGraph_t graph = nullptr;
  cudaGraphExec_t exec = nullptr;
  CUDA_CHECK(cudaStreamBeginCapture(stream, cudaStreamCaptureModeThreadLocal));
  cuda::launch_decode_attention(params_for(cache, b, q, out, rows, contexts, partial, stream));
  CUDA_CHECK(cudaStreamEndCapture(stream, &graph));
  CUDA_CHECK(cudaGraphInstantiate(&exec, graph, 0));

  // ... replayed with the real contexts (and then the direct launch for comparison).
  stage_indices(b, rows, contexts);
  CUDA_CHECK(cudaGraphLaunch(exec, stream));
  CUDA_CHECK(cudaStreamSynchronize(stream));
  const auto replayed = fetch(*cuda, out);
  CUDA_CHECK(cudaGraphExecDestroy(exec));
  CUDA_CHECK(cudaGraphDestroy(graph));
  CUDA_CHECK(cudaStreamDestroy(stream));
  EXPECT_TRUE(bitwise_equal(replayed, run_decode(*cuda, cache, b)));
}

// The launcher's checks come before any CUDA call: these run without a GPU.
cuda::DecodeAttentionParams shape_only(std::int64_t heads, std::int64_t kv_heads, std::int64_t head_dim) {
  cuda::DecodeAttentionParams p{};
  p.tokens = 1;
  p.heads = heads;
  p.kv_heads = kv_heads;
  p.head_dim = head_dim;
  p.capacity = 256;
  p.scale = 1.0f;
  return p;
}

std::string launch_error(const cuda::DecodeAttentionParams& p) {
  try {
    cuda::launch_decode_attention(p);
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

TEST(CudaDecodeAttention, RejectsUnsupportedShapes) {
  for (const std::int64_t head_dim : {0, 8, 32, 80, 96, 256}) {
    const std::string message = launch_error(shape_only(4, 2, head_dim));
    EXPECT_NE(message.find("head_dim " + std::to_string(head_dim)), std::string::npos)
        << "head_dim " << head_dim << ": " << message;
  }
  EXPECT_NE(launch_error(shape_only(34, 2, 64)).find("query heads"), std::string::npos);  // group 17
  EXPECT_NE(launch_error(shape_only(6, 4, 64)).find("query heads"), std::string::npos);   // not a whole group
  EXPECT_NE(launch_error(shape_only(70000, 70000, 64)).find("launch grid"), std::string::npos);  // grid y
  // Supported shapes with null (or misaligned) pointers: refused before launching.
  EXPECT_NE(launch_error(shape_only(4, 2, 128)).find("16-byte aligned"), std::string::npos);
  // Nothing to do for zero tokens: no error, no launch.
  cuda::DecodeAttentionParams empty = shape_only(4, 2, 64);
  empty.tokens = 0;
  EXPECT_EQ(launch_error(empty), "");
}

}  // namespace
}  // namespace slearn
