// fence: a shared, pollable "has this point of a stream been reached" token.
// Both backends produce them (host fences; CUDA events from a pool) and the
// completion reactor polls them.
#pragma once

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
  const detail::fence_impl* get() const noexcept { return impl_.get(); }

 private:
  std::shared_ptr<const detail::fence_impl> impl_;
};

static_assert(coro::pollable_fence<fence>);

}  // namespace cobatch::gpu
