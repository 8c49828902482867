// Device memory, the backend's stream and the host-to-device staging of the CUDA backend.
//
// Everything runs on one non-blocking stream of the backend (never the legacy default stream, which
// would serialise against every other library's work). Memory comes from the device's stream-ordered pool
// (cudaMallocAsync / cudaFreeAsync on that stream), with the pool's release threshold raised so freed
// blocks stay in the pool: allocating and freeing neither call the driver nor synchronise the device (a
// plain cudaFree does both), and a block freed while a queued kernel still reads it is reused only by work
// queued after that kernel. Tensors keep the context (and so the stream) alive through their deleters.
//
// Host data reaches the device through a ring of pinned staging blocks: a copy from pinned memory is a
// true asynchronous DMA, and a block is reused only after the event recorded behind its last copy has
// completed. While a step is being recorded (a CUDA graph capture) nothing may allocate or stage: those
// calls throw, which is how a recorded step proves that it reads only inputs bound before it.
#pragma once

#include <cuda_runtime_api.h>

#include <cstddef>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

namespace slearn::cuda {

class DeviceContext {
 public:
  explicit DeviceContext(int device);
  ~DeviceContext();
  DeviceContext(const DeviceContext&) = delete;
  DeviceContext& operator=(const DeviceContext&) = delete;

  cudaStream_t stream() const { return stream_; }
  int device() const { return device_; }
  // True while the stream is being captured into a graph.
  bool capturing() const;
  // Throws slearn::Error naming `what` when called during a capture.
  void refuse_during_capture(const std::string& what) const;

 private:
  int device_ = 0;
  cudaStream_t stream_ = nullptr;
};

// Stream-ordered device memory of at least `bytes` (256 at least), freed stream-ordered when the last
// owner lets go. Throws slearn::Error naming `what` when the device is out of memory.
std::shared_ptr<void> device_alloc(const std::shared_ptr<DeviceContext>& context, std::size_t bytes,
                                   const std::string& what);

// Growable scratch memory: growing frees the old block stream-ordered (work already queued keeps it).
class DeviceBuffer {
 public:
  void* get(const std::shared_ptr<DeviceContext>& context, std::size_t bytes, const char* what);
  const void* address() const { return memory_.get(); }

 private:
  std::shared_ptr<void> memory_;
  std::size_t size_ = 0;
};

// A ring of pinned host blocks for host-to-device copies.
class PinnedStaging {
 public:
  explicit PinnedStaging(std::shared_ptr<DeviceContext> context) : context_(std::move(context)) {}
  ~PinnedStaging();
  PinnedStaging(const PinnedStaging&) = delete;
  PinnedStaging& operator=(const PinnedStaging&) = delete;
  // Copies `bytes` from `host` to `device` on the stream through the next pinned block.
  void copy_to_device(void* device, const void* host, std::size_t bytes);

 private:
  struct Block {
    void* host = nullptr;
    std::size_t size = 0;
    cudaEvent_t done = nullptr;  // recorded after the block's last copy
  };
  static constexpr std::size_t kBlocks = 4;
  std::shared_ptr<DeviceContext> context_;
  Block blocks_[kBlocks];
  std::size_t next_ = 0;
};

// Packs several host arrays into one host block (16-byte aligned pieces) for one copy.
class HostPack {
 public:
  template <class T>
  std::size_t add(const T* data, std::size_t count) {
    const std::size_t offset = (bytes_.size() + 15) / 16 * 16;
    bytes_.resize(offset + count * sizeof(T));
    if (count > 0) std::memcpy(bytes_.data() + offset, data, count * sizeof(T));
    return offset;
  }
  template <class T>
  std::size_t add(const std::vector<T>& values) { return add(values.data(), values.size()); }
  std::size_t size() const { return bytes_.size(); }
  const char* data() const { return bytes_.data(); }
  void clear() { bytes_.clear(); }

 private:
  std::vector<char> bytes_;
};

}  // namespace slearn::cuda
