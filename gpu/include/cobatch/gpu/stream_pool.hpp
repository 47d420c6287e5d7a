// stream_pool: the compute and communication streams of one device, handed
// out round-robin, so that micro-batches get streams without creating them
// per step.
#pragma once

#include "cobatch/gpu/device.hpp"
#include "cobatch/gpu/stream.hpp"

#include <cstddef>
#include <stdexcept>
#include <vector>

namespace cobatch::gpu {

enum class stream_role { compute, communication };

struct stream_pool_options {
  std::size_t compute_streams = 2;
  std::size_t communication_streams = 2;
  stream_priority compute_priority = stream_priority::normal;
  /// High by default: a collective that waits behind compute stalls every rank.
  stream_priority communication_priority = stream_priority::high;
};

class stream_pool {
 public:
  stream_pool(device& dev, stream_pool_options options = {}) {
    if (options.compute_streams == 0 || options.communication_streams == 0) {
      throw std::invalid_argument("cobatch: stream_pool needs at least one stream of each role");
    }
    for (std::size_t i = 0; i < options.compute_streams; ++i) {
      compute_.push_back(dev.make_stream({options.compute_priority}));
    }
    for (std::size_t i = 0; i < options.communication_streams; ++i) {
      comm_.push_back(dev.make_stream({options.communication_priority}));
    }
  }

  /// The next stream of `role`, round-robin.
  stream_ref next(stream_role role) noexcept {
    auto& list = role == stream_role::compute ? compute_ : comm_;
    auto& cursor = role == stream_role::compute ? next_compute_ : next_comm_;
    stream_ref s = list[cursor].ref();
    cursor = (cursor + 1) % list.size();
    return s;
  }
  /// Stream `index` of `role` (modulo the pool size), for stable assignment
  /// such as "micro-batch i always uses compute stream i".
  stream_ref at(stream_role role, std::size_t index) const noexcept {
    const auto& list = role == stream_role::compute ? compute_ : comm_;
    return list[index % list.size()].ref();
  }
  std::size_t size(stream_role role) const noexcept {
    return role == stream_role::compute ? compute_.size() : comm_.size();
  }

 private:
  std::vector<stream> compute_;
  std::vector<stream> comm_;
  std::size_t next_compute_ = 0;
  std::size_t next_comm_ = 0;
};

}  // namespace cobatch::gpu
