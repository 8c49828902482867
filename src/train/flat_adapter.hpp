// The adapter's trainable tensors end to end in one flat fp32 buffer, and the trainer's state on a backend.
//
// The layout is LoraAdapter::parameters()'s order (layer, projection, A then B), each tensor with its PEFT
// key and shape at an offset. Parameters, gradients and both AdamW moments are flat buffers of that layout,
// so the optimizer step, the norm and the non-finite check are each one backend op over one buffer, and the
// gradient sum is one (bucketed) allreduce. Checkpoints and the PEFT files are written per tensor from host
// copies split by the layout: the same files whatever the backend, so a run resumes on either.
//
// The master weights stay fp32 on the backend; the adapter's pairs are rebound to views of the backend's
// compute copy (bf16 on cuda, refreshed after each update; the master itself on cpu), which is what the
// matmuls read.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "slearn/backend.hpp"
#include "slearn/checkpoint.hpp"
#include "slearn/lora.hpp"
#include "slearn/train_config.hpp"

namespace slearn {

struct FlatSegment {
  std::string key;                  // PEFT's key: base_model.model.model.layers.3.self_attn.q_proj.lora_A.weight
  std::vector<std::int64_t> shape;
  std::int64_t offset = 0, count = 0;
  std::size_t layer = 0;
};

class FlatLayout {
 public:
  explicit FlatLayout(LoraAdapter& adapter);
  const std::vector<FlatSegment>& segments() const { return segments_; }
  std::int64_t elements() const { return elements_; }
  // Each segment's end offset, ascending (Backend::check_flat's segments).
  const std::vector<std::int64_t>& segment_ends() const { return ends_; }
  // The first element of layer `layer`'s segments: every element from here on belongs to layers >= layer.
  std::int64_t layer_begin(std::size_t layer) const;
  // The segment holding flat element `element` (which must be in range).
  const FlatSegment& segment_of(std::int64_t element) const;
  // "key (element i of [r, in])" for a flat element, for messages.
  std::string describe(std::int64_t element) const;
  // A view of `flat` per segment, shaped as the segment, named prefix + key.
  std::vector<Tensor> views(const Tensor& flat, const std::string& prefix) const;

 private:
  std::vector<FlatSegment> segments_;
  std::vector<std::int64_t> ends_;
  std::vector<std::int64_t> layer_begin_;
  std::int64_t elements_ = 0;
};

// AdamW's fp32 scalars for update number `step` (from 1) at learning rate `lr`, formed in double as torch's
// single-tensor AdamW forms them; `grad_scale` is the clipping factor (1: none).
Backend::AdamWScalars adamw_scalars(const OptimizerSettings& settings, double lr, std::int64_t step,
                                    float grad_scale);
// torch.nn.utils.clip_grad_norm_'s factor min(1, max_norm / (norm + 1e-6)) in fp32; 1 when max_norm <= 0.
float clip_factor(double norm, double max_norm);

class AdapterTrainingState {
 public:
  // Copies the adapter's current values into a fp32 master on `backend`, makes the compute copy and the
  // zeroed moments, and rebinds the adapter's pairs to views of the compute copy.
  AdapterTrainingState(Backend& backend, LoraAdapter& adapter);

  const FlatLayout& layout() const { return layout_; }
  Tensor& master() { return master_; }
  Tensor& first_moments() { return m_; }
  Tensor& second_moments() { return v_; }

  // One AdamW update from `gradients` (flat fp32), then the compute copy refreshed.
  void update(const Tensor& gradients, const Backend::AdamWScalars& scalars);

  // Host copies of a flat buffer of this layout (master, moments, gradients), whole or split per segment.
  std::vector<float> host_values(const Tensor& flat) const;
  std::vector<NamedArray> to_arrays(const Tensor& flat) const;
  // Writes per-segment arrays (a checkpoint's) into a flat buffer; InputError naming `what` and the tensor
  // when the set of tensors, a name or a shape differs. Refresh the compute copy after writing the master.
  void from_arrays(const std::vector<NamedArray>& arrays, Tensor& flat, const std::string& what);
  void refresh_compute_copy();

 private:
  Backend& backend_;
  FlatLayout layout_;
  Tensor master_, compute_, m_, v_;
};

}  // namespace slearn
