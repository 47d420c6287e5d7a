// Predictive graph capture: capture ahead the graphs that recent traffic says
// will be needed next (the seed's "predictive graph selection"), within the
// cache's bounds.
//
// shape_forecast remembers the graphs the last `window` steps were routed to
// (a ring of graph keys and a count per key), so the distribution it holds is
// the recent mix of batch shapes as the router sees them: padded to the
// ladder, keyed by mode. capture_forecast() walks that distribution from the
// most frequent key down and captures each graph that is not cached yet,
// while the key's share of recent steps is at least min_share, at most
// max_captures per call, and only while the graph is expected to fit its
// stream's cache without evicting anything (a graph that turns out larger
// than expected evicts what the bound requires, and capturing stops there). Call it where the host is idle (between steps, while the device
// runs one), so the capture does not land on a step's critical path.
//
// Why a window of counts and not a model of arrivals: the next step's shape
// is best predicted by the recent mix (decode batch sizes drift slowly with
// load; prefill sizes follow the admission budget), the window forgets a
// burst after `window` steps, and it is deterministic, so tests can state
// exactly what is captured.
#pragma once

#include "cobatch/engine/dispatch/dispatch_key.hpp"
#include "cobatch/engine/dispatch/graph_dispatcher.hpp"
#include "cobatch/engine/error.hpp"

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <string>
#include <unordered_map>
#include <vector>

namespace cobatch::engine {

struct forecast_options {
  /// Steps remembered; at least 1.
  std::uint32_t window = 1024;
};

/// A graph key and how many of the remembered steps were routed to it.
struct forecast_entry {
  graph_key key;
  std::uint32_t steps = 0;
};

class shape_forecast {
 public:
  /// Throws engine_error(invalid_argument) when options.window is 0.
  explicit shape_forecast(forecast_options options = {}) : options_(options) {
    if (options.window == 0)
      throw_engine_error(errc::invalid_argument, "shape_forecast: window is 0; at least one step must be remembered");
    ring_.reserve(options.window);
  }

  /// Remembers the graph a step was routed to; eager routes are skipped
  /// (no graph serves them).
  void observe(const dispatch_route& route) {
    if (route.mode == dispatch_mode::eager) return;
    observe(route.graph());
  }
  /// For a step run(): the graph that was wanted, even when it fell back.
  void observe(const dispatch_result& result) { observe(result.planned); }
  void observe(graph_key key) {
    if (ring_.size() < options_.window) {
      ring_.push_back(key.bits());
    } else {
      const std::uint64_t old = ring_[next_];
      if (auto it = counts_.find(old); it != counts_.end() && --it->second == 0) counts_.erase(it);
      ring_[next_] = key.bits();
      next_ = (next_ + 1) % options_.window;
    }
    ++counts_[key.bits()];
  }

  /// Remembered graph-routed steps (at most the window).
  std::size_t steps() const noexcept { return ring_.size(); }
  /// How many remembered steps were routed to `key`.
  std::uint32_t steps_for(graph_key key) const noexcept {
    const auto it = counts_.find(key.bits());
    return it == counts_.end() ? 0 : it->second;
  }
  /// steps_for(key) / steps(); 0 when nothing is remembered.
  double share(graph_key key) const noexcept {
    return ring_.empty() ? 0.0 : static_cast<double>(steps_for(key)) / static_cast<double>(ring_.size());
  }

  /// Every remembered key, most frequent first; ties: larger token count
  /// first (it holds the larger pool), then by key word, so the order is
  /// reproducible.
  std::vector<forecast_entry> ranked() const {
    std::vector<forecast_entry> out;
    out.reserve(counts_.size());
    for (const auto& [bits, n] : counts_) out.push_back({graph_key::from_bits(bits), n});
    std::sort(out.begin(), out.end(), [](const forecast_entry& a, const forecast_entry& b) {
      if (a.steps != b.steps) return a.steps > b.steps;
      if (a.key.key().tokens() != b.key.key().tokens()) return a.key.key().tokens() > b.key.key().tokens();
      return a.key.bits() < b.key.bits();
    });
    return out;
  }

  void clear() noexcept {
    ring_.clear();
    counts_.clear();
    next_ = 0;
  }
  const forecast_options& options() const noexcept { return options_; }

 private:
  forecast_options options_;
  std::vector<std::uint64_t> ring_;
  std::size_t next_ = 0;  // oldest slot once the ring is full
  std::unordered_map<std::uint64_t, std::uint32_t> counts_;
};

struct forecast_capture_options {
  /// Keys routed fewer than this share of remembered steps are not worth a
  /// graph's memory; in [0, 1].
  double min_share = 0.02;
  /// Captures per call at most, so one call stays short; at least 1.
  std::uint32_t max_captures = 4;
};

struct forecast_report {
  std::uint32_t captured = 0;
  /// Frequent keys already cached.
  std::uint32_t already_cached = 0;
  /// Frequent keys left out because their stream's cache had no room without
  /// evicting (entry bound, or the byte estimate below).
  std::uint32_t no_room = 0;
  /// Frequent keys whose mode is disabled on the router now.
  std::uint32_t mode_disabled = 0;
};

/// Captures the forecast's frequent graphs that are not cached, each on the
/// stream its key hashes to (graph_dispatcher::stream_for), with
/// `capture(key, stream)` returning captured_graph<Graph> (the same function
/// as capture_ahead's, or the runners' capture).
///
/// Memory: a graph's size is known only once captured, so room is judged
/// with the mean size of the graphs in that stream's cache (none cached: the
/// entry bound alone); if a capture turns out larger and the cache had to
/// evict, capturing stops there. Throws engine_error(invalid_argument) for
/// options out of range; what `capture` throws propagates (graphs captured
/// so far stay).
template <class Graph, class CaptureFn>
forecast_report capture_forecast(graph_dispatcher<Graph>& dispatcher, const shape_forecast& forecast,
                                 CaptureFn&& capture, forecast_capture_options options = {}) {
  if (!(options.min_share >= 0.0 && options.min_share <= 1.0))
    throw_engine_error(errc::invalid_argument,
                       "capture_forecast: min_share " + std::to_string(options.min_share) + " is outside [0, 1]");
  if (options.max_captures == 0)
    throw_engine_error(errc::invalid_argument, "capture_forecast: max_captures is 0");
  forecast_report report;
  if (forecast.steps() == 0) return report;
  for (const forecast_entry& f : forecast.ranked()) {
    if (static_cast<double>(f.steps) < options.min_share * static_cast<double>(forecast.steps())) break;
    if (!dispatcher.router().mode_enabled(f.key.mode())) {
      ++report.mode_disabled;
      continue;
    }
    const stream_index stream = dispatcher.stream_for(f.key);
    graph_cache<Graph>& cache = dispatcher.cache(stream);
    if (cache.contains(f.key)) {
      ++report.already_cached;
      continue;
    }
    if (report.captured == options.max_captures) break;
    const graph_cache_options& bounds = cache.options();
    const std::size_t estimate = cache.empty() ? 0 : cache.bytes() / cache.size();
    if (cache.size() + 1 > bounds.max_entries || estimate > bounds.max_bytes - cache.bytes()) {
      ++report.no_room;
      continue;
    }
    const std::uint64_t evictions = cache.stats().evictions;
    try {
      cache.insert(f.key, static_cast<captured_graph<Graph>>(capture(f.key, stream)));
    } catch (const engine_error& e) {
      if (e.code() != make_error_code(errc::no_capacity)) throw;
      ++report.no_room;  // larger than the whole bound: it can never be cached
      continue;
    }
    ++report.captured;
    if (cache.stats().evictions != evictions) break;  // larger than estimated: stop before evicting more
  }
  return report;
}

}  // namespace cobatch::engine
