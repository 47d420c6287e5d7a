// The CUDA backend's event: a CUDA event and the scope of its latest record.
// Internal to the CUDA backend.
#pragma once

#include "cobatch/gpu/event.hpp"
#include "device_state.hpp"
#include "record_scope.hpp"

#include <memory>
#include <mutex>

namespace cobatch::gpu::cuda::detail {

class cuda_event final : public gpu::detail::event_impl {
 public:
  cuda_event(std::shared_ptr<device_state> device, std::shared_ptr<CUevent_st> event)
      : device_(std::move(device)), event_(std::move(event)) {}
  fence current() const override;
  coro::completion_reactor& reactor() const noexcept override { return *device_->reactor; }
  void* native_handle() const noexcept override { return event_.get(); }
  /// Hands the CUDA event over (a pooled one leaves the pool for good).
  /// Fences made from it still refer to it: they stay valid while the
  /// caller keeps it alive.
  void* release_native_handle() override;
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

}  // namespace cobatch::gpu::cuda::detail
