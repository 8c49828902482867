// The thread plan: a rank's share of the cores when the launcher put several ranks on one node.
#include <gtest/gtest.h>

#include <sched.h>
#include <unistd.h>

#include <cstdlib>

#include "slearn/error.hpp"
#include "slearn/threads.hpp"

namespace {

class ThreadPlanTest : public ::testing::Test {
 protected:
  void SetUp() override {
    for (const char* name : kVars) {
      const char* v = std::getenv(name);
      saved_.emplace_back(name, v ? std::optional<std::string>(v) : std::nullopt);
      unsetenv(name);
    }
  }
  void TearDown() override {
    for (auto& [name, value] : saved_) {
      if (value) setenv(name, value->c_str(), 1);
      else unsetenv(name);
    }
  }
  static constexpr const char* kVars[] = {"OMPI_COMM_WORLD_LOCAL_SIZE", "MPI_LOCALNRANKS", "SLURM_NTASKS_PER_NODE"};
  std::vector<std::pair<const char*, std::optional<std::string>>> saved_;
};

int affinity_cores() {
  cpu_set_t mask;
  CPU_ZERO(&mask);
  sched_getaffinity(0, sizeof mask, &mask);
  return CPU_COUNT(&mask);
}

TEST_F(ThreadPlanTest, AloneTakesEveryCoreInTheMask) {
  const auto plan = slearn::plan_threads(std::nullopt);
  EXPECT_EQ(plan.cores_available, affinity_cores());
  EXPECT_EQ(plan.threads, affinity_cores());
  EXPECT_EQ(plan.ranks_on_node, 1);
}

TEST_F(ThreadPlanTest, UnboundRanksShareTheNode) {
  if (affinity_cores() < sysconf(_SC_NPROCESSORS_ONLN)) GTEST_SKIP() << "this process is bound to a subset of cores";
  setenv("OMPI_COMM_WORLD_LOCAL_SIZE", "2", 1);
  auto plan = slearn::plan_threads(std::nullopt);
  EXPECT_EQ(plan.ranks_on_node, 2);
  EXPECT_EQ(plan.threads, std::max(1, affinity_cores() / 2));
  setenv("OMPI_COMM_WORLD_LOCAL_SIZE", "64", 1);
  EXPECT_EQ(slearn::plan_threads(std::nullopt).threads, std::max(1, affinity_cores() / 64));
}

TEST_F(ThreadPlanTest, RequestedThreadsWinAndMustBePositive) {
  setenv("SLURM_NTASKS_PER_NODE", "4", 1);
  const auto plan = slearn::plan_threads(3);
  EXPECT_EQ(plan.threads, 3);
  EXPECT_TRUE(plan.requested);
  EXPECT_THROW(slearn::plan_threads(0), slearn::InputError);
}

}  // namespace
