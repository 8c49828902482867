// A decoder-only transformer of the Qwen2 / LLaMA family. One forward serves prefill and decode: it runs a
// packed batch of chunks (each chunk: consecutive tokens of one sequence, starting at some position) and
// stores their keys and values in the KV cache, so a chunk can be a whole prompt or a single new token.
#pragma once

#include <cstdint>
#include <filesystem>
#include <functional>
#include <memory>
#include <span>
#include <vector>

#include "slearn/backend.hpp"
#include "slearn/communicator.hpp"
#include "slearn/model_config.hpp"
#include "slearn/tensor.hpp"

namespace slearn {

struct ModelWeights;  // src/model/weights.hpp
class LoraAdapter;

struct SequenceChunk {
  std::int32_t slot = 0;    // the sequence's KV-cache slot
  std::int32_t start = 0;   // position of the chunk's first token
  std::int32_t length = 0;  // tokens in the chunk
};

// Keys and values of every layer for `slots` sequences of up to `capacity` positions each.
class KVCache {
 public:
  std::int32_t slots() const { return slots_; }
  std::int32_t capacity() const { return capacity_; }
  Tensor& keys(std::size_t layer) { return keys_.at(layer); }
  Tensor& values(std::size_t layer) { return values_.at(layer); }
  std::size_t bytes() const;

 private:
  friend class Model;
  std::int32_t slots_ = 0;
  std::int32_t capacity_ = 0;
  std::vector<Tensor> keys_, values_;
};

// Where a model is one of the T ranks of a tensor group (Megatron style, include/slearn/mesh.hpp): `group` is
// the tensor group (Mesh::tensor_group), `rank` this process's place in it and `size` its T. size 1 (the
// default, group unused) is the whole model on one rank.
struct TensorParallel {
  Communicator* group = nullptr;
  int rank = 0, size = 1;
  // The longest a sum over the group may wait for its peers before the job ends with an error naming the
  // rank (the cuda backend's NCCL sums; MPI has its own limits).
  double timeout_seconds = 600;
};

// Called with each named intermediate tensor of a forward ("embed", "layers.0.attn", ..., "logits").
using TensorObserver = std::function<void(const Tensor&)>;

class Model {
 public:
  // Loads config.json and the safetensors weights of `dir` into `backend`. A missing, unexpected or misshapen
  // tensor throws InputError naming the file and the tensor.
  static Model load(const std::filesystem::path& dir, Backend& backend);
  // This rank's shard of the model of `dir` over a tensor group of tp.size ranks (tp.size 1: the load above).
  // Each rank reads only its slices from the mapped checkpoint: q/k/v rows of its heads (kv heads replicated
  // on T / kv_heads ranks when fewer than T), o_proj the matching columns, gate/up rows of its part of the
  // intermediate size, down_proj those columns, the LM head its rows of the vocabulary; norms and the token
  // embedding whole. The forward sums the partial outputs of o_proj and down_proj over the group, so every
  // rank of the group must run the same forwards, in the same order, with the same arguments. InputError when
  // the model does not split over tp.size ranks (check_tensor_parallel); Error when `group` is missing or its
  // rank and size are not tp's. A sharded model takes its rank's share of an adapter (set_adapter).
  static Model load(const std::filesystem::path& dir, Backend& backend, const TensorParallel& tp);
  // A model of `config` with random weights made on the backend itself by Backend::fill_random (uniform,
  // bf16-exact, bit-identical on every backend), for tests and benchmarks at real shapes with no file:
  // embeddings in +-embed_scale, each projection in +-weight_gain / sqrt(in_features), the untied LM head in
  // +-lm_head_gain / sqrt(hidden), biases in +-0.1, norm weights 1.
  struct RandomInit {
    std::uint64_t seed = 0;
    float embed_scale = 1.0f;
    float weight_gain = 1.0f;
    float lm_head_gain = 1.0f;
  };
  static Model random(const ModelConfig& config, Backend& backend, const RandomInit& init);
  Model(Model&&) noexcept;
  Model& operator=(Model&&) noexcept;
  ~Model();

  const ModelConfig& config() const;
  Backend& backend() const;
  // The parameters this rank holds (all of them when not sharded; the tied LM head is not counted twice).
  std::size_t parameter_count() const;
  const TensorParallel& tensor_parallel() const;
  // A sharded model's sum over its tensor group of a partial result (a row-parallel output, a column-parallel
  // input gradient), in place, through the backend's GroupSum (slearn/group_sum.hpp); nothing when whole.
  // Collective over the group. It may return before the sum is done: wait_for_tensor_group bounds the wait
  // for all of them (forward_logits waits before it returns).
  void sum_over_tensor_group(Tensor& partial);
  void wait_for_tensor_group(const char* what);
  // The config as this rank's layers see it: its heads, kv heads and intermediate size (config() when not
  // sharded). vocab_size stays the whole vocabulary (token ids, the replicated embedding).
  const ModelConfig& local_config() const;
  // This rank's slice of the vocabulary, [first, first + count): the columns of forward_logits' rows.
  std::int64_t local_vocab_first() const;
  std::int64_t local_vocab_size() const;

  KVCache make_cache(std::int32_t slots, std::int32_t capacity);
  // The most sequences (at least 1, at most kMaxAutoSequences) whose KV cache of `capacity` positions, and the
  // activations of prefilling `prompt_tokens` tokens each at once, fit in `fraction` of the memory the
  // backend has free now (after the weights): what `batch_size: auto` takes.
  static constexpr std::int32_t kMaxAutoSequences = 1024;
  std::int32_t sequences_that_fit(std::int64_t capacity, std::int64_t prompt_tokens, double fraction);

  enum class Logits { LastOfEachChunk, AllTokens };
  // `tokens` holds the chunks' tokens concatenated in chunk order. Returns fp32 host logits, one row of
  // vocab_size per chunk (LastOfEachChunk) or per token (AllTokens). On a sharded model the rows are whole too:
  // the ranks' vocabulary slices are gathered over the group (a collective; for tests and goldens: generation
  // keeps the slices and picks tokens with vocab_parallel_greedy / vocab_parallel_sample instead).
  std::vector<float> forward(std::span<const TokenId> tokens, std::span<const SequenceChunk> chunks, KVCache& cache,
                             Logits which);
  // The same forward, leaving the logits where the backend computed them: an fp32 tensor [rows, vocab_size] of
  // the backend (on the GPU: device memory), valid until the next forward. On a sharded model: this rank's
  // slice of the vocabulary, [rows, local_vocab_size()].
  const Tensor& forward_logits(std::span<const TokenId> tokens, std::span<const SequenceChunk> chunks,
                               KVCache& cache, Logits which);

  void set_observer(TensorObserver observer);
  // Applies `adapter` (or none) in every later forward: y = W x + scaling * B A x on its projections. On a
  // sharded model, the rank's share of it (AdapterSharding::slice, src/train/adapter_shard.hpp): InputError
  // when a pair's shapes are not the local projection's.
  void set_adapter(const LoraAdapter* adapter);
  const LoraAdapter* adapter() const;

  // For the trainer, which runs its own forward and backward over the same weights and tables.
  const ModelWeights& weights() const;
  // The RoPE cos/sin tables [positions, head_dim / 2], grown to cover at least `positions`.
  std::pair<const Tensor*, const Tensor*> rope_tables(std::int64_t positions);

  struct Weights;
  struct Workspace;

 private:
  Model();
  std::unique_ptr<Weights> weights_;
  std::unique_ptr<Workspace> workspace_;
};

}  // namespace slearn
