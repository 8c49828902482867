#include "slearn/merge.hpp"

#include <cstdio>
#include <fstream>
#include <map>

#include <nlohmann/json.hpp>

#include "slearn/backend.hpp"
#include "slearn/error.hpp"
#include "slearn/lora.hpp"
#include "slearn/model_config.hpp"
#include "slearn/safetensors.hpp"
#include "util/atomic_file.hpp"

namespace slearn {

namespace fs = std::filesystem;

MergeResult merge_adapter(const fs::path& model_dir, const fs::path& adapter_dir, const fs::path& out_dir,
                          std::uint64_t max_shard_bytes) {
  std::error_code ec;
  if (fs::exists(out_dir, ec) && fs::equivalent(out_dir, model_dir, ec))
    throw InputError(out_dir.string() + ": the output directory must differ from the base model's");
  // Weight files left in it from before would be loaded beside (or instead of) the merged ones, and anything
  // else in it is not ours to overwrite: the output directory is new or empty.
  if (fs::exists(out_dir, ec) && !fs::is_directory(out_dir, ec))
    throw InputError(out_dir.string() + ": is a file; --out must be a new or empty directory");
  if (fs::is_directory(out_dir, ec) && !fs::is_empty(out_dir, ec))
    throw InputError(out_dir.string() + ": the output directory is not empty; merge writes into a new or empty "
                     "directory (old weight files there would be loaded with the merged ones)");
  const ModelConfig config = load_model_config(model_dir);
  const WeightStore store = WeightStore::open(model_dir);
  auto backend = make_cpu_backend();
  const LoraAdapter adapter = LoraAdapter::load(adapter_dir, config, *backend);

  // The adapted projection behind each checkpoint tensor name.
  std::map<std::string, const LoraPair*> adapted;
  for (std::size_t l = 0; l < adapter.layers(); ++l)
    for (std::size_t t = 0; t < kLoraTargetCount; ++t)
      if (const LoraPair* pair = adapter.find(l, static_cast<LoraTarget>(t))) {
        std::string path = lora_module_path(l, static_cast<LoraTarget>(t));
        adapted[path.substr(std::string("base_model.model.").size()) + ".weight"] = pair;
      }

  // Plan the shards in name order from the stored sizes, so the index knows their count before writing.
  std::vector<std::vector<std::string>> shards(1);
  std::uint64_t shard_bytes = 0, total = 0;
  for (const auto& name : store.names()) {
    const TensorInfo& info = store.info(name);
    const std::uint64_t bytes = info.end - info.begin;
    if (shard_bytes > 0 && shard_bytes + bytes > max_shard_bytes) {
      shards.emplace_back();
      shard_bytes = 0;
    }
    shards.back().push_back(name);
    shard_bytes += bytes;
    total += bytes;
  }

  fs::create_directories(out_dir);
  MergeResult result;
  result.shards = shards.size();
  result.bytes = total;
  nlohmann::json weight_map = nlohmann::json::object();
  for (std::size_t s = 0; s < shards.size(); ++s) {
    char file_name[64];
    if (shards.size() == 1) std::snprintf(file_name, sizeof file_name, "model.safetensors");
    else std::snprintf(file_name, sizeof file_name, "model-%05zu-of-%05zu.safetensors", s + 1, shards.size());
    std::vector<std::vector<float>> storage;
    storage.reserve(shards[s].size());
    std::vector<TensorToWrite> tensors;
    for (const auto& name : shards[s]) {
      const TensorInfo& info = store.info(name);
      std::vector<float> values(static_cast<std::size_t>(info.numel()));
      store.read_f32(name, info.shape, values.data());
      if (auto it = adapted.find(name); it != adapted.end()) {
        // W [out, in] += scaling * B [out, r] A [r, in]
        const LoraPair& pair = *it->second;
        const std::int64_t out = info.shape[0], in = info.shape[1], r = pair.a.dim(0);
        const float* a = pair.a.f32();
        const float* b = pair.b.f32();
        const float scaling = adapter.scaling();
#pragma omp parallel for schedule(static)
        for (std::int64_t o = 0; o < out; ++o)
          for (std::int64_t k = 0; k < r; ++k) {
            const float coefficient = scaling * b[o * r + k];
            for (std::int64_t i = 0; i < in; ++i) values[static_cast<std::size_t>(o * in + i)] += coefficient * a[k * in + i];
          }
        ++result.merged;
      }
      storage.push_back(std::move(values));
      const DType dtype = (info.dtype == DType::BF16 || info.dtype == DType::F16) ? info.dtype : DType::F32;
      tensors.push_back({name, info.shape, dtype, storage.back()});
      weight_map[name] = file_name;
      ++result.tensors;
    }
    write_safetensors(out_dir / file_name, tensors, {{"format", "pt"}});
  }
  if (result.merged != adapted.size()) throw Error("merge: not every adapted projection was found in the checkpoint");
  if (shards.size() > 1) {
    nlohmann::json index{{"metadata", {{"total_size", total}}}, {"weight_map", weight_map}};
    write_file_atomically(out_dir / "model.safetensors.index.json", index.dump(2) + "\n");
  }
  // The small files (config.json, the tokenizer, ...) are copied atomically too, so a kill during the merge
  // never leaves a truncated config.json or tokenizer.json that loads as if it were whole.
  for (const auto& entry : fs::directory_iterator(model_dir)) {
    const std::string name = entry.path().filename().string();
    if (!entry.is_regular_file() || name.ends_with(".safetensors") || name == "model.safetensors.index.json") continue;
    std::ifstream in(entry.path(), std::ios::binary);
    const std::string bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    if (in.bad()) throw Error(entry.path().string() + ": cannot read");
    write_file_atomically(out_dir / name, bytes);
  }
  return result;
}

}  // namespace slearn
