// batch_size_tuner: chooses each step's token budget from measured step
// times (the seed's automatic batch-size optimisation), online.
//
// Throughput at a budget B is B / t(B). With a fixed cost per step it grows
// with B, until something saturates (memory bandwidth, cache, the tail of a
// kernel wave) and t grows faster than B. The tuner keeps, per phase, a
// moving average of step time at each budget of a geometric grid, climbs to
// the neighbour with the higher throughput among those whose step time stays
// within the target, and keeps probing the neighbours now and then so that it
// follows a change in the cost (a new model load, another tenant). Budgets
// are only tried next to the current one, so a probe costs at most one grid
// ratio of throughput.
#pragma once

#include <cobatch/engine/ubatch/ubatch_sizing.hpp>

#include <array>
#include <chrono>
#include <cstdint>
#include <vector>

namespace cobatch::engine {

struct tuner_options {
  std::int32_t min_budget = 16;    ///< >= 1
  std::int32_t max_budget = 8192;  ///< >= min_budget
  /// Steps must stay within it: a serving loop's latency bound. > 0.
  std::chrono::nanoseconds target_step_time{std::chrono::milliseconds(50)};
  /// Ratio of neighbouring budgets of the grid, > 1: the tuner settles within
  /// this factor of the best budget (1.05 -> within 5%).
  double grid_ratio = 1.05;
  /// Weight of the newest sample in each budget's average, (0, 1].
  double ema_alpha = 0.3;
  /// Steps between probes of a neighbour once settled, >= 1.
  std::int32_t probe_interval = 8;
  /// A budget's average older than this many steps is replaced, not averaged,
  /// by its next sample (the cost may have changed since). >= 1.
  std::int32_t stale_after = 64;
};

class batch_size_tuner {
 public:
  /// Throws engine_error(invalid_argument) naming a bad option.
  explicit batch_size_tuner(const tuner_options& options);

  /// The budget to plan the next step of `phase` with (a probe or the
  /// current best).
  std::int32_t budget(step_phase phase) const noexcept;
  /// The best budget found so far for `phase`.
  std::int32_t best(step_phase phase) const noexcept;

  /// A step of `phase` planned with `budget` ran `tokens` tokens in
  /// `elapsed`. A step that did not fill its budget (not enough work)
  /// teaches about the budget nearest its token count. Throws
  /// engine_error(invalid_argument) for tokens < 1 or a negative time.
  void record(step_phase phase, std::int32_t budget, std::int32_t tokens, std::chrono::nanoseconds elapsed);

  const std::vector<std::int32_t>& grid() const noexcept { return grid_; }
  const tuner_options& options() const noexcept { return options_; }

 private:
  struct point {
    double ns = 0.0;        // moving average of step time
    double tokens = 0.0;    // moving average of tokens run
    std::uint64_t at = 0;   // step of the last sample; 0 = never
  };
  struct phase_state {
    std::vector<point> points;
    std::int32_t current = 0;  // index into the grid
    std::int32_t next = 0;     // what budget() hands out
    std::int32_t direction = 1;
    std::int32_t since_probe = 0;
    std::uint64_t steps = 0;
  };
  double score(const phase_state& p, std::int32_t i) const noexcept;
  std::int32_t nearest(std::int32_t tokens) const noexcept;
  void decide(phase_state& p) noexcept;

  tuner_options options_;
  std::vector<std::int32_t> grid_;
  std::array<phase_state, 2> phases_;
};

}  // namespace cobatch::engine
