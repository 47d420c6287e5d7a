#include "cobatch/engine/step/batch_size_tuner.hpp"

#include "message.hpp"

#include <algorithm>
#include <cmath>
#include <limits>

namespace cobatch::engine {

batch_size_tuner::batch_size_tuner(const tuner_options& o) : options_(o) {
  constexpr std::string_view api = "batch_size_tuner";
  detail::require_at_least(api, "min_budget", o.min_budget, 1);
  if (o.max_budget < o.min_budget) detail::raise_bad_option(api, "max_budget", o.max_budget, "< min_budget");
  if (o.target_step_time.count() <= 0)
    detail::raise_bad_option(api, "target_step_time (ns)", o.target_step_time.count(), "<= 0");
  if (!(o.grid_ratio > 1.0) || !std::isfinite(o.grid_ratio))
    detail::raise_bad_option(api, "grid_ratio", o.grid_ratio, "is not a finite value > 1");
  if (!(o.ema_alpha > 0.0 && o.ema_alpha <= 1.0)) detail::raise_bad_option(api, "ema_alpha", o.ema_alpha, "is outside (0, 1]");
  detail::require_at_least(api, "probe_interval", o.probe_interval, 1);
  detail::require_at_least(api, "stale_after", o.stale_after, 1);
  detail::require_at_least(api, "probe_samples", o.probe_samples, 1);
  detail::require_at_least(api, "initial_stride", o.initial_stride, 1);
  double b = o.min_budget;
  while (true) {
    const auto v = static_cast<std::int32_t>(std::lround(b));
    if (v >= o.max_budget) break;
    if (grid_.empty() || v > grid_.back()) grid_.push_back(v);
    b *= o.grid_ratio;
  }
  grid_.push_back(o.max_budget);
  for (auto& p : phases_) {
    p.points.resize(grid_.size());
    // Start low: a small step always meets the target, and the search up is
    // what finds where throughput stops growing.
    p.current = 0;
    p.stride = std::max<std::int32_t>(1, std::min<std::int32_t>(o.initial_stride, static_cast<std::int32_t>(grid_.size()) / 2));
  }
}

std::int32_t batch_size_tuner::budget(step_phase phase) const noexcept {
  const phase_state& p = phases_[static_cast<std::size_t>(phase)];
  return grid_[static_cast<std::size_t>(p.probe >= 0 ? p.probe : p.current)];
}

std::int32_t batch_size_tuner::best(step_phase phase) const noexcept {
  return grid_[static_cast<std::size_t>(phases_[static_cast<std::size_t>(phase)].current)];
}

std::int32_t batch_size_tuner::nearest(std::int32_t tokens) const noexcept {
  auto it = std::lower_bound(grid_.begin(), grid_.end(), tokens);
  if (it == grid_.end()) return static_cast<std::int32_t>(grid_.size() - 1);
  if (it != grid_.begin() && (tokens - *(it - 1)) < (*it - tokens)) --it;
  return static_cast<std::int32_t>(it - grid_.begin());
}

double batch_size_tuner::score(double ns, double tokens) const noexcept {
  const double target = static_cast<double>(options_.target_step_time.count());
  if (ns > target) return -ns;  // over the target: worse than any budget within it, less bad when faster
  return tokens / std::max(ns, 1.0);
}

void batch_size_tuner::record(step_phase phase, std::int32_t budget, std::int32_t tokens,
                              std::chrono::nanoseconds elapsed) {
  if (tokens < 1) throw_engine_error(errc::invalid_argument, detail::cat("batch_size_tuner::record: tokens ", tokens, " < 1"));
  if (elapsed.count() < 0)
    throw_engine_error(errc::invalid_argument,
                       detail::cat("batch_size_tuner::record: elapsed ", elapsed.count(), " ns is negative"));
  if (phase != step_phase::prefill && phase != step_phase::decode)
    throw_engine_error(errc::unknown_mode, "batch_size_tuner::record: unknown step_phase");
  phase_state& p = phases_[static_cast<std::size_t>(phase)];
  ++p.steps;
  const auto ns = static_cast<double>(elapsed.count());
  const bool full = tokens * 10 >= budget * 9;
  // A step that filled its budget speaks for that budget; one that ran out
  // of work only for its own size, and judges no probe.
  const std::int32_t i = full ? nearest(budget) : nearest(tokens);
  if (p.probe >= 0 && full && i == p.probe) {
    p.probe_ns += ns;
    p.probe_tokens += tokens;
    if (++p.probe_count >= options_.probe_samples) judge_probe(p);
    return;
  }
  point& x = p.points[static_cast<std::size_t>(i)];
  if (x.at == 0 || p.steps - x.at > static_cast<std::uint64_t>(options_.stale_after)) {
    x.ns = ns;
    x.tokens = tokens;
  } else {
    x.ns += options_.ema_alpha * (ns - x.ns);
    x.tokens += options_.ema_alpha * (tokens - x.tokens);
  }
  x.at = p.steps;
  if (i != p.current || p.probe >= 0) return;
  // The current budget went over the target: step down at once.
  if (x.ns > static_cast<double>(options_.target_step_time.count()) && p.current > 0) {
    p.current = std::max(0, p.current - std::max(1, p.stride));
    p.searching = true;
    return;
  }
  if (p.searching || ++p.since_probe >= options_.probe_interval) start_probe(p);
}

void batch_size_tuner::start_probe(phase_state& p) noexcept {
  const auto last = static_cast<std::int32_t>(grid_.size() - 1);
  std::int32_t to = p.current + p.direction * p.stride;
  if (to < 0 || to > last) {
    p.direction = -p.direction;
    to = std::clamp(p.current + p.direction * p.stride, 0, last);
  }
  p.since_probe = 0;
  if (to == p.current) return;
  p.probe = to;
  p.probe_ns = p.probe_tokens = 0.0;
  p.probe_count = 0;
}

void batch_size_tuner::judge_probe(phase_state& p) noexcept {
  const point& here = p.points[static_cast<std::size_t>(p.current)];
  const double mine = here.at == 0 ? -1e300 : score(here.ns, here.tokens);
  const double theirs = score(p.probe_ns / p.probe_count, p.probe_tokens / p.probe_count);
  point& there = p.points[static_cast<std::size_t>(p.probe)];
  there.ns = p.probe_ns / p.probe_count;
  there.tokens = p.probe_tokens / p.probe_count;
  there.at = p.steps;
  const std::int32_t probed = p.probe;
  p.probe = -1;
  if (theirs > mine) {
    // Keep going that way at the same stride; after a settled probe wins,
    // the cost has changed: search again, wider.
    p.current = probed;
    p.losses = 0;
    if (!p.searching) {
      p.searching = true;
      p.stride = std::max(p.stride, 4);
    }
  } else {
    p.direction = -p.direction;
    if (++p.losses >= 2) {  // both sides lost: look closer
      p.losses = 0;
      if (p.stride == 1) {
        p.searching = false;
      } else {
        p.stride = std::max(1, p.stride / 2);
      }
    }
  }
  if (p.searching) start_probe(p);
}

}  // namespace cobatch::engine
