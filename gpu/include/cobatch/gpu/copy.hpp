// copy: stream-ordered copies (host to device, device to host, device to
// device) and fills of device memory, on any backend. Each is enqueued on a
// stream like a kernel: it runs after the work enqueued before it and before
// the work enqueued after it, and a failure puts the stream in an error state.
//
// Host memory given to a copy must stay valid and unchanged until the stream
// has run the copy (as cudaMemcpyAsync asks of pinned memory). On the CUDA
// backend, copies from or to pageable host memory are done by the runtime
// through a staging buffer and do not overlap compute; use pinned memory
// (cuda::allocation with memory_kind::pinned_host) where overlap matters.
#pragma once

#include "cobatch/gpu/device_memory.hpp"
#include "cobatch/gpu/stream.hpp"

#include <cstddef>
#include <cstring>
#include <span>
#include <type_traits>

namespace cobatch::gpu {

enum class copy_direction { host_to_device, device_to_host, device_to_device };

namespace detail {
/// Enqueues a copy of `bytes` on `s`; `backend` names the device memory's
/// backend. Throws std::system_error (errc::invalid_argument) for a backend
/// this build lacks or a null pointer with a nonzero size; 0 bytes enqueue
/// nothing.
void copy_bytes_async(backend_kind backend, copy_direction direction, void* dst, const void* src,
                      std::size_t bytes, stream_ref s);
/// Enqueues `count` copies of the `pattern_bytes` (1, 2, 4 or 8) bytes at
/// `pattern` into `dst` on `s`. The pattern is copied at once.
void fill_bytes_async(backend_kind backend, void* dst, const void* pattern, std::size_t pattern_bytes,
                      std::size_t count, stream_ref s);
void check_copy_sizes(std::size_t dst_size, std::size_t src_size, const char* api);
}  // namespace detail

/// Host to device. Sizes must match (std::system_error, errc::invalid_argument).
template <class T>
void copy_async(device_span<T> dst, std::span<const T> src, stream_ref s) {
  detail::check_copy_sizes(dst.size(), src.size(), "copy_async(host to device)");
  detail::copy_bytes_async(dst.backend(), copy_direction::host_to_device, dst.data(), src.data(), dst.size_bytes(),
                           s);
}
template <class T>
void copy_async(device_span<T> dst, std::span<T> src, stream_ref s) {
  copy_async(dst, std::span<const T>(src), s);
}

/// Device to host.
template <class T>
void copy_async(std::span<T> dst, device_span<const T> src, stream_ref s) {
  detail::check_copy_sizes(dst.size(), src.size(), "copy_async(device to host)");
  detail::copy_bytes_async(src.backend(), copy_direction::device_to_host, dst.data(), src.data(), src.size_bytes(),
                           s);
}
template <class T>
void copy_async(std::span<T> dst, device_span<T> src, stream_ref s) {
  copy_async(dst, device_span<const T>(src), s);
}

/// Device to device, on one backend (std::system_error, errc::invalid_argument
/// for spans of two backends).
template <class T>
void copy_async(device_span<T> dst, device_span<const T> src, stream_ref s) {
  detail::check_copy_sizes(dst.size(), src.size(), "copy_async(device to device)");
  if (dst.backend() != src.backend()) detail::check_copy_sizes(0, 1, "copy_async(device to device across backends)");
  detail::copy_bytes_async(dst.backend(), copy_direction::device_to_device, dst.data(), src.data(), dst.size_bytes(),
                           s);
}
template <class T>
void copy_async(device_span<T> dst, device_span<T> src, stream_ref s) {
  copy_async(dst, device_span<const T>(src), s);
}

/// Sets every element of `dst` to `value` (T of 1, 2, 4 or 8 bytes).
template <class T>
void fill_async(device_span<T> dst, const T& value, stream_ref s) {
  static_assert(sizeof(T) == 1 || sizeof(T) == 2 || sizeof(T) == 4 || sizeof(T) == 8,
                "fill_async fills elements of 1, 2, 4 or 8 bytes");
  static_assert(std::is_trivially_copyable_v<T>);
  detail::fill_bytes_async(dst.backend(), dst.data(), &value, sizeof(T), dst.size(), s);
}

}  // namespace cobatch::gpu
