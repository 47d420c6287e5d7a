#include "cobatch/engine/dispatch/synchronized_dispatcher.hpp"

#include <catch2/catch.hpp>

#include <atomic>
#include <cstdint>
#include <thread>
#include <vector>

using namespace cobatch::engine;

namespace {

struct fake_graph {
  graph_key key;
  stream_index stream;
};

dispatch_router standard_router(dispatch_policy policy = adaptive_policy({.explore_samples = 2, .seed = 5})) {
  dispatch_router r(capture_ladder::standard(128), std::move(policy));
  for (auto s : r.ladder().sizes()) {
    r.declare(dispatch_mode::piecewise, dispatch_key::for_tokens(s));
    if (s <= 32) r.declare(dispatch_mode::full, dispatch_key::uniform_decode(s, 1));
  }
  return r;
}

}  // namespace

// One engine loop per "GPU" (thread), each naming its own stream index, all
// sharing one router (an adaptive policy learning from every loop) and one
// set of statistics. Run under ThreadSanitizer in CI: any unsynchronized
// access in the shared parts is a reported race.
TEST_CASE("threads sharing a synchronized dispatcher each run their steps, all counted",
          "[engine][dispatch][synchronized]") {
  constexpr std::uint32_t threads = 4;
  constexpr int steps = 300;
  synchronized_dispatcher<fake_graph> d(standard_router(), {.streams = threads});

  // Per-thread tallies, written only by the runner of that thread's stream.
  struct tally {
    std::uint64_t eager = 0, replays = 0, captures = 0, wrong_stream = 0;
  };
  std::vector<tally> per(threads);
  std::atomic<int> inside{0};
  std::atomic<int> overlapped{0};
  graph_runners<fake_graph> runners;
  auto enter = [&] {
    if (inside.fetch_add(1) != 0) overlapped.fetch_add(1);
  };
  auto leave = [&] { inside.fetch_sub(1); };
  runners.eager = [&](const dispatch_route&, stream_index s) {
    enter();
    ++per[static_cast<std::size_t>(s)].eager;
    leave();
  };
  runners.replay = [&](fake_graph& g, const dispatch_route& r, stream_index s) {
    enter();
    auto& t = per[static_cast<std::size_t>(s)];
    ++t.replays;
    if (g.stream != s || g.key != r.graph()) ++t.wrong_stream;
    leave();
  };
  runners.capture = [&](graph_key k, stream_index s) {
    ++per[static_cast<std::size_t>(s)].captures;
    return captured_graph<fake_graph>{{k, s}, 4096};
  };
  d.set_runners(runners);

  std::vector<std::thread> loops;
  for (std::uint32_t t = 0; t < threads; ++t) {
    loops.emplace_back([&, t] {
      std::uint64_t x = 0x9e3779b97f4a7c15ULL * (t + 1);
      for (int i = 0; i < steps; ++i) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        const auto tokens = static_cast<std::uint32_t>(1 + x % 160);
        const dispatch_key step = (x >> 32) % 2 == 0 ? dispatch_key::uniform_decode(std::min(tokens, 32u), 1)
                                                     : dispatch_key::mixed(tokens, 1);
        const dispatch_result r = d.run(step, {}, {stream_index{t}});
        d.record_latency(r, std::chrono::nanoseconds(1000 + (x % 7) * 100));
        if (i % 50 == 0) (void)d.stats();
      }
    });
  }
  for (auto& l : loops) l.join();

  const dispatch_stats stats = d.stats();
  std::uint64_t ran = 0;
  for (std::uint32_t t = 0; t < threads; ++t) {
    const tally& tt = per[t];
    CHECK(tt.eager + tt.replays == static_cast<std::uint64_t>(steps));
    CHECK(tt.wrong_stream == 0);
    CHECK(d.cache_stats_of(stream_index{t}).captures == tt.captures);
    ran += tt.eager + tt.replays;
  }
  CHECK(overlapped.load() == 0);  // runners never ran concurrently
  CHECK(stats.total_dispatches() == ran);
  CHECK(stats.uncaptured() == 0);
  CHECK(stats.latency(dispatch_mode::eager).count + stats.latency(dispatch_mode::piecewise).count +
            stats.latency(dispatch_mode::full).count ==
        ran);
  CHECK(d.cached_bytes() > 0);
}

TEST_CASE("a synchronized dispatcher's compound operations run under its lock", "[engine][dispatch][synchronized]") {
  synchronized_dispatcher<fake_graph> d(standard_router(default_policy{}));
  const auto route = d.route(dispatch_key::mixed(20, 2));
  CHECK(route.mode == dispatch_mode::piecewise);
  CHECK(d.stats().uncaptured() == 1);
  const bool captured = d.with_lock([](graph_dispatcher<fake_graph>& g) {
    auto decision = g.preview(dispatch_key::mixed(20, 2));
    g.commit(decision);
    return g.capture_if_missing(decision, [](graph_key k, stream_index s) {
             return captured_graph<fake_graph>{{k, s}, 1};
           }) != nullptr;
  });
  CHECK(captured);
  d.disable_mode(dispatch_mode::piecewise);
  CHECK(d.route(dispatch_key::mixed(20, 2)).mode == dispatch_mode::eager);
  d.enable_mode(dispatch_mode::piecewise);
  d.clear_cache();
  CHECK(d.cached_bytes() == 0);
  CHECK(d.capture_ahead([](graph_key k, stream_index s) { return captured_graph<fake_graph>{{k, s}, 1}; }) > 0);
}
