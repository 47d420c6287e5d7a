// The merges on CUDA: split-KV chunks of one request, the N-way LSE merge of
// DCP shards (a vectorised kernel for up to 8 shards on aligned rows, a
// scalar one for the rest), and vLLM's local correction before a
// reduce-scatter. Empty, NaN and infinite shards add nothing.
#include "attention_device.cuh"

namespace cobatch::gpu::cuda::attention_launch {
namespace {

using namespace device;

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

}  // namespace

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

}  // namespace cobatch::gpu::cuda::attention_launch
