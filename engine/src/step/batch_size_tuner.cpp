#include "cobatch/engine/step/batch_size_tuner.hpp"

#include "message.hpp"

#include <algorithm>
#include <cmath>
#include <limits>

namespace cobatch::engine {

batch_size_tuner::batch_size_tuner(const tuner_options& o) : options_(o) {
  auto bad = [](const char* what, double v, const char* rule) {
    throw_engine_error(errc::invalid_argument, detail::cat("batch_size_tuner: ", what, " ", v, " ", rule));
  };
  if (o.min_budget < 1) bad("min_budget", o.min_budget, "< 1");
  if (o.max_budget < o.min_budget) bad("max_budget", o.max_budget, "< min_budget");
  if (o.target_step_time.count() <= 0) bad("target_step_time (ns)", static_cast<double>(o.target_step_time.count()), "<= 0");
  if (!(o.grid_ratio > 1.0) || !std::isfinite(o.grid_ratio)) bad("grid_ratio", o.grid_ratio, "is not a finite value > 1");
  if (!(o.ema_alpha > 0.0 && o.ema_alpha <= 1.0)) bad("ema_alpha", o.ema_alpha, "is outside (0, 1]");
  if (o.probe_interval < 1) bad("probe_interval", o.probe_interval, "< 1");
  if (o.stale_after < 1) bad("stale_after", o.stale_after, "< 1");
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
    // Start low: a small step always meets the target, and the climb up is
    // what finds where throughput stops growing.
    p.current = 0;
    p.next = 0;
  }
}

std::int32_t batch_size_tuner::budget(step_phase phase) const noexcept {
  return grid_[static_cast<std::size_t>(phases_[static_cast<std::size_t>(phase)].next)];
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

double batch_size_tuner::score(const phase_state& p, std::int32_t i) const noexcept {
  const point& x = p.points[static_cast<std::size_t>(i)];
  if (x.at == 0) return std::numeric_limits<double>::quiet_NaN();  // unknown
  const double target = static_cast<double>(options_.target_step_time.count());
  if (x.ns > target) return -x.ns;  // over the target: worse than any feasible budget, less bad when faster
  return x.tokens / std::max(x.ns, 1.0);
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
  // A step that filled (nearly) all of its budget speaks for that budget;
  // one that ran out of work speaks for its own size.
  const std::int32_t i = tokens * 10 >= budget * 9 ? nearest(budget) : nearest(tokens);
  point& x = p.points[static_cast<std::size_t>(i)];
  const auto ns = static_cast<double>(elapsed.count());
  if (x.at == 0 || p.steps - x.at > static_cast<std::uint64_t>(options_.stale_after)) {
    x.ns = ns;
    x.tokens = tokens;
  } else {
    x.ns += options_.ema_alpha * (ns - x.ns);
    x.tokens += options_.ema_alpha * (tokens - x.tokens);
  }
  x.at = p.steps;
  decide(p);
}

void batch_size_tuner::decide(phase_state& p) noexcept {
  const auto last = static_cast<std::int32_t>(grid_.size() - 1);
  const double here = score(p, p.current);
  // Where the last probe went: take it if it beats the current budget, and
  // keep climbing that way.
  if (p.next != p.current) {
    const std::int32_t probed = p.next;
    const double there = score(p, probed);
    if (!std::isnan(there) && (std::isnan(here) || there > here)) {
      p.direction = probed > p.current ? 1 : -1;
      p.current = probed;
      const std::int32_t further = p.current + p.direction;
      p.next = further >= 0 && further <= last ? further : p.current;
      p.since_probe = 0;
      return;
    }
    p.next = p.current;
    p.direction = -p.direction;  // the other side next time
    p.since_probe = 0;
    return;
  }
  // The current budget went over the target: step down at once.
  if (!std::isnan(here) && here < 0 && p.current > 0) {
    p.current -= 1;
    p.next = p.current;
    p.direction = -1;
    return;
  }
  // Before the first settle, climb continuously; afterwards probe now and then.
  const bool unexplored_up = p.current < last && p.points[static_cast<std::size_t>(p.current + 1)].at == 0;
  if (unexplored_up || ++p.since_probe >= options_.probe_interval) {
    std::int32_t to = p.current + (unexplored_up ? 1 : p.direction);
    if (to < 0 || to > last) {
      p.direction = -p.direction;
      to = p.current + p.direction;
    }
    if (to >= 0 && to <= last) p.next = to;
    p.since_probe = 0;
  }
}

}  // namespace cobatch::engine
