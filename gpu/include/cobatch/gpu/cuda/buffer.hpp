// Memory of the CUDA backend: a stream-ordered device buffer (allocated and
// freed in the order of a stream, so a micro-batch's scratch memory costs no
// device-wide synchronization), plain device memory, and pinned host memory
// (needed for copies that overlap compute).
#pragma once

#include "cobatch/gpu/stream.hpp"

#include <cstddef>
#include <utility>

namespace cobatch::gpu::cuda {

/// Owning handle to `bytes` of device memory from cudaMallocAsync on a
/// stream. The memory may be used on that stream at once, and on other
/// streams after they joined it. Destruction frees it with cudaFreeAsync on
/// the same stream (set_free_stream changes which): work on that stream
/// enqueued before the destruction may still use it; work on other streams
/// must have been joined into it first.
class device_buffer {
 public:
  device_buffer() noexcept = default;
  device_buffer(std::size_t bytes, stream_ref s);
  device_buffer(device_buffer&& other) noexcept
      : data_(std::exchange(other.data_, nullptr)), size_(std::exchange(other.size_, 0)),
        stream_(std::exchange(other.stream_, nullptr)) {}
  device_buffer& operator=(device_buffer&& other) noexcept {
    if (this != &other) {
      device_buffer dying(std::move(*this));
      data_ = std::exchange(other.data_, nullptr);
      size_ = std::exchange(other.size_, 0);
      stream_ = std::exchange(other.stream_, nullptr);
    }
    return *this;
  }
  device_buffer(const device_buffer&) = delete;
  device_buffer& operator=(const device_buffer&) = delete;
  ~device_buffer();

  void* data() const noexcept { return data_; }
  std::size_t size() const noexcept { return size_; }
  template <typename T>
  T* as() const noexcept {
    return static_cast<T*>(data_);
  }
  void set_free_stream(stream_ref s) noexcept { stream_ = s.native_handle(); }

 private:
  void* data_ = nullptr;
  std::size_t size_ = 0;
  void* stream_ = nullptr;  // cudaStream_t
};

/// Where an allocation lives.
enum class memory_kind {
  device,       ///< cudaMalloc: device memory, freed with cudaFree
  pinned_host,  ///< cudaMallocHost: page-locked host memory the GPU copies to and from asynchronously
};

/// Owning handle to memory that is not stream-ordered. Freeing device memory
/// synchronizes the device, so do it outside the hot path.
class allocation {
 public:
  allocation() noexcept = default;
  allocation(std::size_t bytes, memory_kind kind);
  allocation(allocation&& other) noexcept
      : data_(std::exchange(other.data_, nullptr)), size_(std::exchange(other.size_, 0)), kind_(other.kind_) {}
  allocation& operator=(allocation&& other) noexcept {
    if (this != &other) {
      allocation dying(std::move(*this));
      data_ = std::exchange(other.data_, nullptr);
      size_ = std::exchange(other.size_, 0);
      kind_ = other.kind_;
    }
    return *this;
  }
  allocation(const allocation&) = delete;
  allocation& operator=(const allocation&) = delete;
  ~allocation();

  void* data() const noexcept { return data_; }
  std::size_t size() const noexcept { return size_; }
  memory_kind kind() const noexcept { return kind_; }
  template <typename T>
  T* as() const noexcept {
    return static_cast<T*>(data_);
  }

 private:
  void* data_ = nullptr;
  std::size_t size_ = 0;
  memory_kind kind_ = memory_kind::device;
};

/// Enqueues a copy of `bytes` on `s` (any direction; the runtime infers it
/// from the pointers). Asynchronous only for pinned or device memory.
void copy_async(void* dst, const void* src, std::size_t bytes, stream_ref s);
/// Enqueues setting `bytes` at `dst` to `value` on `s`.
void fill_async(void* dst, unsigned char value, std::size_t bytes, stream_ref s);

}  // namespace cobatch::gpu::cuda
