// Events and the fences the reactor polls: the scope of a record (host-side
// failures by ticket, failures inherited through joins, guards of unfinished
// collectives) checked beside the CUDA event.
#include "cuda_event.hpp"

#include "cobatch/gpu/error.hpp"

#include <system_error>

namespace cobatch::gpu::cuda::detail {

cudaError_t query_event(cudaEvent_t e) noexcept {
  cudaError_t status = cudaSuccess;
  {
    relaxed_capture_mode relaxed;
    status = cudaEventQuery(e);
  }
  // cudaEventQuery reports asynchronous failures of earlier work (a fault in
  // a kernel) and cudaErrorNotReady as its own result, and leaves them as the
  // thread's last error, which the querying thread (a poller) does not own.
  if (status != cudaSuccess) cudaGetLastError();
  return status;
}

std::error_code record_scope::failure() const noexcept {
  if (health) {
    if (auto ec = health->error_up_to(ticket)) return ec;
  }
  for (const auto& u : upstreams) {
    if (auto ec = u.health->error_up_to(u.ticket)) return ec;
  }
  for (const auto& g : guards) {
    if (auto ec = g.guard->cut_short()) return ec;
  }
  return {};
}

coro::fence_status event_fence::query() const noexcept {
  if (auto ec = scope_.failure()) return coro::fence_status::failed(ec);
  const cudaError_t status = query_event(event_.get());
  if (status == cudaSuccess) {
    // A host function before the record may have failed while the event
    // completed: the scope is final now, look once more.
    if (auto ec = scope_.failure()) return coro::fence_status::failed(ec);
    return coro::fence_status::ready();
  }
  if (status != cudaErrorNotReady) return coro::fence_status::failed(make_cuda_error_code(status));
  for (const auto& g : scope_.guards) {
    if (auto ec = g.guard->check()) return coro::fence_status::failed(ec);
  }
  return coro::fence_status::pending();
}

fence cuda_event::current() const {
  std::lock_guard lock(mutex_);
  return fence(std::make_shared<event_fence>(event_, scope_));
}

void cuda_event::recorded(record_scope scope) {
  std::lock_guard lock(mutex_);
  scope_ = std::move(scope);
}

void* cuda_event::release_native_handle() {
  auto* how = std::get_deleter<event_release>(event_);
  if (how == nullptr || how->how == event_release::mode::leave) {
    throw std::system_error(make_error_code(errc::invalid_argument),
                            "cobatch: event::release(): the CUDA event is not this event's to hand over");
  }
  how->how = event_release::mode::leave;
  return event_.get();
}

record_scope cuda_event::scope() const {
  std::lock_guard lock(mutex_);
  return scope_;
}

}  // namespace cobatch::gpu::cuda::detail
