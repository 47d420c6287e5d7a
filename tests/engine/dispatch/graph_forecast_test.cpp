#include "cobatch/engine/dispatch/graph_forecast.hpp"

#include "engine_test_support.hpp"

#include <catch2/catch.hpp>

#include <vector>

using namespace cobatch::engine;
using cobatch::engine::test::thrown_by;

namespace {

struct fake_graph {
  graph_key key;
};

graph_key pw(std::uint32_t tokens) { return {dispatch_mode::piecewise, dispatch_key::for_tokens(tokens)}; }

dispatch_router router() {
  dispatch_router r(capture_ladder::standard(256));
  for (auto s : r.ladder().sizes()) r.declare(dispatch_mode::piecewise, dispatch_key::for_tokens(s));
  return r;
}

}  // namespace

TEST_CASE("a forecast ranks the graphs of the last window of steps", "[engine][dispatch][forecast]") {
  shape_forecast f({.window = 6});
  for (auto t : {8u, 8u, 16u, 32u, 8u, 16u}) f.observe(pw(t));
  CHECK(f.steps() == 6);
  CHECK(f.steps_for(pw(8)) == 3);
  CHECK(f.share(pw(16)) == Approx(2.0 / 6));
  auto r = f.ranked();
  REQUIRE(r.size() == 3);
  CHECK(r[0].key == pw(8));
  CHECK(r[1].key == pw(16));
  CHECK(r[2].key == pw(32));

  // Four more steps of 64: the oldest four (8, 8, 16, 32) are forgotten.
  for (int i = 0; i < 4; ++i) f.observe(pw(64));
  CHECK(f.steps() == 6);
  CHECK(f.steps_for(pw(64)) == 4);
  CHECK(f.steps_for(pw(8)) == 1);
  CHECK(f.steps_for(pw(32)) == 0);
  r = f.ranked();
  REQUIRE(r.size() == 3);
  CHECK(r[0].key == pw(64));
  // Ties (8 and 16 once each): the larger token count first.
  CHECK(r[1].key == pw(16));
  CHECK(r[2].key == pw(8));

  // Eager routes are not graphs; a fallback's wanted graph is.
  f.observe(dispatch_route{dispatch_mode::eager, dispatch_key::mixed(999, 1), dispatch_key::mixed(999, 1)});
  CHECK(f.steps_for(pw(64)) == 4);
  dispatch_result fell_back;
  fell_back.outcome = dispatch_outcome::eager_fallback;
  fell_back.route = {dispatch_mode::eager, dispatch_key::mixed(100, 1), dispatch_key::mixed(104, 1)};
  fell_back.planned = {dispatch_mode::piecewise, dispatch_key::for_tokens(104), dispatch_key::mixed(104, 1)};
  f.observe(fell_back);
  CHECK(f.steps_for(pw(104)) == 1);
  f.clear();
  CHECK(f.steps() == 0);
  CHECK(f.ranked().empty());
  CHECK(thrown_by([] { shape_forecast bad({.window = 0}); }).code() == errc::invalid_argument);
}

TEST_CASE("capture_forecast captures frequent graphs ahead, within the cache bounds", "[engine][dispatch][forecast]") {
  graph_dispatcher<fake_graph> d(router(), {.streams = 1, .cache = {.max_entries = 3, .max_bytes = 1000}});
  shape_forecast f({.window = 100});
  // 50 steps at 8, 30 at 16, 15 at 32, 4 at 64, 1 at 128.
  for (int i = 0; i < 50; ++i) f.observe(pw(8));
  for (int i = 0; i < 30; ++i) f.observe(pw(16));
  for (int i = 0; i < 15; ++i) f.observe(pw(32));
  for (int i = 0; i < 4; ++i) f.observe(pw(64));
  f.observe(pw(128));

  std::vector<std::uint32_t> captured;
  auto capture = [&](graph_key k, stream_index) {
    captured.push_back(k.key().tokens());
    return captured_graph<fake_graph>{{k}, 300};
  };

  // At most two per call.
  auto r = capture_forecast(d, f, capture, {.min_share = 0.05, .max_captures = 2});
  CHECK(r.captured == 2);
  CHECK(captured == std::vector<std::uint32_t>{8, 16});
  // Next call: 8 and 16 are cached; 32 fits (900 of 1000 bytes, 3 entries);
  // 64 is below min_share... no: 4% < 5%, so the walk stops there.
  r = capture_forecast(d, f, capture, {.min_share = 0.05, .max_captures = 2});
  CHECK(r.already_cached == 2);
  CHECK(r.captured == 1);
  CHECK(captured == std::vector<std::uint32_t>{8, 16, 32});
  // A lower threshold reaches 64, but the cache is full: no eviction for a guess.
  r = capture_forecast(d, f, capture, {.min_share = 0.0, .max_captures = 4});
  CHECK(r.captured == 0);
  CHECK(r.no_room == 2);
  CHECK(d.cache().stats().evictions == 0);
  CHECK(d.cache().size() == 3);

  // A disabled mode is not captured for.
  d.clear_cache();
  d.disable_mode(dispatch_mode::piecewise);
  r = capture_forecast(d, f, capture, {.min_share = 0.05});
  CHECK(r.captured == 0);
  CHECK(r.mode_disabled == 3);
}

TEST_CASE("capture_forecast judges room by the cached graphs' mean size and stops after an eviction",
          "[engine][dispatch][forecast]") {
  graph_dispatcher<fake_graph> d(router(), {.streams = 1, .cache = {.max_entries = 10, .max_bytes = 1000}});
  shape_forecast f;
  for (auto t : {8u, 8u, 8u, 16u, 16u, 32u}) f.observe(pw(t));
  std::size_t next_size = 400;
  auto capture = [&](graph_key k, stream_index) { return captured_graph<fake_graph>{{k}, next_size}; };
  // 8 (400 bytes), 16 (400): 800 held; the estimate for 32 is 400 > 200 left.
  auto r = capture_forecast(d, f, capture, {.min_share = 0.0});
  CHECK(r.captured == 2);
  CHECK(r.no_room == 1);
  // An underestimate: the graph is larger than expected and evicts; stop.
  d.clear_cache();
  d.cache().insert(pw(256), fake_graph{pw(256)}, 100);  // mean 100
  next_size = 950;
  r = capture_forecast(d, f, capture, {.min_share = 0.0});
  CHECK(r.captured == 1);
  CHECK(d.cache().stats().evictions == 1);
  // A graph larger than the whole bound is counted as no room, not thrown.
  d.clear_cache();
  next_size = 5000;
  r = capture_forecast(d, f, capture, {.min_share = 0.0});
  CHECK(r.captured == 0);
  CHECK(r.no_room == 3);

  CHECK(thrown_by([&] { capture_forecast(d, f, capture, {.min_share = 1.5}); }).code() == errc::invalid_argument);
  CHECK(thrown_by([&] { capture_forecast(d, f, capture, {.max_captures = 0}); }).code() == errc::invalid_argument);
}

TEST_CASE("a forecast learns from dispatched steps", "[engine][dispatch][forecast]") {
  graph_dispatcher<fake_graph> d(router());
  graph_runners<fake_graph> runners;
  runners.eager = [](const dispatch_route&, stream_index) {};
  runners.replay = [](fake_graph&, const dispatch_route&, stream_index) {};
  d.set_runners(runners);  // no capture runner: every graph step falls back
  shape_forecast f({.window = 32});
  for (std::uint32_t i = 0; i < 32; ++i) f.observe(d.run(dispatch_key::mixed(10 + i % 3, 1)));
  // 10, 11, 12 tokens all pad to 16.
  CHECK(f.steps_for(pw(16)) == 32);
  auto r = capture_forecast(d, f, [](graph_key k, stream_index) { return captured_graph<fake_graph>{{k}, 1}; });
  CHECK(r.captured == 1);
  CHECK(d.run(dispatch_key::mixed(11, 1)).outcome == dispatch_outcome::replayed);
}
