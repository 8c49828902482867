// "Sum these gradients across ranks": the one interface the trainer uses for data parallelism. Each backend
// makes its own (Backend::make_gradient_sum): the cpu backend sums over MPI, the cuda backend over NCCL (or,
// in a build without NCCL, through the host over MPI), so the trainer has no backend branch.
//
// A step goes: begin_step; for each of this rank's micro-batches begin_micro_batch, the backward accumulates
// into gradients() (matmuls with beta 1), end_micro_batch; ready_from as the last micro-batch's backward
// finishes each layer; finish. Afterwards gradients() holds the fp32 sum over every rank, identical on all.
//
// The sum runs in fixed buckets of the flat buffer, launched from its end (the last layer's gradients are
// final first), so a bucket can be summed while the backward of earlier layers still runs. Every rank
// launches the same buckets in the same order whatever its timing, as a collective requires.
//
// Precision: the cpu sum adds each micro-batch's fp32 gradient into double accumulators and sums those
// across ranks in double, so the update does not depend on the rank count (as the trainer always did). The
// cuda sum accumulates in fp32 in place and sums fp32 across ranks: the update then depends on the rank
// count only through fp32 summation order.
#pragma once

#include <cstdint>
#include <memory>
#include <vector>

#include "slearn/tensor.hpp"

namespace slearn {

struct GradientSumOptions {
  std::int64_t bucket_elements = std::int64_t{1} << 22;  // 16 MiB of fp32 per bucket
  // A collective that makes no progress for this long (a peer gone) ends the job with an error naming the
  // rank, instead of hanging (the cuda sum polls NCCL's asynchronous error state; MPI has its own limits).
  double timeout_seconds = 600;
};

// The buckets of a flat buffer of `elements`: [begin, end) pairs ordered from the end of the buffer.
std::vector<std::pair<std::int64_t, std::int64_t>> gradient_buckets(std::int64_t elements,
                                                                    std::int64_t bucket_elements);

class GradientSum {
 public:
  virtual ~GradientSum() = default;
  // The flat fp32 buffer (in the backend's memory) that a micro-batch's backward accumulates into.
  virtual Tensor& gradients() = 0;
  virtual void begin_step() = 0;
  virtual void begin_micro_batch() = 0;
  virtual void end_micro_batch() = 0;
  // Elements from `begin` to the end are final for this step on this rank: buckets wholly inside may start.
  virtual void ready_from(std::int64_t begin) = 0;
  // Launches what is left and waits for the whole sum.
  virtual void finish() = 0;
  // Bytes this rank sent into the sum during the last step (a bucket's payload each, for the figures).
  virtual std::int64_t bytes_reduced() const = 0;
};

}  // namespace slearn
