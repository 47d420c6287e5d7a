// The CUDA backend's side of device_memory.hpp, copy.hpp and the attention
// and resolve_refs kernels' entry points: allocation (device and pinned
// host), copies and fills on a stream, and the launches (each takes a ticket
// on the stream, so a refused launch fails the fences made after it).
#include "cuda_kernels.hpp"

#include "attention_launch.hpp"
#include "resolve_refs_launch.hpp"
#include "cuda_stream.hpp"

#include <cstring>
#include <memory>
#include <string>

namespace cobatch::gpu::cuda::detail {
namespace {

class cuda_memory final : public gpu::detail::memory_holder {
 public:
  cuda_memory(void* p, int ordinal) noexcept : p_(p), ordinal_(ordinal) {}
  ~cuda_memory() override {
    int current = -1;
    cudaGetDevice(&current);
    if (current != ordinal_) cudaSetDevice(ordinal_);
    cudaFree(p_);  // never throws; frees once the device is done with it
    if (current != ordinal_ && current >= 0) cudaSetDevice(current);
  }

 private:
  void* p_;
  int ordinal_;
};

void* issue(stream_ref s) {
  auto& cs = as_cuda(s.impl());
  cs.issue();
  return cs.get();
}

}  // namespace

device_buffer allocate_device(device& d, std::size_t bytes, std::error_code& ec) noexcept {
  auto* cd = dynamic_cast<cuda_device*>(&d);
  if (cd == nullptr) {
    ec = make_error_code(errc::invalid_argument);
    return {};
  }
  try {
    cd->make_current();
    void* p = nullptr;
    const cudaError_t st = cudaMalloc(&p, bytes);
    if (st != cudaSuccess) {
      cudaGetLastError();  // clear the sticky-free error state of a failed allocation
      ec = st == cudaErrorMemoryAllocation ? make_error_code(errc::out_of_memory) : make_error_code(errc::operation_failed);
      return {};
    }
    return device_buffer(std::make_unique<cuda_memory>(p, cd->ordinal()), p, bytes, backend_kind::cuda);
  } catch (const std::system_error& e) {
    ec = e.code();
  } catch (...) {
    ec = make_error_code(errc::operation_failed);
  }
  return {};
}

void copy_bytes(copy_direction direction, void* dst, const void* src, std::size_t bytes, stream_ref s) {
  const cudaMemcpyKind kind = direction == copy_direction::host_to_device   ? cudaMemcpyHostToDevice
                              : direction == copy_direction::device_to_host ? cudaMemcpyDeviceToHost
                                                                            : cudaMemcpyDeviceToDevice;
  COBATCH_CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, kind, static_cast<cudaStream_t>(issue(s))));
}

void fill_bytes(void* dst, const void* pattern, std::size_t pattern_bytes, std::size_t count, stream_ref s) {
  std::uint64_t value = 0;
  std::memcpy(&value, pattern, pattern_bytes);
  if (pattern_bytes == 1) {
    COBATCH_CUDA_CHECK(cudaMemsetAsync(dst, static_cast<int>(value & 0xff), count, static_cast<cudaStream_t>(issue(s))));
    return;
  }
  note_launch(s, attention_launch::fill(dst, value, pattern_bytes, count, issue(s)));
}

void paged_attention(const kernels::paged_attention_args& a, stream_ref s) {
  note_launch(s, attention_launch::paged_attention(a, issue(s)));
}
void chunk_merge(const kernels::chunk_merge_args& a, stream_ref s) {
  note_launch(s, attention_launch::chunk_merge(a, issue(s)));
}
void lse_merge(const kernels::lse_merge_args& a, stream_ref s) { note_launch(s, attention_launch::lse_merge(a, issue(s))); }
void lse_correct(const kernels::lse_correct_args& a, stream_ref s) {
  note_launch(s, attention_launch::lse_correct(a, issue(s)));
}
void convert(const kernels::convert_args& a, stream_ref s) { note_launch(s, attention_launch::convert(a, issue(s))); }
void kv_scatter(const kernels::kv_scatter_args& a, stream_ref s) {
  note_launch(s, attention_launch::kv_scatter(a, issue(s)));
}
void kv_append(const kernels::kv_append_args& a, stream_ref s) { note_launch(s, attention_launch::kv_append(a, issue(s))); }
void kv_gather(const kernels::kv_gather_args& a, stream_ref s) { note_launch(s, attention_launch::kv_gather(a, issue(s))); }
void resolve_refs(const kernels::resolve_refs_args& a, stream_ref s) {
  note_launch(s, resolve_refs_launch::resolve_refs(a, issue(s)));
}

namespace {
class pinned_memory final : public gpu::detail::memory_holder {
 public:
  explicit pinned_memory(void* p) noexcept : p_(p) {}
  ~pinned_memory() override { cudaFreeHost(p_); }  // never throws

 private:
  void* p_;
};
}  // namespace

pinned_buffer allocate_pinned(device& d, std::size_t bytes) {
  auto* cd = dynamic_cast<cuda_device*>(&d);
  if (cd == nullptr)
    throw std::system_error(make_error_code(errc::invalid_argument),
                            "cobatch: allocate_pinned: device '" + d.name() + "' says it is a CUDA device but is not one");
  cd->make_current();
  void* p = nullptr;
  const cudaError_t st = cudaMallocHost(&p, bytes);
  if (st != cudaSuccess) {
    cudaGetLastError();
    throw std::system_error(st == cudaErrorMemoryAllocation ? make_error_code(errc::out_of_memory)
                                                            : make_error_code(errc::operation_failed),
                            "cobatch: allocate_pinned(" + std::to_string(bytes) + " bytes for '" + d.name() +
                                "'): cudaMallocHost: " + cudaGetErrorString(st));
  }
  std::memset(p, 0, bytes);
  return pinned_buffer(std::make_unique<pinned_memory>(p), p, bytes);
}

}  // namespace cobatch::gpu::cuda::detail
