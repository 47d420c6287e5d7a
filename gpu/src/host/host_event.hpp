// host_event: the host backend's event, a slot holding the fence of its
// latest record.
#pragma once

#include "host_fence.hpp"

#include "cobatch/gpu/event.hpp"

#include <memory>
#include <mutex>

namespace cobatch::gpu::host {

class host_event final : public detail::event_impl {
 public:
  explicit host_event(coro::completion_reactor& reactor) : reactor_(&reactor) {}
  fence current() const override {
    std::lock_guard lock(mutex_);
    return fence(current_);
  }
  std::shared_ptr<host_fence> current_fence() const {
    std::lock_guard lock(mutex_);
    return current_;
  }
  void set(std::shared_ptr<host_fence> f) {
    std::lock_guard lock(mutex_);
    current_ = std::move(f);
  }
  coro::completion_reactor& reactor() const noexcept override { return *reactor_; }
  void* native_handle() const noexcept override { return const_cast<host_event*>(this); }

 private:
  coro::completion_reactor* reactor_;
  mutable std::mutex mutex_;
  std::shared_ptr<host_fence> current_;
};

/// The host event behind `e`; throws errc::invalid_argument for an event of
/// another backend.
host_event& as_host(const detail::event_impl& e);

}  // namespace cobatch::gpu::host
