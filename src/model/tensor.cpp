#include "slearn/tensor.hpp"

#include <cstdlib>
#include <cstring>
#include <numeric>
#include <sstream>

#include "slearn/error.hpp"

namespace slearn {

Tensor::Tensor(std::shared_ptr<void> owner, void* data, DType dtype, Device device,
               std::vector<std::int64_t> shape, std::string name)
    : owner_(std::move(owner)), data_(data), dtype_(dtype), device_(device), shape_(std::move(shape)),
      name_(std::move(name)) {}

namespace {

Tensor host_tensor(std::vector<std::int64_t> shape, std::string name, DType dtype) {
  std::int64_t count = 1;
  for (auto extent : shape) {
    if (extent < 0) throw Error("tensor " + name + ": negative extent");
    count *= extent;
  }
  // Round up to the alignment: aligned_alloc requires a size that is a multiple of it.
  std::size_t bytes = (static_cast<std::size_t>(count) * dtype_size(dtype) + 63) / 64 * 64;
  if (bytes == 0) bytes = 64;
  void* memory = std::aligned_alloc(64, bytes);
  if (memory == nullptr) throw Error("tensor " + name + ": out of memory allocating " + std::to_string(bytes) + " bytes");
  std::memset(memory, 0, bytes);
  std::shared_ptr<void> owner(memory, [](void* p) { std::free(p); });
  return Tensor(owner, memory, dtype, Device::CPU, std::move(shape), std::move(name));
}

}  // namespace

Tensor Tensor::host_f32(std::vector<std::int64_t> shape, std::string name) {
  return host_tensor(std::move(shape), std::move(name), DType::F32);
}

Tensor Tensor::host_bf16(std::vector<std::int64_t> shape, std::string name) {
  return host_tensor(std::move(shape), std::move(name), DType::BF16);
}

std::int64_t Tensor::numel() const {
  return std::accumulate(shape_.begin(), shape_.end(), std::int64_t{1}, std::multiplies<>());
}

float* Tensor::f32() {
  if (dtype_ != DType::F32 || device_ != Device::CPU) throw Error("tensor " + name_ + " is not fp32 host memory");
  return static_cast<float*>(data_);
}

const float* Tensor::f32() const { return const_cast<Tensor*>(this)->f32(); }

std::uint16_t* Tensor::bf16() {
  if (dtype_ != DType::BF16 || device_ != Device::CPU) throw Error("tensor " + name_ + " is not bf16 host memory");
  return static_cast<std::uint16_t*>(data_);
}

const std::uint16_t* Tensor::bf16() const { return const_cast<Tensor*>(this)->bf16(); }

Tensor Tensor::rows(std::int64_t count) const {
  if (shape_.empty() || count < 0 || count > shape_[0])
    throw Error("tensor " + name_ + ": cannot take " + std::to_string(count) + " rows of " + shape_string());
  Tensor view = *this;
  view.shape_[0] = count;
  return view;
}

Tensor Tensor::slice_rows(std::int64_t first, std::int64_t count, std::string name) const {
  if (shape_.empty() || first < 0 || count < 0 || first + count > shape_[0])
    throw Error("tensor " + name_ + ": cannot take rows [" + std::to_string(first) + ", " +
                std::to_string(first + count) + ") of " + shape_string());
  Tensor view = *this;
  view.shape_[0] = count;
  view.name_ = std::move(name);
  const std::int64_t row = shape_[0] == 0 ? 0 : numel() / shape_[0];
  view.data_ = static_cast<char*>(data_) + static_cast<std::size_t>(first * row) * dtype_size(dtype_);
  return view;
}

Tensor Tensor::reshaped(std::vector<std::int64_t> shape) const {
  Tensor view = *this;
  view.shape_ = std::move(shape);
  if (view.numel() != numel())
    throw Error("tensor " + name_ + ": cannot reshape " + shape_string() + " to " + view.shape_string());
  return view;
}

std::string Tensor::shape_string() const {
  std::ostringstream out;
  out << '[';
  for (std::size_t i = 0; i < shape_.size(); ++i) out << (i ? ", " : "") << shape_[i];
  out << ']';
  return out.str();
}

}  // namespace slearn
