// The GPU tests' main: like gtest_main, but exits with kSkipCode when every test that ran was skipped (no
// GPU), so that ctest (SKIP_RETURN_CODE, tests/CMakeLists.txt) reports those tests as "Skipped", not
// "Passed", and the suite stays green on machines without a GPU.
#include <gtest/gtest.h>

namespace {
constexpr int kSkipCode = 77;
}

int main(int argc, char** argv) {
  ::testing::InitGoogleTest(&argc, argv);
  const int status = RUN_ALL_TESTS();
  const auto& unit = *::testing::UnitTest::GetInstance();
  if (status == 0 && unit.test_to_run_count() > 0 && unit.skipped_test_count() == unit.test_to_run_count())
    return kSkipCode;
  return status;
}
