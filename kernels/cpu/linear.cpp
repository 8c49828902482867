// Linear layers through OpenBLAS sgemm: the weight stays in PyTorch's [out, in] layout and is read
// transposed, so no copy is ever made. Bias is added in a second, row-parallel pass.
#include <cblas.h>

#include "cpu/cpu_kernels.hpp"

namespace slearn::cpu {

void linear(const LinearParams& p) {
  if (p.m == 0 || p.n == 0) return;
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
