#include "cobatch/engine/dispatch/dispatch_policy.hpp"

#include <algorithm>
#include <cmath>
#include <string>

#include "cobatch/engine/error.hpp"

namespace cobatch::engine {
namespace {

void check_range(const char* who, token_range r) {
  if (r.min == 0)
    throw_engine_error(errc::invalid_argument,
                       std::string(who) + ": token range starts at 0; a step has at least one token");
  if (r.min > r.max)
    throw_engine_error(errc::invalid_argument, std::string(who) + ": token range [" + std::to_string(r.min) + ", " +
                                                   std::to_string(r.max) + "] is empty");
}

constexpr dispatch_mode all_modes[] = {dispatch_mode::eager, dispatch_mode::piecewise, dispatch_mode::full};

}  // namespace

default_policy::default_policy(default_policy_options options) : options_(options) {
  check_range("default_policy", options.graph_tokens);
  if (options.preference != graph_preference::full_first && options.preference != graph_preference::piecewise_first)
    throw_engine_error(errc::unknown_mode, "default_policy: unknown graph_preference " +
                                               std::to_string(static_cast<unsigned>(options.preference)));
}

pinned_mode_policy::pinned_mode_policy(token_range tokens, dispatch_mode mode) : tokens_(tokens), mode_(mode) {
  check_range("pinned_mode_policy", tokens);
  validate(mode);
}

adaptive_policy::adaptive_policy(adaptive_options options) : options_(options), rng_state_(options.seed) {
  if (options.explore_samples == 0)
    throw_engine_error(errc::invalid_argument, "adaptive_policy: explore_samples is 0; each mode needs a sample");
  if (!(options.ema_weight > 0.0 && options.ema_weight <= 1.0))
    throw_engine_error(errc::invalid_argument,
                       "adaptive_policy: ema_weight " + std::to_string(options.ema_weight) + " is outside (0, 1]");
  if (!(options.reexplore_probability >= 0.0 && options.reexplore_probability < 1.0))
    throw_engine_error(errc::invalid_argument, "adaptive_policy: reexplore_probability " +
                                                   std::to_string(options.reexplore_probability) +
                                                   " is outside [0, 1)");
  if (options.max_shapes == 0)
    throw_engine_error(errc::invalid_argument, "adaptive_policy: max_shapes is 0; it must track at least one shape");
  if (options.estimator != latency_estimator::ema && options.estimator != latency_estimator::mean)
    throw_engine_error(errc::unknown_mode, "adaptive_policy: unknown latency_estimator " +
                                               std::to_string(static_cast<unsigned>(options.estimator)));
}

// SplitMix64: tiny state, passes BigCrush, and a copy of the policy continues
// the same sequence, which keeps copies deterministic too.
std::uint64_t adaptive_policy::next_random() noexcept {
  std::uint64_t z = (rng_state_ += 0x9e3779b97f4a7c15ULL);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
  return z ^ (z >> 31);
}

std::optional<dispatch_mode> adaptive_policy::select(const policy_input& in) {
  if (in.available.empty()) return std::nullopt;
  auto it = table_.find(in.shape);
  if (it == table_.end()) {
    if (table_.size() >= options_.max_shapes) return std::nullopt;
    it = table_.emplace(in.shape, per_shape{}).first;
  }
  const per_shape& s = it->second;

  // Explore: the available mode with the fewest samples, while any has fewer
  // than explore_samples.
  std::optional<dispatch_mode> least;
  for (const auto m : all_modes) {
    if (!in.available.contains(m)) continue;
    if (!least || s.modes[static_cast<std::size_t>(m)].samples < s.modes[static_cast<std::size_t>(*least)].samples)
      least = m;
  }
  if (s.modes[static_cast<std::size_t>(*least)].samples < options_.explore_samples) return least;

  const dispatch_mode best = *fastest(in.shape, in.available);
  if (options_.reexplore_probability > 0.0 && in.available.size() > 1) {
    // 53 random bits give a uniform double in [0, 1).
    const double u = static_cast<double>(next_random() >> 11) * 0x1.0p-53;
    if (u < options_.reexplore_probability) {
      const auto others = static_cast<std::uint64_t>(in.available.size() - 1);
      auto pick = next_random() % others;
      for (const auto m : all_modes) {
        if (m == best || !in.available.contains(m)) continue;
        if (pick-- == 0) return m;
      }
    }
  }
  return best;
}

void adaptive_policy::record(dispatch_key shape, dispatch_mode mode, std::uint64_t ns) {
  validate(mode);
  auto it = table_.find(shape);
  if (it == table_.end()) {
    if (table_.size() >= options_.max_shapes) return;  // not tracked: nothing to learn into
    it = table_.emplace(shape, per_shape{}).first;
  }
  estimate& e = it->second.modes[static_cast<std::size_t>(mode)];
  const double x = static_cast<double>(ns);
  ++e.samples;
  e.mean_ns += (x - e.mean_ns) / static_cast<double>(e.samples);
  e.ema_ns = e.samples == 1 ? x : e.ema_ns + options_.ema_weight * (x - e.ema_ns);
}

std::optional<adaptive_policy::estimate> adaptive_policy::estimate_for(dispatch_key shape, dispatch_mode mode) const {
  validate(mode);
  const auto it = table_.find(shape);
  if (it == table_.end()) return std::nullopt;
  const estimate& e = it->second.modes[static_cast<std::size_t>(mode)];
  if (e.samples == 0) return std::nullopt;
  return e;
}

std::optional<dispatch_mode> adaptive_policy::fastest(dispatch_key shape, mode_set among) const {
  const auto it = table_.find(shape);
  if (it == table_.end()) return std::nullopt;
  std::optional<dispatch_mode> best;
  for (const auto m : all_modes) {
    if (!among.contains(m)) continue;
    const estimate& e = it->second.modes[static_cast<std::size_t>(m)];
    if (e.samples == 0) continue;
    if (!best || value(e) < value(it->second.modes[static_cast<std::size_t>(*best)])) best = m;
  }
  return best;
}

priority_chain& priority_chain::add(dispatch_policy policy, int priority) {
  // Insert after every member of the same or higher priority: stable order.
  const auto pos = std::find_if(members_.begin(), members_.end(),
                                [priority](const member& m) { return m.priority < priority; });
  members_.insert(pos, member{priority, std::move(policy)});
  return *this;
}

std::optional<dispatch_mode> priority_chain::select(const policy_input& in) {
  for (auto& m : members_)
    if (auto mode = m.policy.select(in)) return mode;
  return std::nullopt;
}

void priority_chain::record(dispatch_key shape, dispatch_mode mode, std::uint64_t ns) {
  for (auto& m : members_) m.policy.record(shape, mode, ns);
}

}  // namespace cobatch::engine
