#include "model/rope_table.hpp"

#include <cmath>
#include <numbers>

namespace slearn {

std::vector<float> rope_inverse_frequencies(const ModelConfig& config) {
  const std::int64_t dim = config.head_dim;
  std::vector<float> inv(static_cast<std::size_t>(dim / 2));
  for (std::int64_t i = 0; i < dim / 2; ++i) {
    // fp32 exponent and power, as torch evaluates base ** (arange(0, dim, 2).float() / dim).
    const float exponent = static_cast<float>(2 * i) / static_cast<float>(dim);
    inv[static_cast<std::size_t>(i)] = 1.0f / std::pow(static_cast<float>(config.rope_theta), exponent);
  }
  if (config.rope_scaling == RopeScaling::Linear) {
    for (auto& f : inv) f = static_cast<float>(f / config.rope_factor);
  } else if (config.rope_scaling == RopeScaling::Llama3) {
    const double old_context = static_cast<double>(config.rope_original_max_position_embeddings);
    const double low_wavelen = old_context / config.rope_low_freq_factor;
    const double high_wavelen = old_context / config.rope_high_freq_factor;
    for (auto& f : inv) {
      const double wavelen = 2.0 * std::numbers::pi / f;
      if (wavelen > low_wavelen) {
        f = static_cast<float>(f / config.rope_factor);  // long wavelengths: fully interpolated
      } else if (wavelen >= high_wavelen) {
        const double smooth = (old_context / wavelen - config.rope_low_freq_factor) /
                              (config.rope_high_freq_factor - config.rope_low_freq_factor);
        f = static_cast<float>((1.0 - smooth) * f / config.rope_factor + smooth * f);
      }
    }
  }
  return inv;
}

RopeTables make_rope_tables(const std::vector<float>& inverse_frequencies, std::int64_t positions) {
  const std::size_t half = inverse_frequencies.size();
  RopeTables tables;
  tables.cos.resize(static_cast<std::size_t>(positions) * half);
  tables.sin.resize(tables.cos.size());
  for (std::int64_t p = 0; p < positions; ++p) {
    for (std::size_t i = 0; i < half; ++i) {
      const float angle = static_cast<float>(p) * inverse_frequencies[i];
      tables.cos[static_cast<std::size_t>(p) * half + i] = std::cos(angle);
      tables.sin[static_cast<std::size_t>(p) * half + i] = std::sin(angle);
    }
  }
  return tables;
}

}  // namespace slearn
