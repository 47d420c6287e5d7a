#include "cobatch/engine/dispatch/graph_dispatcher.hpp"

#include <catch2/catch.hpp>

#include <set>
#include <stdexcept>
#include <vector>

using namespace cobatch::engine;
using namespace std::chrono_literals;

namespace {

struct recorded_graph {
  graph_key key;
  stream_index stream;
};

auto capture_recorder(int& calls) {
  return [&calls](graph_key k, stream_index s) {
    ++calls;
    return captured_graph<recorded_graph>{{k, s}, std::size_t{1} << 20};
  };
}

dispatch_router standard_router() {
  dispatch_router r(capture_ladder::standard(512));
  for (auto s : r.ladder().sizes()) {
    r.declare(dispatch_mode::piecewise, dispatch_key::for_tokens(s));
    if (s <= 64) r.declare(dispatch_mode::full, dispatch_key::uniform_decode(s, 1));
  }
  return r;
}

}  // namespace

TEST_CASE("dispatch then capture on first use, replay afterwards", "[engine][dispatch][dispatcher]") {
  graph_dispatcher<recorded_graph> d(standard_router());
  int calls = 0;
  auto capture = capture_recorder(calls);

  auto first = d.dispatch(dispatch_key::uniform_decode(5, 1));
  CHECK(first.mode() == dispatch_mode::full);
  CHECK(first.key() == dispatch_key::uniform_decode(8, 1));
  CHECK(first.needs_capture());
  auto* e = d.capture_if_missing(first, capture);
  REQUIRE(e != nullptr);
  CHECK(first.entry == e);
  CHECK(e->graph().key == graph_key(dispatch_mode::full, dispatch_key::uniform_decode(8, 1)));
  CHECK(calls == 1);

  auto second = d.dispatch(dispatch_key::uniform_decode(7, 1));
  CHECK_FALSE(second.needs_capture());
  CHECK(second.entry == e);
  CHECK(d.capture_if_missing(second, capture) == e);
  CHECK(calls == 1);

  auto eager = d.dispatch(dispatch_key::mixed(600, 4));
  CHECK(eager.mode() == dispatch_mode::eager);
  CHECK(eager.entry == nullptr);
  CHECK_FALSE(eager.needs_capture());
  CHECK(d.capture_if_missing(eager, capture) == nullptr);
  CHECK(calls == 1);

  CHECK(d.cache().stats().misses == 1);
  CHECK(d.cache().stats().hits == 1);
  CHECK(d.cache().stats().captures == 1);
  CHECK(d.stats().dispatches(dispatch_mode::full) == 2);
  CHECK(d.stats().dispatches(dispatch_mode::eager) == 1);
  CHECK(d.stats().graph_ratio() == Approx(2.0 / 3.0));
}

TEST_CASE("a failing capture leaves the decision and the cache untouched", "[engine][dispatch][dispatcher]") {
  graph_dispatcher<recorded_graph> d(standard_router());
  auto decision = d.dispatch(dispatch_key::mixed(100, 3));
  REQUIRE(decision.mode() == dispatch_mode::piecewise);
  CHECK_THROWS_AS(d.capture_if_missing(decision,
                                       [](graph_key, stream_index) -> captured_graph<recorded_graph> {
                                         throw std::runtime_error("capture failed");
                                       }),
                  std::runtime_error);
  CHECK(decision.entry == nullptr);
  CHECK(d.cache().empty());
  CHECK(d.cache().stats().captures == 0);
}

TEST_CASE("ahead-of-time capture fills the cache largest first", "[engine][dispatch][dispatcher]") {
  graph_dispatcher<recorded_graph> d(standard_router());
  std::vector<std::uint32_t> order;
  const auto n = d.capture_ahead([&](graph_key k, stream_index s) {
    order.push_back(k.key().tokens());
    return captured_graph<recorded_graph>{{k, s}, 1};
  });
  CHECK(n == 51 + 11);
  CHECK(std::is_sorted(order.rbegin(), order.rend()));
  CHECK(order.front() == 512);
  // Every in-ladder step now finds a graph without capturing.
  for (std::uint32_t t = 1; t <= 512; ++t) {
    auto decision = d.dispatch(dispatch_key::mixed(t, 1));
    REQUIRE(decision.entry != nullptr);
    REQUIRE(decision.entry->graph().key.key().tokens() == capture_ladder::standard(512).pad(t));
  }
  CHECK(d.cache().stats().misses == 0);
}

TEST_CASE("latency recording reaches the statistics and the policy", "[engine][dispatch][dispatcher]") {
  dispatch_router r(capture_ladder::standard(64), adaptive_policy({.explore_samples = 1, .reexplore_probability = 0}));
  r.declare(dispatch_mode::piecewise, dispatch_key::for_tokens(32));
  graph_dispatcher<recorded_graph> d(std::move(r));
  for (int i = 0; i < 10; ++i) {
    const auto decision = d.dispatch(dispatch_key::mixed(30, 2));
    d.record_latency(decision, decision.mode() == dispatch_mode::eager ? 10us : 40us);
  }
  // Eager measured faster for this shape: the adaptive policy settles on it.
  CHECK(d.dispatch(dispatch_key::mixed(30, 2)).mode() == dispatch_mode::eager);
  CHECK(d.stats().latency(dispatch_mode::eager).count == 9);
  CHECK(d.stats().latency(dispatch_mode::piecewise).count == 1);
  CHECK(d.stats().latency(dispatch_mode::piecewise).mean_ns == Approx(40000));
  const auto* learned = d.router().policy().target<adaptive_policy>();
  REQUIRE(learned != nullptr);
  CHECK(learned->fastest(dispatch_key::mixed(32, 2), {dispatch_mode::eager, dispatch_mode::piecewise}) ==
        dispatch_mode::eager);
}

TEST_CASE("per-stream caches are isolated", "[engine][dispatch][dispatcher][stream]") {
  graph_dispatcher<recorded_graph> d(standard_router(), {.streams = 2});
  int calls = 0;
  auto capture = capture_recorder(calls);
  const auto step = dispatch_key::mixed(100, 2);

  auto on0 = d.dispatch(step, {}, {.stream = stream_index{0}});
  auto on1 = d.dispatch(step, {}, {.stream = stream_index{1}});
  CHECK(on0.stream == stream_index{0});
  CHECK(on1.stream == stream_index{1});
  d.capture_if_missing(on0, capture);
  CHECK(on0.entry->graph().stream == stream_index{0});
  // A graph captured for stream 0 is not replayed on stream 1.
  CHECK(d.cache(stream_index{1}).empty());
  CHECK(d.dispatch(step, {}, {.stream = stream_index{1}}).needs_capture());
  d.capture_if_missing(on1, capture);
  CHECK(on1.entry != on0.entry);
  CHECK(on1.entry->graph().stream == stream_index{1});
  CHECK(calls == 2);
  CHECK(d.cache(stream_index{0}).size() == 1);
  CHECK(d.cache(stream_index{1}).size() == 1);
  d.cache(stream_index{0}).clear();
  CHECK_FALSE(d.dispatch(step, {}, {.stream = stream_index{1}}).needs_capture());

  CHECK_THROWS_AS(d.dispatch(step, {}, {.stream = stream_index{2}}), engine_error);
  CHECK_THROWS_AS(d.cache(stream_index{5}), engine_error);
  CHECK_THROWS_AS(graph_dispatcher<recorded_graph>(standard_router(), {.streams = 0}), engine_error);
}

TEST_CASE("streams are chosen by key hash: stable per key, spread over keys", "[engine][dispatch][dispatcher][stream]") {
  graph_dispatcher<recorded_graph> d(standard_router(), {.streams = 4});
  std::set<stream_index> used;
  for (auto s : d.router().ladder().sizes()) {
    const auto a = d.dispatch(dispatch_key::mixed(s, 1));
    const auto b = d.dispatch(dispatch_key::mixed(s, 1));
    REQUIRE(a.stream == b.stream);
    REQUIRE(a.stream == d.stream_for(a.route.graph()));
    REQUIRE(static_cast<std::uint32_t>(a.stream) < 4);
    used.insert(a.stream);
  }
  CHECK(used.size() == 4);

  // Ahead-of-time capture puts each graph on the stream dispatch will choose.
  const auto n = d.capture_ahead([](graph_key k, stream_index s) { return captured_graph<recorded_graph>{{k, s}, 1}; });
  CHECK(n == 62);
  std::size_t total = 0;
  for (std::uint32_t s = 0; s < 4; ++s) total += d.cache(stream_index{s}).size();
  CHECK(total == 62);
  for (std::uint32_t t = 1; t <= 512; t += 7) {
    const auto decision = d.dispatch(dispatch_key::mixed(t, 1));
    REQUIRE(decision.entry != nullptr);
    REQUIRE(decision.entry->graph().stream == decision.stream);
  }
}

TEST_CASE("capture_ahead_on captures every declared graph on the named stream only",
          "[engine][dispatch][dispatcher][capture_ahead]") {
  graph_dispatcher<recorded_graph> d(standard_router(), {.streams = 2});
  int calls = 0;
  auto capture = capture_recorder(calls);
  const std::size_t declared = d.router().declared().size();
  REQUIRE(declared > 0);

  CHECK(d.capture_ahead_on(stream_index{1}, capture) == declared);
  CHECK(calls == static_cast<int>(declared));
  CHECK(d.cache(stream_index{1}).size() == declared);
  CHECK(d.cache(stream_index{0}).size() == 0);
  for (const graph_key k : d.router().declared()) {
    const auto* e = d.cache(stream_index{1}).peek(k);
    REQUIRE(e != nullptr);
    CHECK(e->graph().key == k);
    CHECK(e->graph().stream == stream_index{1});  // captured for the stream it is kept on
  }

  // Already there: a second pass captures nothing.
  CHECK(d.capture_ahead_on(stream_index{1}, capture) == 0);
  CHECK(calls == static_cast<int>(declared));

  // A step placed on that stream replays without capturing.
  auto placed = d.dispatch(dispatch_key::uniform_decode(5, 1), {}, {stream_index{1}});
  CHECK(placed.stream == stream_index{1});
  CHECK_FALSE(placed.needs_capture());

  // A stream the dispatcher does not have is an error naming it.
  try {
    d.capture_ahead_on(stream_index{2}, capture);
    FAIL("an out-of-range stream was accepted");
  } catch (const engine_error& e) {
    CHECK(e.code() == errc::invalid_argument);
    CHECK_THAT(e.what(), Catch::Contains("stream index 2"));
  }
  CHECK(calls == static_cast<int>(declared));
}
