// Launchers of the probe kernels: plain C++17 on both sides of the nvcc
// boundary. Each returns the launch's cudaError_t as int.
#pragma once

#include <cstddef>
#include <cstdint>

namespace cobatch::gpu::cuda::probe::launch {
int fma_chain(const float* in, float* out, std::size_t n, std::uint32_t iterations, void* stream);
int spin(std::uint64_t cycles, std::uint32_t* flag, std::uint32_t value, void* stream);
int scale_copy(const float* in, float* out, std::size_t n, float scale, void* stream);
int empty(void* stream);
int invalid_launch(void* stream);
/// The architecture of the machine code the probe kernels run as on the
/// current device (cudaFuncAttributes::binaryVersion, e.g. 90): equal to the
/// device's compute capability when real code for it was built, lower when
/// the driver compiled PTX instead.
int binary_version(int* version);
/// Writes up to `capacity` of the architectures the kernels were compiled
/// for (nvcc's __CUDA_ARCH_LIST__, e.g. 900) and returns how many there are.
int compiled_architectures(int* out, int capacity);
}  // namespace cobatch::gpu::cuda::probe::launch
