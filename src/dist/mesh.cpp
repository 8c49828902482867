// make_mesh and check_tensor_parallel (slearn/mesh.hpp).
#include "slearn/mesh.hpp"

#include <string>

#include "slearn/error.hpp"

namespace slearn {

Mesh make_mesh(Communicator& world, int tensor) {
  if (tensor < 1) throw InputError("parallel.tensor must be at least 1, got " + std::to_string(tensor));
  if (world.size() % tensor != 0)
    throw InputError("parallel.tensor " + std::to_string(tensor) + " does not divide the " +
                     std::to_string(world.size()) + " ranks: the world must be tensor x data ranks");
  Mesh mesh;
  mesh.tensor = tensor;
  mesh.data = world.size() / tensor;
  mesh.tensor_rank = world.rank() % tensor;
  mesh.data_rank = world.rank() / tensor;
  // Consecutive ranks form a tensor group; the ranks with the same place in their groups a data group.
  mesh.tensor_group = world.split(mesh.data_rank, mesh.tensor_rank);
  mesh.data_group = world.split(mesh.tensor_rank, mesh.data_rank);
  return mesh;
}

HeadSharding check_tensor_parallel(const ModelConfig& c, int tensor) {
  if (tensor < 1) throw InputError("parallel.tensor must be at least 1, got " + std::to_string(tensor));
  const auto t = static_cast<std::int64_t>(tensor);
  auto refuse = [&](const std::string& what, std::int64_t value, const std::string& rule) {
    throw InputError("the model cannot be split over parallel.tensor " + std::to_string(tensor) + " ranks: " + what +
                     " " + std::to_string(value) + " " + rule);
  };
  if (c.num_attention_heads % t != 0) refuse("num_attention_heads", c.num_attention_heads, "does not divide by it");
  if (c.intermediate_size % t != 0) refuse("intermediate_size", c.intermediate_size, "does not divide by it");
  if (c.vocab_size % t != 0) refuse("vocab_size", c.vocab_size, "does not divide by it");
  HeadSharding sharding;
  sharding.heads_per_rank = c.num_attention_heads / t;
  const std::int64_t kv = c.num_key_value_heads;
  if (kv >= t) {
    if (kv % t != 0) refuse("num_key_value_heads", kv, "does not divide by it");
    sharding.kv_heads_per_rank = kv / t;
  } else {
    // Fewer kv heads than ranks: each is replicated on the ranks that hold its query heads, which needs
    // whole groups of ranks per kv head.
    if (t % kv != 0)
      refuse("num_key_value_heads", kv, "is fewer than the ranks and does not divide them (each kv head is "
             "replicated on tensor / num_key_value_heads ranks)");
    sharding.kv_heads_per_rank = 1;
    sharding.kv_replicas = t / kv;
  }
  return sharding;
}

}  // namespace slearn
