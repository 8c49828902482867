// Folding a LoRA adapter into its base model: W' = W + scaling * B A on every adapted projection, written as
// a Hugging Face checkpoint that loads anywhere without PEFT.
#pragma once

#include <cstdint>
#include <filesystem>

namespace slearn {

struct MergeResult {
  std::size_t tensors = 0, merged = 0, shards = 0;
  std::uint64_t bytes = 0;
};

// Writes `out_dir`: the base's tensors in their stored dtypes, adapted projections merged, split into
// shards of at most `max_shard_bytes` (with model.safetensors.index.json) when larger; config.json, the
// tokenizer and the other small files of the base directory are copied. `out_dir` must not be the base.
MergeResult merge_adapter(const std::filesystem::path& model_dir, const std::filesystem::path& adapter_dir,
                          const std::filesystem::path& out_dir, std::uint64_t max_shard_bytes = 5'000'000'000ull);

}  // namespace slearn
