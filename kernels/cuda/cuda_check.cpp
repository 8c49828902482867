// The throwing half of cuda_check.hpp: builds the message and throws slearn::Error.
#include "cuda/cuda_check.hpp"

#include "slearn/error.hpp"

namespace slearn::cuda {

void throw_error(const std::string& message) { throw Error(message); }

void throw_cuda_error(cudaError_t status, const char* call, const char* file, int line) {
  (void)cudaGetLastError();  // clear a non-sticky error so that the next call does not report it again
  throw Error(std::string(call) + " failed: " + cudaGetErrorName(status) + ": " + cudaGetErrorString(status) + " (" +
              file + ":" + std::to_string(line) + ")");
}

void throw_cublas_error(cublasStatus_t status, const char* call, const char* file, int line) {
  throw Error(std::string(call) + " failed: " + cublasLtGetStatusName(status) + ": " + cublasLtGetStatusString(status) +
              " (" + file + ":" + std::to_string(line) + ")");
}

#ifdef SLEARN_WITH_NCCL
void throw_nccl_error(ncclResult_t status, const char* call, const char* file, int line) {
  throw Error(std::string(call) + " failed: " + ncclGetErrorString(status) + " (" + file + ":" +
              std::to_string(line) + ")");
}
#endif

}  // namespace slearn::cuda
