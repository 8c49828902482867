// CountingCommunicator (slearn/counting_communicator.hpp) over the single-process communicator: every call is
// forwarded (the results are the inner one's, its errors come through) and counted under its kind with the
// bytes this rank passed; reset() starts again from zero.
#include <gtest/gtest.h>

#include <cstdint>
#include <string>
#include <vector>

#include "slearn/communicator.hpp"
#include "slearn/counting_communicator.hpp"
#include "slearn/error.hpp"

namespace slearn {
namespace {

void expect_counts(const CollectiveCounts& counts, std::int64_t calls, std::int64_t bytes) {
  EXPECT_EQ(counts.calls, calls);
  EXPECT_EQ(counts.bytes, bytes);
}

TEST(CountingCommunicator, StartsAtZeroAndForwardsRankAndSize) {
  auto inner = make_single_process_communicator();
  CountingCommunicator counting(*inner);
  EXPECT_EQ(counting.rank(), 0);
  EXPECT_EQ(counting.size(), 1);
  expect_counts(counting.allreduce_counts(), 0, 0);
  expect_counts(counting.allgather_counts(), 0, 0);
  expect_counts(counting.broadcast_counts(), 0, 0);
  expect_counts(counting.other_counts(), 0, 0);
}

TEST(CountingCommunicator, CountsAllreducesOfEveryTypeBySpanBytes) {
  auto inner = make_single_process_communicator();
  CountingCommunicator counting(*inner);
  std::vector<float> f(10, 1.5f);
  std::vector<double> d(3, 2.0);
  std::vector<std::int64_t> i(7, 4);
  counting.allreduce_sum(f);
  counting.allreduce_sum(d);
  counting.allreduce_sum(i);
  counting.allreduce_sum(std::span<float>(f).first(0));  // an empty sum is still a call
  expect_counts(counting.allreduce_counts(), 4, 10 * 4 + 3 * 8 + 7 * 8);
  EXPECT_EQ(f, std::vector<float>(10, 1.5f));  // one rank: the sum is the value
  expect_counts(counting.allgather_counts(), 0, 0);
  expect_counts(counting.broadcast_counts(), 0, 0);
  expect_counts(counting.other_counts(), 0, 0);
}

TEST(CountingCommunicator, CountsTheBytesThisRankSendsToAnAllgather) {
  auto inner = make_single_process_communicator();
  CountingCommunicator counting(*inner);
  const std::vector<std::int64_t> ids{5, -1, 9};
  EXPECT_EQ(counting.allgather(ids), ids);
  const std::vector<float> values{1, 2, 3, 4, 5};
  std::vector<float> out(5);
  counting.allgather(values, out);
  EXPECT_EQ(out, values);
  expect_counts(counting.allgather_counts(), 2, 3 * 8 + 5 * 4);
  // The inner communicator's refusal comes through (one rank: out must hold exactly the values); counted.
  std::vector<float> too_small(2);
  EXPECT_THROW(counting.allgather(values, too_small), Error);
  expect_counts(counting.allgather_counts(), 3, 3 * 8 + 5 * 4 + 5 * 4);
  expect_counts(counting.allreduce_counts(), 0, 0);
}

TEST(CountingCommunicator, CountsBroadcastBuffersAndStrings) {
  auto inner = make_single_process_communicator();
  CountingCommunicator counting(*inner);
  std::vector<float> f(6);
  std::vector<std::int32_t> i(11);
  std::string text = "twelve bytes";
  counting.broadcast(f, 0);
  counting.broadcast(i, 0);
  counting.broadcast(text, 0);
  EXPECT_EQ(text, "twelve bytes");
  expect_counts(counting.broadcast_counts(), 3, 6 * 4 + 11 * 4 + 12);
  EXPECT_THROW(counting.broadcast(f, 1), Error);  // root 1 is not a rank of one: the inner's check
  expect_counts(counting.broadcast_counts(), 4, 6 * 4 + 11 * 4 + 12 + 6 * 4);
}

TEST(CountingCommunicator, CountsAnyBarrierAndSplitAsOtherAndSplitsTheInner) {
  auto inner = make_single_process_communicator();
  CountingCommunicator counting(*inner);
  EXPECT_TRUE(counting.any(true));
  EXPECT_FALSE(counting.any(false));
  counting.barrier();
  const std::unique_ptr<Communicator> group = counting.split(0, 0);
  ASSERT_NE(group, nullptr);
  EXPECT_EQ(group->size(), 1);
  std::vector<float> f(4);
  group->allreduce_sum(f);  // the split result is unwrapped: its traffic is not counted here
  expect_counts(counting.other_counts(), 4, 2);
  expect_counts(counting.allreduce_counts(), 0, 0);
}

TEST(CountingCommunicator, ResetStartsEveryKindAgainFromZero) {
  auto inner = make_single_process_communicator();
  CountingCommunicator counting(*inner);
  std::vector<float> f(8);
  std::string text = "abc";
  counting.allreduce_sum(f);
  (void)counting.allgather(std::vector<std::int64_t>{1, 2});
  counting.broadcast(text, 0);
  counting.barrier();
  counting.reset();
  expect_counts(counting.allreduce_counts(), 0, 0);
  expect_counts(counting.allgather_counts(), 0, 0);
  expect_counts(counting.broadcast_counts(), 0, 0);
  expect_counts(counting.other_counts(), 0, 0);
  counting.allreduce_sum(f);
  expect_counts(counting.allreduce_counts(), 1, 32);
}

}  // namespace
}  // namespace slearn
