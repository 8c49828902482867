// Shared helpers of the GPU tests: every CUDA op is compared with the CPU op (the fp32 reference) on the
// same inputs. Inputs are drawn at random and rounded to bf16 first, so both backends see identical values
// (uploading to the CUDA backend is then exact) and the only differences left are the CUDA kernels' own:
// fp32 summation order (~1e-6 relative) and the final rounding of each output to bf16.
//
// Tolerance. One round-to-nearest to bf16 (8 significand bits) moves a value by at most u = 2^-8 of its
// magnitude. A kernel that computes in fp32 from the same inputs and rounds once therefore differs from the
// fp32 reference by at most max_i |bf16(ref_i) - ref_i| (the "bf16 reference error"), plus fp32 noise; the
// tests allow twice that, plus a floor of 1e-5 max|ref| for the fp32 noise of long sums. Ops that round
// an intermediate to bf16 get the intermediate's propagated error on top, derived where the test is
// (cross-entropy's gradient). These bounds are first principles, not calibrated on hardware: the tests have
// not yet run on a GPU (docs/cuda.md).
#pragma once

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "slearn/backend.hpp"
#include "slearn/dtype.hpp"

namespace slearn::gpu_testing {

constexpr double kBf16Unit = 1.0 / 256.0;  // 2^-8

// The CUDA backend, or nullptr (with the reason in `why`) when this build or machine has none.
inline std::unique_ptr<Backend> cuda_backend(std::string& why) {
  try {
    return make_backend("cuda");
  } catch (const std::exception& e) {
    why = e.what();
    return nullptr;
  }
}

// In a test body: skips the test, visibly, when no GPU is present.
#define SLEARN_REQUIRE_GPU(backend_var)                                        \
  std::string slearn_gpu_why;                                                  \
  auto backend_var = ::slearn::gpu_testing::cuda_backend(slearn_gpu_why);      \
  if (!backend_var) GTEST_SKIP() << "no usable CUDA device: " << slearn_gpu_why

inline float round_bf16(float x) { return bf16_to_f32(f32_to_bf16(x)); }

// Values uniform in [-scale, scale], rounded to bf16.
inline std::vector<float> random_bf16(std::size_t count, float scale, std::uint32_t seed) {
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> dist(-scale, scale);
  std::vector<float> values(count);
  for (auto& v : values) v = round_bf16(dist(rng));
  return values;
}

inline Tensor host_tensor(const std::vector<float>& values, std::vector<std::int64_t> shape, const std::string& name) {
  Tensor t = Tensor::host_f32(std::move(shape), name);
  EXPECT_EQ(static_cast<std::size_t>(t.numel()), values.size()) << name;
  std::copy(values.begin(), values.end(), t.f32());
  return t;
}

// The same values as a tensor of each backend.
struct Pair {
  Tensor cpu, cuda;
};
inline Pair both(Backend& cuda, const std::vector<float>& values, const std::vector<std::int64_t>& shape,
                 const std::string& name) {
  return {host_tensor(values, shape, name), cuda.upload(host_tensor(values, shape, name))};
}
// Zero outputs of each backend.
inline Pair zeros(Backend& cpu, Backend& cuda, const std::vector<std::int64_t>& shape, const std::string& name) {
  return {cpu.zeros(shape, name), cuda.zeros(shape, name)};
}

inline std::vector<float> fetch(Backend& backend, const Tensor& t) {
  std::vector<float> out(static_cast<std::size_t>(t.numel()));
  backend.to_host(t, out);
  return out;
}

inline double max_abs(const std::vector<float>& v) {
  double m = 0;
  for (float x : v) m = std::max(m, static_cast<double>(std::abs(x)));
  return m;
}

// max_i |bf16(ref_i) - ref_i|
inline double bf16_reference_error(const std::vector<float>& ref) {
  double e = 0;
  for (float x : ref) e = std::max(e, std::abs(static_cast<double>(round_bf16(x)) - x));
  return e;
}

// Checks |got_i - ref_i| <= 2 * bf16_reference_error(ref) + 1e-5 max|ref| + extra[i] (extra may be empty).
inline void expect_close(const std::vector<float>& got, const std::vector<float>& ref, const std::string& what,
                         const std::vector<double>& extra = {}) {
  ASSERT_EQ(got.size(), ref.size()) << what;
  const double base = 2.0 * bf16_reference_error(ref) + 1e-5 * max_abs(ref);
  double worst = 0, worst_ratio = 0;
  std::size_t bad = 0, first_bad = 0;
  for (std::size_t i = 0; i < got.size(); ++i) {
    const double err = std::abs(static_cast<double>(got[i]) - ref[i]);
    const double tol = base + (extra.empty() ? 0.0 : extra[i]);
    worst = std::max(worst, err);
    worst_ratio = std::max(worst_ratio, err / std::max(tol, 1e-30));
    if (!(err <= tol)) {  // also catches NaN
      if (bad++ == 0) first_bad = i;
    }
  }
  std::printf("[ measured ] %s: max |cuda - cpu| = %.3g, %.2f of the tolerance (max|ref| %.3g)\n", what.c_str(), worst,
              worst_ratio, max_abs(ref));
  EXPECT_EQ(bad, 0u) << what << ": " << bad << " of " << got.size() << " elements outside the tolerance; first at "
                     << first_bad << ": cuda " << got[first_bad] << " cpu " << ref[first_bad];
}

}  // namespace slearn::gpu_testing
