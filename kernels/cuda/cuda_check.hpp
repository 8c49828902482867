// Error checking for CUDA runtime and cuBLAS(Lt) calls: each macro evaluates the call once and, on failure,
// throws slearn::Error naming the call, the error and the source file and line. Library code never aborts
// on a CUDA error; the CLI turns the Error into a message and an exit code like any other.
// The throwing functions live in cuda_check.cpp (C++20, slearn/error.hpp), so .cu files, which nvcc compiles
// as C++17, can use the macros without including slearn/error.hpp. NCCL_CHECK joins them with NCCL.
#pragma once

#include <cublasLt.h>
#include <cuda_runtime_api.h>

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

}  // namespace slearn::cuda

#define CUDA_CHECK(call) ::slearn::cuda::check_cuda((call), #call, __FILE__, __LINE__)
#define CUBLAS_CHECK(call) ::slearn::cuda::check_cublas((call), #call, __FILE__, __LINE__)
// After a kernel launch: reports launch-configuration errors (bad grid, too much shared memory) at once;
// errors inside the kernel surface at the next synchronising call.
#define CUDA_CHECK_LAUNCH() CUDA_CHECK(cudaGetLastError())
