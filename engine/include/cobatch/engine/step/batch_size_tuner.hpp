// batch_size_tuner: chooses each step's token budget from measured step
// times (the seed's automatic batch-size optimisation), online.
//
// Throughput at a budget B is B / t(B). With a fixed cost per step it grows
// with B, until something saturates (memory bandwidth, cache, the tail of a
// kernel wave) and t grows faster than B. The tuner keeps, per phase, a
// moving average of step time at the current budget of a geometric grid and
// searches the grid by probing: a few steps at a budget `stride` grid points
// above or below, averaged so that noise does not decide, kept if its
// throughput is higher and its step time within the target. The stride starts
// wide and halves when both sides lose (a coarse-to-fine search of a
// unimodal curve); once it is one grid point the tuner has settled, and it
// keeps probing a neighbour now and then so that it follows a change in the
// cost (a new model load, another tenant), widening the search again when a
// probe wins.
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
  /// Steps a probe runs before it is judged, >= 1.
  std::int32_t probe_samples = 3;
  /// Grid points between the first probes and the current budget, >= 1.
  std::int32_t initial_stride = 16;
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
    std::int32_t probe = -1;   // grid index being probed, or -1
    double probe_ns = 0.0, probe_tokens = 0.0;
    std::int32_t probe_count = 0;
    std::int32_t stride = 1;
    std::int32_t direction = 1;
    std::int32_t losses = 0;  // probes lost in a row at this stride
    bool searching = true;
    std::int32_t since_probe = 0;
    std::uint64_t steps = 0;
  };
  double score(double ns, double tokens) const noexcept;
  std::int32_t nearest(std::int32_t tokens) const noexcept;
  void start_probe(phase_state& p) noexcept;
  void judge_probe(phase_state& p) noexcept;

  tuner_options options_;
  std::vector<std::int32_t> grid_;
  std::array<phase_state, 2> phases_;
};

}  // namespace cobatch::engine
