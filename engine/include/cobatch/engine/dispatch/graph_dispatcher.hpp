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
// Running. dispatch() only decides: the caller captures (capture_if_missing)
// and launches. run() decides and runs in one call through the runners the
// caller registered (set_runners): replay the cached graph, capture it first
// when it is missing and a capture runner is registered, or fall back to the
// eager runner (vLLM's CUDAGraphWrapper/CudagraphDispatcher pair, the seed's
// dispatch(key) with its eager_runner).
//
// Thread contract: not synchronized. One thread at a time may call any
// member; const members may run concurrently with each other but not with a
// non-const one. One step loop owns a dispatcher; where several threads share
// one (an engine loop per GPU sharing a learning policy, say), wrap it in
// synchronized_dispatcher (synchronized_dispatcher.hpp).
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <string_view>
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

/// Whether a decision is already in the dispatcher's statistics.
enum class decision_accounting : std::uint8_t {
  uncounted,   ///< from preview(): commit() or execute() counts it
  counted,     ///< counted in the mode it ran (or will run) in
  uncaptured,  ///< counted as waiting for its graph: capture_if_missing() or execute() settles it
};

template <class Graph>
struct dispatch_decision {
  dispatch_route route;
  stream_index stream{};
  /// The cached graph to replay; nullptr for eager, and for a graph mode whose
  /// graph is not captured yet (see needs_capture).
  graph_entry<Graph>* entry = nullptr;
  /// The step as given, unpadded: what an eager fallback runs.
  dispatch_key step = dispatch_key::from_bits(0);
  decision_accounting accounting = decision_accounting::uncounted;

  dispatch_mode mode() const noexcept { return route.mode; }
  dispatch_key key() const noexcept { return route.key; }
  bool needs_capture() const noexcept { return route.mode != dispatch_mode::eager && entry == nullptr; }
};

/// What run() did for a step.
enum class dispatch_outcome : std::uint8_t {
  replayed,        ///< a cached graph was replayed
  captured,        ///< the graph was captured on this step, then replayed
  eager,           ///< the route was eager (no graph for the shape, or the policy chose eager)
  eager_fallback,  ///< the route chose a graph that could not be had; the step ran eagerly, unpadded
};

/// "replayed", "captured", "eager", "eager_fallback"; "unknown" otherwise.
std::string_view to_string(dispatch_outcome outcome) noexcept;

struct dispatch_result {
  dispatch_outcome outcome = dispatch_outcome::eager;
  /// The route the step ran: for an eager fallback, eager with the step's own
  /// unpadded key; otherwise the router's route.
  dispatch_route route;
  stream_index stream{};
  /// The router's route: the same as `route` except for an eager fallback,
  /// where it names the graph that was wanted (what shape_forecast learns from).
  dispatch_route planned;

  dispatch_mode ran() const noexcept { return route.mode; }
  bool replayed_graph() const noexcept {
    return outcome == dispatch_outcome::replayed || outcome == dispatch_outcome::captured;
  }
};

/// The functions run() calls. eager and replay are required; capture is
/// optional (without it a missing graph falls back to eager).
template <class Graph>
struct graph_runners {
  /// Runs the step eagerly: launch the model's kernels one by one for
  /// route.run_tokens() tokens on the stream.
  std::function<void(const dispatch_route& route, stream_index stream)> eager;
  /// Launches the graph on the stream, after the step's inputs are copied
  /// into its persistent buffers (persistent_inputs.hpp).
  std::function<void(Graph& graph, const dispatch_route& route, stream_index stream)> replay;
  /// Captures the graph for a key on a stream (as capture_if_missing's function).
  std::function<captured_graph<Graph>(graph_key key, stream_index stream)> capture;
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
  /// counted cache lookup). Allocation-free with the default policy. A graph
  /// decision whose graph is not cached counts as uncaptured, not as a replay,
  /// until capture_if_missing() captures it.
  decision dispatch(dispatch_key step, dispatch_options options = {}, stream_placement placement = {}) {
    decision d = preview(step, options, placement);
    // preview()'s lookup stands for the counted one: one hash probe, not two.
    if (d.route.mode != dispatch_mode::eager) caches_[index(d.stream)].count_lookup(d.entry);
    count(d);
    return d;
  }

  /// The decision dispatch() would make, counting nothing: the cache lookup
  /// leaves hits, misses and recency alone (the policy is still consulted).
  /// For choosing among dispatchers (composite_dispatcher) before committing
  /// with execute().
  decision preview(dispatch_key step, dispatch_options options = {}, stream_placement placement = {}) {
    decision d;
    d.step = step;
    d.route = router_.route(step, options);
    d.stream = placement.stream ? checked(*placement.stream) : stream_for(d.route.graph());
    if (d.route.mode != dispatch_mode::eager) d.entry = caches_[index(d.stream)].peek(d.route.graph());
    return d;
  }

  /// Counts a decision made by preview() as dispatch() would have (a counted
  /// cache lookup, then a dispatch or an uncaptured decision): for callers
  /// that chose it among several and will capture and launch it themselves.
  /// Does nothing to a decision already counted.
  void commit(decision& d) noexcept {
    if (d.accounting != decision_accounting::uncounted) return;
    if (d.route.mode != dispatch_mode::eager) d.entry = caches_[index(d.stream)].find(d.route.graph());
    count(d);
  }

  /// Registers the functions run() calls. Throws engine_error
  /// (invalid_argument) when eager or replay is empty.
  void set_runners(graph_runners<Graph> runners) {
    if (!runners.eager)
      throw_engine_error(errc::invalid_argument, "graph_dispatcher::set_runners: the eager runner is empty; every "
                                                 "step that has no graph runs through it");
    if (!runners.replay)
      throw_engine_error(errc::invalid_argument, "graph_dispatcher::set_runners: the replay runner is empty");
    runners_ = std::move(runners);
  }
  bool has_runners() const noexcept { return static_cast<bool>(runners_.eager); }
  bool can_capture() const noexcept { return static_cast<bool>(runners_.capture); }

  /// Decides and runs one step: replays the cached graph; captures it first
  /// when it is missing and a capture runner is registered; otherwise (or
  /// when the graph alone exceeds the cache's byte bound) runs the eager
  /// runner on the unpadded step. Counts what ran. Throws
  /// engine_error(invalid_argument) when no runners are registered; what a
  /// runner throws propagates, and the step is then not counted.
  dispatch_result run(dispatch_key step, dispatch_options options = {}, stream_placement placement = {}) {
    require_runners();
    decision d = preview(step, options, placement);
    return execute(d);
  }

  /// Runs a decision made by preview() (counting it) or by dispatch()
  /// (already counted: an uncaptured one is settled). The entry of a counted
  /// decision is looked up again: a capture since it was made may have
  /// evicted it.
  dispatch_result execute(decision& d) {
    require_runners();
    if (d.route.mode == dispatch_mode::eager) {
      runners_.eager(d.route, d.stream);
      if (d.accounting == decision_accounting::uncounted) stats_.record_dispatch(dispatch_mode::eager);
      d.accounting = decision_accounting::counted;
      return {dispatch_outcome::eager, d.route, d.stream, d.route};
    }
    graph_cache<Graph>& c = caches_[index(d.stream)];
    const bool was_uncaptured = d.accounting == decision_accounting::uncaptured;
    d.entry = d.accounting == decision_accounting::uncounted ? c.find(d.route.graph()) : c.peek(d.route.graph());
    dispatch_outcome outcome = dispatch_outcome::replayed;
    if (d.entry == nullptr && runners_.capture) {
      try {
        d.entry = &c.insert(d.route.graph(),
                            static_cast<captured_graph<Graph>>(runners_.capture(d.route.graph(), d.stream)));
        outcome = dispatch_outcome::captured;
      } catch (const engine_error& e) {
        if (e.code() != make_error_code(errc::no_capacity)) throw;  // too large to cache: run eagerly
      }
    }
    if (d.entry == nullptr) {
      const dispatch_route eager{dispatch_mode::eager, d.step, d.route.shape};
      runners_.eager(eager, d.stream);
      if (was_uncaptured)
        stats_.resolve_uncaptured(dispatch_mode::eager);
      else if (d.accounting == decision_accounting::uncounted)
        stats_.record_fallback();
      d.accounting = decision_accounting::counted;
      return {dispatch_outcome::eager_fallback, eager, d.stream, d.route};
    }
    runners_.replay(d.entry->graph(), d.route, d.stream);
    if (was_uncaptured)
      stats_.resolve_uncaptured(d.route.mode);
    else if (d.accounting == decision_accounting::uncounted)
      stats_.record_dispatch(d.route.mode);
    d.accounting = decision_accounting::counted;
    return {outcome, d.route, d.stream, d.route};
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
      // The decision counted as uncaptured now has its graph: a replay.
      if (d.accounting == decision_accounting::uncaptured) {
        stats_.resolve_uncaptured(d.route.mode);
        d.accounting = decision_accounting::counted;
      }
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

  /// Drops every stream's graphs (the seed's clear_cache); declarations,
  /// statistics and the policy's learning are kept, so graphs are captured
  /// again on use or by capture_ahead().
  void clear_cache() noexcept {
    for (auto& c : caches_) c.clear();
  }
  /// Bytes held by every stream's cache together.
  std::size_t cached_bytes() const noexcept {
    std::size_t total = 0;
    for (const auto& c : caches_) total += c.bytes();
    return total;
  }

  /// Turns a graph mode on or off for the following steps (dispatch_router::
  /// enable_mode / disable_mode, with their errors). Disabling keeps the
  /// mode's cached graphs; clear_cache() frees them.
  void enable_mode(dispatch_mode mode) { router_.enable_mode(mode); }
  void disable_mode(dispatch_mode mode) { router_.disable_mode(mode); }

  /// The same for a step that run() ran (an eager fallback teaches the
  /// policy about eager, which is what ran).
  void record_latency(const dispatch_result& r, std::chrono::nanoseconds elapsed) {
    router_.record_latency(r.route, elapsed);
    stats_.record_latency(r.route.mode, elapsed);
  }

  std::uint32_t stream_count() const noexcept { return static_cast<std::uint32_t>(caches_.size()); }
  graph_cache<Graph>& cache(stream_index s = stream_index{0}) { return caches_[index(checked(s))]; }
  const graph_cache<Graph>& cache(stream_index s = stream_index{0}) const { return caches_[index(checked(s))]; }
  dispatch_router& router() noexcept { return router_; }
  const dispatch_router& router() const noexcept { return router_; }
  const dispatch_stats& stats() const noexcept { return stats_; }

 private:
  // A counted decision is a dispatch in its mode, or uncaptured while its
  // graph is missing.
  void count(decision& d) noexcept {
    if (d.needs_capture()) {
      stats_.record_uncaptured();
      d.accounting = decision_accounting::uncaptured;
    } else {
      stats_.record_dispatch(d.route.mode);
      d.accounting = decision_accounting::counted;
    }
  }

  static std::size_t index(stream_index s) noexcept { return static_cast<std::size_t>(s); }
  void require_runners() const {
    if (!runners_.eager) [[unlikely]]
      throw_engine_error(errc::invalid_argument,
                         "graph_dispatcher::run: no runners registered; call set_runners with an eager and a "
                         "replay runner first");
  }
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
  graph_runners<Graph> runners_;
};

}  // namespace cobatch::engine
