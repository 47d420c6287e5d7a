#include "cobatch/engine/dispatch/graph_dispatcher.hpp"

#include "cobatch/coro/run_loop.hpp"
#include "cobatch/coro/sync_wait.hpp"
#include "cobatch/coro/use_task.hpp"
#include "cobatch/engine/dispatch/capture_ladder.hpp"
#include "cobatch/engine/dispatch/dispatch_router.hpp"
#include "cobatch/gpu/host/host_device.hpp"
#include "dispatch_test_support.hpp"
#include "host_fixture.hpp"

#include <catch2/catch.hpp>

#include <algorithm>
#include <cstring>
#include <random>
#include <vector>

using namespace cobatch;

// The dispatcher picks a padded piecewise graph per step, captures it on first
// use from work that reads fixed (persistent) buffers, and replays it; the
// replay's output for the real tokens equals eager execution on fresh inputs.
TEST_CASE("dispatched host graphs replay like eager execution on fresh inputs", "[engine][dispatch][graph]") {
  test::host_fixture f;
  auto& loop = f.loop;
  auto stream = f.dev.make_stream();

  constexpr std::uint32_t max_tokens = 64;
  auto dispatcher = engine::test::piecewise_dispatcher<gpu::graph_exec>(max_tokens);

  // Persistent buffers: every captured graph reads and writes these addresses.
  std::vector<float> persistent_in(max_tokens), persistent_out(max_tokens);
  auto layer = [](const float* in, float* out, std::uint32_t n) {
    for (std::uint32_t i = 0; i < n; ++i) out[i] = in[i] * in[i] - 0.5f * in[i];
  };
  int captures = 0;
  auto capture = [&](engine::graph_key key, engine::stream_index) {
    ++captures;
    const std::uint32_t padded = key.key().tokens();
    stream.ref().begin_capture();
    stream.enqueue([&, padded] { layer(persistent_in.data(), persistent_out.data(), padded); });
    auto g = stream.ref().end_capture();
    return engine::captured_graph<gpu::graph_exec>{g.instantiate(), padded * sizeof(float) * 2};
  };

  std::mt19937 rng(3);
  std::uniform_int_distribution<std::uint32_t> tokens_dist(1, max_tokens + 8);
  std::uniform_real_distribution<float> value(-2.0f, 2.0f);
  int replays = 0;
  int eagers = 0;
  for (int step = 0; step < 200; ++step) {
    const std::uint32_t tokens = tokens_dist(rng);
    std::vector<float> input(tokens), expected(tokens), got(tokens);
    for (auto& v : input) v = value(rng);
    layer(input.data(), expected.data(), tokens);

    auto d = dispatcher.dispatch(engine::dispatch_key::mixed(tokens, 1));
    if (tokens > max_tokens) {
      REQUIRE(d.mode() == engine::dispatch_mode::eager);  // above the ladder: eager, unpadded
      ++eagers;
      continue;
    }
    REQUIRE(d.mode() == engine::dispatch_mode::piecewise);
    REQUIRE(d.key().tokens() >= tokens);
    auto* entry = dispatcher.capture_if_missing(d, capture);
    REQUIRE(entry != nullptr);
    // Copy-in is part of the step: real tokens, then zero padding.
    auto body = [&]() -> coro::task<void> {
      std::copy(input.begin(), input.end(), persistent_in.begin());
      std::fill(persistent_in.begin() + tokens, persistent_in.begin() + d.key().tokens(), 0.0f);
      entry->graph().launch(stream);
      co_await stream.async_wait(coro::use_task);
      std::copy(persistent_out.begin(), persistent_out.begin() + tokens, got.begin());
    };
    coro::sync_wait(loop, body());
    REQUIRE(got == expected);
    ++replays;
  }
  CHECK(replays > 100);
  CHECK(eagers > 0);
  CHECK(captures <= static_cast<int>(engine::capture_ladder::standard(max_tokens).sizes().size()));
  CHECK(dispatcher.cache().stats().captures == static_cast<std::uint64_t>(captures));
}
