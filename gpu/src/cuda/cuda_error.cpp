#include "cobatch/gpu/cuda/error.hpp"

#include <cuda_runtime.h>

#include <string>

namespace cobatch::gpu::cuda {
namespace {

class cuda_category_impl final : public std::error_category {
 public:
  const char* name() const noexcept override { return "cuda"; }
  std::string message(int value) const override {
    // Both functions return a fixed string even for unknown codes and work
    // without a device or driver (the tables live in the runtime library).
    const auto status = static_cast<cudaError_t>(value);
    return std::string(cudaGetErrorString(status)) + " (" + cudaGetErrorName(status) + ")";
  }
  std::error_condition default_error_condition(int value) const noexcept override {
    switch (static_cast<cudaError_t>(value)) {
      case cudaErrorMemoryAllocation: return std::errc::not_enough_memory;
      case cudaErrorInvalidValue: return std::errc::invalid_argument;
      case cudaErrorNotSupported: return std::errc::not_supported;
      default: return {value, *this};
    }
  }
};

// NCCL's codes as documented in nccl.h. Spelled out here so that the category
// (and the tests of its messages) need neither libnccl nor a device; the NCCL
// translation unit checks the values against nccl.h at compile time.
class nccl_category_impl final : public std::error_category {
 public:
  const char* name() const noexcept override { return "nccl"; }
  std::string message(int value) const override {
    switch (value) {
      case 0: return "no error (ncclSuccess)";
      case 1: return "a CUDA call made by NCCL failed (ncclUnhandledCudaError)";
      case 2: return "a system call made by NCCL failed (ncclSystemError)";
      case 3: return "internal NCCL error (ncclInternalError)";
      case 4: return "invalid argument to NCCL (ncclInvalidArgument)";
      case 5: return "invalid use of NCCL (ncclInvalidUsage)";
      case 6: return "a remote rank failed or the network broke (ncclRemoteError)";
      case 7: return "operation still in progress (ncclInProgress)";
      default: return "unknown NCCL result " + std::to_string(value);
    }
  }
  std::error_condition default_error_condition(int value) const noexcept override {
    if (value == 4) return std::errc::invalid_argument;
    return {value, *this};
  }
};

std::string describe(const char* call, const std::source_location& where) {
  return std::string(call) + " failed at " + where.file_name() + ":" + std::to_string(where.line()) + " in " +
         where.function_name();
}

}  // namespace

const std::error_category& cuda_category() noexcept {
  static const cuda_category_impl instance;
  return instance;
}

const std::error_category& nccl_category() noexcept {
  static const nccl_category_impl instance;
  return instance;
}

cuda_error::cuda_error(std::error_code code, const char* call, std::source_location where)
    : std::system_error(code, describe(call, where)), call_(call), where_(where) {}

namespace detail {
void throw_cuda_error(int status, const char* call, std::source_location where) {
  // The failed call also left its status as the thread's last error. This
  // exception reports it; left there, it would surface again from the next
  // cudaPeekAtLastError or cudaGetLastError of unrelated code (sticky errors
  // stay regardless: they belong to the context, not the thread).
  cudaGetLastError();
  throw cuda_error(make_cuda_error_code(status), call, where);
}
void throw_nccl_error(int status, const char* call, std::source_location where) {
  throw cuda_error(make_nccl_error_code(status), call, where);
}
}  // namespace detail

}  // namespace cobatch::gpu::cuda
