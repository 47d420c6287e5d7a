// The one question the completion reactor asks of anything it waits on.
#pragma once

#include <concepts>
#include <system_error>

namespace cobatch::coro {

/// Where a fence (a host fence, a CUDA event, an NCCL completion) stands.
struct fence_status {
  enum class state : unsigned char { pending, ready, failed };

  state value = state::pending;
  std::error_code error{};  ///< set when value == failed

  static fence_status pending() noexcept { return {}; }
  static fence_status ready() noexcept { return {state::ready, {}}; }
  static fence_status failed(std::error_code ec) noexcept { return {state::failed, ec}; }

  bool is_pending() const noexcept { return value == state::pending; }
  bool is_ready() const noexcept { return value == state::ready; }
  bool is_failed() const noexcept { return value == state::failed; }
};

/// A fence the reactor can poll: query() is cheap, never blocks, and may be
/// called from the poller's thread while other threads signal the fence.
template <typename F>
concept pollable_fence = std::move_constructible<F> && requires(const F& f) {
  { f.query() } noexcept -> std::same_as<fence_status>;
};

}  // namespace cobatch::coro
