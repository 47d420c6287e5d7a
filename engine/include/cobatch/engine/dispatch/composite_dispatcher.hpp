// composite_dispatcher: several named graph dispatchers asked in priority
// order, each with its own ladder, declared graphs, policy, caches and
// statistics (the seed's CompositeDispatcher: "chains multiple dispatchers,
// priority-based selection, fallback chains").
//
// Where priority_chain (dispatch_policy.hpp) chains *policies* over one set of
// graphs, a composite chains whole dispatchers: e.g. a "spec-decode" member
// with full graphs for uniform batches of query length 4, above a "general"
// member with piecewise graphs for every rung; or a member with a tight memory
// bound for a rare LoRA shape set above the main one.
//
// Selection, per step, members in priority order (ties: the order added):
//   1. the first member that has the step's graph captured replays it;
//   2. otherwise the first member whose route is a graph mode and that can
//      obtain the graph (run(): it has a capture runner; dispatch(): always,
//      the caller captures) takes the step;
//   3. otherwise the highest-priority member runs it eagerly (an eager
//      fallback in its statistics when its route chose a graph).
// Choosing asks each member's router (and policy) without counting anything
// (graph_dispatcher::preview); only the member chosen counts the step, so
// each member's stats() are what it really ran. The composite counts how
// often each member was chosen, and the steps no member had a graph for.
//
// Thread contract: as graph_dispatcher, not synchronized.
#pragma once

#include "cobatch/engine/dispatch/graph_dispatcher.hpp"
#include "cobatch/engine/error.hpp"

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace cobatch::engine {

/// A decision of a composite: which member, and its decision.
template <class Graph>
struct composite_decision {
  std::string_view member;
  dispatch_decision<Graph> decision;
};

/// What a composite's run() did: which member ran the step, and how.
struct composite_result {
  std::string_view member;
  dispatch_result result;
};

template <class Graph>
class composite_dispatcher {
 public:
  using dispatcher = graph_dispatcher<Graph>;

  /// Adds `d` as member `name` with `priority` (higher is asked first; equal
  /// priorities in the order added) and returns it; the reference stays valid
  /// as members are added. Throws engine_error(invalid_argument) for an empty
  /// name or one already used.
  dispatcher& add(std::string name, dispatcher d, int priority = 0) {
    if (name.empty())
      throw_engine_error(errc::invalid_argument, "composite_dispatcher::add: a member needs a non-empty name");
    if (index_of(name) != npos)
      throw_engine_error(errc::invalid_argument,
                         "composite_dispatcher::add: a member named '" + name + "' is already there");
    auto it = members_.begin();
    while (it != members_.end() && it->priority >= priority) ++it;
    it = members_.insert(it, member{std::move(name), priority, std::make_unique<dispatcher>(std::move(d)), 0});
    return *it->d;
  }

  /// The member named `name`, or nullptr.
  dispatcher* find(std::string_view name) noexcept {
    const std::size_t i = index_of(name);
    return i == npos ? nullptr : members_[i].d.get();
  }
  /// The member named `name`; throws engine_error(invalid_argument) naming it
  /// when there is none.
  dispatcher& at(std::string_view name) { return *members_[checked(name)].d; }
  const dispatcher& at(std::string_view name) const { return *members_[checked(name)].d; }

  std::size_t size() const noexcept { return members_.size(); }
  /// The i-th member's name in the order members are asked.
  std::string_view name(std::size_t i) const { return members_.at(i).name; }
  int priority(std::string_view name) const { return members_[checked(name)].priority; }

  /// Decision only: chooses a member (see the header comment) and counts the
  /// step there, as graph_dispatcher::dispatch does. The caller captures a
  /// missing graph through the member (at(member).capture_if_missing) and
  /// launches. Throws engine_error(invalid_argument) when there are no members.
  composite_decision<Graph> dispatch(dispatch_key step, dispatch_options options = {},
                                     stream_placement placement = {}) {
    auto [i, d] = choose(step, options, placement, obtain::caller_captures);
    members_[i].d->commit(d);
    ++members_[i].selected;
    return {members_[i].name, std::move(d)};
  }

  /// Chooses a member and runs the step through its runners
  /// (graph_dispatcher::run). Throws engine_error(invalid_argument) when
  /// there are no members or the chosen one has no runners.
  composite_result run(dispatch_key step, dispatch_options options = {}, stream_placement placement = {}) {
    auto [i, d] = choose(step, options, placement, obtain::member_captures);
    const dispatch_result r = members_[i].d->execute(d);
    ++members_[i].selected;
    return {members_[i].name, r};
  }

  /// Steps the composite gave to member `name`.
  std::uint64_t selections(std::string_view name) const { return members_[checked(name)].selected; }
  /// Steps no member had a graph for (run eagerly by the first member).
  std::uint64_t unclaimed() const noexcept { return unclaimed_; }
  /// Member `name`'s own statistics: what it ran.
  const dispatch_stats& stats(std::string_view name) const { return members_[checked(name)].d->stats(); }

  /// Drops every member's cached graphs.
  void clear_cache() noexcept {
    for (auto& m : members_) m.d->clear_cache();
  }

 private:
  static constexpr std::size_t npos = static_cast<std::size_t>(-1);
  enum class obtain : std::uint8_t { caller_captures, member_captures };

  struct member {
    std::string name;
    int priority;
    std::unique_ptr<dispatcher> d;
    std::uint64_t selected;
  };

  std::size_t index_of(std::string_view name) const noexcept {
    for (std::size_t i = 0; i < members_.size(); ++i)
      if (members_[i].name == name) return i;
    return npos;
  }
  std::size_t checked(std::string_view name) const {
    const std::size_t i = index_of(name);
    if (i == npos)
      throw_engine_error(errc::invalid_argument,
                         "composite_dispatcher: no member named '" + std::string(name) + "'");
    return i;
  }

  std::pair<std::size_t, dispatch_decision<Graph>> choose(dispatch_key step, dispatch_options options,
                                                          stream_placement placement, obtain how) {
    if (members_.empty())
      throw_engine_error(errc::invalid_argument,
                         "composite_dispatcher: no members; add a dispatcher before dispatching");
    std::size_t capturable = npos;
    dispatch_decision<Graph> capturable_decision;
    dispatch_decision<Graph> first_decision;
    for (std::size_t i = 0; i < members_.size(); ++i) {
      dispatch_decision<Graph> d = members_[i].d->preview(step, options, placement);
      if (d.mode() != dispatch_mode::eager && d.entry != nullptr) return {i, d};
      if (i == 0) first_decision = d;
      if (capturable == npos && d.mode() != dispatch_mode::eager &&
          (how == obtain::caller_captures || members_[i].d->can_capture())) {
        capturable = i;
        capturable_decision = d;
      }
    }
    if (capturable != npos) return {capturable, capturable_decision};
    // The first member runs it: eagerly, or as an eager fallback when its own
    // route chose a graph it cannot obtain (so its statistics say so).
    ++unclaimed_;
    return {0, first_decision};
  }

  std::vector<member> members_;
  std::uint64_t unclaimed_ = 0;
};

}  // namespace cobatch::engine
