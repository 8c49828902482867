// AdapterSharding (adapter_shard.hpp has the design).
#include "train/adapter_shard.hpp"

#include <algorithm>
#include <string>

#include "slearn/error.hpp"
#include "slearn/model.hpp"

namespace slearn {

AdapterSharding::AdapterSharding(const ModelConfig& config, const LoraAdapter& whole, int tensor, int tensor_rank)
    : head_dim_(config.head_dim), intermediate_(config.intermediate_size), tensor_(tensor), rank_(tensor_rank) {
  if (tensor < 1 || tensor_rank < 0 || tensor_rank >= tensor)
    throw Error("adapter sharding: rank " + std::to_string(tensor_rank) + " of " + std::to_string(tensor));
  heads_ = tensor > 1 ? check_tensor_parallel(config, tensor)
                      : HeadSharding{config.num_attention_heads, config.num_key_value_heads, 1};
  for (std::size_t l = 0; l < whole.layers(); ++l)
    for (std::size_t t = 0; t < kLoraTargetCount; ++t) {
      const auto target = static_cast<LoraTarget>(t);
      const LoraPair* pair = whole.find(l, target);
      if (pair == nullptr) continue;
      const std::string path = lora_module_path(l, target);
      for (const bool is_b : {false, true}) {
        Entry e{path + (is_b ? ".lora_B.weight" : ".lora_A.weight"), target, is_b,
                (is_b ? pair->b : pair->a).shape(), {}, local_elements_};
        if (e.whole_shape.size() != 2) throw Error("adapter sharding: " + e.key + " is not a matrix");
        e.local_shape = e.whole_shape;
        const Slice split = split_slice(target, rank_);
        if (!row_parallel(target) && is_b) e.local_shape[0] = split.count;   // B's output rows
        if (row_parallel(target) && !is_b) e.local_shape[1] = split.count;   // A's input columns
        local_elements_ += e.local_count();
        entries_.push_back(std::move(e));
      }
    }
}

AdapterSharding::Part AdapterSharding::part(LoraTarget target, bool is_b) const {
  if (tensor_ == 1) return Part::Split;
  if (row_parallel(target)) return is_b ? Part::Replicated : Part::Split;
  if (!is_b) return Part::Replicated;
  const bool kv = target == LoraTarget::KProj || target == LoraTarget::VProj;
  return kv && heads_.kv_replicas > 1 ? Part::KvReplicated : Part::Split;
}

bool AdapterSharding::counts_in_norm(LoraTarget target, bool is_b) const {
  switch (part(target, is_b)) {
    case Part::Split: return true;
    case Part::Replicated: return rank_ == 0;
    case Part::KvReplicated: return rank_ % heads_.kv_replicas == 0;
  }
  return true;
}

Slice AdapterSharding::split_slice(LoraTarget target, int rank) const {
  switch (target) {
    case LoraTarget::QProj:
    case LoraTarget::OProj:
      return {heads_.first_head(rank) * head_dim_, heads_.heads_per_rank * head_dim_};
    case LoraTarget::KProj:
    case LoraTarget::VProj:
      return {heads_.first_kv_head(rank) * head_dim_, heads_.kv_heads_per_rank * head_dim_};
    case LoraTarget::GateProj:
    case LoraTarget::UpProj:
    case LoraTarget::DownProj:
      return even_slice(intermediate_, tensor_, rank);
  }
  throw Error("adapter sharding: unknown projection");
}

void AdapterSharding::copy_local(const Entry& e, int rank, const float* whole, float* local) const {
  const std::int64_t rows = e.whole_shape[0], columns = e.whole_shape[1];
  if (part(e.target, e.is_b) == Part::Replicated) {
    std::copy_n(whole, rows * columns, local);
  } else if (row_parallel(e.target)) {  // A [r, in]: the rank's input columns of every row
    const Slice s = split_slice(e.target, rank);
    for (std::int64_t i = 0; i < rows; ++i) std::copy_n(whole + i * columns + s.first, s.count, local + i * s.count);
  } else {  // B [out, r]: the rank's output rows, contiguous
    const Slice s = split_slice(e.target, rank);
    std::copy_n(whole + s.first * columns, s.count * columns, local);
  }
}

LoraAdapter AdapterSharding::slice(const LoraAdapter& whole, const ModelConfig& local_config) const {
  const auto host = make_cpu_backend();
  LoraAdapter local = LoraAdapter::initialize(local_config, whole.settings(), 0, *host);  // shapes only
  auto parameters = local.parameters();
  if (parameters.size() != entries_.size())
    throw Error("adapter sharding: the local adapter has " + std::to_string(parameters.size()) + " tensors, not " +
                std::to_string(entries_.size()));
  std::size_t i = 0;
  for (std::size_t l = 0; l < whole.layers(); ++l)
    for (std::size_t t = 0; t < kLoraTargetCount; ++t) {
      const LoraPair* pair = whole.find(l, static_cast<LoraTarget>(t));
      if (pair == nullptr) continue;
      for (const Tensor* source : {&pair->a, &pair->b}) {
        const Entry& e = entries_[i];
        Tensor& target = *parameters[i].tensor;
        if (parameters[i].key != e.key || target.shape() != e.local_shape || source->shape() != e.whole_shape ||
            source->device() != Device::CPU || source->dtype() != DType::F32)
          throw Error("adapter sharding: " + e.key + " does not match the sharding it was made for");
        copy_local(e, rank_, source->f32(), target.f32());
        ++i;
      }
    }
  return local;
}

std::vector<NamedArray> AdapterSharding::slice_arrays(const std::vector<NamedArray>& whole) const {
  if (whole.size() != entries_.size())
    throw InputError("checkpoint: a different set of adapter tensors (" + std::to_string(whole.size()) + ", not " +
                     std::to_string(entries_.size()) + ")");
  std::vector<NamedArray> out;
  out.reserve(entries_.size());
  for (std::size_t i = 0; i < entries_.size(); ++i) {
    const Entry& e = entries_[i];
    if (whole[i].name != e.key || whole[i].shape != e.whole_shape ||
        static_cast<std::int64_t>(whole[i].values.size()) != e.whole_shape[0] * e.whole_shape[1])
      throw InputError("checkpoint: tensor \"" + whole[i].name + "\" does not match \"" + e.key + "\"");
    NamedArray local{e.key, e.local_shape, std::vector<float>(static_cast<std::size_t>(e.local_count()))};
    copy_local(e, rank_, whole[i].values.data(), local.values.data());
    out.push_back(std::move(local));
  }
  return out;
}

std::vector<NamedArray> AdapterSharding::gather_arrays(std::span<const float> local, Communicator& group) const {
  if (static_cast<std::int64_t>(local.size()) != local_elements_ || group.size() != tensor_ ||
      group.rank() != rank_)
    throw Error("adapter sharding: gather of " + std::to_string(local.size()) + " values (expected " +
                std::to_string(local_elements_) + ") over a group of " + std::to_string(group.size()));
  // Every rank's local layout has the same size (the splits are even), so one allgather carries them all.
  std::vector<float> all(local.size() * static_cast<std::size_t>(tensor_));
  group.allgather(local, all);
  std::vector<NamedArray> out;
  out.reserve(entries_.size());
  for (const Entry& e : entries_) {
    const std::int64_t rows = e.whole_shape[0], columns = e.whole_shape[1];
    NamedArray whole{e.key, e.whole_shape, std::vector<float>(static_cast<std::size_t>(rows * columns))};
    const Part p = part(e.target, e.is_b);
    for (int k = 0; k < tensor_; ++k) {
      if (p == Part::Replicated && k != 0) break;
      if (p == Part::KvReplicated && k % heads_.kv_replicas != 0) continue;  // its replicas hold the same values
      const float* from = all.data() + static_cast<std::size_t>(k) * local.size() + e.local_offset;
      if (p == Part::Replicated) {
        std::copy_n(from, rows * columns, whole.values.data());
      } else if (row_parallel(e.target)) {
        const Slice s = split_slice(e.target, k);
        for (std::int64_t i = 0; i < rows; ++i)
          std::copy_n(from + i * s.count, s.count, whole.values.data() + i * columns + s.first);
      } else {
        const Slice s = split_slice(e.target, k);
        std::copy_n(from, s.count * columns, whole.values.data() + s.first * columns);
      }
    }
    out.push_back(std::move(whole));
  }
  return out;
}

void AdapterSharding::sum_replicated(std::span<float> gradients, Communicator& group, Communicator* kv_group) const {
  if (tensor_ == 1) return;
  if (static_cast<std::int64_t>(gradients.size()) != local_elements_)
    throw Error("adapter sharding: " + std::to_string(gradients.size()) + " gradients for " +
                std::to_string(local_elements_) + " parameters");
  // Summed in double (one rounding to fp32 at the end), in one allreduce per group.
  for (const Part which : {Part::Replicated, Part::KvReplicated}) {
    std::vector<double> packed;
    for (const Entry& e : entries_)
      if (part(e.target, e.is_b) == which)
        packed.insert(packed.end(), gradients.begin() + e.local_offset,
                      gradients.begin() + e.local_offset + e.local_count());
    if (which == Part::KvReplicated && heads_.kv_replicas == 1) continue;
    if (which == Part::KvReplicated && kv_group == nullptr)
      throw Error("adapter sharding: kv heads are replicated but no kv group was given");
    (which == Part::Replicated ? group : *kv_group).allreduce_sum(std::span<double>(packed));
    std::size_t at = 0;
    for (const Entry& e : entries_)
      if (part(e.target, e.is_b) == which)
        for (std::int64_t i = 0; i < e.local_count(); ++i)
          gradients[static_cast<std::size_t>(e.local_offset + i)] = static_cast<float>(packed[at++]);
  }
}

double AdapterSharding::norm_squares_counted(std::span<const float> gradients) const {
  double sum = 0;
  for (const Entry& e : entries_) {
    if (!counts_in_norm(e.target, e.is_b)) continue;
    for (std::int64_t i = 0; i < e.local_count(); ++i) {
      const double g = gradients[static_cast<std::size_t>(e.local_offset + i)];
      sum += g * g;
    }
  }
  return sum;
}

std::unique_ptr<Communicator> AdapterSharding::make_kv_group(Communicator& group) const {
  if (tensor_ == 1 || heads_.kv_replicas == 1) return nullptr;
  return group.split(static_cast<int>(rank_ / heads_.kv_replicas), rank_);
}

LoraAdapter LoraAdapter::load_for(const Model& model, const std::filesystem::path& dir, Backend& backend) {
  const TensorParallel& tp = model.tensor_parallel();
  if (tp.size == 1) return load(dir, model.config(), backend);
  const auto host = make_cpu_backend();
  const LoraAdapter whole = load(dir, model.config(), *host);
  LoraAdapter local = AdapterSharding(model.config(), whole, tp.size, tp.rank).slice(whole, model.local_config());
  std::vector<Tensor> on_backend;
  for (auto& p : local.parameters()) on_backend.push_back(backend.upload(*p.tensor));
  local.bind_parameters(std::move(on_backend));
  return local;
}

}  // namespace slearn
