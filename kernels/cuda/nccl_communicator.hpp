// NcclCommunicator: in-place sums of device floats across the ranks of a slearn::Communicator over NCCL, for
// the CUDA gradient sum (cuda_gradient_sum.hpp). Built only when NCCL was found (SLEARN_WITH_NCCL,
// kernels/cuda/CMakeLists.txt).
//
// A collective whose peer has died never completes, and a blocking NCCL communicator would then hang the
// job for good. So this one is non-blocking (ncclConfig_t::blocking = 0): no call waits inside NCCL, every
// wait is ours — a poll of the CUDA event behind the work and of NCCL's asynchronous error state — and each
// is bounded by timeout_seconds. On an error or a timeout the communicator is aborted (its kernels stop, so
// the streams drain) and slearn::Error names this rank, the world size, what was waiting and why. The
// process then ends through the usual error path (MpiSession::abort_job takes the other ranks down).
//
// The ncclUniqueId travels over the Communicator itself (its string broadcast), so nothing here needs MPI.
#pragma once

#include <cuda_runtime_api.h>
#include <nccl.h>

#include <cstddef>
#include <string>

namespace slearn {
class Communicator;
}

namespace slearn::cuda {

class NcclCommunicator {
 public:
  // Collective over `comm`: rank 0 creates the ncclUniqueId and broadcasts it (or, when it cannot, the reason,
  // so that every rank throws instead of waiting for an id that never comes); each rank then joins on
  // `device` (made current here) and waits, at most timeout_seconds, for the communicator to be ready.
  NcclCommunicator(Communicator& comm, int device, double timeout_seconds);
  // Flushes and frees the communicator (bounded by the timeout); aborts it instead after an error, during
  // an exception's unwinding (a peer may be gone), or when the flush times out. Never throws.
  ~NcclCommunicator();
  NcclCommunicator(const NcclCommunicator&) = delete;
  NcclCommunicator& operator=(const NcclCommunicator&) = delete;

  int rank() const { return rank_; }
  int size() const { return size_; }

  // Enqueues, on `stream`, the in-place sum over the ranks of `count` floats at `device_buffer` (a collective:
  // every rank, in the same order, with the same count). Returns once the work is enqueued: its completion is
  // known only through an event recorded on `stream` afterwards and passed to wait().
  void allreduce_sum(float* device_buffer, std::size_t count, cudaStream_t stream);
  // The same for `count` elements of `type` (ncclFloat, ncclBfloat16, ...), summed in that type.
  void allreduce(void* device_buffer, std::size_t count, ncclDataType_t type, cudaStream_t stream);

  // Waits until `done` (an event recorded behind this communicator's work) has completed, polling it and
  // NCCL's asynchronous error state about every millisecond. Throws slearn::Error naming `what` when NCCL
  // reports an error or nothing completes within timeout_seconds (the communicator is aborted first).
  void wait(cudaEvent_t done, const char* what);

 private:
  // After a call that may have returned ncclInProgress: polls until the communicator settles; throws on error.
  void settle(ncclResult_t status, const char* what);
  // Aborts the communicator and throws slearn::Error: "NCCL on rank r of n: <what> <reason>".
  [[noreturn]] void fail(const char* what, const std::string& reason);
  std::string describe(ncclResult_t status) const;

  ncclComm_t comm_ = nullptr;
  int rank_ = 0;
  int size_ = 1;
  int device_ = 0;
  double timeout_seconds_ = 600;
  bool failed_ = false;  // aborted after an error: comm_ is gone, every later call throws
};

}  // namespace slearn::cuda
