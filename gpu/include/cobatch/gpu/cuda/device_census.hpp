// device_census: how many CUDA devices this process can use, and, when the
// answer is none, whether that is a fact of the machine (skip) or a fault
// (report). Plain C++: no CUDA include.
//
// cudaGetDeviceCount fails for many reasons. Only two of them mean "there is
// no GPU here": cudaErrorNoDevice (a driver, no device), and a runtime that
// finds no driver at all (cudaErrorInsufficientDriver while
// cudaDriverGetVersion reports 0). Everything else (a driver older than the
// runtime, a device lost or busy, an initialization failure) is a fault on a
// machine that has a GPU, and hiding it as "no device" would turn a broken
// GPU run into a skipped one.
#pragma once

#include <string_view>
#include <system_error>

namespace cobatch::gpu::cuda {

struct device_census {
  /// Devices this process can use; 0 when none are visible or on error.
  int count = 0;
  /// Set when CUDA could not tell (count is 0 then): a real failure, in
  /// cuda_category(), to be reported rather than skipped.
  std::error_code error;
  /// With count 0 and no error: why there is nothing to run on, for a skip
  /// message ("no CUDA device visible", "no CUDA driver installed").
  std::string_view none_because;

  bool usable() const noexcept { return count > 0; }
  bool skip() const noexcept { return count == 0 && !error; }
};

/// Asks the runtime (cudaGetDeviceCount, cudaDriverGetVersion). Never throws.
device_census take_device_census() noexcept;

/// The rule take_device_census() applies to what the runtime said: `status`
/// from cudaGetDeviceCount, `reported` the count it wrote, `driver_version`
/// from cudaDriverGetVersion (0: no driver installed). Pure, for tests.
device_census classify_device_census(int status, int reported, int driver_version) noexcept;

}  // namespace cobatch::gpu::cuda
