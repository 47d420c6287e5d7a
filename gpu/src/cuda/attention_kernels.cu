// The CUDA attention kernels: paged attention (decode and prefill, causal,
// GQA, DCP shards, split KV), the chunk and DCP merges, the reduce-scatter
// correction, conversions, and the KV gather/scatter of appends and hand-offs.
// Correct and reasonably fast rather than FlashAttention-level: a block per
// (work item, query row, KV head) reads each K/V row once for the query heads
// of the group, 16 bytes per lane per load, online softmax in f32. The first
// kernels below (one warp per query row and head, scalar loads) remain for
// buffers those cannot take.
#include "attention_launch.hpp"
#include "kernel_launch.hpp"

#include <cuda_runtime.h>

#include <cstdint>
#include <type_traits>

namespace cobatch::gpu::cuda::attention_launch {
namespace {

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

// One warp per (query row, query head). D is the head dim (64 or 128): each
// lane holds D / 32 of the query and of the accumulator.
template <class T, int D>
__global__ void paged_attention_kernel(kernels::paged_attention_args a) {
  constexpr int per_lane = D / warp;
  const int w = static_cast<int>(blockIdx.x);
  const attention_work_item item = a.work != nullptr ? a.work[w] : attention_work_item{w, 0, a.requests[w].kv_len, -1};
  const attention_request req = a.requests[item.request];
  const int j = blockIdx.y;
  if (j >= req.q_len) return;
  const int lane = threadIdx.x % warp;
  const int head = blockIdx.z * warps_per_block + threadIdx.x / warp;
  if (head >= a.num_qo_heads) return;
  const T* q = static_cast<const T*>(a.q);
  const T* pages = static_cast<const T*>(a.kv_pages);
  const int group = a.num_qo_heads / a.num_kv_heads;
  const int kvh = head / group;
  const std::size_t token_stride = static_cast<std::size_t>(a.num_kv_heads) * D;
  const std::size_t half_page = static_cast<std::size_t>(a.page_size) * token_stride;
  const std::int32_t* req_pages = a.kv_indices + req.page_begin;
  const long long p = static_cast<long long>(req.seq_len) - req.q_len + j;
  const long long visible = visible_prefix(p, a.dcp_world, a.dcp_rank, a.dcp_interleave);
  const long long end = visible < item.kv_end ? visible : item.kv_end;
  const long long begin = item.kv_begin;
  const std::size_t row = static_cast<std::size_t>(req.q_begin + j);

  __shared__ float qs[warps_per_block][D];
  float* qw = qs[threadIdx.x / warp];
  for (int e = lane; e < D; e += warp) qw[e] = storage<T>::load(q, (row * a.num_qo_heads + head) * D + e) * a.sm_scale;
  __syncwarp();

  float m = -INFINITY;
  float sum = 0.0f;
  float acc[per_lane];
  for (int i = 0; i < per_lane; ++i) acc[i] = 0.0f;
  for (long long base = begin; base < end; base += warp) {
    // Scores: lane l takes token base + l.
    const long long t = base + lane;
    float s = -INFINITY;
    if (t < end) {
      const std::size_t page = static_cast<std::size_t>(req_pages[t / a.page_size]);
      const T* k = pages + page * 2 * half_page + static_cast<std::size_t>(t % a.page_size) * token_stride +
                   static_cast<std::size_t>(kvh) * D;
      float dot = 0.0f;
#pragma unroll 8
      for (int e = 0; e < D; ++e) dot += qw[e] * storage<T>::load(k, e);
      s = dot;
    }
    const float tile_max = warp_max(s);
    const float new_m = fmaxf(m, tile_max);
    const float correction = m == -INFINITY ? 0.0f : __expf(m - new_m);
    const float w = t < end ? __expf(s - new_m) : 0.0f;
    sum = sum * correction + warp_sum(w);
    for (int i = 0; i < per_lane; ++i) acc[i] *= correction;
    m = new_m;
    // Values: every lane walks the tile's tokens, lanes over the head dim.
    const int n = end - base < warp ? static_cast<int>(end - base) : warp;
    for (int u = 0; u < n; ++u) {
      const float wu = __shfl_sync(0xffffffffu, w, u);
      const long long tu = base + u;
      const std::size_t page = static_cast<std::size_t>(req_pages[tu / a.page_size]);
      const T* v = pages + page * 2 * half_page + half_page + static_cast<std::size_t>(tu % a.page_size) * token_stride +
                   static_cast<std::size_t>(kvh) * D;
      for (int i = 0; i < per_lane; ++i) acc[i] += wu * storage<T>::load(v, lane + i * warp);
    }
  }
  float lse = -INFINITY;
  if (sum > 0.0f) {
    const float inv = 1.0f / sum;
    for (int i = 0; i < per_lane; ++i) acc[i] *= inv;
    lse = m + logf(sum);
  }
  if (item.partial_row < 0) {
    const std::size_t o = (row * a.num_qo_heads + head) * D;
    for (int i = 0; i < per_lane; ++i) store_out(a.out, a.out_type, o + lane + i * warp, acc[i]);
    if (lane == 0 && a.out_lse != nullptr) {
      a.out_lse[row * a.num_qo_heads + head] = lse == -INFINITY ? lse : lse * a.lse_out_scale;
    }
  } else {
    const std::size_t prow = static_cast<std::size_t>(item.partial_row + j);
    const std::size_t o = (prow * a.num_qo_heads + head) * D;
    for (int i = 0; i < per_lane; ++i) a.partial_out[o + lane + i * warp] = acc[i];
    if (lane == 0) a.partial_lse[prow * a.num_qo_heads + head] = lse;
  }
}

// One warp per (row, head) of the merged output; lanes over the head dim.
// Weights from the finite LSEs only: empty shards add nothing, none gives 0.
__global__ void chunk_merge_kernel(kernels::chunk_merge_args a) {
  const chunk_merge_item item = a.items[blockIdx.x];
  const int j = blockIdx.y;
  if (j >= item.q_len) return;
  const int lane = threadIdx.x % warp;
  const int head = blockIdx.z * warps_per_block + threadIdx.x / warp;
  if (head >= a.num_heads) return;
  auto prow = [&](int c) {
    return static_cast<std::size_t>(item.first_row + c * item.q_len + j) * a.num_heads + head;
  };
  float m = -INFINITY;
  for (int c = 0; c < item.num_chunks; ++c) {
    const float l = a.partial_lse[prow(c)];
    if (finite(l)) m = fmaxf(m, l);
  }
  float sum = 0.0f;
  for (int c = 0; c < item.num_chunks; ++c) {
    const float l = a.partial_lse[prow(c)];
    if (finite(l)) sum += __expf(l - m);
  }
  const std::size_t out_row = static_cast<std::size_t>(item.q_begin + j) * a.num_heads + head;
  for (int e = lane; e < a.head_dim; e += warp) {
    float x = 0.0f;
    if (m != -INFINITY) {
      for (int c = 0; c < item.num_chunks; ++c) {
        const float l = a.partial_lse[prow(c)];
        if (finite(l)) x += __expf(l - m) / sum * a.partial_out[prow(c) * a.head_dim + e];
      }
    }
    store_out(a.out, a.out_type, out_row * a.head_dim + e, x);
  }
  if (lane == 0 && a.out_lse != nullptr) a.out_lse[out_row] = m == -INFINITY ? m : (m + logf(sum)) * a.lse_out_scale;
}

// Shard i's unnormalised weight in row r: 0 where its LSE is -inf, +inf or
// NaN (it adds nothing), the only place such shards are told apart.
__device__ __forceinline__ float shard_weight(const kernels::lse_merge_args& a, int i, long long r, float m) {
  const float l = a.shard_lse[i * a.shard_lse_stride + r] * a.lse_in_scale;
  return finite(l) ? __expf(l - m) : 0.0f;
}

// One warp per row, rows grid-strided. The weights come first, lane i
// holding shard i's (shards beyond 32 are recomputed where used); the sum
// over head_dim then reads each shard's values once, and skips a shard of
// weight 0 on a branch that is the same for the whole warp.
__global__ void lse_merge_kernel(kernels::lse_merge_args a) {
  const int lane = threadIdx.x % warp;
  const long long warps = static_cast<long long>(gridDim.x) * (blockDim.x / warp);
  for (long long r = blockIdx.x * static_cast<long long>(blockDim.x / warp) + threadIdx.x / warp; r < a.rows;
       r += warps) {
    float m = -INFINITY;
    for (int i = lane; i < a.num_shards; i += warp) {
      const float l = a.shard_lse[i * a.shard_lse_stride + r] * a.lse_in_scale;
      if (finite(l)) m = fmaxf(m, l);
    }
    m = warp_max(m);
    if (m == -INFINITY) {
      for (int e = lane; e < a.head_dim; e += warp) store_out(a.out, a.out_type, r * a.head_dim + e, 0.0f);
      if (lane == 0 && a.out_lse != nullptr) a.out_lse[r] = -INFINITY;
      continue;
    }
    float part = 0.0f;
    for (int i = lane; i < a.num_shards; i += warp) part += shard_weight(a, i, r, m);
    const float sum = warp_sum(part);
    const float inv = 1.0f / sum;
    const float mine = lane < a.num_shards ? shard_weight(a, lane, r, m) * inv : 0.0f;
    // Every lane runs every pass (the shuffle needs the whole warp); lanes
    // past head_dim only skip the loads and the store.
    for (int e0 = 0; e0 < a.head_dim; e0 += warp) {
      const int e = e0 + lane;
      const bool in = e < a.head_dim;
      float x = 0.0f;
      for (int i = 0; i < a.num_shards; ++i) {
        const float w = i < warp ? __shfl_sync(0xffffffffu, mine, i) : shard_weight(a, i, r, m) * inv;
        if (in && w != 0.0f) x += w * a.shard_out[i * a.shard_out_stride + r * a.head_dim + e];
      }
      if (in) store_out(a.out, a.out_type, r * a.head_dim + e, x);
    }
    if (lane == 0 && a.out_lse != nullptr) a.out_lse[r] = (m + logf(sum)) * a.lse_out_scale;
  }
}

__global__ void lse_correct_kernel(kernels::lse_correct_args a) {
  const long long total = static_cast<long long>(a.num_tokens) * a.num_heads * a.head_dim;
  const int hw = a.num_heads / a.world;
  for (long long idx = blockIdx.x * static_cast<long long>(blockDim.x) + threadIdx.x; idx < total;
       idx += static_cast<long long>(gridDim.x) * blockDim.x) {
    const int e = static_cast<int>(idx % a.head_dim);
    const long long th = idx / a.head_dim;
    const int h = static_cast<int>(th % a.num_heads);
    const int t = static_cast<int>(th / a.num_heads);
    float m = -INFINITY;
    for (int r = 0; r < a.world; ++r) {
      const float l = a.all_lse[(static_cast<std::size_t>(r) * a.num_tokens + t) * a.num_heads + h];
      if (finite(l)) m = fmaxf(m, l);
    }
    float global = -INFINITY;
    if (m != -INFINITY) {
      float sum = 0.0f;
      for (int r = 0; r < a.world; ++r) {
        const float l = a.all_lse[(static_cast<std::size_t>(r) * a.num_tokens + t) * a.num_heads + h];
        if (finite(l)) sum += __expf(l - m);
      }
      global = m + logf(sum);
    }
    const float local = a.all_lse[(static_cast<std::size_t>(a.rank) * a.num_tokens + t) * a.num_heads + h];
    const float scale = (finite(local) && global != -INFINITY) ? __expf(local - global) : 0.0f;
    const int dest = h / hw;
    const int hh = h % hw;
    const float x = a.local_out[th * a.head_dim + e];
    a.scatter_out[((static_cast<std::size_t>(dest) * a.num_tokens + t) * hw + hh) * a.head_dim + e] =
        scale == 0.0f ? 0.0f : scale * x;
    if (e == 0 && dest == a.rank && a.out_lse != nullptr) {
      a.out_lse[static_cast<std::size_t>(t) * hw + hh] = global == -INFINITY ? global : global * a.lse_out_scale;
    }
  }
}

__global__ void convert_kernel(kernels::convert_args a) {
  for (long long i = blockIdx.x * static_cast<long long>(blockDim.x) + threadIdx.x; i < a.count;
       i += static_cast<long long>(gridDim.x) * blockDim.x) {
    store_out(a.dst, a.dst_type, static_cast<std::size_t>(i), a.src[i]);
  }
}

// Element copies by slot between a pool and row buffers; T only sets the
// width (bit copies). ToPool: a scatter (rows into the pool), else a gather.
template <class T, bool ToPool, class Args>
__global__ void kv_rows_kernel(Args a) {
  const long long row = static_cast<long long>(a.num_kv_heads) * a.head_dim;
  const long long total = row * a.num_rows;
  const long long half_page = static_cast<long long>(a.page_size) * row;
  for (long long idx = blockIdx.x * static_cast<long long>(blockDim.x) + threadIdx.x; idx < total;
       idx += static_cast<long long>(gridDim.x) * blockDim.x) {
    const long long i = idx / row;
    const long long e = idx % row;
    const int slot = a.slots[i];
    if (slot < 0) continue;
    const long long pool = (slot / a.page_size) * 2 * half_page + (slot % a.page_size) * row + e;
    const long long buf = i * a.row_stride + e;
    if constexpr (ToPool) {
      T* dst = static_cast<T*>(a.kv_pages) + pool;
      dst[0] = static_cast<const T*>(a.k)[buf];
      dst[half_page] = static_cast<const T*>(a.v)[buf];
    } else {
      const T* src = static_cast<const T*>(a.kv_pages) + pool;
      static_cast<T*>(a.k)[buf] = src[0];
      static_cast<T*>(a.v)[buf] = src[half_page];
    }
  }
}

// One block per (request, query row); threads over the row's elements.
template <class T>
__global__ void kv_append_kernel(kernels::kv_append_args a) {
  const attention_request req = a.requests[blockIdx.x];
  const int j = blockIdx.y;
  if (j >= req.q_len) return;
  const long long p = static_cast<long long>(req.seq_len) - req.q_len + j;
  const long long block = p / a.dcp_interleave;
  if (block % a.dcp_world != a.dcp_rank) return;
  const long long stride = static_cast<long long>(a.dcp_interleave) * a.dcp_world;
  const long long l = (p / stride) * a.dcp_interleave + p % a.dcp_interleave;
  const long long slot = static_cast<long long>(a.kv_indices[req.page_begin + l / a.page_size]) * a.page_size + l % a.page_size;
  const long long row = static_cast<long long>(a.num_kv_heads) * a.head_dim;
  const long long half_page = static_cast<long long>(a.page_size) * row;
  T* dst = static_cast<T*>(a.kv_pages) + (slot / a.page_size) * 2 * half_page + (slot % a.page_size) * row;
  const long long src = static_cast<long long>(req.q_begin + j) * row;
  for (long long e = threadIdx.x; e < row; e += blockDim.x) {
    dst[e] = static_cast<const T*>(a.k)[src + e];
    dst[half_page + e] = static_cast<const T*>(a.v)[src + e];
  }
}

template <class T>
__global__ void fill_kernel(T* dst, T value, std::size_t count) {
  for (std::size_t i = blockIdx.x * static_cast<std::size_t>(blockDim.x) + threadIdx.x; i < count;
       i += static_cast<std::size_t>(gridDim.x) * blockDim.x) {
    dst[i] = value;
  }
}

unsigned grid_for(long long n, int block) {
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

template <bool ToPool, class Args>
int launch_kv_rows(const Args& a, void* stream) {
  const long long n = static_cast<long long>(a.num_rows) * a.num_kv_heads * a.head_dim;
  if (n == 0) return cudaSuccess;
  return with_element_width(a.storage, [&](auto t) {
    return detail::launch_kernel(kv_rows_kernel<decltype(t), ToPool, Args>, dim3(grid_for(n, 256)), dim3(256), stream,
                                 a);
  });
}

// --- the vectorised paths ------------------------------------------------------
// What the kernels above do, shaped for memory bandwidth where the data allow:
// every lane moves 16 bytes per load, and a lane issues all of a row's loads
// before it needs any of them, so that enough bytes are in flight to keep
// HBM busy. The kernels above stay for shapes these do not take (unaligned
// buffers, more than 8 shards, head dims not a multiple of 4).

// Eight consecutive elements of K, V or q as loaded: one 16-byte load of
// bf16 bits, two of f32. Kept packed until used, so that loads in flight
// cost registers for the bytes, not for the floats.
template <class T>
struct raw8;
template <>
struct raw8<std::uint16_t> {
  uint4 u;
  __device__ static raw8 load(const std::uint16_t* p) { return {*reinterpret_cast<const uint4*>(p)}; }
  __device__ void unpack(float (&x)[8]) const {
    const unsigned w[4] = {u.x, u.y, u.z, u.w};
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      x[2 * i] = __uint_as_float(w[i] << 16);
      x[2 * i + 1] = __uint_as_float(w[i] & 0xffff0000u);
    }
  }
};
template <>
struct raw8<float> {
  float4 a, b;
  __device__ static raw8 load(const float* p) {
    const float4* q = reinterpret_cast<const float4*>(p);
    return {q[0], q[1]};
  }
  __device__ void unpack(float (&x)[8]) const {
    x[0] = a.x, x[1] = a.y, x[2] = a.z, x[3] = a.w;
    x[4] = b.x, x[5] = b.y, x[6] = b.z, x[7] = b.w;
  }
};

// Paged attention for one (work item, query row, KV head): the block takes
// G query heads of the KV head's group at once, so each K/V row is read once
// for all of them (GQA). D / 8 lanes share a token, 8 elements each, so a
// warp reads 32 / (D / 8) whole token rows per load; each lane has U tokens'
// K and V in flight. Each lane keeps an online softmax over the tokens it
// saw; lanes, then warps, are combined at the end.
template <class T, int D, int G>
__global__ void __launch_bounds__(warp * warps_per_block) paged_attention_vec_kernel(kernels::paged_attention_args a) {
  constexpr int lanes_per_token = D / 8;
  constexpr int tokens_per_load = warp / lanes_per_token;
  constexpr int U = 4;
  constexpr int W = warps_per_block;
  const int w = static_cast<int>(blockIdx.x);
  const attention_work_item item = a.work != nullptr ? a.work[w] : attention_work_item{w, 0, a.requests[w].kv_len, -1};
  const attention_request req = a.requests[item.request];
  const int j = blockIdx.y;
  if (j >= req.q_len) return;
  const int group = a.num_qo_heads / a.num_kv_heads;
  const int tiles = (group + G - 1) / G;
  const int kvh = static_cast<int>(blockIdx.z) / tiles;
  const int first = (static_cast<int>(blockIdx.z) % tiles) * G;  // first head of the tile, within the group
  const int head0 = kvh * group + first;
  const int lane = threadIdx.x % warp;
  const int wid = threadIdx.x / warp;
  const int sub = lane % lanes_per_token;
  const int slot = lane / lanes_per_token;

  const T* pages = static_cast<const T*>(a.kv_pages);
  const std::size_t token_stride = static_cast<std::size_t>(a.num_kv_heads) * D;
  const std::size_t half_page = static_cast<std::size_t>(a.page_size) * token_stride;
  const std::int32_t* req_pages = a.kv_indices + req.page_begin;
  const long long p = static_cast<long long>(req.seq_len) - req.q_len + j;
  const long long visible = visible_prefix(p, a.dcp_world, a.dcp_rank, a.dcp_interleave);
  const long long end = visible < item.kv_end ? visible : item.kv_end;
  const long long begin = item.kv_begin;
  const std::size_t row = static_cast<std::size_t>(req.q_begin + j);

  float q[G][8];
#pragma unroll
  for (int g = 0; g < G; ++g) {
    if (first + g < group) {
      raw8<T>::load(static_cast<const T*>(a.q) + (row * a.num_qo_heads + head0 + g) * D + sub * 8).unpack(q[g]);
#pragma unroll
      for (int e = 0; e < 8; ++e) q[g][e] *= a.sm_scale;
    } else {
#pragma unroll
      for (int e = 0; e < 8; ++e) q[g][e] = 0.0f;
    }
  }
  float m[G], l[G], acc[G][8];
#pragma unroll
  for (int g = 0; g < G; ++g) {
    m[g] = -INFINITY;
    l[g] = 0.0f;
#pragma unroll
    for (int e = 0; e < 8; ++e) acc[g][e] = 0.0f;
  }

  constexpr int per_warp = tokens_per_load * U;
  for (long long base = begin + static_cast<long long>(wid) * per_warp; base < end; base += W * per_warp) {
    raw8<T> k[U], v[U];
    bool valid[U];
#pragma unroll
    for (int u = 0; u < U; ++u) {
      const long long t = base + u * tokens_per_load + slot;
      valid[u] = t < end;
      if (valid[u]) {
        const std::size_t page = static_cast<std::size_t>(req_pages[t / a.page_size]);
        const T* kp = pages + page * 2 * half_page + static_cast<std::size_t>(t % a.page_size) * token_stride +
                      static_cast<std::size_t>(kvh) * D + sub * 8;
        k[u] = raw8<T>::load(kp);
        v[u] = raw8<T>::load(kp + half_page);
      } else {
        k[u] = raw8<T>{};
        v[u] = raw8<T>{};
      }
    }
    float s[U][G];
#pragma unroll
    for (int u = 0; u < U; ++u) {
      float kf[8];
      k[u].unpack(kf);
#pragma unroll
      for (int g = 0; g < G; ++g) {
        float dot = 0.0f;
#pragma unroll
        for (int e = 0; e < 8; ++e) dot += q[g][e] * kf[e];
#pragma unroll
        for (int o = lanes_per_token / 2; o > 0; o /= 2) dot += __shfl_xor_sync(0xffffffffu, dot, o);
        s[u][g] = valid[u] ? dot : -INFINITY;
      }
    }
#pragma unroll
    for (int g = 0; g < G; ++g) {
      float mx = m[g];
#pragma unroll
      for (int u = 0; u < U; ++u) mx = fmaxf(mx, s[u][g]);
      if (mx == -INFINITY) continue;  // no token of this lane's yet
      const float corr = __expf(m[g] - mx);
      l[g] *= corr;
#pragma unroll
      for (int e = 0; e < 8; ++e) acc[g][e] *= corr;
      m[g] = mx;
    }
#pragma unroll
    for (int u = 0; u < U; ++u) {
      float vf[8];
      v[u].unpack(vf);
#pragma unroll
      for (int g = 0; g < G; ++g) {
        const float pu = valid[u] ? __expf(s[u][g] - m[g]) : 0.0f;
        l[g] += pu;
#pragma unroll
        for (int e = 0; e < 8; ++e) acc[g][e] += pu * vf[e];
      }
    }
  }

  // The lanes of one element range saw different tokens: combine them.
#pragma unroll
  for (int o = lanes_per_token; o < warp; o *= 2) {
#pragma unroll
    for (int g = 0; g < G; ++g) {
      const float mo = __shfl_xor_sync(0xffffffffu, m[g], o);
      const float lo = __shfl_xor_sync(0xffffffffu, l[g], o);
      const float nm = fmaxf(m[g], mo);
      const float f1 = nm == -INFINITY ? 0.0f : __expf(m[g] - nm);
      const float f2 = nm == -INFINITY ? 0.0f : __expf(mo - nm);
      l[g] = l[g] * f1 + lo * f2;
#pragma unroll
      for (int e = 0; e < 8; ++e) {
        const float ao = __shfl_xor_sync(0xffffffffu, acc[g][e], o);
        acc[g][e] = acc[g][e] * f1 + ao * f2;
      }
      m[g] = nm;
    }
  }
  // Then the warps, through shared memory.
  __shared__ float sm_m[W][G];
  __shared__ float sm_l[W][G];
  __shared__ float sm_acc[W][G][D];
  if (slot == 0) {
#pragma unroll
    for (int g = 0; g < G; ++g) {
#pragma unroll
      for (int e = 0; e < 8; ++e) sm_acc[wid][g][sub * 8 + e] = acc[g][e];
      if (sub == 0) {
        sm_m[wid][g] = m[g];
        sm_l[wid][g] = l[g];
      }
    }
  }
  __syncthreads();
  for (int o = threadIdx.x; o < G * D; o += blockDim.x) {
    const int g = o / D;
    const int e = o % D;
    if (first + g >= group) continue;
    float mx = -INFINITY;
#pragma unroll
    for (int x = 0; x < W; ++x) mx = fmaxf(mx, sm_m[x][g]);
    float sum = 0.0f, val = 0.0f;
    if (mx != -INFINITY) {
#pragma unroll
      for (int x = 0; x < W; ++x) {
        const float f = __expf(sm_m[x][g] - mx);
        sum += sm_l[x][g] * f;
        val += sm_acc[x][g][e] * f;
      }
    }
    float lse = -INFINITY;
    if (sum > 0.0f) {
      val /= sum;
      lse = mx + logf(sum);
    }
    const int head = head0 + g;
    if (item.partial_row < 0) {
      store_out(a.out, a.out_type, (row * a.num_qo_heads + head) * D + e, val);
      if (e == 0 && a.out_lse != nullptr) {
        a.out_lse[row * a.num_qo_heads + head] = lse == -INFINITY ? lse : lse * a.lse_out_scale;
      }
    } else {
      const std::size_t prow = static_cast<std::size_t>(item.partial_row + j);
      a.partial_out[(prow * a.num_qo_heads + head) * D + e] = val;
      if (e == 0) a.partial_lse[prow * a.num_qo_heads + head] = lse;
    }
  }
}

// The LSE merge for up to 8 shards and head_dim a multiple of 4 (at most
// 128), 16-byte aligned: one warp per row, lane i holding elements
// [4i, 4i + 4). Every shard's values are loaded before the weights are known
// (8 loads of 16 bytes in flight per lane); they are read once, so they
// bypass L1 and are marked evict-first, and so are the stores.
constexpr int vec_merge_shards = 8;
__global__ void lse_merge_vec_kernel(kernels::lse_merge_args a) {
  const int lane = threadIdx.x % warp;
  const int quads = a.head_dim / 4;
  const bool in = lane < quads;
  const long long warps = static_cast<long long>(gridDim.x) * (blockDim.x / warp);
  for (long long r = blockIdx.x * static_cast<long long>(blockDim.x / warp) + threadIdx.x / warp; r < a.rows;
       r += warps) {
    float4 v[vec_merge_shards];
#pragma unroll
    for (int i = 0; i < vec_merge_shards; ++i) {
      v[i] = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
      if (i < a.num_shards && in) {
        v[i] = __ldcs(reinterpret_cast<const float4*>(a.shard_out + i * a.shard_out_stride + r * a.head_dim) + lane);
      }
    }
    float l = -INFINITY;
    if (lane < a.num_shards) {
      l = a.shard_lse[lane * a.shard_lse_stride + r] * a.lse_in_scale;
      if (!finite(l)) l = -INFINITY;  // -inf, NaN and +inf shards add nothing
    }
    const float m = warp_max(l);
    const long long o = r * a.head_dim + lane * 4;
    float4 x = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
    float sum = 0.0f;
    if (m != -INFINITY) {
      const float wt = l == -INFINITY ? 0.0f : __expf(l - m);
      sum = warp_sum(wt);
      const float mine = wt / sum;
#pragma unroll
      for (int i = 0; i < vec_merge_shards; ++i) {
        const float wi = __shfl_sync(0xffffffffu, mine, i);
        // Uniform over the warp; skipping keeps an empty shard's values,
        // whatever they hold, out of the sum.
        if (wi != 0.0f) {
          x.x += wi * v[i].x;
          x.y += wi * v[i].y;
          x.z += wi * v[i].z;
          x.w += wi * v[i].w;
        }
      }
    }
    if (in) {
      if (a.out_type == gpu::data_type::f32) {
        __stcs(reinterpret_cast<float4*>(static_cast<float*>(a.out) + o), x);
      } else {
        uint2 packed;
        packed.x = float_to_bf16(x.x) | (static_cast<unsigned>(float_to_bf16(x.y)) << 16);
        packed.y = float_to_bf16(x.z) | (static_cast<unsigned>(float_to_bf16(x.w)) << 16);
        __stcs(reinterpret_cast<uint2*>(static_cast<std::uint16_t*>(a.out) + o), packed);
      }
    }
    if (lane == 0 && a.out_lse != nullptr) a.out_lse[r] = m == -INFINITY ? m : (m + logf(sum)) * a.lse_out_scale;
  }
}

bool aligned16(const void* p) { return reinterpret_cast<std::uintptr_t>(p) % 16 == 0; }

}  // namespace

int paged_attention(const kernels::paged_attention_args& a, void* stream) {
  if (a.num_work == 0 || a.max_q_len == 0) return cudaSuccess;
  const dim3 grid(static_cast<unsigned>(a.num_work), static_cast<unsigned>(a.max_q_len),
                  static_cast<unsigned>((a.num_qo_heads + warps_per_block - 1) / warps_per_block));
  const dim3 block(warp * warps_per_block);
  if (aligned16(a.q) && aligned16(a.kv_pages) && a.num_kv_heads > 0) {
    // The query heads of a KV head go in tiles of G: 1 or 2 for small
    // groups, else 4 (a group of 8 is read twice, from L2 the second time).
    const int group = a.num_qo_heads / a.num_kv_heads;
    auto launch_vec = [&](auto g) {
      constexpr int G = decltype(g)::value;
      const dim3 vgrid(grid.x, grid.y, static_cast<unsigned>(a.num_kv_heads * ((group + G - 1) / G)));
      return with_element_type(a.storage, [&](auto t) {
        return with_head_dim(a.head_dim, [&](auto d) {
          return detail::launch_kernel(paged_attention_vec_kernel<decltype(t), decltype(d)::value, G>, vgrid, block,
                                       stream, a);
        });
      });
    };
    if (group == 1) return launch_vec(std::integral_constant<int, 1>{});
    if (group == 2) return launch_vec(std::integral_constant<int, 2>{});
    return launch_vec(std::integral_constant<int, 4>{});
  }
  return with_element_type(a.storage, [&](auto t) {
    return with_head_dim(a.head_dim, [&](auto d) {
      return detail::launch_kernel(paged_attention_kernel<decltype(t), decltype(d)::value>, grid, block, stream, a);
    });
  });
}

int chunk_merge(const kernels::chunk_merge_args& a, void* stream) {
  if (a.num_items == 0 || a.max_q_len == 0) return cudaSuccess;
  const dim3 grid(static_cast<unsigned>(a.num_items), static_cast<unsigned>(a.max_q_len),
                  static_cast<unsigned>((a.num_heads + warps_per_block - 1) / warps_per_block));
  return detail::launch_kernel(chunk_merge_kernel, dim3(grid), dim3(warp * warps_per_block), stream, a);
}

int lse_merge(const kernels::lse_merge_args& a, void* stream) {
  if (a.rows == 0) return cudaSuccess;
  constexpr int block = 256;
  const dim3 grid(grid_for(a.rows * warp, block));
  if (a.num_shards <= vec_merge_shards && a.head_dim % 4 == 0 && a.head_dim <= 4 * warp && aligned16(a.shard_out) &&
      a.shard_out_stride % 4 == 0 && aligned16(a.out)) {
    return detail::launch_kernel(lse_merge_vec_kernel, grid, dim3(block), stream, a);
  }
  return detail::launch_kernel(lse_merge_kernel, grid, dim3(block), stream, a);
}

int lse_correct(const kernels::lse_correct_args& a, void* stream) {
  const long long n = static_cast<long long>(a.num_tokens) * a.num_heads * a.head_dim;
  if (n == 0) return cudaSuccess;
  return detail::launch_kernel(lse_correct_kernel, dim3(grid_for(n, 256)), dim3(256), stream, a);
}

int convert(const kernels::convert_args& a, void* stream) {
  if (a.count == 0) return cudaSuccess;
  return detail::launch_kernel(convert_kernel, dim3(grid_for(a.count, 256)), dim3(256), stream, a);
}

int kv_scatter(const kernels::kv_scatter_args& a, void* stream) { return launch_kv_rows<true>(a, stream); }
int kv_gather(const kernels::kv_gather_args& a, void* stream) { return launch_kv_rows<false>(a, stream); }

int kv_append(const kernels::kv_append_args& a, void* stream) {
  if (a.num_reqs == 0 || a.max_q_len == 0) return cudaSuccess;
  const dim3 grid(static_cast<unsigned>(a.num_reqs), static_cast<unsigned>(a.max_q_len));
  return with_element_width(a.storage, [&](auto t) {
    return detail::launch_kernel(kv_append_kernel<decltype(t)>, grid, dim3(128), stream, a);
  });
}

int fill(void* dst, std::uint64_t pattern, std::size_t pattern_bytes, std::size_t count, void* stream) {
  const unsigned grid = grid_for(static_cast<long long>(count), 256);
  switch (pattern_bytes) {
    case 2:
      return detail::launch_kernel(fill_kernel<std::uint16_t>, dim3(grid), dim3(256), stream,
                                   static_cast<std::uint16_t*>(dst), static_cast<std::uint16_t>(pattern), count);
    case 4:
      return detail::launch_kernel(fill_kernel<std::uint32_t>, dim3(grid), dim3(256), stream,
                                   static_cast<std::uint32_t*>(dst), static_cast<std::uint32_t>(pattern), count);
    case 8:
      return detail::launch_kernel(fill_kernel<std::uint64_t>, dim3(grid), dim3(256), stream,
                                   static_cast<std::uint64_t*>(dst), pattern, count);
    default: return cudaErrorInvalidValue;
  }
}

}  // namespace cobatch::gpu::cuda::attention_launch
