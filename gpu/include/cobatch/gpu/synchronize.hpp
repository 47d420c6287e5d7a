// Waiting for several streams at once: every stream of a pool (the seed's
// StreamManager.synchronize_all), or any list of streams, as one awaitable
// operation. No thread blocks; the waits go through the streams' reactors.
#pragma once

#include "cobatch/gpu/stream.hpp"
#include "cobatch/gpu/stream_pool.hpp"

#include <asio/associated_cancellation_slot.hpp>
#include <asio/async_result.hpp>
#include <asio/cancellation_type.hpp>
#include <asio/compose.hpp>
#include <asio/error.hpp>
#include <asio/post.hpp>

#include <cstddef>
#include <span>
#include <system_error>
#include <utility>
#include <vector>

namespace cobatch::gpu {

namespace detail {

// Waits for the fences one after the other: all were marked when the
// operation started, so waiting in turn waits for all of them, with one wait
// outstanding at a time (one cancellation target).
struct synchronize_op {
  struct pending {
    coro::completion_reactor* reactor;
    fence done;
  };
  std::vector<pending> waits;
  std::size_t next = 0;
  std::error_code first_error{};
  bool started = false;

  template <class Self>
  void operator()(Self& self, std::error_code ec = {}) {
    if (!started) {
      started = true;
      // Partial and total cancellation too: abandoning the remaining waits
      // leaves no side effect (the streams' work runs on).
      self.reset_cancellation_state(asio::enable_total_cancellation());
      if (waits.empty()) {
        // Completing inside the initiating function would run the handler
        // inline; post it as every other completion is.
        asio::post(std::move(self));
        return;
      }
    } else if (ec == asio::error::operation_aborted) {
      self.complete(ec);
      return;
    } else if (ec && !first_error) {
      first_error = ec;
    }
    if (next == waits.size()) {
      self.complete(first_error);
      return;
    }
    pending& w = waits[next++];
    w.reactor->async_wait(std::move(w.done), std::move(self));
  }
};

}  // namespace detail

/// Waits for everything enqueued so far on every stream of `streams` (marked
/// when the call is made; later work is not waited for).
///
/// Completion signature: `void(std::error_code)`. Empty when every stream's
/// work completed; otherwise the error of the first failed stream in the
/// order given, reported only after every stream has been waited for (the
/// caller may free what the work used once it returns); operation_aborted
/// when cancelled. Cancellation: terminal, partial, total; the remaining
/// waits are abandoned, not the streams' work. The handler runs on its
/// associated executor (by default, that of the first stream's reactor, as
/// for stream_ref::async_wait), never inside this call. An empty list
/// completes with success, posted to the handler's associated executor (the
/// system executor when it has none).
template <typename Token>
auto async_synchronize(std::span<const stream_ref> streams, Token&& token) {
  detail::synchronize_op op;
  op.waits.reserve(streams.size());
  for (const stream_ref& s : streams) op.waits.push_back({&s.impl().reactor(), s.mark()});
  if (streams.empty()) return asio::async_compose<Token, void(std::error_code)>(std::move(op), token);
  const auto executor = streams.front().impl().reactor().get_executor();
  return asio::async_compose<Token, void(std::error_code)>(std::move(op), token, executor);
}

/// async_synchronize over every compute and communication stream of `pool`
/// (compute streams first), with the same completion and cancellation.
template <typename Token>
auto async_synchronize_all(const stream_pool& pool, Token&& token) {
  std::vector<stream_ref> streams;
  streams.reserve(pool.size(stream_role::compute) + pool.size(stream_role::communication));
  for (const auto role : {stream_role::compute, stream_role::communication})
    for (std::size_t i = 0; i < pool.size(role); ++i) streams.push_back(pool.at(role, i));
  return async_synchronize(std::span<const stream_ref>(streams), std::forward<Token>(token));
}

}  // namespace cobatch::gpu
