#include "cobatch/engine/dispatch/graph_dispatcher.hpp"

#include "cobatch/coro/run_loop.hpp"
#include "cobatch/coro/sync_wait.hpp"
#include "cobatch/coro/use_task.hpp"
#include "cobatch/gpu/host/host_device.hpp"
#include "engine_test_support.hpp"
#include "dispatch_test_support.hpp"
#include "host_fixture.hpp"

#include <catch2/catch.hpp>

#include <algorithm>
#include <random>
#include <stdexcept>
#include <string>
#include <vector>

using namespace cobatch;
using namespace cobatch::engine;
using namespace std::chrono_literals;
using engine::test::thrown_by;

namespace {

struct fake_graph {
  graph_key key;
  stream_index stream;
};

dispatch_router standard_router(std::uint32_t max_tokens = 512) {
  dispatch_router r(capture_ladder::standard(max_tokens));
  for (auto s : r.ladder().sizes()) {
    r.declare(dispatch_mode::piecewise, dispatch_key::for_tokens(s));
    if (s <= 64) r.declare(dispatch_mode::full, dispatch_key::uniform_decode(s, 1));
  }
  return r;
}

// Runners that log what they were asked to do.
struct run_log {
  std::vector<std::string> calls;
  int captures = 0;
  std::size_t graph_bytes = 1 << 20;

  graph_runners<fake_graph> runners(bool with_capture = true) {
    graph_runners<fake_graph> r;
    r.eager = [this](const dispatch_route& route, stream_index) {
      calls.push_back("eager " + std::to_string(route.run_tokens()));
    };
    r.replay = [this](fake_graph& g, const dispatch_route& route, stream_index) {
      REQUIRE(g.key == route.graph());
      calls.push_back(std::string("replay ") + std::string(to_string(route.mode)) + " " +
                      std::to_string(route.run_tokens()));
    };
    if (with_capture) {
      r.capture = [this](graph_key k, stream_index s) {
        ++captures;
        calls.push_back("capture " + std::to_string(k.key().tokens()));
        return captured_graph<fake_graph>{{k, s}, graph_bytes};
      };
    }
    return r;
  }
};

}  // namespace

TEST_CASE("run replays, captures on first use and runs eager steps in one call", "[engine][dispatch][run]") {
  graph_dispatcher<fake_graph> d(standard_router());
  run_log log;
  d.set_runners(log.runners());

  auto first = d.run(dispatch_key::uniform_decode(5, 1));
  CHECK(first.outcome == dispatch_outcome::captured);
  CHECK(first.ran() == dispatch_mode::full);
  CHECK(first.route.run_tokens() == 8);
  CHECK(first.replayed_graph());

  auto second = d.run(dispatch_key::uniform_decode(7, 1));
  CHECK(second.outcome == dispatch_outcome::replayed);

  auto big = d.run(dispatch_key::mixed(600, 4));  // above the ladder
  CHECK(big.outcome == dispatch_outcome::eager);
  CHECK(big.route.run_tokens() == 600);

  CHECK(log.calls == std::vector<std::string>{"capture 8", "replay full 8", "replay full 8", "eager 600"});
  CHECK(d.stats().dispatches(dispatch_mode::full) == 2);
  CHECK(d.stats().dispatches(dispatch_mode::eager) == 1);
  CHECK(d.stats().eager_fallbacks() == 0);
  CHECK(d.stats().uncaptured() == 0);
  CHECK(d.cache().stats().captures == 1);
  CHECK(d.cache().stats().hits == 1);
  CHECK(d.cache().stats().misses == 1);
}

TEST_CASE("a declared graph that is not captured falls back to eager and is not a replay",
          "[engine][dispatch][run]") {
  graph_dispatcher<fake_graph> d(standard_router());
  run_log log;
  d.set_runners(log.runners(/*with_capture=*/false));

  auto r = d.run(dispatch_key::mixed(100, 3));
  CHECK(r.outcome == dispatch_outcome::eager_fallback);
  CHECK(r.ran() == dispatch_mode::eager);
  CHECK(r.route.run_tokens() == 100);  // unpadded
  CHECK(r.planned.mode == dispatch_mode::piecewise);
  CHECK(r.planned.run_tokens() == 104);
  CHECK(log.calls == std::vector<std::string>{"eager 100"});
  CHECK(d.stats().dispatches(dispatch_mode::piecewise) == 0);
  CHECK(d.stats().dispatches(dispatch_mode::eager) == 1);
  CHECK(d.stats().eager_fallbacks() == 1);
  CHECK(d.stats().graph_ratio() == 0.0);
  CHECK(d.cache().empty());
}

TEST_CASE("decision-only dispatch counts an uncaptured graph apart until it is captured",
          "[engine][dispatch][run]") {
  graph_dispatcher<fake_graph> d(standard_router());
  auto decision = d.dispatch(dispatch_key::mixed(100, 3));
  REQUIRE(decision.needs_capture());
  CHECK(d.stats().uncaptured() == 1);
  CHECK(d.stats().dispatches(dispatch_mode::piecewise) == 0);
  CHECK(d.stats().total_dispatches() == 1);
  CHECK(d.stats().graph_ratio() == 0.0);

  d.capture_if_missing(decision, [](graph_key k, stream_index s) { return captured_graph<fake_graph>{{k, s}, 1}; });
  CHECK(d.stats().uncaptured() == 0);
  CHECK(d.stats().dispatches(dispatch_mode::piecewise) == 1);
  CHECK(d.stats().graph_ratio() == 1.0);

  // An uncaptured decision run through execute() without a capture runner
  // settles as an eager fallback.
  run_log log;
  d.set_runners(log.runners(false));
  auto other = d.dispatch(dispatch_key::mixed(200, 3));
  REQUIRE(other.needs_capture());
  CHECK(d.stats().uncaptured() == 1);
  auto r = d.execute(other);
  CHECK(r.outcome == dispatch_outcome::eager_fallback);
  CHECK(d.stats().uncaptured() == 0);
  CHECK(d.stats().eager_fallbacks() == 1);
  CHECK(d.stats().total_dispatches() == 2);
  // Executing it again counts nothing more, and settles no other decision.
  auto pending = d.dispatch(dispatch_key::mixed(300, 3));
  REQUIRE(pending.accounting == decision_accounting::uncaptured);
  d.execute(other);
  CHECK(d.stats().total_dispatches() == 3);
  CHECK(d.stats().uncaptured() == 1);
  CHECK(d.stats().eager_fallbacks() == 1);
  d.execute(pending);
  CHECK(d.stats().uncaptured() == 0);
  CHECK(d.stats().eager_fallbacks() == 2);
  CHECK(d.stats().total_dispatches() == 3);
}

TEST_CASE("a graph larger than the cache's byte bound runs eagerly", "[engine][dispatch][run]") {
  graph_dispatcher<fake_graph> d(standard_router(), {.streams = 1, .cache = {.max_entries = 8, .max_bytes = 1000}});
  run_log log;
  log.graph_bytes = 5000;
  d.set_runners(log.runners());
  auto r = d.run(dispatch_key::mixed(100, 3));
  CHECK(r.outcome == dispatch_outcome::eager_fallback);
  CHECK(log.calls == std::vector<std::string>{"capture 104", "eager 100"});
  CHECK(d.cache().stats().rejections == 1);
  CHECK(d.stats().eager_fallbacks() == 1);
}

TEST_CASE("run without runners, and runners without eager or replay, are errors", "[engine][dispatch][run]") {
  graph_dispatcher<fake_graph> d(standard_router());
  auto e = thrown_by([&] { d.run(dispatch_key::mixed(10, 1)); });
  CHECK(e.code() == errc::invalid_argument);
  CHECK(std::string(e.what()).find("set_runners") != std::string::npos);

  run_log log;
  auto r = log.runners();
  r.eager = nullptr;
  CHECK(thrown_by([&] { d.set_runners(r); }).code() == errc::invalid_argument);
  r = log.runners();
  r.replay = nullptr;
  CHECK(thrown_by([&] { d.set_runners(r); }).code() == errc::invalid_argument);
  CHECK_FALSE(d.has_runners());
}

TEST_CASE("a runner that throws leaves the step uncounted", "[engine][dispatch][run]") {
  graph_dispatcher<fake_graph> d(standard_router());
  run_log log;
  auto r = log.runners();
  r.eager = [](const dispatch_route&, stream_index) { throw std::runtime_error("launch failed"); };
  d.set_runners(r);
  CHECK_THROWS_AS(d.run(dispatch_key::mixed(600, 1)), std::runtime_error);
  CHECK(d.stats().total_dispatches() == 0);
}

TEST_CASE("modes are enabled and disabled at run time", "[engine][dispatch][modes]") {
  graph_dispatcher<fake_graph> d(standard_router());
  run_log log;
  d.set_runners(log.runners());
  const auto decode = dispatch_key::uniform_decode(8, 1);

  CHECK(d.run(decode).ran() == dispatch_mode::full);
  d.disable_mode(dispatch_mode::full);
  CHECK_FALSE(d.router().mode_enabled(dispatch_mode::full));
  CHECK(d.run(decode).ran() == dispatch_mode::piecewise);
  d.disable_mode(dispatch_mode::piecewise);
  CHECK(d.router().enabled_modes() == mode_set{dispatch_mode::eager});
  auto eager = d.run(decode);
  CHECK(eager.outcome == dispatch_outcome::eager);
  CHECK(eager.route.run_tokens() == 8);
  d.enable_mode(dispatch_mode::full);
  auto again = d.run(decode);
  CHECK(again.ran() == dispatch_mode::full);
  CHECK(again.outcome == dispatch_outcome::replayed);  // the full graph stayed cached while disabled
  d.enable_mode(dispatch_mode::piecewise);
  // Declarations survive: a mixed step gets its piecewise graph again.
  CHECK(d.run(dispatch_key::mixed(30, 3)).ran() == dispatch_mode::piecewise);

  auto e = thrown_by([&] { d.disable_mode(dispatch_mode::eager); });
  CHECK(e.code() == errc::invalid_argument);
  CHECK(std::string(e.what()).find("eager cannot be disabled") != std::string::npos);
  CHECK(thrown_by([&] { d.enable_mode(static_cast<dispatch_mode>(7)); }).code() == errc::unknown_mode);
  CHECK(thrown_by([&] { d.disable_mode(static_cast<dispatch_mode>(7)); }).code() == errc::unknown_mode);
}

TEST_CASE("clear_cache drops every stream's graphs and keeps the statistics", "[engine][dispatch][run]") {
  graph_dispatcher<fake_graph> d(standard_router(), {.streams = 3});
  run_log log;
  d.set_runners(log.runners());
  for (std::uint32_t t = 1; t <= 64; ++t) d.run(dispatch_key::uniform_decode(t, 1), {}, {stream_index{t % 3}});
  std::size_t cached = 0;
  for (std::uint32_t s = 0; s < 3; ++s) cached += d.cache(stream_index{s}).size();
  REQUIRE(cached > 3);
  REQUIRE(d.cached_bytes() == cached * log.graph_bytes);
  const auto before = d.stats().total_dispatches();
  d.clear_cache();
  for (std::uint32_t s = 0; s < 3; ++s) CHECK(d.cache(stream_index{s}).empty());
  CHECK(d.cached_bytes() == 0);
  CHECK(d.stats().total_dispatches() == before);
  CHECK(d.run(dispatch_key::uniform_decode(8, 1)).outcome == dispatch_outcome::captured);
}

TEST_CASE("latency of a step that ran is recorded under the mode that ran", "[engine][dispatch][run]") {
  graph_dispatcher<fake_graph> d(standard_router());
  run_log log;
  d.set_runners(log.runners(false));
  auto r = d.run(dispatch_key::mixed(100, 3));
  REQUIRE(r.outcome == dispatch_outcome::eager_fallback);
  d.record_latency(r, 5us);
  CHECK(d.stats().latency(dispatch_mode::eager).count == 1);
  CHECK(d.stats().latency(dispatch_mode::piecewise).count == 0);
  CHECK(to_string(dispatch_outcome::eager_fallback) == "eager_fallback");
  CHECK(to_string(static_cast<dispatch_outcome>(9)) == "unknown");
}

// The whole run path on the host backend: persistent buffers, capture of the
// padded graph, replay, eager above the ladder; outputs equal eager compute.
TEST_CASE("run on host graphs gives the eager result for every step", "[engine][dispatch][run][graph]") {
  cobatch::test::host_fixture f;
  auto& loop = f.loop;
  auto stream = f.dev.make_stream();

  constexpr std::uint32_t max_tokens = 64;
  auto dispatcher = engine::test::piecewise_dispatcher<gpu::graph_exec>(max_tokens);

  std::vector<float> persistent_in(max_tokens + 16), persistent_out(max_tokens + 16);
  auto layer = [](const float* in, float* out, std::uint32_t n) {
    for (std::uint32_t i = 0; i < n; ++i) out[i] = 3.0f * in[i] + 1.0f;
  };
  std::vector<float> input;
  graph_runners<gpu::graph_exec> runners;
  runners.eager = [&](const dispatch_route& r, stream_index) {
    const std::uint32_t n = r.run_tokens();
    std::copy(input.begin(), input.end(), persistent_in.begin());
    stream.enqueue([&, n] { layer(persistent_in.data(), persistent_out.data(), n); });
  };
  runners.replay = [&](gpu::graph_exec& g, const dispatch_route& r, stream_index) {
    std::copy(input.begin(), input.end(), persistent_in.begin());
    std::fill(persistent_in.begin() + static_cast<std::ptrdiff_t>(input.size()),
              persistent_in.begin() + r.run_tokens(), 0.0f);
    g.launch(stream);
  };
  runners.capture = [&](graph_key key, stream_index) {
    const std::uint32_t padded = key.key().tokens();
    stream.ref().begin_capture();
    stream.enqueue([&, padded] { layer(persistent_in.data(), persistent_out.data(), padded); });
    return captured_graph<gpu::graph_exec>{stream.ref().end_capture().instantiate(), padded * 8u};
  };
  dispatcher.set_runners(std::move(runners));

  std::mt19937 rng(11);
  std::uniform_int_distribution<std::uint32_t> tokens_dist(1, max_tokens + 12);
  int replays = 0;
  for (int step = 0; step < 100; ++step) {
    const std::uint32_t tokens = tokens_dist(rng);
    input.assign(tokens, 0.0f);
    for (std::uint32_t i = 0; i < tokens; ++i) input[i] = static_cast<float>(rng() % 1000) / 7.0f;
    std::vector<float> expected(tokens);
    layer(input.data(), expected.data(), tokens);
    const auto r = dispatcher.run(dispatch_key::mixed(tokens, 1));
    CHECK(r.replayed_graph() == (tokens <= max_tokens));
    replays += r.replayed_graph() ? 1 : 0;
    coro::sync_wait(loop, [&]() -> coro::task<void> { co_await stream.async_wait(coro::use_task); }());
    std::vector<float> got(persistent_out.begin(), persistent_out.begin() + tokens);
    REQUIRE(got == expected);
  }
  CHECK(replays > 50);
  CHECK(dispatcher.stats().graph_ratio() == Approx(replays / 100.0));
}
