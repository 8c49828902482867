// Element types of stored tensors and the conversions the CPU backend needs (it computes in fp32).
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <string>
#include <string_view>

namespace slearn {

enum class DType { F32, F16, BF16, I32, I64, U8 };

std::size_t dtype_size(DType dtype);
std::string_view dtype_name(DType dtype);           // safetensors spelling: "F32", "BF16", ...
DType dtype_from_name(std::string_view name);        // throws InputError for unknown names

inline float bf16_to_f32(std::uint16_t bits) {
  std::uint32_t word = static_cast<std::uint32_t>(bits) << 16;
  float value;
  std::memcpy(&value, &word, sizeof value);
  return value;
}

// Round to nearest even, as torch does; NaN stays NaN.
inline std::uint16_t f32_to_bf16(float value) {
  std::uint32_t word;
  std::memcpy(&word, &value, sizeof word);
  if ((word & 0x7fffffffu) > 0x7f800000u) return static_cast<std::uint16_t>((word >> 16) | 0x40u);
  word += 0x7fffu + ((word >> 16) & 1u);
  return static_cast<std::uint16_t>(word >> 16);
}

float f16_to_f32(std::uint16_t bits);
std::uint16_t f32_to_f16(float value);

// Converts `count` elements of `src` (stored as `dtype`) to fp32.
void convert_to_f32(DType dtype, const void* src, std::size_t count, float* dst);

}  // namespace slearn
