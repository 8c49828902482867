#include "slearn/threads.hpp"

#include <sched.h>
#include <unistd.h>

#include <cblas.h>
#include <omp.h>

#include <algorithm>
#include <charconv>
#include <cstdlib>
#include <string_view>

#include "slearn/error.hpp"

namespace slearn {
namespace {

int env_int(const char* name) {
  const char* value = std::getenv(name);
  if (value == nullptr) return 0;
  int parsed = 0;
  std::string_view text(value);
  auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), parsed);
  return ec == std::errc() ? parsed : 0;
}

}  // namespace

std::string ThreadPlan::describe() const {
  return std::to_string(threads) + " threads (" + std::to_string(cores_available) + " cores available, " +
         std::to_string(ranks_on_node) + " rank(s) on this node" + (requested ? ", set by --threads)" : ")");
}

ThreadPlan plan_threads(std::optional<int> requested_threads) {
  ThreadPlan plan;
  cpu_set_t mask;
  CPU_ZERO(&mask);
  plan.cores_available = sched_getaffinity(0, sizeof mask, &mask) == 0 ? CPU_COUNT(&mask) : 1;
  for (const char* name : {"OMPI_COMM_WORLD_LOCAL_SIZE", "MPI_LOCALNRANKS", "SLURM_NTASKS_PER_NODE"}) {
    if (int ranks = env_int(name); ranks > 0) {
      plan.ranks_on_node = ranks;
      break;
    }
  }
  if (requested_threads) {
    if (*requested_threads <= 0) throw InputError("--threads must be at least 1");
    plan.threads = *requested_threads;
    plan.requested = true;
    return plan;
  }
  const long machine_cores = sysconf(_SC_NPROCESSORS_ONLN);
  // A rank bound to its own cores already sees only its share; an unbound rank sees the whole node and
  // takes its fraction of it.
  const bool unbound = machine_cores > 0 && plan.cores_available >= machine_cores;
  plan.threads = unbound ? std::max(1, plan.cores_available / plan.ranks_on_node) : plan.cores_available;
  return plan;
}

void apply_thread_plan(const ThreadPlan& plan) {
  omp_set_num_threads(plan.threads);
  openblas_set_num_threads(plan.threads);
}

}  // namespace slearn
