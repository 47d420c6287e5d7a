// Small kernels with known behaviour, for tests, benchmarks and health
// checks of the CUDA backend. Plain C++ declarations: the kernels live in a
// .cu file, so nothing that includes this needs nvcc.
//
// Each function enqueues on `s` and returns at once. A launch that CUDA
// refuses (bad configuration, no device) puts the stream in an error state:
// the stream's error() and every later wait on it report the CUDA code, as
// for any failed stream operation.
#pragma once

#include "cobatch/gpu/stream.hpp"

#include <cstddef>
#include <cstdint>
#include <vector>

namespace cobatch::gpu::cuda::probe {

/// out[i] = f(in[i]) where f runs `iterations` dependent fused multiply-adds:
/// the kernel's duration grows linearly with `iterations`, and the result
/// depends on every one of them (see expected_fma), so it cannot be skipped.
void fma_chain(const float* in, float* out, std::size_t n, std::uint32_t iterations, stream_ref s);

/// The value fma_chain computes for one input, on the host.
float expected_fma(float x, std::uint32_t iterations) noexcept;

/// Spins one small block for about `cycles` clock cycles, then writes
/// `value` to *flag (unless flag is null): a kernel of set duration that
/// uses almost no SMs.
void spin(std::uint64_t cycles, std::uint32_t* flag, std::uint32_t value, stream_ref s);

/// out[i] = in[i] * scale.
void scale_copy(const float* in, float* out, std::size_t n, float scale, stream_ref s);

/// A kernel that does nothing: the cost of a launch and its completion.
void empty(stream_ref s);

/// A launch CUDA rejects (a block larger than any device allows), for
/// testing how failures reach awaiting code: the stream fails with the
/// runtime's refusal (cudaErrorInvalidConfiguration up to CUDA 12,
/// cudaErrorInvalidValue from CUDA 13). The device and other streams are
/// unharmed.
void invalid_launch(stream_ref s);

/// The architecture the probe kernels run as on the current device, as
/// major * 10 + minor (90 on Hopper): equal to the device's compute
/// capability when the build holds machine code for it; lower when the
/// driver had to compile PTX at load time. Throws cuda_error.
int binary_version();

/// The architectures the kernels were compiled for, as nvcc numbers them
/// (800 for sm_80, 900 for sm_90): what the build's CUDA architectures
/// became. Needs no device.
std::vector<int> compiled_architectures();

}  // namespace cobatch::gpu::cuda::probe
