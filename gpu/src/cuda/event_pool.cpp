// Events without timing from a per-device pool.
#include "event_pool.hpp"

#include "cobatch/gpu/cuda/error.hpp"
#include "device_state.hpp"
#include "record_scope.hpp"

namespace cobatch::gpu::cuda::detail {

event_pool::~event_pool() {
  for (auto e : free_) cudaEventDestroy(e);  // never throws; a failure here has no one to tell
}

std::shared_ptr<CUevent_st> event_pool::acquire() {
  cudaEvent_t e = nullptr;
  {
    std::lock_guard lock(mutex_);
    if (!free_.empty()) {
      e = free_.back();
      free_.pop_back();
    }
  }
  if (e == nullptr) {
    set_device(ordinal_);
    // Also when a capture is open on this thread (a fence made for another
    // stream while this thread captures): creating an event must not touch
    // the capture.
    relaxed_capture_mode relaxed;
    COBATCH_CUDA_CHECK(cudaEventCreateWithFlags(&e, cudaEventDisableTiming));
  }
  // The deleter holds the pool, so an event outliving its device still has
  // somewhere to go back to.
  return std::shared_ptr<CUevent_st>(e, event_release{event_release::mode::to_pool, shared_from_this()});
}

std::size_t event_pool::idle() const {
  std::lock_guard lock(mutex_);
  return free_.size();
}

void event_pool::give_back(cudaEvent_t e) noexcept {
  // A pooled event may be re-recorded at once: a record replaces the previous
  // one, and whoever held the old one let go.
  std::lock_guard lock(mutex_);
  try {
    free_.push_back(e);
  } catch (...) {
    cudaEventDestroy(e);
  }
}

void event_release::operator()(CUevent_st* e) const noexcept {
  switch (how) {
    case mode::to_pool: pool->give_back(e); break;
    case mode::destroy: cudaEventDestroy(e); break;
    case mode::leave: break;
  }
}

}  // namespace cobatch::gpu::cuda::detail
