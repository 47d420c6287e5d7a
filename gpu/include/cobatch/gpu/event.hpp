// event: a marker recorded on a stream. Other streams can wait on it on the
// device (a join that blocks no host thread); coroutines can await it through
// the completion reactor.
//
// Threads: query and async_wait from any thread. Lifetime: an event may be
// destroyed while a wait on it is pending and while graphs that captured it
// live; the device's reactor must outlive it. docs/lifetimes.md.
#pragma once

#include "cobatch/coro/completion_reactor.hpp"
#include "cobatch/gpu/detail/native_handle_owner.hpp"
#include "cobatch/gpu/error.hpp"
#include "cobatch/gpu/fence.hpp"

#include <cstddef>
#include <memory>
#include <system_error>
#include <utility>

namespace cobatch::gpu {

namespace detail {
class event_impl {
 public:
  virtual ~event_impl() = default;
  /// The fence of the latest record (a reached fence if never recorded, as a
  /// CUDA event that was never recorded counts as complete).
  virtual fence current() const = 0;
  virtual coro::completion_reactor& reactor() const noexcept = 0;
  virtual void* native_handle() const noexcept = 0;
  /// Gives the native event up to the caller and returns it; backends
  /// without native events (the host backend) refuse.
  virtual void* release_native_handle() { throw_no_native_handle("event::release()", "events"); }
};
}  // namespace detail

/// Non-owning handle to an event. Cheap to copy; must not outlive the event.
class event_ref {
 public:
  event_ref(std::nullptr_t) = delete;
  explicit event_ref(detail::event_impl& impl) noexcept : impl_(&impl) {}

  /// Where the latest record stands; never blocks.
  coro::fence_status query() const noexcept { return impl_->current().query(); }
  bool ready() const noexcept { return query().is_ready(); }

  /// Waits until the work before the latest record has finished.
  ///
  /// Completion signature: `void(std::error_code)`: empty on success, the
  /// stream's error if work before the record failed, operation_aborted on
  /// cancellation. Cancellation: terminal, partial, total (the event is not
  /// affected). No thread blocks; the handler runs on its executor.
  template <typename Token>
  auto async_wait(Token&& token) const {
    return impl_->reactor().async_wait(impl_->current(), std::forward<Token>(token));
  }

  detail::event_impl& impl() const noexcept { return *impl_; }
  void* native_handle() const noexcept { return impl_->native_handle(); }
  friend bool operator==(event_ref a, event_ref b) noexcept { return a.impl_ == b.impl_; }

 private:
  detail::event_impl* impl_;
};

/// Owning handle to an event: it always owns its backend event (an event
/// used without owning it is an event_ref); destroying it never throws.
/// release() hands the native event back (a cudaEvent_t for the CUDA
/// backend); fences made from it refer to it still. See
/// detail::native_handle_owner for ref(), release() and emptiness.
class event : public detail::native_handle_owner<detail::event_impl, event_ref> {
 public:
  using native_handle_owner::native_handle_owner;
  event() noexcept = default;
  event(std::nullptr_t) = delete;

  coro::fence_status query() const noexcept { return ref().query(); }
  template <typename Token>
  auto async_wait(Token&& token) const {
    return ref().async_wait(std::forward<Token>(token));
  }
};

}  // namespace cobatch::gpu
