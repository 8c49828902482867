// NcclGroupSum (cuda_group_sum.hpp): a sharded model's sums over its tensor group, on the device.
//
// Where the sum runs. On the compute stream itself, not a stream of its own as the gradient sum does: the op
// after a row-parallel projection (the residual add and the next norm) needs the whole sum, so there is
// nothing to overlap it with, and the stream orders that op behind the ncclAllReduce without any event. The
// host enqueues and goes on; no sum costs a host round trip.
//
// The dtype. The tensor's own: bf16 activations are summed in bf16 (ncclBfloat16: each ring step adds in
// fp32 and rounds to bf16, so T - 1 roundings where the host path, which sums fp32 copies, rounds once), fp32
// ones (the fp32 gradients of training) in fp32. This is what Megatron-LM does, and it halves the bytes.
//
// Waiting. sum() returns once the allreduce is enqueued. wait() records an event behind everything enqueued
// and polls it with NcclCommunicator::wait (bounded by the timeout, NCCL's asynchronous errors checked, the
// communicator aborted and an Error naming the rank on failure). The model calls it once per forward and the
// training graph once per forward and per backward: points where the host is about to read results from
// the device anyway, so the wait adds no synchronisation that was not there.
//
// Decode steps of a sharded model are not recorded into CUDA graphs (Model::forward_logits): an NCCL
// communicator's kernels can be captured, but a captured step would replay its collectives without the
// bounded wait around them.
#include "cuda/cuda_group_sum.hpp"

#include <nccl.h>

#include <cstddef>
#include <memory>
#include <string>
#include <utility>

#include "cuda/cuda_check.hpp"
#include "cuda/nccl_communicator.hpp"
#include "slearn/communicator.hpp"
#include "slearn/error.hpp"
#include "slearn/tensor.hpp"

namespace slearn::cuda {
namespace {

struct EventDestroy {
  void operator()(cudaEvent_t event) const { (void)cudaEventDestroy(event); }
};

class NcclGroupSum final : public GroupSum {
 public:
  NcclGroupSum(std::shared_ptr<DeviceContext> context, Communicator& group, double timeout_seconds)
      : context_(std::move(context)) {
    if (!context_) throw Error("cuda group sum: no device context");
    cudaEvent_t event = nullptr;
    CUDA_CHECK(cudaSetDevice(context_->device()));
    CUDA_CHECK(cudaEventCreateWithFlags(&event, cudaEventDisableTiming));
    done_.reset(event);
    nccl_ = std::make_unique<NcclCommunicator>(group, context_->device(), timeout_seconds);
  }

  void sum(Tensor& partial) override {
    if (partial.device() != Device::CUDA)
      throw Error("cuda group sum: '" + partial.name() + "' is not a device tensor");
    ncclDataType_t type = ncclFloat;
    switch (partial.dtype()) {
      case DType::F32:
        type = ncclFloat;
        break;
      case DType::BF16:
        type = ncclBfloat16;
        break;
      default:
        throw Error("cuda group sum: '" + partial.name() + "' is " + std::string(dtype_name(partial.dtype())) +
                    ", not bf16 or fp32");
    }
    context_->refuse_during_capture("a sum over the tensor group");
    nccl_->allreduce(partial.data(), static_cast<std::size_t>(partial.numel()), type, context_->stream());
    pending_ = true;
  }

  void wait(const char* what) override {
    if (!pending_) return;
    CUDA_CHECK(cudaEventRecord(done_.get(), context_->stream()));
    nccl_->wait(done_.get(), what);
    pending_ = false;
  }

 private:
  std::shared_ptr<DeviceContext> context_;
  std::unique_ptr<CUevent_st, EventDestroy> done_;
  std::unique_ptr<NcclCommunicator> nccl_;  // last, so destroyed first: its flush ends what is still enqueued
  bool pending_ = false;  // a sum enqueued since the last wait
};

}  // namespace

std::unique_ptr<GroupSum> make_nccl_group_sum(std::shared_ptr<DeviceContext> context, Communicator& group,
                                              double timeout_seconds) {
  return std::make_unique<NcclGroupSum>(std::move(context), group, timeout_seconds);
}

}  // namespace slearn::cuda
