// float16: the two 16-bit floating-point storage types of attention data,
// bf16 (bfloat16: f32's exponent, 7 mantissa bits) and f16 (IEEE binary16).
// They are storage only: arithmetic converts to float first, so every sum is
// accumulated in f32. Layout-compatible with __nv_bfloat16 and __half.
#pragma once

#include <bit>
#include <cstdint>

namespace cobatch::gpu {

/// bfloat16 bits. Conversion from float rounds to nearest even and keeps NaN a
/// NaN (a NaN whose payload would round into infinity is made quiet instead).
struct bf16 {
  std::uint16_t bits = 0;

  static constexpr bf16 from_float(float f) noexcept {
    const std::uint32_t u = std::bit_cast<std::uint32_t>(f);
    if ((u & 0x7fffffffu) > 0x7f800000u) return bf16{static_cast<std::uint16_t>((u >> 16) | 0x0040u)};
    const std::uint32_t rounding = 0x7fffu + ((u >> 16) & 1u);
    return bf16{static_cast<std::uint16_t>((u + rounding) >> 16)};
  }
  constexpr float to_float() const noexcept { return std::bit_cast<float>(static_cast<std::uint32_t>(bits) << 16); }
  friend constexpr bool operator==(bf16 a, bf16 b) noexcept { return a.bits == b.bits; }
};

/// IEEE 754 binary16 bits. Conversion from float rounds to nearest even,
/// overflows to infinity, keeps subnormals and NaN.
struct f16 {
  std::uint16_t bits = 0;

  static constexpr f16 from_float(float f) noexcept {
    const std::uint32_t u = std::bit_cast<std::uint32_t>(f);
    const std::uint32_t sign = (u >> 16) & 0x8000u;
    const std::uint32_t abs = u & 0x7fffffffu;
    if (abs > 0x7f800000u) return f16{static_cast<std::uint16_t>(sign | 0x7e00u)};  // NaN
    if (abs >= 0x477ff000u) return f16{static_cast<std::uint16_t>(sign | 0x7c00u)};  // rounds to inf
    if (abs < 0x38800000u) {                                                          // subnormal or zero
      if (abs < 0x33000000u) return f16{static_cast<std::uint16_t>(sign)};
      const std::uint32_t mant = (abs & 0x007fffffu) | 0x00800000u;
      const int shift = 126 - static_cast<int>(abs >> 23);  // 14 .. 24
      const std::uint32_t half = 1u << (shift - 1);
      std::uint32_t r = mant >> shift;
      const std::uint32_t rest = mant & ((1u << shift) - 1u);
      if (rest > half || (rest == half && (r & 1u))) ++r;
      return f16{static_cast<std::uint16_t>(sign | r)};
    }
    std::uint32_t r = ((abs - 0x38000000u) >> 13);
    const std::uint32_t rest = abs & 0x1fffu;
    if (rest > 0x1000u || (rest == 0x1000u && (r & 1u))) ++r;
    return f16{static_cast<std::uint16_t>(sign | r)};
  }
  constexpr float to_float() const noexcept {
    const std::uint32_t sign = static_cast<std::uint32_t>(bits & 0x8000u) << 16;
    const std::uint32_t exp = (bits >> 10) & 0x1fu;
    const std::uint32_t mant = bits & 0x3ffu;
    if (exp == 0x1fu) return std::bit_cast<float>(sign | 0x7f800000u | (mant << 13));
    if (exp != 0) return std::bit_cast<float>(sign | ((exp + 112u) << 23) | (mant << 13));
    if (mant == 0) return std::bit_cast<float>(sign);
    // Subnormal: value = mant * 2^-24.
    const float v = static_cast<float>(mant) * 5.9604644775390625e-08f;
    return sign != 0 ? -v : v;
  }
  friend constexpr bool operator==(f16 a, f16 b) noexcept { return a.bits == b.bits; }
};

static_assert(sizeof(bf16) == 2 && sizeof(f16) == 2);

}  // namespace cobatch::gpu
