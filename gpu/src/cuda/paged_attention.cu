// Paged attention on CUDA: decode, prefill and mixed batches, causal, GQA,
// DCP shards and split KV, online softmax in f32. The vectorised kernel (a
// block per work item, query row and KV head; 16-byte loads; the group's
// query heads together) is the one that runs on buffers the library
// allocates; the scalar one (a warp per query row and head) takes the rest.
// docs/attention.md says why each is shaped as it is.
#include "attention_device.cuh"

namespace cobatch::gpu::cuda::attention_launch {
namespace {

using namespace device;

// One query row j of work item w: its request, its pages, and the local KV
// tokens [begin, end) it attends to (causal, this rank's DCP shard, the
// item's chunk). Both kernels start from it; a row past the request's query
// (j >= req.q_len) has nothing to do.
struct query_span {
  attention_work_item item;
  attention_request req;
  const std::int32_t* pages;  ///< the request's page indices
  long long begin, end;
  std::size_t row;  ///< the query row in the batch
};

__device__ __forceinline__ query_span query_span_of(const kernels::paged_attention_args& a, int w, int j) {
  query_span s;
  s.item = a.work != nullptr ? a.work[w] : attention_work_item{w, 0, a.requests[w].kv_len, -1};
  s.req = a.requests[s.item.request];
  s.pages = a.kv_indices + s.req.page_begin;
  const long long p = static_cast<long long>(s.req.seq_len) - s.req.q_len + j;
  const long long visible = visible_prefix(p, a.dcp_world, a.dcp_rank, a.dcp_interleave);
  s.end = visible < s.item.kv_end ? visible : s.item.kv_end;
  s.begin = s.item.kv_begin;
  s.row = static_cast<std::size_t>(s.req.q_begin + j);
  return s;
}

// One warp per (query row, query head). D is the head dim (64 or 128): each
// lane holds D / 32 of the query and of the accumulator.
template <class T, int D>
__global__ void paged_attention_kernel(kernels::paged_attention_args a) {
  constexpr int per_lane = D / warp;
  const int j = blockIdx.y;
  const query_span span = query_span_of(a, static_cast<int>(blockIdx.x), j);
  if (j >= span.req.q_len) return;
  const attention_work_item& item = span.item;
  const std::int32_t* req_pages = span.pages;
  const long long begin = span.begin, end = span.end;
  const std::size_t row = span.row;
  const int lane = threadIdx.x % warp;
  const int head = blockIdx.z * warps_per_block + threadIdx.x / warp;
  if (head >= a.num_qo_heads) return;
  const T* q = static_cast<const T*>(a.q);
  const T* pages = static_cast<const T*>(a.kv_pages);
  const int group = a.num_qo_heads / a.num_kv_heads;
  const int kvh = head / group;
  const std::size_t token_stride = static_cast<std::size_t>(a.num_kv_heads) * D;
  const std::size_t half_page = static_cast<std::size_t>(a.page_size) * token_stride;

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

// The kernel above, shaped for memory bandwidth: every lane moves 16 bytes
// per load and has several loads in flight before it needs any of them, so
// that enough bytes are in flight to keep HBM busy. The kernel above stays
// for unaligned buffers.

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
  const int j = blockIdx.y;
  const query_span span = query_span_of(a, static_cast<int>(blockIdx.x), j);
  if (j >= span.req.q_len) return;
  const attention_work_item& item = span.item;
  const std::int32_t* req_pages = span.pages;
  const long long begin = span.begin, end = span.end;
  const std::size_t row = span.row;
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

}  // namespace cobatch::gpu::cuda::attention_launch
