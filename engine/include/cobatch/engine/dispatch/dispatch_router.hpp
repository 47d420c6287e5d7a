// The lookup order of graph dispatch, without the graphs themselves: pad the
// step to the capture ladder, find which declared graphs could run it, let a
// policy choose. Pure CPU, no Graph type: graph_dispatcher adds the cache.
//
// Lookup order (vLLM's CudagraphDispatcher.dispatch):
//   1. full graph for the exact padded key (uniform decode: padded request
//      count and query length; mixed: the request count as given),
//   2. full graph for the relaxed key (padded tokens and features only),
//   3. piecewise graph for the relaxed key,
//   4. eager, unpadded.
// Steps 1-2 are skipped when full graphs are disabled for the step or the full
// mode is disabled on the router, step 3 when piecewise is. A step
// above the ladder's largest size, or with no declared graph, runs eagerly
// without asking the policy. Where both kinds of graph exist, the policy
// chooses (the default policy keeps the order above).
#pragma once

#include <chrono>
#include <cstdint>
#include <optional>
#include <vector>

#include "cobatch/engine/dispatch/capture_ladder.hpp"
#include "cobatch/engine/dispatch/detail/flat_key_index.hpp"
#include "cobatch/engine/dispatch/dispatch_key.hpp"
#include "cobatch/engine/dispatch/dispatch_policy.hpp"

namespace cobatch::engine {

/// Whether a step may use full graphs. Disabled for steps a full graph cannot
/// hold: cascade attention, attention metadata built outside the graph, etc.
enum class full_graphs : std::uint8_t { allowed, disabled };

/// Per-call options of a dispatch.
struct dispatch_options {
  full_graphs full = full_graphs::allowed;
};

/// A routing decision: the mode, the key of the graph to replay (for eager,
/// the step's own unpadded key) and the padded shape the policy judged.
struct dispatch_route {
  dispatch_mode mode = dispatch_mode::eager;
  dispatch_key key = dispatch_key::from_bits(0);
  dispatch_key shape = dispatch_key::from_bits(0);
  /// Token count the step runs with: the padded size for a graph, the step's
  /// own for eager. What persistent inputs are padded to.
  std::uint32_t run_tokens() const noexcept { return key.tokens(); }
  graph_key graph() const noexcept { return {mode, key}; }
};

class dispatch_router {
 public:
  explicit dispatch_router(capture_ladder ladder, dispatch_policy policy = default_policy{});

  /// Declares that a graph of `mode` exists (or will be captured) for `key`.
  /// Throws engine_error: unknown_mode for eager or a mode outside the enum;
  /// invalid_argument when key's token count is not a rung of the ladder
  /// (dispatch pads to rungs, so such a graph would never be used), or when a
  /// piecewise key is not relaxed (piecewise graphs are looked up by tokens).
  void declare(dispatch_mode mode, dispatch_key key);

  bool is_declared(dispatch_mode mode, dispatch_key key) const noexcept {
    return (declared_.find_or(key.bits(), 0) & mode_bit(mode)) != 0;
  }

  /// Turns a graph mode back on for the following steps (the seed's
  /// enable_mode); graphs declared for it, and graphs already captured, are
  /// used again at once. Both graph modes start enabled. Throws
  /// engine_error(unknown_mode) for a mode outside the enum.
  void enable_mode(dispatch_mode mode);
  /// Stops routing steps to a graph mode, without forgetting its declared
  /// graphs (e.g. full graphs off while debugging a numerical mismatch, or
  /// while their memory is reclaimed). Throws engine_error(invalid_argument)
  /// for eager, which every step can fall back to and so cannot be disabled,
  /// and engine_error(unknown_mode) for a mode outside the enum.
  void disable_mode(dispatch_mode mode);
  bool mode_enabled(dispatch_mode mode) const noexcept { return enabled_.contains(mode); }
  /// The enabled modes; eager always among them.
  mode_set enabled_modes() const noexcept { return enabled_; }

  /// Every declared graph, largest token count first (capture order).
  std::vector<graph_key> declared() const;

  /// The decision for one step. Allocation-free unless the policy allocates
  /// (the adaptive policy does, once per new shape). Throws
  /// engine_error(invalid_argument) if the policy picks a mode that is not
  /// available, and engine_error(unknown_mode) for an unknown options.full.
  dispatch_route route(dispatch_key step, dispatch_options options = {});

  /// Feeds a measured latency back to the policy.
  void record_latency(const dispatch_route& r, std::chrono::nanoseconds elapsed);

  const capture_ladder& ladder() const noexcept { return ladder_; }
  /// The policy, to read what it learned (dispatch_policy::target).
  const dispatch_policy& policy() const noexcept { return policy_; }
  void set_policy(dispatch_policy policy);

 private:
  static constexpr std::uint32_t mode_bit(dispatch_mode m) noexcept { return 1u << static_cast<unsigned>(m); }
  [[noreturn]] static void reject_choice(dispatch_mode chosen, dispatch_key shape);
  [[noreturn]] static void reject_options(dispatch_options options);

  capture_ladder ladder_;
  dispatch_policy policy_;
  mode_set enabled_{dispatch_mode::eager, dispatch_mode::piecewise, dispatch_mode::full};
  // A copy of the policy when it is the stateless default_policy, so the hot
  // path calls it directly (inlined) instead of through the erasure.
  std::optional<default_policy> static_policy_;
  // One probe answers every mode: key word (without mode bits) -> mask of
  // the modes declared for it.
  detail::flat_key_index declared_;
};

}  // namespace cobatch::engine
