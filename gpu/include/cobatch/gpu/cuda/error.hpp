// Typed errors of the CUDA backend: one std::error_category for the CUDA
// runtime's codes (cudaError_t) and one for NCCL's (ncclResult_t). The codes
// are kept as int here so that this header needs neither cuda_runtime.h nor
// nccl.h; the categories' messages come from the vendors' own tables.
#pragma once

#include <source_location>
#include <system_error>

namespace cobatch::gpu::cuda {

const std::error_category& cuda_category() noexcept;
const std::error_category& nccl_category() noexcept;

inline std::error_code make_cuda_error_code(int status) noexcept { return {status, cuda_category()}; }
inline std::error_code make_nccl_error_code(int status) noexcept { return {status, nccl_category()}; }

/// A failed CUDA or NCCL call: the code (in cuda_category or nccl_category),
/// the call that failed and where it was made.
class cuda_error : public std::system_error {
 public:
  cuda_error(std::error_code code, const char* call, std::source_location where);
  const char* call() const noexcept { return call_; }
  const std::source_location& where() const noexcept { return where_; }

 private:
  const char* call_;  // a string literal (the checked expression)
  std::source_location where_;
};

namespace detail {
// Out of line and cold: the message is built only when a call failed.
[[noreturn]] void throw_cuda_error(int status, const char* call, std::source_location where);
[[noreturn]] void throw_nccl_error(int status, const char* call, std::source_location where);
}  // namespace detail

/// Throws cuda_error unless `status` is cudaSuccess (0). One compare on success.
inline void check_cuda(int status, const char* call = "CUDA call",
                       std::source_location where = std::source_location::current()) {
  if (status != 0) [[unlikely]] {
    detail::throw_cuda_error(status, call, where);
  }
}

/// Throws cuda_error unless `status` is ncclSuccess (0). Callers of
/// non-blocking communicators treat ncclInProgress themselves first.
inline void check_nccl(int status, const char* call = "NCCL call",
                       std::source_location where = std::source_location::current()) {
  if (status != 0) [[unlikely]] {
    detail::throw_nccl_error(status, call, where);
  }
}

}  // namespace cobatch::gpu::cuda

/// Checks a CUDA runtime call and names it in the error: COBATCH_CUDA_CHECK(cudaMalloc(&p, n)).
#define COBATCH_CUDA_CHECK(expr) ::cobatch::gpu::cuda::check_cuda(static_cast<int>(expr), #expr)
/// Checks an NCCL call that must succeed outright.
#define COBATCH_NCCL_CHECK(expr) ::cobatch::gpu::cuda::check_nccl(static_cast<int>(expr), #expr)
