// The CUDA backend's training-state ops (kernels/cuda/optimizer.cu, cuda_backend_train.cpp) against the CPU
// backend and against host references:
// - adamw_update over several steps (one of them clipped) at 1, 1000 and 2^20 + 3 elements, on aligned
//   buffers (the float4 kernel with its scalar tail) and on views one element in (the scalar kernel). The
//   CUDA kernel rounds every fp32 operation of the formula on its own, so it must equal, bit for bit, a host
//   reference whose every intermediate is forced to fp32 (volatile). The CPU backend computes the same
//   expressions but may be compiled with FMA contraction (GCC's C++ default -ffp-contract=fast with
//   -march=native), which saves a rounding here and there: against it the tolerance is 1e-6 relative to the
//   larger of the element and the buffer's scale (p: its updates, m: the gradients, v: their squares).
// - check_flat: the sum of squares (double: the GPU's fixed order against a long double sum and, within the
//   bound of its running sums, the CPU's per-segment order) and first_non_finite with NaN and Inf planted
//   (none, the last element, the first, two in different blocks, two close together), each rerun bit for bit.
// - compute_copy / refresh_compute_copy: bit for bit slearn::f32_to_bf16 (ties, NaN, Inf, overflow,
//   subnormals), also between views that take the scalar kernel; write / to_host for fp32 and bf16; zero.
// - matmul into an fp32 `c` with beta 1, twice (gradients over two micro-batches), in every transpose
//   combination, and with an empty inner size.
// Every test skips, visibly, without a GPU.
#include <bit>
#include <cstring>
#include <limits>

#include "gpu_test_util.hpp"
#include "slearn/error.hpp"

namespace slearn {
namespace {

using namespace gpu_testing;

std::vector<float> random_f32(std::size_t count, float scale, std::uint32_t seed) {
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> dist(-scale, scale);
  std::vector<float> values(count);
  for (auto& v : values) v = dist(rng);
  return values;
}

std::uint32_t bits_of(float x) { return std::bit_cast<std::uint32_t>(x); }
float float_of(std::uint32_t word) { return std::bit_cast<float>(word); }

// How many elements differ in their bits (NaN payloads included).
std::size_t bit_mismatches(const std::vector<float>& a, const std::vector<float>& b) {
  if (a.size() != b.size()) return std::max(a.size(), b.size());
  std::size_t bad = 0;
  for (std::size_t i = 0; i < a.size(); ++i) bad += bits_of(a[i]) != bits_of(b[i]);
  return bad;
}

// torch's single-tensor AdamW scalars for update `step` (from 1), formed in double and rounded to fp32 as
// src/train/flat_adapter.cpp forms them.
Backend::AdamWScalars adamw_scalars_for(std::int64_t step, double lr, float grad_scale) {
  const double beta1 = 0.9, beta2 = 0.999, eps = 1e-8, weight_decay = 0.01;
  const double correction1 = 1.0 - std::pow(beta1, static_cast<double>(step));
  const double correction2 = 1.0 - std::pow(beta2, static_cast<double>(step));
  Backend::AdamWScalars s;
  s.decay = static_cast<float>(1.0 - lr * weight_decay);
  s.one_minus_beta1 = static_cast<float>(1.0 - beta1);
  s.beta2 = static_cast<float>(beta2);
  s.one_minus_beta2 = static_cast<float>(1.0 - beta2);
  s.correction2_sqrt = static_cast<float>(std::sqrt(correction2));
  s.step_size = static_cast<float>(lr / correction1);
  s.eps = static_cast<float>(eps);
  s.grad_scale = grad_scale;
  return s;
}

// Backend::adamw_update's formula with every intermediate stored as fp32 (volatile: no contraction, no
// excess precision), the reference the CUDA kernel must match bit for bit.
void adamw_unfused(float& p, float grad, float& m, float& v, const Backend::AdamWScalars& s) {
  volatile float g = grad * s.grad_scale;
  volatile float decayed = p * s.decay;
  volatile float diff = g - m;
  volatile float lerp = s.one_minus_beta1 * diff;
  volatile float m_new = m + lerp;
  volatile float v_old = v * s.beta2;
  volatile float g_scaled = s.one_minus_beta2 * g;
  volatile float g_square = g_scaled * g;
  volatile float v_new = v_old + g_square;
  volatile float root = std::sqrt(static_cast<float>(v_new));
  volatile float corrected = root / s.correction2_sqrt;
  volatile float denom = corrected + s.eps;
  volatile float ratio = m_new / denom;
  volatile float update = -s.step_size * ratio;
  p = decayed + update;
  m = m_new;
  v = v_new;
}

// |got - ref| <= 1e-6 max(|ref_i|, floor) for every element.
void expect_relative(const std::vector<float>& got, const std::vector<float>& ref, double floor,
                     const std::string& what) {
  ASSERT_EQ(got.size(), ref.size()) << what;
  std::size_t bad = 0, first_bad = 0, exact = 0;
  double worst = 0;
  for (std::size_t i = 0; i < got.size(); ++i) {
    const double err = std::abs(static_cast<double>(got[i]) - ref[i]);
    const double tol = 1e-6 * std::max(std::abs(static_cast<double>(ref[i])), floor);
    worst = std::max(worst, err / tol);
    exact += bits_of(got[i]) == bits_of(ref[i]);
    if (!(err <= tol) && bad++ == 0) first_bad = i;
  }
  std::printf("[ measured ] %s: %zu of %zu bit-identical to the cpu; worst at %.3f of the tolerance\n", what.c_str(),
              exact, got.size(), worst);
  EXPECT_EQ(bad, 0u) << what << ": first at " << first_bad << ": cuda " << got[first_bad] << " cpu "
                     << ref[first_bad];
}

// A flat fp32 buffer of `count` elements `offset` elements into its allocation (offset 1: not 16-byte
// aligned), on the CUDA backend, holding `values`.
Tensor cuda_flat(Backend& cuda, const std::vector<float>& values, std::int64_t offset, const std::string& name) {
  const auto count = static_cast<std::int64_t>(values.size());
  Tensor whole = cuda.zeros_f32({count + offset}, name);
  Tensor view = whole.slice_rows(offset, count, name);
  cuda.write(view, values);
  return view;
}

struct AdamWRun {
  std::vector<float> p, m, v;
};

// `steps` updates of the same random problem: on the CUDA backend (buffers `offset` elements in), on the
// CPU backend, and through adamw_unfused.
void run_adamw(Backend& cuda, std::size_t count, std::int64_t offset, AdamWRun& on_cuda, AdamWRun& on_cpu,
               AdamWRun& unfused) {
  constexpr int kSteps = 5;
  constexpr double kLr = 2e-3;
  auto cpu = make_cpu_backend();
  const auto p0 = random_f32(count, 1.0f, 40);
  const std::vector<float> zeros(count, 0.0f);
  Tensor p = cuda_flat(cuda, p0, offset, "master"), m = cuda_flat(cuda, zeros, offset, "m");
  Tensor v = cuda_flat(cuda, zeros, offset, "v"), g = cuda_flat(cuda, zeros, offset, "grads");
  Tensor cp = host_tensor(p0, {static_cast<std::int64_t>(count)}, "master");
  Tensor cm = cpu->zeros_f32({static_cast<std::int64_t>(count)}, "m"), cv = cpu->zeros_f32(cm.shape(), "v");
  Tensor cg = cpu->zeros_f32(cm.shape(), "grads");
  unfused = {p0, zeros, zeros};
  for (int step = 1; step <= kSteps; ++step) {
    // Gradients of varied size, a few exactly zero; step 3 is clipped.
    auto grads = random_f32(count, 0.01f * static_cast<float>(step), 41 + static_cast<std::uint32_t>(step));
    for (std::size_t i = 50; i < count; i += 97) grads[i] = 0.0f;
    const auto scalars = adamw_scalars_for(step, kLr, step == 3 ? 0.37f : 1.0f);
    cuda.write(g, grads);
    cpu->write(cg, grads);
    cuda.adamw_update(p, g, m, v, scalars);
    cpu->adamw_update(cp, cg, cm, cv, scalars);
    for (std::size_t i = 0; i < count; ++i) adamw_unfused(unfused.p[i], grads[i], unfused.m[i], unfused.v[i], scalars);
  }
  on_cuda = {fetch(cuda, p), fetch(cuda, m), fetch(cuda, v)};
  on_cpu = {fetch(*cpu, cp), fetch(*cpu, cm), fetch(*cpu, cv)};
}

TEST(CudaOptimizer, AdamWMatchesTheFormulaAndTheCpu) {
  SLEARN_REQUIRE_GPU(cuda);
  for (const std::size_t count : {std::size_t{1}, std::size_t{1000}, (std::size_t{1} << 20) + 3}) {
    for (const std::int64_t offset : {std::int64_t{0}, std::int64_t{1}}) {
      const std::string name = "adamw " + std::to_string(count) + (offset == 0 ? " aligned" : " unaligned view");
      AdamWRun got, ref, unfused;
      run_adamw(*cuda, count, offset, got, ref, unfused);
      EXPECT_EQ(bit_mismatches(got.p, unfused.p), 0u) << name << ": parameters differ from the unfused formula";
      EXPECT_EQ(bit_mismatches(got.m, unfused.m), 0u) << name << ": m differs from the unfused formula";
      EXPECT_EQ(bit_mismatches(got.v, unfused.v), 0u) << name << ": v differs from the unfused formula";
      // Floors, the scale of what each buffer accumulates: for p its updates (step_size |m| / denom, up to a
      // few times the learning rate, whose rounding a fused multiply-add on the CPU may change), for the
      // moments (1 - beta1) and (1 - beta2) times the largest gradient (squared). The CPU backend against the
      // unfused formula, measured on the host (-march=native): at most 0.3 of these tolerances.
      const double largest_grad = 0.05, lr = 2e-3;
      expect_relative(got.p, ref.p, 10 * lr, name + " parameters");
      expect_relative(got.m, ref.m, 0.1 * largest_grad, name + " m");
      expect_relative(got.v, ref.v, 0.001 * largest_grad * largest_grad, name + " v");
      // Deterministic: the same run again gives the same bits.
      AdamWRun again, ref_again, unfused_again;
      run_adamw(*cuda, count, offset, again, ref_again, unfused_again);
      EXPECT_EQ(bit_mismatches(again.p, got.p) + bit_mismatches(again.m, got.m) + bit_mismatches(again.v, got.v), 0u)
          << name << " rerun";
    }
  }
}

TEST(CudaOptimizer, AdamWRefusesBuffersOfDifferentSizes) {
  SLEARN_REQUIRE_GPU(cuda);
  Tensor p = cuda->zeros_f32({10}, "p"), g = cuda->zeros_f32({9}, "g"), m = cuda->zeros_f32({10}, "m");
  Tensor v = cuda->zeros_f32({10}, "v"), bf16_v = cuda->zeros({10}, "v bf16");
  EXPECT_THROW(cuda->adamw_update(p, g, m, v, {}), Error);
  EXPECT_THROW(cuda->adamw_update(p, m, v, bf16_v, {}), Error);
}

// Segment ends for `count` elements: seven uneven segments (fewer for tiny counts), the last ending at count.
std::vector<std::int64_t> segments_of(std::int64_t count) {
  std::vector<std::int64_t> ends;
  for (std::int64_t s = 1; s < 7; ++s) {
    const std::int64_t end = count * s * s / 49;
    if (end > 0 && (ends.empty() || end > ends.back()) && end < count) ends.push_back(end);
  }
  ends.push_back(count);
  return ends;
}

TEST(CudaOptimizer, CheckFlatSumAndFirstNonFinite) {
  SLEARN_REQUIRE_GPU(cuda);
  auto cpu = make_cpu_backend();
  const float nan = std::numeric_limits<float>::quiet_NaN(), inf = std::numeric_limits<float>::infinity();
  // 5'000'011 elements: more than the kernel's 1024 blocks of 4096, so each block's range grows.
  for (const std::int64_t count : {std::int64_t{0}, std::int64_t{1}, std::int64_t{1000}, (std::int64_t{1} << 20) + 3,
                                   std::int64_t{5000011}}) {
    const auto clean = random_f32(static_cast<std::size_t>(count), 1.0f, 50);
    const auto ends = segments_of(count);
    struct Planted {
      const char* what;
      std::vector<std::pair<std::int64_t, float>> values;
      std::int64_t first;
    };
    std::vector<Planted> cases = {{"none", {}, -1}};
    if (count > 0) {
      cases.push_back({"NaN last", {{count - 1, nan}}, count - 1});
      cases.push_back({"-Inf first", {{0, -inf}, {count - 1, nan}}, 0});
    }
    if (count > 3) cases.push_back({"Inf at a third, NaN last", {{count / 3, inf}, {count - 1, nan}}, count / 3});
    if (count > 4100) cases.push_back({"NaN just before an Inf", {{4097, inf}, {4095, nan}}, 4095});
    Tensor flat = cuda->zeros_f32({count}, "gradients");
    for (const Planted& planted : cases) {
      const std::string name = "check_flat " + std::to_string(count) + " " + planted.what;
      auto values = clean;
      for (const auto& [at, value] : planted.values) values[static_cast<std::size_t>(at)] = value;
      cuda->write(flat, values);
      const auto got = cuda->check_flat(flat, ends);
      const auto ref = cpu->check_flat(host_tensor(values, {count}, "gradients"), ends);
      EXPECT_EQ(got.first_non_finite, planted.first) << name;
      EXPECT_EQ(ref.first_non_finite, planted.first) << name << " (cpu)";
      if (planted.first < 0) {
        // Every square is exact in double. Against a long double sum, the GPU's short chains (a few dozen
        // additions deep) are good to ~1e-15; the CPU's one running sum per segment is bounded by
        // (count - 1) 2^-53 of the total (Higham's bound for positive terms), so that is its tolerance.
        long double exact = 0;
        for (const float x : values) exact += static_cast<long double>(x) * x;
        const auto reference = static_cast<double>(exact);
        EXPECT_NEAR(got.sum_squares, reference, 1e-13 * reference) << name << " against a long double sum";
        EXPECT_NEAR(got.sum_squares, ref.sum_squares, static_cast<double>(count + 64) * 0x1p-53 * reference) << name;
        std::printf("[ measured ] %s: sum %.17g, cpu %.17g, long double %.17g\n", name.c_str(), got.sum_squares,
                    ref.sum_squares, reference);
      } else {
        EXPECT_FALSE(std::isfinite(got.sum_squares)) << name;
      }
      const auto again = cuda->check_flat(flat, ends);
      EXPECT_EQ(std::memcmp(&again.sum_squares, &got.sum_squares, sizeof(double)), 0) << name << " rerun";
      EXPECT_EQ(again.first_non_finite, got.first_non_finite) << name << " rerun";
    }
  }
  Tensor flat = cuda->zeros_f32({8}, "gradients");
  const std::vector<std::int64_t> short_ends = {4, 7};
  EXPECT_THROW(cuda->check_flat(flat, short_ends), Error);
  EXPECT_THROW(cuda->check_flat(flat, {}), Error);
}

// Values that test the rounding: random ones, ties to even both ways, NaN (quiet, signalling-like, negative),
// infinities, the largest float (overflows to Inf), zeros of both signs, subnormals.
std::vector<float> rounding_cases(std::size_t count, std::uint32_t seed) {
  auto values = random_f32(count, 3.0f, seed);
  const std::vector<float> special = {float_of(0x3f808000u),  // 1 + 2^-8: a tie, to even (down)
                                      float_of(0x3f818000u),  // 1 + 3 2^-8: a tie, to even (up)
                                      float_of(0x3f808001u),  // just above a tie: up
                                      std::numeric_limits<float>::quiet_NaN(),
                                      float_of(0x7f800001u),  // a NaN whose payload would round to Inf
                                      float_of(0xffc12345u),  // negative NaN with payload
                                      std::numeric_limits<float>::infinity(),
                                      -std::numeric_limits<float>::infinity(),
                                      std::numeric_limits<float>::max(),
                                      0.0f,
                                      -0.0f,
                                      1e-40f,
                                      -float_of(0x00018000u)};
  for (std::size_t i = 0; i < special.size() && i < count; ++i) values[i] = special[i];
  if (count > special.size()) values.back() = special[4];  // in the float4 kernel's tail when count % 4 != 0
  return values;
}

std::vector<float> rounded_on_host(const std::vector<float>& values) {
  std::vector<float> out(values.size());
  for (std::size_t i = 0; i < values.size(); ++i) out[i] = bf16_to_f32(f32_to_bf16(values[i]));
  return out;
}

TEST(CudaOptimizer, ComputeCopyRoundsExactlyLikeTheHost) {
  SLEARN_REQUIRE_GPU(cuda);
  const std::int64_t count = 1003;  // not a multiple of 4: the float4 kernel's tail
  const auto first = rounding_cases(static_cast<std::size_t>(count), 60);
  Tensor master = cuda->zeros_f32({count}, "master");
  cuda->write(master, first);
  Tensor copy = cuda->compute_copy(master, "compute copy");
  EXPECT_EQ(copy.dtype(), DType::BF16);
  EXPECT_EQ(copy.shape(), master.shape());
  EXPECT_EQ(copy.name(), "compute copy");
  EXPECT_NE(copy.data(), master.data());
  EXPECT_EQ(bit_mismatches(fetch(*cuda, copy), rounded_on_host(first)), 0u) << "compute_copy";

  const auto second = rounding_cases(static_cast<std::size_t>(count), 61);
  cuda->write(master, second);
  EXPECT_EQ(bit_mismatches(fetch(*cuda, copy), rounded_on_host(first)), 0u) << "the copy changes only on refresh";
  cuda->refresh_compute_copy(master, copy);
  EXPECT_EQ(bit_mismatches(fetch(*cuda, copy), rounded_on_host(second)), 0u) << "refresh_compute_copy";

  // Views one element in: neither 16-byte nor 8-byte aligned, the scalar kernel.
  const auto third = rounding_cases(static_cast<std::size_t>(count - 1), 62);
  Tensor master_view = master.slice_rows(1, count - 1, "master view");
  Tensor copy_view = copy.slice_rows(1, count - 1, "copy view");
  cuda->write(master_view, third);
  cuda->refresh_compute_copy(master_view, copy_view);
  auto expected = rounded_on_host(third);
  expected.insert(expected.begin(), rounded_on_host(second).front());
  EXPECT_EQ(bit_mismatches(fetch(*cuda, copy), expected), 0u) << "refresh of unaligned views";

  cuda->refresh_compute_copy(master, master);  // the same memory: nothing to do, no error
  Tensor wrong = cuda->zeros({count + 1}, "wrong");
  EXPECT_THROW(cuda->refresh_compute_copy(master, wrong), Error);
  EXPECT_THROW(cuda->compute_copy(copy, "from bf16"), Error);
}

TEST(CudaOptimizer, WriteToHostAndZero) {
  SLEARN_REQUIRE_GPU(cuda);
  const auto values = rounding_cases(21, 70);
  Tensor f32 = cuda->zeros_f32({3, 7}, "fp32");
  cuda->write(f32, values);
  EXPECT_EQ(bit_mismatches(fetch(*cuda, f32), values), 0u) << "fp32 write is exact";
  Tensor bf16 = cuda->zeros({3, 7}, "bf16");
  cuda->write(bf16, values);
  EXPECT_EQ(bit_mismatches(fetch(*cuda, bf16), rounded_on_host(values)), 0u) << "bf16 write rounds as upload does";
  const std::vector<float> too_few(20, 1.0f);
  EXPECT_THROW(cuda->write(f32, too_few), Error);
  cuda->zero(f32);
  cuda->zero(bf16);
  EXPECT_EQ(fetch(*cuda, f32), std::vector<float>(21, 0.0f));
  EXPECT_EQ(fetch(*cuda, bf16), std::vector<float>(21, 0.0f));
  EXPECT_EQ(bit_mismatches(fetch(*cuda, f32), std::vector<float>(21, 0.0f)), 0u) << "+0, not -0";
}

TEST(CudaOptimizer, MatmulAccumulatesTwiceIntoFp32) {
  SLEARN_REQUIRE_GPU(cuda);
  auto cpu = make_cpu_backend();
  // A LoRA gradient: dA [rank, in] += dH^T X over two micro-batches of 77 and 50 tokens.
  const std::int64_t m = 16, n = 896;
  const std::int64_t ks[2] = {77, 50};
  for (const bool ta : {false, true}) {
    for (const bool tb : {false, true}) {
      const std::string name = std::string("fp32 matmul ta=") + (ta ? "1" : "0") + " tb=" + (tb ? "1" : "0");
      const auto c0 = random_f32(static_cast<std::size_t>(m * n), 0.5f, 80);
      Tensor c_cuda = cuda->zeros_f32({m, n}, "grad");
      cuda->write(c_cuda, c0);
      Tensor c_cpu = host_tensor(c0, {m, n}, "grad");
      std::vector<double> sums(c0.size());
      for (std::size_t i = 0; i < c0.size(); ++i) sums[i] = std::abs(c0[i]);
      const float alphas[2] = {0.5f, 1.0f};
      for (int pass = 0; pass < 2; ++pass) {
        const std::int64_t k = ks[pass];
        const auto seed = static_cast<std::uint32_t>(81 + 2 * pass);
        const auto av = random_bf16(static_cast<std::size_t>(m * k), 1.0f, seed);
        const auto bv = random_bf16(static_cast<std::size_t>(k * n), 0.5f, seed + 1);
        const Pair a = both(*cuda, av, ta ? std::vector<std::int64_t>{k, m} : std::vector<std::int64_t>{m, k}, "dh");
        const Pair b = both(*cuda, bv, tb ? std::vector<std::int64_t>{n, k} : std::vector<std::int64_t>{k, n}, "x");
        cpu->matmul(a.cpu, ta, b.cpu, tb, alphas[pass], 1.0f, c_cpu);
        cuda->matmul(a.cuda, ta, b.cuda, tb, alphas[pass], 1.0f, c_cuda);
        const auto terms = abs_product_sums(av, ta, bv, tb, m, n, k, alphas[pass]);
        for (std::size_t i = 0; i < sums.size(); ++i) sums[i] += terms[i];
      }
      EXPECT_EQ(c_cuda.dtype(), DType::F32);
      expect_within(fetch(*cuda, c_cuda), fetch(*cpu, c_cpu), name,
                    Tolerance{std::move(sums), ks[0] + ks[1] + 1, {}, false});
    }
  }
  // No product (an empty inner size): c = beta c, in fp32.
  const auto c0 = random_f32(4 * 8, 1.0f, 90);
  Tensor c = cuda->zeros_f32({4, 8}, "grad");
  cuda->write(c, c0);
  const Tensor a = cuda->upload(Tensor::host_f32({4, 0}, "a")), b = cuda->upload(Tensor::host_f32({8, 0}, "b"));
  cuda->matmul(a, false, b, true, 1.0f, 0.5f, c);
  std::vector<float> expected(c0.size());
  for (std::size_t i = 0; i < c0.size(); ++i) expected[i] = c0[i] * 0.5f;
  EXPECT_EQ(bit_mismatches(fetch(*cuda, c), expected), 0u) << "k = 0 scales the fp32 output by beta";
}

}  // namespace
}  // namespace slearn
