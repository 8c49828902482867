// Matrix products through cuBLASLt: bf16 operands, fp32 accumulation (CUBLAS_COMPUTE_32F), output in bf16
// or fp32, optional bias epilogue. The interface is row-major like the rest of slearn; the row-major product
// C = op(A) op(B) is run as the column-major C^T = op(B)^T op(A)^T, which needs no copies: a row-major
// matrix is its own transpose seen column-major.
#pragma once

#include <cublasLt.h>
#include <cuda_runtime_api.h>

#include <cstddef>
#include <cstdint>
#include <map>
#include <memory>
#include <tuple>

namespace slearn::cuda {

enum class GemmOut { BF16, F32 };

// c[m, n] = alpha * op(a) op(b) + beta * c (+ bias[n]); a and b bf16, row-major with row strides lda/ldb
// (op = transpose when asked), c row-major with row stride ldc.
struct GemmParams {
  const void* a;
  bool transpose_a;
  std::int64_t lda;
  const void* b;
  bool transpose_b;
  std::int64_t ldb;
  void* c;
  GemmOut c_type;
  std::int64_t ldc;
  const void* bias;  // bf16 [n] or nullptr; only with c_type BF16
  std::int64_t m, n, k;
  float alpha, beta;
  cudaStream_t stream;
};

// Owns the cuBLASLt handle and its workspace; one per backend (not thread-safe, like the backend).
class Gemm {
 public:
  Gemm();
  ~Gemm();
  Gemm(const Gemm&) = delete;
  Gemm& operator=(const Gemm&) = delete;
  void run(const GemmParams& p);

 private:
  // Returns false when cuBLASLt offers no algorithm (only possible with the bias epilogue: the caller then
  // adds the bias itself).
  bool try_run(const GemmParams& p, bool with_bias);
  // The described operation and the heuristic's algorithm, cached per shape, layout, output type, epilogue
  // and operand alignment: a decode step runs the same few GEMMs every step, and describing them and asking
  // the heuristic costs more host time than the small GEMMs themselves.
  struct Plan;
  using PlanKey = std::tuple<std::int64_t, std::int64_t, std::int64_t, std::int64_t, std::int64_t, std::int64_t,
                             int, std::uint32_t, std::uint32_t, std::uint32_t, bool>;
  std::map<PlanKey, std::shared_ptr<Plan>> plans_;
  cublasLtHandle_t handle_ = nullptr;
  void* workspace_ = nullptr;
  std::size_t workspace_bytes_ = 0;
};

}  // namespace slearn::cuda
