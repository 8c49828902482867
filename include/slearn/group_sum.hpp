// "Sum this partial result over the tensor group": what a sharded model (Megatron-style tensor parallelism,
// slearn/mesh.hpp) needs between its ops. A row-parallel projection's output (o_proj, down_proj) and, in
// training, a column-parallel projection's input gradient are partial sums over the ranks of a tensor group;
// each must be summed, in place, before the next op reads it. Each backend makes its own
// (Backend::make_group_sum), so the model's layer loop has no backend branch:
// - cpu: host fp32 tensors are summed where they lie over the group's Communicator (MPI);
// - cuda with NCCL: the sum is enqueued on the compute stream over an NCCL communicator of the group, in the
//   tensor's own dtype (bf16 activations are summed in bf16, as Megatron does), and the ops after it are
//   ordered behind it by the stream: no host round trip per sum;
// - anything else: staged through the host (to_host, the group's allreduce in fp32, write).
// A sum may return before it is done (cuda); wait() bounds the wait for everything enqueued so far, so that a
// peer that died ends the job with an error naming the rank instead of a hang. The model waits once per
// forward and the training graph once per forward and backward, where the host reads results anyway.
#pragma once

#include <memory>
#include <vector>

#include "slearn/tensor.hpp"

namespace slearn {

class Backend;
class Communicator;

class GroupSum {
 public:
  virtual ~GroupSum() = default;
  // Collective over the group: every rank, in the same order, with the same shape and dtype.
  virtual void sum(Tensor& partial) = 0;
  // Returns when every sum enqueued so far is done; throws slearn::Error naming `what` when one fails or does
  // not finish within the timeout it was made with.
  virtual void wait(const char* what) = 0;
};

// The host path above, for any backend: host fp32 tensors summed in place, others through a host staging
// buffer. `backend` and `group` must outlive the result.
std::unique_ptr<GroupSum> make_host_group_sum(Backend& backend, Communicator& group);

}  // namespace slearn
