// Internals of the CUDA backend shared by its translation units (device,
// streams, graphs, kernels' launch errors, NCCL). Not installed.
#pragma once

#include "cobatch/gpu/cuda/cuda_device.hpp"
#include "cobatch/gpu/cuda/error.hpp"
#include "cobatch/gpu/error.hpp"
#include "cobatch/gpu/stream.hpp"

#include <cuda_runtime.h>

#include <atomic>
#include <cstdint>
#include <limits>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

namespace cobatch::gpu::cuda::detail {

/// Events without timing, reused: creating an event costs a driver call and
/// some microseconds; a fence per mark() would pay it on every await.
class event_pool : public std::enable_shared_from_this<event_pool> {
 public:
  explicit event_pool(int ordinal) : ordinal_(ordinal) {}
  event_pool(const event_pool&) = delete;
  event_pool& operator=(const event_pool&) = delete;
  ~event_pool();

  /// An event from the pool, returned to it when the last owner lets go.
  std::shared_ptr<CUevent_st> acquire();
  std::size_t idle() const;
  void give_back(cudaEvent_t e) noexcept;

 private:
  int ordinal_;
  mutable std::mutex mutex_;
  std::vector<cudaEvent_t> free_;
};

/// What happens to an event when its last owner lets go: back to the pool,
/// destroyed (timed events), or nothing (borrowed, or released to the caller).
struct event_release {
  enum class mode { to_pool, destroy, leave } how;
  std::shared_ptr<event_pool> pool;
  void operator()(CUevent_st* e) const noexcept;
};

struct device_state {
  int ordinal = 0;
  coro::completion_reactor* reactor = nullptr;
  int least_priority = 0;     // numerically greatest
  int greatest_priority = 0;  // numerically least
  std::string name;
  std::shared_ptr<event_pool> events;
};

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

class cuda_event final : public gpu::detail::event_impl {
 public:
  cuda_event(std::shared_ptr<device_state> device, std::shared_ptr<CUevent_st> event)
      : device_(std::move(device)), event_(std::move(event)) {}
  fence current() const override;
  coro::completion_reactor& reactor() const noexcept override { return *device_->reactor; }
  void* native_handle() const noexcept override { return event_.get(); }
  cudaEvent_t get() const noexcept { return event_.get(); }
  const std::shared_ptr<CUevent_st>& shared() const noexcept { return event_; }
  /// Remembers what a record covers, for the fences made from it and the
  /// streams that wait on it.
  void recorded(record_scope scope);
  record_scope scope() const;

 private:
  std::shared_ptr<device_state> device_;
  std::shared_ptr<CUevent_st> event_;
  mutable std::mutex mutex_;
  record_scope scope_;
};

/// Something to do each time a graph is launched, noted while it was
/// captured: a collective captured into a graph is watched (completion
/// event, guard) per replay, as an eager one is per call.
class launch_note {
 public:
  virtual ~launch_note() = default;
  virtual void on_launch(class cuda_stream& s) const = 0;
};

/// Notes of the captures in progress, by capture id (cudaStreamGetCaptureInfo):
/// a capture may span streams, and the notes of all of them go to the graph
/// that ends it.
void add_capture_note(unsigned long long capture_id, std::shared_ptr<const launch_note> note);
std::vector<std::shared_ptr<const launch_note>> take_capture_notes(unsigned long long capture_id);

using stream_handle = std::unique_ptr<CUstream_st, void (*)(CUstream_st*)>;
void destroy_stream(CUstream_st* s) noexcept;  // owned streams
void leave_stream(CUstream_st* s) noexcept;    // borrowed ones

class cuda_stream final : public gpu::detail::stream_impl {
 public:
  cuda_stream(std::shared_ptr<device_state> device, stream_handle handle, stream_priority priority)
      : device_(std::move(device)), handle_(std::move(handle)), priority_(priority) {}

  void enqueue(gpu::detail::unique_function fn) override;
  void record(gpu::detail::event_impl& e) override;
  void wait(const gpu::detail::event_impl& e) override;
  fence mark() override;
  stream_priority priority() const noexcept override { return priority_; }
  std::error_code error() const noexcept override;
  void begin_capture() override;
  graph end_capture() override;
  bool capturing() const noexcept override;
  coro::completion_reactor& reactor() const noexcept override { return *device_->reactor; }
  void* native_handle() const noexcept override { return handle_.get(); }

  cudaStream_t get() const noexcept { return handle_.get(); }
  const std::shared_ptr<device_state>& device() const noexcept { return device_; }
  /// Takes a ticket for an operation issued on the stream by other code
  /// (kernels, copies, collectives).
  std::uint64_t issue() noexcept { return health_->issue(); }
  /// Records a failure of an operation issued now (a refused launch).
  void fail(std::error_code ec) noexcept { health_->fail(ec, health_->issue()); }
  /// Records a failure of the operation that took `ticket` (a collective
  /// whose group failed after it was issued).
  void fail_at(std::error_code ec, std::uint64_t ticket) noexcept { health_->fail(ec, ticket); }
  /// Keeps `guard` in every fence of this stream until `done` completes.
  void attach(std::shared_ptr<const fence_guard> guard, std::shared_ptr<CUevent_st> done);
  /// The capture this stream takes part in, active or invalidated (0 when
  /// it is not capturing).
  unsigned long long capture_id() const;
  /// The owned CUDA stream, handed over (nullptr if it was borrowed).
  cudaStream_t release() noexcept;
  ~cuda_stream() override;

 private:
  record_scope scope();
  std::vector<guard_entry> live_guards();
  std::vector<upstream> live_upstreams();
  void inherit(const record_scope& scope);

  std::shared_ptr<device_state> device_;
  stream_handle handle_;
  stream_priority priority_;
  std::shared_ptr<stream_health> health_ = std::make_shared<stream_health>();
  // Touched only by the thread driving the stream.
  std::vector<guard_entry> guards_;
  std::vector<upstream> upstreams_;
  const std::uint64_t order_stream_ = coro::new_order_stream();
  std::uint64_t positions_ = 0;
};

/// The CUDA stream behind a gpu stream, or errc::invalid_argument.
cuda_stream& as_cuda(gpu::detail::stream_impl& s);
cuda_event& as_cuda(gpu::detail::event_impl& e);
const cuda_event& as_cuda(const gpu::detail::event_impl& e);

/// Makes `ordinal` current on this thread (a no-op when it already is).
void set_device(int ordinal);

/// Puts the stream in a failed state when a launch returned an error.
void note_launch(stream_ref s, int status) noexcept;

}  // namespace cobatch::gpu::cuda::detail
