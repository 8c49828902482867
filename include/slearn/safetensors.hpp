// safetensors files: read through mmap and validated as the reference implementation validates them;
// written for adapters, merged checkpoints and test fixtures.
#pragma once

#include <cstdint>
#include <filesystem>
#include <map>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "slearn/dtype.hpp"

namespace slearn {

struct TensorInfo {
  std::string name;
  DType dtype;
  std::vector<std::int64_t> shape;
  std::uint64_t begin = 0;  // byte offsets relative to the start of the data section
  std::uint64_t end = 0;

  std::int64_t numel() const;
};

// One .safetensors file, mapped read-only. Opening validates: the 8-byte header length is within the file
// (and below 100 MB), the header is a JSON object, every entry has a known dtype, a shape and offsets, the
// byte count equals the product of the shape times the dtype size, the offsets of all tensors sorted by begin
// are contiguous from 0 with no gap or overlap, and the last tensor ends exactly at the end of the file.
// Every failure throws InputError naming the file (and the tensor when one is at fault).
class SafetensorsFile {
 public:
  static std::shared_ptr<const SafetensorsFile> open(const std::filesystem::path& path);
  ~SafetensorsFile();
  SafetensorsFile(const SafetensorsFile&) = delete;
  SafetensorsFile& operator=(const SafetensorsFile&) = delete;

  const std::filesystem::path& path() const { return path_; }
  const std::vector<TensorInfo>& tensors() const { return tensors_; }
  const TensorInfo* find(const std::string& name) const;  // nullptr when absent
  std::span<const std::byte> bytes(const TensorInfo& info) const;
  const std::map<std::string, std::string>& metadata() const { return metadata_; }

 private:
  SafetensorsFile() = default;
  std::filesystem::path path_;
  std::vector<TensorInfo> tensors_;
  std::map<std::string, std::size_t> index_;
  std::map<std::string, std::string> metadata_;
  const std::byte* mapping_ = nullptr;
  std::size_t mapping_size_ = 0;
  const std::byte* data_ = nullptr;  // start of the data section
};

// The weights of a model directory: `model.safetensors`, or `model.safetensors.index.json` and its shards
// (a shard the index names but that is missing is an error naming both files).
class WeightStore {
 public:
  static WeightStore open(const std::filesystem::path& model_dir);

  bool contains(const std::string& name) const;
  const TensorInfo& info(const std::string& name) const;  // throws InputError naming the tensor when absent
  std::vector<std::string> names() const;                  // sorted
  // Checks that the tensor exists, has a floating-point dtype and the shape `expected_shape`, without reading
  // it: a mismatch throws InputError naming the file, the tensor, the expected and the actual shape.
  void check_f32(const std::string& name, const std::vector<std::int64_t>& expected_shape) const;
  // Copies a tensor into `out` as fp32 after check_f32.
  void read_f32(const std::string& name, const std::vector<std::int64_t>& expected_shape, float* out) const;
  // Tensor parallelism: each rank reads only its slice of a weight, so that its resident weights are about
  // 1/T of the model. Both check_f32 first, then the range (InputError naming the file, the tensor, the range
  // and the extent), and convert from the stored dtype reading only the slice's bytes of the mapping.
  //
  // Rows [first_row, first_row + rows) along axis 0 of a tensor of any rank >= 1 (a column-parallel weight or
  // bias, a vocabulary-parallel embedding): one contiguous run, so `out` holds rows * (the product of the
  // other dimensions) floats.
  void read_rows_f32(const std::string& name, const std::vector<std::int64_t>& expected_shape,
                     std::int64_t first_row, std::int64_t rows, float* out) const;
  // Columns [first_column, first_column + columns) of every row of a 2-D [rows, cols] tensor (a row-parallel
  // weight: o_proj, down_proj): one run per row, strided by cols; `out` is [rows, columns], row-major.
  void read_columns_f32(const std::string& name, const std::vector<std::int64_t>& expected_shape,
                        std::int64_t first_column, std::int64_t columns, float* out) const;
  std::filesystem::path file_of(const std::string& name) const;
  const std::filesystem::path& model_dir() const { return model_dir_; }

 private:
  std::filesystem::path model_dir_;  // for error messages
  std::map<std::string, std::shared_ptr<const SafetensorsFile>> owner_;  // tensor name -> file
};

// The part of an extent (rows, columns, heads, a vocabulary) that rank `index` of `parts` holds when it is split
// evenly: [index * extent / parts, (index + 1) * extent / parts). Uneven splits are refused rather than padded
// (InputError naming the extent and the parts), so that every rank's slices have the same shapes; parts < 1
// or an index outside [0, parts) is a caller's bug (Error).
struct Slice {
  std::int64_t first = 0, count = 0;
};
Slice even_slice(std::int64_t extent, int parts, int index);

// A tensor to write: fp32 data converted to `dtype` on the way out (F32, F16 or BF16).
struct TensorToWrite {
  std::string name;
  std::vector<std::int64_t> shape;
  DType dtype = DType::F32;
  std::span<const float> values;
};

// Writes tensors in name order, to a temporary file that is flushed and renamed over `path`.
void write_safetensors(const std::filesystem::path& path, const std::vector<TensorToWrite>& tensors,
                       const std::map<std::string, std::string>& metadata = {});

}  // namespace slearn
