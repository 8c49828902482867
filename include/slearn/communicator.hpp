// What the trainer and pipeline need from the processes around them: rank, size, and sums across ranks.
// A single process is the trivial case; MPI (and NCCL for GPU tensors) implement the same interface, so a CPU
// run does over MPI what a GPU run does over NCCL.
#pragma once

#include <cstdint>
#include <memory>
#include <span>

namespace slearn {

class Communicator {
 public:
  virtual ~Communicator() = default;
  virtual int rank() const = 0;
  virtual int size() const = 0;
  // In place: every rank ends with the element-wise sum over all ranks.
  virtual void allreduce_sum(std::span<float> values) = 0;
  virtual void allreduce_sum(std::span<double> values) = 0;
  virtual void barrier() = 0;
};

std::unique_ptr<Communicator> make_single_process_communicator();

}  // namespace slearn
