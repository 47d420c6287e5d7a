// The memory accounting a host_device shares with the buffers it allocated.
#pragma once

#include "cobatch/gpu/host/host_device.hpp"

#include <cstddef>
#include <mutex>

namespace cobatch::gpu::host {

struct buffer::accounting {
  std::mutex mutex;
  std::size_t budget = 0;
  std::size_t in_use = 0;
};

}  // namespace cobatch::gpu::host
