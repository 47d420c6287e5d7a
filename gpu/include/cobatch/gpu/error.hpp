// Typed errors of the gpu layer that are not a vendor's own codes (those have
// their own categories in the backends).
#pragma once

#include <system_error>

namespace cobatch::gpu {

enum class errc {
  operation_failed = 1,  ///< an operation enqueued on a stream threw or failed
  stream_failed,         ///< the stream is in an error state from an earlier operation
  invalid_argument,      ///< a parameter is out of range (sizes, ranks, counts)
  capture_invalid,       ///< an operation that cannot be captured, or capture misuse
  communicator_aborted,  ///< the communicator was aborted; every pending call fails
  rank_mismatch,         ///< ranks called different collectives or sizes
  out_of_memory,         ///< the device's memory budget is exhausted
  timeout,               ///< a bounded wait ran out of time
};

const std::error_category& gpu_category() noexcept;

inline std::error_code make_error_code(errc e) noexcept { return {static_cast<int>(e), gpu_category()}; }

}  // namespace cobatch::gpu

template <>
struct std::is_error_code_enum<cobatch::gpu::errc> : std::true_type {};
