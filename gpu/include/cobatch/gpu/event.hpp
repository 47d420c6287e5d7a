// event: a marker recorded on a stream. Other streams can wait on it on the
// device (a join that blocks no host thread); coroutines can await it through
// the completion reactor.
//
// Threads: query and async_wait from any thread. Lifetime: an event may be
// destroyed while a wait on it is pending and while graphs that captured it
// live; the device's reactor must outlive it. docs/lifetimes.md.
#pragma once

#include "cobatch/coro/completion_reactor.hpp"
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
  virtual void* release_native_handle() {
    throw std::system_error(make_error_code(errc::invalid_argument),
                            "cobatch: event::release(): this backend's events have no native handle to hand over");
  }
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
class event {
 public:
  event() noexcept = default;
  explicit event(std::unique_ptr<detail::event_impl> impl) noexcept : impl_(std::move(impl)) {}
  event(std::nullptr_t) = delete;

  explicit operator bool() const noexcept { return static_cast<bool>(impl_); }
  event_ref ref() const noexcept { return event_ref(*impl_); }
  operator event_ref() const noexcept { return ref(); }

  coro::fence_status query() const noexcept { return ref().query(); }
  template <typename Token>
  auto async_wait(Token&& token) const {
    return ref().async_wait(std::forward<Token>(token));
  }
  /// Hands the native event back (a cudaEvent_t for the CUDA backend): the
  /// caller destroys it from now on, and this handle is empty. Fences made
  /// from it refer to it still. Null for an empty handle; throws
  /// std::system_error (errc::invalid_argument), leaving the handle as it
  /// was, for a backend without native events (the host backend).
  [[nodiscard]] void* release() {
    if (!impl_) return nullptr;
    void* native = impl_->release_native_handle();
    impl_.reset();
    return native;
  }

 private:
  std::unique_ptr<detail::event_impl> impl_;
};

}  // namespace cobatch::gpu
