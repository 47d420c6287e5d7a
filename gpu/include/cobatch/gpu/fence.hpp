// fence: a shared, pollable "has this point of a stream been reached" token.
// Both backends produce them (host fences; CUDA events from a pool) and the
// completion reactor polls them.
#pragma once

#include "cobatch/coro/fence_order.hpp"
#include "cobatch/coro/fence_status.hpp"

#include <memory>
#include <utility>

namespace cobatch::gpu {

namespace detail {
class fence_impl {
 public:
  virtual ~fence_impl() = default;
  /// Never blocks; safe to call from any thread while the fence is signalled.
  virtual coro::fence_status query() const noexcept = 0;
  /// The fence's place on its stream, if it may claim one (see
  /// coro::fence_order for the rule). Fixed when the fence is made.
  virtual coro::fence_order order() const noexcept { return coro::fence_order::none(); }
};
}  // namespace detail

/// Shared ownership: the recording stream, the waiting reactor and any copy
/// keep it alive. A default-constructed fence is already reached.
class fence {
 public:
  fence() noexcept = default;
  explicit fence(std::shared_ptr<const detail::fence_impl> impl) noexcept : impl_(std::move(impl)) {}

  coro::fence_status query() const noexcept {
    return impl_ ? impl_->query() : coro::fence_status::ready();
  }
  /// A stream marker's place on its stream, which lets the completion reactor
  /// query only the oldest pending wait of each stream; none() for fences
  /// without one (a communicator's completion, a fence recorded in a graph).
  coro::fence_order order() const noexcept { return impl_ ? impl_->order() : coro::fence_order::none(); }
  const detail::fence_impl* get() const noexcept { return impl_.get(); }

 private:
  std::shared_ptr<const detail::fence_impl> impl_;
};

static_assert(coro::ordered_fence<fence>);

}  // namespace cobatch::gpu
