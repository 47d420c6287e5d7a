// host_event: the host backend's event, a slot holding the fence of its
// latest record.
#pragma once

#include "host_fence.hpp"

#include "cobatch/gpu/event.hpp"

#include <memory>
#include <mutex>

namespace cobatch::gpu::host {

/// Where an event's latest record lives. Shared: a graph that captured the
/// event records into and waits on this slot, so it may outlive the event
/// (a cached graph routinely outlives the scheduler whose events it captured).
class event_slot {
 public:
  std::shared_ptr<host_fence> current() const {
    std::lock_guard lock(mutex_);
    return current_;
  }
  void set(std::shared_ptr<host_fence> f) {
    std::lock_guard lock(mutex_);
    current_ = std::move(f);
  }

 private:
  mutable std::mutex mutex_;
  std::shared_ptr<host_fence> current_;
};

class host_event final : public detail::event_impl {
 public:
  explicit host_event(coro::completion_reactor& reactor)
      : reactor_(&reactor), slot_(std::make_shared<event_slot>()) {}
  fence current() const override { return fence(slot_->current()); }
  std::shared_ptr<host_fence> current_fence() const { return slot_->current(); }
  void set(std::shared_ptr<host_fence> f) { slot_->set(std::move(f)); }
  const std::shared_ptr<event_slot>& slot() const noexcept { return slot_; }
  coro::completion_reactor& reactor() const noexcept override { return *reactor_; }
  void* native_handle() const noexcept override { return const_cast<host_event*>(this); }

 private:
  coro::completion_reactor* reactor_;
  std::shared_ptr<event_slot> slot_;
};

/// The host event behind `e`; throws errc::invalid_argument for an event of
/// another backend.
host_event& as_host(const detail::event_impl& e);

}  // namespace cobatch::gpu::host
