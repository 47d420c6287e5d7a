// stream: an in-order queue of device work. Work on one stream runs in order;
// work on different streams may overlap unless joined with events.
//
// Threads: any thread may enqueue, record, wait or mark while the stream is not
// capturing; while it captures, only the capturing thread may (others get
// errc::capture_invalid). Lifetime: destroying a stream waits for its work;
// the device's reactor must outlive it. docs/lifetimes.md.
#pragma once

#include "cobatch/gpu/detail/unique_function.hpp"
#include "cobatch/gpu/error.hpp"
#include "cobatch/gpu/event.hpp"
#include "cobatch/gpu/fence.hpp"
#include "cobatch/gpu/graph.hpp"

#include <cstddef>
#include <memory>
#include <system_error>
#include <utility>

namespace cobatch::gpu {

/// Scheduling priority of a stream. Communication streams usually get high
/// priority so that a collective is not queued behind long compute.
enum class stream_priority : int { low = 0, normal = 1, high = 2 };

struct stream_options {
  stream_priority priority = stream_priority::normal;
};

namespace detail {
class stream_impl {
 public:
  virtual ~stream_impl() = default;
  /// Runs `fn` on the host when the stream reaches it (host backend: on the
  /// stream's worker; CUDA: as a host function, which must not call CUDA).
  virtual void enqueue(unique_function fn) = 0;
  virtual void record(event_impl& e) = 0;
  /// The stream waits, on the device, for the event's latest record.
  virtual void wait(const event_impl& e) = 0;
  /// A fence that is reached when everything enqueued so far has finished.
  virtual fence mark() = 0;
  virtual stream_priority priority() const noexcept = 0;
  /// The stream's sticky error, if an operation on it failed.
  virtual std::error_code error() const noexcept = 0;
  virtual void begin_capture() = 0;
  virtual graph end_capture() = 0;
  virtual bool capturing() const noexcept = 0;
  virtual coro::completion_reactor& reactor() const noexcept = 0;
  virtual void* native_handle() const noexcept = 0;
  /// Gives the native stream up to the caller (the backend object no longer
  /// destroys it) and returns it. Backends whose streams have no native
  /// object of their own (the host backend) refuse.
  virtual void* release_native_handle() { throw_no_native_handle("stream::release()", "streams"); }
};
}  // namespace detail

/// Non-owning handle to a stream. Cheap to copy; must not outlive the stream.
class stream_ref {
 public:
  stream_ref(std::nullptr_t) = delete;
  explicit stream_ref(detail::stream_impl& impl) noexcept : impl_(&impl) {}

  /// Enqueues a host function (see detail::stream_impl::enqueue). A function
  /// that throws puts the stream in an error state: later work is skipped and
  /// later events and waits report the error.
  template <typename F>
  void enqueue(F&& fn) const {
    impl_->enqueue(detail::unique_function(std::forward<F>(fn)));
  }
  void record(event_ref e) const { impl_->record(e.impl()); }
  /// Device-side join: later work on this stream starts after `e`'s record.
  void wait(event_ref e) const { impl_->wait(e.impl()); }
  fence mark() const { return impl_->mark(); }

  /// Waits for everything enqueued on the stream so far.
  ///
  /// Completion signature: `void(std::error_code)`: empty on success, the
  /// stream's error when an operation failed, operation_aborted when
  /// cancelled. Cancellation: terminal, partial, total (the stream's work is
  /// not cancelled, only the wait). No thread blocks.
  template <typename Token>
  auto async_wait(Token&& token) const {
    return impl_->reactor().async_wait(impl_->mark(), std::forward<Token>(token));
  }

  /// Starts recording instead of executing: work enqueued until end_capture()
  /// becomes a graph.
  void begin_capture() const { impl_->begin_capture(); }
  graph end_capture() const { return impl_->end_capture(); }
  bool capturing() const noexcept { return impl_->capturing(); }

  stream_priority priority() const noexcept { return impl_->priority(); }
  std::error_code error() const noexcept { return impl_->error(); }
  void* native_handle() const noexcept { return impl_->native_handle(); }
  detail::stream_impl& impl() const noexcept { return *impl_; }
  friend bool operator==(stream_ref a, stream_ref b) noexcept { return a.impl_ == b.impl_; }

 private:
  detail::stream_impl* impl_;
};

/// Owning handle to a stream: it always owns its backend stream (a stream
/// used without owning it is a stream_ref). Its destructor waits for the
/// enqueued work to finish, then destroys the stream, and never throws.
/// release() hands the native stream back (a cudaStream_t for the CUDA
/// backend) without waiting for enqueued work. See
/// detail::native_handle_owner for ref(), release() and emptiness.
class stream : public detail::native_handle_owner<detail::stream_impl, stream_ref> {
 public:
  using native_handle_owner::native_handle_owner;
  stream() noexcept = default;
  stream(std::nullptr_t) = delete;

  template <typename F>
  void enqueue(F&& fn) const {
    ref().enqueue(std::forward<F>(fn));
  }
  void record(event_ref e) const { ref().record(e); }
  void wait(event_ref e) const { ref().wait(e); }
  template <typename Token>
  auto async_wait(Token&& token) const {
    return ref().async_wait(std::forward<Token>(token));
  }
};

inline void graph_exec::launch(stream_ref s) const { impl_->launch(s.impl()); }

}  // namespace cobatch::gpu
