// async_wait_collective: waits for a stream that runs collectives, where
// giving up must not leave the peers waiting. A cancelled wait on a plain
// stream only stops waiting; a collective, once issued, keeps every other
// rank inside it until this rank takes part, so cancelling it aborts the
// communicator: every rank's pending and later calls then fail with
// errc::communicator_aborted instead of hanging.
#pragma once

#include "cobatch/gpu/communicator.hpp"
#include "cobatch/gpu/stream.hpp"

#include <asio/associated_cancellation_slot.hpp>
#include <asio/associated_executor.hpp>
#include <asio/async_result.hpp>
#include <asio/bind_cancellation_slot.hpp>
#include <asio/bind_executor.hpp>
#include <asio/cancellation_signal.hpp>
#include <asio/error.hpp>

#include <atomic>
#include <memory>
#include <system_error>
#include <utility>

namespace cobatch::gpu {

/// Waits for everything enqueued on `s` so far, collectives of `comm` among
/// them.
///
/// Completion signature: `void(std::error_code)`: empty on success; the
/// collective's failure (the communicator's error, errc::timeout,
/// errc::communicator_aborted) or the stream's; operation_aborted when
/// cancelled or when the reactor shut down. Cancellation: terminal, partial,
/// total; any of them aborts `comm`. A reactor that shuts down completes the
/// wait with operation_aborted too, but that is the waiter going away, not a
/// decision to give up on the collective: it leaves `comm` alone. `comm`
/// must outlive the wait.
template <typename Token>
auto async_wait_collective(const communicator& comm, stream_ref s, Token&& token) {
  return asio::async_initiate<Token, void(std::error_code)>(
      [&impl = comm.impl(), s](auto handler) {
        auto ex = asio::get_associated_executor(handler, s.impl().reactor().get_executor());
        auto slot = asio::get_associated_cancellation_slot(handler);
        // The caller's cancellation passes through here, so that it is known
        // to have been asked for when the wait ends with operation_aborted.
        struct relay {
          asio::cancellation_signal signal;
          std::atomic<bool> requested{false};
        };
        auto r = std::make_shared<relay>();
        if (slot.is_connected()) {
          slot.assign([r](asio::cancellation_type type) {
            r->requested.store(true, std::memory_order_release);
            r->signal.emit(type);
          });
        }
        s.async_wait(asio::bind_cancellation_slot(
            r->signal.slot(),
            asio::bind_executor(ex, [&impl, r, slot, h = std::move(handler)](std::error_code ec) mutable {
              if (slot.is_connected()) slot.clear();
              if (ec == asio::error::operation_aborted && r->requested.load(std::memory_order_acquire)) impl.abort();
              std::move(h)(ec);
            })));
      },
      token);
}

}  // namespace cobatch::gpu
