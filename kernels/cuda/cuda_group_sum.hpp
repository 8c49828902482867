// The CUDA backend's GroupSum (slearn/group_sum.hpp): the sums over a tensor group of a sharded model's
// partial results, in place on the device over NCCL (cuda_group_sum.cpp has the design; CudaBackend's
// make_group_sum calls this). A build without NCCL gets the host-staged GroupSum instead.
#pragma once

#include <memory>

#include "cuda/device_memory.hpp"
#include "slearn/group_sum.hpp"

namespace slearn {
class Communicator;
}

namespace slearn::cuda {

// Collective over `group` (the NCCL communicator is created here, on context->device()); every wait bounded
// by timeout_seconds. Built only with SLEARN_WITH_NCCL.
std::unique_ptr<GroupSum> make_nccl_group_sum(std::shared_ptr<DeviceContext> context, Communicator& group,
                                              double timeout_seconds);

}  // namespace slearn::cuda
