#include "cobatch/engine/dispatch/dispatch_router.hpp"

#include <algorithm>
#include <string>

#include "cobatch/engine/error.hpp"

namespace cobatch::engine {

dispatch_router::dispatch_router(capture_ladder ladder, dispatch_policy policy)
    : ladder_(std::move(ladder)), policy_(std::move(policy)) {
  if (const auto* p = policy_.target<default_policy>()) static_policy_ = *p;
}

void dispatch_router::set_policy(dispatch_policy policy) {
  policy_ = std::move(policy);
  static_policy_.reset();
  if (const auto* p = policy_.target<default_policy>()) static_policy_ = *p;
}

void dispatch_router::declare(dispatch_mode mode, dispatch_key key) {
  validate(mode);
  if (mode == dispatch_mode::eager)
    throw_engine_error(errc::unknown_mode, "dispatch_router::declare: eager needs no graph; declare piecewise or full");
  if (!ladder_.contains(key.tokens()))
    throw_engine_error(errc::invalid_argument,
                       "dispatch_router::declare: a " + std::string(to_string(mode)) + " graph for " +
                           std::to_string(key.tokens()) +
                           " tokens is not on the capture ladder; steps are padded to rungs, so it would never be used");
  if (mode == dispatch_mode::piecewise && !key.is_relaxed())
    throw_engine_error(errc::invalid_argument,
                       "dispatch_router::declare: piecewise graphs are keyed by token count only; got a key with " +
                           std::to_string(key.requests()) + " requests (use dispatch_key::for_tokens)");
  declared_.insert(key.bits(), declared_.find_or(key.bits(), 0) | mode_bit(mode));
}

void dispatch_router::enable_mode(dispatch_mode mode) {
  validate(mode);
  enabled_.insert(mode);
}

void dispatch_router::disable_mode(dispatch_mode mode) {
  validate(mode);
  if (mode == dispatch_mode::eager)
    throw_engine_error(errc::invalid_argument,
                       "dispatch_router::disable_mode: eager cannot be disabled; it is what every step falls back "
                       "to (steps above the ladder, shapes without a graph)");
  enabled_.erase(mode);
}

std::vector<graph_key> dispatch_router::declared() const {
  std::vector<graph_key> out;
  out.reserve(declared_.size() * 2);
  declared_.for_each([&](std::uint64_t bits, std::uint32_t modes) {
    for (const auto m : {dispatch_mode::piecewise, dispatch_mode::full})
      if (modes & mode_bit(m)) out.emplace_back(m, dispatch_key::from_bits(bits));
  });
  // Largest first; ties in a fixed order so capture order is reproducible.
  std::sort(out.begin(), out.end(), [](graph_key a, graph_key b) {
    if (a.key().tokens() != b.key().tokens()) return a.key().tokens() > b.key().tokens();
    return a.bits() < b.bits();
  });
  return out;
}

dispatch_route dispatch_router::route(dispatch_key step, dispatch_options options) {
  const auto padded = ladder_.pad(step.tokens());
  if (!padded) return {dispatch_mode::eager, step, step};

  // The exact padded key; for a uniform batch whose rung is not a multiple of
  // its query length, and for a relaxed step, it is the relaxed key itself.
  const dispatch_key exact = step.padded_to(*padded);
  const dispatch_key relaxed = exact.relaxed();

  constexpr std::uint32_t full_bit = mode_bit(dispatch_mode::full);
  constexpr std::uint32_t piecewise_bit = mode_bit(dispatch_mode::piecewise);
  // Disabled modes are masked out of what is declared: one AND per lookup.
  std::uint32_t enabled_bits = 0;
  if (enabled_.contains(dispatch_mode::piecewise)) enabled_bits |= mode_bit(dispatch_mode::piecewise);
  if (enabled_.contains(dispatch_mode::full)) enabled_bits |= mode_bit(dispatch_mode::full);
  const std::uint32_t relaxed_modes = declared_.find_or(relaxed.bits(), 0) & enabled_bits;
  const std::uint32_t exact_modes =
      exact == relaxed ? relaxed_modes : declared_.find_or(exact.bits(), 0) & enabled_bits;

  mode_set available{dispatch_mode::eager};
  dispatch_key full_key = relaxed;
  switch (options.full) {
    case full_graphs::allowed:
      if (exact_modes & full_bit) {
        full_key = exact;
        available.insert(dispatch_mode::full);
      } else if (relaxed_modes & full_bit) {
        available.insert(dispatch_mode::full);
      }
      break;
    case full_graphs::disabled: break;
    default: reject_options(options);
  }
  if (relaxed_modes & piecewise_bit) available.insert(dispatch_mode::piecewise);

  if (available.size() == 1) return {dispatch_mode::eager, step, exact};

  const policy_input in{exact, step.tokens(), available};
  const dispatch_mode chosen =
      (static_policy_ ? static_policy_->select(in) : policy_.select(in)).value_or(dispatch_mode::eager);
  switch (chosen) {
    case dispatch_mode::full:
      if (available.contains(dispatch_mode::full)) return {dispatch_mode::full, full_key, exact};
      break;
    case dispatch_mode::piecewise:
      if (available.contains(dispatch_mode::piecewise)) return {dispatch_mode::piecewise, relaxed, exact};
      break;
    case dispatch_mode::eager: return {dispatch_mode::eager, step, exact};
  }
  reject_choice(chosen, exact);
}

void dispatch_router::record_latency(const dispatch_route& r, std::chrono::nanoseconds elapsed) {
  if (elapsed.count() < 0)
    throw_engine_error(errc::negative_length, "dispatch_router::record_latency: negative latency " +
                                                  std::to_string(elapsed.count()) + " ns");
  policy_.record(r.shape, r.mode, static_cast<std::uint64_t>(elapsed.count()));
}

void dispatch_router::reject_choice(dispatch_mode chosen, dispatch_key shape) {
  throw_engine_error(errc::invalid_argument,
                     "dispatch_router: the policy chose " + std::string(to_string(chosen)) + " (" +
                         std::to_string(static_cast<unsigned>(chosen)) + "), which is not available for a step of " +
                         std::to_string(shape.tokens()) + " padded tokens");
}

void dispatch_router::reject_options(dispatch_options options) {
  throw_engine_error(errc::unknown_mode, "dispatch_router: unknown full_graphs value " +
                                             std::to_string(static_cast<unsigned>(options.full)));
}

}  // namespace cobatch::engine
