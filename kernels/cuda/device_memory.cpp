// See device_memory.hpp for the design.
#include "cuda/device_memory.hpp"

#include <algorithm>
#include <cstdint>
#include <limits>

#include "cuda/cuda_check.hpp"
#include "slearn/error.hpp"

namespace slearn::cuda {

DeviceContext::DeviceContext(int device) : device_(device) {
  CUDA_CHECK(cudaSetDevice(device));
  CUDA_CHECK(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking));
  // Keep freed blocks in the pool instead of returning them to the driver at every synchronisation.
  cudaMemPool_t pool = nullptr;
  CUDA_CHECK(cudaDeviceGetDefaultMemPool(&pool, device));
  std::uint64_t threshold = std::numeric_limits<std::uint64_t>::max();
  CUDA_CHECK(cudaMemPoolSetAttribute(pool, cudaMemPoolAttrReleaseThreshold, &threshold));
}

DeviceContext::~DeviceContext() {
  cudaStreamSynchronize(stream_);  // destructor: nothing to report to
  cudaStreamDestroy(stream_);
}

bool DeviceContext::capturing() const {
  cudaStreamCaptureStatus status = cudaStreamCaptureStatusNone;
  CUDA_CHECK(cudaStreamIsCapturing(stream_, &status));
  return status != cudaStreamCaptureStatusNone;
}

void DeviceContext::refuse_during_capture(const std::string& what) const {
  if (capturing())
    throw Error("cuda backend: " + what +
                " inside a recorded step (a CUDA graph capture may only read inputs bound before it)");
}

std::shared_ptr<void> device_alloc(const std::shared_ptr<DeviceContext>& context, std::size_t bytes,
                                   const std::string& what) {
  context->refuse_during_capture("allocating " + what);
  void* memory = nullptr;
  const cudaError_t status = cudaMallocAsync(&memory, std::max<std::size_t>(bytes, 256), context->stream());
  if (status != cudaSuccess) {
    (void)cudaGetLastError();
    std::size_t free_bytes = 0, total_bytes = 0;
    (void)cudaMemGetInfo(&free_bytes, &total_bytes);
    throw Error("cuda backend: cannot allocate " + std::to_string(bytes) + " bytes of device memory for " + what +
                " (" + std::to_string(free_bytes >> 20) + " MiB free of " + std::to_string(total_bytes >> 20) +
                " MiB): " + cudaGetErrorString(status));
  }
  std::shared_ptr<DeviceContext> keep = context;
  return std::shared_ptr<void>(memory, [keep](void* p) { cudaFreeAsync(p, keep->stream()); });
}

void* DeviceBuffer::get(const std::shared_ptr<DeviceContext>& context, std::size_t bytes, const char* what) {
  if (bytes > size_) {
    // Headroom, so that a slowly growing size does not reallocate (and re-record graphs) every time.
    const std::size_t grown = std::max(bytes, size_ + size_ / 2);
    memory_.reset();  // stream-ordered free: queued kernels still see the old block
    memory_ = device_alloc(context, grown, what);
    size_ = grown;
  }
  return memory_.get();
}

PinnedStaging::~PinnedStaging() {
  for (Block& block : blocks_) {
    if (block.done != nullptr) {
      cudaEventSynchronize(block.done);
      cudaEventDestroy(block.done);
    }
    if (block.host != nullptr) cudaFreeHost(block.host);
  }
}

void PinnedStaging::copy_to_device(void* device, const void* host, std::size_t bytes) {
  if (bytes == 0) return;
  context_->refuse_during_capture("staging host data");
  Block& block = blocks_[next_];
  next_ = (next_ + 1) % kBlocks;
  if (block.done == nullptr) CUDA_CHECK(cudaEventCreateWithFlags(&block.done, cudaEventDisableTiming));
  else CUDA_CHECK(cudaEventSynchronize(block.done));  // its previous copy has left the block
  if (block.size < bytes) {
    if (block.host != nullptr) CUDA_CHECK(cudaFreeHost(block.host));
    block.host = nullptr;
    block.size = 0;
    const std::size_t size = std::max<std::size_t>(bytes, 64 << 10);
    CUDA_CHECK(cudaMallocHost(&block.host, size));
    block.size = size;
  }
  std::memcpy(block.host, host, bytes);
  CUDA_CHECK(cudaMemcpyAsync(device, block.host, bytes, cudaMemcpyHostToDevice, context_->stream()));
  CUDA_CHECK(cudaEventRecord(block.done, context_->stream()));
}

}  // namespace slearn::cuda
