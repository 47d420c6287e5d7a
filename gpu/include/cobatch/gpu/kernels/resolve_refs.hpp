// resolve_refs: the entry points of the kernel that turns references into a
// device-written table into values (resolve_refs_args.hpp says what and why),
// on the host backend as a function on the stream's worker, on the CUDA
// backend as a kernel.
#pragma once

#include "cobatch/gpu/device.hpp"
#include "cobatch/gpu/kernels/resolve_refs_args.hpp"
#include "cobatch/gpu/stream.hpp"

namespace cobatch::gpu::kernels {

/// Enqueues the resolution on `s`, a stream of a device of `backend`. Throws
/// std::system_error (gpu::errc::invalid_argument) for a backend this build
/// lacks or a negative count; a CUDA launch failure is a cuda_error.
void enqueue_resolve_refs(backend_kind backend, const resolve_refs_args& args, stream_ref s);

namespace host {
/// The host kernel, run on the calling thread.
void resolve_refs(const resolve_refs_args& args) noexcept;
}  // namespace host

}  // namespace cobatch::gpu::kernels
