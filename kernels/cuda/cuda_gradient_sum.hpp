// The CUDA backend's GradientSum (slearn/gradient_sum.hpp): an fp32 device buffer that the backward
// accumulates into, summed across ranks over NCCL in buckets on a stream of its own, so that the sum of the
// last layers overlaps the backward of the first (cuda_gradient_sum.cpp has the design; CudaBackend's
// make_gradient_sum calls this).
#pragma once

#include <cstdint>
#include <memory>

#include "cuda/device_memory.hpp"
#include "slearn/gradient_sum.hpp"

namespace slearn {
class Communicator;
}

namespace slearn::cuda {

// Collective over `comm` when it has more than one rank (the NCCL communicator is created here, on
// context->device()). `elements` fp32 values; buckets of options.bucket_elements; every wait bounded by
// options.timeout_seconds. Throws slearn::Error on a CUDA or NCCL failure, naming the rank.
std::unique_ptr<GradientSum> make_cuda_gradient_sum(std::shared_ptr<cuda::DeviceContext> context,
                                                    Communicator& comm, std::int64_t elements,
                                                    const GradientSumOptions& options);

}  // namespace slearn::cuda
