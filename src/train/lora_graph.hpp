// Forward and backward of the decoder for LoRA training: the same layer loop as Model::forward, over packed
// sequences (no padding, no KV cache), keeping what the backward needs, then the backward from the
// cross-entropy into every adapter's A and B. The base model is frozen: only input gradients flow through it.
#pragma once

#include <cstdint>
#include <functional>
#include <span>
#include <vector>

#include "slearn/lora.hpp"
#include "slearn/model.hpp"

namespace slearn {

// A micro-batch: sequences concatenated. targets[i] is what row i predicts (-100: no loss on that row).
struct PackedBatch {
  std::vector<TokenId> tokens;
  std::vector<TokenId> targets;
  std::vector<std::int32_t> positions;
  std::vector<std::int64_t> seq_starts{0};
  void add(std::span<const TokenId> sequence_tokens, std::span<const TokenId> sequence_targets);
  std::int64_t rows() const { return static_cast<std::int64_t>(tokens.size()); }
};

struct BatchLoss {
  double loss_sum = 0;     // summed cross-entropy over the rows with a target
  std::int64_t counted = 0;
};

class LoraTrainingGraph {
 public:
  // With `recompute`, only each layer's input is kept and the rest is recomputed during the backward.
  LoraTrainingGraph(Model& model, LoraAdapter& adapter, bool recompute);

  // Zeroed gradient buffers, one per adapter parameter, in adapter.parameters() order.
  std::vector<Tensor> make_gradients() const;

  // Forward and backward; adds grad_scale * d(loss_sum)/d(parameter) into `gradients`. `dropout_key` seeds
  // the adapters' dropout masks (each layer and projection derives its own).
  // `layer_done(l)`, when given, is called once layer l's backward has queued its last write to the
  // gradients (layers are done from the last to the first): a gradient sum may start on those layers.
  BatchLoss forward_backward(const PackedBatch& batch, float grad_scale, std::uint64_t dropout_key,
                             std::vector<Tensor>& gradients,
                             const std::function<void(std::size_t layer)>& layer_done = {});
  // Loss only (no dropout, nothing kept).
  BatchLoss loss(const PackedBatch& batch);

  // An upper estimate of the bytes one token of a micro-batch needs between and during the passes (what
  // is kept for the backward, plus one layer's worth recomputed and the backward's transients), in the
  // backend's compute dtype: what micro_batch_size auto divides the free memory by.
  std::size_t activation_bytes_per_token() const;

  // Bytes of activations the last forward_backward kept for its backward (the peak, between the passes).
  std::size_t activation_bytes() const { return activation_bytes_; }

  struct LayerActivations;

 private:
  void layer_forward(std::size_t layer, const PackedBatch& batch, const Tensor& x_in, LayerActivations& acts,
                     Tensor& x_out, std::uint64_t dropout_key, bool training);
  void layer_backward(std::size_t layer, const PackedBatch& batch, const Tensor& x_in, LayerActivations& acts,
                      const Tensor& d_out, Tensor& d_in, std::uint64_t dropout_key, std::vector<Tensor>& gradients);

  Model& model_;
  LoraAdapter& adapter_;
  bool recompute_;
  std::size_t activation_bytes_ = 0;
  // gradient index of each (layer, target)'s A; B follows it. -1 when the projection has no adapter.
  std::vector<std::array<std::int64_t, kLoraTargetCount>> gradient_index_;
};

}  // namespace slearn
