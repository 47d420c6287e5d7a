// The per-device pool of events without timing, and what becomes of an
// event when its last owner lets go. Internal to the CUDA backend.
#pragma once

#include <cuda_runtime.h>

#include <memory>
#include <mutex>
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

}  // namespace cobatch::gpu::cuda::detail
