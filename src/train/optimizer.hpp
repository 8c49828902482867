// AdamW with decoupled weight decay, computed as torch.optim.AdamW computes it in fp32; the learning-rate
// schedules of transformers (linear warmup, then cosine, linear or constant); global-norm gradient clipping.
#pragma once

#include <cstdint>
#include <vector>

#include "slearn/tensor.hpp"
#include "slearn/train_config.hpp"

namespace slearn {

class AdamW {
 public:
  AdamW(const OptimizerSettings& settings, const std::vector<Tensor*>& parameters);
  // One update with learning rate `lr`; `step` counts updates from 1 (bias correction).
  void update(const std::vector<Tensor*>& parameters, const std::vector<Tensor>& gradients, double lr,
              std::int64_t step);
  std::vector<Tensor>& first_moments() { return m_; }
  std::vector<Tensor>& second_moments() { return v_; }

 private:
  OptimizerSettings settings_;
  std::vector<Tensor> m_, v_;
};

// Warmup steps for a run of `total_steps`: warmup_steps when set (>= 0), else ceil(warmup_ratio * total).
std::int64_t warmup_steps_for(const OptimizerSettings& settings, std::int64_t total_steps);
// The learning rate of update number `step` (0-based), as transformers' LambdaLR schedules give it.
double learning_rate_at(const OptimizerSettings& settings, std::int64_t step, std::int64_t total_steps);
// sqrt(sum of squares) over all gradients, accumulated in double in a fixed order.
double global_norm(const std::vector<Tensor>& gradients);
// torch.nn.utils.clip_grad_norm_: scales every gradient by min(1, max_norm / (norm + 1e-6)).
void clip_gradients(std::vector<Tensor>& gradients, double norm, double max_norm);

}  // namespace slearn
