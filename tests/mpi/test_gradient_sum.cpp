// The cpu backend's gradient sum (Backend::make_gradient_sum) under mpirun at 1, 2 and 4 ranks: fixed buckets
// from the buffer's end, micro-batches accumulated in double, the fp32 sum identical on every rank and equal
// to the serial double sum of every rank's contributions, whatever the bucket size.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <vector>

#include "mpi_test_env.hpp"
#include "slearn/backend.hpp"
#include "slearn/gradient_sum.hpp"

namespace slearn {
namespace {

using mpi_tests::world;

// Micro-batch `micro`'s gradient element `i` (values of mixed magnitude so the rounding order matters).
float contribution(int micro, std::int64_t i) {
  const double x = std::sin(0.37 * static_cast<double>(i) + 1.3 * micro) * std::pow(10.0, (i + micro) % 7 - 3);
  return static_cast<float>(x);
}

void run_sum(std::int64_t elements, std::int64_t bucket, int micro_batches) {
  Communicator& comm = world();
  auto backend = make_cpu_backend();
  auto sum = backend->make_gradient_sum(comm, elements, GradientSumOptions{bucket, 60.0});
  EXPECT_EQ(sum->gradients().numel(), elements);
  sum->begin_step();
  // Micro-batch j on rank j mod size, as the trainer deals them.
  for (int j = comm.rank(); j < micro_batches; j += comm.size()) {
    sum->begin_micro_batch();
    float* g = sum->gradients().f32();
    for (std::int64_t i = 0; i < elements; ++i) g[i] += contribution(j, i);  // accumulated into, as matmuls do
    sum->end_micro_batch();
    sum->ready_from(elements / 2);
  }
  sum->finish();

  std::vector<double> want(static_cast<std::size_t>(elements), 0.0);
  for (int j = 0; j < micro_batches; ++j)
    for (std::int64_t i = 0; i < elements; ++i) want[static_cast<std::size_t>(i)] += contribution(j, i);
  const float* got = sum->gradients().f32();
  std::int64_t mismatches = 0;
  for (std::int64_t i = 0; i < elements; ++i) {
    // Summing doubles in another order may move the last double bit; the fp32 result almost never moves.
    const float expected = static_cast<float>(want[static_cast<std::size_t>(i)]);
    if (std::abs(got[i] - expected) > 1e-6f * std::abs(expected)) ++mismatches;
  }
  EXPECT_EQ(mismatches, 0) << elements << " elements in buckets of " << bucket;
  // Identical on every rank: the rank-0 bits broadcast as text and compared.
  std::string bits(reinterpret_cast<const char*>(got), static_cast<std::size_t>(elements) * sizeof(float));
  std::string root = bits;
  comm.broadcast(root, 0);
  EXPECT_EQ(root, bits) << "rank " << comm.rank() << " holds another sum than rank 0";
  EXPECT_EQ(sum->bytes_reduced(), comm.size() > 1 ? elements * static_cast<std::int64_t>(sizeof(double)) : 0);
}

TEST(GradientSum, SumsEveryRanksMicroBatchesInBuckets) {
  run_sum(10'000, 1 << 22, 7);  // one bucket
  run_sum(10'000, 999, 7);      // a short last bucket at the front
  run_sum(1, 1, 3);
  run_sum(513, 64, 1);          // fewer micro-batches than ranks: the others add nothing
}

TEST(GradientSum, StepsStartFromZero) {
  Communicator& comm = world();
  auto backend = make_cpu_backend();
  auto sum = backend->make_gradient_sum(comm, 100, GradientSumOptions{16, 60.0});
  for (int step = 0; step < 2; ++step) {
    sum->begin_step();
    sum->begin_micro_batch();
    float* g = sum->gradients().f32();
    for (int i = 0; i < 100; ++i) g[i] += 1.0f;
    sum->end_micro_batch();
    sum->finish();
    int wrong = 0;
    for (int i = 0; i < 100; ++i) wrong += sum->gradients().f32()[i] != static_cast<float>(comm.size());
    EXPECT_EQ(wrong, 0) << "step " << step;
  }
}

}  // namespace
}  // namespace slearn
