// kv_handoff: moving finished prefills' KV from the prefill ranks to the decode
// ranks (disaggregated prefill and decode), re-sharded on the way from the
// prefill group's DCP layout to the decode group's.
//
// Both groups are ranks of one communicator: prefill ranks
// [prefill_first, prefill_first + prefill.world), decode ranks
// [decode_first, decode_first + decode.world), disjoint. Global token t of a
// request moves from prefill rank prefill.owner(t) to decode rank
// decode.owner(t); each pair exchanges the tokens they share in ascending
// order, every layer, K and V, with send/recv in one group. Each rank knows
// only its own page table: senders gather the rows out of their pages, the
// receivers scatter them into theirs. The transfer runs on the stream it is
// given (a copy or comm stream), so it overlaps the next prefill on compute.
#pragma once

#include <cobatch/engine/attention/dcp.hpp>
#include <cobatch/engine/attention/page_table.hpp>
#include <cobatch/engine/attention/paged_kv_cache.hpp>
#include <cobatch/gpu/communicator.hpp>
#include <cobatch/gpu/device.hpp>
#include <cobatch/gpu/device_memory.hpp>
#include <cobatch/gpu/stream.hpp>

#include <asio/associated_cancellation_slot.hpp>
#include <asio/associated_executor.hpp>
#include <asio/async_result.hpp>
#include <asio/bind_cancellation_slot.hpp>
#include <asio/bind_executor.hpp>

#include <cstdint>
#include <memory>
#include <span>
#include <system_error>
#include <utility>

namespace cobatch::engine {

struct kv_handoff_config {
  std::int32_t prefill_first = 0;  ///< communicator rank of prefill DCP rank 0
  dcp_layout prefill;              ///< its rank field is ignored
  std::int32_t decode_first = 0;   ///< communicator rank of decode DCP rank 0
  dcp_layout decode;               ///< its rank field is ignored
};

/// This rank's side of hand-offs. Not copyable. Holds staging memory sized
/// by the largest plan so far.
class kv_handoff {
 public:
  /// Checks that the groups fit in `comm`, are disjoint, and that the
  /// caches agree on geometry (the receiving side checks at plan time what
  /// the sender cannot see). Throws engine_error naming the value.
  kv_handoff(gpu::device& device, paged_kv_cache& cache, const gpu::communicator& comm, kv_handoff_config config);
  ~kv_handoff();
  kv_handoff(const kv_handoff&) = delete;
  kv_handoff& operator=(const kv_handoff&) = delete;

  /// This rank's role: prefill (sends), decode (receives) or neither.
  enum class role { prefill, decode, none };
  role my_role() const noexcept { return role_; }

  /// Plans moving requests of these global lengths (all tokens of each).
  /// `pages` is this rank's page table for them: the pages holding its
  /// prefill shard (a sender) or the pages allocated for its decode shard (a
  /// receiver); ignored for role::none. Pure CPU. Throws engine_error:
  /// errc::length_mismatch (page counts that do not fit the shard, request
  /// counts), errc::invalid_argument (page indices out of range, negative
  /// lengths), errc::empty_batch (no requests).
  void plan(std::span<const std::int32_t> seq_lens, const page_table_view& pages);

  /// Moves the planned requests' KV: gather, send/recv in one group, scatter,
  /// all enqueued on `s`. Every rank of both groups must call it (ranks in
  /// neither group need not). Completion signature: `void(std::error_code)`:
  /// empty once the pages are resident on this rank (receiver) or sent
  /// (sender); a communicator's or stream's error otherwise, in which case
  /// the communicator is aborted so that no peer waits forever.
  /// Cancellation: terminal, partial, total; it aborts the communicator too.
  /// Throws engine_error (invalid_argument) when not planned.
  template <class Token>
  auto async_transfer(gpu::stream_ref s, Token&& token) {
    enqueue_transfer(s);
    return asio::async_initiate<Token, void(std::error_code)>(
        [this, s](auto handler) {
          auto ex = asio::get_associated_executor(handler, s.impl().reactor().get_executor());
          auto slot = asio::get_associated_cancellation_slot(handler);
          s.async_wait(asio::bind_cancellation_slot(
              slot, asio::bind_executor(ex, [this, h = std::move(handler)](std::error_code ec) mutable {
                if (ec) comm_->abort();
                std::move(h)(ec);
              })));
        },
        token);
  }

  /// Enqueues the transfer without waiting.
  void enqueue_transfer(gpu::stream_ref s);

  /// Bytes this rank sends plus receives in the planned transfer.
  std::int64_t planned_bytes() const noexcept;
  /// Bytes moved by transfers so far.
  std::int64_t bytes_moved() const noexcept { return bytes_moved_; }

 private:
  struct state;
  gpu::device* device_;
  paged_kv_cache* cache_;
  const gpu::communicator* comm_;
  kv_handoff_config config_;
  role role_ = role::none;
  std::int32_t group_rank_ = 0;
  std::int64_t bytes_moved_ = 0;
  std::unique_ptr<state> state_;
};

}  // namespace cobatch::engine
