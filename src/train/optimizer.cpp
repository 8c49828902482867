#include "train/optimizer.hpp"

#include <cmath>
#include <numbers>

#include "slearn/error.hpp"

namespace slearn {

AdamW::AdamW(const OptimizerSettings& settings, const std::vector<Tensor*>& parameters) : settings_(settings) {
  for (const Tensor* p : parameters) {
    m_.push_back(Tensor::host_f32(p->shape(), "adam_m." + p->name()));
    v_.push_back(Tensor::host_f32(p->shape(), "adam_v." + p->name()));
  }
}

void AdamW::update(const std::vector<Tensor*>& parameters, const std::vector<Tensor>& gradients, double lr,
                   std::int64_t step) {
  if (parameters.size() != gradients.size() || parameters.size() != m_.size())
    throw Error("AdamW: parameters, gradients and moments differ in count");
  // Scalars are formed in double and applied in fp32, as torch's single-tensor AdamW does.
  const double beta1 = settings_.adam_beta1, beta2 = settings_.adam_beta2;
  const auto decay = static_cast<float>(1.0 - lr * settings_.weight_decay);
  const auto one_minus_beta1 = static_cast<float>(1.0 - beta1);
  const auto beta2_f = static_cast<float>(beta2), one_minus_beta2 = static_cast<float>(1.0 - beta2);
  const double correction1 = 1.0 - std::pow(beta1, static_cast<double>(step));
  const auto correction2_sqrt = static_cast<float>(std::sqrt(1.0 - std::pow(beta2, static_cast<double>(step))));
  const auto step_size = static_cast<float>(lr / correction1);
  const auto eps = static_cast<float>(settings_.adam_epsilon);
  for (std::size_t i = 0; i < parameters.size(); ++i) {
    float* p = parameters[i]->f32();
    const float* g = gradients[i].f32();
    float* m = m_[i].f32();
    float* v = v_[i].f32();
    const std::int64_t count = parameters[i]->numel();
#pragma omp parallel for simd if (count > (1 << 16))
    for (std::int64_t j = 0; j < count; ++j) {
      p[j] *= decay;
      m[j] += one_minus_beta1 * (g[j] - m[j]);  // torch's lerp with weight < 0.5
      v[j] = v[j] * beta2_f + one_minus_beta2 * g[j] * g[j];
      const float denom = std::sqrt(v[j]) / correction2_sqrt + eps;
      p[j] += -step_size * (m[j] / denom);
    }
  }
}

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

double global_norm(const std::vector<Tensor>& gradients) {
  double total = 0;
  for (const Tensor& g : gradients) {
    const float* data = g.f32();
    double sum = 0;
    for (std::int64_t i = 0; i < g.numel(); ++i) sum += static_cast<double>(data[i]) * data[i];
    total += sum;
  }
  return std::sqrt(total);
}

void clip_gradients(std::vector<Tensor>& gradients, double norm, double max_norm) {
  if (max_norm <= 0) return;
  const double coefficient = max_norm / (norm + 1e-6);
  if (coefficient >= 1.0) return;
  const auto factor = static_cast<float>(coefficient);
  for (Tensor& g : gradients) {
    float* data = g.f32();
    for (std::int64_t i = 0; i < g.numel(); ++i) data[i] *= factor;
  }
}

}  // namespace slearn
