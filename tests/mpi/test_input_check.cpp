// check_on_all_ranks at 1, 2 and 4 ranks: a bad input is reported by one rank (the lowest that failed) and
// every rank throws, so the job stops together; the others exit with the same code without a second line,
// unless their own failure says something else. See docs/failures.md.
#include <gtest/gtest.h>

#include <functional>
#include <string>

#include "mpi_test_env.hpp"
#include "slearn/error.hpp"
#include "slearn/input_check.hpp"

namespace slearn {
namespace {

using mpi_tests::world;

// What one rank saw: nothing, the reported error (with its text), a silent exit (with its code).
struct Outcome {
  enum Kind { Passed, Reported, Silent } kind = Passed;
  std::string message;
  int exit_code = 0;
  bool input_error = false;
};

Outcome outcome_of(const std::function<void()>& check) {
  Outcome out;
  try {
    check_on_all_ranks(world(), check);
  } catch (const ReportedByAnotherRank& e) {
    out.kind = Outcome::Silent, out.exit_code = e.exit_code();
  } catch (const InputError& e) {
    out.kind = Outcome::Reported, out.message = e.what(), out.input_error = true;
  } catch (const Error& e) {
    out.kind = Outcome::Reported, out.message = e.what();
  }
  return out;
}

TEST(CheckOnAllRanks, PassingChecksReturnEverywhere) {
  int runs = 0;
  const Outcome out = outcome_of([&] { ++runs; });
  EXPECT_EQ(out.kind, Outcome::Passed);
  EXPECT_EQ(runs, 1);
}

TEST(CheckOnAllRanks, TheSameFailureEverywhereIsReportedByRankZeroOnly) {
  const Outcome out = outcome_of([] { throw InputError("data.jsonl:3: invalid JSON"); });
  if (world().rank() == 0) {
    EXPECT_EQ(out.kind, Outcome::Reported);
    EXPECT_TRUE(out.input_error);
    EXPECT_EQ(out.message, "data.jsonl:3: invalid JSON");
  } else {
    EXPECT_EQ(out.kind, Outcome::Silent);
    EXPECT_EQ(out.exit_code, 2);
  }
}

TEST(CheckOnAllRanks, AFailureOnOneRankStopsEveryRank) {
  const int last = world().size() - 1;
  const Outcome out = outcome_of([&] {
    if (world().rank() == last) throw InputError("model/config.json: not found");
  });
  if (world().rank() == last) {
    EXPECT_EQ(out.kind, Outcome::Reported);
    EXPECT_EQ(out.message, "model/config.json: not found");
  } else {
    EXPECT_EQ(out.kind, Outcome::Silent);
    EXPECT_EQ(out.exit_code, 2);
  }
}

TEST(CheckOnAllRanks, DifferentFailuresAreEachReported) {
  const int rank = world().rank();
  const Outcome out = outcome_of([&] { throw InputError("cannot read file-" + std::to_string(rank)); });
  EXPECT_EQ(out.kind, Outcome::Reported);
  EXPECT_TRUE(out.input_error);
  EXPECT_EQ(out.message, rank == 0 ? std::string("cannot read file-0")
                                   : "rank " + std::to_string(rank) + ": cannot read file-" + std::to_string(rank));
}

TEST(CheckOnAllRanks, OtherErrorsKeepExitCodeOne) {
  const Outcome out = outcome_of([] { throw Error("disk full"); });
  if (world().rank() == 0) {
    EXPECT_EQ(out.kind, Outcome::Reported);
    EXPECT_FALSE(out.input_error);
  } else {
    EXPECT_EQ(out.kind, Outcome::Silent);
    EXPECT_EQ(out.exit_code, 1);
  }
}

}  // namespace
}  // namespace slearn
