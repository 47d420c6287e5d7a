// Host backend: the device, the factory of host streams, events and buffers.
#include "cobatch/gpu/host/host_device.hpp"

#include "host_buffer.hpp"
#include "host_event.hpp"
#include "host_stream.hpp"

#include "cobatch/gpu/error.hpp"

#include <cstdlib>
#include <cstring>
#include <mutex>
#include <new>
#include <string>
#include <system_error>

#if __has_include(<sys/mman.h>)
#include <sys/mman.h>
#endif

namespace cobatch::gpu::host {

host_device::host_device(coro::completion_reactor& reactor, device_options options)
    : reactor_(&reactor), options_(std::move(options)), accounting_(std::make_shared<buffer::accounting>()) {
  accounting_->budget = options_.memory_budget;
}

host_device::~host_device() = default;

memory_info host_device::memory() const {
  std::lock_guard lock(accounting_->mutex);
  return {accounting_->budget, accounting_->budget - accounting_->in_use, accounting_->in_use};
}

stream host_device::make_stream(stream_options options) {
  return stream(std::make_unique<host_stream>(*reactor_, options.priority));
}

event host_device::make_event() { return event(std::make_unique<host_event>(*reactor_)); }

namespace {

// Zeroed memory for `bytes`, aligned as host_device::allocate promises.
// Rounding a huge-page buffer up to whole 2 MiB pages adds at most 1/8 to a
// buffer of 16 MiB or more; smaller ones keep 4 KiB pages and waste nothing.
std::byte* allocate_zeroed(std::size_t bytes) {
  constexpr std::size_t align = 256, huge_page = std::size_t{2} << 20, huge_from = std::size_t{16} << 20;
  const bool huge = bytes >= huge_from;
  const std::size_t alignment = huge ? huge_page : align;
  if (bytes > static_cast<std::size_t>(-1) - alignment) throw std::bad_alloc();
  const std::size_t size = (bytes + alignment - 1) / alignment * alignment;  // aligned_alloc wants a multiple
  void* p = std::aligned_alloc(alignment, size);
  if (p == nullptr) throw std::bad_alloc();
#if defined(MADV_HUGEPAGE)
  // Advice only: where it fails (THP off, an old kernel) the pages stay 4 KiB.
  if (huge) ::madvise(p, size, MADV_HUGEPAGE);
#endif
  // Touches every page now rather than inside the first kernel that writes it.
  std::memset(p, 0, bytes);
  return static_cast<std::byte*>(p);
}

}  // namespace

buffer host_device::allocate(std::size_t bytes) {
  {
    std::lock_guard lock(accounting_->mutex);
    if (bytes > accounting_->budget - accounting_->in_use) {
      throw std::system_error(make_error_code(errc::out_of_memory),
                              "cobatch: host device allocation of " + std::to_string(bytes) + " bytes exceeds the " +
                                  std::to_string(accounting_->budget - accounting_->in_use) + " bytes left");
    }
    accounting_->in_use += bytes;
  }
  std::unique_ptr<std::byte, buffer::free_bytes> data;
  try {
    data.reset(allocate_zeroed(bytes));
  } catch (...) {
    std::lock_guard lock(accounting_->mutex);
    accounting_->in_use -= bytes;
    throw;
  }
  return buffer(std::move(data), bytes, accounting_);
}

}  // namespace cobatch::gpu::host
