// The values of Backend::fill_random: element `index` of a tensor filled under `key` is a function of
// (key, index) alone, plain integer arithmetic and one fp32 multiply, compiled here and in the CUDA
// kernels (C++17, host and device), so both backends make bit-identical random weights (then rounded to
// bf16 with round-to-nearest-even on both).
#pragma once

#include <cstdint>

#include "slearn/mix64.hpp"

namespace slearn {

// Uniform in [-scale, scale) before the bf16 rounding: 24 random bits, so 2u - 1 is exact in fp32 and the
// only rounding is the product with scale.
SLEARN_HOST_DEVICE inline float random_fill_value(std::uint64_t key, std::uint64_t index, float scale) {
  const std::uint64_t z = mix64(key * 0x9e3779b97f4a7c15ull + index + 0x632be59bd9b4e019ull);
  const float u = static_cast<float>(z >> 40) * (1.0f / 16777216.0f);
  const float centred = 2.0f * u - 1.0f;
  return centred * scale;
}

}  // namespace slearn
