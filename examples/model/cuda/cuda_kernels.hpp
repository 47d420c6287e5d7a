// The reference model's CUDA kernels: cuBLAS for the matrix products, the
// .cu kernels of model_kernels.cu for the rest, the weights uploaded once to
// the device. Built only where cobatch has CUDA (COBATCH_MODEL_WITH_CUDA).
#pragma once

#include "../llama_kernels.hpp"

#include <cobatch/gpu/device.hpp>

#include <memory>
#include <source_location>
#include <system_error>

namespace cobatch::model {

/// cuBLAS's status codes (cublasStatus_t) as errors; messages from
/// cublasGetStatusName and cublasGetStatusString. CUBLAS_STATUS_ALLOC_FAILED
/// compares equal to std::errc::not_enough_memory, CUBLAS_STATUS_INVALID_VALUE
/// to std::errc::invalid_argument.
const std::error_category& cublas_category() noexcept;

/// Throws gpu::cuda::cuda_error (code in cublas_category, the call, where)
/// unless `status` is CUBLAS_STATUS_SUCCESS (0).
void check_cublas(int status, const char* call, std::source_location where = std::source_location::current());

/// Kernels for `device`, a gpu::cuda::cuda_device (std::invalid_argument
/// otherwise): uploads the weights (synchronously, on the calling thread,
/// which must be the one that drives the device) and creates the model's
/// cuBLAS handle. `weights` outlive the kernels.
std::unique_ptr<llama_kernels> make_cuda_kernels(gpu::device& device, const llama_weights& weights);

}  // namespace cobatch::model
