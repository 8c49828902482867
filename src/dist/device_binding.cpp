// Choosing a rank's GPU by its local rank (slearn/device_binding.hpp).
#include "slearn/device_binding.hpp"

#include <charconv>
#include <cstdlib>
#include <string_view>
#include <system_error>

#include "slearn/error.hpp"

namespace slearn {
namespace {

// The variable's value as a non-negative integer, or -1 when it is unset or empty.
int env_count(const EnvLookup& getenv, const char* name) {
  const char* value = getenv(name);
  if (value == nullptr || *value == '\0') return -1;
  const std::string_view text(value);
  int parsed = -1;
  const auto [end, error] = std::from_chars(text.data(), text.data() + text.size(), parsed);
  if (error != std::errc() || end != text.data() + text.size() || parsed < 0)
    throw InputError(std::string("environment variable ") + name + "=\"" + value +
                     "\" is not a non-negative integer (set by the launcher: mpirun or srun)");
  return parsed;
}

}  // namespace

LocalRankInfo read_local_rank_info(const EnvLookup& getenv) {
  LocalRankInfo info;
  struct Source {
    const char* rank;
    const char* size;
  };
  for (const Source source : {Source{"OMPI_COMM_WORLD_LOCAL_RANK", "OMPI_COMM_WORLD_LOCAL_SIZE"},
                              Source{"SLURM_LOCALID", "SLURM_NTASKS_PER_NODE"}}) {
    const int rank = env_count(getenv, source.rank);
    if (rank < 0) continue;
    info.local_rank = rank;
    info.source = source.rank;
    const int size = env_count(getenv, source.size);
    info.local_size = size > rank ? size : rank + 1;
    break;
  }
  if (const char* visible = getenv("CUDA_VISIBLE_DEVICES"); visible != nullptr && *visible != '\0') {
    info.cuda_visible_devices_set = true;
    info.cuda_visible_devices = visible;
  }
  return info;
}

LocalRankInfo read_local_rank_info() {
  return read_local_rank_info([](const char* name) -> const char* { return std::getenv(name); });
}

int choose_local_device(const LocalRankInfo& info, int visible_devices) {
  const std::string visible_text =
      info.cuda_visible_devices_set ? "CUDA_VISIBLE_DEVICES=\"" + info.cuda_visible_devices + "\""
                                    : std::string("CUDA_VISIBLE_DEVICES unset");
  if (visible_devices < 1)
    throw InputError("no CUDA device is visible to local rank " + std::to_string(info.local_rank) + " (" +
                     visible_text + ")");
  // One GPU given to each rank (srun --gpus-per-task=1): every rank sees its own as device 0.
  if (visible_devices == 1 && info.cuda_visible_devices_set) return 0;
  if (info.local_rank < visible_devices && info.local_size <= visible_devices) return info.local_rank;
  throw InputError("local rank " + std::to_string(info.local_rank) + " of " + std::to_string(info.local_size) +
                   " on this node (from " + (info.source.empty() ? std::string("no launcher") : info.source) +
                   ") has no GPU of its own: " + std::to_string(visible_devices) + " visible (" + visible_text +
                   "); run at most one rank per GPU (e.g. -n equal to the GPU count, or srun --gpus-per-task=1)");
}

}  // namespace slearn
