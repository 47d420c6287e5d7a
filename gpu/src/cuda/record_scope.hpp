// What a point of a CUDA stream depends on besides the device work itself,
// and the fence the reactor polls for it: host-side failures by ticket,
// failures inherited through joins, guards of unfinished collectives; and
// queries that stay legal while a capture is open. Internal to the CUDA
// backend.
#pragma once

#include "cobatch/gpu/cuda/error.hpp"
#include "cobatch/gpu/fence.hpp"

#include <cuda_runtime.h>

#include <atomic>
#include <cstdint>
#include <limits>
#include <memory>
#include <mutex>
#include <system_error>
#include <vector>

namespace cobatch::gpu::cuda::detail {

/// Failures the runtime does not attach to the stream itself: a launch CUDA
/// refused, a host function that threw. Each operation issued on the stream
/// takes a ticket; a fence covers the tickets before it and fails if one of
/// them failed, so a failure never leaks into fences of earlier work.
class stream_health {
 public:
  std::uint64_t issue() noexcept { return issued_.fetch_add(1, std::memory_order_relaxed) + 1; }
  std::uint64_t issued() const noexcept { return issued_.load(std::memory_order_relaxed); }
  void fail(std::error_code ec, std::uint64_t ticket) noexcept {
    std::lock_guard lock(mutex_);
    if (!error_ || ticket < ticket_) {
      error_ = ec;
      ticket_ = ticket;
    }
    failed_.store(true, std::memory_order_release);
  }
  /// The failure of an operation with a ticket <= `ticket`, if any.
  std::error_code error_up_to(std::uint64_t ticket) const noexcept {
    if (!failed_.load(std::memory_order_acquire)) return {};  // the common case: no lock
    std::lock_guard lock(mutex_);
    return ticket_ <= ticket ? error_ : std::error_code{};
  }
  std::error_code first_error() const noexcept {
    if (!failed_.load(std::memory_order_acquire)) return {};
    std::lock_guard lock(mutex_);
    return error_;
  }
  /// The stream is gone and all its work finished (its owner synchronized
  /// before destroying it): no failure can be added any more.
  void retire() noexcept { retired_.store(true, std::memory_order_release); }
  bool retired() const noexcept { return retired_.load(std::memory_order_acquire); }

 private:
  std::atomic<std::uint64_t> issued_{0};
  std::atomic<bool> retired_{false};
  std::atomic<bool> failed_{false};
  mutable std::mutex mutex_;
  std::error_code error_;
  std::uint64_t ticket_ = std::numeric_limits<std::uint64_t>::max();
};

/// Something besides an event that can fail a pending fence: an NCCL
/// collective, whose kernel waits forever for a peer that died unless its
/// communicator is aborted. check() is polled while the event is pending.
class fence_guard {
 public:
  virtual ~fence_guard() = default;
  /// Empty while all is well; the failure otherwise (after acting on it,
  /// e.g. aborting the communicator). Cheap, never blocks for long.
  virtual std::error_code check() const noexcept = 0;
  /// The failure that cut the guarded work short, if one did. Asked even
  /// when the event completed: an aborted collective's kernels return early,
  /// and its completion event then completes although its data is not there.
  virtual std::error_code cut_short() const noexcept = 0;
};

/// A guard watched until `done` (an event recorded after the guarded work)
/// completes.
struct guard_entry {
  std::shared_ptr<const fence_guard> guard;
  std::shared_ptr<CUevent_st> done;
};

/// Another stream's failures up to a point, inherited by waiting on one of
/// its events: if work there before the record failed, work here after the
/// wait consumed what it never produced.
struct upstream {
  std::shared_ptr<const stream_health> health;
  std::uint64_t ticket = 0;
};

/// Everything a point of a stream depends on besides the CUDA work itself:
/// the stream's own host-side failures up to `ticket`, those of the streams
/// it joined (transitively), and the guards of collectives it follows. A
/// fence or an event record covers one; wait() hands it on to the waiter.
struct record_scope {
  std::shared_ptr<const stream_health> health;  // null: recorded by no stream of ours
  std::uint64_t ticket = 0;
  std::vector<upstream> upstreams;
  std::vector<guard_entry> guards;
  /// The record's place on its stream (coro::fence_order), for the reactor;
  /// none() inside a capture or when a failure is already known.
  coro::fence_order order{};

  /// The first failure known so far, without asking the device.
  std::error_code failure() const noexcept;
};

/// Makes this thread's CUDA calls allowed while a stream capture started on
/// it is open. In thread-local (and global) capture mode, cudaEventQuery and
/// cudaStreamQuery on the capturing thread are "unsafe" calls: they fail and
/// invalidate the capture. A reactor polls on the loop thread, which is
/// often the capturing one; with the thread's mode exchanged for relaxed
/// around a query, the query is legal and the capture stays intact. Two
/// thread-local runtime calls; no driver work.
class relaxed_capture_mode {
 public:
  relaxed_capture_mode() noexcept { cudaThreadExchangeStreamCaptureMode(&previous_); }
  ~relaxed_capture_mode() { cudaThreadExchangeStreamCaptureMode(&previous_); }
  relaxed_capture_mode(const relaxed_capture_mode&) = delete;
  relaxed_capture_mode& operator=(const relaxed_capture_mode&) = delete;

 private:
  cudaStreamCaptureMode previous_ = cudaStreamCaptureModeRelaxed;
};

/// cudaEventQuery that is legal during a capture on this thread and leaves
/// no error behind on the thread.
cudaError_t query_event(cudaEvent_t e) noexcept;

/// What the reactor polls for CUDA work: the event, and the scope of the
/// record it stands for.
class event_fence final : public gpu::detail::fence_impl {
 public:
  event_fence(std::shared_ptr<CUevent_st> event, record_scope scope)
      : event_(std::move(event)), scope_(std::move(scope)) {}
  coro::fence_status query() const noexcept override;
  coro::fence_order order() const noexcept override { return scope_.order; }

 private:
  std::shared_ptr<CUevent_st> event_;
  record_scope scope_;
};

}  // namespace cobatch::gpu::cuda::detail
