// synchronized_dispatcher: a graph_dispatcher that several threads may share.
//
// graph_dispatcher is not synchronized: one step loop owns it, and its hot
// path is a few probes with no lock. Where threads must share one (an engine
// loop per GPU sharing one learning policy and one set of statistics, each
// loop naming its own stream index so that its graphs live in its own
// cache), this wrapper gives the seed's "thread-safe graph management".
//
// Thread contract:
// - every member function may be called from any thread at any time;
// - each call is atomic with respect to the others: a step's routing, cache
//   lookup, capture on a miss and launch happen under one lock, so a graph
//   cannot be evicted by another thread's capture between lookup and launch;
// - the runners (and a capture function) are called with the lock held:
//   they must not call back into the same synchronized_dispatcher (std::mutex
//   is not recursive: that would deadlock), and a capture holds every other
//   thread's step for its duration, so capture ahead of time (capture_ahead)
//   and leave capture-on-use for the rare shape;
// - no reference into the dispatcher escapes the lock: statistics come back
//   as copies, decisions as values without the entry pointer; with_lock()
//   is the way to a compound operation on the dispatcher itself.
#pragma once

#include "cobatch/engine/dispatch/graph_dispatcher.hpp"

#include <chrono>
#include <cstddef>
#include <mutex>
#include <type_traits>
#include <utility>

namespace cobatch::engine {

template <class Graph>
class synchronized_dispatcher {
 public:
  using dispatcher = graph_dispatcher<Graph>;

  explicit synchronized_dispatcher(dispatch_router router, graph_dispatcher_options options = {})
      : d_(std::move(router), options) {}
  explicit synchronized_dispatcher(dispatcher d) : d_(std::move(d)) {}

  synchronized_dispatcher(const synchronized_dispatcher&) = delete;
  synchronized_dispatcher& operator=(const synchronized_dispatcher&) = delete;

  /// graph_dispatcher::set_runners, under the lock.
  void set_runners(graph_runners<Graph> runners) {
    std::lock_guard lock(mutex_);
    d_.set_runners(std::move(runners));
  }

  /// graph_dispatcher::run, atomically (routing, lookup, capture, launch).
  dispatch_result run(dispatch_key step, dispatch_options options = {}, stream_placement placement = {}) {
    std::lock_guard lock(mutex_);
    return d_.run(step, options, placement);
  }

  /// The route dispatch() would take, counted as a decision: for callers that
  /// launch themselves and only need the mode and the padded key. The graph
  /// itself is reached through with_lock().
  dispatch_route route(dispatch_key step, dispatch_options options = {}, stream_placement placement = {}) {
    std::lock_guard lock(mutex_);
    return d_.dispatch(step, options, placement).route;
  }

  void record_latency(const dispatch_result& r, std::chrono::nanoseconds elapsed) {
    std::lock_guard lock(mutex_);
    d_.record_latency(r, elapsed);
  }

  template <class CaptureFn>
  std::size_t capture_ahead(CaptureFn&& capture) {
    std::lock_guard lock(mutex_);
    return d_.capture_ahead(std::forward<CaptureFn>(capture));
  }

  void enable_mode(dispatch_mode mode) {
    std::lock_guard lock(mutex_);
    d_.enable_mode(mode);
  }
  void disable_mode(dispatch_mode mode) {
    std::lock_guard lock(mutex_);
    d_.disable_mode(mode);
  }
  void clear_cache() {
    std::lock_guard lock(mutex_);
    d_.clear_cache();
  }

  /// A copy of the statistics, consistent at one instant.
  dispatch_stats stats() const {
    std::lock_guard lock(mutex_);
    return d_.stats();
  }
  /// A copy of one stream's cache statistics. Throws what
  /// graph_dispatcher::cache throws for a bad index.
  cache_stats cache_stats_of(stream_index s) const {
    std::lock_guard lock(mutex_);
    return d_.cache(s).stats();
  }
  std::size_t cached_bytes() const {
    std::lock_guard lock(mutex_);
    return d_.cached_bytes();
  }

  /// Calls f(graph_dispatcher&) under the lock and returns what it returns.
  /// Whatever f keeps of the dispatcher (an entry pointer, a reference) is
  /// valid only inside f.
  template <class F>
  std::invoke_result_t<F&, dispatcher&> with_lock(F&& f) {
    std::lock_guard lock(mutex_);
    return f(d_);
  }

 private:
  mutable std::mutex mutex_;
  dispatcher d_;
};

}  // namespace cobatch::engine
