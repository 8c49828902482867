// How a LoRA adapter falls on the T ranks of a tensor group, following the base weights (Megatron-style, as
// PEFT's and vLLM's LoRA layers for parallel linears do):
//
//   column-parallel (q, k, v, gate, up: the base's output rows split)   A replicated, B split by output rows
//   row-parallel    (o_proj, down_proj: the base's input columns split) A split by input columns, B replicated
//
// so each rank's adapter is an ordinary LoraAdapter of the rank's local shapes (Model::local_config), and the
// model's forward needs no new communication: a column-parallel rank adds s (x A^T) B_r^T to its own output
// rows; a row-parallel rank adds s (x_r A_r^T) B^T to its partial output, and the sum over the group that the
// base's partials need anyway adds those up to s (x A^T) B^T.
//
// In the backward, the gradient of a split part is exact on its rank; that of a replicated part is a partial
// sum (each rank sees its own rows or columns of the product), summed over the group after the data-parallel
// sum. k and v's B rows, when the model has fewer kv heads than T, belong to a kv head that several
// consecutive ranks hold (HeadSharding::kv_replicas): summed over those ranks only (the kv group).
//
// Checkpoints and the saved adapter are whole (PEFT keys and shapes, gathered over the group), so a sharded
// run's adapter loads anywhere, and a checkpoint resumes at any T: each rank slices its share on load.
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <vector>

#include "slearn/checkpoint.hpp"
#include "slearn/communicator.hpp"
#include "slearn/lora.hpp"
#include "slearn/mesh.hpp"
#include "slearn/model_config.hpp"
#include "slearn/safetensors.hpp"

namespace slearn {

class AdapterSharding {
 public:
  enum class Part {
    Split,         // each rank holds its own slice: its gradient is exact
    Replicated,    // every rank of the group holds it whole: its gradient is summed over the group
    KvReplicated,  // k/v's B rows of a kv head held by kv_replicas ranks: summed over those (the kv group)
  };

  // `config` is the whole model's and `whole` an adapter of its shapes (which layers and projections it
  // adapts, and its rank r); tensor 1 is the trivial sharding (every part whole, on one rank).
  AdapterSharding(const ModelConfig& config, const LoraAdapter& whole, int tensor, int tensor_rank);

  int tensor() const { return tensor_; }
  int tensor_rank() const { return rank_; }
  std::int64_t kv_replicas() const { return heads_.kv_replicas; }
  static bool row_parallel(LoraTarget target) {
    return target == LoraTarget::OProj || target == LoraTarget::DownProj;
  }
  Part part(LoraTarget target, bool is_b) const;
  // Whether this rank counts the part in the gradient norm (each element of the whole adapter once).
  bool counts_in_norm(LoraTarget target, bool is_b) const;
  // Of the split dimension (B's rows on a column-parallel target, A's columns on a row-parallel one), the
  // slice `rank` holds, in the whole tensor.
  Slice split_slice(LoraTarget target, int rank) const;

  // This rank's adapter: `whole`'s slices (an adapter like the one given to the constructor), in
  // `local_config`'s shapes, fp32 on the host.
  LoraAdapter slice(const LoraAdapter& whole, const ModelConfig& local_config) const;
  // This rank's arrays (in the local parameters' order) from the whole adapter's (PEFT keys and shapes).
  std::vector<NamedArray> slice_arrays(const std::vector<NamedArray>& whole) const;
  // Collective over `group` (this sharding's tensor group): the whole adapter's arrays from every rank's
  // local values (the local parameters' order, end to end), on every rank.
  std::vector<NamedArray> gather_arrays(std::span<const float> local, Communicator& group) const;

  // After the data-parallel sum: sums each replicated part's gradient over `group` (and the kv-replicated
  // ones over `kv_group`), in place in the host copy `gradients` of the local flat buffer. Collective.
  void sum_replicated(std::span<float> gradients, Communicator& group, Communicator* kv_group) const;
  // The sum of squares of the elements this rank counts (counts_in_norm), in double.
  double norm_squares_counted(std::span<const float> gradients) const;

  // The ranks of the group that hold the same kv heads, split from `group` (collective); nullptr when the
  // kv heads are not replicated.
  std::unique_ptr<Communicator> make_kv_group(Communicator& group) const;

 private:
  struct Entry {  // one parameter, in LoraAdapter::parameters() order
    std::string key;
    LoraTarget target;
    bool is_b;
    std::vector<std::int64_t> whole_shape, local_shape;
    std::int64_t local_offset = 0;
    std::int64_t local_count() const { return local_shape[0] * local_shape[1]; }
  };
  // Copies the local part of `whole` (whole_shape) for `rank` into `local` (local_shape).
  void copy_local(const Entry& e, int rank, const float* whole, float* local) const;

  std::int64_t head_dim_ = 0, intermediate_ = 0;
  int tensor_ = 1, rank_ = 0;
  HeadSharding heads_;
  std::vector<Entry> entries_;
  std::int64_t local_elements_ = 0;
};

}  // namespace slearn
