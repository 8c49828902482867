// The learning-rate schedules of transformers (linear warmup, then cosine, linear or constant). AdamW itself,
// the gradient norm and clipping are backend ops over the flat training state (train/flat_adapter.hpp).
#pragma once

#include <cstdint>

#include "slearn/train_config.hpp"

namespace slearn {

// Warmup steps for a run of `total_steps`: warmup_steps when set (>= 0), else ceil(warmup_ratio * total).
std::int64_t warmup_steps_for(const OptimizerSettings& settings, std::int64_t total_steps);
// The learning rate of update number `step` (0-based), as transformers' LambdaLR schedules give it.
double learning_rate_at(const OptimizerSettings& settings, std::int64_t step, std::int64_t total_steps);
}  // namespace slearn
