// Host backend: the device, the factory of host streams, events and buffers.
#include "cobatch/gpu/host/host_device.hpp"

#include "host_buffer.hpp"
#include "host_event.hpp"
#include "host_stream.hpp"

#include "cobatch/gpu/error.hpp"

#include <mutex>
#include <string>
#include <system_error>

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
  return buffer(std::make_unique<std::byte[]>(bytes), bytes, accounting_);
}

}  // namespace cobatch::gpu::host
