// cuBLASLt matmul (see gemm.hpp). The first call of a shape describes the operation, asks the heuristic for
// the best algorithm given the operands' actual alignment and keeps both (Gemm::Plan); later calls of the
// same shape only set the bias pointer and run. Descriptors are held by RAII wrappers so a failing call
// leaks nothing. cublasLtMatmul is safe inside a CUDA graph capture (the workspace is fixed).
#include "cuda/gemm.hpp"

#include <memory>
#include <string>

#include "cuda/cuda_check.hpp"
#include "cuda/cuda_kernels.hpp"

namespace slearn::cuda {
namespace {

constexpr std::size_t kWorkspaceBytes = 32u << 20;  // what cuBLAS recommends for Hopper

struct DescDeleter {
  void operator()(cublasLtMatmulDescOpaque_t* d) const { cublasLtMatmulDescDestroy(d); }
  void operator()(cublasLtMatrixLayoutOpaque_t* d) const { cublasLtMatrixLayoutDestroy(d); }
  void operator()(cublasLtMatmulPreferenceOpaque_t* d) const { cublasLtMatmulPreferenceDestroy(d); }
};
using OpDesc = std::unique_ptr<cublasLtMatmulDescOpaque_t, DescDeleter>;
using Layout = std::unique_ptr<cublasLtMatrixLayoutOpaque_t, DescDeleter>;
using Preference = std::unique_ptr<cublasLtMatmulPreferenceOpaque_t, DescDeleter>;

Layout make_layout(cudaDataType_t type, std::int64_t rows, std::int64_t cols, std::int64_t ld) {
  cublasLtMatrixLayout_t layout = nullptr;
  CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&layout, type, static_cast<std::uint64_t>(rows),
                                          static_cast<std::uint64_t>(cols), ld));
  return Layout(layout);
}

// The largest power of two (up to 256) dividing the address: cuBLASLt assumes 256-byte alignment unless told.
std::uint32_t alignment_of(const void* pointer) {
  const auto address = reinterpret_cast<std::uintptr_t>(pointer);
  std::uint32_t alignment = 256;
  while (alignment > 1 && address % alignment != 0) alignment /= 2;
  return alignment;
}

template <class T>
void set_attribute(cublasLtMatmulDesc_t desc, cublasLtMatmulDescAttributes_t attribute, const T& value) {
  CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(desc, attribute, &value, sizeof value));
}
template <class T>
void set_preference(cublasLtMatmulPreference_t pref, cublasLtMatmulPreferenceAttributes_t attribute, const T& value) {
  CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(pref, attribute, &value, sizeof value));
}

}  // namespace

struct Gemm::Plan {
  OpDesc desc;
  Layout first, second, out;
  cublasLtMatmulAlgo_t algo{};
  bool found = false;
};

Gemm::Gemm() {
  CUBLAS_CHECK(cublasLtCreate(&handle_));
  workspace_bytes_ = kWorkspaceBytes;
  const cudaError_t status = cudaMalloc(&workspace_, workspace_bytes_);
  if (status != cudaSuccess) {
    cublasLtDestroy(handle_);
    CUDA_CHECK(status);
  }
}

Gemm::~Gemm() {
  cudaFree(workspace_);  // synchronises: no matmul still uses it
  cublasLtDestroy(handle_);
}

void Gemm::run(const GemmParams& p) {
  if (p.m == 0 || p.n == 0) return;
  if (p.k == 0) {  // no product: c = beta * c (+ bias); cuBLASLt rejects k = 0
    if (p.c_type == GemmOut::F32) {  // an fp32 accumulator (gradients): takes no bias
      if (p.bias != nullptr) throw_error("gemm: a bias needs a contiguous bf16 output");
      for (std::int64_t r = 0; r < p.m; ++r)
        launch_scale_f32({static_cast<float*>(p.c) + r * p.ldc, p.n, p.beta, p.stream});
      return;
    }
    for (std::int64_t r = 0; r < p.m; ++r)
      launch_scale({static_cast<bf16*>(p.c) + r * p.ldc, p.n, p.beta, p.stream});
    if (p.bias != nullptr) launch_bias_add({static_cast<bf16*>(p.c), static_cast<const bf16*>(p.bias), p.m, p.n, p.stream});
    return;
  }
  if (p.bias != nullptr && (p.c_type != GemmOut::BF16 || p.ldc != p.n))
    throw_error("gemm: a bias needs a contiguous bf16 output");
  if (try_run(p, p.bias != nullptr)) return;
  if (p.bias == nullptr || !try_run(p, false))
    throw_error("gemm: cuBLASLt has no algorithm for " + std::to_string(p.m) + " x " + std::to_string(p.n) + " x " +
                std::to_string(p.k));
  launch_bias_add({static_cast<bf16*>(p.c), static_cast<const bf16*>(p.bias), p.m, p.n, p.stream});
}

bool Gemm::try_run(const GemmParams& p, bool with_bias) {
  const PlanKey key{p.m, p.n, p.k, p.lda, p.ldb, p.ldc,
                    (p.transpose_a ? 1 : 0) | (p.transpose_b ? 2 : 0) | (p.c_type == GemmOut::F32 ? 4 : 0),
                    alignment_of(p.a), alignment_of(p.b), alignment_of(p.c), with_bias};
  std::shared_ptr<Plan>& plan = plans_[key];
  if (!plan) {
    // Column-major: C^T [n x m] = op(B)^T [n x k] op(A)^T [k x m]. B is stored row-major [k, n] (or [n, k]
    // when transposed), i.e. column-major [n, k] (or [k, n]) with leading dimension ldb; likewise A.
    auto fresh = std::make_shared<Plan>();
    cublasLtMatmulDesc_t raw_desc = nullptr;
    CUBLAS_CHECK(cublasLtMatmulDescCreate(&raw_desc, CUBLAS_COMPUTE_32F, CUDA_R_32F));
    fresh->desc.reset(raw_desc);
    const cublasOperation_t op_first = p.transpose_b ? CUBLAS_OP_T : CUBLAS_OP_N;
    const cublasOperation_t op_second = p.transpose_a ? CUBLAS_OP_T : CUBLAS_OP_N;
    set_attribute(raw_desc, CUBLASLT_MATMUL_DESC_TRANSA, op_first);
    set_attribute(raw_desc, CUBLASLT_MATMUL_DESC_TRANSB, op_second);
    if (with_bias) {
      set_attribute(raw_desc, CUBLASLT_MATMUL_DESC_EPILOGUE, CUBLASLT_EPILOGUE_BIAS);
      set_attribute(raw_desc, CUBLASLT_MATMUL_DESC_BIAS_POINTER, p.bias);  // bias type defaults to D's: bf16
    }
    fresh->first = p.transpose_b ? make_layout(CUDA_R_16BF, p.k, p.n, p.ldb)    // B [n, k] row-major
                                 : make_layout(CUDA_R_16BF, p.n, p.k, p.ldb);   // B [k, n] row-major
    fresh->second = p.transpose_a ? make_layout(CUDA_R_16BF, p.m, p.k, p.lda)   // A [k, m] row-major
                                  : make_layout(CUDA_R_16BF, p.k, p.m, p.lda);  // A [m, k] row-major
    const cudaDataType_t c_type = p.c_type == GemmOut::BF16 ? CUDA_R_16BF : CUDA_R_32F;
    fresh->out = make_layout(c_type, p.n, p.m, p.ldc);

    cublasLtMatmulPreference_t raw_pref = nullptr;
    CUBLAS_CHECK(cublasLtMatmulPreferenceCreate(&raw_pref));
    const Preference pref(raw_pref);
    set_preference(raw_pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, static_cast<std::uint64_t>(workspace_bytes_));
    set_preference(raw_pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, alignment_of(p.b));
    set_preference(raw_pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES, alignment_of(p.a));
    set_preference(raw_pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, alignment_of(p.c));
    set_preference(raw_pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES, alignment_of(p.c));

    cublasLtMatmulHeuristicResult_t result{};
    int found = 0;
    const cublasStatus_t status =
        cublasLtMatmulAlgoGetHeuristic(handle_, raw_desc, fresh->first.get(), fresh->second.get(), fresh->out.get(),
                                       fresh->out.get(), raw_pref, 1, &result, &found);
    if (status != CUBLAS_STATUS_NOT_SUPPORTED) CUBLAS_CHECK(status);
    fresh->found = status == CUBLAS_STATUS_SUCCESS && found > 0;
    fresh->algo = result.algo;
    plan = std::move(fresh);
  }
  if (!plan->found) return false;
  if (with_bias) set_attribute(plan->desc.get(), CUBLASLT_MATMUL_DESC_BIAS_POINTER, p.bias);
  CUBLAS_CHECK(cublasLtMatmul(handle_, plan->desc.get(), &p.alpha, p.b, plan->first.get(), p.a, plan->second.get(),
                              &p.beta, p.c, plan->out.get(), p.c, plan->out.get(), &plan->algo, workspace_,
                              workspace_bytes_, p.stream));
  return true;
}

}  // namespace slearn::cuda
