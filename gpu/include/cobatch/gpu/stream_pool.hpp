// stream_pool: the compute and communication streams of one device, handed
// out round-robin, by fixed index, or to the least-loaded stream of a role,
// so that micro-batches get streams without creating them per step.
//
// Load is what callers charge: `charge(role, i, weight, done)` says stream i
// has `weight` units of work (tokens, say) until fence `done` is reached;
// load() is the sum of the charges whose fences are still pending, polled
// without blocking. Only the caller knows what a unit of work is, and only
// the device knows when it is done, so the pool keeps one and asks the other.
//
// Not synchronized: the thread that runs the steps owns the pool.
#pragma once

#include "cobatch/gpu/device.hpp"
#include "cobatch/gpu/stream.hpp"

#include <cstddef>
#include <cstdint>
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

  /// Stream `index` of `role` (modulo the pool size) has `weight` units of
  /// work until `done` is reached (a fence marked after that work).
  void charge(stream_role role, std::size_t index, std::uint64_t weight, fence done) {
    auto& list = charges(role)[index % size(role)];
    prune(list);
    list.push_back({std::move(done), weight});
  }

  /// Units charged to stream `index` of `role` whose fences are still
  /// pending; a failed fence counts as reached (its work will not run).
  std::uint64_t load(stream_role role, std::size_t index) {
    auto& list = charges(role)[index % size(role)];
    prune(list);
    std::uint64_t total = 0;
    for (const auto& c : list) total += c.weight;
    return total;
  }

  /// The index of the least-loaded stream of `role`; ties go to the lowest
  /// index, so an idle pool hands out stream 0 first.
  std::size_t least_loaded(stream_role role) {
    std::size_t best = 0;
    std::uint64_t best_load = load(role, 0);
    for (std::size_t i = 1; i < size(role) && best_load != 0; ++i) {
      const std::uint64_t l = load(role, i);
      if (l < best_load) {
        best = i;
        best_load = l;
      }
    }
    return best;
  }

 private:
  struct charged_work {
    fence done;
    std::uint64_t weight;
  };
  std::vector<std::vector<charged_work>>& charges(stream_role role) noexcept {
    auto& c = role == stream_role::compute ? compute_charges_ : comm_charges_;
    if (c.size() != size(role)) c.resize(size(role));
    return c;
  }
  static void prune(std::vector<charged_work>& list) {
    std::erase_if(list, [](const charged_work& c) { return !c.done.query().is_pending(); });
  }

  std::vector<std::vector<charged_work>> compute_charges_;
  std::vector<std::vector<charged_work>> comm_charges_;
  std::vector<stream> compute_;
  std::vector<stream> comm_;
  std::size_t next_compute_ = 0;
  std::size_t next_comm_ = 0;
};

}  // namespace cobatch::gpu
