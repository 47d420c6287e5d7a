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

// Each entry point hands its arguments, its host kernel and its CUDA kernel
// to dispatch().
#define COBATCH_ATTENTION_ENTRY(kernel, args, label)                        \
  void enqueue_##kernel(backend_kind b, const args& a, stream_ref s) {      \
    dispatch(b, a, s, &host::kernel, COBATCH_CUDA_KERNEL(kernel), label);   \
  }
COBATCH_ATTENTION_ENTRY(paged_attention, paged_attention_args, "paged attention")
COBATCH_ATTENTION_ENTRY(chunk_merge, chunk_merge_args, "chunk merge")
COBATCH_ATTENTION_ENTRY(lse_merge, lse_merge_args, "LSE merge")
COBATCH_ATTENTION_ENTRY(lse_correct, lse_correct_args, "LSE correction")
COBATCH_ATTENTION_ENTRY(convert, convert_args, "convert")
COBATCH_ATTENTION_ENTRY(kv_scatter, kv_scatter_args, "KV scatter")
COBATCH_ATTENTION_ENTRY(kv_append, kv_append_args, "KV append")
COBATCH_ATTENTION_ENTRY(kv_gather, kv_gather_args, "KV gather")
#undef COBATCH_ATTENTION_ENTRY
#undef COBATCH_CUDA_KERNEL

}  // namespace cobatch::gpu::kernels
