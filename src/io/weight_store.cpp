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

std::filesystem::path WeightStore::file_of(const std::string& name) const {
  const auto it = owner_.find(name);
  if (it == owner_.end()) missing_tensor(model_dir_, name);
  return it->second->path();
}

}  // namespace slearn
