// Backend-neutral device memory and copies: the host backend's in place, the
// CUDA backend's behind cuda/cuda_kernels.hpp where this build has it.
#include "cobatch/config.hpp"
#include "cobatch/gpu/copy.hpp"
#include "cobatch/gpu/device_memory.hpp"
#include "cobatch/gpu/error.hpp"
#include "cobatch/gpu/host/host_device.hpp"

#if COBATCH_WITH_CUDA
#include "cuda/cuda_kernels.hpp"
#endif

#include <cstdint>
#include <cstring>
#include <memory>
#include <new>
#include <string>
#include <system_error>
#include <utility>

namespace cobatch::gpu {
namespace {

class host_memory final : public detail::memory_holder {
 public:
  explicit host_memory(host::buffer b) noexcept : buffer_(std::move(b)) {}

 private:
  host::buffer buffer_;
};

[[noreturn]] void invalid(const std::string& what) {
  throw std::system_error(make_error_code(errc::invalid_argument), "cobatch: " + what);
}

#if !COBATCH_WITH_CUDA
[[noreturn]] void no_backend(const char* api) {
  invalid(std::string(api) + ": device memory of the CUDA backend, which this build of cobatch lacks");
}
#endif

}  // namespace

device_buffer allocate(device& d, std::size_t bytes, std::error_code& ec) noexcept {
  ec.clear();
  if (bytes == 0) {
    ec = make_error_code(errc::invalid_argument);
    return {};
  }
  if (d.backend() == backend_kind::host) {
    auto* h = dynamic_cast<host::host_device*>(&d);
    if (h == nullptr) {
      ec = make_error_code(errc::invalid_argument);
      return {};
    }
    try {
      // host::buffer comes from new[], aligned for any scalar type; 256-byte
      // alignment is asked for by over-allocating and aligning inside.
      constexpr std::size_t align = 256;
      host::buffer b = h->allocate(bytes + align);
      auto address = reinterpret_cast<std::uintptr_t>(b.data());
      void* aligned = b.data() + ((align - address % align) % align);
      return device_buffer(std::make_unique<host_memory>(std::move(b)), aligned, bytes, backend_kind::host);
    } catch (const std::system_error& e) {
      ec = e.code();
    } catch (const std::bad_alloc&) {
      ec = make_error_code(errc::out_of_memory);
    }
    return {};
  }
#if COBATCH_WITH_CUDA
  return cuda::detail::allocate_device(d, bytes, ec);
#else
  ec = make_error_code(errc::invalid_argument);
  return {};
#endif
}

device_buffer allocate(device& d, std::size_t bytes) {
  std::error_code ec;
  device_buffer b = allocate(d, bytes, ec);
  if (ec) {
    throw std::system_error(ec, "cobatch: allocate(" + std::to_string(bytes) + " bytes on '" + d.name() + "')");
  }
  return b;
}

namespace {
class aligned_host_memory final : public detail::memory_holder {
 public:
  explicit aligned_host_memory(std::size_t bytes)
      : p_(::operator new(bytes, std::align_val_t{64})) {
    std::memset(p_, 0, bytes);
  }
  ~aligned_host_memory() override { ::operator delete(p_, std::align_val_t{64}); }
  aligned_host_memory(const aligned_host_memory&) = delete;
  aligned_host_memory& operator=(const aligned_host_memory&) = delete;
  void* get() const noexcept { return p_; }

 private:
  void* p_;
};
}  // namespace

pinned_buffer allocate_pinned(device& d, std::size_t bytes) {
  if (bytes == 0) invalid("allocate_pinned: 0 bytes for '" + d.name() + "'");
  if (d.backend() == backend_kind::host) {
    try {
      auto memory = std::make_unique<aligned_host_memory>(bytes);
      void* p = memory->get();
      return pinned_buffer(std::move(memory), p, bytes);
    } catch (const std::bad_alloc&) {
      throw std::system_error(make_error_code(errc::out_of_memory),
                              "cobatch: allocate_pinned(" + std::to_string(bytes) + " bytes for '" + d.name() + "')");
    }
  }
#if COBATCH_WITH_CUDA
  return cuda::detail::allocate_pinned(d, bytes);
#else
  no_backend("allocate_pinned");
#endif
}

namespace detail {

void check_copy_sizes(std::size_t dst_size, std::size_t src_size, const char* api) {
  if (dst_size != src_size) {
    invalid(std::string(api) + ": destination holds " + std::to_string(dst_size) + " elements, source " +
            std::to_string(src_size));
  }
}

void copy_bytes_async(backend_kind backend, copy_direction direction, void* dst, const void* src, std::size_t bytes,
                      stream_ref s) {
  if (bytes == 0) return;
  if (dst == nullptr || src == nullptr) invalid("copy_async: a null pointer with " + std::to_string(bytes) + " bytes");
  if (backend == backend_kind::host) {
    (void)direction;  // one address space
    s.enqueue([dst, src, bytes] { std::memmove(dst, src, bytes); });
    return;
  }
#if COBATCH_WITH_CUDA
  cuda::detail::copy_bytes(direction, dst, src, bytes, s);
#else
  no_backend("copy_async");
#endif
}

void fill_bytes_async(backend_kind backend, void* dst, const void* pattern, std::size_t pattern_bytes,
                      std::size_t count, stream_ref s) {
  if (count == 0) return;
  if (dst == nullptr) invalid("fill_async: a null destination with " + std::to_string(count) + " elements");
  if (pattern_bytes != 1 && pattern_bytes != 2 && pattern_bytes != 4 && pattern_bytes != 8) {
    invalid("fill_async: elements of " + std::to_string(pattern_bytes) + " bytes (1, 2, 4 or 8 are filled)");
  }
  if (backend == backend_kind::host) {
    std::uint64_t value = 0;
    std::memcpy(&value, pattern, pattern_bytes);
    s.enqueue([dst, value, pattern_bytes, count] {
      auto* out = static_cast<std::byte*>(dst);
      if (pattern_bytes == 1) {
        std::memset(out, static_cast<int>(value & 0xff), count);
        return;
      }
      for (std::size_t i = 0; i < count; ++i) std::memcpy(out + i * pattern_bytes, &value, pattern_bytes);
    });
    return;
  }
#if COBATCH_WITH_CUDA
  cuda::detail::fill_bytes(dst, pattern, pattern_bytes, count, s);
#else
  no_backend("fill_async");
#endif
}

}  // namespace detail
}  // namespace cobatch::gpu
