// A cache of captured graphs, generic over the graph type, bounded in entry
// count and in bytes, evicting the least recently used entry first.
//
// Graph is whatever the GPU layer captures (a CUDA graph exec, a host-backend
// recording, a test double): any move-constructible type. The cache never
// looks inside; the caller states each graph's memory size when it is
// inserted, because only the capturer knows what its pool allotted.
//
// Recency is a use counter stamped on the entry by each hit (one store),
// not a linked list spliced on every hit: lookups run once per step, while
// evictions happen only when a graph is captured (milliseconds of GPU work),
// where a scan of the entries costs nothing by comparison.
//
// Not synchronized: one step loop owns a cache, as one thread drives the
// micro-batches of a step. const members may be called concurrently.
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <deque>
#include <limits>
#include <optional>
#include <span>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include "cobatch/engine/dispatch/detail/flat_key_index.hpp"
#include "cobatch/engine/dispatch/dispatch_key.hpp"
#include "cobatch/engine/error.hpp"

namespace cobatch::engine {

struct graph_cache_options {
  /// Most graphs held at once; must be positive.
  std::size_t max_entries = 1024;
  /// Most bytes held at once (sum of the sizes stated at insertion); must be
  /// positive. A graph larger than this alone is rejected with no_capacity.
  std::size_t max_bytes = std::numeric_limits<std::size_t>::max();
};

struct cache_stats {
  std::uint64_t hits = 0;        ///< counted lookups (find, get_or_capture) that found a graph
  std::uint64_t misses = 0;      ///< counted lookups that found none
  std::uint64_t captures = 0;    ///< graphs inserted (captured on use, ahead of time, or given)
  std::uint64_t evictions = 0;   ///< graphs removed to make room
  std::uint64_t rejections = 0;  ///< graphs refused because they alone exceed max_bytes
};

/// What a capture function returns: the graph and the device memory it holds.
template <class Graph>
struct captured_graph {
  Graph graph;
  std::size_t bytes = 0;
};

template <class Graph>
class graph_cache;

/// One cached graph. Its address is stable until it is evicted or erased: any
/// insertion may evict it, so do not hold the pointer across a capture.
template <class Graph>
class graph_entry {
 public:
  graph_key key() const noexcept { return key_; }
  Graph& graph() noexcept { return *graph_; }
  const Graph& graph() const noexcept { return *graph_; }
  std::size_t bytes() const noexcept { return bytes_; }
  /// Counted lookups that found this entry since it was inserted.
  std::uint64_t hits() const noexcept { return hits_; }

 private:
  friend class graph_cache<Graph>;
  static constexpr std::uint32_t none = 0xffffffffu;

  std::optional<Graph> graph_;  // empty while the slot is on the free list
  graph_key key_{dispatch_mode::eager, dispatch_key::from_bits(0)};
  std::size_t bytes_ = 0;
  std::uint64_t hits_ = 0;
  std::uint64_t last_use_ = 0;      // the cache's use counter at the last hit or insertion
  std::uint32_t next_free_ = none;  // free-list link while the slot is free
};

template <class Graph>
class graph_cache {
  static_assert(std::is_move_constructible_v<Graph>, "graph_cache<Graph>: Graph must be move-constructible");
  static_assert(std::is_nothrow_destructible_v<Graph>, "graph_cache<Graph>: Graph's destructor must not throw");

 public:
  using entry = graph_entry<Graph>;

  /// Throws engine_error(invalid_argument) when a bound is zero.
  explicit graph_cache(graph_cache_options options = {}) : options_(options) {
    if (options.max_entries == 0)
      throw_engine_error(errc::invalid_argument, "graph_cache: max_entries is 0; a cache must hold at least one graph");
    if (options.max_bytes == 0)
      throw_engine_error(errc::invalid_argument, "graph_cache: max_bytes is 0; a cache must hold at least one byte");
    if (options.max_entries >= entry::none)
      options_.max_entries = entry::none - 1;  // slot indices are 32-bit
  }

  graph_cache(graph_cache&&) = default;
  graph_cache& operator=(graph_cache&&) = default;
  graph_cache(const graph_cache&) = delete;  // graphs are device resources: one owner
  graph_cache& operator=(const graph_cache&) = delete;

  /// Counted lookup: a hit makes the entry the most recently used.
  /// Allocation-free. Returns nullptr on a miss.
  entry* find(graph_key key) noexcept {
    const std::uint32_t i = index_.find(key.bits());
    entry* e = i == detail::flat_key_index::npos ? nullptr : &slots_[i];
    count_lookup(e);
    return e;
  }

  /// Counts a lookup whose result peek() just gave, as find() would have
  /// (a hit for `e`, which becomes the most recently used; a miss for
  /// nullptr), without looking the key up again. `e` must come from this
  /// cache with nothing inserted or evicted since.
  void count_lookup(entry* e) noexcept {
    if (e == nullptr) {
      ++stats_.misses;
      return;
    }
    ++stats_.hits;
    ++e->hits_;
    e->last_use_ = ++clock_;
  }

  /// Uncounted lookup that leaves the recency order alone.
  const entry* peek(graph_key key) const noexcept {
    const std::uint32_t i = index_.find(key.bits());
    return i == detail::flat_key_index::npos ? nullptr : &slots_[i];
  }

  entry* peek(graph_key key) noexcept {
    const std::uint32_t i = index_.find(key.bits());
    return i == detail::flat_key_index::npos ? nullptr : &slots_[i];
  }

  bool contains(graph_key key) const noexcept { return peek(key) != nullptr; }

  /// Inserts `graph` under `key` as the most recently used entry, replacing a
  /// graph already there and evicting least recently used entries until both
  /// bounds hold. Throws engine_error(no_capacity) naming the key and sizes,
  /// and changes nothing, when `bytes` alone exceeds max_bytes.
  entry& insert(graph_key key, Graph graph, std::size_t bytes) {
    check_key(key);
    if (bytes > options_.max_bytes) {
      ++stats_.rejections;
      reject(key, bytes);
    }
    if (const std::uint32_t old = index_.find(key.bits()); old != detail::flat_key_index::npos) remove(old);
    while (size_ + 1 > options_.max_entries || bytes > options_.max_bytes - bytes_) evict_one();

    const std::uint32_t i = allocate_slot();
    entry& e = slots_[i];
    try {
      e.graph_.emplace(std::move(graph));
      index_.insert(key.bits(), i);  // may grow the table: the only allocation besides the slot
    } catch (...) {
      e.graph_.reset();
      release_slot(i);
      throw;
    }
    e.key_ = key;
    e.bytes_ = bytes;
    e.hits_ = 0;
    e.last_use_ = ++clock_;
    ++size_;
    bytes_ += bytes;
    ++stats_.captures;
    return e;
  }

  entry& insert(graph_key key, captured_graph<Graph> captured) {
    return insert(key, std::move(captured.graph), captured.bytes);
  }

  /// Counted lookup; on a miss calls `capture(key)`, which returns a
  /// captured_graph<Graph>, and inserts the result. If `capture` throws,
  /// nothing is inserted and the exception propagates.
  template <class CaptureFn>
  entry& get_or_capture(graph_key key, CaptureFn&& capture) {
    if (entry* e = find(key)) return *e;
    return insert(key, static_cast<captured_graph<Graph>>(std::forward<CaptureFn>(capture)(key)));
  }

  /// Ahead-of-time capture: captures every key not yet cached, largest token
  /// count first, as vLLM does, so that smaller graphs reuse the memory pool
  /// the largest one reserved. Smaller graphs end up most recently used, so
  /// the bounds evict large graphs first. Returns how many were captured. If a
  /// capture throws, the graphs captured so far stay and the exception propagates.
  template <class CaptureFn>
  std::size_t capture_ahead(std::span<const graph_key> keys, CaptureFn&& capture) {
    std::vector<graph_key> order(keys.begin(), keys.end());
    std::stable_sort(order.begin(), order.end(), [](graph_key a, graph_key b) {
      return a.key().tokens() > b.key().tokens();
    });
    std::size_t captured = 0;
    for (const graph_key k : order) {
      if (contains(k)) continue;
      insert(k, static_cast<captured_graph<Graph>>(capture(k)));
      ++captured;
    }
    return captured;
  }

  /// Removes the graph under `key`; returns whether there was one.
  bool erase(graph_key key) noexcept {
    const std::uint32_t i = index_.find(key.bits());
    if (i == detail::flat_key_index::npos) return false;
    remove(i);
    return true;
  }

  /// Drops every graph (statistics are kept).
  void clear() noexcept {
    for (std::size_t i = 0; i < slots_.size(); ++i)
      if (slots_[i].graph_) remove(static_cast<std::uint32_t>(i));
  }

  /// Keys from the most to the least recently used (the eviction order reversed).
  std::vector<graph_key> keys_by_recency() const {
    std::vector<const entry*> live;
    live.reserve(size_);
    for (const entry& e : slots_)
      if (e.graph_) live.push_back(&e);
    std::sort(live.begin(), live.end(), [](const entry* a, const entry* b) { return a->last_use_ > b->last_use_; });
    std::vector<graph_key> out;
    out.reserve(live.size());
    for (const entry* e : live) out.push_back(e->key_);
    return out;
  }

  std::size_t size() const noexcept { return size_; }
  bool empty() const noexcept { return size_ == 0; }
  std::size_t bytes() const noexcept { return bytes_; }
  const graph_cache_options& options() const noexcept { return options_; }
  const cache_stats& stats() const noexcept { return stats_; }

 private:
  static void check_key(graph_key key) {
    if (key.mode() != dispatch_mode::piecewise && key.mode() != dispatch_mode::full)
      throw_engine_error(errc::unknown_mode, "graph_cache: a graph is cached for mode piecewise or full, not " +
                                                 std::string(to_string(key.mode())));
  }

  [[noreturn]] void reject(graph_key key, std::size_t bytes) const {
    throw_engine_error(errc::no_capacity,
                       "graph_cache: a " + std::string(to_string(key.mode())) + " graph for " +
                           std::to_string(key.key().tokens()) + " tokens needs " + std::to_string(bytes) +
                           " bytes, more than the whole bound max_bytes=" + std::to_string(options_.max_bytes));
  }

  std::uint32_t allocate_slot() {
    if (free_ != entry::none) {
      const std::uint32_t i = free_;
      free_ = slots_[i].next_free_;
      return i;
    }
    slots_.emplace_back();
    return static_cast<std::uint32_t>(slots_.size() - 1);
  }

  void release_slot(std::uint32_t i) noexcept {
    slots_[i].next_free_ = free_;
    free_ = i;
  }

  void remove(std::uint32_t i) noexcept {
    entry& e = slots_[i];
    index_.erase(e.key_.bits());
    bytes_ -= e.bytes_;
    --size_;
    e.graph_.reset();
    release_slot(i);
  }

  void evict_one() noexcept {
    // Only called while the bounds are exceeded by a graph that fits alone,
    // so the cache is not empty. Use stamps are unique, so the oldest is too.
    std::uint32_t oldest = entry::none;
    for (std::size_t i = 0; i < slots_.size(); ++i) {
      const entry& e = slots_[i];
      if (e.graph_ && (oldest == entry::none || e.last_use_ < slots_[oldest].last_use_))
        oldest = static_cast<std::uint32_t>(i);
    }
    remove(oldest);
    ++stats_.evictions;
  }

  graph_cache_options options_;
  std::deque<entry> slots_;  // a deque keeps entry addresses stable as it grows
  detail::flat_key_index index_;
  std::uint64_t clock_ = 0;  // counts uses; 64 bits never wrap in practice
  std::uint32_t free_ = entry::none;
  std::size_t size_ = 0;
  std::size_t bytes_ = 0;
  cache_stats stats_;
};

}  // namespace cobatch::engine
