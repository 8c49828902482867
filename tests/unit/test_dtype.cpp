// Element types and fp32 conversions: bf16 and f16 both ways, including subnormals, inf, NaN and ties.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <vector>

#include "slearn/dtype.hpp"
#include "slearn/error.hpp"

namespace {

using namespace slearn;

float from_bits(std::uint32_t word) {
  float value;
  std::memcpy(&value, &word, sizeof value);
  return value;
}

std::uint32_t to_bits(float value) {
  std::uint32_t word;
  std::memcpy(&word, &value, sizeof word);
  return word;
}

// The value of a half computed independently of the implementation, in double.
double reference_half(std::uint16_t h) {
  const int sign = (h & 0x8000) ? -1 : 1;
  const int exponent = (h >> 10) & 0x1f;
  const int mantissa = h & 0x3ff;
  if (exponent == 0) return sign * std::ldexp(static_cast<double>(mantissa), -24);
  if (exponent == 31) {
    return mantissa == 0 ? sign * std::numeric_limits<double>::infinity() : std::numeric_limits<double>::quiet_NaN();
  }
  return sign * std::ldexp(static_cast<double>(1024 + mantissa), exponent - 25);
}

TEST(DType, NamesAndSizes) {
  const DType all[] = {DType::F32, DType::F16, DType::BF16, DType::I32, DType::I64, DType::U8};
  const std::size_t sizes[] = {4, 2, 2, 4, 8, 1};
  for (std::size_t i = 0; i < 6; ++i) {
    EXPECT_EQ(dtype_from_name(dtype_name(all[i])), all[i]);
    EXPECT_EQ(dtype_size(all[i]), sizes[i]);
  }
  EXPECT_EQ(dtype_name(DType::BF16), "BF16");
}

TEST(DType, UnknownNameThrowsInputError) {
  try {
    dtype_from_name("F64");
    FAIL() << "expected InputError";
  } catch (const InputError& e) {
    EXPECT_NE(std::string(e.what()).find("F64"), std::string::npos) << e.what();
  }
  EXPECT_THROW(dtype_from_name("bf16"), InputError);  // names are case-sensitive, as in safetensors
}

TEST(DType, Bf16ToF32) {
  EXPECT_EQ(bf16_to_f32(0x3f80), 1.0f);
  EXPECT_EQ(bf16_to_f32(0xc000), -2.0f);
  EXPECT_EQ(bf16_to_f32(0x0000), 0.0f);
  EXPECT_TRUE(std::signbit(bf16_to_f32(0x8000)));
  EXPECT_EQ(bf16_to_f32(0x7f80), std::numeric_limits<float>::infinity());
  EXPECT_EQ(bf16_to_f32(0xff80), -std::numeric_limits<float>::infinity());
  EXPECT_TRUE(std::isnan(bf16_to_f32(0x7fc0)));
  EXPECT_EQ(bf16_to_f32(0x0001), std::ldexp(1.0f, -133));  // smallest subnormal
}

TEST(DType, F32ToBf16RoundsToNearestEven) {
  EXPECT_EQ(f32_to_bf16(1.0f), 0x3f80);
  EXPECT_EQ(f32_to_bf16(from_bits(0x3f808000u)), 0x3f80);  // tie, 0x3f80 is even
  EXPECT_EQ(f32_to_bf16(from_bits(0x3f818000u)), 0x3f82);  // tie, rounds up to even
  EXPECT_EQ(f32_to_bf16(from_bits(0x3f808001u)), 0x3f81);  // just above the tie
  EXPECT_EQ(f32_to_bf16(from_bits(0x3f807fffu)), 0x3f80);  // just below the tie
  EXPECT_EQ(f32_to_bf16(-1.0f), 0xbf80);
  EXPECT_EQ(f32_to_bf16(std::numeric_limits<float>::infinity()), 0x7f80);
  EXPECT_EQ(f32_to_bf16(-std::numeric_limits<float>::infinity()), 0xff80);
  EXPECT_EQ(f32_to_bf16(std::numeric_limits<float>::max()), 0x7f80);  // rounds up past the largest bf16
  EXPECT_EQ(f32_to_bf16(from_bits(0x00000001u)), 0x0000);            // fp32 subnormal below bf16's
  EXPECT_EQ(f32_to_bf16(from_bits(0x00010000u)), 0x0001);            // exactly a bf16 subnormal
  // NaN stays NaN, even one whose payload lies only in the low 16 bits.
  const std::uint16_t nan = f32_to_bf16(from_bits(0x7f800001u));
  EXPECT_EQ(nan & 0x7f80, 0x7f80);
  EXPECT_NE(nan & 0x007f, 0);
  EXPECT_TRUE(std::isnan(bf16_to_f32(f32_to_bf16(std::numeric_limits<float>::quiet_NaN()))));
}

TEST(DType, Bf16RoundTripsEveryValue) {
  for (std::uint32_t h = 0; h <= 0xffff; ++h) {
    const auto bits = static_cast<std::uint16_t>(h);
    const float value = bf16_to_f32(bits);
    if (std::isnan(value)) {
      EXPECT_TRUE(std::isnan(bf16_to_f32(f32_to_bf16(value))));
    } else {
      ASSERT_EQ(f32_to_bf16(value), bits) << "bf16 " << h;
    }
  }
}

TEST(DType, F16ToF32EveryValueExact) {
  for (std::uint32_t h = 0; h <= 0xffff; ++h) {
    const auto bits = static_cast<std::uint16_t>(h);
    const float value = f16_to_f32(bits);
    const double expected = reference_half(bits);
    if (std::isnan(expected)) {
      ASSERT_TRUE(std::isnan(value)) << "f16 " << h;
      ASSERT_EQ(std::signbit(value), (h & 0x8000) != 0) << "f16 " << h;
      // The payload moves to the top of the fp32 mantissa.
      ASSERT_EQ(to_bits(value) & 0x7fffffu, (h & 0x3ffu) << 13) << "f16 " << h;
    } else {
      ASSERT_EQ(static_cast<double>(value), expected) << "f16 " << h;
      ASSERT_EQ(std::signbit(value), (h & 0x8000) != 0) << "f16 " << h;
    }
  }
}

TEST(DType, F16SpecialValues) {
  EXPECT_EQ(f16_to_f32(0x3c00), 1.0f);
  EXPECT_EQ(f16_to_f32(0x0001), std::ldexp(1.0f, -24));    // smallest subnormal
  EXPECT_EQ(f16_to_f32(0x03ff), 1023.0f * std::ldexp(1.0f, -24));  // largest subnormal
  EXPECT_EQ(f16_to_f32(0x0400), std::ldexp(1.0f, -14));    // smallest normal
  EXPECT_EQ(f16_to_f32(0x7bff), 65504.0f);
  EXPECT_EQ(f16_to_f32(0x7c00), std::numeric_limits<float>::infinity());
  EXPECT_EQ(f16_to_f32(0xfc00), -std::numeric_limits<float>::infinity());
  EXPECT_TRUE(std::isnan(f16_to_f32(0x7e00)));
  EXPECT_TRUE(std::isnan(f16_to_f32(0x7c01)));  // signalling pattern is still NaN
  EXPECT_TRUE(std::signbit(f16_to_f32(0x8000)));
  EXPECT_EQ(f16_to_f32(0x8000), 0.0f);
}

TEST(DType, F32ToF16RoundTripsEveryValue) {
  for (std::uint32_t h = 0; h <= 0xffff; ++h) {
    const auto bits = static_cast<std::uint16_t>(h);
    const float value = f16_to_f32(bits);
    if (std::isnan(value)) {
      const std::uint16_t back = f32_to_f16(value);
      ASSERT_EQ(back & 0x7c00, 0x7c00) << "f16 " << h;
      ASSERT_NE(back & 0x03ff, 0) << "f16 " << h;
      ASSERT_EQ(back & 0x8000, h & 0x8000) << "f16 " << h;
    } else {
      ASSERT_EQ(f32_to_f16(value), bits) << "f16 " << h;
    }
  }
}

TEST(DType, F32ToF16RoundsToNearestEven) {
  const float ulp = std::ldexp(1.0f, -10);  // spacing of halves in [1, 2)
  EXPECT_EQ(f32_to_f16(1.0f + ulp / 2), 0x3c00);                   // tie to even (down)
  EXPECT_EQ(f32_to_f16(1.0f + 3 * ulp / 2), 0x3c02);               // tie to even (up)
  EXPECT_EQ(f32_to_f16(std::nextafter(1.0f + ulp / 2, 2.0f)), 0x3c01);  // just above the tie
  EXPECT_EQ(f32_to_f16(std::nextafter(1.0f + ulp / 2, 0.0f)), 0x3c00);  // just below the tie
  // Overflow: 65504 is the largest half, 65520 is the tie between it and 2^16 and rounds to inf.
  EXPECT_EQ(f32_to_f16(65504.0f), 0x7bff);
  EXPECT_EQ(f32_to_f16(65519.0f), 0x7bff);
  EXPECT_EQ(f32_to_f16(65520.0f), 0x7c00);
  EXPECT_EQ(f32_to_f16(1e10f), 0x7c00);
  EXPECT_EQ(f32_to_f16(-1e10f), 0xfc00);
  EXPECT_EQ(f32_to_f16(std::numeric_limits<float>::infinity()), 0x7c00);
  EXPECT_EQ(f32_to_f16(-std::numeric_limits<float>::infinity()), 0xfc00);
  // Subnormal results, with ties at the bottom of the range.
  const float tiny = std::ldexp(1.0f, -24);  // smallest half subnormal
  EXPECT_EQ(f32_to_f16(tiny), 0x0001);
  EXPECT_EQ(f32_to_f16(tiny / 2), 0x0000);                            // tie between 0 and 1: to 0
  EXPECT_EQ(f32_to_f16(std::nextafter(tiny / 2, 1.0f)), 0x0001);      // just above the tie
  EXPECT_EQ(f32_to_f16(3 * tiny / 2), 0x0002);                        // tie between 1 and 2: to 2
  EXPECT_EQ(f32_to_f16(5 * tiny / 2), 0x0002);                        // tie between 2 and 3: to 2
  EXPECT_EQ(f32_to_f16(-tiny / 4), 0x8000);
  EXPECT_EQ(f32_to_f16(std::ldexp(1.0f, -14) - tiny / 2), 0x0400);    // tie rounds up into the normals
  EXPECT_EQ(f32_to_f16(std::ldexp(1.0f, -14) - tiny), 0x03ff);
  EXPECT_EQ(f32_to_f16(from_bits(0x00000001u)), 0x0000);              // fp32 subnormal
  EXPECT_EQ(f32_to_f16(-0.0f), 0x8000);
}

#if defined(__FLT16_MAX__)
// The compiler's own _Float16 conversion (correctly rounded) as an independent reference over a spread of
// fp32 bit patterns covering every exponent.
TEST(DType, F32ToF16MatchesCompilerConversion) {
  for (std::uint64_t word = 0; word <= 0xffffffffu; word += 4099) {
    const float value = from_bits(static_cast<std::uint32_t>(word));
    if (std::isnan(value)) continue;
    const _Float16 reference = static_cast<_Float16>(value);
    std::uint16_t expected;
    std::memcpy(&expected, &reference, sizeof expected);
    ASSERT_EQ(f32_to_f16(value), expected) << "fp32 bits " << std::hex << word;
  }
}
#endif

TEST(DType, ConvertToF32AllFloatTypesUnalignedAndLarge) {
  // Large enough to take the parallel path, from an odd address.
  const std::size_t count = (std::size_t{1} << 21) + 37;
  std::vector<float> values(count);
  for (std::size_t i = 0; i < count; ++i) {
    values[i] = static_cast<float>(static_cast<double>(i % 5003) * 0.37 - 900.0);
  }
  std::vector<unsigned char> storage(count * 4 + 1);
  std::vector<float> out(count);

  std::memcpy(storage.data() + 1, values.data(), count * 4);
  convert_to_f32(DType::F32, storage.data() + 1, count, out.data());
  EXPECT_EQ(out, values);

  for (const DType dtype : {DType::BF16, DType::F16}) {
    std::vector<float> expected(count);
    for (std::size_t i = 0; i < count; ++i) {
      const std::uint16_t bits = dtype == DType::BF16 ? f32_to_bf16(values[i]) : f32_to_f16(values[i]);
      std::memcpy(storage.data() + 1 + 2 * i, &bits, 2);
      expected[i] = dtype == DType::BF16 ? bf16_to_f32(bits) : f16_to_f32(bits);
    }
    convert_to_f32(dtype, storage.data() + 1, count, out.data());
    EXPECT_EQ(out, expected) << dtype_name(dtype);
  }
}

TEST(DType, ConvertToF32RejectsIntegerTypes) {
  const std::int32_t ints[2] = {1, 2};
  float out[2];
  EXPECT_THROW(convert_to_f32(DType::I32, ints, 2, out), InputError);
  EXPECT_THROW(convert_to_f32(DType::U8, ints, 2, out), InputError);
  EXPECT_NO_THROW(convert_to_f32(DType::F32, ints, 0, out));
}

}  // namespace
