// data_type: the element types device memory, kernels and communicators
// exchange, with the C++ type each stands for. Plain C++17, so that .cu files
// compiled by nvcc can include it.
#pragma once

#include <cstddef>
#include <cstdint>

namespace cobatch::gpu {

// The 16-bit storage types (float16.hpp); named here only.
struct bf16;
struct f16;

/// bf16 and f16 are storage types (float16.hpp): reductions over them
/// accumulate in f32 and round once.
enum class data_type { f32, f64, i32, i64, u8, bf16, f16 };

constexpr std::size_t size_of(data_type t) noexcept {
  switch (t) {
    case data_type::f32: return 4;
    case data_type::f64: return 8;
    case data_type::i32: return 4;
    case data_type::i64: return 8;
    case data_type::u8: return 1;
    case data_type::bf16: return 2;
    case data_type::f16: return 2;
  }
  return 0;
}

constexpr const char* name_of(data_type t) noexcept {
  switch (t) {
    case data_type::f32: return "f32";
    case data_type::f64: return "f64";
    case data_type::i32: return "i32";
    case data_type::i64: return "i64";
    case data_type::u8: return "u8";
    case data_type::bf16: return "bf16";
    case data_type::f16: return "f16";
  }
  return "unknown";
}

/// The data_type of a C++ element type (float, double, int32, int64, uint8,
/// bf16, f16); other types do not compile.
template <class T>
inline constexpr data_type data_type_of = [] {
  static_assert(sizeof(T) == 0, "no cobatch::gpu::data_type for this element type");
  return data_type::u8;
}();
template <> inline constexpr data_type data_type_of<float> = data_type::f32;
template <> inline constexpr data_type data_type_of<double> = data_type::f64;
template <> inline constexpr data_type data_type_of<std::int32_t> = data_type::i32;
template <> inline constexpr data_type data_type_of<std::int64_t> = data_type::i64;
template <> inline constexpr data_type data_type_of<std::uint8_t> = data_type::u8;
template <> inline constexpr data_type data_type_of<bf16> = data_type::bf16;
template <> inline constexpr data_type data_type_of<f16> = data_type::f16;

}  // namespace cobatch::gpu
