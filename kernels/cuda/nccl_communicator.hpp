// NcclCommunicator: an allreduce over NCCL for buffers in GPU memory, the device-side counterpart of the MPI
// Communicator (include/slearn/communicator.hpp). Built only when NCCL was found (SLEARN_WITH_NCCL,
// kernels/cuda/CMakeLists.txt). Compiled but not yet used by the trainer, and never run here (docs/cuda.md).
#pragma once

#include <cuda_runtime_api.h>
#include <mpi.h>
#include <nccl.h>

#include <cstddef>

namespace slearn::cuda {

class NcclCommunicator {
 public:
  // Collective over `comm`: rank 0 creates an ncclUniqueId, MPI_Bcast sends its bytes to every rank, and each
  // rank joins with ncclCommInitRank on its current device, so each rank must have called cudaSetDevice
  // (make_cuda_backend does, by local rank: slearn/device_binding.hpp) before. Throws slearn::Error on an MPI
  // or NCCL failure.
  explicit NcclCommunicator(MPI_Comm comm = MPI_COMM_WORLD);
  ~NcclCommunicator();  // ncclCommDestroy
  NcclCommunicator(const NcclCommunicator&) = delete;
  NcclCommunicator& operator=(const NcclCommunicator&) = delete;

  int rank() const { return rank_; }
  int size() const { return size_; }

  // In place: every rank's `count` floats at `device_buffer` become their sum over the ranks. Enqueued on
  // `stream` (a collective: all ranks, same order, same count); complete once the stream is.
  // A blocking communicator: an error on another rank or a lost peer is not reported here (docs/cuda.md).
  void allreduce_sum(float* device_buffer, std::size_t count, cudaStream_t stream);

 private:
  ncclComm_t comm_ = nullptr;
  int rank_ = 0;
  int size_ = 1;
};

}  // namespace slearn::cuda
