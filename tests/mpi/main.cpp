// main() of slearn_mpi_tests: MPI for the whole run, GoogleTest output from rank 0 only (other ranks print
// just their own failures, tagged with the rank), and one exit code on every rank: 1 if any rank failed.
#include <gtest/gtest.h>

#include <cstdio>
#include <exception>
#include <memory>
#include <string>

#include "mpi_test_env.hpp"
#include "slearn/communicator.hpp"

namespace slearn::mpi_tests {
namespace {

std::unique_ptr<Communicator> g_world;

// On ranks other than 0: a line for each failed assertion, so a failure on one rank alone is not lost.
// (The test's name is kept from OnTestStart: UnitTest::current_test_info() would take the lock that
// GoogleTest holds while reporting a result.)
class FailuresOnly : public ::testing::EmptyTestEventListener {
 public:
  explicit FailuresOnly(int rank) : rank_(rank) {}
  void OnTestStart(const ::testing::TestInfo& test) override {
    test_ = std::string(test.test_suite_name()) + "." + test.name();
  }
  void OnTestEnd(const ::testing::TestInfo&) override { test_ = "(outside a test)"; }
  void OnTestPartResult(const ::testing::TestPartResult& result) override {
    if (!result.failed()) return;
    std::fprintf(stderr, "[rank %d] %s: %s:%d: failure\n%s\n", rank_, test_.c_str(),
                 result.file_name() ? result.file_name() : "?", result.line_number(), result.message());
    std::fflush(stderr);
  }

 private:
  int rank_;
  std::string test_ = "(outside a test)";
};

}  // namespace

Communicator& world() { return *g_world; }

}  // namespace slearn::mpi_tests

int main(int argc, char** argv) {
  try {
    slearn::MpiSession session(&argc, &argv);
    ::testing::InitGoogleTest(&argc, argv);
    slearn::mpi_tests::g_world = slearn::make_mpi_communicator();
    slearn::Communicator& world = *slearn::mpi_tests::g_world;
    if (world.rank() != 0) {
      ::testing::TestEventListeners& listeners = ::testing::UnitTest::GetInstance()->listeners();
      delete listeners.Release(listeners.default_result_printer());
      delete listeners.Release(listeners.default_xml_generator());
      listeners.Append(new slearn::mpi_tests::FailuresOnly(world.rank()));
    }
    const int result = RUN_ALL_TESTS();
    const bool failed = world.any(result != 0);
    if (world.rank() == 0 && failed && result == 0)
      std::fprintf(stderr, "slearn_mpi_tests: tests failed on another rank (see the [rank N] lines)\n");
    slearn::mpi_tests::g_world.reset();
    return failed ? 1 : 0;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "slearn_mpi_tests: %s\n", e.what());
    return 1;
  }
}
