// The CUDA backend's training state (Backend's "Training state" ops; optimizer.cu has the kernels' design):
// the fp32 master weights, gradients and AdamW moments are flat fp32 device buffers, and the matmuls read a
// bf16 compute copy of the master that refresh_compute_copy recasts after each update. Only check_flat's two
// scalars and write's host copies cross the bus; AdamW, the cast and zeroing are queued on the stream.
#include <cstring>
#include <string>
#include <vector>

#include "cuda/cuda_backend_impl.hpp"
#include "cuda/cuda_check.hpp"
#include "cuda/cuda_gradient_sum.hpp"
#ifdef SLEARN_WITH_NCCL
#include "cuda/cuda_group_sum.hpp"
#endif
#include "slearn/communicator.hpp"
#include "slearn/dtype.hpp"
#include "slearn/error.hpp"
#include "util/trace.hpp"

namespace slearn::cuda_backend {

void CudaBackend::write(Tensor& t, std::span<const float> values) {
  expect(t.device() == Device::CUDA, t, "write: not a tensor of the cuda backend");
  expect(static_cast<std::int64_t>(values.size()) == t.numel(), t,
         "write: " + std::to_string(values.size()) + " values for this tensor");
  context_->refuse_during_capture("writing host values into " + t.name());
  if (values.empty()) return;
  // From pageable memory and then synchronised, as upload copies: write runs when the state is set up or
  // resumed, and the caller may reuse `values` as soon as it returns.
  if (t.dtype() == DType::F32) {
    CUDA_CHECK(cudaMemcpyAsync(dev_f32(t), values.data(), t.bytes(), cudaMemcpyHostToDevice, stream_));
    CUDA_CHECK(cudaStreamSynchronize(stream_));
    return;
  }
  bf16* target = dev(t);  // throws for a dtype that is neither
  std::vector<std::uint16_t> converted(values.size());
  for (std::size_t i = 0; i < converted.size(); ++i) converted[i] = f32_to_bf16(values[i]);
  CUDA_CHECK(cudaMemcpyAsync(target, converted.data(), t.bytes(), cudaMemcpyHostToDevice, stream_));
  CUDA_CHECK(cudaStreamSynchronize(stream_));
}

void CudaBackend::zero(Tensor& t) {
  expect(t.device() == Device::CUDA, t, "zero: not a tensor of the cuda backend");
  if (t.bytes() > 0) CUDA_CHECK(cudaMemsetAsync(t.data(), 0, t.bytes(), stream_));
}

Tensor CudaBackend::compute_copy(const Tensor& master, std::string name) {
  const float* source = dev_f32(master);
  Tensor copy = allocate(master.shape(), std::move(name), DType::BF16);
  cuda::launch_cast_f32_to_bf16({source, dev(copy), master.numel(), stream_});
  return copy;
}

void CudaBackend::refresh_compute_copy(const Tensor& master, Tensor& copy) {
  const TraceRange trace("refresh_compute_copy");
  if (copy.data() == master.data()) return;  // the same memory: nothing to refresh
  expect(copy.numel() == master.numel(), copy, "refresh_compute_copy: differs in size from " + master.name());
  cuda::launch_cast_f32_to_bf16({dev_f32(master), dev(copy), master.numel(), stream_});
}

// The sum runs in launch_flat_check's fixed order over the whole buffer; segment_ends are checked as the CPU
// backend checks them but do not shape the order (deterministic, not the CPU's segment-by-segment sum).
Backend::FlatCheck CudaBackend::check_flat(const Tensor& flat, std::span<const std::int64_t> segment_ends) {
  const TraceRange trace("check_flat");
  const float* values = dev_f32(flat);
  expect(!segment_ends.empty() && segment_ends.back() == flat.numel(), flat,
         "check_flat: the segments must end at the tensor's size");
  for (std::size_t s = 1; s < segment_ends.size(); ++s)
    expect(segment_ends[s] >= segment_ends[s - 1], flat,
           "check_flat: segment ends decrease at segment " + std::to_string(s));
  context_->refuse_during_capture("check_flat");
  if (!check_result_host_) {
    void* host = nullptr;
    CUDA_CHECK(cudaMallocHost(&host, sizeof(cuda::FlatCheckResult)));
    check_result_host_.reset(host);
  }
  auto* base = static_cast<char*>(check_scratch_.get(
      context_, sizeof(cuda::FlatCheckResult) + cuda::kFlatCheckScratchBytes, "check_flat partials"));
  auto* result = reinterpret_cast<cuda::FlatCheckResult*>(base);  // the block's start: aligned for it
  cuda::launch_flat_check({values, flat.numel(), base + sizeof(cuda::FlatCheckResult), result, stream_});
  CUDA_CHECK(cudaMemcpyAsync(check_result_host_.get(), result, sizeof(cuda::FlatCheckResult), cudaMemcpyDeviceToHost,
                             stream_));
  CUDA_CHECK(cudaStreamSynchronize(stream_));
  cuda::FlatCheckResult host{};
  std::memcpy(&host, check_result_host_.get(), sizeof host);
  return {host.sum_squares, host.first_non_finite};
}

void CudaBackend::adamw_update(Tensor& params, const Tensor& grads, Tensor& m, Tensor& v, const AdamWScalars& s) {
  const TraceRange trace("adamw_update");
  expect(grads.numel() == params.numel() && m.numel() == params.numel() && v.numel() == params.numel(), params,
         "adamw_update: parameters, gradients and moments differ in size (" + grads.name() + " " +
             grads.shape_string() + ", " + m.name() + " " + m.shape_string() + ", " + v.name() + " " +
             v.shape_string() + ")");
  cuda::launch_adamw({dev_f32(params), dev_f32(grads), dev_f32(m), dev_f32(v), params.numel(), s.decay,
                      s.one_minus_beta1, s.beta2, s.one_minus_beta2, s.correction2_sqrt, s.step_size, s.eps,
                      s.grad_scale, stream_});
}

std::unique_ptr<GradientSum> CudaBackend::make_gradient_sum(Communicator& comm, std::int64_t elements,
                                                            const GradientSumOptions& options) {
  return cuda::make_cuda_gradient_sum(context_, comm, elements, options);
}

std::unique_ptr<GroupSum> CudaBackend::make_group_sum(Communicator& group, double timeout_seconds) {
  // One rank: Model never makes a group sum for a whole model, but a group of one needs no NCCL either.
#ifdef SLEARN_WITH_NCCL
  if (group.size() > 1) return cuda::make_nccl_group_sum(context_, group, timeout_seconds);
#else
  (void)timeout_seconds;
#endif
  return make_host_group_sum(*this, group);
}

}  // namespace slearn::cuda_backend
