// K/V rows on CUDA: appends of a step's new rows, gathers and scatters
// between the pool and row buffers (the hand-off), element conversions, and
// pattern fills.
#include "attention_device.cuh"

namespace cobatch::gpu::cuda::attention_launch {
namespace {

using namespace device;

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

template <bool ToPool, class Args>
int launch_kv_rows(const Args& a, void* stream) {
  const long long n = static_cast<long long>(a.num_rows) * a.num_kv_heads * a.head_dim;
  if (n == 0) return cudaSuccess;
  return with_element_width(a.storage, [&](auto t) {
    return detail::launch_kernel(kv_rows_kernel<decltype(t), ToPool, Args>, dim3(grid_for(n, 256)), dim3(256), stream,
                                 a);
  });
}

}  // namespace

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
