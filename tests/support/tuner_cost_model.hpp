// A synthetic step-time model for judging batch_size_tuner, shared by its
// test and its benchmark so that both score the tuner on the same models.
#pragma once

#include <cobatch/engine/step/batch_size_tuner.hpp>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <random>

namespace cobatch::engine::test {

/// Step time (ns) of a budget: fixed cost, per-token cost, and a quadratic
/// penalty past a knee where the kernels stop scaling.
struct tuner_cost_model {
  double fixed, per_token, knee, penalty;

  double operator()(double b) const {
    const double over = std::max(0.0, b - knee);
    return fixed + per_token * b + penalty * over * over;
  }

  /// A model drawn from `rng`, in the range the engine's kernels span.
  static tuner_cost_model random(std::mt19937_64& rng) {
    std::uniform_real_distribution<double> u(0.0, 1.0);
    // A braced list draws in order, left to right.
    return {2e6 + 4e6 * u(rng), 2e3 + 8e3 * u(rng), 500 + 3000 * u(rng), 20 + 200 * u(rng)};
  }
  /// The same device after a change that makes every step dearer and the
  /// knee come earlier (another model, another precision).
  tuner_cost_model changed() const { return {fixed * 1.5, per_token * 2.0, knee * 0.5, penalty * 2}; }
};

/// Runs `steps` prefill steps whose times come from `cost` with 3% noise,
/// then scores the tuner's chosen budget: its throughput over the best
/// throughput of any budget on the grid that meets `target_ns` (0 when the
/// chosen budget misses the target).
inline double tuner_score(batch_size_tuner& tuner, const tuner_cost_model& cost, std::mt19937_64& rng, int steps,
                          double target_ns) {
  std::normal_distribution<double> noise(1.0, 0.03);
  for (int i = 0; i < steps; ++i) {
    const std::int32_t b = tuner.budget(step_phase::prefill);
    tuner.record(step_phase::prefill, b, b, std::chrono::nanoseconds(static_cast<std::int64_t>(cost(b) * noise(rng))));
  }
  double best = 0;
  for (std::int32_t b : tuner.grid())
    if (cost(b) <= target_ns) best = std::max(best, b / cost(b));
  const double chosen = tuner.best(step_phase::prefill);
  return cost(chosen) <= target_ns ? (chosen / cost(chosen)) / best : 0.0;
}

}  // namespace cobatch::engine::test
