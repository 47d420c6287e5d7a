#include "cobatch/gpu/cuda/device_census.hpp"

#include "cobatch/gpu/cuda/error.hpp"

#include <cuda_runtime.h>

namespace cobatch::gpu::cuda {

device_census classify_device_census(int status, int reported, int driver_version) noexcept {
  device_census c;
  if (status == cudaSuccess) {
    c.count = reported > 0 ? reported : 0;
    if (c.count == 0) c.none_because = "no CUDA device visible";
    return c;
  }
  if (status == cudaErrorNoDevice) {
    c.none_because = "no CUDA device visible (cudaErrorNoDevice)";
    return c;
  }
  if (status == cudaErrorInsufficientDriver && driver_version == 0) {
    // The runtime found no libcuda at all: a machine without a GPU driver,
    // not a driver too old for this runtime (that one reports its version).
    c.none_because = "no CUDA driver installed (cudaErrorInsufficientDriver, driver version 0)";
    return c;
  }
  c.error = make_cuda_error_code(status);
  return c;
}

device_census take_device_census() noexcept {
  int n = 0;
  const cudaError_t status = cudaGetDeviceCount(&n);
  int driver = 0;
  if (cudaDriverGetVersion(&driver) != cudaSuccess) driver = 0;
  // Initialization failures are sticky and will show again at the next call;
  // a non-sticky one must not be left for an unrelated later check.
  if (status != cudaSuccess) cudaGetLastError();
  return classify_device_census(status, n, driver);
}

}  // namespace cobatch::gpu::cuda
