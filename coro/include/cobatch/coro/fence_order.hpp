// fence_order: where a fence stands among the fences of its stream, so that
// the completion reactor can keep waits on one stream in order and query only
// the oldest pending one (see docs/completion_reactor.md).
#pragma once

#include "cobatch/coro/fence_status.hpp"

#include <concepts>
#include <cstdint>

namespace cobatch::coro {

/// A fence's place in the completion order of the stream it was recorded on.
///
/// The claim a fence makes with it: no fence of the same `stream` with a
/// greater `position` can stop being pending before this one does. Work on
/// one in-order stream finishes in order, so a marker recorded after another
/// on the same stream claims it truthfully; fences that can become ready or
/// fail out of order (a communicator's completion, a fence a user sets by
/// hand, anything failed from outside the stream's order) must not.
/// Fences of one stream may share a position (waits on the same point).
struct fence_order {
  std::uint64_t stream = 0;    ///< from new_order_stream(); 0: no order claimed
  std::uint64_t position = 0;  ///< greater means recorded later on `stream`

  /// No order claimed: the reactor queries the fence on every sweep.
  static constexpr fence_order none() noexcept { return {}; }
  constexpr bool claimed() const noexcept { return stream != 0; }
};

/// A stream identity for fence_order: never 0 and never handed out twice in
/// the process, so a destroyed stream's identity cannot be mistaken for a new
/// stream's. Thread-safe.
std::uint64_t new_order_stream() noexcept;

/// A pollable fence that may say where it stands on its stream. order() is
/// read once, when a wait is submitted, and must not change afterwards;
/// fence_order::none() opts a particular fence out.
template <typename F>
concept ordered_fence = pollable_fence<F> && requires(const F& f) {
  { f.order() } noexcept -> std::same_as<fence_order>;
};

}  // namespace cobatch::coro
