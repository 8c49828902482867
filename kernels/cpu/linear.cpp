// Linear layers, out = x W^T + b, with the weight in PyTorch's [out, in] layout (never copied).
// Two paths:
//  - skinny (m <= kSkinnyRows, i.e. decode steps): memory-bound. Each weight row is streamed once and
//    dotted with every activation row while it sits in L1; four weight rows at a time give the FMA units
//    independent chains. OpenBLAS's sgemm packs the whole weight for m = 1 and runs 3-5x slower here.
//  - sgemm (prefill): compute-bound, OpenBLAS.
// In the skinny path each output element's summation order is fixed by K alone, so a row's result does not
// depend on how many rows share the call or how threads split the work.
#include <cblas.h>

#include <algorithm>

#include "cpu/cpu_kernels.hpp"

namespace slearn::cpu {
namespace {

constexpr std::int64_t kSkinnyRows = 8;

void linear_skinny(const LinearParams& p) {
  const std::int64_t k_size = p.k;
  const std::int64_t blocks = (p.n + 3) / 4;
  // Dynamic chunks keep all threads busy when one is slowed down (shared nodes, SMT siblings).
#pragma omp parallel for schedule(dynamic, 16) if (p.n * p.k > (1 << 16))
  for (std::int64_t block = 0; block < blocks; ++block) {
    const std::int64_t n0 = block * 4;
    if (n0 + 4 > p.n) {  // the ragged tail: one weight row at a time
      for (std::int64_t n = n0; n < p.n; ++n) {
        const float* w = p.w + n * k_size;
        for (std::int64_t m = 0; m < p.m; ++m) {
          const float* x = p.x + m * k_size;
          float acc = 0.0f;
#pragma omp simd reduction(+ : acc)
          for (std::int64_t k = 0; k < k_size; ++k) acc += x[k] * w[k];
          float* out = p.out + m * p.n + n;
          *out = acc + (p.bias ? p.bias[n] : 0.0f) + (p.beta != 0.0f ? p.beta * *out : 0.0f);
        }
      }
      continue;
    }
    const float* w0 = p.w + n0 * k_size;
    const float* w1 = w0 + k_size;
    const float* w2 = w1 + k_size;
    const float* w3 = w2 + k_size;
    for (std::int64_t m = 0; m < p.m; ++m) {
      const float* x = p.x + m * k_size;
      float a0 = 0.0f, a1 = 0.0f, a2 = 0.0f, a3 = 0.0f;
#pragma omp simd reduction(+ : a0, a1, a2, a3)
      for (std::int64_t k = 0; k < k_size; ++k) {
        const float xv = x[k];
        a0 += xv * w0[k];
        a1 += xv * w1[k];
        a2 += xv * w2[k];
        a3 += xv * w3[k];
      }
      float* out = p.out + m * p.n + n0;
      const float acc[4] = {a0, a1, a2, a3};
      for (int j = 0; j < 4; ++j)
        out[j] = acc[j] + (p.bias ? p.bias[n0 + j] : 0.0f) + (p.beta != 0.0f ? p.beta * out[j] : 0.0f);
    }
  }
}

}  // namespace

void linear(const LinearParams& p) {
  if (p.m == 0 || p.n == 0) return;
  if (p.m <= kSkinnyRows) {
    linear_skinny(p);
    return;
  }
  cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, static_cast<blasint>(p.m), static_cast<blasint>(p.n),
              static_cast<blasint>(p.k), 1.0f, p.x, static_cast<blasint>(p.k), p.w, static_cast<blasint>(p.k),
              p.beta, p.out, static_cast<blasint>(p.n));
  if (p.bias == nullptr) return;
#pragma omp parallel for schedule(static) if (p.m * p.n > (1 << 15))
  for (std::int64_t r = 0; r < p.m; ++r) {
    float* row = p.out + r * p.n;
#pragma omp simd
    for (std::int64_t c = 0; c < p.n; ++c) row[c] += p.bias[c];
  }
}

}  // namespace slearn::cpu
