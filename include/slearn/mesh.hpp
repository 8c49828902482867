// A mesh of ranks for tensor parallelism: world = T x D. The T ranks of a tensor group are consecutive (one
// node, where the fast links are) and hold one copy of the model between them, each a 1/T slice of every
// layer; the D data-parallel groups take the rest (the ranks with the same place in their tensor groups).
// Every collective goes through the Communicator interface, so the same mesh runs over MPI on CPUs and (for
// GPU tensors) over NCCL.
#pragma once

#include <cstdint>
#include <memory>

#include "slearn/communicator.hpp"
#include "slearn/model_config.hpp"

namespace slearn {

struct Mesh {
  int tensor = 1, data = 1;            // T and D
  int tensor_rank = 0, data_rank = 0;  // this rank's place in its tensor group and in its data group
  std::unique_ptr<Communicator> tensor_group, data_group;
};

// Collective over `world`. InputError when world.size() is not a multiple of `tensor` (or tensor < 1).
Mesh make_mesh(Communicator& world, int tensor);

// How a model's attention heads fall on the T ranks of a tensor group. Query heads are split evenly; kv
// heads too when there are at least T of them, and otherwise each kv head is replicated on T / kv_heads
// consecutive ranks (the ranks that hold its query heads).
struct HeadSharding {
  std::int64_t heads_per_rank = 0;     // query heads on each rank
  std::int64_t kv_heads_per_rank = 0;  // kv heads on each rank
  std::int64_t kv_replicas = 1;        // ranks holding each kv head (1: not replicated)
  std::int64_t first_kv_head(int tensor_rank) const { return tensor_rank / kv_replicas * kv_heads_per_rank; }
  std::int64_t first_head(int tensor_rank) const { return tensor_rank * heads_per_rank; }
};

// Checks that `config` can be split over `tensor` ranks and says how its heads fall: InputError naming
// what does not divide (num_attention_heads, num_key_value_heads, intermediate_size, vocab_size) and by what.
HeadSharding check_tensor_parallel(const ModelConfig& config, int tensor);

}  // namespace slearn
