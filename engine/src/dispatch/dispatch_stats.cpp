#include "cobatch/engine/dispatch/dispatch_stats.hpp"

#include <algorithm>
#include <cmath>

#include "cobatch/engine/error.hpp"

namespace cobatch::engine {

std::uint64_t latency_histogram::quantile(double q) const noexcept {
  if (count_ == 0) return 0;
  q = std::clamp(q, 0.0, 1.0);
  // The rank of the q-th value, 1-based: the smallest r with r >= q * count.
  auto rank = static_cast<std::uint64_t>(std::ceil(q * static_cast<double>(count_)));
  rank = std::clamp<std::uint64_t>(rank, 1, count_);
  std::uint64_t seen = 0;
  for (std::size_t b = 0; b < bucket_count; ++b) {
    seen += buckets_[b];
    if (seen >= rank) {
      const std::uint64_t low = bucket_low(b);
      const std::uint64_t mid = low + (bucket_high(b) - low) / 2;
      return std::clamp(mid, min_, max_);
    }
  }
  return max_;
}

latency_summary latency_histogram::summary() const noexcept {
  latency_summary s;
  s.count = count_;
  if (count_ == 0) return s;
  s.mean_ns = static_cast<double>(sum_) / static_cast<double>(count_);
  s.min_ns = min_;
  s.max_ns = max_;
  s.p50_ns = quantile(0.50);
  s.p99_ns = quantile(0.99);
  return s;
}

void dispatch_stats::record_latency(dispatch_mode mode, std::chrono::nanoseconds elapsed) {
  if (elapsed.count() < 0)
    throw_engine_error(errc::negative_length,
                       "dispatch_stats::record_latency: negative latency " + std::to_string(elapsed.count()) + " ns");
  record_latency(mode, static_cast<std::uint64_t>(elapsed.count()));
}

void dispatch_stats::record_latency(dispatch_mode mode, std::uint64_t nanoseconds) {
  validate(mode);
  latency_[index(mode)].record(nanoseconds);
}

std::uint64_t dispatch_stats::total_dispatches() const noexcept {
  std::uint64_t total = uncaptured_;
  for (auto d : dispatches_) total += d;
  return total;
}

double dispatch_stats::graph_ratio() const noexcept {
  const std::uint64_t total = total_dispatches();
  if (total == 0) return 0.0;
  const std::uint64_t graphs = dispatches_[static_cast<std::size_t>(dispatch_mode::piecewise)] +
                               dispatches_[static_cast<std::size_t>(dispatch_mode::full)];
  return static_cast<double>(graphs) / static_cast<double>(total);
}

}  // namespace cobatch::engine
