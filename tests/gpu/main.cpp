// The GPU tests' main: like gtest_main, but exits with kSkipCode when every test that ran was skipped (no
// GPU), so that ctest (SKIP_RETURN_CODE, tests/CMakeLists.txt) reports those tests as "Skipped", not
// "Passed", and the suite stays green on machines without a GPU. Under SLEARN_EXPECT_GPU=1 (a run meant for
// a GPU: the device check) a skip is a failure instead, whatever its reason: the skipped tests are listed
// and the exit status is 1.
#include <gtest/gtest.h>

#include <cstdio>

#include "gpu_test_util.hpp"

namespace {
constexpr int kSkipCode = 77;
}

int main(int argc, char** argv) {
  ::testing::InitGoogleTest(&argc, argv);
  const int status = RUN_ALL_TESTS();
  const auto& unit = *::testing::UnitTest::GetInstance();
  if (slearn::gpu_testing::gpu_expected()) {
    if (unit.skipped_test_count() == 0) return status;
    std::fprintf(stderr, "SLEARN_EXPECT_GPU=1, but %d test(s) skipped:\n", unit.skipped_test_count());
    for (int s = 0; s < unit.total_test_suite_count(); ++s) {
      const auto& suite = *unit.GetTestSuite(s);
      for (int t = 0; t < suite.total_test_count(); ++t) {
        const auto& info = *suite.GetTestInfo(t);
        if (info.result() != nullptr && info.result()->Skipped())
          std::fprintf(stderr, "  %s.%s\n", suite.name(), info.name());
      }
    }
    return 1;
  }
  if (status == 0 && unit.test_to_run_count() > 0 && unit.skipped_test_count() == unit.test_to_run_count())
    return kSkipCode;
  return status;
}
