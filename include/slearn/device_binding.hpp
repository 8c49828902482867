// Binding each rank to a GPU by its rank on the node (docs/operations.md, "Binding ranks to GPUs and
// cores"). Pure functions with no CUDA dependency, compiled in every build: the environment comes in through
// a getenv-like callable and the number of visible devices (cudaGetDeviceCount, which already honours
// CUDA_VISIBLE_DEVICES) is an argument, so tests need neither a GPU nor the process environment.
#pragma once

#include <functional>
#include <string>

namespace slearn {

// What the launcher says about this rank's place on its node.
struct LocalRankInfo {
  int local_rank = 0;  // OMPI_COMM_WORLD_LOCAL_RANK (mpirun), else SLURM_LOCALID (srun), else 0
  int local_size = 1;  // OMPI_COMM_WORLD_LOCAL_SIZE or SLURM_NTASKS_PER_NODE (matching the rank's source);
                       // at least local_rank + 1; 1 without a launcher
  std::string source;  // the variable local_rank came from; empty without a launcher
  bool cuda_visible_devices_set = false;  // CUDA_VISIBLE_DEVICES is set and not empty
  std::string cuda_visible_devices;       // its value
};

// Returns the value of an environment variable, or nullptr when it is unset (std::getenv's contract).
using EnvLookup = std::function<const char*(const char*)>;

// Reads LocalRankInfo through `getenv`. InputError when a launcher variable is not a non-negative integer.
LocalRankInfo read_local_rank_info(const EnvLookup& getenv);
// The same from the process environment.
LocalRankInfo read_local_rank_info();

// The CUDA device (an index among the visible ones) that this rank uses:
// - local_rank when local_rank < visible_devices and the node's ranks all fit (local_size <= visible_devices);
// - 0 when exactly one device is visible and CUDA_VISIBLE_DEVICES is set: each rank was given its own GPU
//   (Slurm's --gpus-per-task=1 sets CUDA_VISIBLE_DEVICES per task);
// - otherwise InputError naming the local rank, the counts and CUDA_VISIBLE_DEVICES: more ranks on the node
//   than GPUs would oversubscribe them silently. Thrown on every rank of the node alike when local_size is
//   known. InputError too when visible_devices < 1.
int choose_local_device(const LocalRankInfo& info, int visible_devices);

}  // namespace slearn
