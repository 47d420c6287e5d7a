// Dispatch of the attention kernels to the backend that runs them.
#include "cobatch/config.hpp"
#include "cobatch/gpu/error.hpp"
#include "cobatch/gpu/kernels/attention_kernels.hpp"

#if COBATCH_WITH_CUDA
#include "cuda/cuda_kernels.hpp"
#endif

#include <string>
#include <system_error>

namespace cobatch::gpu::kernels {
namespace {

#if !COBATCH_WITH_CUDA
[[noreturn]] void no_backend(const char* kernel) {
  throw std::system_error(make_error_code(errc::invalid_argument),
                          std::string("cobatch: ") + kernel + " on the CUDA backend, which this build of cobatch lacks");
}
#endif

// Host kernels run on the stream's worker with the arguments copied in.
template <class Args, class Host, class Cuda>
void dispatch(backend_kind backend, const Args& args, stream_ref s, Host host_fn, [[maybe_unused]] Cuda cuda_fn,
              [[maybe_unused]] const char* name) {
  if (backend == backend_kind::host) {
    s.enqueue([args, host_fn] { host_fn(args); });
    return;
  }
#if COBATCH_WITH_CUDA
  cuda_fn(args, s);
#else
  no_backend(name);
#endif
}

#if COBATCH_WITH_CUDA
#define COBATCH_CUDA_KERNEL(name) &cuda::detail::name
#else
#define COBATCH_CUDA_KERNEL(name) nullptr
#endif

}  // namespace

void enqueue_paged_attention(backend_kind b, const paged_attention_args& a, stream_ref s) {
  dispatch(b, a, s, &host::paged_attention, COBATCH_CUDA_KERNEL(paged_attention), "paged attention");
}
void enqueue_chunk_merge(backend_kind b, const chunk_merge_args& a, stream_ref s) {
  dispatch(b, a, s, &host::chunk_merge, COBATCH_CUDA_KERNEL(chunk_merge), "chunk merge");
}
void enqueue_lse_merge(backend_kind b, const lse_merge_args& a, stream_ref s) {
  dispatch(b, a, s, &host::lse_merge, COBATCH_CUDA_KERNEL(lse_merge), "LSE merge");
}
void enqueue_lse_correct(backend_kind b, const lse_correct_args& a, stream_ref s) {
  dispatch(b, a, s, &host::lse_correct, COBATCH_CUDA_KERNEL(lse_correct), "LSE correction");
}
void enqueue_convert(backend_kind b, const convert_args& a, stream_ref s) {
  dispatch(b, a, s, &host::convert, COBATCH_CUDA_KERNEL(convert), "convert");
}
void enqueue_kv_scatter(backend_kind b, const kv_scatter_args& a, stream_ref s) {
  dispatch(b, a, s, &host::kv_scatter, COBATCH_CUDA_KERNEL(kv_scatter), "KV scatter");
}
void enqueue_kv_append(backend_kind b, const kv_append_args& a, stream_ref s) {
  dispatch(b, a, s, &host::kv_append, COBATCH_CUDA_KERNEL(kv_append), "KV append");
}
void enqueue_kv_gather(backend_kind b, const kv_gather_args& a, stream_ref s) {
  dispatch(b, a, s, &host::kv_gather, COBATCH_CUDA_KERNEL(kv_gather), "KV gather");
}

}  // namespace cobatch::gpu::kernels
