// Vector arithmetic for the host backend's kernels and the host model's
// elementwise work: four floats at a time through the GCC and Clang vector
// extension, a vectorisable exp, and the macro that builds a hot function
// twice (AVX2 with FMA, and the baseline) for the CPU to choose at load time.
#pragma once

#include <bit>
#include <cstdint>
#include <cstring>

// COBATCH_HOST_CLONES before a function builds it for x86-64-v3 (AVX2, FMA)
// and for the baseline, chosen at load time by the CPU (GCC's
// target_clones). Everything such a function calls in its loops must be
// inlined into it (always_inline) to be built with the clone's instructions.
// Not under the sanitizers: the clones' resolver runs while the program is
// relocated, before a sanitizer's runtime is up, and ThreadSanitizer's
// instrumented resolver crashes there. GCC only: the Clang build is the
// warnings check, built for the baseline.
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && !defined(__SANITIZE_ADDRESS__) && \
    !defined(__SANITIZE_THREAD__)
#define COBATCH_HOST_CLONES __attribute__((target_clones("arch=x86-64-v3", "default")))
#else
#define COBATCH_HOST_CLONES
#endif

// For the functions a clone calls; the _LAMBDA form goes after a lambda's
// parameter list.
#if defined(__GNUC__)
#define COBATCH_ALWAYS_INLINE __attribute__((always_inline)) inline
#define COBATCH_ALWAYS_INLINE_LAMBDA __attribute__((always_inline))
#else
#define COBATCH_ALWAYS_INLINE inline
#define COBATCH_ALWAYS_INLINE_LAMBDA
#endif

namespace cobatch::gpu::detail {

// Four floats (or int32s) as one SSE register. 16 bytes is the baseline of
// x86-64 (SSE2) and AArch64 (NEON), so such a value never changes a calling
// convention whatever the function is built for (32-byte vectors do where
// AVX is off, which GCC and Clang warn about).
using f32x4 = float __attribute__((vector_size(16)));
using i32x4 = std::int32_t __attribute__((vector_size(16)));

COBATCH_ALWAYS_INLINE f32x4 load4(const float* p) noexcept {
  f32x4 v;
  std::memcpy(&v, p, sizeof v);
  return v;
}
COBATCH_ALWAYS_INLINE void store4(float* p, f32x4 v) noexcept { std::memcpy(p, &v, sizeof v); }
/// yes where mask is all ones, no where it is 0 (mask from a vector compare).
COBATCH_ALWAYS_INLINE f32x4 select(i32x4 mask, f32x4 yes, f32x4 no) noexcept {
  return std::bit_cast<f32x4>((mask & std::bit_cast<i32x4>(yes)) | (~mask & std::bit_cast<i32x4>(no)));
}
/// All ones where x is neither infinite nor NaN: an integer test of the
/// exponent bits (a float compare against infinity is also a test for NaN).
COBATCH_ALWAYS_INLINE i32x4 finite4(f32x4 x) noexcept {
  return (std::bit_cast<i32x4>(x) & 0x7f800000) != 0x7f800000;
}
COBATCH_ALWAYS_INLINE f32x4 abs4(f32x4 x) noexcept {
  return std::bit_cast<f32x4>(std::bit_cast<i32x4>(x) & 0x7fffffff);
}

// 2^n for an integral n in [-126, 0], built in the exponent bits.
COBATCH_ALWAYS_INLINE float pow2(float n) noexcept {
  return std::bit_cast<float>((static_cast<std::int32_t>(n) + 127) << 23);
}
COBATCH_ALWAYS_INLINE f32x4 pow2(f32x4 n) noexcept {
  return std::bit_cast<f32x4>((__builtin_convertvector(n, i32x4) + 127) << 23);
}

// exp(x) for x in [-87, 0], in a form the compiler can vectorise (std::exp
// is a library call per element): x = n ln2 + r with |r| <= ln2/2, exp(r) by
// Cephes' expf polynomial (about 1 ulp), 2^n put into the exponent bits. F is
// float or f32x4. exp(-87) ~ 1e-38 is the smallest result.
template <class F>
COBATCH_ALWAYS_INLINE F exp_nonpositive(F x) noexcept {
  constexpr float log2e = 1.44269504088896341f, ln2_hi = 0.693359375f, ln2_lo = -2.12194440e-4f;
  constexpr float round_magic = 12582912.0f;  // 1.5 * 2^23: adding it rounds to an integer
  const F n = (x * log2e + round_magic) - round_magic;
  const F r = x - n * ln2_hi - n * ln2_lo;
  F p = r * 1.9875691500e-4f + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  const F e = p * r * r + r + 1.0f;
  return e * pow2(n);
}

}  // namespace cobatch::gpu::detail
