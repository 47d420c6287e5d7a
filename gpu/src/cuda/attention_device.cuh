// What the attention kernels' .cu files share: warp size and block shape,
// bf16 bits and their conversions, warp reductions, DCP visibility, and the
// host-side dispatch from run-time values (storage type, head dim) to
// template arguments. Included only by .cu files of this folder.
#pragma once

#include "attention_launch.hpp"
#include "kernel_launch.hpp"

#include <cuda_runtime.h>

#include <cstdint>
#include <type_traits>

namespace cobatch::gpu::cuda::attention_launch::device {

using kernels::attention_request;
using kernels::attention_work_item;
using kernels::chunk_merge_item;

constexpr int warp = 32;
constexpr int warps_per_block = 4;

__device__ __forceinline__ float bf16_to_float(std::uint16_t b) { return __uint_as_float(static_cast<unsigned>(b) << 16); }
__device__ __forceinline__ std::uint16_t float_to_bf16(float f) {
  const unsigned u = __float_as_uint(f);
  if ((u & 0x7fffffffu) > 0x7f800000u) return static_cast<std::uint16_t>((u >> 16) | 0x40u);
  return static_cast<std::uint16_t>((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
}

template <class T>
struct storage;
template <>
struct storage<float> {
  __device__ static float load(const float* p, std::size_t i) { return p[i]; }
  __device__ static void store(float* p, std::size_t i, float x) { p[i] = x; }
};
template <>
struct storage<std::uint16_t> {  // bf16 bits
  __device__ static float load(const std::uint16_t* p, std::size_t i) { return bf16_to_float(p[i]); }
  __device__ static void store(std::uint16_t* p, std::size_t i, float x) { p[i] = float_to_bf16(x); }
};

__device__ __forceinline__ void store_out(void* out, gpu::data_type t, std::size_t i, float x) {
  if (t == gpu::data_type::f32) {
    static_cast<float*>(out)[i] = x;
  } else {
    static_cast<std::uint16_t*>(out)[i] = float_to_bf16(x);
  }
}

__device__ __forceinline__ float warp_max(float x) {
  for (int o = warp / 2; o > 0; o /= 2) x = fmaxf(x, __shfl_xor_sync(0xffffffffu, x, o));
  return x;
}
__device__ __forceinline__ float warp_sum(float x) {
  for (int o = warp / 2; o > 0; o /= 2) x += __shfl_xor_sync(0xffffffffu, x, o);
  return x;
}

__device__ __forceinline__ long long visible_prefix(long long p, int world, int rank, int interleave) {
  const long long len = p + 1;
  const long long stride = static_cast<long long>(interleave) * world;
  const long long full = len / stride;
  long long rest = len - full * stride - static_cast<long long>(rank) * interleave;
  rest = rest < 0 ? 0 : (rest > interleave ? interleave : rest);
  return full * interleave + rest;
}

__device__ __forceinline__ bool finite(float x) { return isfinite(x); }

inline unsigned grid_for(long long n, int block) {
  long long g = (n + block - 1) / block;
  if (g > 65535LL * 16) g = 65535LL * 16;  // grid-stride loops cover the rest
  return static_cast<unsigned>(g < 1 ? 1 : g);
}

// The one place the attention's storage type becomes an element type: f32,
// or bf16 as its bits.
template <class Fn>
int with_element_type(gpu::data_type storage, Fn&& fn) {
  if (storage == gpu::data_type::bf16) return fn(std::uint16_t{});
  return fn(float{});
}

// The KV copies move bits: the element type only sets the width.
template <class Fn>
int with_element_width(gpu::data_type storage, Fn&& fn) {
  if (gpu::size_of(storage) == 4) return fn(std::uint32_t{});
  return fn(std::uint16_t{});
}

template <class Fn>
int with_head_dim(int head_dim, Fn&& fn) {
  if (head_dim == 64) return fn(std::integral_constant<int, 64>{});
  if (head_dim == 128) return fn(std::integral_constant<int, 128>{});
  return cudaErrorInvalidValue;
}

inline bool aligned16(const void* p) { return reinterpret_cast<std::uintptr_t>(p) % 16 == 0; }

}  // namespace cobatch::gpu::cuda::attention_launch::device
