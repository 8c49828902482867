// NcclCommunicator (nccl_communicator.hpp): the NCCL communicator from an ncclUniqueId broadcast over MPI.
#include "cuda/nccl_communicator.hpp"

#include "cuda/cuda_check.hpp"
#include "dist/mpi_check.hpp"

namespace slearn::cuda {

NcclCommunicator::NcclCommunicator(MPI_Comm comm) {
  SLEARN_MPI_CHECK(MPI_Comm_rank(comm, &rank_));
  SLEARN_MPI_CHECK(MPI_Comm_size(comm, &size_));
  ncclUniqueId id{};
  if (rank_ == 0) NCCL_CHECK(ncclGetUniqueId(&id));
  SLEARN_MPI_CHECK(MPI_Bcast(&id, static_cast<int>(sizeof id), MPI_BYTE, 0, comm));
  NCCL_CHECK(ncclCommInitRank(&comm_, size_, id, rank_));
}

NcclCommunicator::~NcclCommunicator() {
  if (comm_ != nullptr) (void)ncclCommDestroy(comm_);  // a destructor does not throw
}

void NcclCommunicator::allreduce_sum(float* device_buffer, std::size_t count, cudaStream_t stream) {
  if (count == 0) return;
  NCCL_CHECK(ncclAllReduce(device_buffer, device_buffer, count, ncclFloat, ncclSum, comm_, stream));
}

}  // namespace slearn::cuda
