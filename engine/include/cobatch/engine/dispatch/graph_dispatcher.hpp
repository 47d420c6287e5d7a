// Graph dispatch: a router (ladder, declared graphs, policy), one graph cache
// per stream, and the statistics of what ran. The native counterpart of
// vLLM's CudagraphDispatcher, generic over the graph type.
//
// Streams. A captured graph is bound to the stream it was captured for, so
// each stream index has its own cache. A key goes to the stream its hash
// selects (Lemire's multiply-shift reduction of the graph key's hash), not
// round-robin: the same shape always lands on the same stream, so each graph
// is captured once rather than once per stream, memory grows with shapes and
// not shapes x streams, and the choice needs no mutable state. When the
// caller must place work itself (e.g. micro-batch i on its own stream, whose
// graphs were captured there), dispatch_options for streams name the index.
// Stream indices are opaque here; the GPU layer maps them to streams.
//
// Not synchronized: one step loop owns a dispatcher.
#pragma once

#include <chrono>
#include <cstdint>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "cobatch/engine/dispatch/dispatch_router.hpp"
#include "cobatch/engine/dispatch/dispatch_stats.hpp"
#include "cobatch/engine/error.hpp"
#include "cobatch/engine/dispatch/graph_cache.hpp"

namespace cobatch::engine {

/// An opaque stream index, 0 .. stream_count-1.
enum class stream_index : std::uint32_t {};

struct graph_dispatcher_options {
  /// Streams graphs are captured for, one cache each; at least 1.
  std::uint32_t streams = 1;
  /// Bounds of each stream's cache.
  graph_cache_options cache{};
};

/// Per-call placement: by key hash unless a stream is named.
struct stream_placement {
  std::optional<stream_index> stream{};
};

template <class Graph>
struct dispatch_decision {
  dispatch_route route;
  stream_index stream{};
  /// The cached graph to replay; nullptr for eager, and for a graph mode whose
  /// graph is not captured yet (see needs_capture).
  graph_entry<Graph>* entry = nullptr;

  dispatch_mode mode() const noexcept { return route.mode; }
  dispatch_key key() const noexcept { return route.key; }
  bool needs_capture() const noexcept { return route.mode != dispatch_mode::eager && entry == nullptr; }
};

template <class Graph>
class graph_dispatcher {
 public:
  using entry = graph_entry<Graph>;
  using decision = dispatch_decision<Graph>;

  /// Throws engine_error(invalid_argument) when options.streams is 0 or a
  /// cache bound is 0.
  explicit graph_dispatcher(dispatch_router router, graph_dispatcher_options options = {})
      : router_(std::move(router)) {
    if (options.streams == 0)
      throw_engine_error(errc::invalid_argument, "graph_dispatcher: streams is 0; at least one stream is needed");
    caches_.reserve(options.streams);
    for (std::uint32_t i = 0; i < options.streams; ++i) caches_.emplace_back(options.cache);
  }

  /// One step's decision: route, pick the stream, look the graph up (a
  /// counted cache lookup). Allocation-free with the default policy.
  decision dispatch(dispatch_key step, dispatch_options options = {}, stream_placement placement = {}) {
    decision d;
    d.route = router_.route(step, options);
    d.stream = placement.stream ? checked(*placement.stream) : stream_for(d.route.graph());
    if (d.route.mode != dispatch_mode::eager) d.entry = caches_[index(d.stream)].find(d.route.graph());
    stats_.record_dispatch(d.route.mode);
    return d;
  }

  /// The stream a graph key is placed on when the caller names none.
  stream_index stream_for(graph_key key) const noexcept {
    const auto n = static_cast<std::uint64_t>(caches_.size());
    if (n == 1) return stream_index{0};
    return static_cast<stream_index>(((key.hash() >> 32) * n) >> 32);
  }

  /// Captures the graph a decision needs, if it is missing, into the
  /// decision's stream cache, and points the decision at it. `capture(key,
  /// stream)` returns captured_graph<Graph>; if it throws, nothing is inserted
  /// and the exception propagates. Returns nullptr for an eager decision.
  template <class CaptureFn>
  entry* capture_if_missing(decision& d, CaptureFn&& capture) {
    if (d.route.mode == dispatch_mode::eager) return nullptr;
    if (d.entry == nullptr) {
      graph_cache<Graph>& c = caches_[index(d.stream)];
      if (entry* existing = c.peek(d.route.graph()))  // captured since the decision was made
        d.entry = existing;
      else
        d.entry = &c.insert(d.route.graph(),
                            static_cast<captured_graph<Graph>>(capture(d.route.graph(), d.stream)));
    }
    return d.entry;
  }

  /// Ahead-of-time capture of every declared graph on the stream its key
  /// hashes to, largest first per stream. Returns how many were captured.
  template <class CaptureFn>
  std::size_t capture_ahead(CaptureFn&& capture) {
    std::vector<std::vector<graph_key>> per_stream(caches_.size());
    for (const graph_key k : router_.declared()) per_stream[index(stream_for(k))].push_back(k);
    std::size_t n = 0;
    for (std::size_t s = 0; s < caches_.size(); ++s) {
      const auto stream = static_cast<stream_index>(s);
      n += caches_[s].capture_ahead(per_stream[s], [&](graph_key k) { return capture(k, stream); });
    }
    return n;
  }

  /// Ahead-of-time capture of every declared graph on one named stream.
  template <class CaptureFn>
  std::size_t capture_ahead_on(stream_index stream, CaptureFn&& capture) {
    const std::vector<graph_key> keys = router_.declared();
    return caches_[index(checked(stream))].capture_ahead(keys, [&](graph_key k) { return capture(k, stream); });
  }

  /// The caller measured the step a decision ran: feeds the statistics and
  /// the policy. Throws engine_error(negative_length) for a negative duration.
  void record_latency(const decision& d, std::chrono::nanoseconds elapsed) {
    router_.record_latency(d.route, elapsed);
    stats_.record_latency(d.route.mode, elapsed);
  }

  std::uint32_t stream_count() const noexcept { return static_cast<std::uint32_t>(caches_.size()); }
  graph_cache<Graph>& cache(stream_index s = stream_index{0}) { return caches_[index(checked(s))]; }
  const graph_cache<Graph>& cache(stream_index s = stream_index{0}) const { return caches_[index(checked(s))]; }
  dispatch_router& router() noexcept { return router_; }
  const dispatch_router& router() const noexcept { return router_; }
  const dispatch_stats& stats() const noexcept { return stats_; }

 private:
  static std::size_t index(stream_index s) noexcept { return static_cast<std::size_t>(s); }
  stream_index checked(stream_index s) const {
    if (index(s) >= caches_.size()) [[unlikely]]
      throw_engine_error(errc::invalid_argument, "graph_dispatcher: stream index " + std::to_string(index(s)) +
                                                     " is out of range; there are " +
                                                     std::to_string(caches_.size()) + " streams");
    return s;
  }

  dispatch_router router_;
  std::vector<graph_cache<Graph>> caches_;
  dispatch_stats stats_;
};

}  // namespace cobatch::engine
