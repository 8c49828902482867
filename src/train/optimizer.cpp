#include "train/optimizer.hpp"

#include <cmath>
#include <numbers>

#include "slearn/error.hpp"

namespace slearn {

std::int64_t warmup_steps_for(const OptimizerSettings& s, std::int64_t total_steps) {
  if (s.warmup_steps >= 0) return s.warmup_steps;
  return static_cast<std::int64_t>(std::ceil(s.warmup_ratio * static_cast<double>(total_steps)));
}

double learning_rate_at(const OptimizerSettings& s, std::int64_t step, std::int64_t total_steps) {
  const std::int64_t warmup = warmup_steps_for(s, total_steps);
  double factor;
  if (step < warmup) {
    factor = static_cast<double>(step) / static_cast<double>(std::max<std::int64_t>(1, warmup));
  } else if (s.lr_schedule == "constant") {
    factor = 1.0;
  } else {
    const double span = static_cast<double>(std::max<std::int64_t>(1, total_steps - warmup));
    const double progress = static_cast<double>(step - warmup) / span;
    if (s.lr_schedule == "cosine")
      factor = std::max(0.0, 0.5 * (1.0 + std::cos(std::numbers::pi * progress)));
    else if (s.lr_schedule == "linear")
      factor = std::max(0.0, static_cast<double>(total_steps - step) / span);
    else
      throw InputError("unknown lr_schedule \"" + s.lr_schedule + "\"");
  }
  return s.learning_rate * factor;
}

}  // namespace slearn
