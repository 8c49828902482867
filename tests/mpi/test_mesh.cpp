// The tensor x data mesh under mpirun at 1, 2 and 4 ranks: every T that divides the world gives consecutive
// tensor groups and strided data groups, and the group collectives (split, float allgather, broadcasts,
// sums) reach exactly the group's ranks. Every rank runs the same calls in the same order.
#include <gtest/gtest.h>

#include <cstdint>
#include <vector>

#include "mpi_test_env.hpp"
#include "slearn/communicator.hpp"
#include "slearn/error.hpp"
#include "slearn/mesh.hpp"

namespace slearn {
namespace {

using mpi_tests::world;

TEST(Mesh, TensorGroupsAreConsecutiveAndDataGroupsStrided) {
  Communicator& w = world();
  for (int tensor : {1, 2, 4}) {
    if (w.size() % tensor != 0) continue;  // the same decision on every rank
    const Mesh mesh = make_mesh(w, tensor);
    EXPECT_EQ(mesh.tensor * mesh.data, w.size());
    EXPECT_EQ(mesh.tensor_group->size(), tensor);
    EXPECT_EQ(mesh.data_group->size(), w.size() / tensor);
    EXPECT_EQ(mesh.tensor_group->rank(), mesh.tensor_rank);
    EXPECT_EQ(mesh.data_group->rank(), mesh.data_rank);
    EXPECT_EQ(mesh.data_rank * tensor + mesh.tensor_rank, w.rank());

    // The world ranks of my tensor group, gathered within it: consecutive, starting at a multiple of T.
    const float me[] = {static_cast<float>(w.rank())};
    std::vector<float> members(static_cast<std::size_t>(tensor));
    mesh.tensor_group->allgather(me, members);
    for (int i = 0; i < tensor; ++i)
      EXPECT_EQ(members[static_cast<std::size_t>(i)], static_cast<float>(mesh.data_rank * tensor + i)) << "T " << tensor;
    // ... and of my data group: the same place in every tensor group.
    std::vector<float> peers(static_cast<std::size_t>(mesh.data));
    mesh.data_group->allgather(me, peers);
    for (int d = 0; d < mesh.data; ++d)
      EXPECT_EQ(peers[static_cast<std::size_t>(d)], static_cast<float>(d * tensor + mesh.tensor_rank)) << "T " << tensor;

    // A sum within the tensor group adds only its members.
    std::vector<float> sum{static_cast<float>(w.rank()), 1.0f};
    mesh.tensor_group->allreduce_sum(std::span<float>(sum));
    const int first = mesh.data_rank * tensor;
    EXPECT_EQ(sum[0], static_cast<float>(tensor * first + tensor * (tensor - 1) / 2));
    EXPECT_EQ(sum[1], static_cast<float>(tensor));

    // Broadcasts from the group's last rank, floats and token ids.
    std::vector<float> values{static_cast<float>(w.rank()), -2.5f};
    std::vector<std::int32_t> ids{w.rank(), 7, -1};
    mesh.tensor_group->broadcast(std::span<float>(values), tensor - 1);
    mesh.tensor_group->broadcast(std::span<std::int32_t>(ids), tensor - 1);
    EXPECT_EQ(values[0], static_cast<float>(first + tensor - 1));
    EXPECT_EQ(values[1], -2.5f);
    EXPECT_EQ(ids[0], first + tensor - 1);
    EXPECT_EQ(ids[2], -1);
  }
}

TEST(Mesh, AWorldNotDivisibleByTheTensorSizeIsRefused) {
  Communicator& w = world();
  try {
    make_mesh(w, w.size() + 1);  // never a divisor: refused before any collective
    ADD_FAILURE() << "expected an InputError";
  } catch (const InputError& e) {
    EXPECT_NE(std::string(e.what()).find("does not divide the " + std::to_string(w.size()) + " ranks"),
              std::string::npos)
        << e.what();
  }
  EXPECT_THROW(make_mesh(w, 0), InputError);
}

TEST(Mesh, GroupCollectivesCheckTheirArguments) {
  Communicator& w = world();
  std::vector<float> out(static_cast<std::size_t>(w.size()) + 1);
  const float one[] = {1.0f};
  EXPECT_THROW(w.allgather(one, out), Error);
  std::vector<float> values(2);
  EXPECT_THROW(w.broadcast(std::span<float>(values), w.size()), Error);
}

}  // namespace
}  // namespace slearn
