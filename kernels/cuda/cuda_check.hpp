// Error checking for CUDA runtime and cuBLAS(Lt) calls: each macro evaluates the call once and, on failure,
// throws slearn::Error naming the call, the error and the source file and line. Library code never aborts
// on a CUDA error; the CLI turns the Error into a message and an exit code like any other.
// The throwing functions live in cuda_check.cpp (C++20, slearn/error.hpp), so .cu files, which nvcc compiles
// as C++17, can use the macros without including slearn/error.hpp. NCCL_CHECK (NCCL calls) exists only in
// builds that found NCCL (SLEARN_WITH_NCCL, kernels/cuda/CMakeLists.txt).
#pragma once

#include <cublasLt.h>
#include <cuda_runtime_api.h>
#ifdef SLEARN_WITH_NCCL
#include <nccl.h>
#endif

#include <string>

namespace slearn::cuda {

// Throws slearn::Error(message).
[[noreturn]] void throw_error(const std::string& message);
[[noreturn]] void throw_cuda_error(cudaError_t status, const char* call, const char* file, int line);
[[noreturn]] void throw_cublas_error(cublasStatus_t status, const char* call, const char* file, int line);

inline void check_cuda(cudaError_t status, const char* call, const char* file, int line) {
  if (status != cudaSuccess) throw_cuda_error(status, call, file, line);
}
inline void check_cublas(cublasStatus_t status, const char* call, const char* file, int line) {
  if (status != CUBLAS_STATUS_SUCCESS) throw_cublas_error(status, call, file, line);
}
#ifdef SLEARN_WITH_NCCL
[[noreturn]] void throw_nccl_error(ncclResult_t status, const char* call, const char* file, int line);
inline void check_nccl(ncclResult_t status, const char* call, const char* file, int line) {
  if (status != ncclSuccess) throw_nccl_error(status, call, file, line);
}
#endif

}  // namespace slearn::cuda

#define CUDA_CHECK(call) ::slearn::cuda::check_cuda((call), #call, __FILE__, __LINE__)
#define CUBLAS_CHECK(call) ::slearn::cuda::check_cublas((call), #call, __FILE__, __LINE__)
#ifdef SLEARN_WITH_NCCL
#define NCCL_CHECK(call) ::slearn::cuda::check_nccl((call), #call, __FILE__, __LINE__)
#endif
// After a kernel launch: reports launch-configuration errors (bad grid, too much shared memory) at once;
// errors inside the kernel surface at the next synchronising call.
#define CUDA_CHECK_LAUNCH() CUDA_CHECK(cudaGetLastError())
