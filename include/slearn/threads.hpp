// How many threads OpenMP and OpenBLAS use: the cores this process may run on, shared among the MPI ranks
// of the node when the launcher did not bind each rank to its own cores.
#pragma once

#include <optional>
#include <string>

namespace slearn {

struct ThreadPlan {
  int threads = 1;
  int cores_available = 1;  // in this process's CPU affinity mask
  int ranks_on_node = 1;    // from the launcher: OMPI_COMM_WORLD_LOCAL_SIZE, MPI_LOCALNRANKS or SLURM_NTASKS_PER_NODE
  bool requested = false;   // threads came from the user (--threads), not from the plan
  std::string describe() const;
};

ThreadPlan plan_threads(std::optional<int> requested_threads);
// Sets OpenMP's and OpenBLAS's thread counts.
void apply_thread_plan(const ThreadPlan& plan);

}  // namespace slearn
