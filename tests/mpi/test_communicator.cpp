// The MPI communicator at any number of ranks (ctest runs this at 1, 2 and 4): rank and size, sums of each
// type, gathers with a different count on each rank, broadcasts of long UTF-8 text, any(), and MPI errors
// turned into slearn::Error. The same checks run on the single-process communicator, which must behave as
// MPI does at size 1.
#include <gtest/gtest.h>
#include <mpi.h>

#include <cstdint>
#include <cstdlib>
#include <numeric>
#include <string>
#include <vector>

#include "dist/mpi_check.hpp"
#include "mpi_test_env.hpp"
#include "slearn/communicator.hpp"
#include "slearn/error.hpp"

namespace slearn {
namespace {

using mpi_tests::world;

// A long string with one- to four-byte UTF-8 characters, different for each seed.
std::string utf8_text(int seed, std::size_t repeats) {
  std::string text;
  for (std::size_t i = 0; i < repeats; ++i)
    text += "question " + std::to_string(seed) + "." + std::to_string(i) +
            ": 自学习 — naïve Größe ✓ 🚀 \xF0\x9F\xA7\xA0 \"quoted\"\n";
  return text;
}

// ---- checks that hold for any communicator, from its own rank and size ----

void check_sums(Communicator& comm) {
  const int rank = comm.rank();
  const int size = comm.size();
  const std::int64_t ranks_sum = static_cast<std::int64_t>(size) * (size - 1) / 2;

  std::vector<float> floats(1000);
  for (std::size_t i = 0; i < floats.size(); ++i) floats[i] = static_cast<float>(rank) + 0.5f * static_cast<float>(i);
  comm.allreduce_sum(floats);
  std::vector<double> doubles = {0.25 * rank, -1.0, 1e-3 * (rank + 1), 1e12};
  comm.allreduce_sum(doubles);
  // Beyond 32 bits, and negative.
  std::vector<std::int64_t> ints = {(std::int64_t{1} << 40) * (rank + 1), -rank, 7, std::int64_t{-3} << 50};
  comm.allreduce_sum(ints);
  std::vector<float> none;
  comm.allreduce_sum(std::span<float>(none));

  for (std::size_t i = 0; i < floats.size(); ++i)
    ASSERT_EQ(floats[i], static_cast<float>(ranks_sum) + 0.5f * static_cast<float>(i) * static_cast<float>(size))
        << "element " << i;
  EXPECT_DOUBLE_EQ(doubles[0], 0.25 * static_cast<double>(ranks_sum));
  EXPECT_EQ(doubles[1], -1.0 * size);
  EXPECT_DOUBLE_EQ(doubles[2], 1e-3 * static_cast<double>(ranks_sum + size));
  EXPECT_EQ(doubles[3], 1e12 * size);
  EXPECT_EQ(ints[0], (std::int64_t{1} << 40) * (ranks_sum + size));
  EXPECT_EQ(ints[1], -ranks_sum);
  EXPECT_EQ(ints[2], 7 * size);
  EXPECT_EQ(ints[3], (std::int64_t{-3} << 50) * size);
}

void check_gathers(Communicator& comm) {
  const int rank = comm.rank();
  const int size = comm.size();
  // Rank r gives r + 1 values: r * 1000 + j.
  std::vector<std::int64_t> mine(static_cast<std::size_t>(rank + 1));
  for (std::size_t j = 0; j < mine.size(); ++j) mine[j] = rank * 1000 + static_cast<std::int64_t>(j);
  const std::vector<std::int64_t> gathered = comm.allgather(mine);
  // Rank r gives r values (rank 0 none), and then nobody gives any.
  const std::vector<std::int64_t> fewer = comm.allgather(std::span<const std::int64_t>(mine).first(mine.size() - 1));
  const std::vector<std::int64_t> empty = comm.allgather({});
  const std::vector<std::int64_t> ranks = comm.allgather(std::vector<std::int64_t>{rank});

  std::vector<std::int64_t> expected, expected_fewer, expected_ranks;
  for (int r = 0; r < size; ++r) {
    for (int j = 0; j <= r; ++j) expected.push_back(r * 1000 + j);
    for (int j = 0; j < r; ++j) expected_fewer.push_back(r * 1000 + j);
    expected_ranks.push_back(r);
  }
  EXPECT_EQ(gathered, expected);
  EXPECT_EQ(fewer, expected_fewer);
  EXPECT_TRUE(empty.empty());
  EXPECT_EQ(ranks, expected_ranks);
}

void check_broadcasts(Communicator& comm) {
  const int rank = comm.rank();
  const int size = comm.size();
  // ~7 MB from rank 0; every other rank starts with text of another length.
  std::string from_first = utf8_text(rank, rank == 0 ? 100000 : static_cast<std::size_t>(rank) * 3);
  comm.broadcast(from_first, 0);
  // From the last rank, to ranks holding longer text.
  std::string from_last = rank == size - 1 ? utf8_text(-1, 7) : utf8_text(rank, 50);
  comm.broadcast(from_last, size - 1);
  // An empty string replaces non-empty ones.
  std::string emptied = rank == 0 ? std::string() : std::string("not empty");
  comm.broadcast(emptied, 0);
  // Bytes that are not text survive too.
  std::string bytes = rank == 0 ? std::string("a\0b\xFF\x80z", 6) : std::string();
  comm.broadcast(bytes, 0);

  EXPECT_TRUE(from_first == utf8_text(0, 100000)) << "rank " << rank << " got " << from_first.size() << " bytes";
  EXPECT_EQ(from_last, utf8_text(-1, 7));
  EXPECT_EQ(emptied, "");
  EXPECT_EQ(bytes, std::string("a\0b\xFF\x80z", 6));
}

void check_any(Communicator& comm) {
  const int rank = comm.rank();
  const int size = comm.size();
  const bool none = comm.any(false);
  const bool all = comm.any(true);
  const bool only_first = comm.any(rank == 0);
  const bool only_last = comm.any(rank == size - 1);
  const bool only_second = comm.any(rank == 1);  // no rank 1 at size 1
  comm.barrier();
  EXPECT_FALSE(none);
  EXPECT_TRUE(all);
  EXPECT_TRUE(only_first);
  EXPECT_TRUE(only_last);
  EXPECT_EQ(only_second, size > 1);
}

void check_all(Communicator& comm) {
  EXPECT_GE(comm.rank(), 0);
  EXPECT_LT(comm.rank(), comm.size());
  check_sums(comm);
  check_gathers(comm);
  check_broadcasts(comm);
  check_any(comm);
}

// ---- the MPI communicator ----

TEST(MpiCommunicator, RankAndSize) {
  int rank = -1, size = -1;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  MPI_Comm_size(MPI_COMM_WORLD, &size);
  EXPECT_EQ(world().rank(), rank);
  EXPECT_EQ(world().size(), size);
  // mpirun tells each process where it stands.
  if (const char* env = std::getenv("OMPI_COMM_WORLD_SIZE")) {
    EXPECT_EQ(world().size(), std::atoi(env));
  }
  if (const char* env = std::getenv("OMPI_COMM_WORLD_RANK")) {
    EXPECT_EQ(world().rank(), std::atoi(env));
  }
  // A second communicator sees the same world.
  const auto other = make_mpi_communicator();
  EXPECT_EQ(other->rank(), rank);
  EXPECT_EQ(other->size(), size);
}

TEST(MpiCommunicator, AllreduceSumsEachType) { check_sums(world()); }

TEST(MpiCommunicator, AllgatherWithDifferentCountsPerRank) { check_gathers(world()); }

TEST(MpiCommunicator, BroadcastsLongUtf8Text) { check_broadcasts(world()); }

TEST(MpiCommunicator, AnyIsTrueIffSomeRankSetsIt) { check_any(world()); }

TEST(MpiCommunicator, BadRootIsAnError) {
  std::string text = "x";
  std::string message;
  try {
    world().broadcast(text, world().size());
  } catch (const Error& e) {
    message = e.what();
  }
  EXPECT_EQ(message, "MPI broadcast: root " + std::to_string(world().size()) + " is not a rank (there are " +
                         std::to_string(world().size()) + ")");
  EXPECT_THROW(world().broadcast(text, -1), Error);
  EXPECT_EQ(text, "x");
}

// MPI_ERRORS_RETURN is in force: a failing call returns and SLEARN_MPI_CHECK throws, naming the call, the
// MPI error and the line of the check. (Every rank passes the same invalid root, so none waits.)
TEST(MpiCommunicator, MpiErrorsThrowNamingTheCallAndLine) {
  int value = 1;
  std::string message;
  int line = 0;
  try {
    line = __LINE__ + 1;
    SLEARN_MPI_CHECK(MPI_Bcast(&value, 1, MPI_INT, world().size() + 5, MPI_COMM_WORLD));
  } catch (const Error& e) {
    message = e.what();
  }
  EXPECT_EQ(message.rfind("MPI_Bcast failed: ", 0), 0u) << message;
  EXPECT_NE(message.find("MPI_ERR_ROOT"), std::string::npos) << message;
  EXPECT_NE(message.find("(tests/mpi/test_communicator.cpp:" + std::to_string(line) + ")"), std::string::npos)
      << message;
  world().barrier();  // the world still works
}

TEST(MpiCommunicator, CheckMessageForm) {
  EXPECT_NO_THROW(mpi::check(MPI_SUCCESS, "MPI_Barrier(MPI_COMM_WORLD)"));
  std::string message;
  try {
    mpi::check(MPI_ERR_COUNT, "MPI_Allreduce(MPI_IN_PLACE, data, n, MPI_FLOAT, MPI_SUM, MPI_COMM_WORLD)");
  } catch (const Error& e) {
    message = e.what();
  }
  EXPECT_EQ(message.rfind("MPI_Allreduce failed: " + mpi::error_text(MPI_ERR_COUNT) + " (tests/mpi/", 0), 0u)
      << message;
  EXPECT_NE(mpi::error_text(MPI_ERR_COUNT).find("count"), std::string::npos) << mpi::error_text(MPI_ERR_COUNT);
  EXPECT_EQ(mpi::short_source_path("/work/main/src/dist/mpi_communicator.cpp"), "src/dist/mpi_communicator.cpp");
  EXPECT_EQ(mpi::short_source_path("/home/me/src/slearn/src/dist/x.cpp"), "src/dist/x.cpp");
  EXPECT_EQ(mpi::short_source_path("src/dist/x.cpp"), "src/dist/x.cpp");
  EXPECT_EQ(mpi::short_source_path("x.cpp"), "x.cpp");
}

// An MpiSession made while MPI is running does nothing, and its end does not finalise MPI.
TEST(MpiCommunicator, NestedSessionLeavesMpiRunning) {
  { MpiSession nested(nullptr, nullptr); }
  int finalized = 1;
  MPI_Finalized(&finalized);
  EXPECT_EQ(finalized, 0);
  EXPECT_TRUE(world().any(world().rank() == 0));
}

// ---- the single-process communicator: the same behaviour as MPI at size 1 ----

TEST(SingleProcessCommunicator, BehavesLikeMpiAtSizeOne) {
  const auto single = make_single_process_communicator();
  EXPECT_EQ(single->rank(), 0);
  EXPECT_EQ(single->size(), 1);
  check_all(*single);
  std::string text = "x";
  EXPECT_NO_THROW(single->broadcast(text, 0));
}

// At one rank, MPI and the single process give identical results, call for call.
TEST(SingleProcessCommunicator, MatchesMpiResultsAtSizeOne) {
  if (world().size() != 1) GTEST_SKIP() << "only at one rank";
  const auto single = make_single_process_communicator();
  for (Communicator* comm : {&world(), single.get()}) {
    SCOPED_TRACE(comm == single.get() ? "single process" : "MPI");
    EXPECT_EQ(comm->rank(), 0);
    EXPECT_EQ(comm->size(), 1);
  }
  std::vector<float> a = {1.5f, -2.0f}, b = a;
  world().allreduce_sum(a);
  single->allreduce_sum(b);
  EXPECT_EQ(a, b);
  const std::vector<std::int64_t> values = {4, 5, 6};
  EXPECT_EQ(world().allgather(values), single->allgather(values));
  std::string s1 = utf8_text(3, 10), s2 = s1;
  world().broadcast(s1, 0);
  single->broadcast(s2, 0);
  EXPECT_EQ(s1, s2);
  EXPECT_EQ(world().any(true), single->any(true));
  EXPECT_EQ(world().any(false), single->any(false));
}

// A check of the harness, not of the library: fails on the last rank only. Run by hand with
// --gtest_also_run_disabled_tests: rank 0 prints nothing of it, the last rank prints a "[rank N]" line, and
// every rank exits with 1.
TEST(MpiHarness, DISABLED_FailsOnTheLastRankOnly) {
  const bool last = world().rank() == world().size() - 1;
  EXPECT_FALSE(last) << "this failure is expected (rank " << world().rank() << ")";
}

// The whole set once more over MPI, in one test, as the pipeline would use it.
TEST(MpiCommunicator, EverythingInOneGo) { check_all(world()); }

}  // namespace
}  // namespace slearn
