// device_memory: memory a device's kernels read and write, whatever the
// backend. An owning untyped buffer (device_buffer), a typed owning buffer
// (typed_buffer<T>) and their non-owning view (device_span<T>, the `_ref` of
// both); and the host memory a device copies to and from without a bounce
// (pinned_buffer: staging for a stream's host<->device copies). Each carries the backend it belongs to, so that the stream-ordered
// copies and fills of copy.hpp can pick the backend's way of moving bytes
// without the caller naming it.
//
// On the host backend device memory is ordinary memory counted against the
// host_device's budget; on the CUDA backend it is cudaMalloc memory (not
// stream-ordered: allocate caches, pools and workspaces once, outside the hot
// path, and reuse them).
#pragma once

#include "cobatch/gpu/data_type.hpp"
#include "cobatch/gpu/device.hpp"

#include <cstddef>
#include <memory>
#include <span>
#include <system_error>
#include <type_traits>
#include <utility>

namespace cobatch::gpu {

namespace detail {
/// Keeps a backend's allocation alive; destroying it frees the memory.
class memory_holder {
 public:
  virtual ~memory_holder() = default;
};
}  // namespace detail

/// Non-owning view of `size()` elements of T in a device's memory. Cheap to
/// copy; must not outlive the buffer it views. Dereferencing data() on the host
/// is only valid for the host backend (`backend() == backend_kind::host`).
template <class T>
class device_span {
 public:
  using element_type = T;

  constexpr device_span() noexcept = default;
  constexpr device_span(T* data, std::size_t size, backend_kind backend) noexcept
      : data_(data), size_(size), backend_(backend) {}
  /// A view of const T from one of T.
  template <class U>
    requires(std::is_same_v<const U, T> && !std::is_same_v<U, T>)
  constexpr device_span(device_span<U> other) noexcept
      : data_(other.data()), size_(other.size()), backend_(other.backend()) {}

  constexpr T* data() const noexcept { return data_; }
  constexpr std::size_t size() const noexcept { return size_; }
  constexpr std::size_t size_bytes() const noexcept { return size_ * sizeof(T); }
  constexpr bool empty() const noexcept { return size_ == 0; }
  constexpr backend_kind backend() const noexcept { return backend_; }

  /// Elements [offset, offset + count). Unchecked, as std::span's.
  constexpr device_span subspan(std::size_t offset, std::size_t count) const noexcept {
    return device_span(data_ + offset, count, backend_);
  }
  constexpr device_span first(std::size_t count) const noexcept { return subspan(0, count); }

  /// The same bytes seen as U (sizes must divide; unchecked).
  template <class U>
  device_span<U> reinterpret() const noexcept {
    return device_span<U>(reinterpret_cast<U*>(data_), size_bytes() / sizeof(U), backend_);
  }

  /// The host backend's memory as a std::span; empty for other backends.
  std::span<T> host_span() const noexcept {
    return backend_ == backend_kind::host ? std::span<T>(data_, size_) : std::span<T>();
  }

 private:
  T* data_ = nullptr;
  std::size_t size_ = 0;
  backend_kind backend_ = backend_kind::host;
};

/// A device_span with its element type as a value rather than a type: what
/// kernels whose element type is chosen at run time (f32 or bf16 storage)
/// take. Made from a device_span<T> of a type data_type_of knows.
class any_device_span {
 public:
  any_device_span() noexcept = default;
  template <class T>
  any_device_span(device_span<T> s) noexcept  // NOLINT: implicit on purpose, a view of a view
      : data_(const_cast<std::remove_const_t<T>*>(s.data())), size_(s.size()),
        type_(data_type_of<std::remove_const_t<T>>), backend_(s.backend()) {}

  void* data() const noexcept { return data_; }
  std::size_t size() const noexcept { return size_; }
  std::size_t size_bytes() const noexcept { return size_ * size_of(type_); }
  bool empty() const noexcept { return size_ == 0; }
  data_type type() const noexcept { return type_; }
  backend_kind backend() const noexcept { return backend_; }

 private:
  void* data_ = nullptr;
  std::size_t size_ = 0;
  data_type type_ = data_type::u8;
  backend_kind backend_ = backend_kind::host;
};

/// Owning handle to `size()` bytes of device memory. Destroying it frees the
/// memory at once (never throws): work enqueued on streams that still reads it
/// must have finished, as with cudaFree.
class device_buffer {
 public:
  device_buffer() noexcept = default;
  device_buffer(std::unique_ptr<detail::memory_holder> holder, void* data, std::size_t size,
                backend_kind backend) noexcept
      : holder_(std::move(holder)), data_(data), size_(size), backend_(backend) {}
  device_buffer(device_buffer&& other) noexcept
      : holder_(std::move(other.holder_)), data_(std::exchange(other.data_, nullptr)),
        size_(std::exchange(other.size_, 0)), backend_(other.backend_) {}
  device_buffer& operator=(device_buffer&& other) noexcept {
    if (this != &other) {
      holder_ = std::move(other.holder_);
      data_ = std::exchange(other.data_, nullptr);
      size_ = std::exchange(other.size_, 0);
      backend_ = other.backend_;
    }
    return *this;
  }
  device_buffer(const device_buffer&) = delete;
  device_buffer& operator=(const device_buffer&) = delete;
  ~device_buffer() = default;

  explicit operator bool() const noexcept { return data_ != nullptr; }
  void* data() const noexcept { return data_; }
  std::size_t size() const noexcept { return size_; }
  backend_kind backend() const noexcept { return backend_; }

  /// The bytes as `size() / sizeof(T)` elements of T.
  template <class T>
  device_span<T> as() const noexcept {
    return device_span<T>(static_cast<T*>(data_), size_ / sizeof(T), backend_);
  }

 private:
  std::unique_ptr<detail::memory_holder> holder_;
  void* data_ = nullptr;
  std::size_t size_ = 0;
  backend_kind backend_ = backend_kind::host;
};

/// Allocates `bytes` (> 0) of `d`'s memory, aligned to 256 bytes, contents
/// unspecified (zeroed on the host backend). Throws std::system_error:
/// gpu::errc::out_of_memory when it does not fit (the host budget, or
/// cudaErrorMemoryAllocation's code in the CUDA category), gpu::errc::
/// invalid_argument for 0 bytes or a device of a backend this build lacks.
device_buffer allocate(device& d, std::size_t bytes);
/// As above, reporting failure through `ec` (and returning an empty buffer).
device_buffer allocate(device& d, std::size_t bytes, std::error_code& ec) noexcept;

/// An owning buffer of `size()` elements of T (trivially copyable).
template <class T>
class typed_buffer {
  static_assert(std::is_trivially_copyable_v<T>, "device memory holds trivially copyable elements");

 public:
  typed_buffer() noexcept = default;
  /// `count` (> 0) elements of `d`'s memory; throws as allocate() does.
  typed_buffer(device& d, std::size_t count) : raw_(allocate(d, count * sizeof(T))), size_(count) {}

  explicit operator bool() const noexcept { return static_cast<bool>(raw_); }
  T* data() const noexcept { return static_cast<T*>(raw_.data()); }
  std::size_t size() const noexcept { return size_; }
  std::size_t size_bytes() const noexcept { return size_ * sizeof(T); }
  backend_kind backend() const noexcept { return raw_.backend(); }

  device_span<T> span() const noexcept { return device_span<T>(data(), size_, raw_.backend()); }
  operator device_span<T>() const noexcept { return span(); }
  operator device_span<const T>() const noexcept { return span(); }

 private:
  device_buffer raw_;
  std::size_t size_ = 0;
};

/// Owning handle to `size()` bytes of host memory that `d`'s stream-ordered
/// copies (copy.hpp) read and write directly: page-locked memory from
/// cudaMallocHost on the CUDA backend, so that a copy overlaps compute and
/// the host thread does not wait for it (pageable memory goes through the
/// runtime's bounce buffer); ordinary memory on the host backend, not counted
/// against its device budget. Zeroed, aligned to 64 bytes. Destroying it frees
/// the memory at once: copies that read or write it must have finished.
class pinned_buffer {
 public:
  pinned_buffer() noexcept = default;
  pinned_buffer(std::unique_ptr<detail::memory_holder> holder, void* data, std::size_t size) noexcept
      : holder_(std::move(holder)), data_(data), size_(size) {}
  pinned_buffer(pinned_buffer&& other) noexcept
      : holder_(std::move(other.holder_)), data_(std::exchange(other.data_, nullptr)),
        size_(std::exchange(other.size_, 0)) {}
  pinned_buffer& operator=(pinned_buffer&& other) noexcept {
    if (this != &other) {
      holder_ = std::move(other.holder_);
      data_ = std::exchange(other.data_, nullptr);
      size_ = std::exchange(other.size_, 0);
    }
    return *this;
  }
  pinned_buffer(const pinned_buffer&) = delete;
  pinned_buffer& operator=(const pinned_buffer&) = delete;
  ~pinned_buffer() = default;

  explicit operator bool() const noexcept { return data_ != nullptr; }
  std::byte* data() const noexcept { return static_cast<std::byte*>(data_); }
  std::size_t size() const noexcept { return size_; }
  std::span<std::byte> bytes() const noexcept { return {data(), size_}; }

 private:
  std::unique_ptr<detail::memory_holder> holder_;
  void* data_ = nullptr;
  std::size_t size_ = 0;
};

/// Allocates `bytes` (> 0) of host memory for `d`'s copies (pinned_buffer).
/// Not for the hot path (cudaMallocHost is slow). Throws std::system_error:
/// gpu::errc::out_of_memory when it cannot be had, gpu::errc::invalid_argument
/// for 0 bytes or a device of a backend this build lacks.
pinned_buffer allocate_pinned(device& d, std::size_t bytes);

}  // namespace cobatch::gpu
