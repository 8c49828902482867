// CudaGradientSum (cuda_gradient_sum.hpp): the gradient sum of a CUDA run.
//
// The buffer. One flat fp32 device buffer from the backend's pool; every micro-batch's backward accumulates
// into it in place (matmuls with beta 1), so begin_step zeroes it on the backend's stream and the
// micro-batch hooks have nothing to do. The cross-rank sum is fp32 too (slearn/gradient_sum.hpp, precision).
//
// Overlap (NCCL, more than one rank). The buckets (gradient_buckets, from the buffer's end) are summed on a
// stream of their own, non-blocking and at the highest priority the device offers, so that the NCCL kernels
// are scheduled ahead of the backward's. When ready_from(begin) says that [begin, end) is final, every bucket
// not yet launched that lies wholly within it is launched: an event recorded on the compute stream behind
// the backward enqueued so far, the sum stream made to wait on it, an in-place ncclAllReduce per bucket.
// Every rank launches the same buckets in the same order (the order of gradient_buckets; how far each rank's
// backward has come decides only when). finish() launches the rest, records an event on the sum stream and
// waits for it with NcclCommunicator::wait (bounded by the timeout, an error naming the rank, the
// communicator aborted), then makes the compute stream wait on that event, so the optimiser that follows
// reads the sum.
//
// One rank: nothing to sum, and no NCCL at all (finish only counts nothing).
//
// A build without NCCL (SLEARN_WITH_NCCL undefined) and more than one rank: a host-staged fallback. finish()
// copies the buffer into a pinned host block, sums it bucket by bucket over the Communicator (MPI) and copies
// it back. Correct and the same buckets in the same order, but slower: two bus crossings per step, nothing
// overlapped, the host blocked throughout, and MPI's own limits instead of this timeout.
#include "cuda/cuda_gradient_sum.hpp"

#include <cstddef>
#include <memory>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include "cuda/cuda_check.hpp"
#include "slearn/communicator.hpp"
#include "slearn/error.hpp"
#include "slearn/tensor.hpp"

#ifdef SLEARN_WITH_NCCL
#include "cuda/nccl_communicator.hpp"
#endif

namespace slearn::cuda {
namespace {

enum class SumPath { Local, Nccl, HostStaged };

SumPath choose_path(const Communicator& comm) {
  if (comm.size() == 1) return SumPath::Local;
#ifdef SLEARN_WITH_NCCL
  return SumPath::Nccl;
#else
  return SumPath::HostStaged;
#endif
}

// Owners of the CUDA handles, so that a constructor that throws half way frees what it made.
struct StreamDestroy {
  void operator()(cudaStream_t stream) const { (void)cudaStreamDestroy(stream); }  // freed once drained
};
struct EventDestroy {
  void operator()(cudaEvent_t event) const { (void)cudaEventDestroy(event); }
};
struct PinnedFree {
  void operator()(float* host) const { (void)cudaFreeHost(host); }
};

cudaEvent_t make_event() {
  cudaEvent_t event = nullptr;
  CUDA_CHECK(cudaEventCreateWithFlags(&event, cudaEventDisableTiming));
  return event;
}

class CudaGradientSum final : public GradientSum {
 public:
  CudaGradientSum(std::shared_ptr<DeviceContext> context, Communicator& comm, std::int64_t elements,
                  const GradientSumOptions& options);
  ~CudaGradientSum() override;
  CudaGradientSum(const CudaGradientSum&) = delete;
  CudaGradientSum& operator=(const CudaGradientSum&) = delete;

  Tensor& gradients() override { return gradients_; }
  void begin_step() override;
  void begin_micro_batch() override {}
  void end_micro_batch() override {}
  void ready_from(std::int64_t begin) override;
  void finish() override;
  std::int64_t bytes_reduced() const override { return bytes_; }

 private:
  float* buffer() { return static_cast<float*>(gradients_.data()); }
  // The compute stream waits for everything queued on the sum stream so far (no host wait).
  void order_compute_after_sum();
  // NCCL path: launches, in order, every bucket not yet launched that begins at or after `begin`.
  void launch_from(std::int64_t begin);
  void finish_host_staged();
  std::string where() const {
    return "gradient sum on rank " + std::to_string(comm_.rank()) + " of " + std::to_string(comm_.size());
  }

  std::shared_ptr<DeviceContext> context_;
  Communicator& comm_;
  const SumPath path_;
  const std::int64_t elements_;
  Tensor gradients_;
  const std::vector<std::pair<std::int64_t, std::int64_t>> buckets_;
  std::size_t launched_ = 0;  // buckets_[0, launched_) are enqueued this step
  bool finished_ = true;      // finish() has waited for this step's buckets
  std::int64_t bytes_ = 0;

  // Host-staged path: pinned, elements_ floats.
  std::unique_ptr<float, PinnedFree> host_;
  // NCCL path. Declared in the order that makes the communicator go first (its flush may still need the sum
  // stream's work), then the events and the stream.
  std::unique_ptr<CUstream_st, StreamDestroy> sum_stream_;
  std::unique_ptr<CUevent_st, EventDestroy> backward_ready_;  // on the compute stream: the backward so far
  std::unique_ptr<CUevent_st, EventDestroy> summed_;          // on the sum stream: the buckets launched so far
#ifdef SLEARN_WITH_NCCL
  std::unique_ptr<NcclCommunicator> nccl_;
#endif
};

CudaGradientSum::CudaGradientSum(std::shared_ptr<DeviceContext> context, Communicator& comm,
                                 std::int64_t elements, const GradientSumOptions& options)
    : context_(std::move(context)),
      comm_(comm),
      path_(choose_path(comm)),
      elements_(elements),
      buckets_(gradient_buckets(elements, options.bucket_elements)) {
  if (!context_) throw Error("cuda gradient sum: no device context");
  const int device = context_->device();
  CUDA_CHECK(cudaSetDevice(device));
  const std::size_t bytes = static_cast<std::size_t>(elements) * sizeof(float);
  std::shared_ptr<void> memory = device_alloc(context_, bytes, "the gradient buffer (" + where() + ")");
  void* data = memory.get();
  gradients_ = Tensor(std::move(memory), data, DType::F32, Device::CUDA, {elements}, "gradients");
  if (bytes > 0) CUDA_CHECK(cudaMemsetAsync(data, 0, bytes, context_->stream()));

  if (path_ == SumPath::HostStaged && bytes > 0) {
    void* host = nullptr;
    CUDA_CHECK(cudaMallocHost(&host, bytes));
    host_.reset(static_cast<float*>(host));
  }
  if (path_ == SumPath::Nccl) {
    int least = 0, greatest = 0;  // the greatest priority is the numerically lowest value
    CUDA_CHECK(cudaDeviceGetStreamPriorityRange(&least, &greatest));
    cudaStream_t stream = nullptr;
    CUDA_CHECK(cudaStreamCreateWithPriority(&stream, cudaStreamNonBlocking, greatest));
    sum_stream_.reset(stream);
    backward_ready_.reset(make_event());
    summed_.reset(make_event());
#ifdef SLEARN_WITH_NCCL
    nccl_ = std::make_unique<NcclCommunicator>(comm_, device, options.timeout_seconds);
#endif
  }
}

CudaGradientSum::~CudaGradientSum() {
  // A destructor reports nothing. The buffer is freed stream-ordered on the compute stream (its deleter),
  // so that stream first waits for the sum stream (an aborted communicator's kernels have stopped, so the
  // wait ends); the members then go in reverse order, the communicator first.
  if (sum_stream_ && cudaEventRecord(summed_.get(), sum_stream_.get()) == cudaSuccess)
    (void)cudaStreamWaitEvent(context_->stream(), summed_.get(), 0);
  if (host_) (void)cudaStreamSynchronize(context_->stream());  // the last copy back may still read the block
}

void CudaGradientSum::order_compute_after_sum() {
  CUDA_CHECK(cudaEventRecord(summed_.get(), sum_stream_.get()));
  CUDA_CHECK(cudaStreamWaitEvent(context_->stream(), summed_.get(), 0));
}

void CudaGradientSum::begin_step() {
  // A step abandoned before finish() (an exception in between) may have left buckets on the sum stream:
  // the zeroing must not overtake them.
  if (!finished_ && sum_stream_) order_compute_after_sum();
  if (elements_ > 0)
    CUDA_CHECK(cudaMemsetAsync(buffer(), 0, static_cast<std::size_t>(elements_) * sizeof(float), context_->stream()));
  launched_ = 0;
  bytes_ = 0;
  finished_ = false;
}

void CudaGradientSum::ready_from(std::int64_t begin) {
  if (begin < 0 || begin > elements_)
    throw Error(where() + ": ready_from(" + std::to_string(begin) + ") outside the buffer of " +
                std::to_string(elements_) + " elements");
  if (path_ == SumPath::Nccl) launch_from(begin);
}

void CudaGradientSum::launch_from(std::int64_t begin) {
  std::size_t last = launched_;
  while (last < buckets_.size() && buckets_[last].first >= begin) ++last;
  if (last == launched_) return;
  // One event for all the buckets that became ready together: it covers every kernel enqueued so far.
  CUDA_CHECK(cudaEventRecord(backward_ready_.get(), context_->stream()));
  CUDA_CHECK(cudaStreamWaitEvent(sum_stream_.get(), backward_ready_.get(), 0));
#ifdef SLEARN_WITH_NCCL
  for (; launched_ < last; ++launched_) {
    const auto [bucket_begin, bucket_end] = buckets_[launched_];
    nccl_->allreduce_sum(buffer() + bucket_begin, static_cast<std::size_t>(bucket_end - bucket_begin),
                          sum_stream_.get());
    bytes_ += (bucket_end - bucket_begin) * static_cast<std::int64_t>(sizeof(float));
  }
#endif
}

void CudaGradientSum::finish() {
  switch (path_) {
    case SumPath::Local:
      break;
    case SumPath::HostStaged:
      finish_host_staged();
      break;
    case SumPath::Nccl: {
      launch_from(0);
      CUDA_CHECK(cudaEventRecord(summed_.get(), sum_stream_.get()));
#ifdef SLEARN_WITH_NCCL
      const std::string what = "summing the gradients (" + std::to_string(buckets_.size()) + " buckets, " +
                               std::to_string(elements_) + " floats)";
      nccl_->wait(summed_.get(), what.c_str());
#endif
      CUDA_CHECK(cudaStreamWaitEvent(context_->stream(), summed_.get(), 0));
      break;
    }
  }
  finished_ = true;
}

void CudaGradientSum::finish_host_staged() {
  if (elements_ == 0) return;
  const std::size_t bytes = static_cast<std::size_t>(elements_) * sizeof(float);
  CUDA_CHECK(cudaMemcpyAsync(host_.get(), buffer(), bytes, cudaMemcpyDeviceToHost, context_->stream()));
  CUDA_CHECK(cudaStreamSynchronize(context_->stream()));
  for (const auto& [bucket_begin, bucket_end] : buckets_) {
    const auto count = static_cast<std::size_t>(bucket_end - bucket_begin);
    comm_.allreduce_sum(std::span<float>(host_.get() + bucket_begin, count));
    bytes_ += (bucket_end - bucket_begin) * static_cast<std::int64_t>(sizeof(float));
  }
  // The next finish() synchronises the stream before it writes the block again, so this copy has read it.
  CUDA_CHECK(cudaMemcpyAsync(buffer(), host_.get(), bytes, cudaMemcpyHostToDevice, context_->stream()));
}

}  // namespace

std::unique_ptr<GradientSum> make_cuda_gradient_sum(std::shared_ptr<cuda::DeviceContext> context,
                                                    Communicator& comm, std::int64_t elements,
                                                    const GradientSumOptions& options) {
  return std::make_unique<CudaGradientSum>(std::move(context), comm, elements, options);
}

}  // namespace slearn::cuda
