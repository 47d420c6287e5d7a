// What every stream and event of a cuda_device shares with it. Internal to
// the CUDA backend.
#pragma once

#include "cobatch/coro/completion_reactor.hpp"
#include "event_pool.hpp"

#include <memory>
#include <string>

namespace cobatch::gpu::cuda::detail {

struct device_state {
  int ordinal = 0;
  coro::completion_reactor* reactor = nullptr;
  int least_priority = 0;     // numerically greatest
  int greatest_priority = 0;  // numerically least
  std::string name;
  std::shared_ptr<event_pool> events;
};

/// Makes `ordinal` current on this thread (a no-op when it already is).
void set_device(int ordinal);

}  // namespace cobatch::gpu::cuda::detail
