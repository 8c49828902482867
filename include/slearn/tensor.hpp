// A tensor is a typed, shaped view of memory owned by a backend. Every tensor the model makes has a name
// ("layers.3.attn_out") so intermediates can be dumped and diffed against a reference.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "slearn/dtype.hpp"

namespace slearn {

enum class Device { CPU, CUDA };

class Tensor {
 public:
  Tensor() = default;
  // Wraps `data` (which `owner` keeps alive) as a tensor of `shape`.
  Tensor(std::shared_ptr<void> owner, void* data, DType dtype, Device device, std::vector<std::int64_t> shape,
         std::string name);

  // A zero-initialised fp32 tensor in host memory, 64-byte aligned.
  static Tensor host_f32(std::vector<std::int64_t> shape, std::string name);
  // The same in bf16 (the CPU backend's weights of a bf16 checkpoint: cpu_weights).
  static Tensor host_bf16(std::vector<std::int64_t> shape, std::string name);

  bool defined() const { return data_ != nullptr || numel() == 0; }
  DType dtype() const { return dtype_; }
  Device device() const { return device_; }
  const std::vector<std::int64_t>& shape() const { return shape_; }
  std::int64_t dim(std::size_t axis) const { return shape_.at(axis); }
  std::size_t rank() const { return shape_.size(); }
  std::int64_t numel() const;
  std::size_t bytes() const { return static_cast<std::size_t>(numel()) * dtype_size(dtype_); }
  const std::string& name() const { return name_; }

  void* data() { return data_; }
  const void* data() const { return data_; }
  float* f32();  // throws unless dtype is F32 on the host
  const float* f32() const;
  std::uint16_t* bf16();  // throws unless dtype is BF16 on the host
  const std::uint16_t* bf16() const;

  // The first `rows` rows (along axis 0) of this tensor, sharing its memory.
  Tensor rows(std::int64_t rows) const;
  // Rows [first, first + count) along axis 0, sharing this tensor's memory (a contiguous block).
  Tensor slice_rows(std::int64_t first, std::int64_t count, std::string name) const;
  // The same memory seen with another shape of the same element count.
  Tensor reshaped(std::vector<std::int64_t> shape) const;
  std::string shape_string() const;  // "[4, 64]"

 private:
  std::shared_ptr<void> owner_;
  void* data_ = nullptr;
  DType dtype_ = DType::F32;
  Device device_ = Device::CPU;
  std::vector<std::int64_t> shape_;
  std::string name_;
};

}  // namespace slearn
