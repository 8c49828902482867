// The sum over a tensor group of a row-parallel projection's partial output (or of any partial result of
// a sharded model: the input gradients of column-parallel projections in training), in place. Host fp32
// tensors are summed where they lie; others go through `staging` on the host (to be replaced by an NCCL
// sum on the device for GPU tensors).
#pragma once

#include <vector>

#include "slearn/backend.hpp"
#include "slearn/communicator.hpp"

namespace slearn {

void sum_over_group(Backend& backend, Communicator& group, Tensor& partial, std::vector<float>& staging);

}  // namespace slearn
