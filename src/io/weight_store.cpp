// The weights of a model directory: one model.safetensors, or an index and its shards.
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "io/io_util.hpp"
#include "slearn/error.hpp"
#include "util/symlink_loop.hpp"
#include "slearn/safetensors.hpp"

namespace slearn {

namespace {

using nlohmann::json;
using io_detail::json_type_name;
using io_detail::shape_to_string;

constexpr const char* kSingleFile = "model.safetensors";
constexpr const char* kIndexFile = "model.safetensors.index.json";

[[noreturn]] void fail(const std::filesystem::path& path, const std::string& what) {
  throw InputError(path.string() + ": " + what);
}

json read_index(const std::filesystem::path& index_path) {
  std::ifstream in(index_path, std::ios::binary);
  if (!in) fail(index_path, "cannot open");
  std::ostringstream text;
  text << in.rdbuf();
  if (in.bad()) fail(index_path, "cannot read");
  try {
    return json::parse(text.str());
  } catch (const json::exception& e) {
    fail(index_path, "not valid JSON (" + io_detail::json_error_text(e) + ")");
  }
}

// A shard must be a plain relative path inside the model directory.
bool is_safe_shard_name(const std::string& shard) {
  if (shard.empty()) return false;
  const std::filesystem::path p(shard);
  if (p.is_absolute()) return false;
  for (const auto& part : p) {
    if (part == "..") return false;
  }
  return true;
}

}  // namespace

WeightStore WeightStore::open(const std::filesystem::path& model_dir) {
  WeightStore store;
  store.model_dir_ = model_dir;
  std::error_code ec;
  if (!std::filesystem::is_directory(model_dir, ec)) {
    refuse_symlink_loop(model_dir, ec, "the model directory");
    fail(model_dir, std::filesystem::exists(model_dir, ec) ? "not a directory" : "model directory does not exist");
  }

  const auto single_path = model_dir / kSingleFile;
  if (std::filesystem::exists(single_path, ec)) {
    const auto file = SafetensorsFile::open(single_path);
    for (const auto& info : file->tensors()) store.owner_.emplace(info.name, file);
    return store;
  }
  refuse_symlink_loop(single_path, ec, kSingleFile);

  const auto index_path = model_dir / kIndexFile;
  if (!std::filesystem::exists(index_path, ec)) {
    refuse_symlink_loop(index_path, ec, kIndexFile);
    fail(model_dir, std::string("no weights: the directory has neither ") + kSingleFile + " nor " + kIndexFile);
  }
  const json index = read_index(index_path);
  if (!index.is_object()) fail(index_path, "expected a JSON object, found " + json_type_name(index));
  const auto map_it = index.find("weight_map");
  if (map_it == index.end()) fail(index_path, "missing \"weight_map\"");
  if (!map_it->is_object()) {
    fail(index_path, "\"weight_map\" must be an object (tensor name -> shard file), found " + json_type_name(*map_it));
  }

  std::map<std::string, std::shared_ptr<const SafetensorsFile>> shards;  // each shard opened once
  for (const auto& [tensor, shard_value] : map_it->items()) {
    if (!shard_value.is_string()) {
      fail(index_path, "weight_map entry for tensor \"" + tensor + "\" must be a string (shard file), found " +
                           json_type_name(shard_value));
    }
    const auto& shard = shard_value.get_ref<const std::string&>();
    auto shard_it = shards.find(shard);
    if (shard_it == shards.end()) {
      if (!is_safe_shard_name(shard)) {
        fail(index_path, "shard \"" + shard + "\" (for tensor \"" + tensor +
                             "\") must be a relative path inside the model directory");
      }
      const auto shard_path = model_dir / shard;
      if (!std::filesystem::exists(shard_path, ec)) {
        refuse_symlink_loop(shard_path, ec, "a shard of the weights");
        fail(index_path, "names shard \"" + shard + "\" (for tensor \"" + tensor + "\"), but " +
                             shard_path.string() + " does not exist");
      }
      shard_it = shards.emplace(shard, SafetensorsFile::open(shard_path)).first;
    }
    if (shard_it->second->find(tensor) == nullptr) {
      fail(index_path, "maps tensor \"" + tensor + "\" to shard \"" + shard + "\", but " +
                           shard_it->second->path().string() + " has no such tensor");
    }
    store.owner_.emplace(tensor, shard_it->second);
  }
  return store;
}

bool WeightStore::contains(const std::string& name) const { return owner_.count(name) != 0; }

namespace {

// A tensor asked for (by the architecture config.json describes, or by an adapter) that the weights do not
// hold: names the model directory, the tensor and where it was looked for.
[[noreturn]] void missing_tensor(const std::filesystem::path& model_dir, const std::string& name) {
  std::error_code ec;
  const bool single = std::filesystem::exists(model_dir / kSingleFile, ec);
  throw InputError(model_dir.string() + ": tensor \"" + name + "\" is missing from the weights (" +
                   (model_dir / (single ? kSingleFile : kIndexFile)).string() + (single ? "" : " and its shards") +
                   ")");
}

}  // namespace

const TensorInfo& WeightStore::info(const std::string& name) const {
  const auto it = owner_.find(name);
  if (it == owner_.end()) missing_tensor(model_dir_, name);
  return *it->second->find(name);
}

std::vector<std::string> WeightStore::names() const {
  std::vector<std::string> result;
  result.reserve(owner_.size());
  for (const auto& [name, file] : owner_) result.push_back(name);
  return result;
}

void WeightStore::check_f32(const std::string& name, const std::vector<std::int64_t>& expected_shape) const {
  const TensorInfo& tensor = info(name);
  const auto& file = *owner_.find(name)->second;
  if (tensor.shape != expected_shape) {
    fail(file.path(), "tensor \"" + name + "\" has shape " + shape_to_string(tensor.shape) + ", expected " +
                          shape_to_string(expected_shape));
  }
  if (tensor.dtype != DType::F32 && tensor.dtype != DType::F16 && tensor.dtype != DType::BF16) {
    fail(file.path(), "tensor \"" + name + "\" has dtype " + std::string(dtype_name(tensor.dtype)) +
                          ", expected a floating-point type (F32, F16 or BF16)");
  }
}

void WeightStore::read_f32(const std::string& name, const std::vector<std::int64_t>& expected_shape,
                           float* out) const {
  check_f32(name, expected_shape);
  const TensorInfo& tensor = info(name);
  const auto& file = *owner_.find(name)->second;
  const auto bytes = file.bytes(tensor);
  convert_to_f32(tensor.dtype, bytes.data(), static_cast<std::size_t>(tensor.numel()), out);
}

namespace {

// "[4, 8)"; a range whose end would overflow int64 is spelled by its first index and count instead.
// (Appended piece by piece: GCC 12 warns falsely (-Wrestrict) on "literal" + std::to_string(...).)
std::string range_text(std::int64_t first, std::int64_t count) {
  std::string text = "[";
  text += std::to_string(first);
  text += ", ";
  std::int64_t end = 0;
  if (__builtin_add_overflow(first, count, &end)) {
    text += std::to_string(first) + " + " + std::to_string(count);
  } else {
    text += std::to_string(end);
  }
  text += ")";
  return text;
}

// [first, first + count) lies within [0, extent), written so that no sum can overflow.
bool range_within(std::int64_t first, std::int64_t count, std::int64_t extent) {
  return first >= 0 && count >= 0 && first <= extent && count <= extent - first;
}

// Below this many elements a strided read runs on the calling thread (as convert_to_f32 does for one run).
constexpr std::int64_t kParallelColumnsThreshold = std::int64_t{1} << 20;

}  // namespace

void WeightStore::read_rows_f32(const std::string& name, const std::vector<std::int64_t>& expected_shape,
                                std::int64_t first_row, std::int64_t rows, float* out) const {
  check_f32(name, expected_shape);
  const TensorInfo& tensor = info(name);
  const auto& file = *owner_.find(name)->second;
  if (tensor.shape.empty()) {
    fail(file.path(), "tensor \"" + name + "\" is a scalar (shape []): it has no rows to slice");
  }
  const std::int64_t extent = tensor.shape[0];
  if (!range_within(first_row, rows, extent)) {
    fail(file.path(), "tensor \"" + name + "\": rows " + range_text(first_row, rows) + " are outside its " +
                          std::to_string(extent) + " rows [0, " + std::to_string(extent) + ") (shape " +
                          shape_to_string(tensor.shape) + ")");
  }
  // Rows are contiguous in the row-major layout, so the slice is one run of the mapping: only its pages are
  // touched, and convert_to_f32 spreads a large run over the threads as read_f32 does. The byte offsets fit:
  // opening the file checked that the whole tensor's byte count does.
  std::int64_t row_size = 1;
  for (std::size_t axis = 1; axis < tensor.shape.size(); ++axis) row_size *= tensor.shape[axis];
  const std::size_t element_size = dtype_size(tensor.dtype);
  const auto bytes = file.bytes(tensor);
  const std::byte* first = bytes.data() + static_cast<std::size_t>(first_row * row_size) * element_size;
  convert_to_f32(tensor.dtype, first, static_cast<std::size_t>(rows * row_size), out);
}

void WeightStore::read_columns_f32(const std::string& name, const std::vector<std::int64_t>& expected_shape,
                                   std::int64_t first_column, std::int64_t columns, float* out) const {
  check_f32(name, expected_shape);
  const TensorInfo& tensor = info(name);
  const auto& file = *owner_.find(name)->second;
  if (tensor.shape.size() != 2) {
    fail(file.path(), "tensor \"" + name + "\" has shape " + shape_to_string(tensor.shape) +
                          ": a column slice needs a 2-D [rows, columns] tensor");
  }
  const std::int64_t rows = tensor.shape[0];
  const std::int64_t extent = tensor.shape[1];
  if (!range_within(first_column, columns, extent)) {
    fail(file.path(), "tensor \"" + name + "\": columns " + range_text(first_column, columns) +
                          " are outside its " + std::to_string(extent) + " columns [0, " + std::to_string(extent) +
                          ") (shape " + shape_to_string(tensor.shape) + ")");
  }
  // One run of `columns` elements per row, `extent` elements apart: converting run by run reads only the
  // slice's bytes (no full-tensor temporary; the page cache still faults in whole pages, so rows shorter than
  // a few pages are read from disk whole). Rows are spread over the threads when the slice is large, each
  // run converted on its own thread; check_f32 has refused every dtype convert_to_f32 could throw for, so
  // nothing throws inside the parallel loop.
  const std::size_t element_size = dtype_size(tensor.dtype);
  const std::byte* data = file.bytes(tensor).data();
  const DType dtype = tensor.dtype;
  const auto run = static_cast<std::size_t>(columns);
#pragma omp parallel for schedule(static) if (rows * columns >= kParallelColumnsThreshold)
  for (std::int64_t row = 0; row < rows; ++row) {
    const std::byte* source = data + static_cast<std::size_t>(row * extent + first_column) * element_size;
    convert_to_f32(dtype, source, run, out + row * columns);
  }
}

Slice even_slice(std::int64_t extent, int parts, int index) {
  if (parts < 1 || index < 0 || index >= parts) {
    throw Error("even_slice: part " + std::to_string(index) + " of " + std::to_string(parts) +
                " parts (expected parts >= 1 and 0 <= index < parts)");
  }
  if (extent < 0 || extent % parts != 0) {
    throw InputError("cannot split an extent of " + std::to_string(extent) + " evenly into " +
                     std::to_string(parts) + " parts (" + std::to_string(extent) + " is not a multiple of " +
                     std::to_string(parts) + ")");
  }
  const std::int64_t count = extent / parts;
  return {index * count, count};
}

std::filesystem::path WeightStore::file_of(const std::string& name) const {
  const auto it = owner_.find(name);
  if (it == owner_.end()) missing_tensor(model_dir_, name);
  return it->second->path();
}

}  // namespace slearn
