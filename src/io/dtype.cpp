// Element types and their conversions to and from fp32.
#include "slearn/dtype.hpp"

#include <bit>
#include <cstring>

#include "slearn/error.hpp"

namespace slearn {

static_assert(std::endian::native == std::endian::little,
              "safetensors data is little-endian; this code reads it in place");

std::size_t dtype_size(DType dtype) {
  switch (dtype) {
    case DType::F32: return 4;
    case DType::F16: return 2;
    case DType::BF16: return 2;
    case DType::I32: return 4;
    case DType::I64: return 8;
    case DType::U8: return 1;
  }
  throw Error("dtype_size: invalid DType value");
}

std::string_view dtype_name(DType dtype) {
  switch (dtype) {
    case DType::F32: return "F32";
    case DType::F16: return "F16";
    case DType::BF16: return "BF16";
    case DType::I32: return "I32";
    case DType::I64: return "I64";
    case DType::U8: return "U8";
  }
  throw Error("dtype_name: invalid DType value");
}

DType dtype_from_name(std::string_view name) {
  if (name == "F32") return DType::F32;
  if (name == "F16") return DType::F16;
  if (name == "BF16") return DType::BF16;
  if (name == "I32") return DType::I32;
  if (name == "I64") return DType::I64;
  if (name == "U8") return DType::U8;
  throw InputError("unknown dtype \"" + std::string(name) + "\" (known: F32, F16, BF16, I32, I64, U8)");
}

// Branch-free so that the conversion loop below vectorises. Normal halves rebias the exponent (+112);
// inf/NaN get the all-ones fp32 exponent (payload kept); subnormal halves are scaled into a normal fp32
// number by adding the implicit bit and subtracting 2^-14 exactly (the result is always a normal fp32
// value, so flush-to-zero modes cannot affect it).
float f16_to_f32(std::uint16_t bits) {
  const std::uint32_t sign = static_cast<std::uint32_t>(bits & 0x8000u) << 16;
  const std::uint32_t magnitude = static_cast<std::uint32_t>(bits & 0x7fffu) << 13;
  const std::uint32_t exponent = magnitude & 0x0f800000u;  // the half's exponent field, shifted
  const std::uint32_t normal = magnitude + (112u << 23);
  const std::uint32_t special = normal + (112u << 23);  // exponent 31 -> 31 + 224 = 255
  const std::uint32_t subnormal_biased = magnitude + (113u << 23);
  float subnormal;
  std::memcpy(&subnormal, &subnormal_biased, sizeof subnormal);
  subnormal -= 6.103515625e-05f;  // 2^-14
  std::uint32_t subnormal_word;
  std::memcpy(&subnormal_word, &subnormal, sizeof subnormal_word);
  const std::uint32_t word =
      exponent == 0x0f800000u ? special : (exponent == 0 ? subnormal_word : normal);
  const std::uint32_t result = word | sign;
  float value;
  std::memcpy(&value, &result, sizeof value);
  return value;
}

// Round to nearest even; overflow goes to inf; NaN stays NaN (quiet, sign and high payload kept).
std::uint16_t f32_to_f16(float value) {
  std::uint32_t word;
  std::memcpy(&word, &value, sizeof word);
  const auto sign = static_cast<std::uint16_t>((word >> 16) & 0x8000u);
  const std::uint32_t magnitude = word & 0x7fffffffu;
  if (magnitude > 0x7f800000u) {  // NaN
    return static_cast<std::uint16_t>(sign | 0x7e00u | ((magnitude >> 13) & 0x3ffu));
  }
  if (magnitude >= 0x477ff000u) {  // >= 65520, halfway past the largest half (65504): rounds to inf
    return static_cast<std::uint16_t>(sign | 0x7c00u);
  }
  if (magnitude < 0x38800000u) {  // below 2^-14: a half subnormal (or zero)
    const std::uint32_t exponent = magnitude >> 23;
    // value / 2^-24 = mantissa_with_implicit_bit * 2^(exponent - 126); shift right by 126 - exponent.
    if (exponent < 102) return sign;  // below 2^-25: rounds to zero (fp32 subnormals included)
    const std::uint32_t mantissa = (magnitude & 0x7fffffu) | 0x800000u;
    const std::uint32_t shift = 126u - exponent;  // 14..24
    std::uint32_t quotient = mantissa >> shift;
    const std::uint32_t remainder = mantissa & ((1u << shift) - 1u);
    const std::uint32_t half = 1u << (shift - 1u);
    if (remainder > half || (remainder == half && (quotient & 1u))) ++quotient;
    return static_cast<std::uint16_t>(sign | quotient);  // quotient 0x400 is the smallest normal
  }
  std::uint32_t half_bits = ((magnitude >> 23) - 112u) << 10 | ((magnitude >> 13) & 0x3ffu);
  const std::uint32_t remainder = magnitude & 0x1fffu;
  if (remainder > 0x1000u || (remainder == 0x1000u && (half_bits & 1u))) ++half_bits;  // may carry up
  return static_cast<std::uint16_t>(sign | half_bits);
}

namespace {

// Below this many elements a conversion runs on the calling thread.
constexpr std::size_t kParallelThreshold = std::size_t{1} << 20;

// `src` may be unaligned (safetensors does not require the header length to be a multiple of the element
// size), so elements are loaded with memcpy, which compiles to plain (vector) loads.
void bf16_block(const unsigned char* src, std::size_t count, float* dst) {
  for (std::size_t i = 0; i < count; ++i) {
    std::uint16_t bits;
    std::memcpy(&bits, src + 2 * i, sizeof bits);
    dst[i] = bf16_to_f32(bits);
  }
}

void f16_block(const unsigned char* src, std::size_t count, float* dst) {
  for (std::size_t i = 0; i < count; ++i) {
    std::uint16_t bits;
    std::memcpy(&bits, src + 2 * i, sizeof bits);
    dst[i] = f16_to_f32(bits);
  }
}

void f32_block(const unsigned char* src, std::size_t count, float* dst) {
  std::memcpy(dst, src, count * sizeof(float));
}

template <typename Block>
void convert_blocks(Block block, const unsigned char* src, std::size_t element_size, std::size_t count,
                    float* dst) {
  if (count < kParallelThreshold) {
    block(src, count, dst);
    return;
  }
  // Blocks of 64 Ki elements: large enough to amortise scheduling, small enough to spread page faults of a
  // memory-mapped source over the threads.
  constexpr std::size_t kBlock = std::size_t{1} << 16;
  const std::size_t blocks = (count + kBlock - 1) / kBlock;
#pragma omp parallel for schedule(static)
  for (std::size_t b = 0; b < blocks; ++b) {
    const std::size_t first = b * kBlock;
    const std::size_t n = first + kBlock <= count ? kBlock : count - first;
    block(src + first * element_size, n, dst + first);
  }
}

}  // namespace

void convert_to_f32(DType dtype, const void* src, std::size_t count, float* dst) {
  const auto* bytes = static_cast<const unsigned char*>(src);
  switch (dtype) {
    case DType::F32:
      if (count > 0) convert_blocks(f32_block, bytes, 4, count, dst);
      return;
    case DType::BF16:
      if (count > 0) convert_blocks(bf16_block, bytes, 2, count, dst);
      return;
    case DType::F16:
      if (count > 0) convert_blocks(f16_block, bytes, 2, count, dst);
      return;
    case DType::I32:
    case DType::I64:
    case DType::U8: break;
  }
  throw InputError("cannot convert dtype " + std::string(dtype_name(dtype)) +
                   " to fp32 (only F32, F16 and BF16 are floating-point weights)");
}

}  // namespace slearn
