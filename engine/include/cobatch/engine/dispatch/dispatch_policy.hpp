// Dispatch policies: given the modes a step could run in, pick one.
//
// A policy is any copyable value with `select(const policy_input&)` returning
// std::optional<dispatch_mode> (nullopt: "no opinion, ask the next policy"),
// and optionally `record(dispatch_key shape, dispatch_mode, std::uint64_t ns)`
// to learn from measured latencies. Plain callables taking a policy_input
// work too. dispatch_policy erases the type so policies compose as values
// (priority_chain holds dispatch_policy values, and is one); nobody subclasses.
#pragma once

#include <concepts>
#include <cstdint>
#include <memory>
#include <optional>
#include <type_traits>
#include <typeinfo>
#include <unordered_map>
#include <utility>
#include <vector>

#include "cobatch/engine/dispatch/dispatch_key.hpp"

namespace cobatch::engine {

/// What a policy decides on.
struct policy_input {
  /// The step after padding: uniform decode keeps its request count and query
  /// length, a mixed batch its request count. The unit of learning.
  dispatch_key shape;
  /// The step's token count before padding.
  std::uint32_t tokens = 0;
  /// Modes the step may run in: eager always; full and piecewise when a graph
  /// for the shape is declared (and full graphs are not disabled for the step).
  mode_set available;
};

template <class P>
concept policy_object = std::copy_constructible<P> && requires(P& p, const policy_input& in) {
  { p.select(in) } -> std::convertible_to<std::optional<dispatch_mode>>;
};

template <class P>
concept policy_function = std::copy_constructible<P> && std::invocable<P&, const policy_input&> &&
                          std::convertible_to<std::invoke_result_t<P&, const policy_input&>, std::optional<dispatch_mode>>;

template <class P>
concept learning_policy = requires(P& p, dispatch_key shape, dispatch_mode m, std::uint64_t ns) {
  p.record(shape, m, ns);
};

/// A type-erased policy with value semantics: copying copies the policy's state.
class dispatch_policy {
 public:
  template <class P>
    requires(!std::same_as<std::remove_cvref_t<P>, dispatch_policy> &&
             (policy_object<std::remove_cvref_t<P>> || policy_function<std::remove_cvref_t<P>>))
  dispatch_policy(P&& policy)  // NOLINT: implicit on purpose, policies are passed as plain values
      : self_(std::make_unique<model<std::remove_cvref_t<P>>>(std::forward<P>(policy))) {}

  dispatch_policy(const dispatch_policy& other) : self_(other.self_->clone()) {}
  dispatch_policy(dispatch_policy&&) noexcept = default;
  dispatch_policy& operator=(const dispatch_policy& other) {
    if (this != &other) self_ = other.self_->clone();
    return *this;
  }
  dispatch_policy& operator=(dispatch_policy&&) noexcept = default;
  ~dispatch_policy() = default;

  std::optional<dispatch_mode> select(const policy_input& in) { return self_->select(in); }
  void record(dispatch_key shape, dispatch_mode mode, std::uint64_t ns) { self_->record(shape, mode, ns); }

  /// The held policy if it is a P, else nullptr (as std::function::target):
  /// how a caller reads what an adaptive policy inside a dispatcher learned.
  template <class P>
  P* target() noexcept {
    return static_cast<P*>(self_->target(typeid(P)));
  }
  template <class P>
  const P* target() const noexcept {
    return static_cast<const P*>(self_->target(typeid(P)));
  }

 private:
  // The one place with virtual functions: an implementation detail of the
  // erasure, never a base for users.
  struct concept_base {
    virtual ~concept_base() = default;
    virtual std::unique_ptr<concept_base> clone() const = 0;
    virtual std::optional<dispatch_mode> select(const policy_input&) = 0;
    virtual void record(dispatch_key, dispatch_mode, std::uint64_t) = 0;
    virtual void* target(const std::type_info&) noexcept = 0;
  };
  template <class P>
  struct model final : concept_base {
    template <class A>
    explicit model(A&& a) : p(std::forward<A>(a)) {}
    std::unique_ptr<concept_base> clone() const override { return std::make_unique<model>(p); }
    std::optional<dispatch_mode> select(const policy_input& in) override {
      if constexpr (policy_object<P>)
        return p.select(in);
      else
        return p(in);
    }
    void record(dispatch_key shape, dispatch_mode m, std::uint64_t ns) override {
      if constexpr (learning_policy<P>) p.record(shape, m, ns);
    }
    void* target(const std::type_info& t) noexcept override { return t == typeid(P) ? &p : nullptr; }
    P p;
  };

  std::unique_ptr<concept_base> self_;
};

/// Inclusive range of step token counts (before padding).
struct token_range {
  std::uint32_t min = 1;
  std::uint32_t max = dispatch_key::max_tokens;
  constexpr bool contains(std::uint32_t t) const noexcept { return t >= min && t <= max; }
};

enum class graph_preference : std::uint8_t {
  full_first,       ///< vLLM's order: full graph, then piecewise, then eager
  piecewise_first,  ///< piecewise, then full, then eager
};

struct default_policy_options {
  /// Steps outside this range run eagerly even where a graph exists.
  token_range graph_tokens{};
  graph_preference preference = graph_preference::full_first;
};

/// The static policy: graphs inside a token range, in a fixed preference
/// order; always yields a mode.
class default_policy {
 public:
  /// Throws engine_error(invalid_argument) when the range is empty or starts at 0.
  explicit default_policy(default_policy_options options = {});
  std::optional<dispatch_mode> select(const policy_input& in) const noexcept {
    if (!options_.graph_tokens.contains(in.tokens)) return dispatch_mode::eager;
    const dispatch_mode first =
        options_.preference == graph_preference::full_first ? dispatch_mode::full : dispatch_mode::piecewise;
    const dispatch_mode second =
        options_.preference == graph_preference::full_first ? dispatch_mode::piecewise : dispatch_mode::full;
    if (in.available.contains(first)) return first;
    if (in.available.contains(second)) return second;
    return dispatch_mode::eager;
  }
  const default_policy_options& options() const noexcept { return options_; }

 private:
  default_policy_options options_;
};

/// Pins steps in a token range to one mode when that mode is available, and
/// declines otherwise: the building block for overrides at the head of a chain.
class pinned_mode_policy {
 public:
  /// Throws engine_error(invalid_argument) for an empty range or one starting
  /// at 0, engine_error(unknown_mode) for a mode outside the enum.
  pinned_mode_policy(token_range tokens, dispatch_mode mode);
  std::optional<dispatch_mode> select(const policy_input& in) const noexcept {
    if (tokens_.contains(in.tokens) && in.available.contains(mode_)) return mode_;
    return std::nullopt;
  }

 private:
  token_range tokens_;
  dispatch_mode mode_;
};

enum class latency_estimator : std::uint8_t {
  ema,   ///< exponential moving average: follows drift (clocks, contention)
  mean,  ///< arithmetic mean: steadier when latencies are stationary
};

struct adaptive_options {
  /// Latency samples to gather for each available mode of a shape before
  /// exploiting; at least 1.
  std::uint32_t explore_samples = 3;
  latency_estimator estimator = latency_estimator::ema;
  /// Weight of the newest sample in the EMA, in (0, 1].
  double ema_weight = 0.25;
  /// Chance, once exploring is over, of trying a mode other than the fastest,
  /// so that a mode that became faster is noticed; in [0, 1).
  double reexplore_probability = 0.02;
  /// Seed of the policy's own generator; the same seed and the same sequence
  /// of select and record calls give the same choices.
  std::uint64_t seed = 0x9e3779b97f4a7c15ULL;
  /// Shapes tracked at most; a new shape beyond this is declined (nullopt) so
  /// that the next policy of a chain decides. At least 1.
  std::size_t max_shapes = 4096;
};

/// Learns, per shape, which available mode is fastest from the latencies the
/// caller records: explore each mode explore_samples times (fewest samples
/// first, ties by mode order), then exploit the lowest estimate, re-exploring
/// with a small probability.
class adaptive_policy {
 public:
  /// Throws engine_error(invalid_argument) naming an option out of range.
  explicit adaptive_policy(adaptive_options options = {});

  std::optional<dispatch_mode> select(const policy_input& in);
  void record(dispatch_key shape, dispatch_mode mode, std::uint64_t ns);

  struct estimate {
    std::uint64_t samples = 0;
    double ema_ns = 0;
    double mean_ns = 0;
  };
  /// What has been learned for a shape and mode; nullopt before any sample.
  std::optional<estimate> estimate_for(dispatch_key shape, dispatch_mode mode) const;
  /// The mode of `among` with the lowest estimate and at least one sample.
  std::optional<dispatch_mode> fastest(dispatch_key shape, mode_set among) const;
  std::size_t shapes() const noexcept { return table_.size(); }
  const adaptive_options& options() const noexcept { return options_; }

 private:
  struct per_shape {
    estimate modes[dispatch_mode_count];
  };
  double value(const estimate& e) const noexcept {
    return options_.estimator == latency_estimator::ema ? e.ema_ns : e.mean_ns;
  }
  std::uint64_t next_random() noexcept;

  adaptive_options options_;
  std::uint64_t rng_state_;
  std::unordered_map<dispatch_key, per_shape> table_;
};

/// Tries its policies from the highest priority down (ties in the order they
/// were added) and returns the first mode one yields; nullopt when all decline.
/// record() reaches every member, so learners below an override still learn.
class priority_chain {
 public:
  priority_chain() = default;
  priority_chain& add(dispatch_policy policy, int priority);
  std::optional<dispatch_mode> select(const policy_input& in);
  void record(dispatch_key shape, dispatch_mode mode, std::uint64_t ns);
  std::size_t size() const noexcept { return members_.size(); }
  /// The i-th member in the order tried.
  dispatch_policy& at(std::size_t i) { return members_.at(i).policy; }

 private:
  struct member {
    int priority;
    dispatch_policy policy;
  };
  std::vector<member> members_;
};

}  // namespace cobatch::engine
