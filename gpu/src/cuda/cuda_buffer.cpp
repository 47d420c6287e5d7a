#include "cobatch/gpu/cuda/buffer.hpp"

#include "cuda_stream.hpp"

namespace cobatch::gpu::cuda {

device_buffer::device_buffer(std::size_t bytes, stream_ref s) : size_(bytes), stream_(s.native_handle()) {
  if (bytes == 0) {
    throw std::system_error(make_error_code(errc::invalid_argument), "cobatch: device_buffer of 0 bytes");
  }
  COBATCH_CUDA_CHECK(cudaMallocAsync(&data_, bytes, static_cast<cudaStream_t>(stream_)));
}

device_buffer::~device_buffer() {
  if (data_ != nullptr) cudaFreeAsync(data_, static_cast<cudaStream_t>(stream_));  // never throws
}

allocation::allocation(std::size_t bytes, memory_kind kind) : size_(bytes), kind_(kind) {
  if (bytes == 0) throw std::system_error(make_error_code(errc::invalid_argument), "cobatch: allocation of 0 bytes");
  if (kind == memory_kind::device) {
    COBATCH_CUDA_CHECK(cudaMalloc(&data_, bytes));
  } else {
    COBATCH_CUDA_CHECK(cudaMallocHost(&data_, bytes));
  }
}

allocation::~allocation() {
  if (data_ == nullptr) return;
  if (kind_ == memory_kind::device) {
    cudaFree(data_);
  } else {
    cudaFreeHost(data_);
  }
}

void copy_async(void* dst, const void* src, std::size_t bytes, stream_ref s) {
  auto& cs = detail::as_cuda(s.impl());
  cs.issue();
  COBATCH_CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDefault, cs.get()));
}

void fill_async(void* dst, unsigned char value, std::size_t bytes, stream_ref s) {
  auto& cs = detail::as_cuda(s.impl());
  cs.issue();
  COBATCH_CUDA_CHECK(cudaMemsetAsync(dst, value, bytes, cs.get()));
}

}  // namespace cobatch::gpu::cuda
