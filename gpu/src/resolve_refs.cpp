// The resolve_refs kernel on the host backend, and the dispatch to the
// backend that runs it.
#include "cobatch/config.hpp"
#include "cobatch/gpu/error.hpp"
#include "cobatch/gpu/kernels/resolve_refs.hpp"

#if COBATCH_WITH_CUDA
#include "cuda/cuda_kernels.hpp"
#endif

#include <string>
#include <system_error>

namespace cobatch::gpu::kernels {

void host::resolve_refs(const resolve_refs_args& a) noexcept {
  for (std::int32_t i = 0; i < a.count; ++i) {
    const std::int32_t v = a.src[i];
    const std::int32_t ref = -1 - v;
    a.dst[i] = v >= 0 ? v : ref < a.table_size ? a.table[ref] : 0;
  }
}

void enqueue_resolve_refs(backend_kind backend, const resolve_refs_args& args, stream_ref s) {
  if (args.count < 0)
    throw std::system_error(make_error_code(errc::invalid_argument),
                            "cobatch: enqueue_resolve_refs: count " + std::to_string(args.count) + " < 0");
  if (args.count == 0) return;
  if (backend == backend_kind::host) {
    s.enqueue([args] { host::resolve_refs(args); });
    return;
  }
#if COBATCH_WITH_CUDA
  cuda::detail::resolve_refs(args, s);
#else
  throw std::system_error(make_error_code(errc::invalid_argument),
                          "cobatch: resolve_refs on the CUDA backend, which this build of cobatch lacks");
#endif
}

}  // namespace cobatch::gpu::kernels
