// The gradient sum of a host (cpu backend) run: fp32 micro-batch gradients added into double accumulators,
// summed across ranks over the Communicator (MPI) in double, bucket by bucket (slearn/gradient_sum.hpp).
#pragma once

#include <memory>

#include "slearn/communicator.hpp"
#include "slearn/gradient_sum.hpp"

namespace slearn {

std::unique_ptr<GradientSum> make_host_gradient_sum(Communicator& comm, std::int64_t elements,
                                                    const GradientSumOptions& options);

}  // namespace slearn
