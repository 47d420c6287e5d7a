// The CUDA backend's streams, and the helpers that reach them from the
// backend-neutral handles. Internal to the CUDA backend; its translation
// units (device, streams, graphs, kernels' launch errors, NCCL, memory)
// include this.
#pragma once

#include "cobatch/gpu/cuda/cuda_device.hpp"
#include "cobatch/gpu/cuda/error.hpp"
#include "cobatch/gpu/error.hpp"
#include "cobatch/gpu/stream.hpp"
#include "cuda_event.hpp"
#include "cuda_graph.hpp"
#include "device_state.hpp"
#include "event_pool.hpp"
#include "prune_schedule.hpp"
#include "record_scope.hpp"

#include <cuda_runtime.h>

#include <cstdint>
#include <memory>
#include <vector>

namespace cobatch::gpu::cuda::detail {

/// A CUDA stream as the backend sees it: the stream, and what CUDA does not
/// keep for it (host-side failures, joins' scopes, guards). This base class
/// does not own the CUDA stream: a borrowed one (cuda_device::borrow) is
/// someone else's. owned_cuda_stream, behind every owning gpu::stream, does.
class cuda_stream : public gpu::detail::stream_impl {
 public:
  cuda_stream(std::shared_ptr<device_state> device, cudaStream_t handle, stream_priority priority)
      : device_(std::move(device)), handle_(handle), priority_(priority) {}
  cuda_stream(const cuda_stream&) = delete;
  cuda_stream& operator=(const cuda_stream&) = delete;

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
  void* native_handle() const noexcept override { return handle_; }

  cudaStream_t get() const noexcept { return handle_; }
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

 protected:
  /// For the owner: ends an open capture and waits for the enqueued work.
  void finish() noexcept;

  std::shared_ptr<device_state> device_;
  cudaStream_t handle_;
  stream_priority priority_;
  std::shared_ptr<stream_health> health_ = std::make_shared<stream_health>();

 private:
  record_scope scope();
  std::vector<guard_entry> live_guards();
  std::vector<upstream> live_upstreams();
  void inherit(const record_scope& scope);

  // Touched only by the thread driving the stream.
  std::vector<guard_entry> guards_;
  prune_schedule prune_;  // when attach() prunes guards_
  std::vector<upstream> upstreams_;
  const std::uint64_t order_stream_ = coro::new_order_stream();
  std::uint64_t positions_ = 0;
};

/// A CUDA stream this backend owns: made by cuda_device::make_stream, or
/// adopted by from_native_handle. Destruction ends an open capture, waits
/// for the enqueued work (as gpu::stream promises) and destroys the stream;
/// release_native_handle() hands it over instead.
class owned_cuda_stream final : public cuda_stream {
 public:
  using cuda_stream::cuda_stream;
  ~owned_cuda_stream() override;
  void* release_native_handle() override;
};

/// The CUDA stream behind a gpu stream, or errc::invalid_argument.
cuda_stream& as_cuda(gpu::detail::stream_impl& s);
cuda_event& as_cuda(gpu::detail::event_impl& e);
const cuda_event& as_cuda(const gpu::detail::event_impl& e);

/// Puts the stream in a failed state when a launch returned an error.
void note_launch(stream_ref s, int status) noexcept;

}  // namespace cobatch::gpu::cuda::detail
