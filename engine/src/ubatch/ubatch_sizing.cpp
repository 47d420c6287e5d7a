#include "cobatch/engine/ubatch/ubatch_sizing.hpp"

#include "message.hpp"

#include <algorithm>
#include <cmath>
#include <limits>
#include <string>

namespace cobatch::engine {
namespace {

using detail::fail;
using detail::fault;

struct count_range {
  std::int32_t lo, hi;
};

fault check_tokens_and_limits(std::int64_t tokens, ubatch_count_limits limits, count_range& range,
                              std::string* detail) {
  if (tokens < 0) return fail(detail, errc::negative_length, "tokens=", tokens, " is negative");
  if (tokens == 0) return fail(detail, errc::empty_batch, "tokens=0: a step needs at least one token");
  if (limits.min < 1) {
    return fail(detail, errc::invalid_argument, "limits.min=", limits.min, " must be at least 1");
  }
  if (limits.max < limits.min) {
    return fail(detail, errc::invalid_argument, "limits.max=", limits.max, " is less than limits.min=",
                limits.min);
  }
  const auto hi = static_cast<std::int32_t>(std::min<std::int64_t>(limits.max, tokens));
  range = {std::min(limits.min, hi), hi};
  return {};
}

// ceil(a / b) for a >= 0, b > 0, without the overflow of (a + b - 1) / b
// when a is near INT64_MAX.
std::int64_t ceil_div(std::int64_t a, std::int64_t b) { return a / b + (a % b != 0 ? 1 : 0); }

// a * b, or the largest value where that does not fit (only ever printed).
std::uint64_t saturating_mul(std::uint64_t a, std::uint64_t b) {
  if (a != 0 && b > std::numeric_limits<std::uint64_t>::max() / a) return std::numeric_limits<std::uint64_t>::max();
  return a * b;
}

fault fit(std::int64_t tokens, const activation_memory& m, ubatch_count_limits limits, memory_fit& out,
          std::string* detail) {
  count_range range{};
  if (const fault f = check_tokens_and_limits(tokens, limits, range, detail)) return f;
  if (!(m.usable_fraction > 0.0 && m.usable_fraction <= 1.0)) {
    return fail(detail, errc::invalid_argument, "usable_fraction=", m.usable_fraction, " is outside (0, 1]");
  }
  if (m.activation_bytes_per_token == 0) {
    return fail(detail, errc::invalid_argument, "activation_bytes_per_token=0: it must be positive");
  }
  // Where long double is no wider than double, free_bytes near 2^64 rounds
  // up to 2^64, which does not convert back; clamp to what was given.
  const long double product = std::floor(static_cast<long double>(m.free_bytes) * m.usable_fraction);
  const std::uint64_t budget = product >= static_cast<long double>(m.free_bytes)
                                   ? m.free_bytes
                                   : static_cast<std::uint64_t>(product);
  const std::uint64_t per_token = m.activation_bytes_per_token;
  const std::uint64_t max_tokens = budget / per_token;  // per micro-batch
  if (max_tokens == 0) {
    return fail(detail, errc::no_capacity, "one token needs ", per_token, " activation bytes, ",
                per_token - budget, " more than the budget of ", budget, " bytes (", m.usable_fraction,
                " of ", m.free_bytes, " free)");
  }
  // ceil(tokens / n) <= max_tokens  <=>  n >= ceil(tokens / max_tokens).
  const std::int64_t needed =
      max_tokens >= static_cast<std::uint64_t>(tokens) ? 1 : ceil_div(tokens, static_cast<std::int64_t>(max_tokens));
  if (needed > range.hi) {
    const std::int64_t each = ceil_div(tokens, range.hi);
    const std::uint64_t bytes = saturating_mul(static_cast<std::uint64_t>(each), per_token);
    return fail(detail, errc::no_capacity, "even ", range.hi, " micro-batches of up to ", each,
                " tokens need ", bytes, " activation bytes each, ", bytes - budget,
                " more than the budget of ", budget, " bytes (", m.usable_fraction, " of ", m.free_bytes,
                " free); it takes ", needed, " micro-batches");
  }
  const auto n = static_cast<std::int32_t>(std::max<std::int64_t>(needed, range.lo));
  const std::int64_t each = ceil_div(tokens, n);
  out = memory_fit{n, each, static_cast<std::uint64_t>(each) * per_token, budget};
  return {};
}

std::size_t index(step_phase p) noexcept { return static_cast<std::size_t>(p); }
bool known(step_phase p) noexcept { return p == step_phase::prefill || p == step_phase::decode; }

fault check_sample(const step_sample& s, std::string* detail) {
  if (!known(s.phase)) {
    return fail(detail, errc::unknown_mode, "step_sample::phase=", static_cast<int>(s.phase), " is not a step_phase");
  }
  if (s.tokens < 1) {
    return fail(detail, s.tokens < 0 ? errc::negative_length : errc::empty_batch, "step_sample::tokens=",
                s.tokens, " must be at least 1");
  }
  if (s.elapsed.count() < 0) {
    return fail(detail, errc::negative_length, "step_sample::elapsed=", s.elapsed.count(), "ns is negative");
  }
  if (s.num_ubatches < 1) {
    return fail(detail, errc::invalid_argument, "step_sample::num_ubatches=", s.num_ubatches,
                " must be at least 1");
  }
  return {};
}

// Share of c*T a step at n micro-batches still shows: 1 - f + f/n.
double exposed_share(double f, std::int32_t n) noexcept { return 1.0 - f + f / n; }

fault choose_count(const step_timing_model& model, step_phase phase, std::int64_t tokens,
                   ubatch_count_limits limits, timing_choice& out, std::string* detail) {
  if (!known(phase)) {
    return fail(detail, errc::unknown_mode, "phase=", static_cast<int>(phase), " is not a step_phase");
  }
  count_range range{};
  if (const fault f = check_tokens_and_limits(tokens, limits, range, detail)) return f;
  if (model.samples(phase) == 0) {
    out = timing_choice{range.lo, timing_reason::no_history, fractional_ns{0}};
    return {};
  }
  const fractional_ns target = model.options().target_step_time;
  const auto t_of = [&](std::int64_t n) { return *model.predict(phase, tokens, static_cast<std::int32_t>(n)); };
  // t(n) = c*T*(1 - f + f/n) + n*o is convex in n, so the counts are never
  // walked one by one (limits.max may be INT32_MAX): find the minimum, then the
  // smallest n before it that meets the target, by bisection on the part where
  // t falls. Ties go to the smaller count.
  const std::int64_t lo = range.lo;
  const std::int64_t hi = range.hi;
  const double falling = model.cost_per_token(phase)->count() * static_cast<double>(tokens) *
                         model.options().overlappable_fraction;  // c*T*f: t = ... + falling/n + n*o
  const double overhead = static_cast<double>(model.options().per_ubatch_overhead.count());
  std::int64_t n_min = lo;
  if (falling > 0.0) {
    if (overhead <= 0.0) {
      n_min = hi;  // t keeps falling
    } else {
      const double root = std::sqrt(falling / overhead);
      const auto clamp = [&](double x) {
        return x <= static_cast<double>(lo) ? lo
               : x >= static_cast<double>(hi) ? hi
                                              : static_cast<std::int64_t>(x);
      };
      const std::int64_t below = clamp(std::floor(root));
      const std::int64_t above = std::min(hi, below + 1);
      n_min = t_of(above) < t_of(below) ? above : below;
    }
  }
  const fractional_ns best = t_of(n_min);
  if (best > target) {
    out = timing_choice{static_cast<std::int32_t>(n_min), timing_reason::best_effort, best};
    return {};
  }
  // t is non-increasing on [lo, n_min] and t(n_min) meets the target.
  std::int64_t a = lo, b = n_min;
  while (a < b) {
    const std::int64_t mid = a + (b - a) / 2;
    if (t_of(mid) <= target) {
      b = mid;
    } else {
      a = mid + 1;
    }
  }
  out = timing_choice{static_cast<std::int32_t>(a), timing_reason::target_met, t_of(a)};
  return {};
}

fault decide(step_phase phase, std::int64_t tokens, const activation_memory& memory, const step_timing_model& timing,
             ubatch_count_limits limits, sizing_decision& out, std::string* detail) {
  memory_fit mem;
  if (const fault f = fit(tokens, memory, limits, mem, detail)) return f;
  timing_choice tim;
  if (const fault f = choose_count(timing, phase, tokens, limits, tim, detail)) return f;
  sizing_decision d;
  if (mem.num_ubatches > tim.num_ubatches) {
    d.num_ubatches = mem.num_ubatches;
    d.reason = sizing_reason::memory_pressure;
  } else {
    d.num_ubatches = tim.num_ubatches;
    d.reason = tim.reason == timing_reason::target_met    ? sizing_reason::timing_target_met
               : tim.reason == timing_reason::best_effort ? sizing_reason::timing_best_effort
                                                          : sizing_reason::no_timing_history;
  }
  const std::int64_t each = ceil_div(tokens, d.num_ubatches);
  d.memory = memory_fit{d.num_ubatches, each, static_cast<std::uint64_t>(each) * memory.activation_bytes_per_token,
                        mem.budget_bytes};
  d.predicted = timing.predict(phase, tokens, d.num_ubatches).value_or(fractional_ns{0});
  out = d;
  return {};
}

}  // namespace

memory_fit fit_to_memory(std::int64_t tokens, const activation_memory& memory, ubatch_count_limits limits) {
  memory_fit out;
  std::string text;
  if (const fault f = fit(tokens, memory, limits, out, &text)) detail::raise(f, "fit_to_memory", text);
  return out;
}

memory_fit fit_to_memory(std::int64_t tokens, const activation_memory& memory, ubatch_count_limits limits,
                         std::error_code& ec) noexcept {
  memory_fit out;
  const fault f = fit(tokens, memory, limits, out, nullptr);
  ec = f ? make_error_code(f.code) : std::error_code{};
  return f ? memory_fit{} : out;
}

step_timing_model::step_timing_model(const timing_options& options) : options_(options) {
  if (!(options.ema_alpha > 0.0 && options.ema_alpha <= 1.0)) {
    throw_engine_error(errc::invalid_argument, detail::cat("step_timing_model: ema_alpha=", options.ema_alpha, " is outside (0, 1]"));
  }
  if (options.per_ubatch_overhead.count() < 0) {
    throw_engine_error(errc::invalid_argument, detail::cat("step_timing_model: per_ubatch_overhead=",
                                                           options.per_ubatch_overhead.count(),
                                                           "ns is negative"));
  }
  if (!(options.overlappable_fraction >= 0.0 && options.overlappable_fraction <= 0.5)) {
    throw_engine_error(errc::invalid_argument, detail::cat("step_timing_model: overlappable_fraction=", options.overlappable_fraction,
                                                           " is outside [0, 0.5]"));
  }
  if (options.target_step_time.count() <= 0) {
    throw_engine_error(errc::invalid_argument, detail::cat("step_timing_model: target_step_time=", options.target_step_time.count(),
                                                           "ns must be positive"));
  }
}

void step_timing_model::record(const step_sample& sample) {
  std::string text;
  if (const fault f = check_sample(sample, &text)) detail::raise(f, "step_timing_model::record", text);
  std::error_code ignored;
  record(sample, ignored);
}

void step_timing_model::record(const step_sample& s, std::error_code& ec) noexcept {
  if (const fault f = check_sample(s, nullptr)) {
    ec = make_error_code(f.code);
    return;
  }
  ec = {};
  // Invert t(n) for c: take out the overhead, then the overlap.
  const double overhead = static_cast<double>(s.num_ubatches) *
                          static_cast<double>(options_.per_ubatch_overhead.count());
  const double work = std::max(0.0, static_cast<double>(s.elapsed.count()) - overhead);
  const double cost = work / (static_cast<double>(s.tokens) *
                              exposed_share(options_.overlappable_fraction, s.num_ubatches));
  const std::size_t i = index(s.phase);
  ns_per_token_[i] = samples_[i] == 0 ? cost : options_.ema_alpha * cost + (1.0 - options_.ema_alpha) * ns_per_token_[i];
  ++samples_[i];
}

std::optional<fractional_ns> step_timing_model::cost_per_token(step_phase phase) const noexcept {
  if (!known(phase) || samples_[index(phase)] == 0) return std::nullopt;
  return fractional_ns{ns_per_token_[index(phase)]};
}

std::uint64_t step_timing_model::samples(step_phase phase) const noexcept {
  return known(phase) ? samples_[index(phase)] : 0;
}

std::optional<fractional_ns> step_timing_model::predict(step_phase phase, std::int64_t tokens,
                                                        std::int32_t n) const noexcept {
  const std::optional<fractional_ns> c = cost_per_token(phase);
  if (!c) return std::nullopt;
  return fractional_ns{c->count() * static_cast<double>(tokens) * exposed_share(options_.overlappable_fraction, n) +
                       static_cast<double>(n) * static_cast<double>(options_.per_ubatch_overhead.count())};
}

timing_choice step_timing_model::choose(step_phase phase, std::int64_t tokens, ubatch_count_limits limits) const {
  timing_choice out;
  std::string text;
  if (const fault f = choose_count(*this, phase, tokens, limits, out, &text)) {
    detail::raise(f, "step_timing_model::choose", text);
  }
  return out;
}

sizing_decision choose_ubatch_count(step_phase phase, std::int64_t tokens, const activation_memory& memory,
                                         const step_timing_model& timing, ubatch_count_limits limits) {
  sizing_decision out;
  std::string text;
  if (const fault f = decide(phase, tokens, memory, timing, limits, out, &text)) {
    detail::raise(f, "choose_ubatch_count", text);
  }
  return out;
}

sizing_decision choose_ubatch_count(step_phase phase, std::int64_t tokens, const activation_memory& memory,
                                         const step_timing_model& timing, ubatch_count_limits limits,
                                         std::error_code& ec) noexcept {
  sizing_decision out;
  const fault f = decide(phase, tokens, memory, timing, limits, out, nullptr);
  ec = f ? make_error_code(f.code) : std::error_code{};
  return f ? sizing_decision{} : out;
}

}  // namespace cobatch::engine
