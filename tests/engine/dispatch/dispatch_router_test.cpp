#include "cobatch/engine/dispatch/dispatch_router.hpp"

#include <catch2/catch.hpp>

#include "cobatch/engine/error.hpp"

using namespace cobatch::engine;
using namespace std::chrono_literals;

namespace {
errc code_of(const engine_error& e) { return static_cast<errc>(e.code().value()); }

dispatch_router make_router() { return dispatch_router(capture_ladder::standard(512)); }
}  // namespace

TEST_CASE("lookup order: exact full, then relaxed full, then piecewise, then eager", "[engine][dispatch][router]") {
  auto r = make_router();
  const auto step = dispatch_key::uniform_decode(13, 1);  // pads to 16 tokens

  // Nothing declared: eager, unpadded.
  auto route = r.route(step);
  CHECK(route.mode == dispatch_mode::eager);
  CHECK(route.key == step);
  CHECK(route.run_tokens() == 13);

  // Piecewise only.
  r.declare(dispatch_mode::piecewise, dispatch_key::for_tokens(16));
  route = r.route(step);
  CHECK(route.mode == dispatch_mode::piecewise);
  CHECK(route.key == dispatch_key::for_tokens(16));
  CHECK(route.run_tokens() == 16);

  // A relaxed full graph beats piecewise.
  r.declare(dispatch_mode::full, dispatch_key::for_tokens(16));
  route = r.route(step);
  CHECK(route.mode == dispatch_mode::full);
  CHECK(route.key == dispatch_key::for_tokens(16));

  // The exact uniform-decode full graph beats the relaxed one.
  r.declare(dispatch_mode::full, dispatch_key::uniform_decode(16, 1));
  route = r.route(step);
  CHECK(route.mode == dispatch_mode::full);
  CHECK(route.key == dispatch_key::uniform_decode(16, 1));
  CHECK(route.shape == dispatch_key::uniform_decode(16, 1));
}

TEST_CASE("a uniform-decode graph does not serve a mixed batch of the same size", "[engine][dispatch][router]") {
  auto r = make_router();
  r.declare(dispatch_mode::full, dispatch_key::uniform_decode(16, 1));
  r.declare(dispatch_mode::piecewise, dispatch_key::for_tokens(16));

  const auto uniform = r.route(dispatch_key::uniform_decode(16, 1));
  CHECK(uniform.mode == dispatch_mode::full);

  const auto mixed = r.route(dispatch_key::mixed(16, 16));  // same counts, not known to be uniform
  CHECK(mixed.mode == dispatch_mode::piecewise);
  CHECK(mixed.key == dispatch_key::for_tokens(16));

  // Spec decode (2 tokens per request) needs its own graph.
  const auto spec = r.route(dispatch_key::uniform_decode(8, 2));
  CHECK(spec.mode == dispatch_mode::piecewise);
  r.declare(dispatch_mode::full, dispatch_key::uniform_decode(8, 2));
  CHECK(r.route(dispatch_key::uniform_decode(7, 2)).key == dispatch_key::uniform_decode(8, 2));
}

TEST_CASE("uniform batches whose rung is not a multiple of the query length fall back to relaxed keys",
          "[engine][dispatch][router]") {
  auto r = dispatch_router(capture_ladder{1, 2, 4, 10});
  r.declare(dispatch_mode::full, dispatch_key::for_tokens(4));
  // 1 request of 3 tokens pads to 4; 4 is not a multiple of 3.
  const auto route = r.route(dispatch_key::uniform_decode(1, 3));
  CHECK(route.mode == dispatch_mode::full);
  CHECK(route.key == dispatch_key::for_tokens(4));
  CHECK(route.shape == dispatch_key::for_tokens(4));
}

TEST_CASE("mixed batches keep their request count in the exact key", "[engine][dispatch][router]") {
  auto r = make_router();
  r.declare(dispatch_mode::full, dispatch_key::mixed(64, 3));
  r.declare(dispatch_mode::piecewise, dispatch_key::for_tokens(64));
  CHECK(r.route(dispatch_key::mixed(60, 3)).key == dispatch_key::mixed(64, 3));
  CHECK(r.route(dispatch_key::mixed(60, 3)).mode == dispatch_mode::full);
  CHECK(r.route(dispatch_key::mixed(60, 4)).mode == dispatch_mode::piecewise);
}

TEST_CASE("features select separate graphs", "[engine][dispatch][router]") {
  auto r = make_router();
  r.declare(dispatch_mode::full, dispatch_key::for_tokens(32));
  CHECK(r.route(dispatch_key::mixed(30, 2)).mode == dispatch_mode::full);
  CHECK(r.route(dispatch_key::mixed(30, 2, step_feature::lora)).mode == dispatch_mode::eager);
  r.declare(dispatch_mode::piecewise, dispatch_key::for_tokens(32, step_feature::lora));
  const auto lora = r.route(dispatch_key::mixed(30, 2, step_feature::lora));
  CHECK(lora.mode == dispatch_mode::piecewise);
  CHECK(lora.key.features() == step_feature::lora);
}

TEST_CASE("steps above the ladder run eagerly and unpadded", "[engine][dispatch][router]") {
  auto r = make_router();
  for (auto s : r.ladder().sizes()) {
    r.declare(dispatch_mode::full, dispatch_key::for_tokens(s));
    r.declare(dispatch_mode::piecewise, dispatch_key::for_tokens(s));
  }
  CHECK(r.route(dispatch_key::mixed(512, 9)).mode == dispatch_mode::full);
  const auto big = dispatch_key::mixed(513, 9);
  const auto route = r.route(big);
  CHECK(route.mode == dispatch_mode::eager);
  CHECK(route.key == big);
  CHECK(route.run_tokens() == 513);
}

TEST_CASE("disabled full graphs fall through to piecewise or eager", "[engine][dispatch][router]") {
  auto r = make_router();
  r.declare(dispatch_mode::full, dispatch_key::uniform_decode(8, 1));
  r.declare(dispatch_mode::full, dispatch_key::for_tokens(8));
  const dispatch_options no_full{.full = full_graphs::disabled};
  CHECK(r.route(dispatch_key::uniform_decode(8, 1), no_full).mode == dispatch_mode::eager);
  r.declare(dispatch_mode::piecewise, dispatch_key::for_tokens(8));
  const auto route = r.route(dispatch_key::uniform_decode(8, 1), no_full);
  CHECK(route.mode == dispatch_mode::piecewise);
  CHECK(route.key == dispatch_key::for_tokens(8));
  CHECK(r.route(dispatch_key::uniform_decode(8, 1)).mode == dispatch_mode::full);
  CHECK_THROWS_AS(r.route(dispatch_key::uniform_decode(8, 1), {.full = static_cast<full_graphs>(7)}), engine_error);
}

TEST_CASE("the policy chooses among available modes and is checked", "[engine][dispatch][router]") {
  dispatch_router r(capture_ladder::standard(64), default_policy({.preference = graph_preference::piecewise_first}));
  r.declare(dispatch_mode::full, dispatch_key::for_tokens(8));
  r.declare(dispatch_mode::piecewise, dispatch_key::for_tokens(8));
  CHECK(r.route(dispatch_key::mixed(8, 2)).mode == dispatch_mode::piecewise);

  dispatch_router liar(capture_ladder::standard(64), [](const policy_input&) -> std::optional<dispatch_mode> {
    return dispatch_mode::full;
  });
  liar.declare(dispatch_mode::piecewise, dispatch_key::for_tokens(8));
  try {
    liar.route(dispatch_key::mixed(8, 2));
    FAIL("an unavailable choice was accepted");
  } catch (const engine_error& e) {
    CHECK(code_of(e) == errc::invalid_argument);
    CHECK_THAT(e.what(), Catch::Contains("full"));
  }

  dispatch_router decliner(capture_ladder::standard(64),
                           [](const policy_input&) -> std::optional<dispatch_mode> { return std::nullopt; });
  decliner.declare(dispatch_mode::piecewise, dispatch_key::for_tokens(8));
  CHECK(decliner.route(dispatch_key::mixed(8, 2)).mode == dispatch_mode::eager);
}

TEST_CASE("an adaptive router learns from recorded latencies", "[engine][dispatch][router]") {
  dispatch_router r(capture_ladder::standard(64), adaptive_policy({.explore_samples = 2, .reexplore_probability = 0}));
  r.declare(dispatch_mode::full, dispatch_key::for_tokens(16));
  r.declare(dispatch_mode::piecewise, dispatch_key::for_tokens(16));
  const auto step = dispatch_key::mixed(12, 3);
  for (int i = 0; i < 12; ++i) {
    const auto route = r.route(step);
    r.record_latency(route, route.mode == dispatch_mode::piecewise ? 50us : 80us);
  }
  CHECK(r.route(step).mode == dispatch_mode::piecewise);
  CHECK(r.route(dispatch_key::mixed(16, 3)).mode == dispatch_mode::piecewise);  // same padded shape
  CHECK_THROWS_AS(r.record_latency(r.route(step), -5ns), engine_error);
}

TEST_CASE("declare rejects graphs that could never be used", "[engine][dispatch][router]") {
  auto r = make_router();
  auto code = [&](dispatch_mode m, dispatch_key k) {
    try {
      r.declare(m, k);
    } catch (const engine_error& e) {
      return code_of(e);
    }
    return errc{};
  };
  CHECK(code(dispatch_mode::eager, dispatch_key::for_tokens(8)) == errc::unknown_mode);
  CHECK(code(static_cast<dispatch_mode>(3), dispatch_key::for_tokens(8)) == errc::unknown_mode);
  CHECK(code(dispatch_mode::full, dispatch_key::for_tokens(9)) == errc::invalid_argument);
  CHECK(code(dispatch_mode::full, dispatch_key::for_tokens(1024)) == errc::invalid_argument);
  CHECK(code(dispatch_mode::piecewise, dispatch_key::mixed(8, 2)) == errc::invalid_argument);
  CHECK(r.declared().empty());
}

TEST_CASE("declared graphs come back largest first", "[engine][dispatch][router]") {
  auto r = make_router();
  r.declare(dispatch_mode::piecewise, dispatch_key::for_tokens(8));
  r.declare(dispatch_mode::full, dispatch_key::uniform_decode(256, 1));
  r.declare(dispatch_mode::piecewise, dispatch_key::for_tokens(512));
  r.declare(dispatch_mode::piecewise, dispatch_key::for_tokens(8));  // twice: still one
  const auto keys = r.declared();
  REQUIRE(keys.size() == 3);
  CHECK(keys[0].key().tokens() == 512);
  CHECK(keys[1] == graph_key(dispatch_mode::full, dispatch_key::uniform_decode(256, 1)));
  CHECK(keys[2].key().tokens() == 8);
  CHECK(r.is_declared(dispatch_mode::piecewise, dispatch_key::for_tokens(512)));
  CHECK_FALSE(r.is_declared(dispatch_mode::full, dispatch_key::for_tokens(512)));
}

TEST_CASE("set_policy replaces the policy for the following routes", "[engine][dispatch][router][policy]") {
  dispatch_router r(capture_ladder::standard(64), default_policy({.preference = graph_preference::piecewise_first}));
  r.declare(dispatch_mode::full, dispatch_key::for_tokens(8));
  r.declare(dispatch_mode::piecewise, dispatch_key::for_tokens(8));
  const auto step = dispatch_key::mixed(8, 2);
  CHECK(r.route(step).mode == dispatch_mode::piecewise);

  // From the inlined default policy to a custom one: the custom one decides.
  int asked = 0;
  r.set_policy([&asked](const policy_input&) -> std::optional<dispatch_mode> {
    ++asked;
    return std::nullopt;
  });
  CHECK(r.policy().target<default_policy>() == nullptr);
  CHECK(r.route(step).mode == dispatch_mode::eager);
  CHECK(asked == 1);

  // Back to a default policy with the other preference.
  r.set_policy(default_policy({.preference = graph_preference::full_first}));
  REQUIRE(r.policy().target<default_policy>() != nullptr);
  CHECK(r.route(step).mode == dispatch_mode::full);
  CHECK(asked == 1);  // the replaced policy is no longer asked

  // An adaptive policy learns from latencies recorded after it was set.
  r.set_policy(adaptive_policy({.explore_samples = 2, .reexplore_probability = 0}));
  for (int i = 0; i < 8; ++i) {
    const auto route = r.route(step);
    r.record_latency(route, route.mode == dispatch_mode::full ? 20us : 90us);
  }
  CHECK(r.route(step).mode == dispatch_mode::full);
}
