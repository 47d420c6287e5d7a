// The reference model's CUDA kernels: what is not a matrix product (cuBLAS)
// or attention (the engine's batch_attention). Kept small: CI compiles it on
// two cores for every architecture. Launched through cudaLaunchKernelEx,
// whose return value is that launch's own status (cudaGetLastError after a
// <<<>>> launch would also report someone else's earlier error).
#include "model_launch.hpp"

#include <cuda_runtime.h>

#include <climits>
#include <cmath>

namespace cobatch::model::cuda_launch {
namespace {

constexpr int block = 256;

template <typename... Params, typename... Args>
int launch(void (*kernel)(Params...), unsigned grid, unsigned threads, void* stream, Args... args) {
  if (grid == 0) return 0;
  cudaLaunchConfig_t config{};
  config.gridDim = dim3(grid);
  config.blockDim = dim3(threads);
  config.stream = static_cast<cudaStream_t>(stream);
  return static_cast<int>(cudaLaunchKernelEx(&config, kernel, args...));
}

// The sum of every thread's `v`, in every thread (blockDim.x == block).
__device__ float block_sum(float v) {
  __shared__ float partial[block / 32];
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  __syncthreads();  // partial[] may still be read from a previous call
  if ((threadIdx.x & 31) == 0) partial[threadIdx.x / 32] = v;
  __syncthreads();
  float total = 0.0f;
  for (int w = 0; w < block / 32; ++w) total += partial[w];
  return total;
}

__global__ void embed_kernel(float* x, const float* table, const std::int32_t* ids, std::int32_t hidden,
                             std::int32_t vocab) {
  const int r = blockIdx.x;
  const int t = min(max(ids[r], 0), vocab - 1);
  for (int i = threadIdx.x; i < hidden; i += blockDim.x) x[static_cast<std::size_t>(r) * hidden + i] = table[static_cast<std::size_t>(t) * hidden + i];
}

__global__ void rms_norm_kernel(const float* x, const float* w, float* y, std::int32_t n, float eps,
                                const std::int32_t* row_of, const std::int32_t* count) {
  const int r = blockIdx.x;
  float* yr = y + static_cast<std::size_t>(r) * n;
  int src = r;
  if (row_of != nullptr) src = r < *count ? row_of[r] : -1;
  if (src < 0) {
    for (int i = threadIdx.x; i < n; i += blockDim.x) yr[i] = 0.0f;
    return;
  }
  const float* xr = x + static_cast<std::size_t>(src) * n;
  float ss = 0.0f;
  for (int i = threadIdx.x; i < n; i += blockDim.x) ss += xr[i] * xr[i];
  const float inv = rsqrtf(block_sum(ss) / static_cast<float>(n) + eps);
  for (int i = threadIdx.x; i < n; i += blockDim.x) yr[i] = xr[i] * inv * w[i];
}

__global__ void rope_kernel(float* q, float* k, const std::int32_t* positions, const float* inv_freq,
                            std::int32_t heads, std::int32_t kv_heads, std::int32_t head_dim) {
  const int r = blockIdx.x;
  const int half = head_dim / 2;
  const float pos = static_cast<float>(positions[r]);
  for (int j = threadIdx.x; j < (heads + kv_heads) * half; j += blockDim.x) {
    const int h = j / half, i = j % half;
    float* v = h < heads ? q + (static_cast<std::size_t>(r) * heads + h) * head_dim
                         : k + (static_cast<std::size_t>(r) * kv_heads + (h - heads)) * head_dim;
    float sn, cs;
    sincosf(pos * inv_freq[i], &sn, &cs);
    const float x0 = v[i], x1 = v[i + half];
    v[i] = x0 * cs - x1 * sn;
    v[i + half] = x1 * cs + x0 * sn;
  }
}

__global__ void swiglu_kernel(float* g, const float* u, std::size_t n) {
  for (std::size_t i = blockIdx.x * static_cast<std::size_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<std::size_t>(gridDim.x) * blockDim.x)
    g[i] = g[i] / (1.0f + expf(-g[i])) * u[i];
}

// sampling.cpp's generator, bit for bit, so that a seeded draw is the same
// number on both backends.
__device__ std::uint64_t splitmix(std::uint64_t x) {
  x += 0x9e3779b97f4a7c15ull;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}

__device__ double uniform_draw(std::uint64_t seed, std::int32_t index) {
  const std::uint64_t bits = splitmix(splitmix(seed) ^ static_cast<std::uint64_t>(static_cast<std::uint32_t>(index)));
  return static_cast<double>(bits >> 11) * 0x1.0p-53;
}

// Whether (ka, ia) comes before (kb, ib): the larger logit, ties by id, as
// the host sampler's sort.
__device__ bool before(float ka, int ia, float kb, int ib) { return ka != kb ? ka > kb : ia < ib; }

__global__ void sample_kernel(sample_args a) {
  const int r = blockIdx.x;
  if (r >= a.counts[1] || a.sample_rows[r] < 0) return;
  const int tid = threadIdx.x;
  const int n = a.vocab;
  const float* l = a.logits + static_cast<std::size_t>(r) * n;
  const int slot = a.req_slots[r];
  if (a.kept_logits != nullptr)
    for (int i = tid; i < n; i += block) a.kept_logits[static_cast<std::size_t>(slot) * n + i] = l[i];
  const float t = a.temperature[r];
  __shared__ float best_v[block];
  __shared__ int best_i[block];
  __shared__ double partial[block];
  __shared__ int first;
  if (t <= 0.0f) {  // greedy: the largest logit, the lowest id on ties
    float bv = -INFINITY;
    int bi = INT_MAX;
    for (int i = tid; i < n; i += block)
      if (l[i] > bv || (l[i] == bv && i < bi)) bv = l[i], bi = i;
    best_v[tid] = bv;
    best_i[tid] = bi;
    __syncthreads();
    for (int s = block / 2; s > 0; s >>= 1) {
      if (tid < s && before(best_v[tid + s], best_i[tid + s], best_v[tid], best_i[tid]))
        best_v[tid] = best_v[tid + s], best_i[tid] = best_i[tid + s];
      __syncthreads();
    }
    if (tid == 0) a.sampled[slot] = best_i[0] == INT_MAX ? 0 : best_i[0];
    return;
  }
  // Sort (logit, id) pairs, most likely first: a bitonic sort over sort_size
  // entries, padded with (-inf, INT_MAX), which sort last.
  const int m = a.sort_size;
  float* keys = a.keys + static_cast<std::size_t>(r) * m;
  int* ids = a.ids + static_cast<std::size_t>(r) * m;
  double* cum = a.cumulative + static_cast<std::size_t>(r) * m;
  for (int i = tid; i < m; i += block) {
    keys[i] = i < n ? l[i] : -INFINITY;
    ids[i] = i < n ? i : INT_MAX;
  }
  __syncthreads();
  for (int k = 2; k <= m; k <<= 1) {
    for (int j = k >> 1; j > 0; j >>= 1) {
      for (int i = tid; i < m; i += block) {
        const int p = i ^ j;
        if (p <= i) continue;
        const bool forward = (i & k) == 0;
        if (forward ? before(keys[p], ids[p], keys[i], ids[i]) : before(keys[i], ids[i], keys[p], ids[p])) {
          const float kk = keys[i];
          keys[i] = keys[p];
          keys[p] = kk;
          const int ii = ids[i];
          ids[i] = ids[p];
          ids[p] = ii;
        }
      }
      __syncthreads();
    }
  }
  // Cumulative softmax mass in that order (double, as the host's), by
  // segments of `per` entries per thread.
  const double top = keys[0];
  const int per = (n + block - 1) / block;
  const int lo = min(tid * per, n), hi = min(lo + per, n);
  double run = 0.0;
  for (int i = lo; i < hi; ++i) cum[i] = run += exp((static_cast<double>(keys[i]) - top) / static_cast<double>(t));
  partial[tid] = run;
  if (tid == 0) first = n;
  __syncthreads();
  double offset = 0.0;
  for (int w = 0; w < tid; ++w) offset += partial[w];
  for (int i = lo; i < hi; ++i) cum[i] += offset;
  __syncthreads();
  const double total = cum[n - 1];
  // The nucleus: the fewest tokens whose probability reaches top_p.
  for (int i = lo; i < hi; ++i)
    if (cum[i] / total >= static_cast<double>(a.top_p[r])) {
      atomicMin(&first, i);
      break;
    }
  __syncthreads();
  const int keep = min(first + 1, n);
  const double u = uniform_draw(a.seed[r], a.sample_index[r]) * (cum[keep - 1] / total);
  __syncthreads();
  if (tid == 0) first = keep - 1;
  __syncthreads();
  for (int i = lo; i < min(hi, keep); ++i)
    if (u < cum[i] / total) {
      atomicMin(&first, i);
      break;
    }
  __syncthreads();
  if (tid == 0) a.sampled[slot] = ids[first];
}

}  // namespace

int embed(float* x, const float* table, const std::int32_t* token_ids, std::int32_t rows, std::int32_t hidden,
          std::int32_t vocab, void* stream) {
  return launch(embed_kernel, static_cast<unsigned>(rows), 128, stream, x, table, token_ids, hidden, vocab);
}

int rms_norm(const float* x, const float* w, float* y, std::int32_t rows, std::int32_t n, float eps,
             const std::int32_t* row_of, const std::int32_t* count, void* stream) {
  return launch(rms_norm_kernel, static_cast<unsigned>(rows), block, stream, x, w, y, n, eps, row_of, count);
}

int rope(float* q, float* k, const std::int32_t* positions, const float* inv_freq, std::int32_t rows,
         std::int32_t heads, std::int32_t kv_heads, std::int32_t head_dim, void* stream) {
  return launch(rope_kernel, static_cast<unsigned>(rows), 128, stream, q, k, positions, inv_freq, heads, kv_heads,
                head_dim);
}

int swiglu(float* gate, const float* up, std::size_t n, void* stream) {
  const std::size_t blocks = (n + block - 1) / block;
  return launch(swiglu_kernel, static_cast<unsigned>(blocks < 4096 ? blocks : 4096), block, stream, gate, up, n);
}

int sample(const sample_args& a, void* stream) {
  return launch(sample_kernel, static_cast<unsigned>(a.rows), block, stream, a);
}

}  // namespace cobatch::model::cuda_launch
