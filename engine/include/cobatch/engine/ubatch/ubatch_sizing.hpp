// Choosing how many micro-batches a step is cut into: as few as device memory
// allows, as many as the learned step-time model says pay off. Pure CPU and
// deterministic: the same inputs and history give the same count.
#pragma once

#include <cobatch/engine/error.hpp>

#include <array>
#include <chrono>
#include <cstdint>
#include <optional>
#include <system_error>

namespace cobatch::engine {

/// The micro-batch counts a caller accepts. Both ends are also capped at the
/// step's token count, since every micro-batch needs a token (so a step with
/// fewer tokens than `min` gets one micro-batch per token).
struct ubatch_count_limits {
  std::int32_t min = 1;
  std::int32_t max = 4;
};

// ---------------------------------------------------------------- memory ---

/// What the device can give a step's activations.
struct activation_memory {
  std::uint64_t free_bytes = 0;
  /// Share of free_bytes a micro-batch's activations may take; the rest is
  /// headroom for fragmentation and allocations outside the model. (0, 1].
  double usable_fraction = 0.8;
  /// Activation bytes one token needs while its micro-batch runs. > 0.
  std::uint64_t activation_bytes_per_token = 0;
};

/// A count that fits, and the figures behind it.
struct memory_fit {
  std::int32_t num_ubatches = 0;
  /// ceil(tokens / num_ubatches): the largest micro-batch, as slicing cuts it.
  std::int64_t tokens_per_ubatch = 0;
  std::uint64_t bytes_per_ubatch = 0;
  /// floor(free_bytes * usable_fraction); bytes_per_ubatch <= budget_bytes.
  std::uint64_t budget_bytes = 0;
};

/// The fewest micro-batches within `limits` whose largest one's activations
/// fit the budget. Pass the padded token count: padding is computed on too.
/// Throws engine_error: errc::no_capacity saying how far even the most
/// micro-batches allowed exceed the budget; errc::invalid_argument,
/// errc::negative_length or errc::empty_batch for bad arguments.
memory_fit fit_to_memory(std::int64_t tokens, const activation_memory& memory, ubatch_count_limits limits);
memory_fit fit_to_memory(std::int64_t tokens, const activation_memory& memory, ubatch_count_limits limits,
                         std::error_code& ec) noexcept;

// ---------------------------------------------------------------- timing ---

enum class step_phase : std::uint8_t { prefill, decode };

/// Nanoseconds that keep their fraction: per-token costs are far below 1 ns
/// apart, and the model must not round them away.
using fractional_ns = std::chrono::duration<double, std::nano>;

struct timing_options {
  /// Weight of the newest sample in the moving average, (0, 1]: higher
  /// follows load changes faster, lower rides out noise.
  double ema_alpha = 0.25;
  /// Cost each extra micro-batch adds to a step: launches, the switch, and
  /// the lower efficiency of smaller kernels. Fixed, not learned: a single
  /// step cannot tell it apart from per-token cost.
  std::chrono::nanoseconds per_ubatch_overhead{30'000};
  /// min(compute, communication) / (compute + communication) of a step: the
  /// share of per-token time that one micro-batch can hide behind another.
  /// [0, 0.5]; 0.5 is perfectly balanced, 0 means nothing overlaps.
  double overlappable_fraction = 0.25;
  /// Step time to meet. > 0.
  std::chrono::nanoseconds target_step_time{0};
};

/// One measured step.
struct step_sample {
  step_phase phase = step_phase::prefill;
  std::int64_t tokens = 0;
  std::chrono::nanoseconds elapsed{0};
  /// How many micro-batches the step ran as, so that its overlap and
  /// overhead are taken out before it teaches the per-token cost.
  std::int32_t num_ubatches = 1;
};

enum class timing_reason : std::uint8_t {
  target_met,   ///< the fewest micro-batches predicted to meet the target
  best_effort,  ///< none meets it; the count with the lowest predicted time
  no_history,   ///< nothing recorded for this phase yet; the minimum
};

struct timing_choice {
  std::int32_t num_ubatches = 0;
  timing_reason reason = timing_reason::no_history;
  /// Predicted step time at that count; zero with no_history.
  fractional_ns predicted{0};
};

/// Learns per-token cost from recent steps and predicts step time per count.
///
/// The model: a step of T tokens at c per token is compute C and
/// communication M with C + M = c * T. Cut into n micro-batches that run as a
/// pipeline, micro-batch i's communication runs while i+1 computes, so all of
/// the smaller part but one micro-batch's share is hidden:
///
///     t(n) = c*T*(1 - f) + c*T*f / n + n * o,   f = min(C, M) / (C + M)
///
/// The first term never overlaps, the second shrinks as the pipeline gets
/// finer, the third is what each micro-batch costs to run at all. t(1) is
/// c*T + o, the unsplit step; t is convex in n with its minimum at
/// sqrt(c*T*f / o), which is why more micro-batches help up to a point and
/// then hurt. Decode steps cost far less per token than prefill (they are
/// memory-bound), so each phase keeps its own average.
class step_timing_model {
 public:
  /// Throws engine_error (errc::invalid_argument) naming a bad option.
  explicit step_timing_model(const timing_options& options);

  /// Folds one step into the phase's moving average (the first sample of a
  /// phase sets it). A sample faster than its own overhead estimate teaches
  /// a cost of zero rather than a negative one. Throws engine_error for
  /// non-positive tokens or micro-batch counts, negative elapsed time, or an
  /// unknown phase; the error_code overload leaves the model unchanged.
  void record(const step_sample& sample);
  void record(const step_sample& sample, std::error_code& ec) noexcept;

  /// The learned cost per token, or nothing before the phase's first sample.
  std::optional<fractional_ns> cost_per_token(step_phase phase) const noexcept;
  std::uint64_t samples(step_phase phase) const noexcept;

  /// t(n) above, or nothing before the phase's first sample. Unchecked inputs.
  std::optional<fractional_ns> predict(step_phase phase, std::int64_t tokens,
                                       std::int32_t num_ubatches) const noexcept;

  /// The fewest micro-batches within `limits` predicted to meet the target;
  /// see timing_reason for the other cases. Throws engine_error for bad
  /// tokens or limits.
  timing_choice choose(step_phase phase, std::int64_t tokens, ubatch_count_limits limits) const;

  const timing_options& options() const noexcept { return options_; }

 private:
  timing_options options_;
  std::array<double, 2> ns_per_token_{};
  std::array<std::uint64_t, 2> samples_{};
};

// -------------------------------------------------------------- combined ---

enum class sizing_reason : std::uint8_t {
  memory_pressure,     ///< memory needs more micro-batches than timing wants
  timing_target_met,   ///< timing's count, which memory allows
  timing_best_effort,  ///< timing's closest count to the target, which memory allows
  no_timing_history,   ///< no history for the phase and memory allows the minimum
};

struct sizing_decision {
  std::int32_t num_ubatches = 0;
  sizing_reason reason = sizing_reason::no_timing_history;
  /// Memory figures at the chosen count.
  memory_fit memory;
  /// Predicted step time at the chosen count; zero without history.
  fractional_ns predicted{0};
};

/// Memory is a floor (too few micro-batches do not fit), timing a preference
/// above it: the count is max(memory's, timing's), both within `limits`.
/// Throws what fit_to_memory and step_timing_model::choose throw.
sizing_decision choose_ubatch_count(step_phase phase, std::int64_t tokens, const activation_memory& memory,
                                         const step_timing_model& timing, ubatch_count_limits limits);
sizing_decision choose_ubatch_count(step_phase phase, std::int64_t tokens, const activation_memory& memory,
                                         const step_timing_model& timing, ubatch_count_limits limits,
                                         std::error_code& ec) noexcept;

}  // namespace cobatch::engine
