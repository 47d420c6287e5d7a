#include "cobatch/engine/dispatch/dispatch_policy.hpp"

#include <catch2/catch.hpp>

#include <map>
#include <string>
#include <vector>

#include "cobatch/engine/error.hpp"

using namespace cobatch::engine;

namespace {

const mode_set all{dispatch_mode::eager, dispatch_mode::piecewise, dispatch_mode::full};

policy_input input(std::uint32_t tokens, mode_set available = all) {
  return {dispatch_key::for_tokens(tokens), tokens, available};
}

// A latency model with noise: `fast` takes 100 us, others 150 us, plus up to
// +-20 us of deterministic jitter.
struct fake_latency {
  dispatch_mode fast;
  std::uint64_t state = 7;
  std::uint64_t operator()(dispatch_mode m) {
    state = state * 6364136223846793005ULL + 1442695040888963407ULL;
    const auto jitter = static_cast<std::int64_t>((state >> 33) % 40001) - 20000;
    const std::int64_t base = m == fast ? 100000 : 150000;
    return static_cast<std::uint64_t>(base + jitter);
  }
};

// Runs `steps` select/record rounds; returns the chosen modes.
std::vector<dispatch_mode> run(adaptive_policy& p, fake_latency& model, const policy_input& in, int steps) {
  std::vector<dispatch_mode> chosen;
  for (int i = 0; i < steps; ++i) {
    const auto m = p.select(in);
    REQUIRE(m.has_value());
    REQUIRE(in.available.contains(*m));
    chosen.push_back(*m);
    p.record(in.shape, *m, model(*m));
  }
  return chosen;
}

}  // namespace

TEST_CASE("default policy prefers full, then piecewise, then eager", "[engine][dispatch][policy]") {
  default_policy p;
  CHECK(p.select(input(8)) == dispatch_mode::full);
  CHECK(p.select(input(8, {dispatch_mode::eager, dispatch_mode::piecewise})) == dispatch_mode::piecewise);
  CHECK(p.select(input(8, {dispatch_mode::eager})) == dispatch_mode::eager);

  default_policy pw({.preference = graph_preference::piecewise_first});
  CHECK(pw.select(input(8)) == dispatch_mode::piecewise);
  CHECK(pw.select(input(8, {dispatch_mode::eager, dispatch_mode::full})) == dispatch_mode::full);
}

TEST_CASE("default policy runs eagerly outside its token range", "[engine][dispatch][policy]") {
  default_policy p({.graph_tokens = {.min = 4, .max = 64}});
  CHECK(p.select(input(3)) == dispatch_mode::eager);
  CHECK(p.select(input(4)) == dispatch_mode::full);
  CHECK(p.select(input(64)) == dispatch_mode::full);
  CHECK(p.select(input(65)) == dispatch_mode::eager);
  CHECK_THROWS_AS(default_policy({.graph_tokens = {.min = 0, .max = 4}}), engine_error);
  CHECK_THROWS_AS(default_policy({.graph_tokens = {.min = 9, .max = 4}}), engine_error);
}

TEST_CASE("adaptive policy explores every mode, then converges to the fastest", "[engine][dispatch][policy]") {
  constexpr std::uint32_t explore = 3;
  for (const auto fast : {dispatch_mode::eager, dispatch_mode::piecewise, dispatch_mode::full}) {
    adaptive_policy p({.explore_samples = explore, .reexplore_probability = 0.05, .seed = 42});
    fake_latency model{fast};
    const auto in = input(64);
    const auto chosen = run(p, model, in, 400);
    // Exploration: each mode exactly `explore` times in the first 3*explore steps.
    std::map<dispatch_mode, int> first;
    for (std::size_t i = 0; i < 3 * explore; ++i) ++first[chosen[i]];
    CHECK(first[dispatch_mode::eager] == 3);
    CHECK(first[dispatch_mode::piecewise] == 3);
    CHECK(first[dispatch_mode::full] == 3);
    // Converged within K = 3*explore steps: afterwards the fast mode dominates,
    // other modes only on re-exploration (5%).
    int fast_after = 0;
    for (std::size_t i = 3 * explore; i < chosen.size(); ++i) fast_after += chosen[i] == fast;
    const double share = fast_after / static_cast<double>(chosen.size() - 3 * explore);
    CHECK(share > 0.9);
    CHECK(share < 1.0);  // re-exploration did happen
    CHECK(p.fastest(in.shape, all) == fast);
    const auto est = p.estimate_for(in.shape, fast);
    REQUIRE(est.has_value());
    CHECK(est->mean_ns == Approx(100000).epsilon(0.05));
  }
}

TEST_CASE("adaptive policy is deterministic for a seed and differs across seeds", "[engine][dispatch][policy]") {
  auto trace = [](std::uint64_t seed) {
    adaptive_policy p({.reexplore_probability = 0.2, .seed = seed});
    fake_latency model{dispatch_mode::piecewise};
    return run(p, model, input(128), 300);
  };
  CHECK(trace(1) == trace(1));
  CHECK(trace(1) != trace(2));
}

TEST_CASE("adaptive policy notices when the fastest mode changes", "[engine][dispatch][policy]") {
  adaptive_policy p({.explore_samples = 2, .ema_weight = 0.5, .reexplore_probability = 0.1, .seed = 3});
  const auto in = input(32, {dispatch_mode::eager, dispatch_mode::full});
  fake_latency before{dispatch_mode::full};
  run(p, before, in, 100);
  CHECK(p.fastest(in.shape, in.available) == dispatch_mode::full);
  fake_latency after{dispatch_mode::eager};
  const auto chosen = run(p, after, in, 400);
  CHECK(p.fastest(in.shape, in.available) == dispatch_mode::eager);
  int eager_tail = 0;
  for (std::size_t i = chosen.size() - 100; i < chosen.size(); ++i) eager_tail += chosen[i] == dispatch_mode::eager;
  CHECK(eager_tail > 80);
}

TEST_CASE("adaptive policy learns per shape and declines beyond its table", "[engine][dispatch][policy]") {
  adaptive_policy p({.explore_samples = 1, .reexplore_probability = 0.0, .max_shapes = 2});
  const auto a = input(8, {dispatch_mode::eager, dispatch_mode::full});
  const auto b = input(16, {dispatch_mode::eager, dispatch_mode::full});
  fake_latency fast_full{dispatch_mode::full}, fast_eager{dispatch_mode::eager};
  run(p, fast_full, a, 20);
  run(p, fast_eager, b, 20);
  CHECK(p.select(a) == dispatch_mode::full);
  CHECK(p.select(b) == dispatch_mode::eager);
  CHECK(p.shapes() == 2);
  CHECK_FALSE(p.select(input(32)).has_value());
  CHECK(p.shapes() == 2);
}

TEST_CASE("adaptive policy rejects bad options naming them", "[engine][dispatch][policy]") {
  CHECK_THROWS_WITH(adaptive_policy({.explore_samples = 0}), Catch::Contains("explore_samples"));
  CHECK_THROWS_WITH(adaptive_policy({.ema_weight = 0.0}), Catch::Contains("ema_weight"));
  CHECK_THROWS_WITH(adaptive_policy({.reexplore_probability = 1.0}), Catch::Contains("reexplore_probability"));
  CHECK_THROWS_WITH(adaptive_policy({.max_shapes = 0}), Catch::Contains("max_shapes"));
}

TEST_CASE("priority chain tries policies from the highest priority down", "[engine][dispatch][policy]") {
  std::vector<std::string> asked;
  auto tracer = [&asked](std::string name, std::optional<dispatch_mode> answer) {
    return [&asked, name, answer](const policy_input&) -> std::optional<dispatch_mode> {
      asked.push_back(name);
      return answer;
    };
  };
  priority_chain chain;
  chain.add(tracer("low", dispatch_mode::eager), 1)
      .add(tracer("high-declines", std::nullopt), 10)
      .add(tracer("mid-a", dispatch_mode::piecewise), 5)
      .add(tracer("mid-b", dispatch_mode::full), 5);
  CHECK(chain.size() == 4);
  CHECK(chain.select(input(8)) == dispatch_mode::piecewise);
  CHECK(asked == std::vector<std::string>{"high-declines", "mid-a"});

  priority_chain none;
  none.add(tracer("x", std::nullopt), 0);
  CHECK_FALSE(none.select(input(8)).has_value());
}

TEST_CASE("pinned policies in a chain override the default for their range", "[engine][dispatch][policy]") {
  priority_chain chain;
  chain.add(pinned_mode_policy({.min = 1, .max = 16}, dispatch_mode::piecewise), 2);
  chain.add(default_policy{}, 0);
  CHECK(chain.select(input(8)) == dispatch_mode::piecewise);
  CHECK(chain.select(input(32)) == dispatch_mode::full);
  // The pinned mode is unavailable: the pin declines, the default decides.
  CHECK(chain.select(input(8, {dispatch_mode::eager, dispatch_mode::full})) == dispatch_mode::full);
  CHECK_THROWS_AS(pinned_mode_policy({.min = 5, .max = 1}, dispatch_mode::full), engine_error);
  CHECK_THROWS_AS(pinned_mode_policy({}, static_cast<dispatch_mode>(3)), engine_error);
}

TEST_CASE("a chain forwards latencies to its learners; policies copy as values", "[engine][dispatch][policy]") {
  priority_chain chain;
  chain.add(adaptive_policy({.explore_samples = 1, .reexplore_probability = 0.0}), 1);
  dispatch_policy erased = chain;
  const auto in = input(64, {dispatch_mode::eager, dispatch_mode::piecewise});
  erased.record(in.shape, dispatch_mode::eager, 500);
  erased.record(in.shape, dispatch_mode::piecewise, 100);
  CHECK(erased.select(in) == dispatch_mode::piecewise);

  auto* inner_chain = erased.target<priority_chain>();
  REQUIRE(inner_chain != nullptr);
  auto* learned = inner_chain->at(0).target<adaptive_policy>();
  REQUIRE(learned != nullptr);
  CHECK(learned->estimate_for(in.shape, dispatch_mode::piecewise)->samples == 1);
  CHECK(erased.target<default_policy>() == nullptr);

  dispatch_policy copy = erased;  // deep copy: learning in one leaves the other alone
  copy.record(in.shape, dispatch_mode::piecewise, 100);
  CHECK(copy.target<priority_chain>()->at(0).target<adaptive_policy>()->estimate_for(in.shape, dispatch_mode::piecewise)->samples == 2);
  CHECK(learned->estimate_for(in.shape, dispatch_mode::piecewise)->samples == 1);
  CHECK(chain.at(0).target<adaptive_policy>()->shapes() == 0);  // the original chain was copied, not shared
}
